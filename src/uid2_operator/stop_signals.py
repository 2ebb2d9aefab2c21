"""The process's stop signals (SIGINT, SIGTERM, SIGHUP): who takes them, and how a stop they ask
for is noted.

CPython runs signal handlers in the main thread whichever thread the kernel delivers a signal
to, but the kernel picks any thread that does not block it. A helper thread started by this
package blocks the stop signals first thing (``leave_to_main_thread``), so that when the main
thread blocks one for a moment (``serve`` starting a worker, which must inherit SIGINT ignored)
the signal waits for it instead of reaching a helper thread that would drop it.

SIGHUP is a stop signal too: the terminal ``serve`` runs in was closed, or the ssh session
dropped, and the kernel sends it to every process of the terminal's group at once. Its default
action would end them all on the spot, dropping the usage and the opt-outs the workers have not
written yet; ``serve`` stops on it as on SIGTERM, and its workers ignore it (``serve`` stops
them).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

STOP_SIGNALS: Final = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})

Handler = Callable[[int, Any], None]


def handle_stop_signals(handler: Handler) -> dict[int, Any]:
    """Make ``handler`` the handler of every stop signal the process does not ignore; the
    handlers it replaced, for ``restore_handlers``. A signal ignored when the process started
    stays ignored, as Python keeps an ignored SIGINT: SIGHUP under ``nohup``, SIGINT for a job a
    script started in the background."""
    return {
        signum: signal.signal(signum, handler)
        for signum in STOP_SIGNALS
        if signal.getsignal(signum) is not signal.SIG_IGN
    }


def restore_handlers(previous: dict[int, Any], stop: StopRequest | None = None) -> None:
    """Put back the handlers ``handle_stop_signals`` replaced; once ``stop`` was asked for, leave
    those signals ignored instead. A command that ends after a stop signal has then done its
    stop: another signal in the moment left before the process exits (interpreter shutdown
    takes a few hundred milliseconds) would otherwise end it by its default action and change
    the exit status the command decided."""
    for signum, handler in previous.items():
        signal.signal(signum, signal.SIG_IGN if stop is not None and stop.requested else handler)


def leave_to_main_thread() -> None:
    """Block the stop signals in the calling thread (a helper thread, at its start)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold the stop signals for the block, in the calling thread (the main one; helper threads
    hold them for good): one that arrives meanwhile waits, and its handler runs once the block
    ends. For a step that must finish once begun (``init`` showing the admin token it issued)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class StopRequest:
    """A stop asked for by a signal: noted by a handler, looked at by the main thread.

    A plain attribute, not a ``threading.Event``: a handler runs in the main thread between any
    two bytecodes, and ``Event.set`` takes the lock the main thread holds inside
    ``Event.wait``, so a signal landing there would leave the thread waiting on itself for good,
    deaf to every further signal."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.interrupted = False
        """Whether ``interrupt`` raised: what was under way then may fail another way on its
        way out (a library whose invariant the exception broke), which is the interruption's
        doing, not an error of its own."""

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def note(self, signum: int, frame: object) -> None:
        """A signal handler: note the stop, for the main loop to act on (``sleep``)."""
        del frame
        self.signum = signum

    def interrupt(self, signum: int, frame: object) -> None:
        """A signal handler while starting: note the stop and interrupt as SIGINT does
        (``KeyboardInterrupt``), for the first stop only: a further signal (a second one held
        with it, say, delivered as the first unwinds) would cut short what the interruption
        does on its way out, such as printing the admin token ``init`` issued. The note stays
        should the exception be lost (raised inside a garbage collector's callback, which
        Python reports as "Exception ignored" and goes on from), so the next ``check`` raises
        it again."""
        first = self.signum is None
        self.note(signum, frame)
        if first:
            self.interrupted = True
            raise KeyboardInterrupt

    def check(self) -> None:
        """``KeyboardInterrupt`` if a stop was asked for."""
        if self.signum is not None:
            raise KeyboardInterrupt

    def sleep(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless a stop was asked for (a handler that runs meanwhile notes
        its stop, and the sleep goes on for the rest of its time); whether one was."""
        if self.signum is None:
            time.sleep(seconds)
        return self.signum is not None


def _not_an_interruption(record: logging.LogRecord) -> bool:
    """A logging filter: drop a record whose exception is a ``KeyboardInterrupt``."""
    return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


@contextmanager
def interruptions_quiet() -> Iterator[None]:
    """For a command that a stop signal interrupts (``StopRequest.interrupt``), which says so in
    one line: the ``KeyboardInterrupt`` is not reported on the way by whatever it landed in. A
    library that catches it to log it (SQLAlchemy's pool, closing a connection, logs an ERROR
    with the traceback, then raises it again) has that record dropped by every handler the
    records reach (the root logger's, and Python's last resort when there are none); one raised
    in a garbage collector's callback, which Python reports as "Exception ignored" and goes on
    from, is not printed (the stop stays noted: ``StopRequest.check``)."""
    handlers = [*logging.getLogger().handlers]
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        handler.addFilter(_not_an_interruption)
    previous_hook = sys.unraisablehook

    def unraisable(report: sys.UnraisableHookArgs) -> None:
        if not isinstance(report.exc_value, KeyboardInterrupt):
            previous_hook(report)

    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for handler in handlers:
            handler.removeFilter(_not_an_interruption)
