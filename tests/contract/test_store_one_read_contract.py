"""``Store.one_read``: the reads a thread makes inside the block share one read transaction,
on every backend, so reads made by different services see one state of the store."""

from __future__ import annotations

import threading

from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.storage import SqlStore

T0 = 1_700_000_000_000


def _opt_out(store: SqlStore, n: int) -> None:
    with store.transaction() as tx:
        tx.optouts.put(OptOutRecord(bytes([n]) * 32, T0, None))


def _records(store: SqlStore) -> int:
    with store.read() as rx:
        return len(rx.optouts.since(0).records)


def test_reads_inside_one_read_see_the_state_it_began_with(store: SqlStore) -> None:
    _opt_out(store, 1)
    before = store.change_seq()
    with store.one_read():
        assert store.change_seq() == before
        assert _records(store) == 1
        _opt_out(store, 2)  # another connection commits meanwhile
        assert store.change_seq() == before
        assert _records(store) == 1
        assert store.snapshot(T0).change_seq == before
        with store.one_read():  # nested: still the outer block's state
            assert _records(store) == 1
    assert store.change_seq() == before + 1
    assert _records(store) == 2


def test_one_read_is_the_calling_threads_alone(store: SqlStore) -> None:
    """Another thread's reads during the block see the store as it is."""
    _opt_out(store, 1)
    before = store.change_seq()
    seen: list[int] = []
    with store.one_read():
        _opt_out(store, 2)
        reader = threading.Thread(target=lambda: seen.append(store.change_seq()))
        reader.start()
        reader.join()
        assert store.change_seq() == before
    assert seen == [before + 1]
