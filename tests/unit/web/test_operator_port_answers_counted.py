"""Every answer on the operator port is counted in the request metrics under its route: the
worker's own answers (the degraded health check's 503, ``/metrics``' 200 and 405) and the API's
CORS pre-flights (204) as well as the API's other answers, timed the same way (the time taken
includes sending the answer), while unknown paths stay ``other``.

The worker is the one ``build_worker`` wires (over a store and a keyring that are never reached:
no snapshot is loaded, so its health check answers 503), called through its ASGI interface."""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, cast

import pytest
from operator_harness import worker_without_snapshot
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from uid2_operator.web.operator_api.app import OperatorApi
from uid2_operator.web.operator_api.metrics import MetricsCollector, RequestMetrics
from uid2_operator.web.operator_api.server import ROUTES, OperatorServer, Worker

HEALTH = "/ops/healthcheck"
METRICS = "/metrics"
GENERATE = "/v2/token/generate"
OPERATOR_PORT = 8080
METRICS_PORT = 9100
SLOW_SEND_S = 0.02


def _call(
    server: OperatorServer,
    method: str,
    path: str,
    *,
    port: int = OPERATOR_PORT,
    headers: list[tuple[bytes, bytes]] | None = None,
    send_delay_s: float = 0.0,
) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> MutableMapping[str, Any]:
        return incoming.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        time.sleep(send_delay_s)  # a slow client: the time taken must include sending
        sent.append(dict(message))

    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": headers or [],
        "server": ("127.0.0.1", port),
    }
    asyncio.run(server(scope, receive, send))
    start, *body = sent
    return start["status"], b"".join(m.get("body", b"") for m in body)


def _counts(server: OperatorServer) -> dict[tuple[str, str, int], int]:
    return server.worker.metrics.counts()


def _observations(server: OperatorServer, endpoint: str) -> tuple[float, float]:
    """How many requests the latency histogram holds for ``endpoint`` (no key id), and the
    sum of their seconds."""
    series = server.worker.metrics.latency()[(endpoint, "")]
    return sum(series[:-1]), series[-1]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_degraded_health_check_is_counted_under_its_route(tmp_path: Path, method: str) -> None:
    server = worker_without_snapshot(tmp_path)
    assert _call(server, method, HEALTH)[0] == 503
    assert _counts(server) == {(HEALTH, "", 503): 1}
    assert _observations(server, HEALTH)[0] == 1


def test_a_degraded_health_check_is_visible_to_an_alert_on_non_200_answers(
    tmp_path: Path,
) -> None:
    server = worker_without_snapshot(tmp_path)
    for _ in range(3):
        assert _call(server, "GET", HEALTH)[0] == 503
    status, body = _call(server, "GET", METRICS)
    assert status == 200
    health = {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "uid2_operator_requests_total" and sample.labels["endpoint"] == HEALTH
    }
    assert health == {"503": 3.0}


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_metrics_on_the_operator_port_are_counted_under_their_route(
    tmp_path: Path, method: str
) -> None:
    server = worker_without_snapshot(tmp_path)
    assert _call(server, method, METRICS)[0] == 200
    assert _counts(server) == {(METRICS, "", 200): 1}
    # counted once answered: the next scrape (rendered after it came in) reports the previous one
    status, body = _call(server, "GET", METRICS)
    assert status == 200
    assert b'uid2_operator_requests_total{endpoint="/metrics",key_id="",status="200"' in body
    assert _counts(server) == {(METRICS, "", 200): 2}


def test_metrics_asked_again_at_once_waits_for_a_rendering_of_its_own(tmp_path: Path) -> None:
    # Anyone who can reach the port may ask: rendering is bounded to a share of the worker, by
    # waiting, never by answering an earlier rendering (another worker may have answered with
    # newer figures meanwhile: counters would seem to go back).
    server = worker_without_snapshot(tmp_path)
    ticks = iter(range(1000))
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    server._metrics_page._clock = lambda: float(next(ticks))  # each rendering takes 1 s
    server._metrics_page._sleep = sleep
    first = _call(server, "GET", METRICS)[1]
    assert b'uid2_operator_requests_total{endpoint="/metrics"' not in first
    second = _call(server, "GET", METRICS)[1]
    assert b'uid2_operator_requests_total{endpoint="/metrics",key_id="",status="200"' in second
    assert slept == [8.0]  # rendered from 0 to 1: the next not before 10, asked at 2
    assert _counts(server) == {(METRICS, "", 200): 2}


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_metrics_with_another_method_are_counted_as_405(tmp_path: Path, method: str) -> None:
    server = worker_without_snapshot(tmp_path)
    assert _call(server, method, METRICS)[0] == 405
    assert _counts(server) == {(METRICS, "", 405): 1}


