"""A request still running when a stopping server's grace period runs out is cancelled by uvicorn,
which logs ``Exception in ASGI application`` at ERROR with the ``CancelledError``'s traceback.
serve's filter on ``uvicorn.error`` turns that into one WARNING line per request, no traceback;
uvicorn still answers the request 500 and ends the connection, and any other error an application
raises keeps uvicorn's own line.

A real uvicorn server (uvloop and serve's HTTP protocol, as serve runs its workers) in a thread,
over a real socket, stopped as serve stops it (``should_exit``) with a one-second grace period.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn

from uid2_operator.web.http_connection import HttpLimits, http_protocol

serve = importlib.import_module("uid2_operator.cli.serve")  # the package names its command so
UVICORN_ERRORS = "uvicorn.error"
GRACE_S = 1
BOUND_S = 20.0
"""How long the test waits for something that should happen at once (never reached when it
does)."""
MARKER = "raw-uid-marker"
LIMITS = HttpLimits(
    max_head_bytes=8192, max_body_bytes=16384, head_timeout_s=5.0, body_timeout_s=5.0
)
CANCELLED = f"request cancelled: still running when the stop's grace period ({GRACE_S} s) ran out"


def _app(entered: threading.Event) -> Any:
    """``/hang`` never answers (until cancelled); ``/bug`` raises an error of its own."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        if scope["path"] == "/bug":
            raise RuntimeError(f"[parameters: ('{MARKER}',)]")
        if scope["path"] == "/cancelled":
            raise asyncio.CancelledError("cancelled by the application itself")
        entered.set()
        await asyncio.Event().wait()

    return app


@contextmanager
def _filtered(level: int) -> Iterator[None]:
    """serve's filter on ``uvicorn.error`` (for this test's grace period, alone: a serve run
    in this process before installed its own), the logger at ``level`` (as ``--log-level``
    sets it)."""
    logger = logging.getLogger(UVICORN_ERRORS)
    filters, previous_level = logger.filters[:], logger.level
    logger.filters[:] = [serve._CancelledAtStop(GRACE_S)]
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.filters[:] = filters
        logger.setLevel(previous_level)


def _stopped_under_a_request(path: str) -> bytes:
    """Serve one request to ``path`` (the hanging one: until it runs) and stop the server while it
    is under way; what the client received until the server closed the connection."""
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    entered = threading.Event()
    config = uvicorn.Config(
        _app(entered),
        loop="uvloop",
        http=http_protocol(LIMITS),
        lifespan="off",
        log_config=None,  # the test's own capture, not uvicorn's handlers
        access_log=False,
        timeout_graceful_shutdown=GRACE_S,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            thread.join(0.01)
            assert thread.is_alive(), "the server did not start"
        with socket.create_connection(listening.getsockname(), timeout=BOUND_S) as client:
            client.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nhost: test\r\n\r\n")
            if path == "/hang":
                assert entered.wait(BOUND_S)
                server.should_exit = True
            received = bytearray()
            while chunk := client.recv(65536):
                received += chunk
                if path != "/hang":
                    break
    finally:
        server.should_exit = True
        thread.join(BOUND_S)
        listening.close()
    assert not thread.is_alive()
    return bytes(received)


def test_a_request_cancelled_at_the_stop_is_one_warning_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with _filtered(logging.INFO), caplog.at_level(logging.INFO, logger=UVICORN_ERRORS):
        received = _stopped_under_a_request("/hang")
    assert received.startswith(b"HTTP/1.1 500 "), received  # what uvicorn answers, as before
    records = [r for r in caplog.records if r.name == UVICORN_ERRORS]
    cancelled = [r for r in records if r.getMessage() == CANCELLED]
    assert [(r.levelno, r.exc_info) for r in cancelled] == [(logging.WARNING, None)]
    assert not [r for r in records if "Exception in ASGI application" in r.getMessage()]
    assert "Traceback" not in caplog.text
    assert "CancelledError" not in caplog.text


def test_the_warning_is_left_out_when_the_log_level_is_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with _filtered(logging.ERROR), caplog.at_level(logging.ERROR, logger=UVICORN_ERRORS):
        received = _stopped_under_a_request("/hang")
    assert received.startswith(b"HTTP/1.1 500 "), received
    records = [r for r in caplog.records if r.name == UVICORN_ERRORS]
    assert not [r for r in records if r.levelno < logging.ERROR]
    assert not [r for r in records if "Exception in ASGI application" in r.getMessage()]
    assert "CancelledError" not in caplog.text


def test_any_other_error_of_an_application_keeps_uvicorns_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with _filtered(logging.INFO), caplog.at_level(logging.INFO, logger=UVICORN_ERRORS):
        received = _stopped_under_a_request("/bug")
    assert received.startswith(b"HTTP/1.1 500 "), received
    [bug] = [r for r in caplog.records if "Exception in ASGI application" in r.getMessage()]
    assert bug.levelno == logging.ERROR
    assert bug.exc_info is not None
    assert isinstance(bug.exc_info[1], RuntimeError)


def test_a_cancellation_that_is_not_the_stops_keeps_uvicorns_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with _filtered(logging.INFO), caplog.at_level(logging.INFO, logger=UVICORN_ERRORS):
        received = _stopped_under_a_request("/cancelled")
    assert received.startswith(b"HTTP/1.1 500 "), received
    records = [r for r in caplog.records if r.name == UVICORN_ERRORS]
    assert not [r for r in records if r.getMessage() == CANCELLED]
    kept = [r for r in records if "Exception in ASGI application" in r.getMessage()]
    assert [r.levelno for r in kept] == [logging.ERROR]
