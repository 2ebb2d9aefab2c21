"""The process figures a worker reports: read from this process, under its ``worker`` label."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from uid2_operator.web.operator_api.metrics import PROCESS_CPU, RequestMetrics, process_gauges
from uid2_operator.web.operator_api.server import ROUTES, _registry

NAMES = {
    PROCESS_CPU,
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_open_fds",
}


def _read(proc: Path | None = None) -> dict[str, float]:
    gauges = process_gauges() if proc is None else process_gauges(proc)
    return {name: value for name, _help, read in gauges if (value := read()) is not None}


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self")
def test_the_figures_describe_this_process() -> None:
    figures = _read()
    assert set(figures) == NAMES
    times = os.times()
    assert 0 < figures[PROCESS_CPU] <= times.user + times.system
    assert figures["process_resident_memory_bytes"] > 1_000_000
    assert figures["process_open_fds"] >= 3
    started = figures["process_start_time_seconds"]
    assert started <= time.time() + 1
    assert started > time.time() - 24 * 3600  # a test process started within the day


def test_without_proc_only_the_cpu_seconds_are_reported(tmp_path: Path) -> None:
    assert set(_read(tmp_path / "none" / "self")) == {PROCESS_CPU}


def test_a_lone_worker_labels_its_process_figures_and_exports_cpu_as_a_counter() -> None:
    registry, publisher = _registry(RequestMetrics(ROUTES), [], None)
    assert publisher is None
    families = {
        family.name: family
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        if family.name.startswith("process_")
    }
    assert families[PROCESS_CPU].type == "counter"
    assert [s.name for s in families[PROCESS_CPU].samples] == ["process_cpu_seconds_total"]
    for family in families.values():
        assert family.samples
        assert all(s.labels == {"worker": str(os.getpid())} for s in family.samples), family
