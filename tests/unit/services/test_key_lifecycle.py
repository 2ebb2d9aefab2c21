"""Every key lifecycle rule, through the services, on a real SQLite file, with a fixed clock."""

from __future__ import annotations

import pytest
from service_fixtures import ACTOR, MakeService, opens

from uid2_operator.clock import FixedClock
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.lifecycle import DAY_MS
from uid2_operator.domain.roles import ClientRole
from uid2_operator.errors import (
    AlreadyExists,
    CredentialRejected,
    InvalidInput,
    InvalidTransition,
    WrongEnvironment,
)
from uid2_operator.services.credentials import CredentialService
from uid2_operator.services.views import IssuedKey
from uid2_operator.storage import SqlStore
from uid2_operator.wire.encoding import b64decode


def _site(svc: CredentialService, roles: tuple[str, ...] = ("GENERATOR", "MAPPER")) -> int:
    return svc.create_participant(ACTOR, name="Publisher", type="publisher", roles=roles).site_id


def _key(svc: CredentialService, site: int, **kwargs: object) -> IssuedKey:
    kwargs.setdefault("roles", ["GENERATOR"])
    return svc.create_key(ACTOR, site_id=site, name="web", **kwargs)


def _denied(svc: CredentialService, key_text: str) -> str:
    with pytest.raises(CredentialRejected) as caught:
        svc.resolve_client(key_text)
    return caught.value.detail


def test_a_new_key_and_secret_open_a_sealed_request(
    svc: CredentialService, clock: FixedClock
) -> None:
    issued = _key(svc, _site(svc))
    client = svc.resolve_client(issued.key)
    assert client.key.key_id == issued.key_id
    assert client.roles == {ClientRole.GENERATOR}
    assert client.secrets == (b64decode(issued.secret),)
    assert opens(svc, issued.key, issued.secret, clock.now_ms())


def test_key_roles_must_be_a_subset_of_the_participants(
    svc: CredentialService, store: SqlStore
) -> None:
    site = _site(svc, roles=("GENERATOR",))
    seq = store.change_seq()
    with pytest.raises(InvalidInput, match="MAPPER"):
        _key(svc, site, roles=["GENERATOR", "MAPPER"])
    assert store.change_seq() == seq
    assert svc.key_page(ACTOR, site_id=site).items == []
    issued = _key(svc, site)
    with pytest.raises(InvalidInput, match="SHARER"):
        svc.set_key_roles(ACTOR, issued.key_id, roles=["SHARER"])
    assert svc.get_key(ACTOR, issued.key_id).roles == ["GENERATOR"]


def test_a_disabled_participant_stops_its_keys(svc: CredentialService) -> None:
    site = _site(svc)
    issued = _key(svc, site)
    svc.set_participant_enabled(ACTOR, site, False)
    assert "participant_disabled" in _denied(svc, issued.key)
    with pytest.raises(InvalidTransition, match="disabled"):
        _key(svc, site)
    with pytest.raises(InvalidTransition, match="disabled"):
        svc.rotate_key(ACTOR, issued.key_id)
    svc.set_participant_enabled(ACTOR, site, True)
    assert svc.resolve_client(issued.key).key.key_id == issued.key_id


def test_a_disabled_key_or_participant_can_have_its_secret_replaced(
    svc: CredentialService, clock: FixedClock
) -> None:
    # A leaked secret is replaced while the key is stopped, before it is enabled again.
    site = _site(svc)
    issued = _key(svc, site)
    svc.disable_key(ACTOR, issued.key_id)
    while_key_disabled = svc.rotate_secret(ACTOR, issued.key_id, grace_days=0)
    svc.enable_key(ACTOR, issued.key_id)
    svc.set_participant_enabled(ACTOR, site, False)
    while_site_disabled = svc.rotate_secret(ACTOR, issued.key_id, grace_days=0)
    svc.set_participant_enabled(ACTOR, site, True)
    now = clock.now_ms()
    assert not opens(svc, issued.key, issued.secret, now)
    assert not opens(svc, issued.key, while_key_disabled.secret, now)
    assert opens(svc, issued.key, while_site_disabled.secret, now)


