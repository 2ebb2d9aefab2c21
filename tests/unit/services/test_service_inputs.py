"""Bad arguments (as a JSON body could carry them) are refused cleanly and change nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from service_fixtures import ACTOR

from uid2_operator.clock import FixedClock
from uid2_operator.errors import (
    AlreadyExists,
    DomainError,
    InvalidInput,
    MalformedCredential,
    NotFound,
)
from uid2_operator.services.context import Actor
from uid2_operator.services.credentials import CredentialService
from uid2_operator.storage import SqlStore


@pytest.fixture
def seeded(svc: CredentialService) -> tuple[int, str, str]:
    site = svc.create_participant(
        ACTOR, name="P", type="publisher", roles=["GENERATOR", "MAPPER"]
    ).site_id
    issued = svc.create_key(ACTOR, site_id=site, name="k", roles=["GENERATOR"])
    return site, issued.key_id, issued.key


Call = Callable[[CredentialService, int, str, str], Any]
HUGE = "x" * 100_000

BAD_CALLS: dict[str, tuple[Call, type[DomainError]]] = {
    "participant name not a string": (
        lambda s, _site, _k, _t: s.create_participant(ACTOR, name=5, type="publisher"),
        InvalidInput,
    ),
    "participant huge name": (
        lambda s, _site, _k, _t: s.create_participant(ACTOR, name=HUGE, type="publisher"),
        InvalidInput,
    ),
    "participant name with NUL": (
        lambda s, _site, _k, _t: s.create_participant(ACTOR, name="a\x00b", type="publisher"),
        InvalidInput,
    ),
    "participant bad type": (
        lambda s, _site, _k, _t: s.create_participant(ACTOR, name="n", type="bank"),
        InvalidInput,
    ),
    "participant type not a string": (
        lambda s, _site, _k, _t: s.create_participant(ACTOR, name="n", type=["publisher"]),
        InvalidInput,
    ),
    "participant reserved site id": (
        lambda s, _site, _k, _t: s.create_participant(ACTOR, name="n", type="dsp", site_id=2),
        InvalidInput,
    ),
    "participant site id as text": (
        lambda s, _site, _k, _t: s.create_participant(ACTOR, name="n", type="dsp", site_id="7"),
        InvalidInput,
    ),
    "participant site id as bool": (
        lambda s, _site, _k, _t: s.create_participant(ACTOR, name="n", type="dsp", site_id=True),
        InvalidInput,
    ),
    "participant taken site id": (
        lambda s, site, _k, _t: s.create_participant(ACTOR, name="n", type="dsp", site_id=site),
        AlreadyExists,
    ),
    "participant bad role": (
        lambda s, _site, _k, _t: s.create_participant(ACTOR, name="n", type="dsp", roles=["ROOT"]),
        InvalidInput,
    ),
    "participant roles as a bare string": (
        lambda s, _site, _k, _t: s.create_participant(
            ACTOR, name="n", type="dsp", roles="GENERATOR"
        ),
        InvalidInput,
    ),
    "participant roles holding a number": (
        lambda s, _site, _k, _t: s.create_participant(ACTOR, name="n", type="dsp", roles=[1]),
        InvalidInput,
    ),
    "participant too many roles": (
        lambda s, _site, _k, _t: s.create_participant(
            ACTOR, name="n", type="dsp", roles=["GENERATOR"] * 101
        ),
        InvalidInput,
    ),
    "participant bad contact": (
        lambda s, _site, _k, _t: s.create_participant(
            ACTOR, name="n", type="dsp", contacts=["not an address"]
        ),
        InvalidInput,
    ),
    "participant contacts not a list": (
        lambda s, _site, _k, _t: s.create_participant(
            ACTOR, name="n", type="dsp", contacts={"a": "b"}
        ),
        InvalidInput,
    ),
    "show unknown participant": (lambda s, _site, _k, _t: s.get_participant(ACTOR, 999), NotFound),
    "disable unknown participant": (
        lambda s, _site, _k, _t: s.set_participant_enabled(ACTOR, 999, False),
        NotFound,
    ),
    "enabled not a bool": (
        lambda s, site, _k, _t: s.set_participant_enabled(ACTOR, site, "no"),
        InvalidInput,
    ),
    "participant roles of unknown site": (
        lambda s, _site, _k, _t: s.set_participant_roles(ACTOR, 999, ["GENERATOR"]),
        NotFound,
    ),
    "key for unknown site": (
        lambda s, _site, _k, _t: s.create_key(ACTOR, site_id=999, name="k", roles=["GENERATOR"]),
        NotFound,
    ),
    "key bad role": (
        lambda s, site, _k, _t: s.create_key(ACTOR, site_id=site, name="k", roles=["ADMIN"]),
        InvalidInput,
    ),
    "key without roles": (
        lambda s, site, _k, _t: s.create_key(ACTOR, site_id=site, name="k", roles=[]),
        InvalidInput,
    ),
    "key huge name": (
        lambda s, site, _k, _t: s.create_key(ACTOR, site_id=site, name=HUGE, roles=["MAPPER"]),
        InvalidInput,
    ),
    "key empty name": (
        lambda s, site, _k, _t: s.create_key(ACTOR, site_id=site, name="  ", roles=["MAPPER"]),
        InvalidInput,
    ),
    "key expiry zero": (
        lambda s, site, _k, _t: s.create_key(
            ACTOR, site_id=site, name="k", roles=["MAPPER"], expires_in_days=0
        ),
        InvalidInput,
    ),
    "key expiry as text": (
        lambda s, site, _k, _t: s.create_key(
            ACTOR, site_id=site, name="k", roles=["MAPPER"], expires_in_days="30"
        ),
        InvalidInput,
    ),
    "list keys of unknown site": (
        lambda s, _site, _k, _t: s.key_page(ACTOR, site_id=999).items,
        NotFound,
    ),
    "show unknown key": (
        lambda s, _site, _k, _t: s.get_key(ACTOR, "UID2-C-L-3-AAAAAA"),
        NotFound,
    ),
    "show malformed key id": (lambda s, _site, _k, _t: s.get_key(ACTOR, "nope"), InvalidInput),
    "show key id as a number": (lambda s, _site, _k, _t: s.get_key(ACTOR, 42), InvalidInput),
    "show by the full key text": (lambda s, _site, _k, text: s.get_key(ACTOR, text), InvalidInput),
    "rename to a huge name": (
        lambda s, _site, kid, _t: s.rename_key(ACTOR, kid, name=HUGE),
        InvalidInput,
    ),
    "rename unknown key": (
        lambda s, _site, _k, _t: s.rename_key(ACTOR, "UID2-C-L-3-AAAAAA", name="n"),
        NotFound,
    ),
    "set a role the participant lacks": (
        lambda s, _site, kid, _t: s.set_key_roles(ACTOR, kid, roles=["OPTOUT"]),
        InvalidInput,
    ),
    "disable unknown key": (
        lambda s, _site, _k, _t: s.disable_key(ACTOR, "UID2-C-L-3-AAAAAA"),
        NotFound,
    ),
    "enable an active key": (
        lambda s, _site, kid, _t: s.enable_key(ACTOR, kid),
        DomainError,
    ),
    "revoke with a huge reason": (
        lambda s, _site, kid, _t: s.revoke_key(ACTOR, kid, reason=HUGE),
        InvalidInput,
    ),
    "revoke with no reason": (
        lambda s, _site, kid, _t: s.revoke_key(ACTOR, kid, reason=None),
        InvalidInput,
    ),
    "rotate with negative grace": (
        lambda s, _site, kid, _t: s.rotate_key(ACTOR, kid, grace_days=-1),
        InvalidInput,
    ),
    "rotate with grace beyond the limit": (
        lambda s, _site, kid, _t: s.rotate_key(ACTOR, kid, grace_days=91),
        InvalidInput,
    ),
    "rotate with grace as a float": (
        lambda s, _site, kid, _t: s.rotate_key(ACTOR, kid, grace_days=1.5),
        InvalidInput,
    ),
    "rotate unknown key": (
        lambda s, _site, _k, _t: s.rotate_key(ACTOR, "UID2-C-L-3-AAAAAA"),
        NotFound,
    ),
    "rotate secret with bad grace": (
        lambda s, _site, kid, _t: s.rotate_secret(ACTOR, kid, grace_days="7"),
        InvalidInput,
    ),
    "audit limit zero": (lambda s, _site, _k, _t: s.list_audit(ACTOR, limit=0), InvalidInput),
    "audit action not text": (lambda s, _site, _k, _t: s.list_audit(ACTOR, action=3), InvalidInput),
    "resolve a non-string": (lambda s, _site, _k, _t: s.resolve_client(None), MalformedCredential),
}


@pytest.mark.parametrize("case", list(BAD_CALLS), ids=list(BAD_CALLS))
def test_bad_input_is_refused_and_changes_nothing(
    case: str,
    svc: CredentialService,
    store: SqlStore,
    seeded: tuple[int, str, str],
    clock: FixedClock,
) -> None:
    call, error = BAD_CALLS[case]
    site, key_id, key_text = seeded
    before = (store.change_seq(), store.snapshot(clock.now_ms()), svc.list_audit(ACTOR))
    with pytest.raises(error) as caught:
        call(svc, site, key_id, key_text)
    assert key_text not in caught.value.detail
    assert len(caught.value.detail) < 300
    assert (store.change_seq(), store.snapshot(clock.now_ms()), svc.list_audit(ACTOR)) == before


@pytest.mark.parametrize(
    ("actor_id", "request_id", "source"),
    [("", None, None), ("x" * 201, None, None), ("a", "r" * 129, None), ("a", None, "\x00")],
)
def test_an_actor_is_bounded(actor_id: str, request_id: str | None, source: str | None) -> None:
    with pytest.raises(InvalidInput):
        Actor(actor_id, request_id=request_id, source=source)


def test_the_next_site_id_skips_the_reserved_ones(svc: CredentialService) -> None:
    first = svc.create_participant(ACTOR, name="a", type="dsp")
    explicit = svc.create_participant(ACTOR, name="b", type="dsp", site_id=100)
    after = svc.create_participant(ACTOR, name="c", type="data_provider")
    assert (first.site_id, explicit.site_id, after.site_id) == (3, 100, 101)
    assert [p.site_id for p in svc.participant_page(ACTOR).items] == [3, 100, 101]


def test_the_highest_allowed_site_id_taken_the_lowest_free_one_comes_next(
    svc: CredentialService,
) -> None:
    svc.create_participant(ACTOR, name="top", type="dsp", site_id=2**31 - 1)
    svc.create_participant(ACTOR, name="four", type="dsp", site_id=4)
    assert svc.create_participant(ACTOR, name="next", type="dsp").site_id == 3
    assert svc.create_participant(ACTOR, name="then", type="dsp").site_id == 5


def test_participant_fields_are_cleaned(svc: CredentialService) -> None:
    view = svc.create_participant(
        ACTOR,
        name="  Acme  ",
        type=" DSP ",
        roles=["id_reader", "GENERATOR"],
        contacts=["ops@acme.example", "OPS@acme.example"],
    )
    assert view.to_json() == {
        "site_id": 3,
        "name": "Acme",
        "type": "dsp",
        "roles": ["GENERATOR", "ID_READER"],
        "enabled": True,
        "contacts": ["ops@acme.example"],
        "created_at_ms": view.created_at_ms,
        "updated_at_ms": view.created_at_ms,
    }


NAMED_CALLS: dict[str, Callable[[CredentialService, int, str, str], Any]] = {
    "participant create": lambda s, _site, _k, name: s.create_participant(
        ACTOR, name=name, type="publisher"
    ),
    "key rotate": lambda s, _site, kid, name: s.rotate_key(ACTOR, kid, name=name),
    "key create": lambda s, site, _k, name: s.create_key(
        ACTOR, site_id=site, name=name, roles=["GENERATOR"]
    ),
    "key rename": lambda s, _site, kid, name: s.rename_key(ACTOR, kid, name=name),
    "key revoke": lambda s, _site, kid, reason: s.revoke_key(ACTOR, kid, reason=reason),
}


@pytest.mark.parametrize("length", [201, 1_001, 100_000])
@pytest.mark.parametrize("case", list(NAMED_CALLS), ids=list(NAMED_CALLS))
def test_a_name_too_long_is_refused_with_the_bounds_of_a_name(
    case: str, length: int, svc: CredentialService, seeded: tuple[int, str, str]
) -> None:
    site, key_id, _key_text = seeded
    what = "reason" if case == "key revoke" else "name"
    with pytest.raises(InvalidInput) as caught:
        NAMED_CALLS[case](svc, site, key_id, "n" * length)
    assert caught.value.detail == f"{what} must be 1 to 200 characters"
