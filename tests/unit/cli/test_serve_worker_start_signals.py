"""A worker starts with SIGINT and SIGHUP ignored (a Ctrl-C in the terminal, or its hang-up,
reaches every process of the group, and a worker still importing would print a
``KeyboardInterrupt`` traceback, or die on the spot; a running one keeps SIGHUP ignored: serve
stops it with SIGTERM, so it writes what it holds); serve's own handlers are back as soon as the
worker is started, and a SIGINT that came meanwhile reaches it."""

from __future__ import annotations

import importlib
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import uvicorn

from uid2_operator.stop_signals import leave_to_main_thread

serve = importlib.import_module("uid2_operator.cli.serve")

_SIGINT_BIT = 1 << (signal.SIGINT - 1)
_SIGHUP_BIT = 1 << (signal.SIGHUP - 1)


def _ignored_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigIgn line for {pid}")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc/<pid>/status")
def test_a_worker_starts_with_sigint_and_sighup_ignored_and_serve_keeps_its_handlers() -> None:
    def handler(signum: int, frame: object) -> None:
        del signum, frame

    before = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGHUP)}
    workers = serve._Workers("127.0.0.1", 0, 1, None, "warning")
    try:
        process = workers._start_one()
        try:
            assert process.pid is not None
            # Read at once: the worker is still starting (its server takes SIGINT up later).
            ignored = _ignored_signals(process.pid)
            assert ignored & _SIGINT_BIT
            assert ignored & _SIGHUP_BIT
            assert signal.getsignal(signal.SIGINT) is handler
            assert signal.getsignal(signal.SIGHUP) is handler
        finally:
            process.kill()
            process.join(10)
    finally:
        for signum, previous in before.items():
            signal.signal(signum, previous)


_LANDING = """
import importlib, os, signal, sys, time
serve = importlib.import_module("uid2_operator.cli.serve")
received = []
signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))

class Landing:
    pid = 4242
    def __init__(self, **kwargs):
        pass
    def start(self):  # the signal lands while the worker starts
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)

class Context:
    Process = Landing

workers = serve._Workers("127.0.0.1", 0, 1, None, "warning")
workers._context = Context()
workers._start_one()
deadline = time.monotonic() + 5
while not received and time.monotonic() < deadline:
    time.sleep(0.01)
print(received, signal.getsignal(signal.SIGINT) is not signal.SIG_IGN)
"""


