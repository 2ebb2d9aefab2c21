"""A worker's own opt-outs survive every snapshot reload until the store holds them.

A logout answered ``{"optout":"OK"}`` is applied to the worker's snapshot at once and written to
the store later (``WriteBehind``). A reload caused by any other commit in between must not make
the worker forget it: the snapshot source applies it again to what it loads until the
write-behind reports it written (a load after that reads it from the store) or given up (then
it is forgotten at the next reload, as before). Driven synchronously over a real SQLite store
with a clock that moves only when told to; a store that refuses one record is made with a
SQLite trigger.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from uid2_operator.clock import FixedClock
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.domain.sealing import Keyring
from uid2_operator.services import snapshot_source, write_behind
from uid2_operator.services.context import Actor
from uid2_operator.services.material import MaterialService
from uid2_operator.services.snapshot import Lifetimes, Snapshot
from uid2_operator.services.snapshot_loader import Loaded, load_snapshot, operator_identity
from uid2_operator.services.snapshot_source import MAX_LOCAL_OPTOUTS, SnapshotSource
from uid2_operator.services.write_behind import (
    MAX_PENDING_OPTOUTS,
    OptOutQueue,
    WriteBehind,
    write_optouts,
)
from uid2_operator.storage import SqlStore
from uid2_operator.wire.scope import IdentityType

ACTOR = Actor("cli:tester", request_id="req-1", source="cli")
KEYRING = Keyring({1: bytes(range(64, 96))}, 1, bytes(range(1, 33)))
EMAIL = IdentityType.EMAIL


def flh(n: int) -> bytes:
    return hashlib.sha256(b"local person %d" % n).digest()


Load = Callable[[Loaded | None, int], Loaded]


def store_loader(store: SqlStore, material: MaterialService, clock: FixedClock) -> Load:
    """What ``serve`` loads: the store's state, read in full or after ``previous``."""

    def load(previous: Loaded | None, generation: int) -> Loaded:
        return load_snapshot(
            store,
            KEYRING,
            material,
            identity=operator_identity(Environment.LOCAL),
            lifetimes=Lifetimes(),
            generation=generation,
            now_ms=clock.now_ms(),
            previous=previous,
        )

    return load


def wired(store: SqlStore, clock: FixedClock, load: Load) -> tuple[SnapshotSource, WriteBehind]:
    """A source and a write-behind wired as ``serve`` wires them, the first snapshot loaded."""
    source = SnapshotSource(
        load, store.change_state, clock, poll_interval_s=1, max_snapshot_age_s=60
    )
    writer = WriteBehind(
        store,
        clock,
        flush_interval_s=1,
        on_optouts=source.add_optouts,
        on_written=source.optouts_written,
        on_dropped=source.optouts_dropped,
    )
    assert source.refresh() is True
    return source, writer


def serving(source: SnapshotSource) -> Snapshot:
    current = source.current
    assert current is not None
    return current


def opted_out(source: SnapshotSource, n: int) -> bool:
    return serving(source).optouts.opted_out(EMAIL, flh(n))


def stored(store: SqlStore, n: int) -> bool:
    with store.read() as rx:
        return rx.optouts.get(flh(n)) is not None


def another_commit(store: SqlStore, clock: FixedClock, n: int) -> None:
    """A change that moves the store's sequence: another worker's opt-out written."""
    write_optouts(store, [OptOutRecord(flh(n), clock.now_ms())], clock.now_ms)


def refuse_optout_writes(db_path: Path, n: int | None = None) -> None:
    """Make the store refuse to write opt-outs (only that of person ``n``, when given)."""
    when = "" if n is None else f" WHEN NEW.first_level_hash = x'{flh(n).hex()}'"
    with sqlite3.connect(db_path) as db:
        db.execute(
            f"CREATE TRIGGER refuse_optouts BEFORE INSERT ON optouts{when} "
            "BEGIN SELECT RAISE(ABORT, 'opt-out refused'); END"
        )


def accept_optout_writes(db_path: Path) -> None:
    with sqlite3.connect(db_path) as db:
        db.execute("DROP TRIGGER refuse_optouts")


# ------------------------------------------------------------------------------------- tests


def test_a_logout_stays_opted_out_across_reloads_before_and_after_its_write(
    store: SqlStore, material: MaterialService, clock: FixedClock
) -> None:
    source, writer = wired(store, clock, store_loader(store, material, clock))
    writer.record_optout(OptOutRecord(flh(1), clock.now_ms(), "AAAA"))
    assert opted_out(source, 1)
    assert source.optouts_waiting == 1

    # Another change commits before this worker's write: the reload must not forget it.
    another_commit(store, clock, 100)
    assert source.refresh() is True
    assert opted_out(source, 1)
    assert opted_out(source, 100)
    assert serving(source).optouts.by_advertising_id.get("AAAA") is not None
    assert not stored(store, 1)

    writer.flush()
    assert stored(store, 1)
    assert source.optouts_waiting == 0  # written: the next load reads it from the store
    assert source.refresh() is True
    assert opted_out(source, 1)
    another_commit(store, clock, 101)
    assert source.refresh() is True
    assert opted_out(source, 1)
    assert opted_out(source, 101)
    source.close()


