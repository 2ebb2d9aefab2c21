"""The material upkeep runs on a thread of its own, so a store call that waits (a writer queued
for the write lock, up to 10 s on PostgreSQL) or a long rotation holds up nothing in serve's
loop: a dead worker is still restarted and the stop signal still heard. The thread never dies
of an error, and stopping serve waits for it only so long before closing the store.

A store call "waits" here on an Event the test sets; the bounds are generous and only there so
that a broken build fails instead of hanging. What is asserted is what happened and in which
order, never how long it took. The real ``_Upkeep`` runs over stand-ins for the store and the
material service; serve's loop runs in the test's own (main) thread, with stand-ins for the
sockets, the admin API and the worker processes.
"""

from __future__ import annotations

import importlib
import logging
import re
import signal
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from uid2_operator.serve_settings import ServeSettings
from uid2_operator.stop_signals import StopRequest

serve = importlib.import_module("uid2_operator.cli.serve")  # the package names its command so
LOGGER = "uid2_operator.cli.serve"
BOUND_S = 20.0
"""How long the test waits for something that should happen at once (never reached when it
does)."""
MARKER = "raw-uid-marker"
"""A statement's parameter in a driver error's text, which no log line may repeat."""


class _Store:
    """``change_seq`` stalls the first time (with ``stall``) until ``release`` is set."""

    def __init__(self, events: list[str], *, stall: bool) -> None:
        self.events = events
        self.stall = stall
        self.entered = threading.Event()
        self.release = threading.Event()

    def change_seq(self) -> int:
        if self.stall and not self.entered.is_set():
            self.entered.set()
            self.release.wait(BOUND_S * 2)
            self.events.append("store call returned")
        return 1

    def change_state(self) -> object:  # what the upkeep compares: the sequence stands for it
        return self.change_seq()


class _Material:
    """``rotate_keys`` stalls, when told to, until ``release`` is set."""

    def __init__(self, *, stall: bool = False) -> None:
        self.stall = stall
        self.entered = threading.Event()
        self.release = threading.Event()
        self.initialised = threading.Event()
        self.rotations = 0

    def initialise(self) -> None:
        self.initialised.set()

    def rotate_keys(self) -> Any:
        self.rotations += 1
        if self.stall:
            self.entered.set()
            self.release.wait(BOUND_S * 2)
        return SimpleNamespace(created=(), purged=())


class _Pool:
    """The worker processes: one is killed (``kill``); ``keep_alive`` restarts it, and then the
    operator stops serve with SIGTERM (raised in serve's own thread, where its handler is)."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.killed = threading.Event()
        self.restarted = threading.Event()

    def start(self) -> None:
        self.events.append("workers started")

    def keep_alive(self, stop: object = None) -> None:
        del stop
        if self.killed.is_set() and not self.restarted.is_set():
            self.events.append("worker restarted")
            self.restarted.set()
            signal.raise_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.events.append("workers stopped")


def _upkeep_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "material-upkeep"]


def test_a_worker_killed_while_the_upkeep_waits_on_the_store_is_restarted_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store call the upkeep waits on stalls until the store is closed (or the bound): the
    worker is restarted and serve stops meanwhile, and it closes the store only after waiting
    its (here short) bound for the upkeep, with a warning naming the step."""
    events: list[str] = []
    store = _Store(events, stall=True)

    def close() -> None:
        warned = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        events.extend([*(f"warned: {message}" for message in warned), "services closed"])
        store.release.set()

    services = SimpleNamespace(store=store, material=_Material(), close=close, keyring=None)
    pool = _Pool(events)
    monkeypatch.setattr(serve, "_UPKEEP_JOIN_S", 0.2, raising=False)
    monkeypatch.setattr(serve, "_open_serving", lambda settings, serve_settings: services)
    monkeypatch.setattr(serve, "_export_settings", lambda settings: None)
    reserve = SimpleNamespace(close=lambda: None)
    monkeypatch.setattr(serve, "_reserve_operator_port", lambda host, port: (reserve, 1))
    monkeypatch.setattr(serve, "_bind_admin", lambda host, port: (None, "http://a/admin/api"))
    admin = SimpleNamespace(stop=lambda: None, check=lambda: None)
    monkeypatch.setattr(serve, "_run_admin", lambda *args: admin)
    monkeypatch.setattr(serve, "_Workers", lambda *args, **kwargs: pool)
    monkeypatch.setattr(serve, "_share_runtime_dir", lambda data_dir, lock: tmp_path)
    monkeypatch.setattr(serve, "_retire_runtime_dir", lambda *args: None)
    announcer = SimpleNamespace(where=lambda *args: None, tick=lambda: None)
    listen = serve._Listen("127.0.0.1", 0, "127.0.0.1", 0, 2, "warning")

    def operator() -> None:
        """Kill a worker while the upkeep waits on the store; should the worker not come back
        within the bound, let the store answer (serve's loop then has its turn)."""
        if store.entered.wait(BOUND_S):
            pool.killed.set()
            if not pool.restarted.wait(BOUND_S):
                store.release.set()

    driver = threading.Thread(target=operator, name="operator", daemon=True)
    driver.start()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        serve._run_serving(
            SimpleNamespace(data_dir=tmp_path),
            ServeSettings(),
            None,
            listen,
            announcer,
            stop=StopRequest(),
        )
        driver.join(BOUND_S)
        for thread in _upkeep_threads():
            thread.join(BOUND_S)

    assert store.entered.is_set()
    # Restarted while the upkeep still waited, and the stop signal heard.
    assert events.index("worker restarted") < events.index("store call returned")
    assert events.index("worker restarted") < events.index("workers stopped")
    assert events[-3:] == [
        "warned: material upkeep (new-participant keysets) still running 0.2 s after serve "
        "began to stop; closing the store without waiting for it",
        "services closed",
        "store call returned",
    ]
    assert not _upkeep_threads()  # the stalled call returned: the thread ended, no new step