def test_a_sigint_that_comes_while_a_worker_starts_reaches_serve() -> None:
    # Ignored for the start, it would be lost: serve would go on serving after a Ctrl-C or a
    # supervisor's SIGINT. Run in a process of its own, whose only thread is the main one, as
    # serve's other threads leave the stop signals to it.
    done = subprocess.run(  # noqa: S603 (fixed arguments)
        [sys.executable, "-c", _LANDING], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == [f"[{int(signal.SIGINT)}]", "True"], done.stderr


def test_a_helper_thread_leaves_the_stop_signals_to_the_main_thread() -> None:
    blocked: list[set[signal.Signals]] = []

    def helper() -> None:
        leave_to_main_thread()
        blocked.append(signal.pthread_sigmask(signal.SIG_BLOCK, set()))

    thread = threading.Thread(target=helper)
    thread.start()
    thread.join()
    [helper_mask] = blocked
    assert {signal.SIGINT, signal.SIGTERM, signal.SIGHUP} <= helper_mask
    assert not {signal.SIGINT, signal.SIGTERM, signal.SIGHUP} & signal.pthread_sigmask(
        signal.SIG_BLOCK, set()
    )


class _Recorded:
    """A stand-in worker process: records its arguments and what ran before its start."""

    started: ClassVar[list[tuple[object, ...]]] = []
    events: ClassVar[list[str]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.pid = 4242
        self._args = kwargs["args"]

    def start(self) -> None:
        _Recorded.events.append("worker started")
        _Recorded.started.append(self._args)


def _start_recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    _Recorded.started, _Recorded.events = [], []

    def tracker() -> None:
        ignored = signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        _Recorded.events.append(f"resource tracker running (SIGHUP ignored: {ignored})")

    monkeypatch.setattr(serve.resource_tracker, "ensure_running", tracker)
    workers = serve._Workers("127.0.0.1", 0, 2, None, "warning")
    workers._context = SimpleNamespace(Process=_Recorded)
    workers.start()
    return _Recorded.started


def test_the_resource_tracker_runs_before_the_first_worker_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """multiprocessing starts it with the first worker and unblocks SIGINT while doing so, in
    the window where serve has SIGINT ignored: a Ctrl-C then would be dropped. Started first,
    with SIGHUP ignored for it to inherit, as the workers do: a closed terminal must not end
    it (serve would start another, with a warning, in the middle of its stop)."""
    before = signal.getsignal(signal.SIGHUP)
    _start_recorded(monkeypatch)
    assert _Recorded.events == [
        "resource tracker running (SIGHUP ignored: True)",
        "worker started",
        "worker started",
    ]
    assert signal.getsignal(signal.SIGHUP) == before


@pytest.mark.parametrize("ignored", [False, True])
def test_workers_keep_sigint_ignored_when_serve_started_with_it_ignored(
    monkeypatch: pytest.MonkeyPatch, ignored: bool
) -> None:
    previous = signal.signal(
        signal.SIGINT, signal.SIG_IGN if ignored else signal.default_int_handler
    )
    try:
        started = _start_recorded(monkeypatch)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert [args[6] for args in started] == [ignored, ignored]  # ``sigint_ignored``


@pytest.mark.parametrize("ignored", [False, True])
def test_a_workers_server_takes_sigint_up_only_unless_told_to_keep_it_ignored(
    ignored: bool,
) -> None:
    server = serve.WorkerServer(uvicorn.Config(app=None), sigint_ignored=ignored)
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with server.capture_signals():
            taken = signal.getsignal(signal.SIGINT)
            assert signal.getsignal(signal.SIGTERM) == server.handle_exit
        assert (taken is signal.SIG_IGN) is ignored
        if not ignored:
            assert taken == server.handle_exit
    finally:
        signal.signal(signal.SIGINT, before)


_WORKER_MASK = """
import importlib, signal, sys
serve = importlib.import_module("uid2_operator.cli.serve")
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGHUP})  # as spawned by serve

def stop_here(level):
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    print(sorted(int(s) for s in blocked & {signal.SIGINT, signal.SIGHUP, signal.SIGTERM}))
    sys.exit(0)

serve._configure_logging = stop_here
serve._worker_main("127.0.0.1", 0, None, "warning", 1)
"""


def test_a_worker_lets_the_stop_signals_through_as_it_starts() -> None:
    """Spawned from serve's main thread while it blocks SIGINT and SIGHUP, a worker inherits
    the mask; left so, a Ctrl-C would never reach some workers and reach others."""
    done = subprocess.run(  # noqa: S603 (fixed arguments)
        [sys.executable, "-c", _WORKER_MASK], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stderr


_ORPHAN = """
import importlib, sys
serve = importlib.import_module("uid2_operator.cli.serve")
real_gone, real_listening = serve._serve_gone, serve._listening
checks = []

def gone(parent):
    checks.append(parent)
    # "after-bind": serve is still there at the first check and gone by the second.
    return real_gone(parent) if (sys.argv[1] == "before-bind" or len(checks) > 1) else False

def listening(*args):
    print("bound", flush=True)
    return real_listening(*args)

serve._serve_gone, serve._listening = gone, listening
serve._worker_main("127.0.0.1", 0, None, "info", 1)  # pid 1: never this process's parent
"""


@pytest.mark.parametrize(("moment", "bound"), [("before-bind", False), ("after-bind", True)])
def test_a_worker_whose_serve_died_while_it_started_stops_before_it_serves(
    moment: str, bound: bool
) -> None:
    """A serve killed just after it spawned its workers: a worker that then took the port
    would keep the next serve from binding it until its own start-up was over."""
    done = subprocess.run(  # noqa: S603 (fixed arguments)
        [sys.executable, "-c", _ORPHAN, moment],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert ("bound" in done.stdout) is bound
    assert "serve (pid 1) is gone; stopping" in done.stderr
    assert "Started server process" not in done.stderr
