"""Keeping a worker's snapshot current: poll the store, reload on change, swap atomically.

The request path reads exactly one attribute, ``SnapshotSource.current``: a ``Snapshot`` or
``None`` (not loaded yet, or too old to serve). Everything else happens off the request path,
in ``run``: every ``poll_interval_s`` it asks the store for its change sequence (one cheap
read), and when that moved past the snapshot's, it loads a new snapshot in a worker thread and
replaces ``current`` with it in one assignment. A request that already picked up the old snapshot
finishes with it; no lock is ever taken.

When the store cannot be reached the worker keeps serving the last snapshot and reports
``problem`` (the health check answers 503 with it), because refusing every request over a
database outage that has not changed any credential would turn it into a full outage. That
holds for ``max_snapshot_age_s`` after the last poll that confirmed the snapshot: beyond that,
a revoked key might still be accepted, so ``current`` becomes ``None`` and every API request is
refused (503) until the store answers again. The bound holds whatever keeps polls from
confirming the snapshot: a poll that fails, and as much a poll that never returns (a network
that drops the database's packets leaves a read waiting for many minutes). Ages are measured on
the monotonic clock (``Clock.monotonic_ms``), so stepping the time of day back or forward
neither stretches nor cuts the bound; the times shown are the time of day.

A poll that has not returned is not a failure yet, but it is not confirming anything either:
once it has been in flight for longer than ``stalled_poll_s`` (``STALLED_POLL_MIN_S``, or
``STALLED_POLL_INTERVALS`` poll intervals if longer), the worker reports ``problem`` (Degraded)
and ``store_reachable`` is False, still serving the last snapshot until the age bound, as for a
poll that failed. A stalled database, a hung connection pooler or a reload blocked behind a
table lock (``VACUUM FULL``, ``ALTER TABLE``) makes a read wait without failing, possibly for
as long as the lock is held; without this, the health check would answer OK for the whole age
bound and then refuse at once. When the poll returns, its outcome decides as usual.

A reload that fails with the store reachable (a keyring that lacks a KEK version the store names,
say) is reported the same way and retried at every poll: the store's sequence is still past the
snapshot's, so the worker recovers as soon as the cause is gone (its keyring file holds the
version), whether or not anything changes in the store meanwhile.

``problem`` is what the unauthenticated health check answers, so it holds fixed phrases, times,
ages and at most a key-encryption key version number: never an error's text, which for a store
outage names the database's user, host, port and name (or the SQLite file's path).
``problem_detail`` says the same with the error's text, and that text is logged whenever it
changes: a project error's own message, any other error by its class and the frames it came
through (``error_text.described``), never its text nor a traceback, which for a database
driver's error repeat the statement's parameters.

The opt-outs this worker recorded (``add_optouts``: the logouts it answered ``{"optout":"OK"}``)
are applied to ``current`` at once and written to the store later (``services.write_behind``).
A snapshot loaded meanwhile holds the store's opt-outs, not those, so the source keeps them
while they wait for their write and applies them again to every snapshot it installs, until the
write-behind reports them written (``optouts_written``) or given up (``optouts_dropped``).
Written is where a snapshot stops needing them: a poll that starts after the report reads the
store after their commit, so what it loads holds them; a poll that started before had them
among those waiting when it started, applied to what it loaded in its own thread, or among those
recorded while it ran, applied when it is installed. So from the logout on, every snapshot this
worker serves answers ``optout`` for that identity. An opt-out given up is applied by no poll
that starts after the report, so the first reload such a poll makes forgets it, as no other
worker ever knew it. Nothing of this is done per request: a logout costs a dict entry more, a
poll a copy of what is waiting. ``MAX_LOCAL_OPTOUTS`` bounds what is kept, should nothing
report.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Final

from uid2_operator.clock import Clock
from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.error_text import described
from uid2_operator.errors import (
    KekVersionMissing,
    StoreAccessRefused,
    StoreUnavailable,
    UID2Error,
)
from uid2_operator.services.snapshot import Snapshot
from uid2_operator.services.snapshot_loader import Loaded

log = logging.getLogger(__name__)

Loader = Callable[[Loaded | None, int], Loaded]
"""``(previous, generation) -> Loaded``: reads the store and builds a snapshot."""
ChangeSeq = Callable[[], object]
"""The store's state as one cheap read gives it (``Store.change_state``): when it
differs from the loaded snapshot's (``Loaded.state``), a reload is due."""


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


