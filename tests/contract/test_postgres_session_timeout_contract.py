"""A session PostgreSQL ends on a timeout of its own settings (idle_in_transaction_session_timeout,
which storage.md asks deployments to set; transaction_timeout on PostgreSQL 17) is an unavailable
store, as a terminated connection is, not an unexpected error; the next transaction works."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url
from store_records import participant

from uid2_operator.errors import StoreUnavailable
from uid2_operator.storage import SqlStore, open_store, upgrade

pytestmark = pytest.mark.postgres


def _libpq_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def url(postgres_url: str) -> Iterator[str]:
    schema = f"session_timeout_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    options = f"-csearch_path={schema} -cidle_in_transaction_session_timeout=300"
    try:
        yield (
            make_url(postgres_url)
            .update_query_dict({"options": options})
            .render_as_string(hide_password=False)
        )
    finally:
        with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _idle_write(store: SqlStore) -> None:
    with store.transaction() as tx:
        tx.participants.add(participant(1001))
        time.sleep(1)  # idle in the transaction past the server's 0.3 s
        tx.participants.get(1001)


def _idle_read(store: SqlStore) -> None:
    with store.read() as rx:
        rx.participants.list_all()
        time.sleep(1)
        rx.participants.list_all()


def test_a_session_ended_idle_in_a_transaction_is_an_unavailable_store(url: str) -> None:
    upgrade(url)
    store = open_store(url)
    try:
        with pytest.raises(StoreUnavailable) as ended:
            _idle_write(store)
        assert "idle-in-transaction timeout" in str(ended.value)
        with pytest.raises(StoreUnavailable):
            _idle_read(store)
        with store.read() as rx:  # nothing was written; the next session works
            assert rx.participants.list_all() == []
    finally:
        store.close()
