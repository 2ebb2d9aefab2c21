"""A worker whose store is restored from an earlier backup while it runs reads it in full.

Every commit that moves the change sequence writes a random mark for its new value; a load
records the mark of the sequence it read at, and the next one goes on from it only when the
store still holds that mark for that sequence. A restored store has lost that commit, whatever
its sequence has become since: behind the worker's, equal to it or past it after more writes,
with credential changes or opt-outs only in between. Each case below ends in the state a load
from nothing gives: the opt-outs and keys written after the restore are seen, and what only
the lost commits held is gone.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from service_fixtures import ACTOR, load_local_snapshot

from uid2_operator.clock import FixedClock
from uid2_operator.services.credentials import CredentialService
from uid2_operator.services.material import MaterialService
from uid2_operator.services.snapshot_loader import Loaded
from uid2_operator.storage import SqlStore


def _copy(source: Path, target: Path) -> None:
    """The whole database file, as a backup or a restore makes it (SQLite's online backup)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()


def _optouts(loaded: Loaded) -> list[tuple[bytes, int]]:
    return sorted((r.first_level_hash, r.timestamp_ms) for r in loaded.material.optouts)


def _keys(loaded: Loaded) -> dict[str, int]:
    return {key_id: r.usable_before_ms for key_id, r in loaded.snapshot.clients.items()}


class Worker:
    def __init__(self, store: SqlStore, material: MaterialService, clock: FixedClock) -> None:
        self.store, self.material, self.clock = store, material, clock
        self.loaded = load_local_snapshot(store, material, clock)

    def poll(self) -> bool:
        """What a worker's poll does: reload when the store's state is not the loaded one's,
        then check the result against a load from nothing."""
        if self.store.change_state() == self.loaded.state:
            return False
        self.loaded = load_local_snapshot(self.store, self.material, self.clock, self.loaded)
        fresh = load_local_snapshot(self.store, self.material, self.clock)
        assert _optouts(self.loaded) == _optouts(fresh)
        assert _keys(self.loaded) == _keys(fresh)
        return True


class Backup:
    """One backup of the store's file, taken and restored while the worker runs."""

    def __init__(self, db_path: Path, tmp_path: Path) -> None:
        self.db_path, self.copy = db_path, tmp_path / "backup.db"

    def take(self) -> None:
        _copy(self.db_path, self.copy)

    def restore(self) -> None:
        _copy(self.copy, self.db_path)


@pytest.fixture
def worker(store: SqlStore, material: MaterialService, clock: FixedClock) -> Worker:
    return Worker(store, material, clock)


@pytest.fixture
def backup(db_path: Path, tmp_path: Path) -> Backup:
    return Backup(db_path, tmp_path)


def _site(svc: CredentialService, name: str) -> int:
    return svc.create_participant(ACTOR, name=name, type="publisher", roles=["GENERATOR"]).site_id


def _key(svc: CredentialService, site: int) -> str:
    return svc.create_key(ACTOR, site_id=site, name="k", roles=["GENERATOR"]).key_id


def _write_until(store: SqlStore, target: int, write: Callable[[int], object]) -> int:
    """Writes until the store's sequence reaches ``target``; how many writes it took."""
    n = 0
    while store.change_seq() < target:
        write(n)
        n += 1
    return n


def test_opt_outs_written_after_a_restore_are_read_and_the_lost_ones_dropped(
    svc: CredentialService,
    store: SqlStore,
    material: MaterialService,
    worker: Worker,
    backup: Backup,
) -> None:
    _site(svc, "A")
    backup.take()
    material.add_optout("email", "before-restore@example.com")
    _site(svc, "B")
    assert worker.poll()
    cursor = store.change_seq()
    backup.restore()
    material.add_optout("email", "after-restore@example.com")
    _write_until(store, cursor + 1, lambda n: _site(svc, f"later {n}"))
    assert worker.poll()
    assert len(worker.loaded.material.optouts) == 1


def test_a_revocation_after_a_restore_is_read_though_only_opt_outs_preceded_it(
    svc: CredentialService,
    store: SqlStore,
    material: MaterialService,
    clock: FixedClock,
    backup: Backup,
) -> None:
    # The backup holds every credential change the worker read: only opt-outs came between it
    # and the worker's load, so the audit trail's last event is the same in both.
    key_id = _key(svc, _site(svc, "A"))
    worker = Worker(store, material, clock)
    backup.take()
    for n in range(3):
        material.add_optout("email", f"before-{n}@example.com")
    assert worker.poll()
    cursor = store.change_seq()
    backup.restore()
    svc.revoke_key(ACTOR, key_id, reason="revoked after the restore")  # stamped below the cursor
    _write_until(store, cursor + 1, lambda n: material.add_optout("email", f"after-{n}@x.example"))
    assert worker.poll()
    assert worker.loaded.snapshot.clients[key_id].usable_before_ms == 0


def test_a_restored_store_written_back_to_the_same_sequence_is_reloaded(
    svc: CredentialService,
    store: SqlStore,
    material: MaterialService,
    clock: FixedClock,
    backup: Backup,
) -> None:
    key_id = _key(svc, _site(svc, "A"))
    worker = Worker(store, material, clock)
    backup.take()
    _site(svc, "B")
    material.add_optout("email", "lost@example.com")
    assert worker.poll()
    cursor = store.change_seq()
    backup.restore()
    svc.revoke_key(ACTOR, key_id, reason="revoked after the restore")
    written = _write_until(
        store, cursor, lambda n: material.add_optout("email", f"after-{n}@x.example")
    )
    assert store.change_seq() == cursor  # the very sequence the worker read at
    assert worker.poll()
    assert worker.loaded.snapshot.clients[key_id].usable_before_ms == 0
    assert len(worker.loaded.material.optouts) == written  # the lost opt-out is gone


def test_a_store_gone_on_is_read_from_where_the_worker_was(
    svc: CredentialService, material: MaterialService, worker: Worker
) -> None:
    site = _site(svc, "A")
    material.add_optout("email", "one@example.com")
    assert worker.poll()
    before = worker.loaded
    _key(svc, site)
    material.add_optout("email", "two@example.com")
    assert worker.poll()
    assert worker.loaded.material.optouts_read == 1  # only what was written since
    assert worker.loaded.snapshot.salts is before.snapshot.salts
    assert not worker.poll()  # nothing moved: no reload
