"""What the request path writes, collected in memory and written to the store in batches.

Two things change because requests arrive: each API key's usage (per-endpoint counts and when
it was last used) and the opt-outs recorded by ``/v2/token/logout``. Neither may make a request
wait for the database, so the request path only touches plain dicts and lists (a few hundred
nanoseconds), and ``WriteBehind.flush`` writes what accumulated in short transactions, off the
request path: every ``flush_interval_s`` from a background task, and once more at shutdown. Usage
is one transaction per flush; opt-outs are written ``OPTOUT_WRITE_CHUNK`` at a time, each chunk
its own transaction, so that a backlog (up to ``MAX_PENDING_OPTOUTS`` after the store was
unreachable) never holds the store's write lock for longer than one chunk takes.

Everything here runs on the worker's event loop except the store calls, which ``run`` hands to a
thread after swapping the pending batch out on the loop, so an increment can never land in a
batch that is being written. Opt-outs and usage are written in separate transactions, and a
failed write puts back only what it did not commit (counts are added, times are maxed), to be
retried on the next flush: for opt-outs, the chunk that failed and every one after it, never the
chunks already committed (their records and audit events would be written twice). The opt-out
queue is bounded so an unreachable store cannot grow it without limit. An opt-out dropped for
want of room is lost once the next reload replaces the snapshot it was applied to, so drops are
counted (``OptOutQueue.dropped``, exported as a metric) and logged at WARNING, at most once per
``DROP_WARNING_INTERVAL_MS`` (``WriteBehind.report_drops``).

``last_used_at`` is coarse by design: it is the time of the last tick of the flusher before the
request (``UsageMeter.now_ms``), not a clock read per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from uid2_operator.clock import Clock
from uid2_operator.domain.optout import OptOutRecord, latest
from uid2_operator.errors import NotFound
from uid2_operator.services.audit_trail import EventDetails, record_events
from uid2_operator.services.context import Actor
from uid2_operator.storage.interface import Store, UsageEntry
from uid2_operator.wire.encoding import b64encode

log = logging.getLogger(__name__)

MAX_PENDING_OPTOUTS: Final = 100_000
OPTOUT_WRITE_CHUNK: Final = 500
"""The most opt-outs written in one transaction (each with its audit event): a flush of a long
queue is many short transactions, between which other writers get the store."""
DROP_WARNING_INTERVAL_MS: Final = 60_000
"""At most one warning about dropped opt-outs per this interval (each says how many since the
last)."""
OPERATOR_ACTOR: Final = Actor("operator", source="operator-api")
"""Who the audit trail names for an opt-out received through ``/v2/token/logout``."""


class UsageMeter:
    """Per-(key id, endpoint) request counts and the coarse time of the last one."""

    __slots__ = ("_pending", "now_ms")

    def __init__(self, now_ms: int = 0) -> None:
        self._pending: dict[tuple[str, str], list[int]] = {}
        self.now_ms = now_ms

    def add(self, key_id: str, endpoint: str) -> None:
        entry = self._pending.get((key_id, endpoint))
        if entry is None:
            self._pending[(key_id, endpoint)] = [1, self.now_ms]
        else:
            entry[0] += 1
            entry[1] = self.now_ms

    def take(self) -> list[UsageEntry]:
        """Everything counted since the last take, as store entries; the meter starts over."""
        pending, self._pending = self._pending, {}
        return [(k, e, n, at) for (k, e), (n, at) in pending.items()]

    def restore(self, batch: Sequence[UsageEntry]) -> None:
        """Put back a batch that could not be written (added to what came in since)."""
        for key_id, endpoint, count, at in batch:
            entry = self._pending.setdefault((key_id, endpoint), [0, at])
            entry[0] += count
            entry[1] = max(entry[1], at)

    def __len__(self) -> int:
        return len(self._pending)


class OptOutQueue:
    """Opt-outs received by this worker and not yet in the store."""

    __slots__ = ("_pending", "dropped")

    def __init__(self) -> None:
        self._pending: list[OptOutRecord] = []
        self.dropped = 0

    def add(self, record: OptOutRecord) -> None:
        if len(self._pending) >= MAX_PENDING_OPTOUTS:
            self.dropped += 1
            return
        self._pending.append(record)

    def take(self) -> list[OptOutRecord]:
        pending, self._pending = self._pending, []
        return pending

    def restore(self, records: Sequence[OptOutRecord]) -> None:
        room = MAX_PENDING_OPTOUTS - len(self._pending)
        self.dropped += max(0, len(records) - room)
        self._pending[:0] = records[: max(room, 0)]

    def __len__(self) -> int:
        return len(self._pending)


class OptOutsNotWritten(Exception):
    """A chunk of opt-outs failed (the cause is chained); the ``committed`` records before it
    stay written."""

    def __init__(self, committed: int) -> None:
        super().__init__(f"{committed} opt-outs committed before a chunk failed")
        self.committed = committed


def write_optouts(store: Store, records: Sequence[OptOutRecord], now_ms: int) -> None:
    """Record opt-outs, ``OPTOUT_WRITE_CHUNK`` per transaction (``write_optout_chunk``), in
    order. When a chunk fails, OptOutsNotWritten says how many records were committed before
    it (they stay written)."""
    for start in range(0, len(records), OPTOUT_WRITE_CHUNK):
        try:
            write_optout_chunk(store, records[start : start + OPTOUT_WRITE_CHUNK], now_ms)
        except Exception as exc:
            raise OptOutsNotWritten(start) from exc


def write_optout_chunk(store: Store, records: Sequence[OptOutRecord], now_ms: int) -> None:
    """Record opt-outs in one transaction, each with its audit event, keeping the latest time
    (a record met again, in this chunk or an earlier one, keeps the later of the two).

    The store is asked in bulk: one read of the records already stored, one write of the
    merged ones, one append of the events (in the order of ``records``). What it stores is what
    a ``get``, ``put`` and ``record_event`` per record would store, in less time under the
    write lock."""
    with store.transaction() as tx:
        kept = tx.optouts.get_many(record.first_level_hash for record in records)
        for record in records:
            flh = record.first_level_hash
            kept[flh] = latest(kept.get(flh), record)
        tx.optouts.put_many(list(kept.values()))
        record_events(
            tx,
            OPERATOR_ACTOR,
            (
                EventDetails(
                    at_ms=now_ms,
                    action="optout.add",
                    target_type="optout",
                    target_id=b64encode(record.first_level_hash),
                    after={"timestamp_ms": record.timestamp_ms, "via": "/v2/token/logout"},
                )
                for record in records
            ),
        )


class WriteBehind:
    """The usage meter and the opt-out queue of one worker, and the loop that flushes them."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        flush_interval_s: float,
        on_optouts: Callable[[list[OptOutRecord]], None] | None = None,
    ) -> None:
        self.usage = UsageMeter(clock.now_ms())
        self.optouts = OptOutQueue()
        self._store = store
        self._clock = clock
        self._interval_s = flush_interval_s
        self._on_optouts = on_optouts
        self._stop = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="write-behind")
        self.failures = 0
        self._drops_reported = 0
        self._drop_warned_at_ms: int | None = None

    def record_optout(self, record: OptOutRecord) -> None:
        """The logout endpoint's sink: queue it for the store and apply it locally at once."""
        self.optouts.add(record)
        if self._on_optouts is not None:
            self._on_optouts([record])

    def tick(self) -> None:
        """Advance the coarse usage clock (cheap; called every poll interval)."""
        self.usage.now_ms = self._clock.now_ms()

    def _write(
        self, usage: list[UsageEntry], optouts: list[OptOutRecord]
    ) -> tuple[list[UsageEntry], list[OptOutRecord]]:
        """Write each batch in its own transactions; return what could not be written.

        The writes are independent: when one fails, another may already be committed, so only
        what failed may be put back (putting back committed opt-outs would record them, and their
        audit events, a second time). Opt-outs are written ``OPTOUT_WRITE_CHUNK`` per
        transaction; the first chunk that fails stops them, and it and the chunks after it are
        what is returned.
        """
        failed_optouts = self._write_optouts(optouts) if optouts else []
        failed_usage: list[UsageEntry] = []
        if usage:
            try:
                self._store.record_usage(usage)
            except NotFound as exc:  # keys are never deleted; a restored backup could do it
                log.warning("usage batch dropped: %s", exc.detail)
            except Exception:
                log.warning(
                    "write-behind usage write failed; keeping %d usage rows",
                    len(usage),
                    exc_info=True,
                )
                failed_usage = usage
        return failed_usage, failed_optouts

    def _write_optouts(self, optouts: list[OptOutRecord]) -> list[OptOutRecord]:
        """Write the opt-outs chunk by chunk; return those from the first failed chunk on."""
        try:
            write_optouts(self._store, optouts, self._clock.now_ms())
        except OptOutsNotWritten as failed:
            log.warning(
                "write-behind opt-out write failed; %d opt-outs committed, keeping %d",
                failed.committed,
                len(optouts) - failed.committed,
                exc_info=failed.__cause__,
            )
            return optouts[failed.committed :]
        return []

    def flush(self) -> None:
        """Write everything pending now, synchronously (shutdown, tests)."""
        self._put_back(*self._write(self.usage.take(), self.optouts.take()))
        self.report_drops()

    def report_drops(self) -> None:
        """Log a WARNING when opt-outs were dropped since the last one, at most once per
        ``DROP_WARNING_INTERVAL_MS`` (the next line counts what was dropped meanwhile)."""
        dropped = self.optouts.dropped
        if dropped == self._drops_reported:
            return
        now_ms = self._clock.now_ms()
        last = self._drop_warned_at_ms
        if last is not None and now_ms - last < DROP_WARNING_INTERVAL_MS:
            return
        log.warning(
            "%d logout opt-outs dropped (%d since this worker started): %d were already waiting "
            "for the store; a dropped opt-out is never written and is lost at the next snapshot "
            "reload",
            dropped - self._drops_reported,
            dropped,
            MAX_PENDING_OPTOUTS,
        )
        self._drops_reported = dropped
        self._drop_warned_at_ms = now_ms

    def _put_back(self, usage: list[UsageEntry], optouts: list[OptOutRecord]) -> None:
        """Keep what could not be written for the next flush."""
        if not usage and not optouts:
            return
        self.failures += 1
        self.usage.restore(usage)
        self.optouts.restore(optouts)

    async def run(self) -> None:
        """Flush every ``flush_interval_s`` until ``stop``; opt-outs are flushed on every
        poll-sized tick (they change what other workers answer), usage on the interval."""
        loop = asyncio.get_running_loop()
        last_usage_flush = loop.time()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=min(self._interval_s, 0.5))
            self.tick()
            self.report_drops()
            usage_due = loop.time() - last_usage_flush >= self._interval_s
            if not usage_due and not len(self.optouts):
                continue
            usage = self.usage.take() if usage_due else []
            if usage_due:
                last_usage_flush = loop.time()
            optouts = self.optouts.take()
            try:
                failed = await loop.run_in_executor(self._executor, self._write, usage, optouts)
            except Exception:  # the write never ran (``_write`` itself keeps store errors)
                log.warning("write-behind flush could not run", exc_info=True)
                failed = (usage, optouts)
            self._put_back(*failed)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
