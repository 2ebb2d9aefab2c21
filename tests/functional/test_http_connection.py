"""``web.http_connection``: uvicorn's HTTP protocol guarded against hostile clients, over real
sockets to a real uvicorn server (uvloop, as serve runs it) in a thread.

The application here records what it is given (a websocket scope would mean the protocol switched)
and answers: ``GET`` anything ``OK``; ``POST /echo`` the length of the body it read; ``POST
/early`` 413 without reading the body.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from uid2_operator.web.http_connection import (
    LINGER_IDLE_S,
    MAX_QUEUED_REQUESTS,
    MAX_TARGET_BYTES,
    PARSE_SLICE_BYTES,
    HttpConnection,
    HttpLimits,
    http_protocol,
)
from uvicorn_thread import loopback_socket, protocol_config, run_lifespan, server_in_thread

LIMITS = HttpLimits(
    max_head_bytes=8192, max_body_bytes=16384, head_timeout_s=2.0, body_timeout_s=2.0
)
SLOW_S = 0.5
"""How long the application takes to answer ``GET /slow``."""
WATCH_PARTS = 4
"""The parts of a ``GET /watch`` answer whose client stays."""
CLOSE_WITHIN_S = 10.0
"""How long a test waits for a connection the server should close (timeouts included)."""


@dataclass
class Recorder:
    """What the application saw, per request."""

    scopes: list[str] = field(default_factory=list)
    disconnects: int = 0


def _app(recorder: Recorder) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await run_lifespan(receive, send)
            return
        recorder.scopes.append(scope["type"])
        if scope["type"] != "http":
            return
        body = b"OK"
        if scope["path"].startswith("/p/"):  # the path as the application is given it
            body = scope["path"].encode()
        if scope["path"] == "/slow":
            await asyncio.sleep(SLOW_S)
        if scope["path"] == "/watch":
            await _watch(receive, send, recorder)
            return
        if scope["path"] == "/early":
            await _answer(send, 413, b"too large")
            return
        if scope["method"] == "POST":
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    recorder.disconnects += 1
                    return
                size += len(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            body = b"%d" % size
            if scope["path"] == "/headers":  # the request's header names, once its body ended
                body = b",".join(name for name, _ in scope["headers"])
        await _answer(send, 200, body)

    return app


async def _watch(receive: Any, send: Any, recorder: Recorder) -> None:
    """A streamed answer that watches for its client's disconnect meanwhile, as the operator's
    large answers do: up to ``WATCH_PARTS`` parts, a few ms apart."""
    await receive()  # the (empty) request
    gone = asyncio.ensure_future(receive())  # uvicorn resumes reading for it
    headers = [(b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    try:
        for _ in range(WATCH_PARTS):
            if gone.done():
                recorder.disconnects += 1
                return
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
            await asyncio.sleep(0.005)
    finally:
        gone.cancel()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _answer(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass
class Running:
    port: int
    recorder: Recorder
    server: uvicorn.Server
    thread: threading.Thread

    @contextmanager
    def connect(self) -> Iterator[socket.socket]:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=CLOSE_WITHIN_S)
        try:
            yield sock
        finally:
            sock.close()


@contextmanager
def running(limits: HttpLimits = LIMITS, **options: Any) -> Iterator[Running]:
    sock = loopback_socket()
    recorder = Recorder()
    config = protocol_config(_app(recorder), http_protocol(limits), **options)
    with server_in_thread(config, sock) as (server, thread):
        yield Running(sock.getsockname()[1], recorder, server, thread)


@pytest.fixture(scope="module", name="server")
def server_fixture() -> Iterator[Running]:
    with running() as server:
        yield server


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def read_response(sock: socket.socket, buffered: bytearray | None = None) -> Response:
    """One response (with a ``content-length``); what follows it stays in ``buffered``."""
    data = buffered if buffered is not None else bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {bytes(data)!r}"
        data += chunk
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed inside a response body"
        rest += chunk
    data[:] = rest[length:]
    return Response(status, headers, rest[:length])


def closed_by_server(sock: socket.socket) -> bytes:
    """Everything the server still sends until it closes the connection (fails if it does not
    within ``CLOSE_WITHIN_S``)."""
    received = bytearray()
    sock.settimeout(CLOSE_WITHIN_S)
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(received)
        except TimeoutError:
            pytest.fail(f"still open after {CLOSE_WITHIN_S} s; received {bytes(received)!r}")
        if not chunk:
            return bytes(received)
        received += chunk


def send_slowly(sock: socket.socket, pieces: list[bytes]) -> None:
    """Send ``pieces`` as separate reads, stopping once the server has closed the connection."""
    for piece in pieces:
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return
        time.sleep(0.02)


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def get(path: str = "/", extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nhost: test\r\n" + extra + b"\r\n"


# ------------------------------------------------------------------------------- head limit


def test_a_head_that_never_ends_is_answered_431_and_closed(server: Running) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: test\r\nx-big: " + b"a" * 4 * LIMITS.max_head_bytes)
        raw = closed_by_server(sock)
    assert status_of(raw) == 431
    assert b"connection: close" in raw.lower()


def test_many_small_headers_are_answered_431_and_closed(server: Running) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: test\r\n")
        send_slowly(sock, [b"a: b\r\n" * (LIMITS.max_head_bytes // 6)] * 8)
        raw = closed_by_server(sock)
    assert status_of(raw) == 431


@pytest.mark.parametrize(
    ("trailer", "status"),
    [
        (b"t: v\r\n", 431),  # more trailer fields than a head at the limit could hold
        (b"v" * 1000, 413),  # one trailer value, growing past head + body limit
    ],
)
def test_trailers_that_never_end_are_refused(server: Running, trailer: bytes, status: int) -> None:
    limit = LIMITS.max_head_bytes + LIMITS.max_body_bytes
    with server.connect() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n")
        sock.sendall(b"2\r\nhi\r\n0\r\nx-trailer: ")
        send_slowly(sock, [trailer * (limit // len(trailer) // 4)] * 8)
        raw = closed_by_server(sock)
    assert status_of(raw) == status


@pytest.mark.parametrize(
    ("sent", "seen"),
    [
        (b"/p/plain", b"/p/plain"),
        (b"/p/a%2Fb%2fc", b"/p/a%2Fb%2fc"),  # an escaped slash separates nothing
        (b"/p/%61%2D%2e%5F%7e%41%39", b"/p/a-._~A9"),  # unreserved: read as the character
        (b"/p/%20%25%3F%23%00%FF", b"/p/%20%25%3F%23%00%FF"),  # any other escape: as sent
        (b"/p/%zz%4", b"/p/%zz%4"),
    ],
)
def test_only_escapes_of_unreserved_characters_are_decoded_in_the_path(
    server: Running, sent: bytes, seen: bytes
) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET " + sent + b" HTTP/1.1\r\nhost: test\r\n\r\n")
        answer = read_response(sock)
    assert (answer.status, answer.body) == (200, seen)


@pytest.mark.parametrize("reads", [1, 2])
def test_trailer_fields_never_join_the_request_headers(server: Running, reads: int) -> None:
    # An Authorization sent as a trailer must not authenticate, whether it comes in the same
    # read as the head or later (RFC 9110 §6.5.1).
    head = b"POST /headers HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n"
    body = b"2\r\nhi\r\n0\r\nauthorization: Bearer t\r\nx-trailer: 1\r\n\r\n"
    with server.connect() as sock:
        send_slowly(sock, [head + body] if reads == 1 else [head, body])
        sock.sendall(get())  # the connection is kept: the next request is served as ever
        buffered = bytearray()
        answers = [read_response(sock, buffered) for _ in range(2)]
    assert [(a.status, a.body) for a in answers] == [
        (200, b"host,transfer-encoding"),
        (200, b"OK"),
    ]


@pytest.mark.parametrize("extra", [1, 10_000])
def test_a_request_target_longer_than_the_parser_reads_is_answered_414(extra: int) -> None:
    # Within a head limit raised to take it: not a malformed request (400), nor one past the
    # limit (431), but a target too long to read (RFC 9112 §3).
    target = b"/p/" + b"a" * (MAX_TARGET_BYTES - 3 + extra)
    roomy = replace(LIMITS, max_head_bytes=4 * MAX_TARGET_BYTES)
    with running(roomy) as server, server.connect() as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nhost: test\r\n\r\n")
        raw = closed_by_server(sock)
        with server.connect() as again:  # at the limit itself, served
            again.sendall(get("/p/" + "a" * (MAX_TARGET_BYTES - 3)))
            assert read_response(again).status == 200
    assert status_of(raw) == 414
    assert b"connection: close" in raw.lower()


def test_a_414_to_a_head_request_has_no_content() -> None:
    target = b"/p/" + b"a" * MAX_TARGET_BYTES
    roomy = replace(LIMITS, max_head_bytes=4 * MAX_TARGET_BYTES)
    with running(roomy) as server, server.connect() as sock:
        sock.sendall(b"HEAD " + target + b" HTTP/1.1\r\nhost: test\r\n\r\n")
        raw = closed_by_server(sock)
    head, _, content = raw.partition(b"\r\n\r\n")
    assert status_of(head) == 414
    assert content == b""  # RFC 9110 §9.3.2


def test_a_head_just_under_the_limit_in_several_reads_is_served(server: Running) -> None:
    with server.connect() as sock:
        head = get(extra=b"x-fill: " + b"f" * (LIMITS.max_head_bytes - 200) + b"\r\n")
        send_slowly(sock, [head[start : start + 1000] for start in range(0, len(head), 1000)])
        assert read_response(sock).status == 200


def test_a_head_is_refused_once_its_unfinished_part_passes_the_limit(server: Running) -> None:
    # Sent in reads of 1,000 bytes and never finished: refused as soon as a read takes it past
    # the limit (a quarter past it here), not left to the head timeout.
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: test\r\nx-big: ")
        send_slowly(sock, [b"a" * 1000] * (LIMITS.max_head_bytes * 5 // 4 // 1000))
        raw = closed_by_server(sock)
    assert status_of(raw) == 431


def test_a_head_whose_unfinished_part_is_exactly_the_limit_is_read_on(server: Running) -> None:
    # Refused only once its unfinished part passes the limit: at the limit, the next read may
    # still end it (here its last two bytes, the blank line's end).
    fill = LIMITS.max_head_bytes + 2 - len(get(extra=b"x-fill: \r\n"))
    head = get(extra=b"x-fill: " + b"f" * fill + b"\r\n")
    assert len(head) == LIMITS.max_head_bytes + 2
    with server.connect() as sock:
        sock.sendall(head[: LIMITS.max_head_bytes])
        time.sleep(0.2)
        sock.sendall(head[LIMITS.max_head_bytes :])
        assert read_response(sock).status == 200


def test_a_body_is_refused_once_the_message_passes_head_and_body_limits(server: Running) -> None:
    # The connection's own bound on a message is its head limit plus its body limit; the
    # application (here one without a limit) may enforce a lower one on what it reads.
    message = LIMITS.max_head_bytes + LIMITS.max_body_bytes
    for size, status in ((message - 1000, 200), (message + 5000, 413)):
        with server.connect() as sock:
            sock.sendall(b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: %d\r\n\r\n" % size)
            send_slowly(sock, [b"x" * 2000] * (size // 2000) + [b"x" * (size % 2000)])
            answer = read_response(sock)
        assert answer.status == status, size
        if status == 200:
            assert answer.body == b"%d" % size


# --------------------------------------------------------------------------------- timeouts


def test_an_idle_new_connection_is_closed_after_the_head_timeout(server: Running) -> None:
    with server.connect() as sock:
        started = time.monotonic()
        raw = closed_by_server(sock)
    assert time.monotonic() - started >= LIMITS.head_timeout_s * 0.9
    assert status_of(raw) == 408


def test_a_head_trickled_byte_by_byte_is_cut_at_the_head_timeout(server: Running) -> None:
    head = get(extra=b"x-slow: " + b"s" * 200 + b"\r\n")
    with server.connect() as sock:
        sock.settimeout(0.1)
        for byte in head[:-2]:  # never ends; each byte would have cancelled a keep-alive timer
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            try:
                raw = sock.recv(65536)
            except TimeoutError:
                continue
            break
        else:
            pytest.fail("the server kept a head trickled over 20 s")
    assert status_of(raw) == 408


def test_a_partial_head_after_a_keep_alive_request_gets_the_head_deadline(server: Running) -> None:
    with server.connect() as sock:
        sock.sendall(get())
        assert read_response(sock).status == 200
        sock.sendall(b"GET / HTTP/1.1\r\nhost: te")  # cancels uvicorn's keep-alive timer
        raw = closed_by_server(sock)
    assert status_of(raw) == 408


def test_a_pipelined_head_begun_in_the_same_read_gets_the_head_deadline_not_keep_alive() -> None:
    # The read carries a whole request and the start of the next head: once the first answer
    # is sent, the head under way has its head deadline, as one begun in a later read has;
    # the keep-alive timeout (shorter here) is for a connection with nothing begun.
    limits = replace(LIMITS, head_timeout_s=5.0)
    with running(limits, timeout_keep_alive=0.3) as server, server.connect() as sock:
        sock.sendall(get() + b"POST /echo HTTP/1.1\r\nhost: te")
        buffered = bytearray()
        first = read_response(sock, buffered)
        time.sleep(1.0)  # past the keep-alive timeout, well within the head deadline
        sock.sendall(b"st\r\ncontent-length: 2\r\n\r\nhi")
        second = read_response(sock, buffered)
    assert [(a.status, a.body) for a in (first, second)] == [(200, b"OK"), (200, b"2")]


def test_a_stalled_body_is_answered_408_and_closed(server: Running) -> None:
    disconnects = server.recorder.disconnects
    with server.connect() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 1000\r\n\r\n")
        sock.sendall(b"x" * 10)
        raw = closed_by_server(sock)
    assert status_of(raw) == 408
    assert b"connection: close" in raw.lower()
    # The application is told (it reads a disconnect), in its own task: soon, if not yet.
    deadline = time.monotonic() + CLOSE_WITHIN_S
    while server.recorder.disconnects == disconnects and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.recorder.disconnects == disconnects + 1


def test_a_body_in_pieces_within_the_timeout_keeps_the_connection(server: Running) -> None:
    with server.connect() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 3000\r\n\r\n")
        for _ in range(3):
            time.sleep(0.05)
            sock.sendall(b"x" * 1000)
        first = read_response(sock)
        assert (first.status, first.body) == (200, b"3000")
        assert first.headers.get("connection") != "close"
        sock.sendall(get())
        assert read_response(sock).status == 200


# ------------------------------------------------------------------------------ early answers


def test_an_answer_before_the_body_ends_closes_the_connection(server: Running) -> None:
    with server.connect() as sock:
        sock.sendall(b"POST /early HTTP/1.1\r\nhost: test\r\ncontent-length: 100000\r\n\r\n")
        sock.sendall(b"x" * 1000)
        raw = closed_by_server(sock)  # at once: neither read on nor left to the body timeout
    assert status_of(raw) == 413
    assert b"connection: close" in raw.lower()


WHOLE_BODY = 32 * 1024 * 1024
"""More than the kernel's buffers on both sides hold: a client sending it all before it reads
has most of it still to send when the early answer comes."""


def _send_whole_then_read(sock: socket.socket, path: str) -> Response:
    """As a client that sends its whole request before it reads (``urllib``, the SDKs)."""
    head = b"POST %s HTTP/1.1\r\nhost: test\r\ncontent-length: %d\r\n\r\n" % (
        path.encode(),
        WHOLE_BODY,
    )
    sock.sendall(head)
    piece = b"x" * (1024 * 1024)
    for _ in range(WHOLE_BODY // len(piece)):
        sock.sendall(piece)  # a reset here is the broken pipe such a client reports
    return read_response(sock)


@pytest.mark.parametrize(("path", "answered_by"), [("/early", "app"), ("/echo", "connection")])
def test_a_client_that_sends_its_whole_body_before_reading_gets_the_early_answer(
    server: Running, path: str, answered_by: str
) -> None:
    # /early: the application answers 413 without reading the body; /echo: the connection
    # answers 413 itself once the message passes its limit.
    with server.connect() as sock:
        answer = _send_whole_then_read(sock, path)
        assert answer.status == 413
        assert answer.headers["connection"] == "close"
        assert closed_by_server(sock) == b""


def _open_connections(server: Running) -> int:
    return len(server.server.server_state.connections)


def _wait_for_connections(server: Running, count: int, within_s: float) -> float:
    """Seconds until the server holds ``count`` connections (fails after ``within_s``)."""
    started = time.monotonic()
    while _open_connections(server) != count:
        assert time.monotonic() - started < within_s, f"{_open_connections(server)} open"
        time.sleep(0.02)
    return time.monotonic() - started


def test_after_an_early_answer_the_connection_closes_once_the_client_stops_sending() -> None:
    with running() as server, server.connect() as sock:
        sock.sendall(b"POST /early HTTP/1.1\r\nhost: test\r\ncontent-length: 100000\r\n\r\n")
        sock.sendall(b"x" * 1000)
        assert read_response(sock).status == 413
        assert sock.recv(1) == b""  # the end of what the server sends, at once
        assert _open_connections(server) == 1  # still reading what the client sends
        sock.sendall(b"x" * 1000)  # taken and dropped, no reset
        took = _wait_for_connections(server, 0, CLOSE_WITHIN_S)
        assert took > LINGER_IDLE_S / 2  # the idle bound, not at once
        assert took < LINGER_IDLE_S + 1.0


def test_after_an_early_answer_the_connection_closes_when_the_client_does() -> None:
    with running() as server:
        with server.connect() as sock:
            sock.sendall(b"POST /early HTTP/1.1\r\nhost: test\r\ncontent-length: 9000\r\n\r\n")
            assert read_response(sock).status == 413
        assert _wait_for_connections(server, 0, CLOSE_WITHIN_S) < LINGER_IDLE_S / 2


def test_a_client_that_keeps_sending_after_an_early_answer_is_cut_at_the_body_timeout() -> None:
    # A body timeout well past the idle bound: each read keeps the connection open (an
    # uploader still sending would otherwise be reset, its answer lost) until the body timeout.
    limits = replace(LIMITS, body_timeout_s=LINGER_IDLE_S + 2.0)
    with running(limits) as server, server.connect() as sock:
        # Timed from before the head is sent: the body timeout runs from no earlier than that,
        # however late a loaded machine delivers the early answer.
        started = time.monotonic()
        sock.sendall(b"POST /early HTTP/1.1\r\nhost: test\r\ncontent-length: 999999\r\n\r\n")
        assert read_response(sock).status == 413
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while _open_connections(server) and time.monotonic() - started < CLOSE_WITHIN_S:
                sock.sendall(b"x" * 10)  # always within the idle bound
                time.sleep(LINGER_IDLE_S / 10)
        took = _wait_for_connections(server, 0, CLOSE_WITHIN_S)
        lasted = time.monotonic() - started
        assert LINGER_IDLE_S + 1.0 < lasted < limits.body_timeout_s + LINGER_IDLE_S
        assert took < 1.0


def _send_then_read_all(sock: socket.socket, request: bytes) -> bytes:
    """As a client that sends everything before it reads: what it then reads to the end."""
    sock.sendall(request)
    piece = b"x" * (1024 * 1024)
    for _ in range(WHOLE_BODY // len(piece)):
        sock.sendall(piece)  # a reset here is the broken pipe such a client reports
    return closed_by_server(sock)


@pytest.mark.parametrize(
    "request_head",
    [
        # HTTP/1.1 without Host: malformed at its head, answered 400.
        b"POST /echo HTTP/1.1\r\ncontent-length: %d\r\n\r\n" % WHOLE_BODY,
        # An upgrade that declares a body: refused at its head, answered 400.
        b"POST /echo HTTP/1.1\r\nhost: test\r\nconnection: Upgrade\r\nupgrade: websocket\r\n"
        b"content-length: %d\r\n\r\n" % WHOLE_BODY,
        # Not HTTP at all.
        b"NOT HTTP AT ALL\r\n\r\n",
    ],
    ids=["no-host", "upgrade-with-body", "not-http"],
)
def test_a_client_that_sends_first_gets_the_400_to_a_malformed_request(
    server: Running, request_head: bytes
) -> None:
    with server.connect() as sock:
        assert status_of(_send_then_read_all(sock, request_head)) == 400


def test_a_client_that_sends_first_gets_the_answers_owed_before_a_malformed_request(
    server: Running,
) -> None:
    with server.connect() as sock:
        received = _send_then_read_all(sock, get("/slow") + b"NOT HTTP AT ALL\r\n\r\n")
        buffered = bytearray(received)
        with socket.socket() as unused:  # all of it was read already
            first = read_response(unused, buffered)
    assert (first.status, first.body) == (200, b"OK")
    assert first.headers.get("connection") == "close"
    assert bytes(buffered) == b""


def test_a_client_that_sends_first_gets_the_answer_to_an_ignored_upgrade(server: Running) -> None:
    with server.connect() as sock:
        received = _send_then_read_all(sock, get("/slow", UPGRADE))
    assert status_of(received) == 200


def test_a_refusal_in_the_read_of_a_100_continue_head_is_no_application_error() -> None:
    # The body comes with the head (a client need not wait for 100 Continue), its trailers past
    # the limit in that read: the connection answers 431 before the application first reads.
    lines = _Lines()
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(lines)
    try:
        with running() as server, server.connect() as sock:
            head = b"POST /echo HTTP/1.1\r\nhost: test\r\nexpect: 100-continue\r\n"
            trailers = b"a:\r\n" * (LIMITS.max_head_bytes // 4 + 1)  # never ended
            sock.sendall(head + b"transfer-encoding: chunked\r\n\r\n0\r\n" + trailers)
            raw = closed_by_server(sock)
            deadline = time.monotonic() + CLOSE_WITHIN_S
            while server.recorder.disconnects == 0 and time.monotonic() < deadline:
                time.sleep(0.01)  # the application reads a disconnect, in its own task
            assert server.recorder.disconnects == 1
    finally:
        logger.removeHandler(lines)
    assert status_of(raw) == 431
    assert b"100 Continue" not in raw
    assert lines.lines == []


def test_a_stopping_server_does_not_wait_for_a_connection_closing_in_stages() -> None:
    limits = replace(LIMITS, body_timeout_s=60.0)  # far beyond the test's patience
    with running(limits) as server, server.connect() as sock:
        sock.sendall(b"POST /early HTTP/1.1\r\nhost: test\r\ncontent-length: 999999\r\n\r\n")
        assert read_response(sock).status == 413
        stopping = time.monotonic()
        server.server.should_exit = True
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while server.thread.is_alive() and time.monotonic() - stopping < CLOSE_WITHIN_S:
                sock.sendall(b"x" * 10)
                time.sleep(0.05)
        server.thread.join(timeout=CLOSE_WITHIN_S)
        assert not server.thread.is_alive()
        assert time.monotonic() - stopping < LINGER_IDLE_S


# --------------------------------------------------------------------------------- shutdown


def test_a_stopping_server_answers_a_body_still_arriving_503_and_stops_at_once() -> None:
    limits = replace(LIMITS, body_timeout_s=60.0)  # far beyond the test's patience
    with running(limits) as server, server.connect() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 100\r\n\r\n")
        sock.sendall(b"x" * 10)  # the rest never comes
        deadline = time.monotonic() + CLOSE_WITHIN_S
        while server.recorder.scopes != ["http"]:  # the application is reading the body
            assert time.monotonic() < deadline
            time.sleep(0.01)
        stopping = time.monotonic()
        server.server.should_exit = True
        raw = closed_by_server(sock)
        server.thread.join(timeout=CLOSE_WITHIN_S)
        took = time.monotonic() - stopping
        assert not server.thread.is_alive()
    assert status_of(raw) == 503
    assert b"connection: close" in raw.lower()
    assert took < 2.0  # neither the body timeout nor any other wait
    assert server.recorder.disconnects == 1  # the application was told


# ---------------------------------------------------------------------------------- upgrade


def test_a_websocket_upgrade_is_answered_as_plain_http(server: Running) -> None:
    before = len(server.recorder.scopes)
    upgrade = b"connection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n"
    key = b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    with server.connect() as sock:
        sock.sendall(get("/ws", upgrade + key))
        response = read_response(sock)
        assert (response.status, response.body) == (200, b"OK")
        assert closed_by_server(sock) == b""
    assert server.recorder.scopes[before:] == ["http"]


UPGRADE = b"connection: Upgrade\r\nupgrade: websocket\r\n"


@pytest.mark.parametrize(
    "framing",
    [b"content-length: 5\r\n", b"content-length: 005\r\n", b"transfer-encoding: chunked\r\n"],
)
def test_an_upgrade_that_declares_a_body_is_refused_not_run_without_it(
    server: Running, framing: bytes
) -> None:
    """The parser stops at the head of an upgrade request: run, it would read no body. It is
    not run at all, so nothing (metrics, logs, audit) records an answer the client never got."""
    before = len(server.recorder.scopes)
    request = b"POST /echo HTTP/1.1\r\nhost: test\r\n" + UPGRADE + framing + b"\r\n"
    with server.connect() as sock:
        sock.sendall(request + b"hello")
        raw = closed_by_server(sock)
    assert status_of(raw) == 400
    assert raw.count(b"HTTP/1.1") == 1  # no answer from the application, of "0" or otherwise
    time.sleep(0.2)  # time for a task, had one been started, to run
    assert server.recorder.scopes[before:] == []


def test_an_upgrade_with_an_empty_body_is_answered_as_plain_http(server: Running) -> None:
    request = b"POST /echo HTTP/1.1\r\nhost: test\r\n" + UPGRADE + b"content-length: 0\r\n\r\n"
    with server.connect() as sock:
        sock.sendall(request)
        response = read_response(sock)
        assert (response.status, response.body) == (200, b"0")
        assert closed_by_server(sock) == b""


def test_an_upgrade_with_a_body_behind_owed_answers_ends_the_connection_after_them(
    server: Running,
) -> None:
    before = len(server.recorder.scopes)
    upgrade = b"POST /echo HTTP/1.1\r\nhost: test\r\n" + UPGRADE + b"content-length: 5\r\n\r\n"
    with server.connect() as sock:
        sock.sendall(get("/slow") + upgrade + b"hello")
        buffered = bytearray()
        first = read_response(sock, buffered)
        assert (first.status, first.body) == (200, b"OK")
        assert first.headers.get("connection") == "close"
        assert bytes(buffered) + closed_by_server(sock) == b""
    assert server.recorder.scopes[before:] == ["http"]  # the upgrade request never started


def test_an_http10_client_gets_no_100_continue(server: Running) -> None:
    head = b"POST /echo HTTP/1.0\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n"
    with server.connect() as sock:
        sock.sendall(head)
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(65536)  # no interim answer: the client is to send its body unasked
        sock.settimeout(CLOSE_WITHIN_S)
        sock.sendall(b"hello")
        raw = closed_by_server(sock)
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert raw.endswith(b"\r\n\r\n5")


def test_an_http11_client_still_gets_100_continue(server: Running) -> None:
    head = b"POST /echo HTTP/1.1\r\nhost: test\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n"
    with server.connect() as sock:
        sock.sendall(head)
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"hello")
        response = read_response(sock, bytearray(interim.partition(b"\r\n\r\n")[2]))
    assert (response.status, response.body) == (200, b"5")


@pytest.mark.parametrize(
    "hosts", [b"", b"host: a.test\r\nhost: b.test\r\n", b"host: a.test\r\nHost: a.test\r\n"]
)
def test_an_http11_request_without_exactly_one_host_is_malformed(
    server: Running, hosts: bytes
) -> None:
    before = len(server.recorder.scopes)
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n" + hosts + b"\r\n")
        raw = closed_by_server(sock)
    assert status_of(raw) == 400
    assert server.recorder.scopes[before:] == []  # never run


@pytest.mark.parametrize(
    "host",
    [b"a b", b"@@@", b"x/y", b"[::1", b"x\tz", b"a.test:80x", b"%zz", b"[.]", b"[:]",
     b"[1.2.3.4]", b"[::1::2]", b"[1:2:3:4:5:6:7:8:9]", b"[12345::]", b"[fe80::1%25eth0]",
     b"[\xc3\xa9::1]"],
)  # fmt: skip
@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
def test_a_host_field_that_names_no_host_is_malformed(
    server: Running, host: bytes, version: bytes
) -> None:
    # RFC 9112 §3.2: 400 to a Host field with an invalid value (HTTP/1.0 needs none, but one
    # sent must be valid too).
    before = len(server.recorder.scopes)
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/" + version + b"\r\nhost: " + host + b"\r\n\r\n")
        raw = closed_by_server(sock)
    assert status_of(raw) == 400
    assert server.recorder.scopes[before:] == []  # never run


def test_two_host_fields_are_malformed_in_http10_too(server: Running) -> None:
    # RFC 9112 §3.2: more than one Host field is a 400 whatever the version (one is optional
    # in HTTP/1.0).
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nhost: a\r\nhost: b\r\n\r\n")
        assert status_of(closed_by_server(sock)) == 400


def test_a_host_is_checked_on_every_request_of_a_connection(server: Running) -> None:
    with server.connect() as sock:
        sock.sendall(get("/first"))  # host: test, found valid
        assert read_response(sock).status == 200
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x/y\r\n\r\n")
        assert status_of(closed_by_server(sock)) == 400


@pytest.mark.parametrize(
    "host",
    [b"a.test", b"127.0.0.1:8080", b"[::1]:80", b"[::ffff:1.2.3.4]", b"a.test:", b"",
     b"xn--fa-hia.de", b"a%41.test", b"a.test ", b"[v1.x]", b"[v1.fe80::a+en1]:8080"],
)  # fmt: skip
def test_a_host_field_naming_a_host_is_served(server: Running, host: bytes) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: " + host + b"\r\n\r\n")
        assert read_response(sock).status == 200


@pytest.mark.parametrize(
    "coding",
    [
        b"gzip, chunked",
        b"deflate,chunked",
        b"identity, chunked",
        b"chunked\r\ntransfer-encoding: gzip",
    ],
)
def test_a_transfer_coding_other_than_chunked_is_malformed(server: Running, coding: bytes) -> None:
    before = len(server.recorder.scopes)
    with server.connect() as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nhost: test\r\ntransfer-encoding: " + coding + b"\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        )
        raw = closed_by_server(sock)
    assert status_of(raw) == 400
    assert server.recorder.scopes[before:] == []  # never run


@pytest.mark.parametrize("coding", [b"Chunked ", b",chunked", b", chunked"])
def test_chunked_in_any_case_or_after_empty_elements_is_read(
    server: Running, coding: bytes
) -> None:
    with server.connect() as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nhost: test\r\ntransfer-encoding: " + coding + b"\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        )
        response = read_response(sock, bytearray())
    assert (response.status, response.body) == (200, b"5")


def test_a_hostless_request_behind_owed_answers_ends_the_connection_after_them(
    server: Running,
) -> None:
    before = len(server.recorder.scopes)
    with server.connect() as sock:
        sock.sendall(get("/slow") + b"GET / HTTP/1.1\r\n\r\n" + get())
        buffered = bytearray()
        first = read_response(sock, buffered)
        assert (first.status, first.body) == (200, b"OK")
        assert first.headers.get("connection") == "close"
        assert bytes(buffered) + closed_by_server(sock) == b""
    assert server.recorder.scopes[before:] == ["http"]


def test_an_http10_request_needs_no_host(server: Running) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        raw = closed_by_server(sock)
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert raw.endswith(b"\r\n\r\nOK")


# --------------------------------------------------------------------------------- warnings


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_flood_of_invalid_requests_writes_one_warning() -> None:
    lines = _Lines()
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(lines)
    try:
        with running() as server:
            for _ in range(200):
                with server.connect() as sock:
                    sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
                    assert status_of(closed_by_server(sock)) == 400
    finally:
        logger.removeHandler(lines)
    assert lines.lines == ["Invalid HTTP request received."]


# --------------------------------------------------------------------------- normal traffic


def test_pipelined_requests_are_all_answered(server: Running) -> None:
    with server.connect() as sock:
        post = b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\n\r\nhello"
        sock.sendall(get() + post + get("/last"))
        buffered = bytearray()
        answers = [read_response(sock, buffered) for _ in range(3)]
    assert [(a.status, a.body) for a in answers] == [(200, b"OK"), (200, b"5"), (200, b"OK")]


def test_pipelined_requests_past_the_head_limit_in_one_read_are_all_answered(
    server: Running,
) -> None:
    """Only the head still incomplete counts against the limit, not the whole requests that
    came before it in the same read."""
    body = b"x" * 1024
    post = b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    count = LIMITS.max_head_bytes // len(post) + 10
    assert count < MAX_QUEUED_REQUESTS
    last = get("/last")
    with server.connect() as sock:
        sock.sendall(post * count + last[:10])  # one write: whole requests, then a cut head
        time.sleep(0.2)
        sock.sendall(last[10:])
        buffered = bytearray()
        answers = [read_response(sock, buffered) for _ in range(count + 1)]
    assert {a.status for a in answers} == {200}


def test_a_connection_queues_a_bounded_number_of_pipelined_requests_and_answers_all() -> None:
    # Each request queued behind the one being answered is held until its turn, with its scope
    # and headers: a read of tiny requests would otherwise queue thousands. Past the bound the
    # rest is held unparsed and reading paused; nothing is refused, the client only waits.
    count = 5000
    bound = MAX_QUEUED_REQUESTS + PARSE_SLICE_BYTES // len(get())
    with running() as server, server.connect() as sock:
        sock.sendall(get("/slow") + get() * count)  # far more than one read
        time.sleep(SLOW_S / 2)  # the first is still being answered
        sock.sendall(get("/late"))  # sent before reading, as a pipelining client does
        connection = _connection_of(server)
        assert 0 < len(connection.pipeline) <= bound
        buffered = bytearray()
        answers = [read_response(sock, buffered) for _ in range(count + 2)]
        assert {a.status for a in answers} == {200}
        assert {a.headers.get("connection") for a in answers} == {None}
        sock.sendall(get("/after"))  # still open, still served
        assert read_response(sock, buffered).status == 200


def _connection_of(server: Running) -> HttpConnection:
    [connection] = list(server.server.server_state.connections)
    assert isinstance(connection, HttpConnection)
    return connection


def test_small_reads_behind_a_slow_answer_queue_no_more_than_the_bound() -> None:
    # Each read short enough to be parsed whole: the bound is checked before every read all the
    # same, so reads arriving while answers are slow are held, not queued.
    per_read = PARSE_SLICE_BYTES // len(get("/slow"))
    bound = MAX_QUEUED_REQUESTS + per_read
    with running() as server, server.connect() as sock:
        sock.sendall(get("/slow"))
        time.sleep(SLOW_S / 2)
        sock.sendall(get("/slow") * per_read)  # one read: queued
        time.sleep(SLOW_S)  # the first is answered (reading resumes) before the next comes
        sock.sendall(get("/slow") * per_read)  # one read again: the queue is full
        connection = _connection_of(server)
        deadline = time.monotonic() + CLOSE_WITHIN_S
        while not connection._held and time.monotonic() < deadline:
            time.sleep(0.01)  # a loaded machine may take that read late; the queue stays full
        assert len(connection.pipeline) <= bound
        assert len(connection._held) == len(get("/slow")) * per_read  # waits, unparsed


@pytest.mark.parametrize("path", ["/", "/watch"])
def test_a_client_that_keeps_sending_while_the_queue_is_full_is_held_to_one_read(
    path: str,
) -> None:
    # Reading stays paused while anything is held, whatever asks to resume it: an answer that
    # completes, or one that waits for its client's disconnect (``/watch``). The client's
    # writes back up in its own socket, not in the server's memory.
    read_limit = 256 * 1024
    chunk = get(path) * (PARSE_SLICE_BYTES // len(get(path)))
    with running() as server, server.connect() as sock:
        sock.settimeout(0.2)
        stop = threading.Event()

        def drain() -> None:  # the client reads every answer, as fast as they come
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    if not sock.recv(1 << 20):
                        return

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        sent = position = 0
        ends = time.monotonic() + 1.0
        while time.monotonic() < ends:  # whole requests, however the socket takes them
            with contextlib.suppress(TimeoutError):
                taken = sock.send(chunk[position:])
                sent += taken
                position = (position + taken) % len(chunk)
        connection = _connection_of(server)
        held, queued = len(connection._held), len(connection.pipeline)
        stop.set()
        reader.join()
    assert sent > 4 * read_limit  # far more than the server may hold
    assert queued <= MAX_QUEUED_REQUESTS + len(chunk) // len(get(path))
    assert held <= read_limit


def test_the_request_being_answered_is_told_its_client_has_gone() -> None:
    # uvicorn tells only the newest request of the connection (the one queued here).
    with running() as server:
        with server.connect() as sock:
            sock.sendall(get("/watch?long") + get("/watch"))
            sock.recv(64)  # the first answer has started
        deadline = time.monotonic() + CLOSE_WITHIN_S
        while server.recorder.disconnects < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.recorder.disconnects == 1


def test_queued_requests_are_bounded_by_their_bodies_too() -> None:
    # Twenty bodies of 3,000 bytes behind a slow answer: the queue is full once it holds a body
    # limit's worth (and one more read), not 60,000 bytes.
    size = 3000
    post = b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: %d\r\n\r\n" % size
    post += b"x" * size
    with running() as server, server.connect() as sock:
        sock.sendall(get("/slow") + post * 20)
        time.sleep(SLOW_S / 2)
        connection = _connection_of(server)
        queued = sum(len(cycle.body) for cycle, _ in connection.pipeline)
        assert 0 < queued <= LIMITS.max_body_bytes + PARSE_SLICE_BYTES + size
        buffered = bytearray()
        answers = [read_response(sock, buffered) for _ in range(21)]
    assert [a.body for a in answers] == [b"OK"] + [b"%d" % size] * 20


def test_queued_requests_are_bounded_by_their_header_fields_too() -> None:
    # 64 heads at the limit, each field a Python object, would cost far more than one request:
    # the queue is full once it holds a head's worth of fields.
    fields = LIMITS.max_head_bytes // 4 * 3 // 4  # three quarters of a head at the limit
    heavy = b"GET / HTTP/1.1\r\nhost: test\r\n" + b"a:\r\n" * (fields - 1) + b"\r\n"
    with running() as server, server.connect() as sock:
        sock.sendall(get("/slow") + heavy * 20)
        time.sleep(SLOW_S / 2)
        connection = _connection_of(server)
        queued = [len(cycle.scope["headers"]) for cycle, _ in connection.pipeline]
        assert sum(queued) <= LIMITS.max_head_bytes // 4 + PARSE_SLICE_BYTES // 4 + fields
        assert len(queued) < 20
        # The rest waits: held unparsed when a read went past the full queue, else in the
        # kernel, reading paused (a read that ended on a request's end before the queue filled).
        assert connection._held or connection.flow.read_paused
        buffered = bytearray()
        answers = [read_response(sock, buffered) for _ in range(21)]
    assert {a.status for a in answers} == {200}


@pytest.mark.parametrize("slow", [False, True])
def test_a_malformed_request_behind_others_ends_the_connection_after_their_answers(
    slow: bool,
) -> None:
    # A 400 written at once would be read as the answer to the first request owed.
    first = get("/slow") if slow else get("/first")
    with running() as server, server.connect() as sock:
        sock.sendall(first + get("/second") + b"NOT HTTP AT ALL\r\n\r\n" + get("/never"))
        buffered = bytearray()
        answers = [read_response(sock, buffered) for _ in range(2)]
        rest = bytes(buffered) + closed_by_server(sock)
    assert [(a.status, a.body) for a in answers] == [(200, b"OK"), (200, b"OK")]
    assert [a.headers.get("connection") for a in answers] == [None, "close"]
    assert rest == b""


@pytest.mark.parametrize(
    ("head", "rest"),
    [
        (b"content-length: 5\r\n\r\nhe", b"llo"),
        (b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n", b"0\r\n\r\n"),
    ],
    ids=["content-length", "chunked"],
)
def test_a_malformed_request_in_the_read_that_ends_a_body_ends_the_connection_after_it(
    head: bytes, rest: bytes
) -> None:
    # The body's request had been answered with keep-alive off while its body arrived, then
    # given keep-alive back as its body ended: its answer said nothing of the close, and the
    # connection waited for the keep-alive timeout with the malformed request unanswered.
    with running(timeout_keep_alive=60) as server, server.connect() as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nhost: test\r\n" + head)
        time.sleep(0.3)  # the application is reading the body
        sock.sendall(rest + b"GET / HTTP/1.1\r\nBad Header: 1\r\n\r\n")
        buffered = bytearray()
        answer = read_response(sock, buffered)
        after = bytes(buffered) + closed_by_server(sock)
    assert (answer.status, answer.body) == (200, b"5")
    assert answer.headers.get("connection") == "close"
    assert after == b""


def test_as_many_pipelined_requests_as_a_connection_queues_keep_it_alive(server: Running) -> None:
    with server.connect() as sock:
        sock.sendall(get() * (MAX_QUEUED_REQUESTS + 1))
        buffered = bytearray()
        answers = [read_response(sock, buffered) for _ in range(MAX_QUEUED_REQUESTS + 1)]
        assert {a.headers.get("connection") for a in answers} == {None}
        sock.sendall(get("/after"))
        assert read_response(sock, buffered).status == 200


def test_keep_alive_requests_share_a_connection(server: Running) -> None:
    with server.connect() as sock:
        for _ in range(5):
            sock.sendall(get())
            response = read_response(sock)
            assert response.status == 200
            assert response.headers.get("connection") != "close"
