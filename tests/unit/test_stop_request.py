"""How a stop signal is noted (``stop_signals.StopRequest``) and held (``stop_signals_held``).

A handler runs in the main thread between any two bytecodes, so one that takes a lock the main
thread may hold (``threading.Event.set`` while the thread is inside ``Event.wait``) leaves it
waiting on itself for good: serve then ignores every further SIGTERM and has to be killed. A
process that waits for a stop hundreds of times, each ended by a signal landing wherever it
lands, must see every one. An interruption raised by a handler can also be lost (Python only
reports an exception raised inside a garbage collector's callback); the note it leaves makes the
next check raise it again.
"""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import threading
import weakref
from typing import Any

import pytest

from uid2_operator.stop_signals import (
    STOP_SIGNALS,
    StopRequest,
    handle_stop_signals,
    restore_handlers,
    stop_signals_held,
)

_WAITER = """
import os, signal, sys
from uid2_operator.stop_signals import StopRequest

stop = StopRequest()
signal.signal(signal.SIGTERM, stop.note)
for n in range(int(sys.argv[1])):
    stop.signum = None
    print(n, flush=True)
    while not stop.sleep(0):  # the note's check and the sleep, as close together as can be
        pass
print("done", flush=True)
"""
ROUNDS = 300


def test_a_stop_noted_by_a_handler_is_seen_however_the_signal_lands() -> None:
    child = subprocess.Popen(  # noqa: S603 (this interpreter, a fixed script)
        [sys.executable, "-c", _WAITER, str(ROUNDS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    # A handler stuck on a lock never returns, and nothing but SIGKILL ends the child: killed
    # after a minute (the whole run takes a fraction of a second), its output ends there.
    watchdog = threading.Timer(60, child.kill)
    watchdog.start()
    try:
        assert child.stdout is not None
        for n in range(ROUNDS):
            assert child.stdout.readline().strip() == str(n), f"stuck after {n} signals"
            child.send_signal(signal.SIGTERM)
        assert child.stdout.readline().strip() == "done", f"stuck after {ROUNDS} signals"
        assert child.wait(timeout=60) == 0
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_an_interruption_lost_in_a_collector_callback_is_raised_by_the_next_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    stop = StopRequest()

    class Collected:
        pass

    collected = Collected()
    watch = weakref.ref(collected, lambda _ref: stop.interrupt(signal.SIGTERM, None))
    del collected
    gc.collect()
    assert watch() is None
    assert [type(u.exc_value) for u in unraisable] == [KeyboardInterrupt]  # lost, reported
    assert stop.requested
    with pytest.raises(KeyboardInterrupt):
        stop.check()
    assert stop.sleep(10) is True  # no sleep once a stop was asked for


def test_no_stop_asked_for_checks_and_sleeps_quietly() -> None:
    stop = StopRequest()
    stop.check()
    assert stop.sleep(0) is False
    assert not stop.requested


def test_a_signal_held_for_a_step_reaches_its_handler_when_the_step_ends() -> None:
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        with stop_signals_held():
            signal.raise_signal(signal.SIGTERM)
            for _ in range(1000):  # bytecodes enough for a pending handler to have run
                pass
            assert received == []
        assert received == [signal.SIGTERM]
        assert not STOP_SIGNALS & signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_only_the_first_stop_interrupts() -> None:
    """A second signal (held with the first, delivered while the first's interruption unwinds)
    must not cut short what runs on the way out."""
    stop = StopRequest()
    with pytest.raises(KeyboardInterrupt):
        stop.interrupt(signal.SIGTERM, None)
    stop.interrupt(signal.SIGHUP, None)  # noted, not raised
    assert stop.requested


def test_a_stop_signal_ignored_at_start_stays_ignored() -> None:
    def handler(signum: int, frame: object) -> None:
        del signum, frame

    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        previous = handle_stop_signals(handler)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is handler
        assert signal.getsignal(signal.SIGINT) is handler
        assert set(previous) == {signal.SIGTERM, signal.SIGINT}
        restore_handlers(previous)
        assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]
    finally:
        for signum, handler_before in before.items():
            signal.signal(signum, handler_before)


def test_once_stopped_the_stop_signals_are_left_ignored_not_restored() -> None:
    """After a stop, another signal in the moment before the process exits must not end it by
    its default action (changing the exit status the command decided)."""

    def handler(signum: int, frame: object) -> None:
        del signum, frame

    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        quiet = StopRequest()
        restore_handlers(handle_stop_signals(handler), quiet)  # no stop: handlers put back
        assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
        stopped = StopRequest()
        previous = handle_stop_signals(stopped.note)
        stopped.note(signal.SIGTERM, None)
        restore_handlers(previous, stopped)
        assert {signal.getsignal(s) for s in STOP_SIGNALS} == {signal.SIG_IGN}
    finally:
        for signum, handler_before in before.items():
            signal.signal(signum, handler_before)
