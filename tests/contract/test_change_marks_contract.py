"""The mark of each change sequence, on every backend: every commit that moves the sequence
writes a random mark for its new value, in the same transaction; a unit that writes nothing
(or only usage) moves neither; marks further back than ``MARKS_KEPT`` go; and the upgrade that
added them gives the store's sequence at the time a mark, so that a worker that loads after it
has one to record."""

from __future__ import annotations

import pytest
from migration_steps import downgrade_to
from store_records import participant

from uid2_operator.storage import SqlStore, head_revision, open_store, upgrade
from uid2_operator.storage import schema as t

T0 = 1_700_000_000_000


def _marks(store: SqlStore, seqs: range) -> list[bytes | None]:
    with store.read() as rx:
        return [rx.mark_of(seq) for seq in seqs]


def _add_site(store: SqlStore, site_id: int) -> int:
    with store.transaction() as tx:
        tx.participants.add(participant(site_id))
    return store.change_seq()


def test_each_commit_that_moves_the_sequence_marks_it_once(store: SqlStore) -> None:
    start = store.change_seq()
    seqs = [_add_site(store, 1001 + n) for n in range(3)]
    assert seqs == [start + 1, start + 2, start + 3]
    marks = _marks(store, range(start + 1, start + 4))
    assert all(m is not None and len(m) == t.MARK_BYTES for m in marks)
    assert len(set(marks)) == 3
    assert _marks(store, range(start + 1, start + 4)) == marks  # read again: the same
    assert _marks(store, range(start + 4, start + 6)) == [None, None]  # not reached


def test_a_unit_that_writes_nothing_or_only_usage_marks_nothing(store: SqlStore) -> None:
    seq = _add_site(store, 1001)
    mark = _marks(store, range(seq, seq + 1))
    with store.transaction():
        pass
    store.record_usage([])
    assert store.change_seq() == seq
    assert _marks(store, range(seq, seq + 2)) == [*mark, None]


def test_a_failed_commit_leaves_no_mark(store: SqlStore) -> None:
    seq = _add_site(store, 1001)

    def fail_after_a_write() -> None:
        with store.transaction() as tx:
            tx.participants.add(participant(1002))
            raise RuntimeError("the use case fails after its write")

    with pytest.raises(RuntimeError):
        fail_after_a_write()
    assert store.change_seq() == seq
    assert _marks(store, range(seq + 1, seq + 2)) == [None]


def test_marks_further_back_than_the_kept_count_go(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(t, "MARKS_KEPT", 3)
    seqs = [_add_site(store, 1001 + n) for n in range(5)]
    marks = _marks(store, range(seqs[0], seqs[-1] + 1))
    assert [m is not None for m in marks] == [False, False, True, True, True]


def test_the_upgrade_marks_the_sequence_the_store_is_at(store_url: str) -> None:
    store = open_store(store_url)
    try:
        seq = _add_site(store, 1001)
    finally:
        store.close()
    downgrade_to(store_url, "0007")
    assert upgrade(store_url) == head_revision()
    store = open_store(store_url)
    try:
        assert store.change_seq() == seq
        (mark,) = _marks(store, range(seq, seq + 1))
        assert mark is not None
        assert _marks(store, range(seq - 1, seq)) == [None]  # only the one it is at
    finally:
        store.close()
