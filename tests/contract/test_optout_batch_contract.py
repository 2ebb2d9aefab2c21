"""Reading and writing many opt-outs at once (``get_many``, ``put_many``), on every backend, and the
write-behind's chunks built on them: what they store is what a ``get``, and a ``put`` and audit
event per record that changes what is stored, store; a record met again keeps its later time,
within a chunk or across chunks; and a chunk written again once it landed (its commit never
answered) records nothing more."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest

from uid2_operator.domain.audit import EMPTY_HEAD, AuditEvent, ChainHead, verify_chain
from uid2_operator.domain.optout import OptOutRecord, latest
from uid2_operator.errors import StoreError
from uid2_operator.services.audit_trail import record_event
from uid2_operator.services.write_behind import (
    OPERATOR_ACTOR,
    OPTOUT_WRITE_CHUNK,
    write_optout_chunk,
    write_optouts,
)
from uid2_operator.storage import SqlStore
from uid2_operator.storage.interface import Tx
from uid2_operator.wire.encoding import b64encode

T0 = 1_700_000_000_000
NOW = T0 + 60_000


def flh(n: int) -> bytes:
    return hashlib.sha256(f"person-{n}".encode()).digest()


def record(
    n: int, at: int = T0, ad_id: str | None = None, *earlier: tuple[str, int]
) -> OptOutRecord:
    return OptOutRecord(flh(n), at, ad_id, earlier)


def _stored(store: SqlStore) -> tuple[list[OptOutRecord], list[AuditEvent], ChainHead | None]:
    with store.read() as rx:
        return rx.optouts.list_all(), rx.audit.list_events(), rx.audit.head()


# ------------------------------------------------------------------------------ the repository


def test_get_many_reads_the_stored_records_by_hash(store: SqlStore) -> None:
    stored = [record(n, T0 + n, "A" * 44 if n % 2 else None) for n in range(0, 1_200, 2)]
    with store.transaction() as tx:
        tx.optouts.put_many(stored)
    asked = [flh(n) for n in range(1_200)] + [flh(0), flh(2)]  # more than one IN list, repeats
    with store.read() as rx:
        found = rx.optouts.get_many(asked)
        assert rx.optouts.get_many([]) == {}
    assert found == {r.first_level_hash: r for r in stored}


def test_put_many_creates_and_replaces_and_keeps_the_last_of_a_hash(store: SqlStore) -> None:
    with store.transaction() as tx:
        tx.optouts.put_many([record(1), record(2, ad_id="A" * 44)])
    cursor = store.change_seq()
    replaced = record(2, T0 - 5)  # put_many stores what it is given: merging is the caller's
    with store.transaction() as tx:
        tx.optouts.put_many([record(3, T0 + 9), replaced, record(3, T0 + 1, "B" * 44)])
    with store.read() as rx:
        assert rx.optouts.list_all() == sorted(
            [record(1), replaced, record(3, T0 + 1, "B" * 44)], key=lambda r: r.first_level_hash
        )
        changes = rx.optouts.since(cursor)
    assert sorted(changes.records, key=lambda r: r.first_level_hash) == sorted(
        [replaced, record(3, T0 + 1, "B" * 44)], key=lambda r: r.first_level_hash
    )
    assert changes.cursor == store.change_seq() == cursor + 1


def test_put_many_of_nothing_moves_no_change_seq(store: SqlStore) -> None:
    seq = store.change_seq()
    with store.transaction() as tx:
        tx.optouts.put_many([])
    assert store.change_seq() == seq


def test_a_chunk_that_fails_part_way_leaves_nothing_of_it(store: SqlStore) -> None:
    write_optout_chunk(store, [record(1)], lambda: NOW)
    before = _stored(store)
    seq = store.change_seq()

    def failing_use_case() -> None:
        with store.transaction() as tx:
            tx.optouts.put_many([record(1, NOW), record(2)])
            written = tx.optouts.get_many([flh(1), flh(2)])
            assert written == {flh(1): record(1, NOW), flh(2): record(2)}
            raise StoreError("the unit failed after its opt-outs were written")

    with pytest.raises(StoreError):
        failing_use_case()
    assert _stored(store) == before
    assert store.change_seq() == seq


# ------------------------------------------------------------------- the write-behind's chunks


def _write_each(tx: Tx, records: Sequence[OptOutRecord], now_ms: int) -> None:
    """One ``get``, and a ``put`` and an audit event per record that changes what is stored:
    what a chunk write must store."""
    for r in records:
        before = tx.optouts.get(r.first_level_hash)
        after = latest(before, r)
        if after == before:
            continue
        tx.optouts.put(after)
        record_event(
            tx,
            OPERATOR_ACTOR,
            at_ms=now_ms,
            action="optout.add",
            target_type="optout",
            target_id=b64encode(r.first_level_hash),
            after={"timestamp_ms": r.timestamp_ms, "via": "/v2/token/logout"},
        )


class _Undo(Exception):
    def __init__(self, seen: tuple[list[OptOutRecord], list[AuditEvent], ChainHead | None]) -> None:
        super().__init__("rolled back on purpose")
        self.seen = seen


def _written_each(
    store: SqlStore, records: Sequence[OptOutRecord]
) -> tuple[list[OptOutRecord], list[AuditEvent], ChainHead | None]:
    """What ``_write_each`` stores, seen inside a unit of work that is then rolled back."""
    try:
        with store.transaction() as tx:
            _write_each(tx, records, NOW)
            raise _Undo((tx.optouts.list_all(), tx.audit.list_events(), tx.audit.head()))
    except _Undo as undo:
        return undo.seen


# Stored before the write: 0 early with a raw UID, 1 late, 2 at the same time as it comes again.
EXISTING = (record(0, T0 - 100, "E" * 44), record(1, T0 + 100), record(2, T0))
# Within the first chunk: 3 later then earlier, 4 earlier then later, 5 three times out of order.
# Across chunks: 0 and 6 come again after the first chunk, 0 later (no raw UID), 6 earlier.
FIRST_CHUNK = [
    record(0, T0),
    record(1, T0),
    record(2, T0, "S" * 44),
    record(3, T0 + 20, "L" * 44),
    record(4, T0 + 1),
    record(3, T0 + 10, "X" * 44),
    record(4, T0 + 30),
    record(5, T0 + 2),
    record(6, T0 + 50, "G" * 44),
    record(5, T0 + 7, "F" * 44),
    record(5, T0 + 3),
]
LATER = [record(0, T0 + 40), record(6, T0 + 5, "Y" * 44)]


def _records() -> list[OptOutRecord]:
    filler = [record(100 + n, T0 + n) for n in range(OPTOUT_WRITE_CHUNK - len(FIRST_CHUNK))]
    return [*FIRST_CHUNK, *filler, *LATER]


def test_write_optouts_stores_what_a_put_and_an_event_per_change_store(store: SqlStore) -> None:
    with store.transaction() as tx:
        tx.optouts.put_many(EXISTING)
        record_event(tx, OPERATOR_ACTOR, at_ms=T0, action="x", target_type="t", target_id="i")
    records = _records()
    assert len(records) > OPTOUT_WRITE_CHUNK  # duplicates both within and across chunks
    expected = _written_each(store, records)

    write_optouts(store, records, lambda: NOW)

    assert _stored(store) == expected
    _, events, head = expected
    assert verify_chain(events, recorded_head=EMPTY_HEAD if head is None else head).ok


def test_a_record_met_again_keeps_its_later_time(store: SqlStore) -> None:
    with store.transaction() as tx:
        tx.optouts.put_many(EXISTING)
    write_optouts(store, _records(), lambda: NOW)
    with store.read() as rx:
        kept = rx.optouts.get_many(flh(n) for n in range(7))
    # Each raw UID keeps the time of its first opt-out (among the earlier ones when it is not
    # the newest, or first opted out before the latest time).
    assert kept == {
        flh(0): record(0, T0 + 40, "E" * 44, ("E" * 44, T0 - 100)),  # later across chunks
        flh(1): record(1, T0 + 100),  # the stored one was later
        flh(2): record(2, T0, "S" * 44),  # the same time: the newer raw UID
        flh(3): record(3, T0 + 20, "L" * 44, ("X" * 44, T0 + 10)),  # later first in the chunk
        flh(4): record(4, T0 + 30),  # later last within the chunk
        flh(5): record(5, T0 + 7, "F" * 44),
        flh(6): record(6, T0 + 50, "G" * 44, ("Y" * 44, T0 + 5)),  # earlier, in a later chunk
    }


def test_a_chunk_written_again_after_it_landed_records_nothing_more(store: SqlStore) -> None:
    # Its commit reached the database but the answer never came back (the round-trip deadline
    # passed): the write-behind keeps the records and writes them again.
    records = _records()
    write_optouts(store, records, lambda: NOW)
    before = _stored(store)
    write_optouts(store, records, lambda: NOW + 1)
    assert _stored(store) == before
