"""The write-behind writes a long opt-out queue in bounded transactions.

Each chunk of at most ``OPTOUT_WRITE_CHUNK`` opt-outs (with their audit events) is its own
transaction, so a backlog never holds the store's write lock for the whole flush. When a chunk
fails, the chunks before it stay committed and are not written again; the failed chunk and the
ones after it are kept for the next flush. A real migrated SQLite store is wrapped to count
committed transactions and to fail one of them part-way through.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, cast

from store_wrapper import StoreWrapper
from uid2_operator.clock import FixedClock
from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.errors import StoreUnavailable
from uid2_operator.services.write_behind import OPTOUT_WRITE_CHUNK, WriteBehind
from uid2_operator.storage import SqlStore
from uid2_operator.storage.interface import Tx
from uid2_operator.wire.encoding import b64encode

QUEUED = 1_200


class FailingOptOuts:
    """A transaction's opt-out repository whose ``put`` (or ``put_many``) fails after
    ``puts_before_failure`` records."""

    def __init__(self, inner: Any, puts_before_failure: int) -> None:
        self._inner = inner
        self._left = puts_before_failure

    def put(self, record: OptOutRecord) -> None:
        if self._left == 0:
            raise StoreUnavailable("database is unreachable")
        self._left -= 1
        self._inner.put(record)

    def put_many(self, records: Sequence[OptOutRecord]) -> None:
        for record in records:
            self.put(record)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class FailingTx:
    def __init__(self, inner: Tx, puts_before_failure: int) -> None:
        self._inner = inner
        self.optouts = FailingOptOuts(inner.optouts, puts_before_failure)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class ChunkCountingStore(StoreWrapper):
    """A real store that counts its committed write transactions; the ``fail_on``-th one
    (1-based) fails part-way through its opt-outs and rolls back."""

    def __init__(self, inner: SqlStore, *, fail_on: int | None = None) -> None:
        super().__init__(inner)
        self._fail_on = fail_on
        self.started = 0
        self.committed = 0

    @contextmanager
    def _unit(self) -> Iterator[Tx]:
        self.started += 1
        failing = self.started == self._fail_on
        with self._inner.transaction() as tx:
            yield cast(Tx, FailingTx(tx, 100)) if failing else tx
        self.committed += 1

    def transaction(self) -> AbstractContextManager[Tx]:
        return self._unit()

    def close(self) -> None:
        self._inner.close()


def flh(n: int) -> bytes:
    return hashlib.sha256(f"person-{n}".encode()).digest()


def queue(writer: WriteBehind, clock: FixedClock, count: int = QUEUED) -> None:
    for n in range(count):
        writer.record_optout(OptOutRecord(flh(n), clock.now_ms()))


def stored(store: SqlStore) -> set[bytes]:
    with store.read() as rx:
        return {r.first_level_hash for r in rx.optouts.list_all()}


def events_per_target(store: SqlStore) -> Counter[str]:
    with store.read() as rx:
        return Counter(e.target_id for e in rx.audit.list_events(action="optout.add"))


def test_a_long_queue_is_written_in_bounded_transactions(
    store: SqlStore, clock: FixedClock
) -> None:
    assert OPTOUT_WRITE_CHUNK == 500
    counting = ChunkCountingStore(store)
    writer = WriteBehind(counting, clock, flush_interval_s=60)
    try:
        queue(writer, clock)
        seq_before = store.change_seq()

        writer.flush()
    finally:
        writer.close()

    assert (counting.started, counting.committed) == (3, 3)
    assert store.change_seq() == seq_before + 3
    assert (writer.failures, len(writer.optouts)) == (0, 0)
    assert stored(store) == {flh(n) for n in range(QUEUED)}
    events = events_per_target(store)
    assert set(events) == {b64encode(flh(n)) for n in range(QUEUED)}
    assert set(events.values()) == {1}


def test_a_failed_chunk_keeps_it_and_the_rest_but_not_the_committed_ones(
    store: SqlStore, clock: FixedClock
) -> None:
    counting = ChunkCountingStore(store, fail_on=2)
    writer = WriteBehind(counting, clock, flush_interval_s=60)
    try:
        queue(writer, clock)

        writer.flush()
        assert (counting.started, counting.committed) == (2, 1)
        assert writer.failures == 1
        assert len(writer.optouts) == QUEUED - OPTOUT_WRITE_CHUNK
        first_chunk = {flh(n) for n in range(OPTOUT_WRITE_CHUNK)}
        assert stored(store) == first_chunk  # the failed chunk's first puts rolled back
        assert sum(events_per_target(store).values()) == OPTOUT_WRITE_CHUNK

        writer.flush()
        assert (counting.started, counting.committed) == (4, 3)
        assert (writer.failures, len(writer.optouts)) == (1, 0)
    finally:
        writer.close()

    assert stored(store) == {flh(n) for n in range(QUEUED)}
    events = events_per_target(store)
    assert set(events) == {b64encode(flh(n)) for n in range(QUEUED)}
    assert set(events.values()) == {1}  # nothing written twice


def test_an_identity_in_two_chunks_keeps_its_later_time(store: SqlStore, clock: FixedClock) -> None:
    writer = WriteBehind(store, clock, flush_interval_s=60)
    try:
        queue(writer, clock, count=OPTOUT_WRITE_CHUNK)
        clock.advance(5_000)
        writer.record_optout(OptOutRecord(flh(0), clock.now_ms()))
        writer.flush()
    finally:
        writer.close()
    with store.read() as rx:
        record = rx.optouts.get(flh(0))
    assert record is not None
    assert record.timestamp_ms == clock.now_ms()
    assert events_per_target(store)[b64encode(flh(0))] == 2
