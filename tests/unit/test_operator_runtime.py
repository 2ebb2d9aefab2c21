"""The serving runtime's pieces in isolation: settings, metrics, usage batching, the snapshot
source's state machine (load, unchanged, failure, staleness, recovery)."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from uid2_operator.clock import FixedClock
from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.errors import KekVersionMissing, StoreUnavailable
from uid2_operator.serve_settings import ServeSettings
from uid2_operator.services.snapshot_loader import Loaded
from uid2_operator.services.snapshot_source import SnapshotSource
from uid2_operator.services.write_behind import MAX_PENDING_OPTOUTS, OptOutQueue, UsageMeter
from uid2_operator.settings import SettingsError
from uid2_operator.web.operator_api.metrics import MetricsCollector, RequestMetrics

# ------------------------------------------------------------------------------- settings


def test_serve_settings_defaults_and_overrides() -> None:
    assert ServeSettings.from_env({}) == ServeSettings()
    assert ServeSettings().poll_interval_s == 1.0
    tuned = ServeSettings.from_env(
        {"UID2_POLL_INTERVAL_S": "0.25", "UID2_MAX_SNAPSHOT_AGE_S": "60"}
    )
    assert (tuned.poll_interval_s, tuned.max_snapshot_age_s) == (0.25, 60.0)


@pytest.mark.parametrize(
    "env",
    [
        {"UID2_POLL_INTERVAL_S": "soon"},
        {"UID2_POLL_INTERVAL_S": "-1"},
        {"UID2_FLUSH_INTERVAL_S": "nan"},
        {"UID2_POLL_INTERVAL_S": "10", "UID2_MAX_SNAPSHOT_AGE_S": "5"},
    ],
)
def test_serve_settings_refuse_nonsense(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        ServeSettings.from_env(env)


# ------------------------------------------------------------------------------- metrics


def test_metrics_are_exported_per_endpoint_key_and_status() -> None:
    metrics = RequestMetrics(["/v2/token/generate"])
    metrics.observe("/v2/token/generate", "UID2-C-L-5-abcdef", 200, 0.0003)
    metrics.observe("/v2/token/generate", "UID2-C-L-5-abcdef", 200, 0.2)
    metrics.observe("/v2/token/generate", None, 401, 0.0001)
    metrics.observe("/wp-admin.php", None, 404, 0.0001)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(metrics, [("uid2_test_gauge", "A gauge.", lambda: 7.0)]))
    text = generate_latest(registry).decode()
    ok = 'endpoint="/v2/token/generate",key_id="UID2-C-L-5-abcdef",status="200"'
    assert re.search(rf"uid2_operator_requests_total\{{{ok},worker=\"\d+\"\}} 2\.0", text)
    assert 'endpoint="/v2/token/generate",key_id="",status="401"' in text
    assert 'endpoint="other",key_id="",status="404"' in text
    assert "/wp-admin.php" not in text
    labels = 'endpoint="/v2/token/generate",key_id="UID2-C-L-5-abcdef"'
    prefix = r"uid2_operator_request_duration_seconds_bucket\{" + labels
    assert re.search(prefix + r',le="0\.0005",worker="\d+"\} 1\.0', text)
    assert re.search(prefix + r',le="\+Inf",worker="\d+"\} 2\.0', text)
    assert re.search(
        r"uid2_operator_request_duration_seconds_sum\{" + labels + r".*\} 0\.2003", text
    )
    assert re.search(r'uid2_test_gauge\{worker="\d+"\} 7\.0', text)


# ------------------------------------------------------------------------------- usage


def test_usage_meter_aggregates_and_restores() -> None:
    meter = UsageMeter(now_ms=1000)
    meter.add("k1", "/a")
    meter.now_ms = 2000
    meter.add("k1", "/a")
    meter.add("k2", "/b")
    batch = meter.take()
    assert sorted(batch) == [("k1", "/a", 2, 2000), ("k2", "/b", 1, 2000)]
    assert len(meter) == 0
    meter.now_ms = 3000
    meter.add("k1", "/a")
    meter.restore(batch)
    assert sorted(meter.take()) == [("k1", "/a", 3, 3000), ("k2", "/b", 1, 2000)]


def test_optout_queue_is_bounded() -> None:
    queue = OptOutQueue()
    record = OptOutRecord(bytes(32), 1, "AA==")
    for _ in range(MAX_PENDING_OPTOUTS + 2):
        queue.add(record)
    assert (len(queue), queue.dropped) == (MAX_PENDING_OPTOUTS, 2)
    taken = queue.take()
    queue.add(record)
    queue.restore(taken)
    assert (len(queue), queue.dropped) == (MAX_PENDING_OPTOUTS, 3)


# ------------------------------------------------------------------------------- snapshot source


class FakeSnapshot:
    def __init__(self, generation: int, change_seq: int) -> None:
        self.generation = generation
        self.change_seq = change_seq


class FakeStore:
    def __init__(self) -> None:
        self.seq = 1
        self.down = False
        self.loads = 0

    def change_seq(self) -> int:
        if self.down:
            raise StoreUnavailable("The store is unavailable: test")
        return self.seq

    def load(self, previous: Loaded | None, generation: int) -> Any:
        del previous
        self.loads += 1
        return Loaded(FakeSnapshot(generation, self.seq), None)  # type: ignore[arg-type]


def test_a_reload_failing_with_the_store_up_is_not_called_an_unreachable_store() -> None:
    store, clock = FakeStore(), FixedClock()
    broken = False

    def load(previous: Loaded | None, generation: int) -> Any:
        if broken:
            raise KekVersionMissing(3, "Key-encryption key version 3 is absent from the keyring")
        return store.load(previous, generation)

    source = SnapshotSource(load, store.change_seq, clock, poll_interval_s=1, max_snapshot_age_s=10)
    assert source.refresh() is True
    broken, store.seq = True, 2
    assert source.refresh() is False
    assert source.problem is not None
    assert source.problem.startswith("Degraded: snapshot reload failing since")
    assert "(no key-encryption key version 3);" in source.problem
    assert "is absent from the keyring" not in source.problem  # the error's text stays out
    assert "version 3 is absent" in (source.problem_detail or "")
    clock.advance(11_000)
    source.check_age()
    assert source.problem.startswith("Snapshot is stale")
    assert "Snapshot reload failing since" in source.problem
    # The store going down afterwards is reported as what it is.
    store.down = True
    assert source.refresh() is False
    assert "Store unreachable since" in source.problem


def test_the_recovery_line_names_what_had_failed(caplog: pytest.LogCaptureFixture) -> None:
    store, clock = FakeStore(), FixedClock()
    broken = False

    def load(previous: Loaded | None, generation: int) -> Any:
        if broken:
            raise KekVersionMissing(3)
        return store.load(previous, generation)

    source = SnapshotSource(load, store.change_seq, clock, poll_interval_s=1, max_snapshot_age_s=10)
    logger = "uid2_operator.services.snapshot_source"
    with caplog.at_level(logging.WARNING, logger=logger):
        assert source.refresh() is True
        broken, store.seq = True, 2
        assert source.refresh() is False
        broken = False
        assert source.refresh() is True
        store.down, store.seq = True, 3
        assert source.refresh() is False
        store.down = False
        assert source.refresh() is True
    recovered = [
        r.getMessage() for r in caplog.records if r.name == logger and "again" in r.getMessage()
    ]
    assert recovered == ["snapshot reload works again", "store reachable again"]


def test_snapshot_source_reloads_only_on_change_and_goes_stale() -> None:
    store, clock = FakeStore(), FixedClock()
    source = SnapshotSource(
        store.load, store.change_seq, clock, poll_interval_s=1, max_snapshot_age_s=10
    )
    assert source.current is None
    assert source.problem is not None
    assert source.problem.startswith("No snapshot loaded")
    assert source.refresh() is True
    first = source.current
    assert first is not None
    assert source.problem is None
    assert source.refresh() is False  # nothing moved: no reload
    assert source.current is first
    store.seq = 2
    assert source.refresh() is True
    assert source.current is not first
    assert store.loads == 2

    store.down = True
    clock.advance(5_000)
    assert source.refresh() is False
    assert source.current is not None  # degraded, still serving
    assert source.problem is not None
    assert source.problem.startswith("Degraded: store unreachable")
    clock.advance(6_000)
    source.check_age()
    assert source.current is None
    assert source.problem.startswith("Snapshot is stale")

    store.down = False
    assert source.refresh() is False  # same change seq: the kept snapshot is served again
    assert source.current is not None
    assert source.problem is None


def test_an_outage_is_reported_since_its_first_failed_poll() -> None:
    store, clock = FakeStore(), FixedClock()
    source = SnapshotSource(
        store.load, store.change_seq, clock, poll_interval_s=1, max_snapshot_age_s=600
    )
    assert source.refresh() is True
    clock.advance(5_000)
    store.down = True
    began = datetime.fromtimestamp(clock.now_ms() / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for _ in range(3):
        assert source.refresh() is False
        assert source.problem is not None
        assert source.problem.startswith(f"Degraded: store unreachable since {began};")
        clock.advance(60_000)
