"""A snapshot is read from one store state, even when a change commits between its reads.

A snapshot takes three reads (credentials, material, client-side state). A sharing change that
removes a reader writes the narrower list and the keyset's new keys in one transaction; a
snapshot that took the keys from before it and the list from after it would keep sealing tokens
with a key the removed reader already holds. The three reads share one read transaction: a
change that commits during the load is wholly out of it, and in the next load.
"""

from __future__ import annotations

import os

import pytest
from service_fixtures import ACTOR, KEYRING, load_local_snapshot

from uid2_operator.clock import FixedClock
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.participants import ParticipantType, new_participant
from uid2_operator.domain.roles import ClientRole
from uid2_operator.services import snapshot_loader
from uid2_operator.services.material import MaterialConfig, MaterialService
from uid2_operator.services.sharing import ClientSideState, SharingService
from uid2_operator.storage import SqlStore

OWNER, READER = 1001, 1002


@pytest.fixture
def world(store: SqlStore, clock: FixedClock) -> tuple[MaterialService, SharingService]:
    with store.transaction() as tx:
        for site in (OWNER, READER):
            tx.participants.add(
                new_participant(
                    site_id=site,
                    name=f"Site {site}",
                    type=ParticipantType.PUBLISHER,
                    allowed_roles=frozenset({ClientRole.GENERATOR, ClientRole.SHARER}),
                    contacts=[],
                    now_ms=clock.now_ms(),
                )
            )
    material = MaterialService(
        store, KEYRING, MaterialConfig(bucket_count=64, chunk_size=64), clock, os.urandom
    )
    material.initialise(ACTOR)
    sharing = SharingService(
        store, KEYRING, Environment.LOCAL, clock, os.urandom, material=material
    )
    sharing.set_sharing(ACTOR, OWNER, mode="list", sites=[READER])
    return material, sharing


def test_a_sharing_change_between_the_reads_is_not_half_taken(
    store: SqlStore,
    clock: FixedClock,
    world: tuple[MaterialService, SharingService],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    material, sharing = world
    before = load_local_snapshot(store, material, clock).snapshot
    held_by_reader = {key.id for key in before.keys_by_id.values()}
    reads = snapshot_loader.read_client_side_state
    changes: list[tuple[int, ...]] = []

    def with_a_change_committing_first(*args: object) -> ClientSideState:
        if not changes:  # after the material was read, once
            view = sharing.set_sharing(ACTOR, OWNER, mode="owner_only")
            changes.append(view.rotated_key_ids)
        return reads(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshot_loader, "read_client_side_state", with_a_change_committing_first)
    during = load_local_snapshot(store, material, clock)
    assert len(changes) == 1
    assert changes[0]  # the change removed a reader, so it rotated the keyset
    # Wholly the state before the change: its list of readers with its keys, and a sequence
    # behind the store's, so the next poll loads again.
    assert during.snapshot.change_seq == before.change_seq < store.change_seq()
    assert during.snapshot.site_key(OWNER, clock.now_ms()).id in held_by_reader
    assert during.snapshot.sharing == before.sharing
    after = load_local_snapshot(store, material, clock, previous=during).snapshot
    assert after.change_seq == store.change_seq()
    minting = after.site_key(OWNER, clock.now_ms())
    assert minting.id in changes[0]
    assert minting.id not in held_by_reader


def test_a_store_written_throughout_a_load_is_read_once(
    store: SqlStore,
    clock: FixedClock,
    world: tuple[MaterialService, SharingService],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each part is read once, however often the store changes meanwhile: on a large store
    written every second, reading again until the parts agree never ends."""
    material, sharing = world
    before = load_local_snapshot(store, material, clock).snapshot
    reads = snapshot_loader.read_client_side_state
    calls: list[int] = []

    def with_a_change_committing_each_time(*args: object) -> ClientSideState:
        calls.append(1)
        if len(calls) % 2:
            sharing.set_sharing(ACTOR, OWNER, mode="owner_only")
        else:
            sharing.set_sharing(ACTOR, OWNER, mode="list", sites=[READER])
        return reads(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(
        snapshot_loader, "read_client_side_state", with_a_change_committing_each_time
    )
    loaded = load_local_snapshot(store, material, clock).snapshot
    assert calls == [1]
    assert loaded.change_seq == before.change_seq < store.change_seq()
