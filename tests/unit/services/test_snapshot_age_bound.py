"""The snapshot's age bound holds whatever keeps polls from confirming it, and is measured on the
monotonic clock.

A poll that never returns (a network dropping the database's packets leaves a read waiting for
many minutes) must stop the worker serving once the bound passes, exactly as failing polls do:
otherwise a key revoked meanwhile stays accepted while the health check says OK. Stepping the
time of day (an NTP correction) must neither stretch the bound nor cut it short.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from uid2_operator.clock import FixedClock
from uid2_operator.errors import StoreUnavailable
from uid2_operator.services.snapshot_loader import Loaded
from uid2_operator.services.snapshot_source import SnapshotSource
from uid2_operator.services.write_behind import WriteBehind
from uid2_operator.storage import open_store
from uid2_operator.web.operator_api.server import _gauges

BOUND_S = 10
HOUR_MS = 3_600_000


class _Snapshot:
    def __init__(self, generation: int, change_seq: int) -> None:
        self.generation = generation
        self.change_seq = change_seq


class _Store:
    """The two reads a snapshot source makes: they may fail, or wait until released."""

    def __init__(self) -> None:
        self.seq = 1
        self.down = False
        self.answering = threading.Event()
        self.answering.set()
        self.waiting = threading.Event()

    def change_seq(self) -> int:
        if not self.answering.is_set():
            self.waiting.set()
            self.answering.wait(timeout=30)
        if self.down:
            raise StoreUnavailable("The store at sqlite:///test is unavailable: switched off")
        return self.seq

    def load(self, previous: Loaded | None, generation: int) -> Any:
        del previous
        return Loaded(_Snapshot(generation, self.seq), None)  # type: ignore[arg-type]


def _source(store: _Store, clock: FixedClock, poll_interval_s: float = 1) -> SnapshotSource:
    return SnapshotSource(
        store.load,
        store.change_seq,
        clock,
        poll_interval_s=poll_interval_s,
        max_snapshot_age_s=BOUND_S,
    )


def test_a_poll_that_never_returns_stops_the_serving_once_the_bound_passes() -> None:
    store, clock = _Store(), FixedClock()
    source = _source(store, clock, poll_interval_s=0.01)
    assert source.refresh() is True
    served = source.current
    store.answering.clear()  # every read now waits, as over a network dropping packets

    async def scenario() -> tuple[list[object], str | None, object]:
        running = asyncio.create_task(source.run())
        seen: list[object] = []
        try:
            while not store.waiting.is_set():
                await asyncio.sleep(0.01)
            clock.advance(BOUND_S * 1000)  # at the bound: still served
            await asyncio.sleep(0.05)
            seen.append(source.current)
            clock.advance(1)  # past it
            await asyncio.sleep(0.05)
            seen.append(source.current)
            problem = source.problem
            store.answering.set()  # the read returns at last, confirming the snapshot
            for _ in range(200):
                if source.current is not None:
                    break
                await asyncio.sleep(0.01)
            return seen, problem, source.current
        finally:
            source.stop()
            store.answering.set()
            await running

    try:
        seen, problem, after = asyncio.run(scenario())
    finally:
        source.close()
    assert seen == [served, None]
    assert problem is not None
    assert problem.startswith(
        f"Snapshot is stale ({BOUND_S} s since last confirmed; the bound is {BOUND_S} s): "
        "refusing API requests. A poll of the store has not answered since "
    )
    assert after is served
    assert source.problem is None


def test_a_clock_stepped_back_does_not_stretch_the_bound() -> None:
    store, clock = _Store(), FixedClock()
    source = _source(store, clock)
    assert source.refresh() is True
    clock.at_ms -= HOUR_MS  # the time of day goes back an hour; no time passes
    store.down = True
    clock.advance(BOUND_S * 1000 + 1)
    assert source.refresh() is False
    assert source.current is None
    assert source.problem is not None
    assert source.problem.startswith(f"Snapshot is stale ({BOUND_S} s since last confirmed")


def test_a_clock_stepped_forward_does_not_cut_the_bound_short() -> None:
    store, clock = _Store(), FixedClock()
    source = _source(store, clock)
    assert source.refresh() is True
    served = source.current
    clock.at_ms += HOUR_MS  # the time of day jumps an hour ahead; no time passes
    store.down = True
    clock.advance(1000)
    assert source.refresh() is False
    assert source.current is served
    assert source.problem is not None
    assert source.problem.endswith("serving the last snapshot, confirmed 1 s ago")


def test_the_confirmed_age_gauge_counts_elapsed_time_not_the_time_of_day(tmp_path: Path) -> None:
    store, clock = _Store(), FixedClock()
    source = _source(store, clock)
    assert source.confirmed_age_ms is None
    assert source.refresh() is True
    clock.at_ms -= HOUR_MS
    clock.advance(2500)
    assert source.confirmed_age_ms == 2500
    db = open_store(f"sqlite:///{tmp_path / 'unused.db'}", check_schema=False)
    writer = WriteBehind(db, clock, flush_interval_s=1)
    try:
        gauges = {name: read for name, _help, read in _gauges(source, writer)}
        assert gauges["uid2_operator_snapshot_confirmed_age_seconds"]() == 2.5
    finally:
        writer.close()
        db.close()


def test_failing_polls_stop_the_serving_when_the_bound_passes_not_at_the_next_poll() -> None:
    # A poll that fails at once, just before the bound, must not leave the snapshot served until
    # the next poll: with polls ten minutes apart, that is up to ten minutes past the bound.
    store, clock = _Store(), FixedClock()
    source = _source(store, clock, poll_interval_s=600)
    assert source.refresh() is True
    served = source.current
    store.down = True  # every poll from now on fails at once
    clock.advance(BOUND_S * 1000 - 1)
    assert source.refresh() is False  # a poll fails a millisecond before the bound

    async def scenario() -> tuple[list[object], object]:
        running = asyncio.create_task(source.run())  # its next poll: in ten minutes
        try:
            seen = []
            for _ in range(3):  # the clock has not passed the bound: still served
                await asyncio.sleep(0.02)
                seen.append(source.current)
            clock.advance(2)  # past it
            for _ in range(1000):  # no poll comes meanwhile; ten seconds at most
                if source.current is None:
                    break
                await asyncio.sleep(0.01)
            return seen, source.current
        finally:
            source.stop()
            await running

    try:
        seen, after = asyncio.run(scenario())
    finally:
        source.close()
    assert seen == [served] * 3
    assert after is None
    assert source.problem is not None
    assert source.problem.startswith(f"Snapshot is stale ({BOUND_S} s since last confirmed")
