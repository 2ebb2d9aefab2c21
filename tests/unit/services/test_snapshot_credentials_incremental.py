"""A reload reads only the credentials written since the previous load, and builds the same
client records a load from nothing would.

After every kind of credential change the control plane makes (participants created, narrowed,
disabled, given domain names; keys created, renamed, narrowed, disabled, revoked, rotated with
and without grace, retired at once; secrets rotated), a reload from the previous load and a load
from nothing give the same records, and the records of keys the change did not touch are the
previous load's objects themselves: nothing untouched is read, opened or built again. A secret
whose grace runs out leaves its record at the next reload; a store that is not the one the
previous load read, gone on, is read in full: behind its cursor, or restored from an earlier
backup and written past the cursor again.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from service_fixtures import ACTOR, KEYRING, load_local_snapshot

from uid2_operator.clock import FixedClock
from uid2_operator.domain.environments import Environment
from uid2_operator.services.credentials import CredentialService
from uid2_operator.services.material import MaterialService
from uid2_operator.services.sharing import SharingService
from uid2_operator.services.snapshot_loader import Loaded
from uid2_operator.storage import SqlStore

DAY_MS = 86_400_000


def _records(loaded: Loaded) -> dict[str, Any]:
    """Each client record as the request path uses it. ``last_used_at_ms`` is left out: a usage
    flush writes it without moving the change sequence, so no reload follows it (the request
    path never reads it)."""
    return {
        key_id: (
            replace(record.key, last_used_at_ms=None),
            record.participant,
            tuple((s.secret_id, s.secret.raw, s.retires_at_ms) for s in record.secrets),
            record.roles,
            record.usable_before_ms,
        )
        for key_id, record in loaded.snapshot.clients.items()
    }


class World:
    def __init__(self, svc: CredentialService, store: SqlStore, material: MaterialService) -> None:
        self.svc, self.store, self.material = svc, store, material
        self.clock: FixedClock = svc._clock  # type: ignore[assignment]
        self.loaded = load_local_snapshot(store, material, self.clock)

    def reload(self) -> tuple[Loaded, Loaded]:
        """A reload from the previous load, checked against a load from nothing."""
        previous = self.loaded
        self.loaded = load_local_snapshot(self.store, self.material, self.clock, previous)
        fresh = load_local_snapshot(self.store, self.material, self.clock)
        assert _records(self.loaded) == _records(fresh)
        assert self.loaded.snapshot.change_seq == fresh.snapshot.change_seq
        return previous, self.loaded


def _site(svc: CredentialService, name: str) -> int:
    created = svc.create_participant(
        ACTOR, name=name, type="publisher", roles=["GENERATOR", "MAPPER", "OPTOUT"]
    )
    return created.site_id


def _key(svc: CredentialService, site: int, name: str = "k") -> str:
    return svc.create_key(ACTOR, site_id=site, name=name, roles=["GENERATOR", "MAPPER"]).key_id


def test_every_change_reloads_to_what_a_load_from_nothing_gives(
    svc: CredentialService, store: SqlStore, material: MaterialService
) -> None:
    world = World(svc, store, material)
    site_a, site_b = _site(svc, "A"), _site(svc, "B")
    keys_a = [_key(svc, site_a, f"a{i}") for i in range(3)]
    key_b = _key(svc, site_b, "b")
    world.reload()

    changes: list[tuple[str, Callable[[], object], set[str]]] = [
        ("rename", lambda: svc.rename_key(ACTOR, keys_a[0], name="renamed"), {keys_a[0]}),
        (
            "narrow key",
            lambda: svc.set_key_roles(ACTOR, keys_a[1], roles=["MAPPER"]),
            {keys_a[1]},
        ),
        ("disable key", lambda: svc.disable_key(ACTOR, keys_a[2]), {keys_a[2]}),
        ("enable key", lambda: svc.enable_key(ACTOR, keys_a[2]), {keys_a[2]}),
        ("revoke", lambda: svc.revoke_key(ACTOR, key_b, reason="leaked"), {key_b}),
        ("rotate secret", lambda: svc.rotate_secret(ACTOR, keys_a[0], grace_days=1), {keys_a[0]}),
        # Stopped and deleted in one commit: no row tells of the secret that went.
        (
            "rotate secret now",
            lambda: svc.rotate_secret(ACTOR, keys_a[0], grace_days=0),
            {keys_a[0]},
        ),
        ("disable site", lambda: svc.set_participant_enabled(ACTOR, site_a, False), set(keys_a)),
        ("enable site", lambda: svc.set_participant_enabled(ACTOR, site_a, True), set(keys_a)),
        (
            "narrow site",
            lambda: svc.set_participant_roles(ACTOR, site_b, ["GENERATOR", "MAPPER"]),
            {key_b},
        ),
        ("rotate", lambda: svc.rotate_key(ACTOR, keys_a[1], grace_days=1), {keys_a[1]}),
        ("retire now", lambda: svc.retire_key_now(ACTOR, keys_a[1]), {keys_a[1]}),
    ]
    for what, change, touched in changes:
        change()
        previous, loaded = world.reload()
        kept = previous.snapshot.clients
        for key_id, record in loaded.snapshot.clients.items():
            if key_id in kept:  # not the successor a rotation adds
                assert (record is kept[key_id]) is (key_id not in touched), (what, key_id)

    rotated = svc.rotate_key(ACTOR, keys_a[2], grace_days=0).key_id
    previous, loaded = world.reload()
    assert rotated in loaded.snapshot.clients
    assert len(loaded.snapshot.clients) == 6  # four created, two successors
    assert loaded.snapshot.clients[keys_a[2]].usable_before_ms <= world.clock.now_ms()
    assert loaded.snapshot.clients[keys_a[0]] is previous.snapshot.clients[keys_a[0]]


def test_a_secret_whose_grace_ran_out_leaves_its_record_at_the_next_reload(
    svc: CredentialService, store: SqlStore, material: MaterialService
) -> None:
    world = World(svc, store, material)
    site = _site(svc, "A")
    key_id = _key(svc, site)
    svc.rotate_secret(ACTOR, key_id, grace_days=1)
    _, loaded = world.reload()
    assert len(loaded.snapshot.clients[key_id].secrets) == 2

    world.clock.advance(DAY_MS + 1)
    _key(svc, site, "unrelated")  # any change: the reload it causes drops the retired secret
    _, loaded = world.reload()
    assert len(loaded.snapshot.clients[key_id].secrets) == 1


def test_secrets_deleted_by_the_upkeep_leave_the_records_as_a_load_from_nothing_has_them(
    svc: CredentialService, store: SqlStore, material: MaterialService
) -> None:
    world = World(svc, store, material)
    site = _site(svc, "A")
    overlapping, rotated = _key(svc, site, "o"), _key(svc, site, "r")
    svc.rotate_secret(ACTOR, overlapping, grace_days=1)
    successor = svc.rotate_key(ACTOR, rotated, grace_days=1).key_id
    world.reload()
    world.clock.advance(DAY_MS)
    assert svc.purge_retired_secrets() == 2  # the replaced secret and the rotated key's
    previous, loaded = world.reload()
    assert len(loaded.snapshot.clients[overlapping].secrets) == 1
    assert loaded.snapshot.clients[rotated].secrets == ()
    assert loaded.snapshot.clients[successor] is previous.snapshot.clients[successor]
    assert svc.purge_retired_secrets() == 0


def test_a_participants_origins_reach_its_keys_and_no_other(
    svc: CredentialService, store: SqlStore, material: MaterialService, clock: FixedClock
) -> None:
    world = World(svc, store, material)
    site_a, site_b = _site(svc, "A"), _site(svc, "B")
    key_a, key_b = _key(svc, site_a), _key(svc, site_b)
    world.reload()
    sharing = SharingService(store, KEYRING, Environment.LOCAL, clock, os.urandom)
    sharing.set_domain_names(ACTOR, site_a, ["example.com"])
    previous, loaded = world.reload()
    assert loaded.snapshot.clients[key_b] is previous.snapshot.clients[key_b]
    assert loaded.snapshot.sites[site_a].domain_names == ("example.com",)
    assert key_a in loaded.snapshot.clients


def test_a_store_behind_the_previous_load_is_read_in_full(
    svc: CredentialService, store: SqlStore, material: MaterialService
) -> None:
    world = World(svc, store, material)
    key_id = _key(svc, _site(svc, "A"))
    world.reload()
    credentials = world.loaded.credentials
    assert credentials is not None
    # As if the store were restored from a backup taken before what the worker last read.
    ahead = replace(world.loaded, credentials=replace(credentials, cursor=credentials.cursor + 50))
    svc.revoke_key(ACTOR, key_id, reason="restored")
    world.loaded = ahead
    previous, loaded = world.reload()
    assert loaded.snapshot.clients[key_id] is not previous.snapshot.clients[key_id]
    assert loaded.snapshot.clients[key_id].usable_before_ms == 0


def _copy(source: Path, target: Path) -> None:
    """The whole database file, as a backup or a restore makes it (SQLite's online backup)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()


def test_a_store_restored_and_written_past_the_cursor_is_read_in_full(
    svc: CredentialService,
    store: SqlStore,
    material: MaterialService,
    db_path: Path,
    tmp_path: Path,
) -> None:
    world = World(svc, store, material)
    site = _site(svc, "A")
    kept = _key(svc, site, "kept")
    backup = tmp_path / "backup.db"
    _copy(db_path, backup)
    lost = _key(svc, site, "lost")  # not in the backup
    world.reload()
    cursor = world.loaded.credentials.cursor  # type: ignore[union-attr]
    _copy(backup, db_path)  # restored: the sequence goes back below the worker's cursor
    svc.revoke_key(ACTOR, kept, reason="revoked after the restore")
    while store.change_seq() <= cursor:  # written on past the cursor before the next poll
        _site(svc, "later")
    _, loaded = world.reload()  # checked against a load from nothing inside
    assert lost not in loaded.snapshot.clients
    assert loaded.snapshot.clients[kept].usable_before_ms == 0
