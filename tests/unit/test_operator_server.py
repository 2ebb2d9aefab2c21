"""The worker's own answers (degraded health check, metrics) carry Content-Length, so the
server sends them whole instead of chunked; anything else goes on to the operator API."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from uid2_operator.domain.authorization import KEYLESS_ENDPOINTS, OPERATOR_ENDPOINTS
from uid2_operator.web.operator_api.app import OperatorApi
from uid2_operator.web.operator_api.metrics import MetricsCollector, RequestMetrics
from uid2_operator.web.operator_api.server import METRICS, ROUTES, OperatorServer, Worker


class _Source:
    def __init__(self, problem: str | None) -> None:
        self.problem = problem


def _server(problem: str | None) -> OperatorServer:
    metrics = RequestMetrics(ROUTES)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(metrics, []))
    worker = Worker(
        store=cast(Any, None),
        source=cast(Any, _Source(problem)),
        write_behind=cast(Any, None),
        metrics=metrics,
        registry=registry,
    )
    return OperatorServer(OperatorApi(), worker)


def _call(server: OperatorServer, method: str, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> MutableMapping[str, Any]:
        return incoming.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    asyncio.run(server(scope, receive, send))
    start, body = sent
    assert start["type"] == "http.response.start"
    assert body["type"] == "http.response.body"
    return start["status"], dict(start["headers"]), body["body"]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_degraded_health_check_is_answered_whole(method: str) -> None:
    status, headers, body = _call(_server("store unreachable"), method, "/ops/healthcheck")
    assert (status, body) == (503, b"store unreachable")
    assert headers[b"content-length"] == b"17"
    assert headers[b"content-type"].startswith(b"text/plain")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", ["/ops/healthcheck/", "//ops/healthcheck", "/ops/./healthcheck"])
def test_a_degraded_health_check_on_another_form_of_its_path_is_the_degraded_one(
    method: str, path: str
) -> None:
    status, _headers, body = _call(_server("store unreachable"), method, path)
    assert (status, body) == (503, b"store unreachable")
    status, _headers, body = _call(_server(None), method, path)
    assert status == 200


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_metrics_are_answered_whole(method: str) -> None:
    server = _server(None)
    server.worker.metrics.observe("/v2/token/generate", "key-1", 200, 0.01)
    status, headers, body = _call(server, method, "/metrics")
    assert status == 200
    assert b'uid2_operator_requests_total{endpoint="/v2/token/generate",key_id="key-1"' in body
    assert headers[b"content-length"] == str(len(body)).encode()
    assert headers[b"content-type"].startswith(b"text/plain")


def test_a_healthy_health_check_goes_to_the_api() -> None:
    status, headers, body = _call(_server(None), "GET", "/ops/healthcheck")
    assert (status, body) == (200, b"OK")
    assert headers[b"content-length"] == b"2"


def test_metrics_name_every_served_route() -> None:
    assert {*OPERATOR_ENDPOINTS, *KEYLESS_ENDPOINTS, METRICS} <= ROUTES
    assert "/v2/token/client-generate" in ROUTES


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_metrics_with_another_method_is_405_like_the_api_paths(method: str) -> None:
    server = _server(None)
    assert _call(server, method, "/metrics")[::2] == (405, b"Method Not Allowed")
    # the same answer the API gives on its own known paths
    assert _call(server, method, "/ops/healthcheck")[::2] == (405, b"Method Not Allowed")


def test_a_websocket_handshake_is_refused_not_dropped() -> None:
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "websocket.connect"}]

    async def receive() -> MutableMapping[str, Any]:
        return incoming.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    scope = {"type": "websocket", "path": "/ops/healthcheck", "headers": []}
    asyncio.run(_server(None)(scope, receive, send))
    assert [message["type"] for message in sent] == ["websocket.close"]
