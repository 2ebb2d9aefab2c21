"""A sharing change that creates the participant's keyset does not rotate it.

The keyset and its first key are created in the change's own transaction, so no reader can have
fetched that key: narrowing the default choice (bidders, for a publisher holding GENERATOR)
removes nobody who saw it, and a second key would only be a key nobody needed, with an audit
event that claims a revocation.
"""

from __future__ import annotations

import os

from service_fixtures import ACTOR, KEYRING

from uid2_operator.clock import FixedClock
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.participants import ParticipantType, new_participant
from uid2_operator.domain.roles import ClientRole
from uid2_operator.services.material import MaterialConfig, MaterialService
from uid2_operator.services.sharing import SharingService
from uid2_operator.storage import SqlStore

OWNER, EXISTING = 2001, 2002


def _participant(store: SqlStore, site_id: int, now_ms: int) -> None:
    with store.transaction() as tx:
        tx.participants.add(
            new_participant(
                site_id=site_id,
                name=f"Site {site_id}",
                type=ParticipantType.PUBLISHER,
                allowed_roles=frozenset({ClientRole.GENERATOR, ClientRole.SHARER}),
                contacts=[],
                now_ms=now_ms,
            )
        )


def _service(store: SqlStore, clock: FixedClock) -> SharingService:
    material = MaterialService(
        store, KEYRING, MaterialConfig(bucket_count=64, chunk_size=64), clock, os.urandom
    )
    _participant(store, EXISTING, clock.now_ms())
    material.initialise(ACTOR)  # EXISTING gets its keyset here, OWNER (added later) does not
    _participant(store, OWNER, clock.now_ms())
    return SharingService(store, KEYRING, Environment.LOCAL, clock, os.urandom, material=material)


def _key_events(store: SqlStore, site_id: int) -> list[dict[str, object]]:
    with store.read() as rx:
        return [
            e.after
            for e in rx.audit.list_events(action="encryption_key.create")
            if e.after is not None and e.after.get("site_id") == site_id
        ]


def test_narrowing_a_keyset_the_change_creates_mints_no_second_key(
    store: SqlStore, clock: FixedClock
) -> None:
    sharing = _service(store, clock)
    with store.read() as rx:
        assert all(k.site_id != OWNER for k in rx.keysets.list_all())

    view = sharing.set_sharing(ACTOR, OWNER, mode="owner_only")

    assert view.changed
    assert view.rotated_key_ids == ()
    with store.read() as rx:
        [keyset] = [k for k in rx.keysets.list_all() if k.site_id == OWNER]
        assert len(rx.encryption_keys.list_for_keyset(keyset.keyset_id)) == 1
        [change] = [e for e in rx.audit.list_events(action="keyset.sharing") if e.site_id == OWNER]
    events = _key_events(store, OWNER)
    assert len(events) == 1
    assert all(e.get("reason") != "sharing_revoked" for e in events)
    assert change.before is not None
    assert change.before["mode"] == "bidders"
    assert change.after is not None
    assert change.after["rotation_needed"] is False
    assert change.after["rotated_key_ids"] == []


def test_narrowing_a_keyset_that_already_existed_still_rotates_it(
    store: SqlStore, clock: FixedClock
) -> None:
    sharing = _service(store, clock)
    view = sharing.set_sharing(ACTOR, EXISTING, mode="owner_only")
    assert len(view.rotated_key_ids) == 1
    assert [e.get("reason") for e in _key_events(store, EXISTING)][-1] == "sharing_revoked"
