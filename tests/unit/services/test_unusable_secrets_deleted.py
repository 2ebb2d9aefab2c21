"""A client secret no request can be sealed with any more is deleted, not kept sealed in the
store: a database backup and the keyring together must not open old traffic, least of all the
traffic of a secret replaced because it leaked.

A change that stops secrets at once deletes them in its own commit (revoke, retire now, a key or
secret rotation with no grace); those whose time runs out later go at the next
``purge_retired_secrets`` (serve's upkeep runs it with the key rotation schedule). A secret
still inside its overlap, and a disabled key's (which may be enabled again), stay.
"""

from __future__ import annotations

from service_fixtures import ACTOR

from uid2_operator.clock import FixedClock
from uid2_operator.domain.lifecycle import DAY_MS
from uid2_operator.services.credentials import CredentialService
from uid2_operator.storage import SqlStore


def _site(svc: CredentialService) -> int:
    return svc.create_participant(
        ACTOR, name="Publisher", type="publisher", roles=("GENERATOR",)
    ).site_id


def _stored(store: SqlStore, key_id: str) -> list[int | None]:
    with store.read() as rx:
        return [s.retires_at_ms for s in rx.secrets.list_for_key(key_id)]


def test_changes_that_stop_secrets_now_delete_them_in_the_same_commit(
    svc: CredentialService, store: SqlStore
) -> None:
    site = _site(svc)
    revoked, retired, rotated, disabled = (
        svc.create_key(ACTOR, site_id=site, name=name, roles=["GENERATOR"]).key_id
        for name in ("revoked", "retired", "rotated", "disabled")
    )
    svc.revoke_key(ACTOR, revoked, reason="leaked")
    assert _stored(store, revoked) == []

    svc.rotate_key(ACTOR, retired, grace_days=7)
    assert _stored(store, retired) == [None]  # in its grace: still accepted
    svc.retire_key_now(ACTOR, retired)
    assert _stored(store, retired) == []

    successor = svc.rotate_key(ACTOR, rotated, grace_days=0).key_id
    assert (_stored(store, rotated), _stored(store, successor)) == ([], [None])

    svc.disable_key(ACTOR, disabled)
    assert _stored(store, disabled) == [None]  # enabling it again needs its secret


def test_secrets_whose_time_ran_out_go_at_the_next_purge(
    svc: CredentialService, store: SqlStore, clock: FixedClock
) -> None:
    site = _site(svc)
    overlapping = svc.create_key(ACTOR, site_id=site, name="o", roles=["GENERATOR"]).key_id
    expiring = svc.create_key(
        ACTOR, site_id=site, name="e", roles=["GENERATOR"], expires_in_days=2
    ).key_id
    svc.rotate_secret(ACTOR, overlapping, grace_days=1)
    assert svc.purge_retired_secrets() == 0
    assert len(_stored(store, overlapping)) == 2

    clock.advance(DAY_MS)
    assert svc.purge_retired_secrets() == 1
    assert _stored(store, overlapping) == [None]
    clock.advance(DAY_MS)
    assert svc.purge_retired_secrets() == 1
    assert (_stored(store, overlapping), _stored(store, expiring)) == ([None], [])
