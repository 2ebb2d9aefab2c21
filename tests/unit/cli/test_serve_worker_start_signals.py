"""A worker starts with SIGINT ignored (a Ctrl-C in the terminal reaches every process of the
group, and a worker still importing would print a ``KeyboardInterrupt`` traceback); serve's own
SIGINT handler is back as soon as the worker is started, and a SIGINT that came meanwhile
reaches it."""

from __future__ import annotations

import importlib
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from uid2_operator.stop_signals import leave_to_main_thread

serve = importlib.import_module("uid2_operator.cli.serve")

_SIGINT_BIT = 1 << (signal.SIGINT - 1)


def _ignored_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigIgn line for {pid}")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc/<pid>/status")
def test_a_worker_starts_with_sigint_ignored_and_serve_keeps_its_handler() -> None:
    def handler(signum: int, frame: object) -> None:
        del signum, frame

    before = signal.signal(signal.SIGINT, handler)
    workers = serve._Workers("127.0.0.1", 0, 1, None, "warning")
    try:
        process = workers._start_one()
        try:
            assert process.pid is not None
            # Read at once: the worker is still starting (its server takes SIGINT up later).
            assert _ignored_signals(process.pid) & _SIGINT_BIT
            assert signal.getsignal(signal.SIGINT) is handler
        finally:
            process.kill()
            process.join(10)
    finally:
        signal.signal(signal.SIGINT, before)


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
    assert {signal.SIGINT, signal.SIGTERM} <= helper_mask
    assert not {signal.SIGINT, signal.SIGTERM} & signal.pthread_sigmask(signal.SIG_BLOCK, set())
