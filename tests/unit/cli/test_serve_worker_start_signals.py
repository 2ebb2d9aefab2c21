"""A worker starts with SIGINT ignored (a Ctrl-C in the terminal reaches every process of the
group, and a worker still importing would print a ``KeyboardInterrupt`` traceback); serve's own
SIGINT handler is back as soon as the worker is started."""

from __future__ import annotations

import importlib
import signal
from pathlib import Path

import pytest

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
