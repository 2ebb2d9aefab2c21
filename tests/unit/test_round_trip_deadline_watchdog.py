"""The watchdog behind the PostgreSQL round trip deadline, on plain sockets: a deadline reached
shuts its socket down (a blocked read returns at once) without closing the descriptor its owner
uses; a deadline ended in time never touches the socket; ended deadlines do not pile up; and one
thread watches them all."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from uid2_operator.storage import round_trip_deadline
from uid2_operator.storage.round_trip_deadline import _WATCHDOG


def _watchdog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "store-round-trip-deadline"]


@pytest.mark.timeout(20)
def test_a_reached_deadline_shuts_the_socket_down_but_leaves_its_descriptor_open() -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        deadline = _WATCHDOG.arm(ours.fileno(), 0.2)
        assert deadline is not None
        assert ours.recv(1) == b""  # the read blocked until the shutdown, then saw the end
        assert deadline.end() is True
        assert deadline.end() is True  # ending again changes nothing
        os.fstat(ours.fileno())  # still open: only its owner closes it
    assert deadline.reached


@pytest.mark.timeout(20)
def test_a_deadline_not_yet_reached_leaves_the_socket_alone() -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        deadline = _WATCHDOG.arm(ours.fileno(), 60.0)
        assert deadline is not None
        ours.settimeout(0.3)
        with pytest.raises(TimeoutError):  # still open for reading: no end of stream
            ours.recv(1)
        assert not deadline.reached
        assert deadline.end() is False


@pytest.mark.timeout(20)
def test_a_deadline_ended_in_time_leaves_the_socket_alone() -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        deadline = _WATCHDOG.arm(ours.fileno(), 0.2)
        assert deadline is not None
        assert deadline.end() is False
        time.sleep(0.4)
        peer.sendall(b"x")
        assert ours.recv(1) == b"x"
        ours.sendall(b"y")
        assert peer.recv(1) == b"y"


@pytest.mark.timeout(20)
def test_ended_deadlines_do_not_pile_up_and_one_thread_watches_them_all() -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        long_running = _WATCHDOG.arm(ours.fileno(), 60.0)
        assert long_running is not None
        # Many short round trips end while a long one is under way, behind it in the heap.
        for _ in range(5000):
            deadline = _WATCHDOG.arm(ours.fileno(), 30.0)
            assert deadline is not None
            assert deadline.end() is False
        assert len(_WATCHDOG._heap) < 200
        assert len(_watchdog_threads()) == 1
        assert long_running.end() is False


def test_a_lost_connection_gets_no_deadline() -> None:
    assert _WATCHDOG.arm(-1, 1.0) is None  # what a connection libpq dropped has for a socket


def test_the_deadline_error_says_how_long_the_database_was_silent() -> None:
    assert str(round_trip_deadline.no_answer(30.0)) == "no answer from the database within 30 s"