def test_a_second_participant_with_a_name_already_taken_is_refused(svc: CredentialService) -> None:
    first = svc.create_participant(ACTOR, name="Acme Inc", type="publisher", roles=["GENERATOR"])
    events = len(svc.list_audit(ACTOR))
    for retried in ("Acme Inc", "  ACME   inc "):
        with pytest.raises(AlreadyExists, match=f"Participant {first.site_id} already has"):
            svc.create_participant(ACTOR, name=retried, type="advertiser", site_id=900)
    assert [p.site_id for p in svc.participant_page(ACTOR).items] == [first.site_id]
    assert len(svc.list_audit(ACTOR)) == events
    other = svc.create_participant(ACTOR, name="Acme Inc (EU)", type="publisher")
    assert other.site_id != first.site_id


def test_a_key_of_another_environment_is_refused_naming_it(make_service: MakeService) -> None:
    integ = make_service(Environment.INTEG)
    issued = _key(integ, _site(integ))
    assert issued.key.startswith("UID2-C-I-")
    prod = make_service(Environment.PROD)
    with pytest.raises(WrongEnvironment, match="integ environment; this is the prod environment"):
        prod.resolve_client(issued.key)
    assert integ.resolve_client(issued.key).key.key_id == issued.key_id


def test_revoked_stays_revoked(svc: CredentialService) -> None:
    issued = _key(svc, _site(svc))
    view = svc.revoke_key(ACTOR, issued.key_id, reason="leaked in a log")
    assert (view.state, view.revoked_by, view.revoked_reason) == (
        "revoked",
        ACTOR.id,
        "leaked in a log",
    )
    assert "key_revoked" in _denied(svc, issued.key)
    attempts = [
        lambda: svc.enable_key(ACTOR, issued.key_id),
        lambda: svc.disable_key(ACTOR, issued.key_id),
        lambda: svc.rename_key(ACTOR, issued.key_id, name="again"),
        lambda: svc.set_key_roles(ACTOR, issued.key_id, roles=["GENERATOR"]),
        lambda: svc.rotate_key(ACTOR, issued.key_id),
        lambda: svc.rotate_secret(ACTOR, issued.key_id),
        lambda: svc.revoke_key(ACTOR, issued.key_id, reason="twice"),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidTransition):
            attempt()
    assert svc.get_key(ACTOR, issued.key_id).state == "revoked"
    assert "key_revoked" in _denied(svc, issued.key)


def test_disable_then_enable(svc: CredentialService) -> None:
    issued = _key(svc, _site(svc))
    assert svc.disable_key(ACTOR, issued.key_id).state == "disabled"
    assert "key_disabled" in _denied(svc, issued.key)
    with pytest.raises(InvalidTransition):
        svc.disable_key(ACTOR, issued.key_id)
    assert svc.enable_key(ACTOR, issued.key_id).state == "active"
    assert svc.resolve_client(issued.key).key.state == "active"


def test_rotation_overlaps_then_the_old_key_retires_by_itself(
    svc: CredentialService, clock: FixedClock
) -> None:
    old = _key(svc, _site(svc), roles=["GENERATOR", "MAPPER"])
    new = svc.rotate_key(ACTOR, old.key_id, grace_days=7)
    assert (new.key_id, new.key, new.secret) != (old.key_id, old.key, old.secret)
    assert (new.roles, new.name) == (["GENERATOR", "MAPPER"], "web")
    assert new.key_view.rotated_from == old.key_id
    old_view = svc.get_key(ACTOR, old.key_id)
    assert old_view.rotated_to == new.key_id
    assert old_view.retires_at_ms == clock.now_ms() + 7 * DAY_MS

    clock.advance(7 * DAY_MS - 1)  # the last moment of the overlap: both work
    assert opens(svc, old.key, old.secret, clock.now_ms())
    assert opens(svc, new.key, new.secret, clock.now_ms())

    clock.advance(1)  # the grace has passed: the old key retired with nobody acting
    assert "key_retired" in _denied(svc, old.key)
    assert opens(svc, new.key, new.secret, clock.now_ms())


