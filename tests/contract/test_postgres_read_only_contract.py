"""PostgreSQL that refuses writes (a hot standby after a fail-over, or sessions that default to
``default_transaction_read_only``): every write is refused the same way, whichever pooled
connection it lands on, as an unavailable store that names the database's reason; reads go on."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url
from store_records import participant

from uid2_operator.errors import StoreUnavailable
from uid2_operator.storage import open_store, upgrade

pytestmark = pytest.mark.postgres


def _libpq_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _url(base_url: str, options: str) -> str:
    return (
        make_url(base_url)
        .update_query_dict({"options": options})
        .render_as_string(hide_password=False)
    )


@pytest.fixture
def schema(postgres_url: str) -> Iterator[str]:
    name = f"read_only_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def test_writes_are_refused_on_every_connection_of_a_read_only_database(
    postgres_url: str, schema: str
) -> None:
    writable = _url(postgres_url, f"-csearch_path={schema}")
    upgrade(writable)
    store = open_store(writable)
    try:
        with store.transaction() as tx:
            tx.participants.add(participant(1001))
    finally:
        store.close()

    read_only = open_store(
        _url(postgres_url, f"-csearch_path={schema} -cdefault_transaction_read_only=on")
    )
    try:
        for site_id in (2001, 2002, 2003):
            # A connection that served a read goes back to the pool, to serve the write.
            with read_only.read() as rx:
                assert [p.site_id for p in rx.participants.list_all()] == [1001]
            with pytest.raises(StoreUnavailable) as refused, read_only.transaction() as tx:
                tx.participants.add(participant(site_id))
            assert "read-only transaction" in str(refused.value)
    finally:
        read_only.close()

    store = open_store(writable)
    try:
        with store.read() as rx:
            assert [p.site_id for p in rx.participants.list_all()] == [1001]
            assert rx.change_seq() == 1
    finally:
        store.close()
