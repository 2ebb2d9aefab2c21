"""The serving process's material upkeep: its two steps fail apart, and a failure is not logged
at every poll.

``_Upkeep.tick`` runs once per turn of serve's loop (about five times a second). Its first step
(``MaterialService.initialise`` when the store changed) is retried at every poll while it fails;
its second (the key rotation schedule) runs every ``key_rotation_interval_s`` whatever the first
does. A failing step is logged when it starts, when its message changes and when it recovers.
Stand-ins for the store and the material service; the clock is the module's ``time.monotonic``,
replaced.
"""

from __future__ import annotations

import importlib
import logging
import re
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from uid2_operator.errors import KeyringError, StoreUnavailable, UID2Error
from uid2_operator.serve_settings import ServeSettings

serve = importlib.import_module("uid2_operator.cli.serve")  # the package names its command so
LOGGER = "uid2_operator.cli.serve"
ROTATION_EVERY_S = 3.0
MARKER = "raw-uid-marker"


def _driver_error() -> OperationalError:
    """What SQLAlchemy raises for a statement the database refused: its text holds the
    statement's parameters, which no log line may repeat."""
    error = OperationalError(
        "INSERT INTO optouts VALUES (?)", (MARKER,), Exception("database is locked")
    )
    assert MARKER in str(error)
    return error


class _Store:
    def __init__(self) -> None:
        self.seq = 1
        self.mark = b"first"
        self.down = False

    def change_seq(self) -> int:
        if self.down:
            raise StoreUnavailable("The store at sqlite:///test is unavailable: switched off")
        return self.seq

    def change_state(self) -> object:
        return (self.change_seq(), self.mark)


class _Material:
    """What the upkeep calls of ``MaterialService``; each call fails while its error is set."""

    def __init__(self) -> None:
        self.initialise_error: UID2Error | None = None
        self.rotate_error: UID2Error | None = None
        self.initialised = 0
        self.rotations = 0

    def initialise(self) -> None:
        if self.initialise_error is not None:
            raise self.initialise_error
        self.initialised += 1

    def rotate_keys(self) -> Any:
        if self.rotate_error is not None:
            raise self.rotate_error
        self.rotations += 1
        return SimpleNamespace(created=(), purged=())


class _Credentials:
    """What the upkeep calls of ``CredentialService``; fails while its error is set."""

    def __init__(self) -> None:
        self.purge_error: UID2Error | None = None
        self.purges = 0

    def purge_retired_secrets(self) -> int:
        if self.purge_error is not None:
            raise self.purge_error
        self.purges += 1
        return 0


