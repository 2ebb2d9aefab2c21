"""The serving process removes the metrics file of a worker it restarts or stops, so the other
workers stop reporting a dead worker's figures. Worker processes are stand-ins here: what is
checked is what ``_Workers`` does with the runtime directory, not process management."""

from __future__ import annotations

import importlib
import itertools
import signal
from pathlib import Path
from typing import Any

import pytest

from uid2_operator.serve_settings import RUNTIME_DIR_VARIABLE
from uid2_operator.stop_signals import StopRequest
from uid2_operator.web.operator_api.metrics import MetricsCollector, RequestMetrics
from uid2_operator.web.operator_api.metrics_files import MetricsFiles, worker_file

serve = importlib.import_module("uid2_operator.cli.serve")  # the package names its command so
_pids = itertools.count(41_000)


class _Process:
    """What ``_Workers`` uses of a ``SpawnProcess``."""

    def __init__(self) -> None:
        self.pid: int | None = next(_pids)
        self.alive = True
        self.exitcode: int | None = None

    def is_alive(self) -> bool:
        return self.alive

    def join(self, timeout: float | None = None) -> None:
        del timeout

    def kill(self) -> None:
        self.alive = False


def _publish(runtime_dir: Path, process: _Process) -> Path:
    worker = str(process.pid)
    figures = MetricsCollector(RequestMetrics(["/v2/token/generate"]), [], worker=worker).figures()
    MetricsFiles(runtime_dir, worker).write(figures)
    return worker_file(runtime_dir, worker)


@pytest.fixture
def workers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    monkeypatch.setenv(RUNTIME_DIR_VARIABLE, str(tmp_path))
    monkeypatch.setattr(serve, "_RESTART_PAUSE_S", 0.0)
    monkeypatch.setattr(serve._Workers, "_start_one", lambda self: _Process())
    monkeypatch.setattr(serve.os, "kill", lambda pid, signum: None)
    monkeypatch.setattr(serve.resource_tracker, "ensure_running", lambda: None)
    pool = serve._Workers("127.0.0.1", 0, 3, None, "warning")
    pool.start()
    return pool


def test_a_restarted_workers_file_is_removed(workers: Any, tmp_path: Path) -> None:
    dead, alive, other = workers.processes
    files = {p.pid: _publish(tmp_path, p) for p in (dead, alive, other)}
    dead.alive, dead.exitcode = False, -9
    workers.keep_alive()
    assert not files[dead.pid].exists()
    assert files[alive.pid].exists()
    assert files[other.pid].exists()
    assert workers.processes[0] is not dead


def test_no_worker_is_restarted_once_a_stop_was_asked_for(workers: Any) -> None:
    """A Ctrl-C reaches the workers too, and they stop by themselves: not restarted, and not
    counted as workers exiting at startup (which would fail serve's stop)."""
    stop = StopRequest()
    stop.note(signal.SIGINT, None)
    first = workers.processes[0]
    for process in workers.processes:
        process.alive, process.exitcode = False, 0
    for _ in range(5):
        workers.keep_alive(stop)  # never "workers keep exiting at startup"
    assert workers.processes[0] is first
    workers.keep_alive()  # without a stop: restarted
    assert workers.processes[0] is not first


def test_stopped_workers_files_are_removed(workers: Any, tmp_path: Path) -> None:
    files = [_publish(tmp_path, p) for p in workers.processes]
    workers.processes[1].alive = False  # stopped by itself before serve stops the others
    workers.stop()
    assert not any(path.exists() for path in files)


def test_without_a_runtime_directory_nothing_is_removed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(RUNTIME_DIR_VARIABLE, raising=False)
    monkeypatch.setattr(serve._Workers, "_start_one", lambda self: _Process())
    pool = serve._Workers("127.0.0.1", 0, 1, None, "warning")
    pool.start()
    (process,) = pool.processes
    kept = _publish(tmp_path, process)
    process.alive = False
    pool.stop()
    assert kept.exists()