PREFLIGHT = [(b"origin", b"https://publisher.example"), (b"access-control-request-method", b"POST")]
"""What makes an OPTIONS a CORS pre-flight: an Origin and the method it asks for."""


@pytest.mark.parametrize(
    ("path", "endpoint"),
    [(GENERATE, GENERATE), (HEALTH, HEALTH), (METRICS + "/", "other"), ("/wp-login.php", "other")],
)
def test_a_cors_preflight_is_counted_under_the_route_preflighted(
    tmp_path: Path, path: str, endpoint: str
) -> None:
    server = worker_without_snapshot(tmp_path)
    assert _call(server, "OPTIONS", path, headers=PREFLIGHT)[0] == 204
    assert _counts(server) == {(endpoint, "", 204): 1}
    assert _observations(server, endpoint)[0] == 1


@pytest.mark.parametrize(
    ("path", "status", "endpoint"),
    [(GENERATE, 405, GENERATE), (HEALTH, 405, HEALTH), ("/wp-login.php", 404, "other")],
)
@pytest.mark.parametrize(
    "headers", [[], [(b"origin", b"https://publisher.example")], PREFLIGHT[1:]]
)
def test_an_options_that_is_no_preflight_is_routed_as_any_request(
    tmp_path: Path, path: str, status: int, endpoint: str, headers: list[tuple[bytes, bytes]]
) -> None:
    server = worker_without_snapshot(tmp_path)
    assert _call(server, "OPTIONS", path, headers=headers)[0] == status
    assert _counts(server) == {(endpoint, "", status): 1}


def test_unknown_paths_stay_other(tmp_path: Path) -> None:
    server = worker_without_snapshot(tmp_path)
    for index in range(5):
        _call(server, "OPTIONS", f"/probe-{index}", headers=PREFLIGHT)
        _call(server, "GET", f"/probe-{index}")
    assert _counts(server) == {("other", "", 204): 5, ("other", "", 404): 5}


def test_with_a_metrics_listener_only_the_operator_port_is_counted(tmp_path: Path) -> None:
    server = worker_without_snapshot(tmp_path, METRICS_PORT)
    assert _call(server, "GET", HEALTH)[0] == 503
    assert _call(server, "OPTIONS", GENERATE, headers=PREFLIGHT)[0] == 204
    assert _call(server, "GET", METRICS)[0] == 404  # an unknown path on the operator port
    assert _call(server, "GET", METRICS, port=METRICS_PORT)[0] == 200
    assert _call(server, "OPTIONS", GENERATE, port=METRICS_PORT)[0] == 404
    assert _counts(server) == {
        (HEALTH, "", 503): 1,
        (GENERATE, "", 204): 1,
        ("other", "", 404): 1,
    }


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", HEALTH, 503),
        ("GET", METRICS, 200),
        ("POST", METRICS, 405),
        ("OPTIONS", GENERATE, 204),
    ],
)
def test_the_time_taken_includes_sending_the_answer(
    tmp_path: Path, method: str, path: str, status: int
) -> None:
    server = worker_without_snapshot(tmp_path)
    headers = PREFLIGHT if method == "OPTIONS" else []
    assert _call(server, method, path, headers=headers, send_delay_s=SLOW_SEND_S)[0] == status
    count, seconds = _observations(server, path)
    assert count == 1
    assert seconds >= 2 * SLOW_SEND_S  # the start of the answer and its body


class _Source:
    def __init__(self, problem: str | None) -> None:
        self.problem = problem


def test_an_answer_the_api_gives_is_counted_once() -> None:
    """The worker's observer is the API's too: a request the worker hands on to the API (a
    healthy health check, an API call) is counted by the API alone."""
    metrics = RequestMetrics(ROUTES)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(metrics, []))
    worker = Worker(
        store=cast(Any, None),
        source=cast(Any, _Source(None)),
        write_behind=cast(Any, None),
        metrics=metrics,
        registry=registry,
    )
    server = OperatorServer(
        OperatorApi(observer=metrics.observe),
        worker,
        observer=metrics.observe,
    )
    assert _call(server, "GET", HEALTH)[0] == 200
    assert _call(server, "POST", GENERATE)[0] == 503  # no snapshot
    assert _call(server, "POST", HEALTH)[0] == 405
    assert metrics.counts() == {(HEALTH, "", 200): 1, (GENERATE, "", 503): 1, (HEALTH, "", 405): 1}
