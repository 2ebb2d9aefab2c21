"""A PostgreSQL role without the privileges the store needs (a revoked grant, a role set up for
another schema): reads and writes it may not make are refused as an unavailable store that names
the table and says what to check, never as an internal error; what it may do goes on."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url
from store_records import participant

from uid2_operator.errors import StoreAccessRefused, StoreUnavailable
from uid2_operator.storage import open_store, upgrade

pytestmark = pytest.mark.postgres


def _libpq_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def limited(postgres_url: str) -> Iterator[tuple[str, str]]:
    """A schema at the newest revision, the URL of its owner, and that of a role that may read
    every table but write none."""
    name = f"privileges_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
        conn.execute(f'CREATE ROLE "{name}" LOGIN')
    owner = make_url(postgres_url).update_query_dict({"options": f"-csearch_path={name}"})
    try:
        upgrade(owner.render_as_string(hide_password=False))
        with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
            conn.execute(f'GRANT USAGE ON SCHEMA "{name}" TO "{name}"')
            conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{name}" TO "{name}"')
        yield (
            owner.render_as_string(hide_password=False),
            owner.set(username=name).render_as_string(hide_password=False),
        )
    finally:
        with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            conn.execute(f'DROP ROLE IF EXISTS "{name}"')


def test_a_write_the_role_may_not_make_is_refused_as_an_unavailable_store(
    limited: tuple[str, str],
) -> None:
    owner_url, limited_url = limited
    store = open_store(limited_url)
    try:
        with store.read() as rx:  # reading is granted
            assert rx.participants.list_all() == []
        with pytest.raises(StoreUnavailable) as refused, store.transaction() as tx:
            tx.participants.add(participant(1001))
        assert isinstance(refused.value, StoreAccessRefused)  # reachable: the grants are at fault
        assert refused.value.code == "store_unavailable"  # to callers, as any outage
        message = str(refused.value)
        assert "refuses access: permission denied for table" in message
        assert message.endswith("(check the database role's privileges)")
    finally:
        store.close()
    owner = open_store(owner_url)
    try:
        with owner.read() as rx:  # nothing of the refused transaction was left
            assert rx.participants.list_all() == []
            assert rx.change_seq() == 0
    finally:
        owner.close()


def test_a_read_the_role_may_not_make_is_refused_as_an_unavailable_store(
    limited: tuple[str, str], postgres_url: str
) -> None:
    _owner_url, limited_url = limited
    role = make_url(limited_url).username
    with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
        revoke = sql.SQL("REVOKE SELECT ON {}.participants FROM {}")
        conn.execute(revoke.format(sql.Identifier(role), sql.Identifier(role)))
    store = open_store(limited_url)
    try:
        with pytest.raises(StoreUnavailable) as refused, store.read() as rx:
            rx.participants.list_all()
        assert "permission denied for table participants" in str(refused.value)
    finally:
        store.close()
