"""A worker with a metrics listener of its own (``serve --metrics-port``) answers ``/metrics``
there and nothing else, and on the operator port answers ``/metrics`` as any unknown path; without
one, ``/metrics`` stays on the operator port.

The worker is the one ``build_worker`` wires (over a store and a keyring that are never reached:
no snapshot is loaded), called through its ASGI interface with the local address of the
connection in ``scope["server"]``, as the server gives it."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from operator_harness import worker_without_snapshot
from prometheus_client.parser import text_string_to_metric_families

from uid2_operator.web.operator_api.server import OperatorServer

OPERATOR_PORT = 8080
METRICS_PORT = 9100
REQUESTS_TOTAL = "uid2_operator_requests_total"
PROMETHEUS_TEXT = b"# TYPE uid2_operator_requests_total counter"


def _call(
    server: OperatorServer,
    method: str,
    path: str,
    *,
    port: int | None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request on a connection to ``port`` of this machine (None: a local address the
    server does not know); the status, headers and body of the answer."""
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> MutableMapping[str, Any]:
        return incoming.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": headers or [],
        "server": None if port is None else ("127.0.0.1", port),
    }
    asyncio.run(server(scope, receive, send))
    start, *body = sent
    assert start["type"] == "http.response.start"
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in body)


def _requests(server: OperatorServer) -> dict[tuple[str, str], float]:
    """``uid2_operator_requests_total`` of a scrape on the metrics port, by endpoint and status."""
    status, _, body = _call(server, "GET", "/metrics", port=METRICS_PORT)
    assert status == 200
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == REQUESTS_TOTAL:
                key = (sample.labels["endpoint"], sample.labels["status"])
                counts[key] = counts.get(key, 0.0) + sample.value
    return counts


@pytest.mark.parametrize("port", [OPERATOR_PORT, METRICS_PORT, None])
def test_without_a_metrics_listener_metrics_are_answered_on_the_operator_port(
    tmp_path: Path, port: int | None
) -> None:
    server = worker_without_snapshot(tmp_path, None)
    status, headers, body = _call(server, "GET", "/metrics", port=port)
    assert status == 200
    assert PROMETHEUS_TEXT in body
    assert headers[b"content-type"].startswith(b"text/plain")
    status, headers, body = _call(server, "POST", "/metrics", port=port)
    assert (status, body) == (405, b"Method Not Allowed")
    assert headers[b"allow"] == b"GET, HEAD"


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "OPTIONS"])
@pytest.mark.parametrize("origin", [None, b"https://publisher.example"])
def test_with_a_metrics_listener_the_operator_port_answers_metrics_as_an_unknown_path(
    tmp_path: Path, method: str, origin: bytes | None
) -> None:
    server = worker_without_snapshot(tmp_path, METRICS_PORT)
    headers = [] if origin is None else [(b"origin", origin)]
    metrics = _call(server, method, "/metrics", port=OPERATOR_PORT, headers=headers)
    unknown = _call(server, method, "/no-such-path", port=OPERATOR_PORT, headers=headers)
    assert metrics == unknown
    if method != "OPTIONS":  # a CORS pre-flight is answered 204 on any path
        assert metrics[0] == 404


def test_with_a_metrics_listener_metrics_on_the_operator_port_count_as_other(
    tmp_path: Path,
) -> None:
    server = worker_without_snapshot(tmp_path, METRICS_PORT)
    for _ in range(3):
        assert _call(server, "GET", "/metrics", port=OPERATOR_PORT)[0] == 404
    assert _call(server, "GET", "/no-such-path", port=OPERATOR_PORT)[0] == 404
    requests = _requests(server)
    assert requests == {("other", "404"): 4.0}


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_the_metrics_listener_answers_metrics(tmp_path: Path, method: str) -> None:
    server = worker_without_snapshot(tmp_path, METRICS_PORT)
    status, headers, body = _call(server, method, "/metrics", port=METRICS_PORT)
    assert status == 200
    assert headers[b"content-type"].startswith(b"text/plain")
    assert headers[b"content-length"] == str(len(body)).encode()  # HEAD: the server drops it
    assert PROMETHEUS_TEXT in body


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/metrics"),
        ("PUT", "/metrics"),
        ("OPTIONS", "/metrics"),
        ("GET", "/metrics/"),
        ("GET", "/ops/healthcheck"),
        ("HEAD", "/ops/healthcheck"),
        ("POST", "/v2/token/generate"),
        ("POST", "/v2/token/refresh"),
        ("OPTIONS", "/v2/token/generate"),
        ("GET", "/no-such-path"),
    ],
)
def test_the_metrics_listener_answers_nothing_else_and_counts_none_of_it(
    tmp_path: Path, method: str, path: str
) -> None:
    server = worker_without_snapshot(tmp_path, METRICS_PORT)
    unknown = _call(server, "GET", "/no-such-path", port=OPERATOR_PORT)
    assert unknown[0] == 404
    origin = [(b"origin", b"https://publisher.example")]
    assert _call(server, method, path, port=METRICS_PORT, headers=origin) == unknown
    assert _requests(server) == {("other", "404"): 1.0}  # the operator port's request alone


def test_a_degraded_health_check_is_not_answered_on_the_metrics_listener(tmp_path: Path) -> None:
    server = worker_without_snapshot(tmp_path, METRICS_PORT)
    assert server.worker.source.problem is not None  # no snapshot loaded
    assert _call(server, "GET", "/ops/healthcheck", port=OPERATOR_PORT)[0] == 503
    assert _call(server, "GET", "/ops/healthcheck", port=METRICS_PORT)[::2] == (404, b"Not Found")


def test_a_connection_of_unknown_local_port_is_never_answered_metrics(tmp_path: Path) -> None:
    server = worker_without_snapshot(tmp_path, METRICS_PORT)
    assert _call(server, "GET", "/metrics", port=None)[0] == 404
