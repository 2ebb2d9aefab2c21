"""``web.http_connection``'s send deadline: a client that stops reading its answers is cut off,
over real sockets to a real uvicorn server (uvloop, as serve runs it) in a thread.

The server's sockets get a small send buffer and the clients a small receive buffer, so that
what the kernel holds for a connection is a few KiB and the rest of an answer stays in the
transport's buffer. The application answers ``GET /chunks`` with ``CHUNKS`` sends of ``CHUNK``
bytes (a send waits while the transport's buffer is full), ``GET /whole`` with ``WHOLE`` bytes in
one send (under the transport's high-water mark: writing never pauses), and ``GET /close`` the
same with ``connection: close``. The states a client cannot bring about at will (a buffer left
with a few bytes once it drained) are set on a connection over a stand-in transport.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from uid2_operator.serve_settings import ServeSettings
from uid2_operator.web.http_connection import (
    LINGER_IDLE_S,
    HttpConnection,
    HttpLimits,
    http_protocol,
)
from uvicorn_thread import loopback_socket, protocol_config, run_lifespan, server_in_thread

SEND_TIMEOUT_S = 0.5
LIMITS = HttpLimits(
    max_head_bytes=8192,
    max_body_bytes=16384,
    head_timeout_s=30.0,
    body_timeout_s=30.0,
    send_timeout_s=SEND_TIMEOUT_S,
)
CHUNK = 64 * 1024
CHUNKS = 32
WHOLE = 40 * 1024
"""Under the transport's high-water mark (64 KiB), well over what the kernel holds here."""
SERVER_SNDBUF = 4096
CLIENT_RCVBUF = 1024
GONE_WITHIN_S = 10.0
"""How long a test waits for a connection the server should drop (the deadline included)."""
STOPPED_READING = "Client stopped reading (connection reset at the send timeout)."


@dataclass
class Recorder:
    """The requests whose application call returned, by path."""

    finished: list[str] = field(default_factory=list)


def _app(recorder: Recorder) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await run_lifespan(receive, send)
            return
        path = scope["path"]
        try:
            size = CHUNK * CHUNKS if path == "/chunks" else WHOLE
            headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % size)]
            if path == "/close":
                headers.append((b"connection", b"close"))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            if path == "/chunks":
                for _ in range(CHUNKS - 1):
                    await send(
                        {"type": "http.response.body", "body": b"c" * CHUNK, "more_body": True}
                    )
                await send({"type": "http.response.body", "body": b"c" * CHUNK})
            else:
                await send({"type": "http.response.body", "body": b"w" * size})
        finally:
            recorder.finished.append(path)

    return app