MAX_LOCAL_OPTOUTS: Final = 250_000
"""Bound on this worker's opt-outs kept while they wait for their write (see the module doc):
more than a write-behind ever holds (its queue and the batch under way, ``MAX_PENDING_OPTOUTS``
each, every one reported written or given up), so it only bounds a source nothing reports to.
Beyond it, the oldest tenth are forgotten."""

STALLED_POLL_MIN_S: Final = 30.0
"""Shortest time a poll may stay unanswered before the worker reports Degraded (see the module
doc). A poll is one small query, plus a reload when the store moved: an incremental reload costs
milliseconds, but a full one (the first-level salt changed, a restored backup) reads every
opt-out, 6.5 s at a million on the benchmark machine (``docs/benchmarks.md``), longer with every
worker reloading at once on shared CPUs. Every worker reloads together, so a bound that such a
reload passed would make all of them answer 503 to the load balancer at once over a store that
works: 30 s leaves that reload several times its cost, and is what PostgreSQL connections allow
a network that drops packets (``tcp_user_timeout``) before the read fails on its own."""
STALLED_POLL_INTERVALS: Final = 5
"""With a long poll interval, the bound is this many intervals instead (if longer than
``STALLED_POLL_MIN_S``): a clean failure is reported one interval after it starts, a stalled poll
within a few."""

_STORE_DOWN: Final = "store unreachable"
_RELOAD_FAILING: Final = "snapshot reload failing"


