"""A real ``serve`` against clients that try to hold its connections or its memory.

Both ports (the operator API in a worker, the admin API in the serving process) refuse a request
head past its limit (431) without the process growing, close connections that send no complete
head, or no complete body, in time (408; short timeouts are set here through the environment),
close a connection answered before its body ended, answer a websocket upgrade as plain HTTP, and
write one warning line for a flood of malformed requests; requests sent as clients normally send
them (pipelined, kept alive, a token generate) are served as before. Serve also raises its
open-files limit to the hard limit, so that idle connections cannot run it out of descriptors.
"""

from __future__ import annotations

import http.client
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cli_harness import database_for
from serve_harness import Prepared, Served, poll, prepare, served

pytestmark = pytest.mark.functional

HEAD_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
ENV = {
    "UID2_HTTP_HEAD_TIMEOUT_S": str(HEAD_TIMEOUT_S),
    "UID2_HTTP_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
}
CLOSE_WITHIN_S = 15.0
INVALID_REQUEST = "Invalid HTTP request received."


@pytest.fixture(scope="module", name="world")
def world_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Prepared]]:
    """One serve for the module, started with a soft open-files limit below the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with database_for("sqlite", tmp_path_factory.mktemp("hostile")) as database:
        prepared = prepare(database)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard // 2, hard))
        try:
            with served(database, env=ENV) as running:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                yield running, prepared
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(name="running")
def running_fixture(world: tuple[Served, Prepared]) -> Served:
    return world[0]


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


def _connect(url: str) -> socket.socket:
    return socket.create_connection(_address(url), timeout=CLOSE_WITHIN_S)


def _until_closed(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection; fails if it keeps it open."""
    received = bytearray()
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


def _status(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:200]
    return int(raw.split(b" ", 2)[1])


def _rss_kib(pid: str | int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _worker(running: Served) -> str:
    (worker,) = running.workers(1, timeout_s=30)
    return worker


def _open_files(pid: str | int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files limit")


def test_serve_and_its_workers_take_the_hard_open_files_limit(running: Served) -> None:
    for pid in (running.process.pid, _worker(running)):
        soft, hard = _open_files(pid)
        assert soft == hard, pid


def test_an_endless_header_is_refused_431_without_growing_the_worker(running: Served) -> None:
    worker = _worker(running)
    before = _rss_kib(worker)
    with _connect(running.base_url) as sock:
        sock.sendall(b"GET /ops/healthcheck HTTP/1.1\r\nhost: test\r\nx-big: ")
        sent = 0
        try:
            for _ in range(64):  # 64 MiB, unless the server closes the connection first
                sock.sendall(b"a" * (1 << 20))
                sent += 1
        except (BrokenPipeError, ConnectionResetError):
            pass
        grown = _rss_kib(worker) - before
        assert grown < 16 * 1024, (grown, sent)
        raw = _until_closed(sock)
    assert _status(raw) == 431
    assert running.request("GET", "/ops/healthcheck").status_code == 200


@pytest.mark.parametrize("port", ["operator", "admin"])
def test_a_head_over_the_limit_in_pieces_is_refused_431(running: Served, port: str) -> None:
    url = running.base_url if port == "operator" else running.admin_url
    with _connect(url) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: test\r\n")
        try:
            for _ in range(20):  # 47 KiB a read: past the 64 KiB limit on the second
                sock.sendall(b"a: b\r\n" * 8000)
                time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            pass
        raw = _until_closed(sock)
    assert _status(raw) == 431


@pytest.mark.parametrize("port", ["operator", "admin"])
def test_an_idle_connection_is_closed_after_the_head_timeout(running: Served, port: str) -> None:
    url = running.base_url if port == "operator" else running.admin_url
    with _connect(url) as sock:
        raw = _until_closed(sock)
    assert _status(raw) == 408


def test_a_slowloris_head_is_closed_after_the_head_timeout(running: Served) -> None:
    head = b"GET /ops/healthcheck HTTP/1.1\r\nhost: test\r\nx-slow: " + b"s" * 100
    started = time.monotonic()
    with _connect(running.base_url) as sock:
        sock.settimeout(0.2)
        raw = b""
        for byte in head:  # a byte every 0.2 s, never ending the head
            try:
                sock.sendall(bytes([byte]))
                raw = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                pass
            break
    assert time.monotonic() - started < CLOSE_WITHIN_S, "the head was kept for 20 s"
    assert _status(raw) == 408


def test_a_stalled_body_is_answered_408_and_closed(running: Served) -> None:
    with _connect(running.base_url) as sock:
        sock.sendall(
            b"POST /v2/token/generate HTTP/1.1\r\nhost: test\r\ncontent-type: text/plain\r\n"
            b"content-length: 1000\r\n\r\n" + b"A" * 10
        )
        raw = _until_closed(sock)
    assert _status(raw) == 408


def test_an_early_413_closes_the_connection(running: Served) -> None:
    with _connect(running.base_url) as sock:
        sock.sendall(
            b"POST /v2/token/generate HTTP/1.1\r\nhost: test\r\ncontent-type: text/plain\r\n"
            b"content-length: 2000000\r\n\r\n" + b"A" * 1000
        )
        raw = _until_closed(sock)
    assert _status(raw) == 413
    assert b"connection: close" in raw.lower()


def test_a_websocket_upgrade_on_the_operator_port_gets_a_normal_answer(running: Served) -> None:
    with _connect(running.base_url) as sock:
        sock.sendall(
            b"GET /ops/healthcheck HTTP/1.1\r\nhost: test\r\nconnection: Upgrade\r\n"
            b"upgrade: websocket\r\nsec-websocket-version: 13\r\n"
            b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        raw = _until_closed(sock)
    assert _status(raw) == 200
    assert raw.endswith(b"\r\n\r\nOK")
    assert not [line for line in running.lines if line.startswith("ERROR")]


def test_a_flood_of_invalid_requests_writes_one_warning_line(running: Served) -> None:
    for _ in range(200):
        with _connect(running.base_url) as sock:
            sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            assert _status(_until_closed(sock)) == 400
    poll(lambda: any(INVALID_REQUEST in line for line in running.lines))
    time.sleep(0.5)  # what the worker wrote has reached the output
    warnings = [line for line in running.lines if INVALID_REQUEST in line]
    assert 1 <= len(warnings) <= 2, warnings


def test_pipelined_requests_are_answered_in_order(running: Served) -> None:
    request = b"GET /ops/healthcheck HTTP/1.1\r\nhost: test\r\n\r\n"
    last = b"GET /ops/healthcheck HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
    with _connect(running.base_url) as sock:
        sock.sendall(request * 4 + last)
        raw = _until_closed(sock)
    assert raw.count(b"HTTP/1.1 200 OK\r\n") == 5


def test_keep_alive_requests_share_one_connection(running: Served) -> None:
    host, port = _address(running.base_url)
    connection = http.client.HTTPConnection(host, port, timeout=CLOSE_WITHIN_S)
    try:
        for _ in range(5):
            connection.request("GET", "/ops/healthcheck")
            response = connection.getresponse()
            assert (response.status, response.read()) == (200, b"OK")
            assert response.getheader("connection") != "close"
    finally:
        connection.close()


def test_a_token_generate_is_served(world: tuple[Served, Prepared]) -> None:
    running, prepared = world
    reply, opened = running.call("/v2/token/generate", {"email": "a@example.com"}, prepared.key)
    assert reply.status_code == 200, reply.text
    assert opened is not None
    assert opened["status"] == "success", opened