@dataclass
class Running:
    port: int
    recorder: Recorder
    server: uvicorn.Server
    thread: threading.Thread

    @contextmanager
    def connect(self, rcvbuf: int = CLIENT_RCVBUF) -> Iterator[socket.socket]:
        """A client with a receive buffer of ``rcvbuf`` bytes (set before the connection, so
        its window stays small)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(GONE_WITHIN_S)
            sock.connect(("127.0.0.1", self.port))
            yield sock
        finally:
            sock.close()

    def connections(self) -> int:
        return len(self.server.server_state.connections)

    def wait_until_no_connection(self) -> float:
        """When the server's last connection went (``time.monotonic``); fails if one is still
        open after ``GONE_WITHIN_S``."""
        deadline = time.monotonic() + GONE_WITHIN_S
        while self.connections():
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{self.connections()} connection(s) still open after {GONE_WITHIN_S} s"
                )
            time.sleep(0.01)
        return time.monotonic()

    def wait_until_connected(self, count: int = 1) -> None:
        deadline = time.monotonic() + GONE_WITHIN_S
        while self.connections() < count:
            assert time.monotonic() < deadline, "the server did not take the connection"
            time.sleep(0.01)


@contextmanager
def running(keep_alive_s: float = 60.0) -> Iterator[Running]:
    sock = loopback_socket(send_buffer=SERVER_SNDBUF)
    recorder = Recorder()
    config = protocol_config(_app(recorder), http_protocol(LIMITS), timeout_keep_alive=keep_alive_s)
    with server_in_thread(config, sock) as (server, thread):
        yield Running(sock.getsockname()[1], recorder, server, thread)


def get(path: str) -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nhost: test\r\n\r\n"


def read_to_the_end(sock: socket.socket) -> tuple[int, bool]:
    """How many bytes the client can still read until the connection ends, and whether it ended
    with a reset (fails if it does not end within ``GONE_WITHIN_S``)."""
    received = 0
    sock.settimeout(GONE_WITHIN_S)
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received, True
        except TimeoutError:
            pytest.fail(f"still open after {GONE_WITHIN_S} s; {received} bytes received")
        if not chunk:
            return received, False
        received += len(chunk)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def warning_lines() -> Iterator[list[str]]:
    lines = _Lines()
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(lines)
    try:
        yield lines.lines
    finally:
        logger.removeHandler(lines)


# ------------------------------------------------------------------------- writing paused


def test_a_client_that_never_reads_a_large_answer_is_cut_off_and_its_request_ends() -> None:
    with warning_lines() as lines, running() as server, server.connect() as sock:
        sock.sendall(get("/chunks"))
        asked = time.monotonic()
        server.wait_until_connected()
        gone = server.wait_until_no_connection()
        received, reset = read_to_the_end(sock)
        deadline = time.monotonic() + GONE_WITHIN_S
        while server.server.server_state.tasks:  # the application's send stopped waiting
            assert time.monotonic() < deadline, "the request's task is still running"
            time.sleep(0.01)
    assert gone - asked >= SEND_TIMEOUT_S * 0.9
    assert server.recorder.finished == ["/chunks"]
    assert received < CHUNK * CHUNKS  # what was still buffered was dropped
    assert reset  # and the kernel told to drop what it held
    assert lines == [STOPPED_READING]


def test_a_client_reading_slowly_but_steadily_gets_its_whole_answer() -> None:
    """About 800 KiB/s: each full buffer (at most two chunks) drains well within the deadline,
    though the whole answer takes several times the deadline: the deadline runs from each
    pause, not from the first."""
    with warning_lines() as lines, running() as server, server.connect(16 * 1024) as sock:
        sock.sendall(get("/chunks"))
        started = time.monotonic()
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        received = 0
        while received < CHUNK * CHUNKS:
            chunk = sock.recv(8192)
            assert chunk, f"closed after {received} bytes"
            received += len(chunk)
            time.sleep(0.01)
        took = time.monotonic() - started
        sock.sendall(get("/whole"))  # and the connection is kept alive
        received = 0
        while received < WHOLE:
            chunk = sock.recv(65536)
            assert chunk, "closed before the second answer"
            received += len(chunk)
    assert b" 200 " in head
    assert took > 3 * SEND_TIMEOUT_S  # else the test did not read slowly enough to show anything
    assert lines == []


# -------------------------------------------------------------------- closed with data unsent


@pytest.mark.parametrize(
    ("path", "keep_alive_s"),
    [
        ("/whole", 0.2),  # closed by the keep-alive timeout
        ("/close", 60.0),  # closed by its answer
    ],
)
def test_a_connection_closed_with_an_answer_unsent_is_cut_off(
    path: str, keep_alive_s: float
) -> None:
    with warning_lines() as lines, running(keep_alive_s) as server, server.connect() as sock:
        sock.sendall(get(path))
        asked = time.monotonic()
        server.wait_until_connected()
        gone = server.wait_until_no_connection()
        received, reset = read_to_the_end(sock)
    assert gone - asked >= SEND_TIMEOUT_S * 0.9
    assert server.recorder.finished == [path]
    assert received < WHOLE
    assert reset
    assert lines == [STOPPED_READING]


def test_a_stopping_server_cuts_off_a_connection_whose_answer_is_unsent() -> None:
    with running() as server, server.connect() as sock:
        sock.sendall(get("/whole"))
        deadline = time.monotonic() + GONE_WITHIN_S
        while server.recorder.finished != ["/whole"]:
            assert time.monotonic() < deadline, "the application did not answer"
            time.sleep(0.01)
        time.sleep(0.1)  # the answer complete, the connection kept alive
        server.server.should_exit = True
        server.thread.join(timeout=GONE_WITHIN_S)
        assert not server.thread.is_alive(), "the server waited for the connection to flush"
        received, reset = read_to_the_end(sock)
    assert received < WHOLE
    assert reset


# ---------------------------------------------------------------------------------- warning


def test_clients_that_stop_reading_write_one_warning_per_interval() -> None:
    with (
        warning_lines() as lines,
        running(keep_alive_s=0.2) as server,
        server.connect() as a,
        server.connect() as b,
        server.connect() as c,
    ):
        for sock in (a, b, c):
            sock.sendall(get("/whole"))
        server.wait_until_connected(3)
        server.wait_until_no_connection()
    assert lines == [STOPPED_READING]


# ------------------------------------------------------------------ over a stand-in transport


class _Transport(asyncio.Transport):
    """What the protocol asks of its transport, with a write buffer the test sets."""

    def __init__(self) -> None:
        super().__init__()
        self.buffered = 0
        self.closing = False
        self.aborted = False
        self.ended = False  # ``write_eof``: the end of what the server sends

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def write(self, data: Any) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.ended = True

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@contextmanager
def stand_in(limits: HttpLimits = LIMITS) -> Iterator[tuple[HttpConnection, _Transport, Any]]:
    """A connection over a ``_Transport``, and a function that runs its loop for a while."""
    loop = asyncio.new_event_loop()
    config = uvicorn.Config(_app(Recorder()), lifespan="off", log_config=None)
    connection = http_protocol(limits)(
        config=config, server_state=ServerState(), app_state={}, _loop=loop
    )
    transport = _Transport()
    connection.connection_made(transport)

    def run_for(seconds: float) -> None:
        loop.run_until_complete(asyncio.sleep(seconds))

    try:
        yield connection, transport, run_for
    finally:
        connection.connection_lost(None)
        loop.close()


def test_a_closing_connection_whose_buffer_drained_to_a_few_bytes_is_still_cut_off() -> None:
    with warning_lines(), stand_in() as (connection, transport, run_for):
        transport.buffered = 100_000
        connection.pause_writing()
        connection.timeout_keep_alive_handler()  # closed with the buffer full
        run_for(SEND_TIMEOUT_S / 2)
        transport.buffered = 5  # under the low-water mark: writing resumes, 5 bytes unsent
        connection.resume_writing()
        run_for(SEND_TIMEOUT_S * 2)
        assert transport.aborted


def test_an_open_connection_whose_buffer_drained_keeps_no_deadline() -> None:
    with stand_in() as (connection, transport, run_for):
        transport.buffered = 100_000
        connection.pause_writing()
        run_for(SEND_TIMEOUT_S / 2)
        transport.buffered = 5
        connection.resume_writing()
        run_for(SEND_TIMEOUT_S * 2)
        assert not transport.aborted


def test_a_400_answer_closing_with_data_unsent_is_cut_off() -> None:
    with warning_lines() as lines, stand_in() as (connection, transport, run_for):
        transport.buffered = 10  # earlier answers, not taken
        connection.data_received(b"NOT HTTP AT ALL\r\n\r\n")
        assert transport.ended  # the answer, then the end of what the server sends
        run_for(LINGER_IDLE_S + 0.2)  # the client sends nothing more: closed
        assert transport.closing
        assert not transport.aborted
        run_for(SEND_TIMEOUT_S * 2)
        assert transport.aborted
    assert lines == ["Invalid HTTP request received.", STOPPED_READING]


def test_a_408_answer_closing_with_data_unsent_is_cut_off() -> None:
    with (
        warning_lines(),
        stand_in(replace(LIMITS, head_timeout_s=0.1)) as (_, transport, run_for),
    ):
        transport.buffered = 10
        run_for(0.2)  # no request head: answered 408, the end of the answer sent
        assert transport.ended
        assert not transport.closing
        run_for(LINGER_IDLE_S + 0.2)  # the client sends nothing more: closed
        assert transport.closing
        assert not transport.aborted
        run_for(SEND_TIMEOUT_S * 2)
        assert transport.aborted


def test_a_connection_closing_with_nothing_unsent_gets_no_deadline() -> None:
    with stand_in() as (connection, transport, run_for):
        connection.timeout_keep_alive_handler()
        assert transport.closing
        run_for(SEND_TIMEOUT_S * 2)
        assert not transport.aborted


def test_every_connection_limit_is_its_serve_setting() -> None:
    settings = ServeSettings.from_env(
        {
            "UID2_HTTP_SEND_TIMEOUT_S": "7",
            "UID2_HTTP_HEAD_TIMEOUT_S": "3",
            "UID2_HTTP_BODY_TIMEOUT_S": "120",
            "UID2_HTTP_MAX_HEAD_BYTES": "16384",
        }
    )
    assert HttpLimits.of(settings, 1024) == HttpLimits(
        max_head_bytes=16384,
        max_body_bytes=1024,
        head_timeout_s=3.0,
        body_timeout_s=120.0,
        send_timeout_s=7.0,
    )
