"""A reload reads only the opt-outs written since the last one, and answers as a full load.

Random batches of opt-outs are written as the request path writes them (``write_optouts``, the
write-behind's unit of work) or as an administrator records them; after each batch a snapshot
reloaded from the previous one must give the same decision as a snapshot loaded from nothing,
for every identity and every raw UID ever written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import shutil
from pathlib import Path

import pytest
from service_fixtures import ACTOR, KEYRING, load_local_snapshot

from uid2_operator.clock import FixedClock
from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.services.material import MaterialConfig, MaterialService
from uid2_operator.services.snapshot import Snapshot
from uid2_operator.services.snapshot_source import SnapshotSource
from uid2_operator.services.write_behind import write_optouts
from uid2_operator.storage import SqlStore, open_store
from uid2_operator.wire.scope import IdentityType


def flh(n: int) -> bytes:
    return hashlib.sha256(b"person%d" % n).digest()


def raw_uid(n: int, version: int) -> str:
    return hashlib.sha256(b"raw%d/%d" % (n, version)).hexdigest()[:44]


def _answers(snapshot: Snapshot, people: int, ids: set[str]) -> list[object]:
    optouts = snapshot.optouts
    out: list[object] = []
    for n in range(people):
        for kind in IdentityType:
            out.append(
                (optouts.opted_out(kind, flh(n)), optouts.opted_out_at_refresh(kind, flh(n)))
            )
        out.append(optouts.by_flh.get(flh(n)))
    out.extend(optouts.by_advertising_id.get(i) for i in sorted(ids))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_a_reload_reads_what_changed_and_answers_as_a_full_load(
    store: SqlStore, material: MaterialService, clock: FixedClock, seed: int
) -> None:
    rng = random.Random(seed)  # noqa: S311 (reproducible test data, not secrets)
    people = 30
    loaded = load_local_snapshot(store, material, clock)
    ids: set[str] = set()
    for _ in range(8):
        batch = []
        for _ in range(rng.randrange(0, 10)):
            n = rng.randrange(people)
            ad_id = raw_uid(n, rng.randrange(3)) if rng.random() < 0.8 else None
            batch.append(OptOutRecord(flh(n), clock.now_ms() - rng.randrange(5000), ad_id))
            ids.update([ad_id] if ad_id else [])
        write_optouts(store, batch, clock.now_ms)
        if rng.random() < 0.3:
            material.add_optout("email", f"person{rng.randrange(people)}@example.com", ACTOR)
        clock.advance(1000)
        reloaded = load_local_snapshot(store, material, clock, loaded)
        full = load_local_snapshot(store, material, clock)
        assert reloaded.material.optouts_read <= len(batch) + 1
        assert full.material.optouts_read == len(full.material.optouts)
        assert _answers(reloaded.snapshot, people, ids) == _answers(full.snapshot, people, ids)
        assert sorted(reloaded.material.optouts, key=lambda r: r.first_level_hash) == sorted(
            full.material.optouts, key=lambda r: r.first_level_hash
        )
        assert reloaded.snapshot.salts is loaded.snapshot.salts
        loaded = reloaded


def test_a_reload_with_nothing_new_reads_no_opt_out(
    store: SqlStore, material: MaterialService, clock: FixedClock
) -> None:
    write_optouts(store, [OptOutRecord(flh(n), clock.now_ms()) for n in range(50)], clock.now_ms)
    first = load_local_snapshot(store, material, clock)
    assert first.material.optouts_read == 50
    material.rotate_keys()
    second = load_local_snapshot(store, material, clock, first)
    assert second.material.optouts_read == 0
    assert second.material.optouts is first.material.optouts  # nothing read, nothing copied
    assert second.snapshot.optouts.opted_out(IdentityType.EMAIL, flh(7))


def test_a_store_behind_the_cursor_is_read_in_full(
    store: SqlStore, material: MaterialService, clock: FixedClock
) -> None:
    write_optouts(store, [OptOutRecord(flh(1), clock.now_ms())], clock.now_ms)
    first = material.load_material()
    ahead = dataclasses.replace(first, optout_cursor=first.change_seq + 100)
    again = material.load_material(ahead)
    assert again.optouts_read == 1
    assert again.optout_cursor == first.optout_cursor


def test_a_previous_load_of_another_first_level_salt_is_not_extended(
    store: SqlStore,
    material: MaterialService,
    clock: FixedClock,
    migrated_template: Path,
    tmp_path: Path,
) -> None:
    """Every first-level hash depends on the salt: a previous load under another one (another
    store, a re-created one) cannot be extended, even with a cursor the store is past."""
    other_path = tmp_path / "other.db"
    shutil.copyfile(migrated_template, other_path)
    other = open_store(f"sqlite:///{other_path}")
    try:
        stranger = MaterialService(
            other, KEYRING, MaterialConfig(bucket_count=64, chunk_size=64), clock, os.urandom
        )
        stranger.initialise(ACTOR)
        foreign = stranger.load_material()
    finally:
        other.close()
    write_optouts(store, [OptOutRecord(flh(n), clock.now_ms()) for n in range(5)], clock.now_ms)
    first = material.load_material()
    assert foreign.salts.first_level_salt != first.salts.first_level_salt
    again = material.load_material(dataclasses.replace(first, salts=foreign.salts))
    assert again.optouts_read == 5
    assert again.optouts is not first.optouts
    assert len(again.optouts) == 5


def test_a_worker_s_own_opt_outs_apply_at_once_however_many_exist(
    store: SqlStore, material: MaterialService, clock: FixedClock
) -> None:
    many = 60_000  # more than the bound once put on applying them
    with store.transaction() as tx:
        for n in range(many):
            tx.optouts.put(OptOutRecord(flh(n), clock.now_ms()))
    loaded = load_local_snapshot(store, material, clock)
    source = SnapshotSource(
        lambda previous, _generation: load_local_snapshot(store, material, clock, previous),
        store.change_seq,
        clock,
        poll_interval_s=1,
        max_snapshot_age_s=10,
    )
    assert source.refresh() is True
    base = source.current
    assert base is not None
    assert len(base.optouts.by_flh) == many
    mine = OptOutRecord(flh(-1), clock.now_ms(), raw_uid(-1, 0))
    source.add_optouts([mine])
    current = source.current
    assert current is not None
    assert current.generation == base.generation + 1
    assert current.optouts.opted_out(IdentityType.PHONE, flh(-1))
    assert current.optouts.by_advertising_id.get(raw_uid(-1, 0)) == mine.timestamp_ms
    assert current.optouts.index.by_flh.layer_sizes[1] == 1  # applied on the overlay
    assert not base.optouts.opted_out(IdentityType.PHONE, flh(-1))

    # Another change moves the store before the worker's record is written: the reload's
    # material is exactly the store's state, and the source applies the waiting record again.
    material.add_optout("email", "someone.else@example.com", ACTOR)
    assert source.refresh() is True
    moved = source.current
    assert moved is not None
    assert moved.optouts.opted_out(IdentityType.PHONE, flh(-1))
    assert source.optouts_waiting == 1
    write_optouts(store, [mine], clock.now_ms)
    source.optouts_written([mine])
    assert source.optouts_waiting == 0
    assert source.refresh() is True
    written = source.current
    assert written is not None
    assert written.optouts.opted_out(IdentityType.PHONE, flh(-1))
    assert len(written.optouts.by_flh) == len(loaded.snapshot.optouts.by_flh) + 2
    source.close()
