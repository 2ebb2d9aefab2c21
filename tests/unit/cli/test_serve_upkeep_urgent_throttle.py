"""The serving process's upkeep runs the key rotation at once while a keyset has no active key,
but at most once per poll interval: a rotation that keeps failing is not retried at every turn of
serve's loop (about five times a second).

Stand-ins for the store and the material service; the monotonic clock is the module's
``time.monotonic``, replaced, and the time of day follows it.
"""

from __future__ import annotations

import importlib
import itertools
from types import SimpleNamespace

import pytest

from uid2_operator.domain.keysets import Coverage
from uid2_operator.errors import StoreUnavailable
from uid2_operator.serve_settings import ServeSettings

serve = importlib.import_module("uid2_operator.cli.serve")  # the package names its command so

POLL_S = 1.0
TICK_S = 0.2
RUN_S = 10.0
ROTATION_EVERY_S = 3600.0
"""Far beyond the run: every attempt seen is one the missing key asked for."""


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def wall_ms(self) -> int:
        return round(self.now * 1000)


class _Store:
    def change_seq(self) -> int:
        return 1

    def change_state(self) -> object:  # what the upkeep compares: the sequence stands for it
        return self.change_seq()


class _Material:
    """A material service whose key rotation always fails; it notes when each was tried."""

    def __init__(self, clock: _Clock) -> None:
        self._clock = clock
        self.attempts: list[float] = []

    def initialise(self) -> None:
        pass

    def rotate_keys(self) -> None:
        self.attempts.append(self._clock.now)
        raise StoreUnavailable("The store at sqlite:///test is unavailable: switched off")


def _never_covered(now_ms: int) -> Coverage:
    """Some enabled keyset has no active key, whenever it is asked."""
    return Coverage(now_ms, now_ms)


def test_a_failing_rotation_for_a_missing_key_is_tried_once_per_poll_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _Clock()
    monkeypatch.setattr(serve, "time", SimpleNamespace(monotonic=lambda: clock.now))
    material = _Material(clock)
    upkeep = serve._Upkeep(
        SimpleNamespace(store=_Store(), credentials=SimpleNamespace(purge_retired_secrets=int)),
        material,
        ServeSettings(poll_interval_s=POLL_S, key_rotation_interval_s=ROTATION_EVERY_S),
        key_coverage=_never_covered,
        wall_ms=clock.wall_ms,
    )
    start = clock.now
    ticks = round(RUN_S / TICK_S)
    for turn in range(1, ticks + 1):
        clock.now = start + turn * TICK_S
        upkeep.tick()

    attempts = material.attempts
    # One a poll interval over the run (the first at the first turn), not one a turn.
    assert RUN_S / POLL_S - 1 <= len(attempts) <= RUN_S / POLL_S, attempts
    assert attempts[0] == pytest.approx(start + TICK_S)
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert all(POLL_S - 1e-9 <= gap <= POLL_S + TICK_S + 1e-9 for gap in gaps), gaps
