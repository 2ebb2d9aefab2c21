"""The workers of one serve report each other's figures through metrics files.

A worker's figures go through its file and come back equal; one scrape renders the answering
worker's live figures beside every other worker's file, with exact values; an unusable file is
skipped (logged once) and never fails the scrape; nothing is written while nothing changed; a
scrape publishes what it reports; the file holds only what ``/metrics`` shows; and a worker
without a runtime directory reports exactly as a lone worker always did.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import mint_api_key
from uid2_operator.web.operator_api.app import OperatorApi
from uid2_operator.web.operator_api.metrics import (
    LATENCY_BUCKETS,
    WORKERS_GAUGE,
    Gauge,
    MetricsCollector,
    RequestMetrics,
    WorkerFigures,
)
from uid2_operator.web.operator_api.metrics_files import (
    FORMAT_VERSION,
    MetricsFiles,
    MetricsPublisher,
    decode,
    encode,
    remove_worker_files,
    worker_file,
)
from uid2_operator.web.operator_api.server import ROUTES, OperatorServer, Worker, _registry

GENERATE = "/v2/token/generate"
MAP = "/v2/identity/map"
KEY_A = "UID2-C-L-1001-abcDEF"
KEY_B = "UID2-C-L-1002-ghiJKL"
GENERATION = "uid2_operator_snapshot_generation"
SERVING = "uid2_operator_serving"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _constant(value: float | None) -> Callable[[], float | None]:
    return lambda: value


def _gauges(values: dict[str, float | None]) -> list[Gauge]:
    return [(name, f"{name} help.", _constant(value)) for name, value in values.items()]


def _counted(*rows: tuple[str, str | None, int, float]) -> RequestMetrics:
    metrics = RequestMetrics(ROUTES)
    for path, key_id, status, seconds in rows:
        metrics.observe(path, key_id, status, seconds)
    return metrics


def _peer(
    runtime_dir: Path,
    worker: str,
    rows: list[tuple[str, str | None, int, float]],
    gauges: dict[str, float | None],
) -> WorkerFigures:
    """Another worker: its figures written to its file the way it would publish them."""
    collector = MetricsCollector(_counted(*rows), _gauges(gauges), worker=worker)
    figures = collector.figures()
    MetricsFiles(runtime_dir, worker).write(figures)
    return figures


def _samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def _total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, got), v in samples.items() if n == name and wanted <= got)


def _workers_of(samples: Samples, name: str) -> set[str]:
    return {dict(labels)["worker"] for (n, labels), _ in samples.items() if n == name}


def _scrape(collector: MetricsCollector) -> Samples:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return _samples(generate_latest(registry).decode())


# ------------------------------------------------------------------------------- round trip


def test_a_workers_figures_come_back_equal_through_its_file(tmp_path: Path) -> None:
    metrics = _counted(
        (GENERATE, KEY_A, 200, 0.0003),
        (GENERATE, KEY_A, 200, 0.2),
        (GENERATE, None, 401, 0.00005),
        ("/wp-admin.php", None, 404, 3.5),
        (MAP, KEY_B, 200, 0.0125),
    )
    gauges = _gauges({GENERATION: 7.0, SERVING: 1.0, "uid2_operator_snapshot_change_seq": None})
    collector = MetricsCollector(metrics, gauges, worker="4242")
    publisher = MetricsPublisher(MetricsFiles(tmp_path, "4242"), collector.figures)
    assert publisher.publish()
    published = collector.figures()
    assert published.gauges == {GENERATION: 7.0, SERVING: 1.0}
    assert worker_file(tmp_path, 4242).is_file()

    (read,) = MetricsFiles(tmp_path, "99").peers()
    assert read == published
    assert read.counts[(GENERATE, KEY_A, 200)] == 2
    assert read.counts[("other", "", 404)] == 1
    assert read.latency[("other", "")][len(LATENCY_BUCKETS)] == 1  # above the last bound
    assert read.latency[(GENERATE, KEY_A)][-1] == pytest.approx(0.2003)
    assert decode(encode(published), "4242") == published


def test_a_worker_does_not_read_its_own_file_as_a_peer(tmp_path: Path) -> None:
    _peer(tmp_path, "4242", [(GENERATE, KEY_A, 200, 0.01)], {})
    assert MetricsFiles(tmp_path, "4242").peers() == []
    assert [f.worker for f in MetricsFiles(tmp_path, "77").peers()] == ["4242"]


# ------------------------------------------------------------------------------- one scrape


def test_one_scrape_reports_every_worker_with_exact_values(tmp_path: Path) -> None:
    _peer(
        tmp_path,
        "200",
        [(GENERATE, KEY_A, 200, 0.0003)] * 3 + [(GENERATE, KEY_A, 400, 0.002)],
        {GENERATION: 5.0, SERVING: 1.0},
    )
    _peer(
        tmp_path,
        "300",
        [(GENERATE, KEY_A, 200, 0.3), (MAP, KEY_B, 200, 0.004)],
        {GENERATION: 4.0, SERVING: 0.0},
    )
    own = _counted((GENERATE, KEY_A, 200, 0.0001), (GENERATE, KEY_A, 200, 0.0001))
    files = MetricsFiles(tmp_path, "100")
    collector = MetricsCollector(
        own, _gauges({GENERATION: 5.0, SERVING: 1.0}), worker="100", peers=files.peers
    )
    samples = _scrape(collector)

    ok = {"endpoint": GENERATE, "key_id": KEY_A, "status": "200"}
    requests = "uid2_operator_requests_total"
    assert _value(samples, requests, **ok, worker="100") == 2
    assert _value(samples, requests, **ok, worker="200") == 3
    assert _value(samples, requests, **ok, worker="300") == 1
    assert _value(samples, requests, **{**ok, "status": "400"}, worker="200") == 1
    assert _value(samples, requests, endpoint=MAP, key_id=KEY_B, status="200", worker="300") == 1
    assert _total(samples, requests, endpoint=GENERATE) == 7
    assert _total(samples, requests) == 8

    duration = "uid2_operator_request_duration_seconds"
    series = {"endpoint": GENERATE, "key_id": KEY_A}
    assert _total(samples, f"{duration}_count", **series) == 7
    assert _total(samples, f"{duration}_bucket", **series, le="+Inf") == 7
    assert _value(samples, f"{duration}_bucket", **series, le="0.0005", worker="200") == 3
    assert _value(samples, f"{duration}_bucket", **series, le="0.0025", worker="200") == 4
    assert _value(samples, f"{duration}_bucket", **series, le="0.25", worker="300") == 0
    assert _value(samples, f"{duration}_sum", **series, worker="300") == pytest.approx(0.3)
    assert _value(samples, f"{duration}_sum", **series, worker="100") == pytest.approx(0.0002)

    assert _value(samples, GENERATION, worker="100") == 5
    assert _value(samples, GENERATION, worker="300") == 4
    assert _value(samples, SERVING, worker="300") == 0
    assert _workers_of(samples, SERVING) == {"100", "200", "300"}
    assert _value(samples, WORKERS_GAUGE, worker="100") == 3
    assert _workers_of(samples, WORKERS_GAUGE) == {"100"}


def test_the_answering_worker_reports_its_own_figures_live(tmp_path: Path) -> None:
    own = RequestMetrics(ROUTES)
    files = MetricsFiles(tmp_path, "100")
    collector = MetricsCollector(own, [], worker="100", peers=files.peers)
    MetricsPublisher(files, collector.figures).publish()  # an older copy in its own file
    own.observe(GENERATE, KEY_A, 200, 0.01)
    samples = _scrape(collector)
    assert _total(samples, "uid2_operator_requests_total", worker="100") == 1


def test_process_figures_are_every_workers_each_under_its_label(tmp_path: Path) -> None:
    _peer(tmp_path, "200", [(GENERATE, KEY_A, 200, 0.01)],
          {"process_cpu_seconds": 4.5, "process_open_fds": 12.0})  # fmt: skip
    registry, publisher = _registry(RequestMetrics(ROUTES), [], tmp_path)
    assert publisher is not None
    text = generate_latest(registry).decode()
    own = str(os.getpid())
    process = {family.name: family for family in text_string_to_metric_families(text)
               if family.name.startswith("process_")}  # fmt: skip
    assert process["process_cpu_seconds"].type == "counter"
    for family in process.values():
        assert all("worker" in sample.labels for sample in family.samples), family
    samples = _samples(text)
    assert _value(samples, "process_cpu_seconds_total", worker="200") == 4.5
    assert _value(samples, "process_open_fds", worker="200") == 12
    assert _workers_of(samples, "process_cpu_seconds_total") == {own, "200"}
    assert _workers_of(samples, "process_resident_memory_bytes") <= {own}
    published = json.loads(worker_file(tmp_path, own).read_bytes())["gauges"]
    assert published["process_cpu_seconds"] == _value(
        samples, "process_cpu_seconds_total", worker=own
    )


def test_latency_buckets_are_the_documented_bounds_and_a_value_on_a_bound_is_in_it() -> None:
    bounds = ["0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025",
              "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "+Inf"]  # fmt: skip
    collector = MetricsCollector(
        _counted((GENERATE, KEY_A, 200, 0.001), (GENERATE, KEY_A, 200, 2.0)), [], worker="100"
    )
    samples = _scrape(collector)
    duration = "uid2_operator_request_duration_seconds_bucket"
    series = {"endpoint": GENERATE, "key_id": KEY_A, "worker": "100"}
    seen = sorted(
        (float(dict(labels)["le"]), dict(labels)["le"], value)
        for (name, labels), value in samples.items()
        if name == duration
    )
    assert [le for _, le, _ in seen] == bounds
    # Prometheus buckets are "less than or equal": 0.001 counts in le="0.001".
    assert _value(samples, duration, **series, le="0.0005") == 0
    assert _value(samples, duration, **series, le="0.001") == 1
    assert _value(samples, duration, **series, le="1.0") == 1
    assert _value(samples, duration, **series, le="2.5") == 2


# ------------------------------------------------------------------------------- unusable files


def _valid(worker: str) -> bytes:
    metrics = _counted((GENERATE, KEY_A, 200, 0.01))
    return encode(MetricsCollector(metrics, [], worker=worker).figures())


def _edited(change: Callable[[dict[str, Any]], None]) -> bytes:
    document = json.loads(_valid("400"))
    change(document)
    return json.dumps(document).encode()


UNUSABLE: dict[str, bytes] = {
    "cut short": _valid("400")[: len(_valid("400")) // 2],
    "empty": b"",
    "not JSON": b"\x80\x81 not json",
    "a list": b"[]",
    "another format version": _edited(lambda d: d.update(format=FORMAT_VERSION + 1)),
    "no format version": _edited(lambda d: d.pop("format")),
    "another worker inside": _edited(lambda d: d.update(worker="401")),
    "other buckets": _edited(lambda d: d.update(buckets=[0.1, 1.0])),
    "an extra field": _edited(lambda d: d.update(pickle="gASV")),
    "a negative count": _edited(lambda d: d["requests"][0].__setitem__(3, -1)),
    "a boolean count": _edited(lambda d: d["requests"][0].__setitem__(3, True)),
    "a text status": _edited(lambda d: d["requests"][0].__setitem__(2, "200")),
    "a numeric endpoint": _edited(lambda d: d["requests"][0].__setitem__(0, 5)),
    "a series twice": _edited(lambda d: d["requests"].append(d["requests"][0])),
    "a latency series twice": _edited(lambda d: d["latency"].append(d["latency"][0])),
    "a short latency series": _edited(lambda d: d["latency"][0][2].pop()),
    "a negative sum": _edited(lambda d: d["latency"][0].__setitem__(3, -0.5)),
    "a text gauge": _edited(lambda d: d["gauges"].update(uid2_operator_serving="1")),
    "NaN": _valid("400").replace(b'"gauges":{}', b'"gauges":{"uid2_operator_serving":NaN}'),
    "a number too large": _valid("400").replace(
        b'"gauges":{}', b'"gauges":{"uid2_operator_serving":1e999}'
    ),
    "nested too deeply": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("content", UNUSABLE.values(), ids=UNUSABLE.keys())
def test_an_unusable_file_is_skipped_and_logged_once(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    _peer(tmp_path, "200", [(GENERATE, KEY_A, 200, 0.01)], {SERVING: 1.0})
    worker_file(tmp_path, 400).write_bytes(content)
    files = MetricsFiles(tmp_path, "100")
    collector = MetricsCollector(RequestMetrics(ROUTES), [], worker="100", peers=files.peers)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            samples = _scrape(collector)
            assert _total(samples, "uid2_operator_requests_total") == 1
            assert _value(samples, WORKERS_GAUGE, worker="100") == 2
    skipped = [r for r in caplog.records if "400.json" in r.getMessage()]
    assert len(skipped) == 1, caplog.text


def test_a_file_gone_between_listing_and_reading_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _peer(tmp_path, "200", [(GENERATE, KEY_A, 200, 0.01)], {})
    worker_file(tmp_path, 400).symlink_to(tmp_path / "nowhere.json")
    files = MetricsFiles(tmp_path, "100")
    with caplog.at_level(logging.INFO):
        assert [f.worker for f in files.peers()] == ["200"]
        assert [f.worker for f in files.peers()] == ["200"]
    assert len([r for r in caplog.records if "400.json" in r.getMessage()]) == 1


def test_a_file_that_becomes_readable_again_is_reported(tmp_path: Path) -> None:
    path = worker_file(tmp_path, 400)
    _peer(tmp_path, "200", [], {})
    path.write_bytes(b"{")
    files = MetricsFiles(tmp_path, "100")
    assert [f.worker for f in files.peers()] == ["200"]
    path.with_name("next").write_bytes(_valid("400"))
    os.replace(path.with_name("next"), path)
    assert [f.worker for f in files.peers()] == ["200", "400"]


def test_other_names_in_the_directory_are_ignored(tmp_path: Path) -> None:
    _peer(tmp_path, "200", [], {})
    directory = worker_file(tmp_path, 200).parent
    (directory / ".300.json.tmp").write_bytes(_valid("300"))
    (directory / "notes.json").write_bytes(b"{}")
    (directory / "0400.json").write_bytes(_valid("400"))
    assert [f.worker for f in MetricsFiles(tmp_path, "100").peers()] == ["200"]


def test_a_scrape_with_an_unusable_file_still_answers_200(tmp_path: Path) -> None:
    server = _server(tmp_path, "100")
    worker_file(tmp_path, 400).parent.mkdir(mode=0o700, exist_ok=True)
    worker_file(tmp_path, 400).write_bytes(b'{"format": 1, "worker": "400", "requests": [[')
    status, body = _get_metrics(server)
    assert status == 200
    assert _value(_samples(body.decode()), WORKERS_GAUGE, worker="100") == 1


def test_no_metrics_directory_means_no_peers(tmp_path: Path) -> None:
    assert MetricsFiles(tmp_path, "100").peers() == []
    assert MetricsFiles(tmp_path / "gone", "100").peers() == []


# ------------------------------------------------------------------------------- publishing


def _identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def test_nothing_is_written_while_nothing_changed(tmp_path: Path) -> None:
    metrics = RequestMetrics(ROUTES)
    generation: list[float | None] = [1.0]
    gauges: list[Gauge] = [(GENERATION, "help", lambda: generation[0])]
    collector = MetricsCollector(metrics, gauges, worker="100")
    publisher = MetricsPublisher(MetricsFiles(tmp_path, "100"), collector.figures)
    path = worker_file(tmp_path, 100)
    assert publisher.publish()
    first = _identity(path)
    for _ in range(3):
        assert not publisher.publish()
        assert _identity(path) == first
    metrics.observe(GENERATE, KEY_A, 200, 0.01)
    assert publisher.publish()
    second = _identity(path)
    assert second != first
    assert not publisher.publish()
    generation[0] = 2.0
    assert publisher.publish()
    assert _identity(path) != second
    (read,) = MetricsFiles(tmp_path, "1").peers()
    assert read.gauges == {GENERATION: 2.0}
    assert read.counts == {(GENERATE, KEY_A, 200): 1}


def test_a_failed_write_is_retried_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime_dir = tmp_path / "runtime"
    metrics = RequestMetrics(ROUTES)
    collector = MetricsCollector(metrics, [], worker="100")
    publisher = MetricsPublisher(MetricsFiles(runtime_dir, "100"), collector.figures)
    with caplog.at_level(logging.WARNING):
        assert not publisher.publish()  # the runtime directory is not there (and not made)
        assert not publisher.publish()
    assert not runtime_dir.exists()
    assert len([r for r in caplog.records if "cannot publish" in r.getMessage()]) == 1
    runtime_dir.mkdir()
    assert publisher.publish()
    assert worker_file(runtime_dir, 100).is_file()


async def _wait_until_async(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


def test_the_publisher_task_publishes_changes_until_stopped(tmp_path: Path) -> None:
    metrics = RequestMetrics(ROUTES)
    collector = MetricsCollector(metrics, [], worker="100")
    publisher = MetricsPublisher(MetricsFiles(tmp_path, "100"), collector.figures, interval_s=0.01)
    reader = MetricsFiles(tmp_path, "1")

    def counted() -> int:
        return sum(c for f in reader.peers() for c in f.counts.values())

    async def scenario() -> None:
        task = asyncio.create_task(publisher.run())
        await _wait_until_async(lambda: worker_file(tmp_path, 100).is_file())
        metrics.observe(GENERATE, KEY_A, 200, 0.01)
        await _wait_until_async(lambda: counted() == 1)
        publisher.stop()
        await asyncio.wait_for(task, timeout=10)

    asyncio.run(scenario())
    metrics.observe(GENERATE, KEY_A, 200, 0.01)
    assert counted() == 1  # stopped: no more writes from the task
    assert publisher.publish()
    assert counted() == 2


# ------------------------------------------------------------------------------- what is written


def test_the_file_holds_only_what_the_metrics_show(tmp_path: Path) -> None:
    minted = mint_api_key(Environment.LOCAL, 1001, bytes(32), os.urandom)
    metrics = RequestMetrics(ROUTES)
    metrics.observe(GENERATE, minted.key_id, 200, 0.01)
    metrics.observe(GENERATE, minted.text, 200, 0.01)  # a full key where an id belongs
    metrics.observe("/v2/token/refresh", None, 400, 0.01)
    collector = MetricsCollector(metrics, _gauges({SERVING: 1.0}), worker="100")
    MetricsPublisher(MetricsFiles(tmp_path, "100"), collector.figures).publish()
    data = worker_file(tmp_path, 100).read_bytes()

    assert minted.key_id.encode() in data
    secret_tail = minted.text.split(".", 1)[1]
    assert secret_tail.encode() not in data
    assert minted.text.encode() not in data
    document = json.loads(data)
    assert set(document) == {"format", "worker", "buckets", "requests", "latency", "gauges"}
    strings = {
        *(row[0] for row in document["requests"]), *(row[1] for row in document["requests"]),
        *(row[0] for row in document["latency"]), *(row[1] for row in document["latency"]),
        *document["gauges"], document["worker"],
    }  # fmt: skip
    assert strings == {GENERATE, "/v2/token/refresh", minted.key_id, "", SERVING, "100"}
    assert all("." not in key_id for key_id in strings - {GENERATE, "/v2/token/refresh"})


def test_a_gauge_that_is_not_finite_is_left_out_of_the_file(tmp_path: Path) -> None:
    gauges = _gauges({GENERATION: float("inf"), SERVING: float("nan"), "g": 2.0})
    collector = MetricsCollector(RequestMetrics(ROUTES), gauges, worker="100")
    assert MetricsPublisher(MetricsFiles(tmp_path, "100"), collector.figures).publish()
    (read,) = MetricsFiles(tmp_path, "1").peers()
    assert read.gauges == {"g": 2.0}


def test_the_files_directory_is_private(tmp_path: Path) -> None:
    MetricsFiles(tmp_path, "100").write(MetricsCollector(RequestMetrics(ROUTES), []).figures())
    assert worker_file(tmp_path, 100).parent.stat().st_mode & 0o777 == 0o700


def test_the_files_are_readable_by_their_owner_alone(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # a permissive umask must not widen them
    try:
        files = MetricsFiles(tmp_path, "100")
        files.write(MetricsCollector(RequestMetrics(ROUTES), []).figures())
        assert worker_file(tmp_path, 100).stat().st_mode & 0o777 == 0o600
        # a temporary left by a killed worker, world-readable, is made private again
        left = worker_file(tmp_path, 100).with_name(".100.json.tmp")
        left.write_bytes(b"")
        left.chmod(0o666)
        files.write(MetricsCollector(RequestMetrics(ROUTES), []).figures())
        assert worker_file(tmp_path, 100).stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old_umask)


def test_a_worker_is_named_by_its_process_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="process id"):
        MetricsFiles(tmp_path, "../100")


# ------------------------------------------------------------------------------- lone worker


def test_without_a_runtime_directory_a_worker_reports_alone(tmp_path: Path) -> None:
    metrics = _counted((GENERATE, KEY_A, 200, 0.01))
    registry, publisher = _registry(metrics, _gauges({SERVING: 1.0}), None)
    assert publisher is None
    samples = _samples(generate_latest(registry).decode())
    assert _workers_of(samples, "uid2_operator_requests_total") == {str(os.getpid())}
    assert not _workers_of(samples, WORKERS_GAUGE)
    plain = CollectorRegistry(auto_describe=False)
    plain.register(MetricsCollector(metrics, _gauges({SERVING: 1.0})))
    assert generate_latest(plain) == generate_latest(_only(registry, "uid2_operator_")), (
        "a lone worker's own series changed"
    )


def _only(registry: CollectorRegistry, prefix: str) -> CollectorRegistry:
    class Filtered:
        def collect(self) -> Any:
            return [m for m in registry.collect() if m.name.startswith(prefix)]

    filtered = CollectorRegistry(auto_describe=False)
    filtered.register(cast(Any, Filtered()))
    return filtered


# ------------------------------------------------------------------------------- the server


class _Source:
    problem: str | None = None

    def __init__(self) -> None:
        self._stop = asyncio.Event()

    def refresh(self) -> None:
        pass

    async def run(self) -> None:
        await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        pass


class _WriteBehind(_Source):
    def flush(self) -> None:
        pass


class _Store:
    def close(self) -> None:
        pass


def _server(runtime_dir: Path, worker: str, gauges: list[Gauge] | None = None) -> OperatorServer:
    metrics = RequestMetrics(ROUTES)
    registry = CollectorRegistry(auto_describe=False)
    files = MetricsFiles(runtime_dir, worker)
    collector = MetricsCollector(metrics, gauges or [], worker=worker, peers=files.peers)
    registry.register(collector)
    publisher = MetricsPublisher(files, collector.figures, interval_s=0.01)
    collector.publish_to(publisher.publish)
    parts = Worker(
        store=cast(Any, _Store()),
        source=cast(Any, _Source()),
        write_behind=cast(Any, _WriteBehind()),
        metrics=metrics,
        registry=registry,
        publisher=publisher,
    )
    return OperatorServer(OperatorApi(), parts)


async def _get(server: OperatorServer, path: str) -> tuple[int, bytes]:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await server({"type": "http", "method": "GET", "path": path, "headers": []}, receive, send)
    return sent[0]["status"], sent[1]["body"]


def _get_metrics(server: OperatorServer) -> tuple[int, bytes]:
    return asyncio.run(_get(server, "/metrics"))


def test_a_scrape_publishes_what_it_reports_before_answering(tmp_path: Path) -> None:
    server = _server(tmp_path, "100")
    server.worker.metrics.observe(GENERATE, KEY_A, 200, 0.01)
    assert not worker_file(tmp_path, 100).exists()
    status, body = _get_metrics(server)
    assert status == 200
    reported = _total(_samples(body.decode()), "uid2_operator_requests_total", worker="100")
    (published,) = MetricsFiles(tmp_path, "1").peers()
    assert reported == sum(published.counts.values()) == 1


def test_a_scrape_reports_the_very_figures_it_published(tmp_path: Path) -> None:
    """A figure that moves between two reads (CPU seconds do) is read once per answer: the
    answer and the file agree, so another worker's next answer cannot show less."""
    reads = iter(range(1, 1000))
    server = _server(tmp_path, "100", [("ticks", "ticks help.", lambda: float(next(reads)))])
    for _ in range(3):
        status, body = _get_metrics(server)
        assert status == 200
        reported = _value(_samples(body.decode()), "ticks", worker="100")
        (published,) = MetricsFiles(tmp_path, "1").peers()
        assert published.gauges["ticks"] == reported


def test_a_worker_publishes_while_it_runs_and_removes_its_file_when_it_stops(
    tmp_path: Path,
) -> None:
    server = _server(tmp_path, "100")
    path = worker_file(tmp_path, 100)

    async def scenario() -> None:
        await server.start()
        await _wait_until_async(path.is_file)
        server.worker.metrics.observe(GENERATE, KEY_A, 200, 0.01)
        reader = MetricsFiles(tmp_path, "1")
        await _wait_until_async(lambda: bool(reader.peers() and reader.peers()[0].counts))
        await server.stop()

    asyncio.run(scenario())
    assert not path.exists()
    assert list(path.parent.iterdir()) == []


def test_removing_a_workers_files_takes_the_temporary_too(tmp_path: Path) -> None:
    MetricsFiles(tmp_path, "100").write(MetricsCollector(RequestMetrics(ROUTES), []).figures())
    path = worker_file(tmp_path, 100)
    leftover = path.with_name(f".{path.name}.tmp")
    leftover.write_bytes(b"{")
    remove_worker_files(tmp_path, 100)
    remove_worker_files(tmp_path, 100)  # twice: nothing left is not an error
    assert not path.exists()
    assert not leftover.exists()
