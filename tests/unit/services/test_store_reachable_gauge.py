"""``uid2_operator_store_reachable`` is 0 only while the store cannot be reached.

A reload that fails with the store reachable (a keyring that lacks a KEK version the store names,
say) makes the worker degraded, but the store answered: the gauge stays 1 and the health check
says what fails. A store that cannot be reached makes it 0, whatever failed before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from uid2_operator.clock import FixedClock
from uid2_operator.errors import KekVersionMissing, StoreAccessRefused, StoreUnavailable
from uid2_operator.services.snapshot_loader import Loaded
from uid2_operator.services.snapshot_source import SnapshotSource
from uid2_operator.services.write_behind import WriteBehind
from uid2_operator.storage import open_store
from uid2_operator.web.operator_api.server import _gauges

GAUGE = "uid2_operator_store_reachable"


class _Snapshot:
    def __init__(self, generation: int, change_seq: int) -> None:
        self.generation = generation
        self.change_seq = change_seq


class _Store:
    """The two reads a snapshot source makes, each failing on demand."""

    def __init__(self) -> None:
        self.seq = 1
        self.down = False
        self.keyring_lacks_a_version = False
        self.access_refused = False

    def change_seq(self) -> int:
        if self.access_refused:
            raise StoreAccessRefused(
                "The store at postgresql+psycopg://uid2@db/uid2 refuses access: permission denied "
                "for table participants (check the database role's privileges)"
            )
        if self.down:
            raise StoreUnavailable("The store at sqlite:///test is unavailable: switched off")
        return self.seq

    def load(self, previous: Loaded | None, generation: int) -> Any:
        del previous
        if self.keyring_lacks_a_version:
            raise KekVersionMissing(2)
        return Loaded(_Snapshot(generation, self.seq), None)  # type: ignore[arg-type]


def _gauge(source: SnapshotSource, tmp_path: Path) -> float | None:
    clock = FixedClock()
    store = open_store(f"sqlite:///{tmp_path / 'unused.db'}", check_schema=False)
    writer = WriteBehind(store, clock, flush_interval_s=1)
    try:
        (read,) = [read for name, _help, read in _gauges(source, writer) if name == GAUGE]
        return read()
    finally:
        writer.close()
        store.close()


def test_a_reload_failing_with_the_store_up_leaves_the_store_reachable(tmp_path: Path) -> None:
    store = _Store()
    source = SnapshotSource(
        store.load, store.change_seq, FixedClock(), poll_interval_s=1, max_snapshot_age_s=10
    )
    assert source.refresh() is True
    assert (source.store_reachable, _gauge(source, tmp_path)) == (True, 1.0)

    store.seq, store.keyring_lacks_a_version = 2, True
    assert source.refresh() is False
    assert source.problem is not None
    assert source.problem.startswith("Degraded: snapshot reload failing since")
    assert (source.store_reachable, _gauge(source, tmp_path)) == (True, 1.0)

    store.down = True  # now the store itself is out of reach
    assert source.refresh() is False
    assert source.problem.startswith("Degraded: store unreachable since")
    assert (source.store_reachable, _gauge(source, tmp_path)) == (False, 0.0)

    store.down = False  # back, but the reload still fails: reachable again, still degraded
    assert source.refresh() is False
    assert source.problem.startswith("Degraded: snapshot reload failing since")
    assert (source.store_reachable, _gauge(source, tmp_path)) == (True, 1.0)

    store.keyring_lacks_a_version = False
    assert source.refresh() is True
    assert source.problem is None
    assert (source.store_reachable, _gauge(source, tmp_path)) == (True, 1.0)


def test_an_unreachable_store_reads_zero_before_any_snapshot(tmp_path: Path) -> None:
    store = _Store()
    store.down = True
    source = SnapshotSource(
        store.load, store.change_seq, FixedClock(), poll_interval_s=1, max_snapshot_age_s=10
    )
    assert source.refresh() is False
    assert (source.store_reachable, _gauge(source, tmp_path)) == (False, 0.0)


def test_a_role_refused_a_table_is_a_failing_reload_not_an_unreachable_store(
    tmp_path: Path,
) -> None:
    # The database answers, and refuses the role a table: the health check must point at the
    # grants, not at the network, and must not carry the database's text (names, host).
    store = _Store()
    source = SnapshotSource(
        store.load, store.change_seq, FixedClock(), poll_interval_s=1, max_snapshot_age_s=10
    )
    assert source.refresh() is True
    store.access_refused = True
    assert source.refresh() is False
    assert source.problem is not None
    assert source.problem.startswith("Degraded: snapshot reload failing since")
    assert "(database access refused)" in source.problem
    assert "participants" not in source.problem
    assert "uid2@db" not in source.problem
    assert (source.store_reachable, _gauge(source, tmp_path)) == (True, 1.0)
