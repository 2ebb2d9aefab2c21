"""``serve --metrics-port``: a real ``serve --workers 2`` answers ``/metrics`` on a port of its
own, for every worker, and that port answers nothing else; the operator port answers ``/metrics``
as an unknown path. ``--json`` says where ``/metrics`` is in both modes, and a metrics port that
another listener has is refused before serve starts.

API requests go out on fresh connections, so the kernel spreads them over both workers'
``SO_REUSEPORT`` sockets (with 40 requests, the chance that a worker gets none is about 1e-12);
each scrape lands on one worker, which reports the others from their metrics files."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from cli_harness import database_for
from prometheus_client.parser import text_string_to_metric_families
from serve_harness import (
    UID2_OPERATOR,
    Prepared,
    SealedRequest,
    Served,
    clean_env,
    listening_addresses,
    prepare,
    served,
    serving_json,
)

pytestmark = pytest.mark.functional

WORKERS = 2
REQUESTS = 40
ASKED = 4
"""``GET /metrics`` on the operator port, before any other unknown path is asked there."""
GENERATE = "/v2/token/generate"
"""Sent ``REQUESTS`` times by the fixture, and by no test: each test counts exactly those."""
MAP = "/v2/identity/map"
EMAIL = "metrics-port@example.com"
REQUESTS_TOTAL = "uid2_operator_requests_total"
NOT_FOUND = (404, b"Not Found")
ANY_V4 = "0.0.0.0"  # noqa: S104 (the point of the test: every interface)
EXISTING_FIELDS = {"operator_url", "admin_url", "workers", "pid", "data_dir", "environment", "init"}


def _requests(server: Served) -> dict[tuple[str, str], dict[str, float]]:
    """One scrape: the requests by endpoint and status, per worker."""
    counts: dict[tuple[str, str], dict[str, float]] = {}
    for family in text_string_to_metric_families(server.metrics()):
        for sample in family.samples:
            if sample.name == REQUESTS_TOTAL:
                labels = sample.labels
                per_worker = counts.setdefault((labels["endpoint"], labels["status"]), {})
                worker = labels["worker"]
                per_worker[worker] = per_worker.get(worker, 0.0) + sample.value
    return counts


@dataclass(frozen=True)
class Traffic:
    prepared: Prepared
    server: Served
    settled: dict[tuple[str, str], dict[str, float]]
    """The first scrape that showed every request below."""


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    """A ``serve --workers 2 --metrics-port 0`` after ``REQUESTS`` token requests and ``ASKED``
    ``GET /metrics`` on the operator port, once a scrape of the metrics port shows them all."""
    with database_for("sqlite", tmp_path_factory.mktemp("metrics-port")) as database:
        prepared = prepare(database)
        with served(database, workers=WORKERS, extra_args=("--metrics-port", "0")) as server:
            for _ in range(REQUESTS):
                response, opened = server.call(GENERATE, {"email": EMAIL}, prepared.key)
                assert response.status_code == 200, response.text
                assert opened is not None
            for _ in range(ASKED):
                assert server.request("GET", "/metrics").status_code == 404
            deadline = time.monotonic() + 30
            while True:
                requests = _requests(server)
                per_worker = requests.get((GENERATE, "200"), {})
                asked = requests.get(("other", "404"), {})
                if (
                    len(per_worker) == WORKERS
                    and sum(per_worker.values()) == REQUESTS
                    and sum(asked.values()) == ASKED
                ):
                    break
                assert time.monotonic() < deadline, requests
                time.sleep(0.1)
            yield Traffic(prepared, server, requests)


def test_serve_names_a_metrics_port_of_its_own_on_loopback(traffic: Traffic) -> None:
    metrics = urlsplit(traffic.server.metrics_url)
    operator = urlsplit(traffic.server.base_url)
    admin = urlsplit(traffic.server.admin_url)
    assert (metrics.scheme, metrics.hostname, metrics.path) == ("http", "127.0.0.1", "/metrics")
    assert metrics.port not in (None, operator.port, admin.port)


def test_the_metrics_port_reports_every_workers_requests(traffic: Traffic) -> None:
    for _ in range(10):
        per_worker = _requests(traffic.server)[GENERATE, "200"]
        assert len(per_worker) == WORKERS, per_worker
        assert all(count > 0 for count in per_worker.values()), per_worker
        assert sum(per_worker.values()) == REQUESTS, per_worker


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_the_operator_port_answers_metrics_as_an_unknown_path(
    traffic: Traffic, method: str
) -> None:
    server = traffic.server
    metrics = server.request(method, "/metrics")
    unknown = server.request(method, "/no-such-path")
    assert (metrics.status_code, metrics.content) == (unknown.status_code, unknown.content)
    assert metrics.status_code == 404


def test_metrics_asked_on_the_operator_port_count_as_an_unknown_path(traffic: Traffic) -> None:
    requests = traffic.settled
    assert sum(requests["other", "404"].values()) == ASKED
    assert not [key for key in requests if key[0] == "/metrics"], requests


def test_the_metrics_port_answers_nothing_but_metrics(traffic: Traffic) -> None:
    server = traffic.server
    key = traffic.prepared.key
    assert server.metrics_port_request("GET", "/metrics").status_code == 200
    assert server.metrics_port_request("HEAD", "/metrics").status_code == 200
    health = server.metrics_port_request("GET", "/ops/healthcheck")
    assert (health.status_code, health.content) == NOT_FOUND
    sealed = SealedRequest.of({"email": EMAIL}, key)
    headers = {"authorization": f"Bearer {key.key}", "content-type": "text/plain"}
    generate = server.metrics_port_request("POST", GENERATE, sealed.body, headers)
    assert (generate.status_code, generate.content) == NOT_FOUND
    for method, path in [("POST", "/metrics"), ("OPTIONS", GENERATE), ("GET", "/no-such-path")]:
        reply = server.metrics_port_request(method, path)
        assert (reply.status_code, reply.content) == NOT_FOUND, (method, path)
    # The same 404 the operator port gives an unknown path.
    unknown = server.request("GET", "/no-such-path")
    assert (unknown.status_code, unknown.content) == NOT_FOUND
    # The operator port still serves the API (a map: the generates counted above stay
    # ``REQUESTS``, whatever order this module's tests run in on a worker).
    assert server.request("GET", "/ops/healthcheck").status_code == 200
    assert server.answered(MAP, SealedRequest.of({"email": [EMAIL]}, key), key)


# ------------------------------------------------------------------------------- --json, usage


def test_serve_json_names_metrics_on_the_operator_port_by_default(tmp_path: Path) -> None:
    with serving_json(tmp_path / "data") as run:
        document = run.document
        assert set(document) == {*EXISTING_FIELDS, "metrics_url"}
        assert document["metrics_url"] == document["operator_url"] + "/metrics"
        scrape = httpx.get(document["metrics_url"], timeout=30)
        assert scrape.status_code == 200
        assert REQUESTS_TOTAL in scrape.text


def test_serve_json_names_the_metrics_port(tmp_path: Path) -> None:
    with serving_json(tmp_path / "data", "--metrics-port", "0") as run:
        document = run.document
        assert set(document) == {*EXISTING_FIELDS, "metrics_url"}
        metrics = urlsplit(document["metrics_url"])
        operator = urlsplit(document["operator_url"])
        assert (metrics.hostname, metrics.path) == ("127.0.0.1", "/metrics")
        assert metrics.port not in (None, operator.port)
        scrape = httpx.get(document["metrics_url"], timeout=30)
        assert scrape.status_code == 200
        assert REQUESTS_TOTAL in scrape.text
        elsewhere = httpx.get(document["operator_url"] + "/metrics", timeout=30)
        assert (elsewhere.status_code, elsewhere.content) == NOT_FOUND


@pytest.mark.skipif(sys.platform != "linux", reason="reads the kernel's socket table")
def test_the_metrics_port_stays_on_loopback_when_the_operator_api_listens_everywhere(
    tmp_path: Path,
) -> None:
    with serving_json(tmp_path / "data", "--host", ANY_V4, "--metrics-port", "0") as run:
        metrics_port = urlsplit(run.document["metrics_url"]).port
        operator_port = urlsplit(run.document["operator_url"]).port
        assert metrics_port is not None
        assert operator_port is not None
        assert listening_addresses(operator_port) == {ANY_V4}
        assert listening_addresses(metrics_port) == {"127.0.0.1"}


def _serve_once(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (our own command)
        [UID2_OPERATOR, "--data-dir", str(tmp_path / "data"), "serve", "--init-if-new", *args],
        capture_output=True,
        text=True,
        env=clean_env({"UID2_SALT_BUCKETS": "1024"}),
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("other", ["--port", "--admin-port"])
def test_a_metrics_port_equal_to_another_listeners_is_a_usage_error(
    tmp_path: Path, other: str
) -> None:
    done = _serve_once(tmp_path, other, "9137", "--metrics-port", "9137")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(
        f"Error: Invalid value for '--metrics-port': 9137 is also {other}"
    ), done.stderr
    assert not (tmp_path / "data").exists()


def test_a_busy_metrics_port_stops_serve_as_a_busy_operator_port_does(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = str(busy.getsockname()[1])
        metrics = _serve_once(tmp_path, "--port", "0", "--admin-port", "0", "--metrics-port", port)
        operator = _serve_once(tmp_path, "--port", port, "--admin-port", "0")
    finally:
        busy.close()
    assert metrics.returncode == operator.returncode == 1, (metrics.stderr, operator.stderr)
    refused = f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert refused in metrics.stderr
    assert refused in operator.stderr
