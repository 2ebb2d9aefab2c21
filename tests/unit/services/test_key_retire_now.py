"""Retire now: a rotated key's grace ends at once, through the services, on a real SQLite file.

The old key stops resolving, its client secrets leave the operator's snapshot, a reloaded
snapshot refuses it, and its successor keeps working. Every refusal leaves the store as it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from service_fixtures import ACTOR, KEYRING, load_local_snapshot

from uid2_operator.clock import FixedClock
from uid2_operator.domain.authorization import ALLOWED, Denied, DenyReason
from uid2_operator.domain.credentials import authenticate
from uid2_operator.domain.lifecycle import DAY_MS
from uid2_operator.errors import CredentialRejected, InvalidInput, InvalidTransition, NotFound
from uid2_operator.services.credentials import CredentialService
from uid2_operator.services.material import MaterialConfig, MaterialService
from uid2_operator.services.views import IssuedKey
from uid2_operator.storage import SqlStore


def _site(svc: CredentialService) -> int:
    return svc.create_participant(
        ACTOR, name="Publisher", type="publisher", roles=("GENERATOR", "MAPPER")
    ).site_id


def _key(svc: CredentialService, site: int) -> IssuedKey:
    return svc.create_key(ACTOR, site_id=site, name="web", roles=["GENERATOR"])


def _rotated(svc: CredentialService, grace_days: int = 7) -> tuple[IssuedKey, IssuedKey]:
    old = _key(svc, _site(svc))
    return old, svc.rotate_key(ACTOR, old.key_id, grace_days=grace_days)


def _refusal(svc: CredentialService, key_text: str) -> str:
    with pytest.raises(CredentialRejected) as caught:
        svc.resolve_client(key_text)
    return caught.value.detail


def test_retire_now_ends_the_grace_and_the_successor_keeps_working(
    svc: CredentialService, store: SqlStore, clock: FixedClock
) -> None:
    old, new = _rotated(svc)
    clock.advance(DAY_MS)  # well inside the 7-day grace: the old key still works
    assert svc.resolve_client(old.key).key.key_id == old.key_id
    seq = store.change_seq()

    view = svc.retire_key_now(ACTOR, old.key_id)

    assert (view.key_id, view.state, view.retires_at_ms) == (old.key_id, "active", clock.now_ms())
    assert view.rotated_to == new.key_id
    assert "key_retired" in _refusal(svc, old.key)
    assert svc.resolve_client(new.key).key.key_id == new.key_id
    assert store.change_seq() == seq + 1
    events = svc.list_audit(ACTOR, target_id=old.key_id, action="key.retire_now")
    assert len(events) == 1
    assert events[0].actor == ACTOR.id
    assert svc.verify_audit(ACTOR).ok


def test_the_retired_keys_secrets_leave_the_snapshot_at_once(
    svc: CredentialService, store: SqlStore, clock: FixedClock
) -> None:
    old, new = _rotated(svc)
    owners = {s.key_id for s in store.snapshot(clock.now_ms()).secrets}
    assert owners == {old.key_id, new.key_id}
    svc.retire_key_now(ACTOR, old.key_id)
    assert {s.key_id for s in store.snapshot(clock.now_ms()).secrets} == {new.key_id}


def test_a_reloaded_operator_snapshot_refuses_the_retired_key(
    svc: CredentialService, store: SqlStore, clock: FixedClock
) -> None:
    material = MaterialService(
        store, KEYRING, MaterialConfig(bucket_count=64, chunk_size=64), clock, os.urandom
    )
    material.initialise(ACTOR)
    old, new = _rotated(svc)
    loaded = load_local_snapshot(store, material, clock)
    now = clock.now_ms()
    before = loaded.snapshot.client(old.key_id)
    assert before is not None
    assert now < before.usable_before_ms
    assert before.accepted_secrets(now)

    svc.retire_key_now(ACTOR, old.key_id)
    # The store's change sequence moved, so every worker's poller reloads.
    assert loaded.snapshot.change_seq is not None
    assert store.change_seq() > loaded.snapshot.change_seq

    snapshot = load_local_snapshot(store, material, clock, loaded).snapshot
    record = snapshot.client(old.key_id)
    assert record is not None
    assert record.usable_before_ms <= now
    assert authenticate(record.key, record.participant, now) == Denied(DenyReason.KEY_RETIRED)
    assert record.accepted_secrets(now) == []
    successor = snapshot.client(new.key_id)
    assert successor is not None
    assert now < successor.usable_before_ms
    assert authenticate(successor.key, successor.participant, now) is ALLOWED
    assert successor.accepted_secrets(now)


def _never_rotated(svc: CredentialService) -> str:
    return _key(svc, _site(svc)).key_id


def _rotated_with_no_grace(svc: CredentialService) -> str:
    return _rotated(svc, grace_days=0)[0].key_id


def _retired_already(svc: CredentialService) -> str:
    old, _ = _rotated(svc)
    svc.retire_key_now(ACTOR, old.key_id)
    return old.key_id


def _revoked_after_rotation(svc: CredentialService) -> str:
    old, _ = _rotated(svc)
    svc.revoke_key(ACTOR, old.key_id, reason="leaked")
    return old.key_id


def _a_successor(svc: CredentialService) -> str:
    return _rotated(svc)[1].key_id


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_never_rotated, "has not been rotated; revoke it instead"),
        (_rotated_with_no_grace, "is already retired"),
        (_retired_already, "is already retired"),
        (_revoked_after_rotation, "it is revoked"),
        (_a_successor, "has not been rotated"),
    ],
    ids=["never rotated", "rotated with 0 grace", "retired twice", "revoked", "successor"],
)
def test_retire_now_is_refused_and_changes_nothing(
    svc: CredentialService,
    store: SqlStore,
    clock: FixedClock,
    make: Callable[[CredentialService], str],
    message: str,
) -> None:
    key_id = make(svc)
    seq = store.change_seq()
    view = svc.get_key(ACTOR, key_id)
    snapshot = store.snapshot(clock.now_ms())
    with pytest.raises(InvalidTransition, match=message):
        svc.retire_key_now(ACTOR, key_id)
    assert store.change_seq() == seq
    assert svc.get_key(ACTOR, key_id) == view
    assert store.snapshot(clock.now_ms()) == snapshot


def test_an_unknown_or_malformed_key_id_is_refused(svc: CredentialService, store: SqlStore) -> None:
    seq = store.change_seq()
    with pytest.raises(NotFound):
        svc.retire_key_now(ACTOR, "UID2-C-L-3-AAAAAA")
    with pytest.raises(InvalidInput):
        svc.retire_key_now(ACTOR, "not a key id")
    with pytest.raises(InvalidInput):
        svc.retire_key_now(ACTOR, 7)
    assert store.change_seq() == seq
