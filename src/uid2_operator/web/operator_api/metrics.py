"""Request metrics for Prometheus, counted in plain dicts and exported at scrape time.

A ``prometheus_client`` ``Counter.labels(...).inc()`` per request takes a lock and walks a label
cache: more than the cryptography of some endpoints. Here a request costs two dict updates and a
``bisect`` (``RequestMetrics.observe``), all on the event loop thread, and ``MetricsCollector``
turns the dicts into metric families only when ``/metrics`` is scraped (also on the loop thread,
so nothing is shared across threads and no lock is needed).

Series: ``uid2_operator_requests_total{endpoint, key_id, status, worker}`` and the histogram
``uid2_operator_request_duration_seconds{endpoint, key_id, worker}``. ``endpoint`` is the route,
or ``other`` for a path the operator does not serve (a scanner cannot create series); ``key_id``
is the public id of the API key that authenticated the request, or of the snapshot's key a
refused request presented (a disabled key, say), or empty (an unknown presented id never becomes
a label, so made-up ids cannot create series); ``worker`` is the
process id of the worker that counted it. Each worker keeps its own counters, and its gauges
(snapshot generation, store reachable, ...) describe that worker alone.

A scrape lands on one worker of a serve. So that it still reports the whole serve, every worker
publishes its figures (``WorkerFigures``) to a file that the others read when they are scraped
(``metrics_files``): the collector is then given a ``peers`` source, and renders the answering
worker's own figures, live, beside every other worker's last published ones, each under its own
``worker`` label. It also reports ``uid2_operator_metrics_workers``: how many workers the answer
covers, labelled with the worker that gave it. Without a ``peers`` source (a lone worker) the
output is the answering worker's alone, as it always was.

The process figures (``process_gauges``: CPU seconds, resident memory, start time, open file
descriptors) are worker figures like the others, under the ``worker`` label and in the metrics
files: an unlabelled ``process_cpu_seconds_total`` would be whichever worker answered, and would
seem to go back whenever consecutive scrapes reached different workers. So that a worker's file
never holds less than an answer already showed, the figures an answer renders as the worker's
own are the very ones it publishes (``MetricsCollector.publish_to``), read once per answer.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

LATENCY_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
OTHER: Final = "other"
WORKERS_GAUGE: Final = "uid2_operator_metrics_workers"


class RequestMetrics:
    """Counts per (endpoint, key id, status) and latency buckets per (endpoint, key id)."""

    __slots__ = ("_counts", "_latency", "_routes")

    def __init__(self, routes: Iterable[str]) -> None:
        self._routes = frozenset(routes)
        self._counts: dict[tuple[str, str, int], int] = {}
        # per (endpoint, key id): one count per bucket plus +Inf, then the sum at the end
        self._latency: dict[tuple[str, str], list[float]] = {}

    def endpoint(self, path: str) -> str:
        return path if path in self._routes else OTHER

    def observe(self, path: str, key_id: str | None, status: int, seconds: float) -> None:
        endpoint = path if path in self._routes else OTHER
        key = key_id or ""
        counts = self._counts
        label = (endpoint, key, status)
        counts[label] = counts.get(label, 0) + 1
        series = self._latency.get((endpoint, key))
        if series is None:
            series = self._latency[(endpoint, key)] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        series[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        series[-1] += seconds

    def counts(self) -> dict[tuple[str, str, int], int]:
        return dict(self._counts)

    def latency(self) -> dict[tuple[str, str], list[float]]:
        return {k: list(v) for k, v in self._latency.items()}


Gauge = tuple[str, str, Callable[[], float | None]]
"""``(name, help, read)``: a gauge of the worker, omitted while ``read`` returns None."""

PROCESS_CPU: Final = "process_cpu_seconds"
"""The process figure that is a counter (exported as ``process_cpu_seconds_total``)."""
_PROC_SELF: Final = Path("/proc/self")


def process_gauges(proc: Path = _PROC_SELF) -> list[Gauge]:
    """The figures of this process, read when asked: CPU seconds (``os.times``), resident memory
    and open file descriptors (``/proc/self``), and the start time (read once, here). Where there
    is no ``/proc`` only the CPU seconds are reported."""
    page_size = os.sysconf("SC_PAGE_SIZE")
    start = _start_time(proc)

    def cpu() -> float:
        times = os.times()
        return times.user + times.system

    def resident() -> float | None:
        try:
            with (proc / "statm").open("rb") as statm:
                return float(int(statm.read().split()[1]) * page_size)
        except (OSError, ValueError, IndexError):
            return None

    def open_fds() -> float | None:
        try:
            return float(len(os.listdir(proc / "fd")))
        except OSError:
            return None

    return [
        (PROCESS_CPU, "CPU seconds the worker has used (user and system).", cpu),
        ("process_resident_memory_bytes", "Bytes of the worker's memory held in RAM.", resident),
        (
            "process_start_time_seconds",
            "When the worker started, in seconds since the epoch.",
            lambda: start,
        ),
        ("process_open_fds", "File descriptors the worker holds open.", open_fds),
    ]


def _start_time(proc: Path) -> float | None:
    """When this process started, in seconds since the epoch: its start in clock ticks after
    boot (``/proc/self/stat``, field 22) plus the boot time (``/proc/stat``, ``btime``)."""
    try:
        stat = (proc / "stat").read_bytes()
        # the command name (field 2) is in parentheses and may hold spaces or parentheses
        after_name = stat[stat.rindex(b")") + 2 :].split()
        ticks = int(after_name[19])  # field 22; after_name[0] is field 3
        boot = next(
            int(line.split()[1])
            for line in (proc.parent / "stat").read_bytes().splitlines()
            if line.startswith(b"btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


@dataclass(frozen=True, slots=True)
class WorkerFigures:
    """What one worker reports, copied at one instant: the unit a worker publishes and a scrape
    renders.

    ``latency`` holds, per (endpoint, key id), the count of each of ``LATENCY_BUCKETS``, the
    count above the last bound, then the sum of the observed seconds (``RequestMetrics``'s own
    layout, not cumulative). ``gauges`` holds the gauges that had a value, by name.
    """

    worker: str
    counts: Mapping[tuple[str, str, int], int]
    latency: Mapping[tuple[str, str], Sequence[float]]
    gauges: Mapping[str, float]


class MetricsCollector(Collector):
    """Exports a ``RequestMetrics`` and a few worker gauges at scrape time, beside the figures
    ``peers`` returns for the other workers of the same serve (see the module docstring)."""

    def __init__(
        self,
        metrics: RequestMetrics,
        gauges: Iterable[Gauge] = (),
        *,
        worker: str | None = None,
        peers: Callable[[], Sequence[WorkerFigures]] | None = None,
    ) -> None:
        self._metrics = metrics
        self._gauges = tuple(gauges)
        self._worker = worker if worker is not None else str(os.getpid())
        self._peers = peers
        self._publish: Callable[[WorkerFigures], object] | None = None

    def publish_to(self, publish: Callable[[WorkerFigures], object]) -> None:
        """Hand each answer's own figures to ``publish`` (``MetricsPublisher.publish``) before
        rendering them, so that the worker's file holds what the answer shows: a later answer
        from another worker, reading that file, then never shows a counter lower than this one
        did (figures such as the CPU seconds move between two reads)."""
        self._publish = publish

    def figures(self) -> WorkerFigures:
        """This worker's figures now (copies: the caller may keep them)."""
        gauges: dict[str, float] = {}
        for name, _text, read in self._gauges:
            value = read()
            if value is not None:
                gauges[name] = value
        return WorkerFigures(self._worker, self._metrics.counts(), self._metrics.latency(), gauges)

    def collect(self) -> Iterator[Metric]:
        own = self.figures()
        if self._publish is not None:
            self._publish(own)
        everyone = [own]
        if self._peers is not None:
            everyone.extend(peer for peer in self._peers() if peer.worker != self._worker)
        requests = CounterMetricFamily(
            "uid2_operator_requests",
            "Operator API requests by endpoint, API key id and HTTP status.",
            labels=["endpoint", "key_id", "status", "worker"],
        )
        counted = sorted(
            (label, figures.worker, count)
            for figures in everyone
            for label, count in figures.counts.items()
        )
        for (endpoint, key_id, status), worker, count in counted:
            requests.add_metric([endpoint, key_id, str(status), worker], count)
        yield requests
        latency = HistogramMetricFamily(
            "uid2_operator_request_duration_seconds",
            "Operator API request latency by endpoint and API key id.",
            labels=["endpoint", "key_id", "worker"],
        )
        timed = sorted(
            (label, figures.worker, series)
            for figures in everyone
            for label, series in figures.latency.items()
        )
        for (endpoint, key_id), worker, series in timed:
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, observed in zip((*LATENCY_BUCKETS, float("inf")), series, strict=False):
                cumulative += observed
                buckets.append((_bound(bound), cumulative))
            latency.add_metric([endpoint, key_id, worker], buckets, series[-1])
        yield latency
        for name, text, _read in self._gauges:
            values = [(f.worker, f.gauges[name]) for f in everyone if name in f.gauges]
            if values:
                gauge = GaugeMetricFamily(name, text, labels=["worker"])
                for worker, value in values:
                    gauge.add_metric([worker], value)
                yield gauge
        if self._peers is not None:
            covered = GaugeMetricFamily(
                WORKERS_GAUGE,
                "Workers this answer reports: the answering worker (its label) and every other "
                "worker whose published figures could be read.",
                labels=["worker"],
            )
            covered.add_metric([self._worker], float(len(everyone)))
            yield covered


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


class ReplayTableFigures(Protocol):
    """What ``ReplayTableCollector`` reads of the replay table the workers share."""

    @property
    def slots(self) -> int: ...

    @property
    def evictions(self) -> int: ...


class ReplayTableCollector(Collector):
    """Figures of the replay table that every worker of one serve shares, read from the table
    itself at scrape time. They describe the whole serve, not a worker, so they carry no
    ``worker`` label and are not published to the metrics files (summing them over workers
    would multiply them)."""

    def __init__(self, table: ReplayTableFigures) -> None:
        self._table = table

    def collect(self) -> Iterator[Metric]:
        evictions = CounterMetricFamily(
            "uid2_operator_replay_evictions",
            "Remembered request envelopes dropped before their timestamps left the window, "
            "because their part of the replay table was full (whole serve). Growing: raise "
            "UID2_REPLAY_TABLE_ENTRIES.",
        )
        evictions.add_metric([], self._table.evictions)
        yield evictions
        slots = GaugeMetricFamily(
            "uid2_operator_replay_table_slots",
            "Slots of the replay table the workers share (UID2_REPLAY_TABLE_ENTRIES).",
        )
        slots.add_metric([], self._table.slots)
        yield slots
