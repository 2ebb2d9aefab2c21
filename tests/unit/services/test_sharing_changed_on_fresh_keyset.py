"""``changed`` of a sharing request that created the participant's keyset.

A participant added since the last upkeep has no keyset; the first sharing request creates it,
with its first key, in its own transaction (both audited). Even when the requested choice is the
default one (bidders, for a publisher holding GENERATOR), that request changed the store, and its
answer says so.
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

OWNER = 2001


def _service(store: SqlStore, clock: FixedClock) -> SharingService:
    material = MaterialService(
        store, KEYRING, MaterialConfig(bucket_count=64, chunk_size=64), clock, os.urandom
    )
    material.initialise(ACTOR)
    with store.transaction() as tx:  # added after the upkeep ran: no keyset yet
        tx.participants.add(
            new_participant(
                site_id=OWNER,
                name="Owner",
                type=ParticipantType.PUBLISHER,
                allowed_roles=frozenset({ClientRole.GENERATOR, ClientRole.SHARER}),
                contacts=[],
                now_ms=clock.now_ms(),
            )
        )
    return SharingService(store, KEYRING, Environment.LOCAL, clock, os.urandom, material=material)


def test_the_default_choice_sent_first_reports_the_keyset_it_created(
    store: SqlStore, clock: FixedClock
) -> None:
    sharing = _service(store, clock)
    seq = store.change_seq()

    view = sharing.set_sharing(ACTOR, OWNER, mode="bidders")

    assert view.changed
    assert view.to_json()["changed"] is True
    assert view.rotated_key_ids == ()
    assert store.change_seq() > seq
    with store.read() as rx:
        [keyset] = [k for k in rx.keysets.list_all() if k.site_id == OWNER]
        assert view.keyset_id == keyset.keyset_id
        assert len(rx.encryption_keys.list_for_keyset(keyset.keyset_id)) == 1
        sharing_events = rx.audit.list_events(action="keyset.sharing")
    assert [e for e in sharing_events if e.site_id == OWNER] == []


def test_the_same_choice_again_changes_nothing(store: SqlStore, clock: FixedClock) -> None:
    sharing = _service(store, clock)
    sharing.set_sharing(ACTOR, OWNER, mode="bidders")
    seq = store.change_seq()

    again = sharing.set_sharing(ACTOR, OWNER, mode="bidders")

    assert not again.changed
    assert store.change_seq() == seq
