"""Counters never go back across the scrapes of a real ``serve --workers 2``.

Scrapes go out on fresh connections, so the kernel spreads them over the two workers'
``SO_REUSEPORT`` sockets, with token requests in between so that counts and CPU seconds move.
Prometheus reads any decrease of a series (same name, same labels) of a counter as a reset, so
across every answer, whichever worker gave it, no counter or histogram sample may decrease; and
every answer carries both workers' process figures, each under its ``worker`` label, with a
start time that stays put.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cli_harness import database_for
from prometheus_client.parser import text_string_to_metric_families
from serve_harness import Prepared, Served, prepare, served

pytestmark = pytest.mark.functional

WORKERS = 2
SCRAPES = 20
GENERATE = "/v2/token/generate"
METRICS_WORKERS = "uid2_operator_metrics_workers"
PROCESS = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_open_fds",
)

Series = tuple[str, frozenset[tuple[str, str]]]


@dataclass(frozen=True)
class Scrape:
    answered_by: str
    monotonic: dict[Series, float]  # every sample of a counter or histogram family
    process: dict[str, dict[str, float]]  # per process series name: its value by worker
    unlabelled_process: list[str]


def _scrape(server: Served) -> Scrape:
    answered_by = ""
    monotonic: dict[Series, float] = {}
    process: dict[str, dict[str, float]] = {}
    unlabelled: list[str] = []
    for family in text_string_to_metric_families(server.metrics()):
        for sample in family.samples:
            if sample.name == METRICS_WORKERS:
                answered_by = sample.labels["worker"]
            if family.type in ("counter", "histogram"):
                monotonic[(sample.name, frozenset(sample.labels.items()))] = sample.value
            if sample.name.startswith("process_"):
                worker = sample.labels.get("worker")
                if worker is None:
                    unlabelled.append(sample.name)
                else:
                    process.setdefault(sample.name, {})[worker] = sample.value
    return Scrape(answered_by, monotonic, process, unlabelled)


@dataclass(frozen=True)
class Running:
    prepared: Prepared
    server: Served


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with database_for("sqlite", tmp_path_factory.mktemp("monotonic")) as database:
        prepared = prepare(database)
        with served(database, workers=WORKERS) as server:
            yield Running(prepared, server)


def test_no_counter_goes_back_and_every_worker_reports_its_process(running: Running) -> None:
    server = running.server
    seen: dict[Series, float] = {}
    started: dict[str, float] = {}
    answered_by: set[str] = set()
    for round_ in range(SCRAPES):
        response, _opened = server.call(
            GENERATE, {"email": f"monotonic-{round_}@example.com"}, running.prepared.key
        )
        assert response.status_code == 200, response.text
        scrape = _scrape(server)
        answered_by.add(scrape.answered_by)
        assert not scrape.unlabelled_process, scrape.unlabelled_process
        for name in PROCESS:
            assert len(scrape.process.get(name, {})) == WORKERS, (name, scrape.process)
        assert answered_by <= set(scrape.process["process_cpu_seconds_total"])
        for series, value in scrape.monotonic.items():
            before = seen.get(series)
            assert before is None or value >= before, (series, before, value, round_)
            seen[series] = value
        for worker, value in scrape.process["process_start_time_seconds"].items():
            assert started.setdefault(worker, value) == value, (worker, started, value)
    assert len(answered_by) == WORKERS, "every scrape reached the same worker"
    assert len(started) == WORKERS
