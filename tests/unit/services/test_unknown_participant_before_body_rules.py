"""The participant setters look the participant up before they check the rules of what they
were given: a site that names no participant is ``NotFound`` whatever the value, and a
participant that exists still gets the rule's own refusal. Over a migrated SQLite store."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from service_fixtures import ACTOR, KEYRING

from uid2_operator.clock import FixedClock
from uid2_operator.domain.environments import Environment
from uid2_operator.errors import InvalidInput, NotFound
from uid2_operator.services.credentials import CredentialService
from uid2_operator.services.material import MaterialConfig, MaterialService
from uid2_operator.services.sharing import SharingService
from uid2_operator.storage import SqlStore

UNKNOWN = 888888
Change = Callable[[SharingService, CredentialService, int], object]

# Each change breaks a rule for any participant; the text the rule's refusal carries.
CHANGES = [
    pytest.param(
        lambda sharing, _, site: sharing.set_sharing(ACTOR, site, mode="list", sites=[site]),
        "owns the keyset; do not list it",
        id="sharing-lists-its-owner",
    ),
    pytest.param(
        lambda sharing, _, site: sharing.set_sharing(ACTOR, site, mode="everyone"),
        "Unknown sharing mode",
        id="sharing-unknown-mode",
    ),
    pytest.param(
        lambda sharing, _, site: sharing.set_domain_names(ACTOR, site, ["co.uk"]),
        "is a public suffix",
        id="domain-names-public-suffix",
    ),
    pytest.param(
        lambda sharing, _, site: sharing.set_app_names(ACTOR, site, ["com.a,com.b"]),
        "no commas",
        id="app-names-comma",
    ),
    pytest.param(
        lambda _, credentials, site: credentials.set_participant_roles(ACTOR, site, ["NOPE"]),
        "Unknown role",
        id="roles-unknown-name",
    ),
]


@pytest.fixture
def sharing(store: SqlStore, clock: FixedClock) -> SharingService:
    material = MaterialService(
        store, KEYRING, MaterialConfig(bucket_count=64, chunk_size=64), clock, os.urandom
    )
    material.initialise(ACTOR)
    return SharingService(store, KEYRING, Environment.LOCAL, clock, os.urandom, material=material)


@pytest.mark.parametrize(("change", "rule"), CHANGES)
def test_an_unknown_site_is_not_found_before_any_rule(
    sharing: SharingService, svc: CredentialService, store: SqlStore, change: Change, rule: str
) -> None:
    seq = store.change_seq()
    with pytest.raises(NotFound, match=f"No participant {UNKNOWN}"):
        change(sharing, svc, UNKNOWN)
    assert store.change_seq() == seq


@pytest.mark.parametrize(("change", "rule"), CHANGES)
def test_a_known_site_gets_the_rules_refusal(
    sharing: SharingService, svc: CredentialService, store: SqlStore, change: Change, rule: str
) -> None:
    site = svc.create_participant(ACTOR, name="P", type="publisher", roles=["GENERATOR"]).site_id
    seq = store.change_seq()
    with pytest.raises(InvalidInput, match=rule):
        change(sharing, svc, site)
    assert store.change_seq() == seq
