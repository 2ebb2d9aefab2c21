"""A chunk of opt-outs is written all or nothing.

The write-behind writes a chunk's opt-outs and then its audit events, in one unit of work; when
the unit fails after either was written, nothing of the chunk stays: no record, no event, the
recorded chain head where the chunks before left it. A real migrated SQLite store is wrapped so
that one write fails once its rows are written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, cast

import pytest

from store_wrapper import StoreWrapper
from uid2_operator.clock import FixedClock
from uid2_operator.domain.audit import AuditEvent, ChainHead
from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.errors import StoreUnavailable
from uid2_operator.services.write_behind import (
    OPTOUT_WRITE_CHUNK,
    OptOutsNotWritten,
    write_optouts,
)
from uid2_operator.storage import SqlStore
from uid2_operator.storage.interface import AuditFields, EventHasher, Tx

FAILURE = StoreUnavailable("database is unreachable")


class FailsAfterWriting:
    """A repository whose ``method`` writes what it is given, then fails."""

    def __init__(self, inner: Any, method: str) -> None:
        self._inner = inner
        self._method = method

    def put_many(self, records: Sequence[OptOutRecord]) -> None:
        self._inner.put_many(records)
        if self._method == "put_many":
            raise FAILURE

    def append_many(self, events: Sequence[AuditFields], hasher: EventHasher) -> list[AuditEvent]:
        placed: list[AuditEvent] = self._inner.append_many(events, hasher)
        if self._method == "append_many":
            raise FAILURE
        return placed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class FailingTx:
    def __init__(self, inner: Tx, method: str) -> None:
        self._inner = inner
        self.optouts = FailsAfterWriting(inner.optouts, method)
        self.audit = FailsAfterWriting(inner.audit, method)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class FailingOnSecondUnit(StoreWrapper):
    """A real store whose second write unit fails in ``method``, after that wrote its rows."""

    def __init__(self, inner: SqlStore, method: str) -> None:
        super().__init__(inner)
        self._method = method
        self.started = 0

    @contextmanager
    def _unit(self) -> Iterator[Tx]:
        self.started += 1
        with self._inner.transaction() as tx:
            yield cast(Tx, FailingTx(tx, self._method)) if self.started == 2 else tx

    def transaction(self) -> AbstractContextManager[Tx]:
        return self._unit()


def flh(n: int) -> bytes:
    return hashlib.sha256(f"person-{n}".encode()).digest()


@pytest.mark.parametrize("method", ["put_many", "append_many"])
def test_a_chunk_failing_part_way_leaves_nothing_of_it(
    store: SqlStore, clock: FixedClock, method: str
) -> None:
    records = [OptOutRecord(flh(n), clock.now_ms()) for n in range(OPTOUT_WRITE_CHUNK + 10)]
    failing = FailingOnSecondUnit(store, method)
    seq_before = store.change_seq()

    with pytest.raises(OptOutsNotWritten) as failed:
        write_optouts(failing, records, clock.now_ms)

    assert failed.value.committed == OPTOUT_WRITE_CHUNK
    assert failed.value.__cause__ is FAILURE
    assert failing.started == 2
    assert store.change_seq() == seq_before + 1  # the first chunk only
    with store.read() as rx:
        stored = {r.first_level_hash for r in rx.optouts.list_all()}
        events = rx.audit.list_events()
        head = rx.audit.head()
    assert stored == {flh(n) for n in range(OPTOUT_WRITE_CHUNK)}
    assert len(events) == OPTOUT_WRITE_CHUNK
    assert head == ChainHead(events[-1].seq, events[-1].hash)