def test_rotation_with_no_grace_retires_the_old_key_at_once(svc: CredentialService) -> None:
    old = _key(svc, _site(svc))
    new = svc.rotate_key(ACTOR, old.key_id, grace_days=0)
    assert "key_retired" in _denied(svc, old.key)
    assert svc.resolve_client(new.key).key.key_id == new.key_id


def test_a_key_is_rotated_once(svc: CredentialService) -> None:
    old = _key(svc, _site(svc))
    new = svc.rotate_key(ACTOR, old.key_id)
    with pytest.raises(InvalidTransition, match="already rotated"):
        svc.rotate_key(ACTOR, old.key_id)
    assert sorted(k.key_id for k in svc.key_page(ACTOR).items) == sorted([old.key_id, new.key_id])


def test_a_disabled_key_cannot_be_rotated(svc: CredentialService) -> None:
    old = _key(svc, _site(svc))
    svc.disable_key(ACTOR, old.key_id)
    with pytest.raises(InvalidTransition, match="disabled"):
        svc.rotate_key(ACTOR, old.key_id)


def test_secret_rotation_overlaps_then_the_old_secret_stops(
    svc: CredentialService, clock: FixedClock
) -> None:
    issued = _key(svc, _site(svc))
    rotated = svc.rotate_secret(ACTOR, issued.key_id, grace_days=2)
    assert rotated.secret != issued.secret
    assert rotated.previous_secret_retires_at_ms == clock.now_ms() + 2 * DAY_MS
    client = svc.resolve_client(issued.key)
    assert client.secrets == (b64decode(rotated.secret), b64decode(issued.secret))

    clock.advance(2 * DAY_MS - 1)
    assert opens(svc, issued.key, issued.secret, clock.now_ms())
    assert opens(svc, issued.key, rotated.secret, clock.now_ms())
    clock.advance(1)
    assert not opens(svc, issued.key, issued.secret, clock.now_ms())
    assert opens(svc, issued.key, rotated.secret, clock.now_ms())


def test_secret_rotation_with_no_grace_stops_the_old_secret_at_once(
    svc: CredentialService, clock: FixedClock
) -> None:
    issued = _key(svc, _site(svc))
    rotated = svc.rotate_secret(ACTOR, issued.key_id, grace_days=0)
    assert not opens(svc, issued.key, issued.secret, clock.now_ms())
    assert opens(svc, issued.key, rotated.secret, clock.now_ms())


def test_an_expiring_key_stops_at_its_expiry(svc: CredentialService, clock: FixedClock) -> None:
    issued = _key(svc, _site(svc), expires_in_days=30)
    assert issued.expires_at_ms == clock.now_ms() + 30 * DAY_MS
    clock.advance(30 * DAY_MS - 1)
    assert svc.resolve_client(issued.key).key.key_id == issued.key_id
    clock.advance(1)
    assert "key_expired" in _denied(svc, issued.key)


def test_a_successor_keeps_the_expiry_policy(svc: CredentialService, clock: FixedClock) -> None:
    issued = _key(svc, _site(svc), expires_in_days=30)
    clock.advance(10 * DAY_MS)
    new = svc.rotate_key(ACTOR, issued.key_id)
    assert new.expires_at_ms == clock.now_ms() + 30 * DAY_MS