def _missing_kek(exc: BaseException) -> KekVersionMissing | None:
    """The keyring's refusal of a version it lacks, raised or named as the cause (an item
    sealed under that version does not open because of it)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None or isinstance(seen, KekVersionMissing):
            return seen
        seen = seen.__cause__
    return None


def _public_cause(exc: BaseException) -> str | None:
    """What may be said publicly of why a reload failed with the store reachable: the missing
    key-encryption key version when the keyring lacks one, that the database refuses access (a
    role without a privilege), else the error's machine code or its class name, never its
    text."""
    if isinstance(exc, StoreAccessRefused):
        return StoreAccessRefused.public_cause
    if isinstance(exc, StoreUnavailable):
        return None
    missing = _missing_kek(exc)
    if missing is not None:
        return f"no key-encryption key version {missing.version:d}"
    return exc.code if isinstance(exc, UID2Error) else type(exc).__name__


def _store_down(exc: BaseException) -> bool:
    """Whether a poll failed because the store could not be reached (or locked), not because it
    refused the reload (a role without a privilege, a keyring lacking a version)."""
    return isinstance(exc, StoreUnavailable) and not isinstance(exc, StoreAccessRefused)


class SnapshotSource:
    """One worker's current snapshot and the loop that keeps it fresh (see the module doc)."""

    def __init__(
        self,
        load: Loader,
        change_seq: ChangeSeq,
        clock: Clock,
        *,
        poll_interval_s: float,
        max_snapshot_age_s: float,
    ) -> None:
        self.current: Snapshot | None = None
        self._load = load
        self._change_seq = change_seq
        self._clock = clock
        self._poll_interval_s = poll_interval_s
        self._max_age_ms = int(max_snapshot_age_s * 1000)
        self._stalled_poll_ms = int(
            max(STALLED_POLL_MIN_S, STALLED_POLL_INTERVALS * poll_interval_s) * 1000
        )
        self._loaded: Loaded | None = None
        self._generation = 0
        self._confirmed_at_ms: int | None = None
        self._confirmed_mono_ms: int | None = None
        """``_confirmed_at_ms`` on the monotonic clock: what the age is measured from."""
        self._polling_since_ms: int | None = None
        """When the poll in flight started (time of day), None when none is."""
        self._polling_mono_ms: int | None = None
        """``_polling_since_ms`` on the monotonic clock: how long the poll has been in flight."""
        self._stall_logged = False
        """Whether the poll in flight was logged as not answering."""
        self._failing_since_ms: int | None = None
        self._failure: str | None = None
        self._public_cause: str | None = None
        self._failing: str = _STORE_DOWN
        """What the failure was: the store out of reach, or the reload failing with the store up
        (a keyring that lacks a version the store names, say)."""
        self._waiting: dict[int, OptOutRecord] = {}
        """This worker's opt-outs not yet reported written or given up, by ``id`` (the very
        records the write-behind reports), oldest first."""
        self._recorded_while_polling: dict[int, OptOutRecord] | None = None
        """The opt-outs recorded since the poll in flight started, less those given up since
        (None: no poll in flight)."""
        self._stop = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot")
        self.loads = 0

    # ------------------------------------------------------------------------ state

    @property
    def snapshot(self) -> Snapshot | None:
        """The last snapshot loaded, served or not."""
        return None if self._loaded is None else self._loaded.snapshot

    @property
    def optouts_waiting(self) -> int:
        """How many of this worker's opt-outs are applied to every snapshot it installs, waiting
        for the write-behind to report them written or given up."""
        return len(self._waiting)

    @property
    def confirmed_age_ms(self) -> int | None:
        """How long ago a poll last confirmed the snapshot, on the monotonic clock (None before
        any did)."""
        return None if self._confirmed_mono_ms is None else self._age_ms()

    @property
    def stalled_poll_s(self) -> float:
        """How long a poll may stay unanswered before the worker reports Degraded."""
        return self._stalled_poll_ms / 1000

    @property
    def store_reachable(self) -> bool:
        """False while the last poll could not reach the store or the poll in flight has not
        answered for longer than ``stalled_poll_s``; a reload failing with the store reachable (a
        keyring that lacks a KEK version, say) leaves it True."""
        if self._poll_stalled():
            return False
        return self._failure is None or self._failing != _STORE_DOWN

    @property
    def problem(self) -> str | None:
        """Why this worker is not healthy (a plain-text line the unauthenticated health check
        answers, so without any error's text), or None when it is."""
        cause = "" if self._public_cause is None else f" ({self._public_cause})"
        return self._describe(cause)

    @property
    def problem_detail(self) -> str | None:
        """``problem`` with the error's text (for logs and diagnostics, never for callers)."""
        return self._describe("" if self._failure is None else f": {self._failure}")

    def _age_ms(self) -> int:
        """How long ago a poll last confirmed the snapshot (monotonic)."""
        return self._clock.monotonic_ms() - (self._confirmed_mono_ms or 0)

    def _poll_stalled(self) -> bool:
        """Whether the poll in flight has gone unanswered for longer than ``stalled_poll_s``."""
        started = self._polling_mono_ms
        return started is not None and self._clock.monotonic_ms() - started > self._stalled_poll_ms

    def _describe(self, cause: str) -> str | None:
        if self._loaded is None:
            if self._failure is None:
                return "No snapshot loaded: not loaded yet"
            since = _when(self._failing_since_ms or 0)
            return f"No snapshot loaded: {self._failing} since {since}{cause}"
        age_s = self._age_ms() // 1000
        stale = (
            f"Snapshot is stale ({age_s} s since last confirmed; the bound is "
            f"{self._max_age_ms // 1000} s): refusing API requests. "
        )
        if self._failure is None:
            if self.current is not None and not self._poll_stalled():
                return None
            if self._polling_since_ms is None:
                # The last poll answered, but had started before the bound: the next confirms.
                started = _when(self._confirmed_at_ms or 0)
                return f"{stale}The last poll to answer had started at {started}"
            # No poll failed: the one in flight has gone unanswered past the stall or age bound.
            what = "a poll of the store has not answered"
            since = _when(self._polling_since_ms)
        else:
            what = self._failing
            since = _when(self._failing_since_ms or 0)
        if self.current is None:
            return f"{stale}{what.capitalize()} since {since}{cause}"
        return (
            f"Degraded: {what} since {since}{cause}; serving the last snapshot, "
            f"confirmed {age_s} s ago"
        )

    # ------------------------------------------------------------------------ loading

    def refresh(self) -> bool:
        """Poll once, synchronously (startup and tests): reload if the store moved.

        Returns True when a new snapshot was installed. Store failures are recorded, not raised.
        """
        now, mono = self._clock.now_ms(), self._clock.monotonic_ms()
        waiting = self._start_poll(now, mono)
        try:
            outcome: Loaded | BaseException | None = self._fetch(waiting)
        except Exception as exc:  # recorded and reported on the health check, never raised
            outcome = exc
        return self._apply(now, mono, outcome)

    def _start_poll(self, now_ms: int, mono_ms: int) -> tuple[OptOutRecord, ...]:
        """A poll starts at ``now_ms`` (``mono_ms`` on the monotonic clock), on the thread that
        owns ``current``: the opt-outs waiting for their write now, which the poll applies to
        what it loads; those recorded from now on are collected for its install."""
        self._polling_since_ms, self._polling_mono_ms = now_ms, mono_ms
        self._stall_logged = False
        self._recorded_while_polling = {}
        return tuple(self._waiting.values())

    def _fetch(self, waiting: tuple[OptOutRecord, ...] = ()) -> Loaded | None:
        """The store's side of a poll (any thread): a new snapshot with this worker's opt-outs
        ``waiting`` applied, or None if nothing moved. The material stays the store's."""
        state = self._change_seq()
        loaded = self._loaded
        if loaded is not None and loaded.state == state:
            return None
        fresh = self._load(loaded, self._generation + 1)
        if not waiting:
            return fresh
        return fresh.with_snapshot(fresh.snapshot.with_optouts(waiting))

    def _apply(
        self, polled_at_ms: int, polled_mono_ms: int, outcome: Loaded | BaseException | None
    ) -> bool:
        """The state side of a poll that started at ``polled_at_ms`` (``polled_mono_ms`` on the
        monotonic clock), on the thread that owns ``current``."""
        self._polling_since_ms = self._polling_mono_ms = None
        if self._stall_logged:
            self._stall_logged = False
            log.warning("the poll of the store that had not answered returned")
        recorded, self._recorded_while_polling = self._recorded_while_polling, None
        if isinstance(outcome, BaseException):
            self._record_failure(polled_at_ms, outcome)
            return False
        refusing = self.current is None and self._loaded is not None
        if outcome is not None:
            if recorded:  # logouts answered while it loaded: few, applied here
                updated = outcome.snapshot.with_optouts(recorded.values())
                outcome = outcome.with_snapshot(updated)
            self._install(outcome)
        self._confirmed_at_ms = polled_at_ms
        self._confirmed_mono_ms = polled_mono_ms
        if self._failure is not None:
            self._failure = None
            self._public_cause = None
            self._failing_since_ms = None
            log.warning(
                "store reachable again"
                if self._failing == _STORE_DOWN
                else "snapshot reload works again"
            )
        if self._age_ms() > self._max_age_ms:
            # A poll that had not answered since before the bound confirms the store as it was
            # then: still too old to serve. The next poll, a moment later, confirms it now.
            self.current = None
            if not refusing:
                log.error("snapshot older than %d ms; refusing API requests", self._max_age_ms)
        elif refusing and self._loaded is not None:
            self.current = self._loaded.snapshot
            log.warning("snapshot confirmed again; serving API requests")
        return outcome is not None

    def _install(self, loaded: Loaded) -> None:
        self._generation = loaded.snapshot.generation
        self._loaded = loaded
        self.current = loaded.snapshot
        self.loads += 1
        log.info(
            "snapshot %d loaded at change_seq %s",
            loaded.snapshot.generation,
            loaded.snapshot.change_seq,
        )

    def _record_failure(self, now: int, exc: BaseException) -> None:
        message = exc.detail if isinstance(exc, UID2Error) else described(exc)
        failure = message.splitlines()[0][:300] if message else type(exc).__name__
        if self._failure is None:
            self._failing_since_ms = now
        if failure != self._failure:
            # The health check does not show this text, so the log must (once per change).
            log.warning("snapshot refresh failed: %s", message)
        self._failing = _STORE_DOWN if _store_down(exc) else _RELOAD_FAILING
        self._failure = failure
        self._public_cause = _public_cause(exc)
        self.check_age()

    def _log_stall(self) -> None:
        """Log, once per poll, that the poll in flight has passed ``stalled_poll_s``: the
        health check says Degraded from then on, and the log says why."""
        if self._stall_logged or not self._poll_stalled():
            return
        self._stall_logged = True
        log.warning(
            "a poll of the store has not answered for more than %g s (since %s); %s",
            self.stalled_poll_s,
            _when(self._polling_since_ms or 0),
            f"serving the last snapshot until it is {self._max_age_ms // 1000} s old"
            if self.current is not None
            else "refusing API requests: no snapshot loaded yet"
            if self._loaded is None
            else "refusing API requests: the last snapshot is older than "
            f"{self._max_age_ms // 1000} s",
        )

    def check_age(self) -> None:
        """Stop serving a snapshot no poll has confirmed for longer than the bound, whether the
        polls since failed or have not returned."""
        if self.current is None or self._confirmed_mono_ms is None:
            return
        if self._age_ms() > self._max_age_ms:
            log.error("snapshot older than %d ms; refusing API requests", self._max_age_ms)
            self.current = None

    def add_optouts(self, records: list[OptOutRecord]) -> None:
        """Apply opt-outs this worker just recorded, so its next answers already reflect them,
        and keep them, applied to every snapshot installed, until they are reported written or
        given up (see the module doc).

        Applying copies only the small overlay of the opt-out index, never its base, and never
        folds it (``Snapshot.with_optouts``): it costs what is applied, whatever the number of
        opt-outs, so it is always done. The material (the store's records) is left as it was:
        the next reload builds on it and reads these records back once they are written.
        """
        if not records:
            return
        waiting, recorded = self._waiting, self._recorded_while_polling
        for record in records:
            waiting[id(record)] = record
            if recorded is not None:
                recorded[id(record)] = record
        if len(waiting) > MAX_LOCAL_OPTOUTS:
            self._forget_oldest()
        snapshot = self.current
        if snapshot is not None:
            updated = snapshot.with_optouts(records)
            self._generation = updated.generation
            if self._loaded is not None:
                self._loaded = self._loaded.with_snapshot(updated)
            self.current = updated

    def optouts_written(self, records: list[OptOutRecord]) -> None:
        """The write-behind committed these (records ``add_optouts`` was given): a poll that
        starts from now on loads them from the store, so none applies them any more."""
        waiting = self._waiting
        for record in records:
            waiting.pop(id(record), None)

    def optouts_dropped(self, records: list[OptOutRecord]) -> None:
        """The write-behind gave these up (they will never be written): no install applies them
        any more but that of a poll already in flight that had them waiting when it started; the
        snapshot serving them keeps them until the next reload replaces it."""
        waiting, recorded = self._waiting, self._recorded_while_polling
        for record in records:
            waiting.pop(id(record), None)
            if recorded is not None:
                recorded.pop(id(record), None)

    def _forget_oldest(self) -> None:
        """Past ``MAX_LOCAL_OPTOUTS``, forget the oldest tenth (at once: one copy of what is
        kept per tenth of the bound recorded, not one per record)."""
        forgotten = len(self._waiting) - MAX_LOCAL_OPTOUTS + MAX_LOCAL_OPTOUTS // 10
        self._waiting = dict(itertools.islice(self._waiting.items(), forgotten, None))
        log.warning(
            "more than %d opt-outs recorded by this worker were neither reported written nor "
            "given up; the oldest %d are no longer applied again at snapshot reloads",
            MAX_LOCAL_OPTOUTS,
            forgotten,
        )

    # ------------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Poll until ``stop``. The store is read in a worker thread; the outcome is applied
        here, on the event loop that serves requests, so ``current`` has a single writer. A slow
        store keeps one poll in flight (never a queue of them) while the age is still checked."""
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            await self._sleep(self._poll_interval_s)
            if self._stop.is_set():
                return
            started_at, started_mono = self._clock.now_ms(), self._clock.monotonic_ms()
            self.check_age()
            fetch = functools.partial(self._fetch, self._start_poll(started_at, started_mono))
            pending = loop.run_in_executor(self._executor, fetch)
            while not pending.done():
                await asyncio.wait({pending}, timeout=self._until_check_s(self._poll_interval_s))
                self.check_age()
                self._log_stall()
                if self._stop.is_set():
                    pending.cancel()
                    return
            error = pending.exception()
            self._apply(started_at, started_mono, error if error is not None else pending.result())

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or until ``stop``; the serving stops meanwhile at the moment the
        snapshot passes the age bound, not at the next poll (which may be minutes away)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while not self._stop.is_set():
            left = until - loop.time()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self._until_check_s(left))
            self.check_age()

    def _until_check_s(self, seconds: float) -> float:
        """``seconds``, or less: until just past the moment the snapshot served passes the age
        bound, when ``check_age`` must run."""
        if self.current is None or self._confirmed_mono_ms is None:
            return seconds
        return min(seconds, max(0.0, (self._max_age_ms - self._age_ms() + 1) / 1000))

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
