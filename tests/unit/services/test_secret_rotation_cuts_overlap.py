"""A secret rotation with a shorter grace also stops older secrets still inside an overlap."""

from __future__ import annotations

from service_fixtures import ACTOR, opens

from uid2_operator.clock import FixedClock
from uid2_operator.domain.lifecycle import DAY_MS
from uid2_operator.services.credentials import CredentialService
from uid2_operator.storage import SqlStore
from uid2_operator.wire.encoding import b64decode


def test_rotating_with_no_grace_stops_a_secret_still_in_an_earlier_overlap(
    svc: CredentialService, clock: FixedClock, store: SqlStore
) -> None:
    site = svc.create_participant(ACTOR, name="P", type="publisher", roles=["GENERATOR"]).site_id
    issued = svc.create_key(ACTOR, site_id=site, name="web", roles=["GENERATOR"])
    s1 = issued.secret
    s2 = svc.rotate_secret(ACTOR, issued.key_id, grace_days=7).secret
    clock.advance(DAY_MS)
    assert opens(svc, issued.key, s1, clock.now_ms())  # S1 is still in its 7-day overlap

    leaked = svc.rotate_secret(ACTOR, issued.key_id, grace_days=0)

    now = clock.now_ms()
    assert leaked.previous_secret_retires_at_ms == now
    assert not opens(svc, issued.key, s1, now)
    assert not opens(svc, issued.key, s2, now)
    assert opens(svc, issued.key, leaked.secret, now)
    assert svc.resolve_client(issued.key).secrets == (b64decode(leaked.secret),)
    with store.read() as tx:
        stored = tx.secrets.list_for_key(issued.key_id)
    # Stopped now, so deleted now: a backup taken later holds nothing that opens old traffic.
    assert [s.retires_at_ms for s in stored] == [None]
    last = svc.list_audit(ACTOR, action="key.rotate_secret")[-1]
    assert last.after is not None
    assert last.after["previous_secret_retires_at_ms"] == now


def test_a_longer_grace_reports_its_end_and_keeps_an_earlier_overlap(
    svc: CredentialService, clock: FixedClock
) -> None:
    site = svc.create_participant(ACTOR, name="P", type="publisher", roles=["GENERATOR"]).site_id
    issued = svc.create_key(ACTOR, site_id=site, name="web", roles=["GENERATOR"])
    svc.rotate_secret(ACTOR, issued.key_id, grace_days=1)
    later = svc.rotate_secret(ACTOR, issued.key_id, grace_days=7)
    assert later.previous_secret_retires_at_ms == clock.now_ms() + 7 * DAY_MS
    clock.advance(DAY_MS)
    assert not opens(svc, issued.key, issued.secret, clock.now_ms())  # its own 1 day is over
