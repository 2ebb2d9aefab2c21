"""The shared replay table's figures at /metrics: serve-wide, read live from the table."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from uid2_operator.services.replay_table import ReplayTable
from uid2_operator.web.operator_api.metrics import ReplayTableCollector

NOW_MS = 1_700_000_000_000
WINDOW_MS = 120_000


def _scrape(table: ReplayTable) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReplayTableCollector(table))
    return generate_latest(registry).decode()


def test_evictions_and_slots_are_reported_without_a_worker_label(tmp_path: Path) -> None:
    path = tmp_path / "table"
    # One home slot and a window of four: the fifth live envelope evicts the oldest.
    ReplayTable.create(path, max_past_ms=WINDOW_MS, slots=1, probe=4)
    with ReplayTable.open(path, max_past_ms=WINDOW_MS) as table:
        assert "uid2_operator_replay_evictions_total 0.0" in _scrape(table)
        for index in range(5):
            assert table.first_use("key", index.to_bytes(8, "big"), NOW_MS + index, NOW_MS)
        text = _scrape(table)
    assert "uid2_operator_replay_evictions_total 1.0" in text
    assert "uid2_operator_replay_table_slots 1.0" in text
    assert "worker=" not in text


def test_every_process_of_the_table_reports_the_same_evictions(tmp_path: Path) -> None:
    path = tmp_path / "table"
    ReplayTable.create(path, max_past_ms=WINDOW_MS, slots=1, probe=2)
    with (
        ReplayTable.open(path, max_past_ms=WINDOW_MS) as first,
        ReplayTable.open(path, max_past_ms=WINDOW_MS) as second,
    ):
        for index in range(4):
            first.first_use("key", index.to_bytes(8, "big"), NOW_MS + index, NOW_MS)
        assert "uid2_operator_replay_evictions_total 2.0" in _scrape(second)