def test_keys_older_than_the_policy_age_are_due_for_rotation(
    svc: CredentialService, clock: FixedClock
) -> None:
    issued = _key(svc, _site(svc))
    assert issued.key_view.rotation_due is False
    clock.advance(365 * DAY_MS - 1)
    assert svc.get_key(ACTOR, issued.key_id).rotation_due is False
    clock.advance(1)
    assert svc.get_key(ACTOR, issued.key_id).rotation_due is True
    assert [k.rotation_due for k in svc.key_page(ACTOR).items] == [True]
    new = svc.rotate_key(ACTOR, issued.key_id)
    assert svc.get_key(ACTOR, issued.key_id).rotation_due is False  # already rotated
    assert new.key_view.rotation_due is False


def test_a_view_says_whether_the_key_itself_authenticates_now(
    svc: CredentialService, clock: FixedClock
) -> None:
    site = _site(svc)
    expiring = _key(svc, site, expires_in_days=1)
    rotated = _key(svc, site)
    disabled = _key(svc, site)
    revoked = _key(svc, site)
    assert expiring.key_view.usable is True
    successor = svc.rotate_key(ACTOR, rotated.key_id, grace_days=1)
    svc.disable_key(ACTOR, disabled.key_id)
    svc.revoke_key(ACTOR, revoked.key_id, reason="leaked")

    def usable() -> dict[str, tuple[str, bool]]:
        return {k.key_id: (k.state, k.usable) for k in svc.key_page(ACTOR).items}

    assert usable() == {
        expiring.key_id: ("active", True),
        rotated.key_id: ("active", True),  # within its grace
        successor.key_id: ("active", True),
        disabled.key_id: ("disabled", False),
        revoked.key_id: ("revoked", False),
    }
    clock.advance(DAY_MS)  # the expiry and the grace both end: the state stays active
    after = usable()
    assert after[expiring.key_id] == ("active", False)
    assert after[rotated.key_id] == ("active", False)
    assert after[successor.key_id] == ("active", True)
    assert svc.get_key(ACTOR, expiring.key_id).to_json()["usable"] is False


def test_the_policy_age_is_a_setting(make_service: MakeService, clock: FixedClock) -> None:
    svc = make_service(rotation_age_ms=30 * DAY_MS)
    issued = _key(svc, _site(svc))
    clock.advance(30 * DAY_MS)
    assert svc.get_key(ACTOR, issued.key_id).rotation_due is True


def test_narrowing_participant_roles_is_refused_while_a_live_key_holds_them(
    svc: CredentialService,
) -> None:
    site = _site(svc)
    issued = _key(svc, site, roles=["MAPPER"])
    with pytest.raises(InvalidInput, match=issued.key_id):
        svc.set_participant_roles(ACTOR, site, ["GENERATOR"])
    assert svc.get_participant(ACTOR, site).roles == ["GENERATOR", "MAPPER"]
    svc.revoke_key(ACTOR, issued.key_id, reason="done")
    assert svc.set_participant_roles(ACTOR, site, ["GENERATOR"]).roles == ["GENERATOR"]


def test_widening_participant_roles_lets_keys_take_them(svc: CredentialService) -> None:
    site = _site(svc, roles=("GENERATOR",))
    svc.set_participant_roles(ACTOR, site, ["GENERATOR", "SHARER"])
    issued = _key(svc, site, roles=["SHARER"])
    assert svc.resolve_client(issued.key).roles == {ClientRole.SHARER}


def test_renaming_keeps_everything_else(svc: CredentialService) -> None:
    issued = _key(svc, _site(svc))
    view = svc.rename_key(ACTOR, issued.key_id, name="  server side  ")
    assert view.name == "server side"
    assert view.roles == issued.roles
    assert svc.resolve_client(issued.key).key.name == "server side"


def test_a_revoked_keys_secrets_stop_at_once(
    svc: CredentialService, store: SqlStore, clock: FixedClock
) -> None:
    issued = _key(svc, _site(svc))
    assert len(store.snapshot(clock.now_ms()).secrets) == 1
    svc.revoke_key(ACTOR, issued.key_id, reason="leak")
    assert store.snapshot(clock.now_ms()).secrets == ()
