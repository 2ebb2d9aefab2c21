"""A schema upgrade the database refuses says why (``db upgrade``, ``init``).

A role without the privilege to create tables, or a server or session that is read-only, refuses
the upgrade's first statement: the error is a ``StoreError`` giving the database's reason (its
first line only), not an internal error naming an exception class, and nothing is left behind.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url

from uid2_operator.errors import StoreError, StoreUnavailable
from uid2_operator.storage import current_revision, upgrade

pytestmark = pytest.mark.postgres


def _libpq_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def read_only_url(postgres_url: str) -> Iterator[str]:
    """An empty schema, reached by sessions whose transactions are read-only."""
    schema = f"read_only_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    options = f"-csearch_path={schema} -cdefault_transaction_read_only=on"
    url = make_url(postgres_url).update_query_dict({"options": options})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_a_read_only_database_refuses_the_upgrade_saying_why(read_only_url: str) -> None:
    with pytest.raises(StoreError) as refused:
        upgrade(read_only_url)
    assert not isinstance(refused.value, StoreUnavailable)
    assert str(refused.value) == (
        "The database refused the schema upgrade: cannot execute CREATE TABLE in a read-only "
        "transaction"
    )
    assert current_revision(read_only_url) is None  # nothing was created


@pytest.fixture
def no_create_url(postgres_url: str) -> Iterator[str]:
    """An empty schema, reached by a role that may use it but not create tables in it."""
    name = f"no_create_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
        conn.execute(f'CREATE ROLE "{name}" LOGIN')
        conn.execute(f'GRANT USAGE ON SCHEMA "{name}" TO "{name}"')
    url = make_url(postgres_url).set(username=name)
    url = url.update_query_dict({"options": f"-csearch_path={name}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')
            conn.execute(f'DROP ROLE "{name}"')


def test_a_role_that_may_not_create_tables_has_the_upgrade_refused_saying_why(
    no_create_url: str,
) -> None:
    with pytest.raises(StoreError) as refused:
        upgrade(no_create_url)
    assert not isinstance(refused.value, StoreUnavailable)
    schema = make_url(no_create_url).username
    assert str(refused.value) == (
        f"The database refused the schema upgrade: permission denied for schema {schema}"
    )
    assert current_revision(no_create_url) is None  # nothing was created
