"""Request metrics for Prometheus, counted in plain dicts and exported at scrape time.

A ``prometheus_client`` ``Counter.labels(...).inc()`` per request takes a lock and walks a label
cache: more than the cryptography of some endpoints. Here a request costs two dict updates and a
``bisect`` (``RequestMetrics.observe``), all on the event loop thread, and ``MetricsCollector``
turns the dicts into metric families only when ``/metrics`` is scraped (also on the loop thread,
so nothing is shared across threads and no lock is needed).

Series: ``uid2_operator_requests_total{endpoint, key_id, status}`` and the histogram
``uid2_operator_request_duration_seconds{endpoint, key_id}``. ``endpoint`` is the route, or
``other`` for a path the operator does not serve (a scanner cannot create series); ``key_id`` is
the public id of the API key that authenticated the request, or empty. Snapshot gauges describe
the worker that answered the scrape; each worker keeps its own counters (``worker`` label).
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Final

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


class MetricsCollector(Collector):
    """Exports a ``RequestMetrics`` and a few worker gauges at scrape time."""

    def __init__(self, metrics: RequestMetrics, gauges: Iterable[Gauge] = ()) -> None:
        self._metrics = metrics
        self._gauges = tuple(gauges)
        self._worker = str(os.getpid())

    def collect(self) -> Iterator[Metric]:
        worker = self._worker
        requests = CounterMetricFamily(
            "uid2_operator_requests",
            "Operator API requests by endpoint, API key id and HTTP status.",
            labels=["endpoint", "key_id", "status", "worker"],
        )
        for (endpoint, key_id, status), count in sorted(self._metrics.counts().items()):
            requests.add_metric([endpoint, key_id, str(status), worker], count)
        yield requests
        latency = HistogramMetricFamily(
            "uid2_operator_request_duration_seconds",
            "Operator API request latency by endpoint and API key id.",
            labels=["endpoint", "key_id", "worker"],
        )
        for (endpoint, key_id), series in sorted(self._metrics.latency().items()):
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, observed in zip((*LATENCY_BUCKETS, float("inf")), series, strict=False):
                cumulative += observed
                buckets.append((_bound(bound), cumulative))
            latency.add_metric([endpoint, key_id, worker], buckets, series[-1])
        yield latency
        for name, text, read in self._gauges:
            value = read()
            if value is not None:
                gauge = GaugeMetricFamily(name, text, labels=["worker"])
                gauge.add_metric([worker], value)
                yield gauge


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)
