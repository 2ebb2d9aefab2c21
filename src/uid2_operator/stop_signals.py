"""The thread that takes the process's stop signals (SIGINT, SIGTERM): the main one only.

CPython runs signal handlers in the main thread whichever thread the kernel delivers a signal
to, but the kernel picks any thread that does not block it. A helper thread started by this
package blocks the stop signals first thing (``leave_to_main_thread``), so that when the main
thread blocks one for a moment (``serve`` starting a worker, which must inherit SIGINT ignored)
the signal waits for it instead of reaching a helper thread that would drop it.
"""

from __future__ import annotations

import signal
from typing import Final

STOP_SIGNALS: Final = frozenset({signal.SIGINT, signal.SIGTERM})


def leave_to_main_thread() -> None:
    """Block the stop signals in the calling thread (a helper thread, at its start)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
