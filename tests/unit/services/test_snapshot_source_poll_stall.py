"""How long a poll may go unanswered before the worker reports Degraded.

``STALLED_POLL_MIN_S``, or ``STALLED_POLL_INTERVALS`` poll intervals when that is longer,
measured on the monotonic clock from the poll's start. The poll here runs in a thread
(``refresh``) and waits on an event, while the test moves the clock and reads the state.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from uid2_operator.clock import FixedClock
from uid2_operator.errors import KekVersionMissing
from uid2_operator.services.snapshot_loader import Loaded
from uid2_operator.services.snapshot_source import SnapshotSource

HOUR_MS = 3_600_000


class _Snapshot:
    def __init__(self, generation: int, change_seq: int) -> None:
        self.generation = generation
        self.change_seq = change_seq


class _Store:
    """The two reads a snapshot source makes: the change sequence may wait until released, the
    load may fail as with a keyring that lacks a version."""

    def __init__(self) -> None:
        self.seq = 1
        self.keyring_lacks_a_version = False
        self.released = threading.Event()
        self.released.set()
        self.waiting = threading.Event()

    def change_seq(self) -> int:
        if not self.released.is_set():
            self.waiting.set()
            self.released.wait(timeout=30)
        return self.seq

    def load(self, previous: Loaded | None, generation: int) -> Any:
        del previous
        if self.keyring_lacks_a_version:
            raise KekVersionMissing(2)
        return Loaded(_Snapshot(generation, self.seq), None)  # type: ignore[arg-type]


def _held_poll(source: SnapshotSource, store: _Store) -> threading.Thread:
    """A poll started now that waits on the store until it is released."""
    store.released.clear()
    poll = threading.Thread(target=source.refresh)
    poll.start()
    assert store.waiting.wait(timeout=10)
    return poll


@pytest.mark.parametrize(
    ("poll_interval_s", "bound_ms"), [(0.02, 30_000), (1, 30_000), (20, 100_000)]
)
def test_a_poll_unanswered_past_the_bound_is_degraded(
    poll_interval_s: float, bound_ms: int
) -> None:
    store, clock = _Store(), FixedClock()
    source = SnapshotSource(
        store.load, store.change_seq, clock, poll_interval_s=poll_interval_s,
        max_snapshot_age_s=1000,
    )  # fmt: skip
    assert source.stalled_poll_s * 1000 == bound_ms
    assert source.refresh() is True
    clock.advance(2_000)
    poll = _held_poll(source, store)
    try:
        clock.at_ms += HOUR_MS  # the time of day jumps ahead: no time passes
        clock.advance(bound_ms)
        assert (source.problem, source.store_reachable) == (None, True)
        clock.advance(1)
        assert source.problem == (
            "Degraded: a poll of the store has not answered since 2023-11-14T22:13:22Z; "
            f"serving the last snapshot, confirmed {bound_ms // 1000 + 2} s ago"
        )
        assert source.problem_detail == source.problem
        assert source.store_reachable is False
    finally:
        store.released.set()
        poll.join()
    assert (source.problem, source.store_reachable) == (None, True)


def test_a_reload_failing_then_a_poll_unanswered_reads_the_store_unreachable() -> None:
    store, clock = _Store(), FixedClock()
    source = SnapshotSource(
        store.load, store.change_seq, clock, poll_interval_s=1, max_snapshot_age_s=1000
    )
    assert source.refresh() is True
    store.seq, store.keyring_lacks_a_version = 2, True
    assert source.refresh() is False
    assert source.store_reachable is True  # the store answered; the reload failed
    poll = _held_poll(source, store)
    try:
        clock.advance(30_001)
        assert source.store_reachable is False
        assert source.problem is not None
        assert source.problem.startswith("Degraded: snapshot reload failing since")
    finally:
        store.released.set()
        poll.join()
    assert source.store_reachable is True


STALL_LOGGED = (
    "a poll of the store has not answered for more than 30 s (since 2023-11-14T22:13:20Z); "
)


@pytest.mark.parametrize(
    ("bound_s", "logged"),
    [
        # A bound shorter than the time a poll may stall: by the time the stall is logged the
        # worker refuses, and the line says so. The poll that returns then confirms the store
        # as it was when it started, too long ago to serve; the next one brings it back.
        (
            20,
            [
                "snapshot older than 20000 ms; refusing API requests",
                STALL_LOGGED + "refusing API requests: the last snapshot is older than 20 s",
                "the poll of the store that had not answered returned",
                "snapshot confirmed again; serving API requests",
            ],
        ),
        (
            60,
            [
                STALL_LOGGED + "serving the last snapshot until it is 60 s old",
                "the poll of the store that had not answered returned",
            ],
        ),
    ],
)
def test_a_stalled_poll_logs_what_the_worker_does(
    caplog: pytest.LogCaptureFixture, bound_s: int, logged: list[str]
) -> None:
    store, clock = _Store(), FixedClock()
    source = SnapshotSource(
        store.load, store.change_seq, clock, poll_interval_s=1, max_snapshot_age_s=bound_s
    )
    assert source.refresh() is True
    caplog.set_level(logging.INFO, logger="uid2_operator.services.snapshot_source")
    caplog.clear()
    poll = _held_poll(source, store)
    try:
        clock.advance(30_001)
        source.check_age()
        source._log_stall()
    finally:
        store.released.set()
        poll.join()
    assert (source.current is None) is (bound_s < 30)
    if bound_s < 30:  # the poll answered, but too late to confirm what it read
        assert source.problem == (
            "Snapshot is stale (30 s since last confirmed; the bound is 20 s): refusing API "
            "requests. The last poll to answer had started at 2023-11-14T22:13:20Z"
        )
    source.refresh()
    assert source.current is not None
    assert [r.getMessage() for r in caplog.records] == logged


def test_a_first_poll_that_stalls_says_no_snapshot_is_loaded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, clock = _Store(), FixedClock()
    source = SnapshotSource(
        store.load, store.change_seq, clock, poll_interval_s=1, max_snapshot_age_s=20
    )
    caplog.set_level(logging.INFO, logger="uid2_operator.services.snapshot_source")
    poll = _held_poll(source, store)
    try:
        clock.advance(30_001)
        source._log_stall()
        assert source.current is None
    finally:
        store.released.set()
        poll.join()
    assert source.current is None  # what it loaded is the store of 30 s ago
    source.refresh()
    assert source.current is not None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        STALL_LOGGED + "refusing API requests: no snapshot loaded yet",
        "the poll of the store that had not answered returned",
        "snapshot older than 20000 ms; refusing API requests",
        "snapshot confirmed again; serving API requests",
    ]