class _Ticks:
    """Stands in for ``_Upkeep``: its first two ticks raise (the same error, a driver's whose
    text holds a statement's parameters), the next ones count."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.step: str | None = None
        self.calls = 0
        self.ran_after_errors = threading.Event()

    def tick(self) -> None:
        self.calls += 1
        if self.calls <= 2:
            raise OperationalError("SELECT ?", (MARKER,), Exception("database is locked"))
        self.ran_after_errors.set()


def test_an_error_escaping_a_tick_is_logged_once_by_class_and_frames_and_the_upkeep_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ticks = _Ticks()
    upkeep = serve._UpkeepThread(ticks)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        upkeep.start()
        try:
            assert ticks.ran_after_errors.wait(BOUND_S)
        finally:
            upkeep.join()
    errors = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert re.fullmatch(
        r"material upkeep failed: OperationalError at "
        r"test_serve_upkeep_thread\.py:\d+ tick < serve\.py:\d+ _run",
        errors[0].getMessage(),
    ), errors[0].getMessage()
    assert errors[0].exc_info is None
    assert MARKER not in caplog.text


def _upkeep(store: _Store, material: _Material, *, rotation_every_s: float) -> Any:
    return serve._Upkeep(
        SimpleNamespace(store=store),
        material,
        ServeSettings(poll_interval_s=0.1, key_rotation_interval_s=rotation_every_s),
    )


def test_stopping_joins_the_upkeep_thread(caplog: pytest.LogCaptureFixture) -> None:
    material = _Material()
    upkeep = serve._UpkeepThread(_upkeep(_Store([], stall=False), material, rotation_every_s=3600))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        upkeep.start()
        assert material.initialised.wait(BOUND_S)
        upkeep.stop()
        upkeep.join()
    assert not upkeep._thread.is_alive()
    assert not [r for r in caplog.records if r.name == LOGGER]


def test_a_serve_that_never_started_its_upkeep_stops_all_the_same() -> None:
    material = _Material()
    upkeep = serve._UpkeepThread(_upkeep(_Store([], stall=False), material, rotation_every_s=3600))
    upkeep.stop()
    upkeep.join()
    assert not upkeep._thread.is_alive()
    assert not material.initialised.is_set()


@pytest.mark.parametrize("stalled", ["new-participant keysets", "scheduled key rotation"])
def test_a_step_stuck_in_the_store_does_not_hold_stopping_beyond_the_bound(
    stalled: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``join`` returns while the step still waits on the store, with a warning naming it; once
    the store answers, the thread ends without starting another step (the store is closed)."""
    monkeypatch.setattr(serve, "_UPKEEP_JOIN_S", 0.05)
    in_initialise = stalled == "new-participant keysets"
    store = _Store([], stall=in_initialise)
    material = _Material(stall=not in_initialise)
    waits = store if in_initialise else material
    # A rotation due at the first tick: after a stalled initialise, it is the next step.
    upkeep = serve._UpkeepThread(_upkeep(store, material, rotation_every_s=0.001))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        upkeep.start()
        try:
            assert waits.entered.wait(BOUND_S)
            upkeep.stop()
            upkeep.join()
            assert not waits.release.is_set()
            assert upkeep._thread.is_alive()  # still in the store call
            assert upkeep._thread.daemon  # which never keeps the process alive
        finally:
            waits.release.set()
        upkeep._thread.join(BOUND_S)
    assert not upkeep._thread.is_alive()
    assert material.rotations == (0 if in_initialise else 1)
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert warnings == [
        f"material upkeep ({stalled}) still running 0.05 s after serve began to stop; "
        "closing the store without waiting for it"
    ]