def test_a_write_that_fails_keeps_its_opt_outs_applied_while_reloads_go_on(
    store: SqlStore,
    material: MaterialService,
    clock: FixedClock,
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(write_behind, "OPTOUT_WRITE_CHUNK", 1)
    source, writer = wired(store, clock, store_loader(store, material, clock))
    for n in (1, 2, 3):
        writer.record_optout(OptOutRecord(flh(n), clock.now_ms()))
    refuse_optout_writes(db_path, 2)  # the first chunk commits, the second fails
    writer.flush()
    assert (stored(store, 1), stored(store, 2), stored(store, 3)) == (True, False, False)
    assert source.optouts_waiting == 2  # only what committed was reported written
    for n in range(3):
        another_commit(store, clock, 100 + n)
        assert source.refresh() is True
        assert all(opted_out(source, m) for m in (1, 2, 3))
    accept_optout_writes(db_path)
    writer.flush()
    assert stored(store, 2)
    assert stored(store, 3)
    assert source.optouts_waiting == 0
    assert source.refresh() is True
    assert all(opted_out(source, m) for m in (1, 2, 3))
    source.close()


def test_a_logout_answered_while_a_reload_runs_is_applied_to_what_it_installs(
    store: SqlStore, material: MaterialService, clock: FixedClock
) -> None:
    load = store_loader(store, material, clock)
    during: list[Callable[[], None]] = []

    def slow_load(previous: Loaded | None, generation: int) -> Loaded:
        loaded = load(previous, generation)  # the store as it was when the load read it
        for event in during:
            event()
        during.clear()
        return loaded

    source, writer = wired(store, clock, slow_load)
    # Recorded before the poll starts, written (and reported) after its load read the store.
    writer.record_optout(OptOutRecord(flh(1), clock.now_ms()))
    another_commit(store, clock, 100)
    during.append(writer.flush)
    assert source.refresh() is True
    assert stored(store, 1)
    assert opted_out(source, 1)

    # Recorded while the load runs: applied when it is installed.
    another_commit(store, clock, 101)
    during.append(lambda: writer.record_optout(OptOutRecord(flh(2), clock.now_ms())))
    assert source.refresh() is True
    assert opted_out(source, 2)
    another_commit(store, clock, 102)
    assert source.refresh() is True
    assert opted_out(source, 2)  # still waiting for its write
    writer.flush()
    assert source.refresh() is True
    assert opted_out(source, 1)
    assert opted_out(source, 2)
    assert source.optouts_waiting == 0
    source.close()


def test_an_opt_out_dropped_for_want_of_room_is_forgotten_at_the_next_reload(
    store: SqlStore,
    material: MaterialService,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(write_behind, "MAX_PENDING_OPTOUTS", 2)
    source, writer = wired(store, clock, store_loader(store, material, clock))
    for n in (1, 2, 3):
        writer.record_optout(OptOutRecord(flh(n), clock.now_ms()))
    assert writer.optouts.dropped == 1
    assert all(opted_out(source, n) for n in (1, 2, 3))  # applied at once, even the dropped
    assert source.optouts_waiting == 2
    another_commit(store, clock, 100)
    assert source.refresh() is True
    assert (opted_out(source, 1), opted_out(source, 2), opted_out(source, 3)) == (
        True,
        True,
        False,
    )
    source.close()


def test_an_opt_out_put_back_without_room_is_reported_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(write_behind, "MAX_PENDING_OPTOUTS", 3)
    queue = OptOutQueue()
    records = [OptOutRecord(flh(n), n) for n in range(4)]
    assert [queue.add(r) for r in records[:2]] == [True, True]
    taken = queue.take()
    assert [queue.add(r) for r in records[2:]] == [True, True]
    assert queue.restore(taken) == [taken[1]]
    assert queue.take() == [taken[0], *records[2:]]
    assert queue.dropped == 1


def test_what_a_source_keeps_is_bounded(
    store: SqlStore,
    material: MaterialService,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert MAX_LOCAL_OPTOUTS > 2 * MAX_PENDING_OPTOUTS  # the write-behind's queue and batch
    monkeypatch.setattr(snapshot_source, "MAX_LOCAL_OPTOUTS", 10)
    source, _writer = wired(store, clock, store_loader(store, material, clock))
    with caplog.at_level("WARNING", logger=snapshot_source.__name__):
        for n in range(11):  # nothing reports them written
            source.add_optouts([OptOutRecord(flh(n), clock.now_ms())])
    assert source.optouts_waiting == 10 - 1  # the oldest tenth and the excess forgotten
    assert "the oldest 2 are no longer applied again" in caplog.text
    another_commit(store, clock, 100)
    assert source.refresh() is True
    assert [opted_out(source, n) for n in range(11)] == [False] * 2 + [True] * 9
    source.close()
