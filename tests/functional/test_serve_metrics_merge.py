"""One scrape of a real ``serve --workers 3`` reports the requests of every worker, exactly.

Requests go out on fresh connections, so the kernel spreads them over the three workers'
``SO_REUSEPORT`` sockets (with 90 requests, the chance that a worker gets none is about 1e-15).
Each scrape lands on one worker, which reports its own counts and reads the others' from their
metrics files: summed over the ``worker`` label, every answer must carry exactly the number of
requests sent, in the request counter and in the latency histogram alike. Answers are told apart
by ``uid2_operator_metrics_workers``, which carries the answering worker's label.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cli_harness import database_for
from prometheus_client.parser import text_string_to_metric_families
from serve_harness import Prepared, Served, prepare, runtime_dir_of, served

pytestmark = pytest.mark.functional

WORKERS = 3
REQUESTS = 90
SCRAPES = 30
GENERATE = "/v2/token/generate"
EMAIL = "metrics-merge@example.com"
REQUESTS_TOTAL = "uid2_operator_requests_total"
DURATION = "uid2_operator_request_duration_seconds"
METRICS_WORKERS = "uid2_operator_metrics_workers"


@dataclass(frozen=True)
class Scrape:
    """The figures of one ``/metrics`` answer that this test looks at."""

    answered_by: str
    covered: float
    requests: dict[str, float]  # per worker: requests to GENERATE
    durations: dict[str, float]  # per worker: the histogram's count for GENERATE
    overflow: dict[str, float]  # per worker: the histogram's +Inf bucket for GENERATE
    key_ids: set[str]

    @property
    def workers(self) -> set[str]:
        return set(self.requests)


def _scrape(server: Served) -> Scrape:
    answered_by, covered = "", 0.0
    requests: dict[str, float] = {}
    durations: dict[str, float] = {}
    overflow: dict[str, float] = {}
    key_ids: set[str] = set()
    for family in text_string_to_metric_families(server.metrics()):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == METRICS_WORKERS:
                answered_by, covered = labels["worker"], sample.value
            if labels.get("endpoint") != GENERATE:
                continue
            worker = labels["worker"]
            if sample.name == REQUESTS_TOTAL:
                requests[worker] = requests.get(worker, 0.0) + sample.value
                key_ids.add(labels["key_id"])
            elif sample.name == f"{DURATION}_count":
                durations[worker] = durations.get(worker, 0.0) + sample.value
            elif sample.name == f"{DURATION}_bucket" and labels["le"] == "+Inf":
                overflow[worker] = overflow.get(worker, 0.0) + sample.value
    return Scrape(answered_by, covered, requests, durations, overflow, key_ids)


def _complete(scrape: Scrape) -> bool:
    return (
        len(scrape.workers) == WORKERS
        and sum(scrape.requests.values()) == REQUESTS
        and sum(scrape.durations.values()) == REQUESTS
    )


@dataclass(frozen=True)
class Traffic:
    prepared: Prepared
    server: Served
    tokens: list[str]
    settled: list[Scrape]


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    """A serve with three workers after ``REQUESTS`` token requests, once every worker has
    answered a scrape that shows them all (so every worker's file holds its final counts)."""
    with database_for("sqlite", tmp_path_factory.mktemp("merge")) as database:
        prepared = prepare(database)
        with served(database, workers=WORKERS) as server:
            tokens: list[str] = []
            for _ in range(REQUESTS):
                response, opened = server.call(GENERATE, {"email": EMAIL}, prepared.key)
                assert response.status_code == 200, response.text
                assert opened is not None
                tokens += [opened["body"]["advertising_token"], opened["body"]["refresh_token"]]
            settled: dict[str, Scrape] = {}
            deadline = time.monotonic() + 30
            while len(settled) < WORKERS:
                scrape = _scrape(server)
                assert time.monotonic() < deadline, (settled.keys(), scrape)
                if _complete(scrape):
                    settled[scrape.answered_by] = scrape
            yield Traffic(prepared, server, tokens, list(settled.values()))


def test_every_scrape_reports_every_workers_requests_exactly(traffic: Traffic) -> None:
    answered_by: set[str] = set()
    for _ in range(SCRAPES):
        scrape = _scrape(traffic.server)
        answered_by.add(scrape.answered_by)
        assert len(scrape.workers) == WORKERS, scrape
        assert scrape.covered == WORKERS, scrape
        assert all(count > 0 for count in scrape.requests.values()), scrape
        assert sum(scrape.requests.values()) == REQUESTS, scrape
        assert sum(scrape.durations.values()) == REQUESTS, scrape
        assert sum(scrape.overflow.values()) == REQUESTS, scrape
        assert scrape.requests == scrape.durations, scrape
        assert scrape.key_ids == {traffic.prepared.key.key_id}
    assert answered_by <= {s.answered_by for s in traffic.settled}
    assert len(answered_by) >= 2, "every scrape reached the same worker"
    first = traffic.settled[0]
    assert all(s.requests == first.requests for s in traffic.settled)


@pytest.mark.skipif(sys.platform != "linux", reason="finds the runtime directory through /proc")
def test_the_metrics_files_hold_no_credential_token_or_identity(traffic: Traffic) -> None:
    runtime_dir = runtime_dir_of(traffic.settled[0].answered_by)
    files = sorted((runtime_dir / "metrics").glob("*.json"))
    assert {f.stem for f in files} == traffic.settled[0].workers
    key = traffic.prepared.key
    forbidden = [key.key, key.key.split(".", 1)[1], key.secret, EMAIL, *traffic.tokens]
    for path in files:
        text = path.read_text()
        assert key.key_id in text
        leaked = [value for value in forbidden if value in text]
        assert not leaked, (path.name, leaked)
