"""A session PostgreSQL ends on a timeout of its own settings (idle_in_transaction_session_timeout,
which storage.md asks deployments to set; transaction_timeout on PostgreSQL 17) is an unavailable
store, as a terminated connection is, not an unexpected error; the next transaction works."""

from __future__ import annotations

import time

import pytest
from sqlalchemy.engine import make_url
from store_records import participant

from uid2_operator.errors import StoreUnavailable
from uid2_operator.storage import SqlStore, open_store

pytestmark = pytest.mark.postgres


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


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_session_ended_idle_in_a_transaction_is_an_unavailable_store(store_url: str) -> None:
    url = make_url(store_url)
    options = f"{url.query['options']} -cidle_in_transaction_session_timeout=300"
    store = open_store(
        url.update_query_dict({"options": options}).render_as_string(hide_password=False)
    )
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
