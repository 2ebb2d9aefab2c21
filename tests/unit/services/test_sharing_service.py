"""Sharing, keypair and origin use cases over a migrated SQLite store."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from service_fixtures import ACTOR, KEYRING
from sqlalchemy import event

from uid2_operator.clock import FixedClock
from uid2_operator.domain.audit import Outcome, verify_chain
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.keypairs import parse_public_key
from uid2_operator.domain.keysets import DAY_S, SharingMode
from uid2_operator.domain.participants import ParticipantType, new_participant
from uid2_operator.domain.roles import ClientRole
from uid2_operator.domain.sharing import ALL_BIDDERS
from uid2_operator.errors import InvalidInput, InvalidTransition, NotFound
from uid2_operator.services.admin import AdminService
from uid2_operator.services.material import MaterialConfig, MaterialService
from uid2_operator.services.sharing import SharingService, read_client_side_state
from uid2_operator.storage import SqlStore
from uid2_operator.wire.cstg import private_key_der, public_key_der

CONFIG = MaterialConfig(bucket_count=64, chunk_size=64)
A, B, C, D = 1001, 1002, 1003, 1004


@pytest.fixture
def material(store: SqlStore, clock: FixedClock) -> MaterialService:
    return MaterialService(store, KEYRING, CONFIG, clock, os.urandom)


@pytest.fixture
def sharing(store: SqlStore, clock: FixedClock, material: MaterialService) -> SharingService:
    with store.transaction() as tx:
        for site, kind in ((A, "publisher"), (B, "publisher"), (C, "publisher"), (D, "dsp")):
            # The publishers generate tokens, so their keysets start shared with bidders.
            roles = (
                {ClientRole.SHARER, ClientRole.GENERATOR}
                if kind == "publisher"
                else {ClientRole.SHARER}
            )
            tx.participants.add(
                new_participant(
                    site_id=site,
                    name=f"Site {site}",
                    type=ParticipantType(kind),
                    allowed_roles=frozenset(roles),
                    contacts=[],
                    now_ms=clock.now_ms(),
                )
            )
    material.initialise(ACTOR)
    return SharingService(store, KEYRING, Environment.LOCAL, clock, os.urandom, material=material)


def _audit(store: SqlStore, action: str) -> list[dict[str, object]]:
    with store.read() as rx:
        return [
            {"before": e.before, "after": e.after, "target": e.target_id}
            for e in rx.audit.list_events(action=action)
        ]


def test_a_site_keyset_starts_shared_with_bidders_and_a_list_replaces_it(
    sharing: SharingService, store: SqlStore
) -> None:
    shown = sharing.show_sharing(ACTOR, A)
    assert shown.policy.mode is SharingMode.BIDDERS
    seq = store.change_seq()
    changed = sharing.set_sharing(ACTOR, A, mode="list", sites=[B], types=["DSP"])
    assert changed.changed
    assert changed.to_json()["sites"] == [B]
    assert changed.to_json()["types"] == ["dsp"]
    assert store.change_seq() == seq + 1
    assert sharing.show_sharing(ACTOR, A).policy == changed.policy
    [event] = _audit(store, "keyset.sharing")
    assert event["before"] == {"mode": "bidders", "sites": [], "types": []}
    after = event["after"]
    assert isinstance(after, dict)
    assert after["mode"] == "list"
    assert after["rotation_needed"] is True  # leaving bidders may drop a reader
    # The same choice again writes nothing.
    again = sharing.set_sharing(ACTOR, A, mode="list", sites=[B], types=["dsp"])
    assert not again.changed
    assert store.change_seq() == seq + 1
    with store.read() as rx:
        assert verify_chain(rx.audit.list_events()).ok


def test_removing_a_reader_rotates_the_keyset_so_new_tokens_use_unseen_keys(
    sharing: SharingService, store: SqlStore, clock: FixedClock
) -> None:
    keyset_id = sharing.show_sharing(ACTOR, A).keyset_id
    sharing.set_sharing(ACTOR, A, mode="list", sites=[B, C])
    # A key scheduled for later was fetched by every reader too: it gets a twin.
    clock.advance(25 * DAY_S * 1000)
    assert sharing._material is not None
    sharing._material.rotate_keys(actor=ACTOR)
    with store.read() as rx:
        before = {k.id: k for k in rx.encryption_keys.list_for_keyset(keyset_id)}
    now_s = clock.now_ms() // 1000
    assert any(k.activates > now_s for k in before.values())
    result = sharing.set_sharing(ACTOR, A, mode="list", sites=[B])
    assert result.rotated_key_ids
    with store.read() as rx:
        after = {k.id: k for k in rx.encryption_keys.list_for_keyset(keyset_id)}
    created = [after[i] for i in result.rotated_key_ids]
    assert all(i not in before for i in result.rotated_key_ids)
    assert any(k.activates == now_s for k in created)
    future = [k for k in before.values() if k.activates > now_s]
    for key in future:
        assert any(
            k.activates == key.activates and k.expires == key.expires and k.id > key.id
            for k in created
        )
    assert [e["after"] for e in _audit(store, "encryption_key.create")][-1]["reason"] == (  # type: ignore[index]
        "sharing_revoked"
    )


def test_rotation_can_be_declined_and_widening_never_rotates(
    sharing: SharingService, store: SqlStore
) -> None:
    assert sharing.set_sharing(ACTOR, A, mode="owner_only", rotate=False).rotated_key_ids == ()
    widened = sharing.set_sharing(ACTOR, A, mode="list", sites=[B])
    assert widened.changed
    assert widened.rotated_key_ids == ()
    assert sharing.set_sharing(ACTOR, A, mode="list", sites=[B, C]).rotated_key_ids == ()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "everyone"}, "Unknown sharing mode"),
        ({"mode": "list"}, "at least one"),
        ({"mode": "list", "sites": [A]}, "owns the keyset"),
        ({"mode": "list", "sites": [4242]}, "No participant with site id 4242"),
        ({"mode": "list", "sites": [1]}, "between"),
        ({"mode": "list", "types": ["martian"]}, "Unknown participant type"),
        ({"mode": "owner_only", "sites": [B]}, "takes no sites"),
        ({"mode": "list", "sites": "1002"}, "list of site ids"),
        ({"mode": "list", "sites": [B], "rotate": "yes"}, "rotate"),
        ({"mode": 3}, "mode must be a string"),
    ],
)
def test_bad_sharing_choices_are_refused_and_change_nothing(
    sharing: SharingService, store: SqlStore, kwargs: dict[str, object], message: str
) -> None:
    seq = store.change_seq()
    with pytest.raises(InvalidInput, match=message):
        sharing.set_sharing(ACTOR, A, **kwargs)
    assert store.change_seq() == seq


def test_a_long_list_of_unknown_sites_is_checked_in_one_read_and_named_briefly(
    sharing: SharingService, store: SqlStore
) -> None:
    # The change holds the store's write lock: one statement per listed site (10,000 allowed)
    # kept every other writer out for seconds before the refusal.
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    listed = list(range(10_000, 20_000))
    event.listen(store.engine, "before_cursor_execute", count)
    try:
        with pytest.raises(InvalidInput) as refused:
            sharing.set_sharing(ACTOR, A, mode="list", sites=listed)
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
    assert refused.value.detail == (
        f"No participant with site id {', '.join(map(str, listed[:10]))} and 9990 more"
    )
    assert len(statements) < 20, statements


def test_a_participant_without_a_keyset_gets_one_or_a_clear_refusal(
    store: SqlStore, clock: FixedClock, sharing: SharingService
) -> None:
    with store.transaction() as tx:
        tx.participants.add(
            new_participant(
                site_id=1009,
                name="late",
                type=ParticipantType.PUBLISHER,
                allowed_roles=frozenset(),
                contacts=[],
                now_ms=1,
            )
        )
    bare = SharingService(store, KEYRING, Environment.LOCAL, clock, os.urandom)
    seq = store.change_seq()
    for service in (bare, sharing):  # a read needs no keyset, and creates none
        shown = service.show_sharing(ACTOR, 1009)
        # a publisher: its keyset will be shared with bidders, whatever its roles
        assert (shown.site_id, shown.keyset_id, shown.policy) == (1009, None, ALL_BIDDERS)
        assert (shown.changed, shown.rotated_key_ids) == (False, ())
    assert store.change_seq() == seq
    with pytest.raises(NotFound, match="no keyset"):
        bare.set_sharing(ACTOR, 1009, mode="owner_only")
    assert sharing.set_sharing(ACTOR, 1009, mode="owner_only").changed
    assert sharing.show_sharing(ACTOR, 1009).keyset_id is not None
    with pytest.raises(NotFound):
        sharing.show_sharing(ACTOR, 4242)


def test_a_missing_keyset_is_created_in_the_sharing_change_s_own_transaction(
    store: SqlStore, clock: FixedClock, sharing: SharingService
) -> None:
    with store.transaction() as tx:
        tx.participants.add(
            new_participant(
                site_id=1010,
                name="late",
                type=ParticipantType.PUBLISHER,
                allowed_roles=frozenset(),
                contacts=[],
                now_ms=1,
            )
        )
    seq = store.change_seq()
    # A refused change leaves nothing behind, not even the keyset it would have needed.
    with pytest.raises(InvalidInput, match="No participant with site id 4242"):
        sharing.set_sharing(ACTOR, 1010, mode="list", sites=[4242])
    assert store.change_seq() == seq
    with store.read() as rx:
        assert all(k.site_id != 1010 for k in rx.keysets.list_all())
    # An accepted one creates the keyset, its first key, and the choice in one commit.
    view = sharing.set_sharing(ACTOR, 1010, mode="list", sites=[A])
    assert store.change_seq() == seq + 1
    with store.read() as rx:
        [keyset] = [k for k in rx.keysets.list_all() if k.site_id == 1010]
        assert rx.encryption_keys.list_for_keyset(keyset.keyset_id)
    assert view.keyset_id == keyset.keyset_id


def test_keypairs_are_created_sealed_listed_disabled_and_deleted(
    sharing: SharingService, store: SqlStore
) -> None:
    view = sharing.create_keypair(ACTOR, site_id=A, name="web", contact="ops@example.com")
    assert view.public_key.startswith("UID2-X-L-")
    der = parse_public_key(view.public_key, Environment.LOCAL)
    other = sharing.create_keypair(ACTOR, site_id=B)
    assert other.subscription_id != view.subscription_id
    assert [k.subscription_id for k in sharing.list_keypairs(ACTOR, site_id=A)] == [
        view.subscription_id
    ]
    assert len(sharing.list_keypairs(ACTOR)) == 2
    assert sharing.get_keypair(ACTOR, view.subscription_id) == view
    state = read_client_side_state(store, KEYRING)
    [opened] = [k for k in state.keypairs if k.subscription_id == view.subscription_id]
    assert public_key_der(opened.private_key.public_key()) == der
    assert "private" not in repr(state)
    # The private key is nowhere in a read: not in views, not in the audit trail.
    private_forms = _forms(opened.private_key)
    text = json.dumps([v.to_json() for v in sharing.list_keypairs(ACTOR)])
    with store.read() as rx:
        text += json.dumps([(e.before, e.after) for e in rx.audit.list_events()])
    assert not any(form in text for form in private_forms)

    disabled = sharing.set_keypair_disabled(ACTOR, view.subscription_id, True)
    assert disabled.disabled
    with pytest.raises(InvalidTransition):
        sharing.set_keypair_disabled(ACTOR, view.subscription_id, True)
    assert not sharing.set_keypair_disabled(ACTOR, view.subscription_id, False).disabled
    gone = sharing.delete_keypair(ACTOR, view.subscription_id)
    assert gone.subscription_id == view.subscription_id
    with pytest.raises(NotFound):
        sharing.get_keypair(ACTOR, view.subscription_id)
    actions = [e.action for e in _events(store) if e.target_id == view.subscription_id]
    assert actions == ["keypair.create", "keypair.disable", "keypair.enable", "keypair.delete"]


@pytest.mark.parametrize("length", [1, 1_001, 100_000], ids=["over", "long", "huge"])
@pytest.mark.parametrize(("what", "limit"), [("name", 200), ("contact", 254)])
def test_a_keypair_text_too_long_is_refused_with_its_own_bound(
    sharing: SharingService, what: str, limit: int, length: int
) -> None:
    text = "n" * (limit + length if length == 1 else length)
    with pytest.raises(InvalidInput) as refused:
        sharing.create_keypair(ACTOR, site_id=A, **{what: text})
    assert refused.value.detail == f"A keypair {what} is at most {limit} characters"
    assert sharing.list_keypairs(ACTOR) == []


def test_keypair_arguments_are_checked(sharing: SharingService) -> None:
    with pytest.raises(NotFound):
        sharing.create_keypair(ACTOR, site_id=4242)
    with pytest.raises(InvalidInput, match="subscription_id must be"):  # never echoed
        sharing.get_keypair(ACTOR, "not an id!")
    with pytest.raises(NotFound):
        sharing.get_keypair(ACTOR, "AbCdEfGh12")
    with pytest.raises(InvalidInput):
        sharing.set_keypair_disabled(ACTOR, "AbCdEfGh12", "yes")
    with pytest.raises(NotFound):
        sharing.list_keypairs(ACTOR, site_id=4242)


def test_no_keypair_is_issued_to_a_disabled_participant(
    sharing: SharingService, store: SqlStore
) -> None:
    # As no API key is: what it could authenticate is refused until it is enabled anyway.
    with store.transaction() as tx:
        site = tx.participants.get(B)
        assert site is not None
        tx.participants.update(replace(site, enabled=False))
    seq = store.change_seq()
    with pytest.raises(InvalidTransition, match=f"^Participant {B} is disabled$"):
        sharing.create_keypair(ACTOR, site_id=B)
    assert (sharing.list_keypairs(ACTOR), store.change_seq()) == ([], seq)


def test_domain_and_app_names_are_validated_sorted_and_audited(
    sharing: SharingService, store: SqlStore
) -> None:
    view = sharing.set_domain_names(ACTOR, A, ["b-example.com", "A.co.uk", "localhost"])
    assert view.domain_names == ("a.co.uk", "b-example.com", "localhost")
    apps = sharing.set_app_names(ACTOR, A, ["com.example.App", "123456789"])
    assert apps.app_names == ("123456789", "com.example.App")
    assert apps.domain_names == view.domain_names
    assert sharing.get_origins(ACTOR, A) == apps
    seq = store.change_seq()
    sharing.set_app_names(ACTOR, A, ["com.example.App", "123456789"])  # unchanged
    assert store.change_seq() == seq
    for bad in (["https://example.com"], ["www.example.com"], ["co.uk"], "example.com"):
        with pytest.raises(InvalidInput):
            sharing.set_domain_names(ACTOR, A, bad)
    with pytest.raises(InvalidInput):
        sharing.set_app_names(ACTOR, A, ["has space"])
    with pytest.raises(NotFound):
        sharing.set_domain_names(ACTOR, 4242, ["example.com"])
    assert store.change_seq() == seq
    assert [e.action for e in _events(store) if e.target_id == str(A)][-2:] == [
        "participant.domains",
        "participant.app_names",
    ]
    state = read_client_side_state(store, KEYRING)
    assert state.site_types[D] is ParticipantType.DSP
    assert {o.site_id: o.domain_names for o in state.origins}[A] == view.domain_names


def test_setting_one_kind_of_origin_keeps_the_other(
    sharing: SharingService, store: SqlStore
) -> None:
    sharing.set_app_names(ACTOR, A, ["com.example.app"])
    view = sharing.set_domain_names(ACTOR, A, ["example.com"])
    assert (view.domain_names, view.app_names) == (("example.com",), ("com.example.app",))
    assert sharing.get_origins(ACTOR, A) == view
    state = read_client_side_state(store, KEYRING)
    [origins] = [o for o in state.origins if o.site_id == A]
    assert (origins.domain_names, origins.app_names) == (("example.com",), ("com.example.app",))


def test_origin_lists_are_bounded_before_duplicates_fold(
    sharing: SharingService, store: SqlStore
) -> None:
    seq = store.change_seq()
    with pytest.raises(InvalidInput, match="domain_names may hold at most 1000 entries"):
        sharing.set_domain_names(ACTOR, A, ["example.com"] * 1001)
    with pytest.raises(InvalidInput, match="app_names may hold at most 1000 entries"):
        sharing.set_app_names(ACTOR, A, ["com.example.app"] * 1001)
    assert store.change_seq() == seq
    assert sharing.set_domain_names(ACTOR, A, ["example.com"] * 1000).domain_names == (
        "example.com",
    )


def test_a_type_list_holds_up_to_twice_the_participant_types(sharing: SharingService) -> None:
    view = sharing.set_sharing(ACTOR, A, mode="list", types=["dsp"] * 8)
    assert view.changed
    with pytest.raises(InvalidInput, match="types may hold at most 8 entries"):
        sharing.set_sharing(ACTOR, A, mode="list", types=["dsp"] * 9)


def test_a_subscription_id_already_taken_is_drawn_again(
    sharing: SharingService, store: SqlStore, clock: FixedClock, material: MaterialService
) -> None:
    # The id draw asks for its 10 characters plus 4 spare bytes; the first two such draws give
    # the same id, so the second keypair's first candidate is taken and it must draw again.
    id_draws = 0

    def random(size: int) -> bytes:
        nonlocal id_draws
        if size == 14:
            id_draws += 1
            if id_draws <= 2:
                return bytes(size)
        return os.urandom(size)

    del sharing  # the participants it set up are this test's; its service draws from urandom
    drawing = SharingService(store, KEYRING, Environment.LOCAL, clock, random, material=material)
    first = drawing.create_keypair(ACTOR, site_id=A)
    second = drawing.create_keypair(ACTOR, site_id=A)
    assert id_draws == 3
    assert first.subscription_id == "1" * 10
    assert second.subscription_id != first.subscription_id


def _events(store: SqlStore) -> list:  # type: ignore[type-arg]
    with store.read() as rx:
        return rx.audit.list_events()


def _forms(key: ec.EllipticCurvePrivateKey) -> list[str]:
    """The private key as text could hold it: PKCS#8 base64 and hex, the scalar in both."""
    der = private_key_der(key)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    return [
        base64.b64encode(der).decode(),
        der.hex(),
        base64.b64encode(scalar).decode().rstrip("="),
        scalar.hex(),
    ]


def test_a_refusal_about_a_keypair_carries_its_participant_s_site(
    sharing: SharingService, store: SqlStore, admin: AdminService
) -> None:
    # Its path names the keypair only; the trail's site filter finds its refusals as it finds
    # its successes.
    keypair = sharing.create_keypair(ACTOR, site_id=A, name="web")
    for target_id, site in ((keypair.subscription_id, A), ("NoSuchPair", None), ("", None)):
        refused = admin.record_refusal(
            ACTOR,
            outcome=Outcome.FAILED,
            action="keypair.enable",
            target_type="keypair",
            target_id=target_id,
            error_code="invalid_transition",
        )
        assert refused.site_id == site
    with store.read() as rx:
        found = rx.audit.list_events(site_id=A, target_type="keypair")
    assert [(e.action, e.outcome) for e in found] == [
        ("keypair.create", Outcome.SUCCESS),
        ("keypair.enable", Outcome.FAILED),
    ]