class _World:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, coverage: bool = False) -> None:
        self.now = 1000.0
        monkeypatch.setattr(serve, "time", SimpleNamespace(monotonic=lambda: self.now))
        self.store = _Store()
        self.material = _Material()
        self.credentials = _Credentials()
        self.coverage_reads = 0
        self.upkeep = serve._Upkeep(
            SimpleNamespace(store=self.store, credentials=self.credentials),
            self.material,
            ServeSettings(poll_interval_s=1.0, key_rotation_interval_s=ROTATION_EVERY_S),
            key_coverage=self._coverage if coverage else None,
        )

    def _coverage(self, wall_ms: int) -> Any:
        self.coverage_reads += 1
        return SimpleNamespace(covers=lambda wall: True)

    def run_for(self, seconds: int) -> None:
        """Tick once a second, as serve's loop would (more often, in fact) for ``seconds``."""
        for _ in range(seconds):
            self.now += 1.0
            self.upkeep.tick()


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def test_a_failing_initialise_is_logged_once_and_does_not_stop_the_key_rotation(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    world = _World(monkeypatch)
    world.material.initialise_error = KeyringError("Key-encryption key version 3 is absent")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        world.run_for(10)
        # The rotation keeps its schedule (at 3, 6 and 9 s) although every poll's initialise fails.
        assert world.material.rotations == 3
        assert world.material.initialised == 0
        failures = [line for line in _lines(caplog) if line[0] >= logging.WARNING]
        assert failures == [
            (
                logging.ERROR,
                "material upkeep (new-participant keysets) failed: "
                "Key-encryption key version 3 is absent",
            )
        ]

        # Another message is logged once more; then the store out of reach, at WARNING.
        world.material.initialise_error = KeyringError("Key-encryption key version 4 is absent")
        world.run_for(5)
        world.store.down = True
        world.run_for(5)
        failures = [line for line in _lines(caplog) if line[0] >= logging.WARNING]
        assert [message.split(": ", 1)[1] for _, message in failures[1:]] == [
            "Key-encryption key version 4 is absent",
            "The store at sqlite:///test is unavailable: switched off",
        ]
        assert failures[2][0] == logging.WARNING
        assert "skipped" in failures[2][1]

        # Recovery: one line, and the step runs again.
        world.store.down = False
        world.material.initialise_error = None
        world.run_for(5)
    failures = [line for line in _lines(caplog) if line[0] >= logging.WARNING]
    assert failures[3:] == [
        (logging.WARNING, "material upkeep (new-participant keysets) works again")
    ]
    assert world.material.initialised == 1  # once: the change sequence did not move since
    assert world.material.rotations == 8


def test_the_retired_secrets_are_deleted_at_every_rotation_turn_whatever_it_did(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    world = _World(monkeypatch)
    world.run_for(10)
    assert (world.material.rotations, world.credentials.purges) == (3, 3)
    world.material.rotate_error = KeyringError("Key-encryption key version 3 is absent")
    world.credentials.purge_error = StoreUnavailable("The store is unavailable: switched off")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        world.run_for(6)
        world.material.rotate_error = None
        world.run_for(3)
    assert (world.material.rotations, world.credentials.purges) == (4, 3)
    assert [message for _, message in _lines(caplog)] == [
        "material upkeep (scheduled key rotation) failed: Key-encryption key version 3 is absent",
        "material upkeep (retired client secret deletion) skipped: The store is unavailable: "
        "switched off",
        "material upkeep (scheduled key rotation) works again",
    ]
    world.credentials.purge_error = None
    world.run_for(3)
    assert world.credentials.purges == 4


def test_a_store_restored_and_written_back_to_the_same_sequence_is_looked_at_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The participants written after the restore need their keysets, though the sequence is
    # the one the upkeep saw: the commit behind it (its mark) is another.
    world = _World(monkeypatch, coverage=True)
    world.run_for(1)
    assert (world.material.initialised, world.coverage_reads) == (1, 1)
    world.run_for(1)
    assert (world.material.initialised, world.coverage_reads) == (1, 1)  # nothing moved
    world.store.mark = b"written after a restore"
    world.run_for(1)  # before the rotation (every 3 s), which reads the coverage again anyway
    assert (world.material.initialised, world.coverage_reads) == (2, 2)


def test_a_failing_rotation_is_logged_once_and_does_not_stop_new_participant_keysets(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    world = _World(monkeypatch)
    world.material.rotate_error = KeyringError("Key-encryption key version 3 is absent")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        world.run_for(10)
        for seq in (2, 3):
            world.store.seq = seq
            world.run_for(1)
    assert world.material.initialised == 3  # the first poll, then each change
    assert _lines(caplog) == [
        (
            logging.ERROR,
            "material upkeep (scheduled key rotation) failed: "
            "Key-encryption key version 3 is absent",
        )
    ]


def test_an_unexpected_error_is_logged_by_class_and_frames_once_and_serve_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a refusal of the project's (a bug, a driver error no layer mapped): the upkeep logs it
    by its class and the frames it came through, never its text (a driver's holds the
    statement's parameters) nor a traceback, and carries on, so the serving process, and with it
    every worker, stays up; the key rotation still runs."""
    world = _World(monkeypatch)
    world.material.initialise_error = _driver_error()  # type: ignore[assignment]
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for _ in range(10):
            world.store.seq += 1  # a change at every poll: initialise is tried every time
            world.run_for(1)
    errors = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert re.fullmatch(
        r"material upkeep \(new-participant keysets\) failed: OperationalError at "
        r"test_serve_upkeep\.py:\d+ initialise < serve\.py:\d+ _initialise < "
        r"serve\.py:\d+ _run_step",
        errors[0].getMessage(),
    ), errors[0].getMessage()
    assert errors[0].exc_info is None
    assert MARKER not in caplog.text
    assert world.material.rotations == 3


def test_a_participant_created_while_initialise_runs_is_looked_at_on_the_next_poll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = _World(monkeypatch)
    real = world.material.initialise
    calls: list[int] = []

    def initialise_then_someone_commits() -> None:
        real()
        calls.append(world.store.seq)
        if len(calls) == 1:
            world.store.seq += 1  # initialise's own commit
            world.store.seq += 1  # a participant created elsewhere, right after

    world.material.initialise = initialise_then_someone_commits  # type: ignore[method-assign]
    world.run_for(3)
    assert len(calls) >= 2  # the change committed during the first pass was looked at
    seen = len(calls)
    world.run_for(3)
    assert len(calls) == seen  # and nothing more once the store is quiet
