"""Answers the connection gives itself are counted in the request metrics, once each, as every
answer of the operator port is: a malformed request's 400 (a made-up method, no Host), a head
past its limit (431) or its deadline (408), and, for a request whose body was being read, a
malformed chunk (400), a body past the limit (413) or its deadline (408), counted under the
route with that status, not as a client gone (499). Each with no key id, and in the latency
histogram too. A head that times out after an answered request on a kept-alive connection is
counted as ``other``, not under the route answered before; the metrics port's own answers are
not counted."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from cli_harness import database_for
from prometheus_client.parser import text_string_to_metric_families
from serve_harness import Served, poll, prepare, served

pytestmark = pytest.mark.functional

ENV = {"UID2_HTTP_HEAD_TIMEOUT_S": "1", "UID2_HTTP_BODY_TIMEOUT_S": "1"}
GENERATE = "/v2/token/generate"
REQUESTS = "uid2_operator_requests_total"
DURATION = "uid2_operator_request_duration_seconds"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with database_for("sqlite", tmp_path_factory.mktemp("answers")) as database:
        prepare(database)
        with served(database, env=ENV) as running:
            yield running


def _answer(server: Served, *pieces: bytes, url: str | None = None) -> int:
    """Send ``pieces`` (stopping early if the server closes), then the status it answered last."""
    parts = urlsplit(url or server.base_url)
    assert parts.hostname is not None
    assert parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=15) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = bytearray()
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:  # the answer came, then the reset for what went unread
            pass
    assert received.startswith(b"HTTP/1.1 "), bytes(received[:100])
    return int(bytes(received).rsplit(b"HTTP/1.1 ", 1)[1].split(b" ", 1)[0])


def _counted(server: Served) -> dict[tuple[str, str, str], float]:
    """``(endpoint, key_id, status)``: requests counted, over every worker."""
    counts: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(server.metrics()):
        for sample in family.samples:
            if sample.name == REQUESTS:
                label = (
                    sample.labels["endpoint"],
                    sample.labels["key_id"],
                    sample.labels["status"],
                )
                counts[label] = counts.get(label, 0.0) + sample.value
    return counts


def _timed(server: Served, endpoint: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(server.metrics()):
        for sample in family.samples:
            if sample.name == f"{DURATION}_count" and sample.labels["endpoint"] == endpoint:
                total += sample.value
    return total


POST_HEAD = b"POST /v2/token/generate HTTP/1.1\r\nhost: test\r\ncontent-type: text/plain\r\n"


HEALTH = b"GET /ops/healthcheck HTTP/1.1\r\n"
CHUNK = b"40000\r\n" + b"A" * 0x40000 + b"\r\n"
CHUNKED = b"transfer-encoding: chunked\r\n\r\n"
BAD_CHUNK = b"5\r\nabcde\r\nZZZ\r\n\r\n"
HEALTH_PATH = "/ops/healthcheck"


@pytest.mark.parametrize(
    ("pieces", "status", "endpoint"),
    [
        # Refused before the head was whole: no route read yet, counted as ``other``.
        pytest.param((b"FOOX / HTTP/1.1\r\nhost: a\r\n\r\n",), 400, "other", id="method"),
        pytest.param((HEALTH + b"\r\n",), 400, "other", id="no-host"),
        pytest.param((HEALTH + b"host: t\r\nx: " + b"a" * 300_000,), 431, "other", id="head-431"),
        pytest.param((HEALTH + b"host: t\r\n",), 408, "other", id="head-408"),
        # Refused while the application read the body: under its route.
        pytest.param((POST_HEAD + CHUNKED + BAD_CHUNK,), 400, GENERATE, id="bad-chunk"),
        # ... or answered it without reading the body: the 400 sent, not the answer it gave.
        pytest.param(
            (HEALTH + b"host: t\r\n" + CHUNKED + BAD_CHUNK,), 400, HEALTH_PATH, id="health"
        ),
        pytest.param(
            (b"OPTIONS /v2/token/generate HTTP/1.1\r\nhost: t\r\n" + CHUNKED + BAD_CHUNK,),
            400,
            GENERATE,
            id="options",
        ),
        pytest.param(
            (b"POST /nope HTTP/1.1\r\nhost: t\r\n" + CHUNKED + BAD_CHUNK,), 400, "other", id="404"
        ),
        pytest.param(
            (POST_HEAD + b"content-length: 1000\r\n\r\n" + b"A" * 10,), 408, GENERATE, id="body-408"
        ),
        pytest.param(
            (POST_HEAD + b"transfer-encoding: chunked\r\n\r\n", *[CHUNK] * 8),
            413,
            GENERATE,
            id="body-413",
        ),
    ],
)
def test_the_connections_own_answers_are_counted(
    server: Served, pieces: tuple[bytes, ...], status: int, endpoint: str
) -> None:
    label = (endpoint, "", str(status))
    before = _counted(server)
    timed = _timed(server, endpoint)
    assert _answer(server, *pieces) == status
    poll(lambda: _counted(server).get(label, 0.0) == before.get(label, 0.0) + 1 or None, 10)
    assert _timed(server, endpoint) == timed + 1
    after = _counted(server)
    changed = {  # the scrapes themselves aside: exactly the answer sent, nothing else
        k: v - before.get(k, 0.0)
        for k, v in after.items()
        if k[0] != "/metrics" and v != before.get(k, 0.0)
    }
    assert changed == {label: 1.0}


def test_a_head_timing_out_after_an_answer_is_not_the_answered_route(server: Served) -> None:
    """An empty line after an answered request arms the head deadline (RFC 9112 §2.2 lets a
    client send one); its 408 is counted as ``other``, not under the route answered before."""
    other = _counted(server).get(("other", "", "408"), 0.0)
    routed = _counted(server).get((GENERATE, "", "408"), 0.0)
    parts = urlsplit(server.base_url)
    assert parts.hostname is not None
    assert parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=15) as sock:
        sock.sendall(POST_HEAD + b"content-length: 0\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 401 ")
        sock.sendall(b"\r\n")
        rest = bytearray()
        while chunk := sock.recv(65536):
            rest += chunk
    assert b"HTTP/1.1 408 " in rest
    poll(lambda: _counted(server).get(("other", "", "408"), 0.0) == other + 1 or None, timeout_s=10)
    assert _counted(server).get((GENERATE, "", "408"), 0.0) == routed


@pytest.fixture(scope="module")
def with_metrics_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with database_for("sqlite", tmp_path_factory.mktemp("answers-mp")) as database:
        prepare(database)
        with served(database, env=ENV, extra_args=("--metrics-port", "0")) as running:
            yield running


def test_the_metrics_ports_own_answers_are_not_counted(with_metrics_port: Served) -> None:
    server = with_metrics_port
    before = _counted(server)
    assert _answer(server, b"GARBAGE\r\n\r\n", url=server.metrics_url) == 400
    assert _answer(server, b"GET /metrics HTTP/1.1\r\n", url=server.metrics_url) == 408
    assert _answer(server, b"FOOX / HTTP/1.1\r\nhost: a\r\n\r\n") == 400  # the operator port's
    poll(lambda: _counted(server).get(("other", "", "400"), 0.0) > 0 or None, timeout_s=10)
    after = _counted(server)
    assert after.get(("other", "", "400"), 0.0) == before.get(("other", "", "400"), 0.0) + 1
    assert after.get(("other", "", "408"), 0.0) == before.get(("other", "", "408"), 0.0)
