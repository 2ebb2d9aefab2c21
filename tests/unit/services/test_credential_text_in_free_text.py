"""A full API key, client secret or admin token pasted into free text is refused and not stored.

Names, revoke reasons, contacts and keypair names/contacts are stored and served in plaintext, so
credential text there is refused with an error naming the field and never echoing the text, and
the refused call leaves nothing behind (no change, no audit event).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from service_fixtures import ACTOR, KEYRING

from uid2_operator.clock import FixedClock
from uid2_operator.domain.environments import Environment
from uid2_operator.errors import InvalidInput
from uid2_operator.services import inputs
from uid2_operator.services.admin import AdminService
from uid2_operator.services.credentials import CredentialService
from uid2_operator.services.material import MaterialConfig, MaterialService
from uid2_operator.services.sharing import SharingService
from uid2_operator.storage import SqlStore

KINDS = ["api key", "client secret", "admin token"]


@pytest.fixture
def pasted(svc: CredentialService, admin: AdminService) -> dict[str, str]:
    """Real credential text: a minted API key, its client secret and an admin token."""
    site = svc.create_participant(ACTOR, name="Source", type="publisher", roles=["GENERATOR"])
    issued = svc.create_key(ACTOR, site_id=site.site_id, name="source", roles=["GENERATOR"])
    token = admin.create_admin_token(ACTOR, name="source", roles=["READ_ONLY"])
    return {"api key": issued.key, "client secret": issued.secret, "admin token": token.token}


@pytest.fixture
def sharing(store: SqlStore, clock: FixedClock) -> SharingService:
    config = MaterialConfig(bucket_count=64, chunk_size=64)
    material = MaterialService(store, KEYRING, config, clock, os.urandom)
    material.initialise(ACTOR)
    return SharingService(store, KEYRING, Environment.LOCAL, clock, os.urandom, material=material)


def _state(store: SqlStore) -> tuple[int, int]:
    with store.read() as tx:
        return store.change_seq(), len(tx.audit.list_events())


def _everything_stored(store: SqlStore) -> str:
    with store.read() as tx:
        return repr(
            (
                tx.participants.list_all(),
                tx.api_keys.list_all(),
                tx.admin_tokens.list_all(),
                tx.keypairs.list_all(),
                [(e.before, e.after) for e in tx.audit.list_events()],
            )
        )


def _refuses(store: SqlStore, call: Callable[[], object], credential: str, field: str) -> None:
    before = _state(store)
    with pytest.raises(InvalidInput) as caught:
        call()
    message = str(caught.value)
    assert f"{field} looks like a credential; never paste one here" in message
    assert credential not in message
    assert credential[-12:] not in message
    assert _state(store) == before
    assert credential not in _everything_stored(store)


@pytest.mark.parametrize("kind", KINDS)
def test_participant_names_and_contacts_refuse_credentials(
    svc: CredentialService, store: SqlStore, pasted: dict[str, str], kind: str
) -> None:
    text = pasted[kind]
    _refuses(
        store,
        lambda: svc.create_participant(ACTOR, name=text, type="publisher", roles=["GENERATOR"]),
        text,
        "name",
    )
    _refuses(
        store,
        lambda: svc.create_participant(
            ACTOR, name="P", type="publisher", contacts=[f"{text}@example.com"]
        ),
        text,
        "contacts",
    )


@pytest.mark.parametrize("kind", KINDS)
def test_key_create_rename_and_revoke_refuse_credentials(
    svc: CredentialService, store: SqlStore, pasted: dict[str, str], kind: str
) -> None:
    text = pasted[kind]
    site = svc.create_participant(ACTOR, name="P", type="publisher", roles=["GENERATOR"]).site_id
    key_id = svc.create_key(ACTOR, site_id=site, name="web", roles=["GENERATOR"]).key_id
    _refuses(
        store,
        lambda: svc.create_key(ACTOR, site_id=site, name=text, roles=["GENERATOR"]),
        text,
        "name",
    )
    _refuses(store, lambda: svc.rename_key(ACTOR, key_id, name=f"web {text}"), text, "name")
    _refuses(store, lambda: svc.revoke_key(ACTOR, key_id, reason=f"leaked: {text}"), text, "reason")
    assert svc.get_key(ACTOR, key_id).state == "active"


@pytest.mark.parametrize("kind", KINDS)
def test_admin_token_names_refuse_credentials(
    admin: AdminService, store: SqlStore, pasted: dict[str, str], kind: str
) -> None:
    text = pasted[kind]
    _refuses(
        store, lambda: admin.create_admin_token(ACTOR, name=text, roles=["READ_ONLY"]), text, "name"
    )


@pytest.mark.parametrize("kind", KINDS)
def test_keypair_names_and_contacts_refuse_credentials(
    svc: CredentialService, sharing: SharingService, store: SqlStore, pasted: dict[str, str],
    kind: str,
) -> None:  # fmt: skip
    text = pasted[kind]
    site = svc.create_participant(ACTOR, name="P", type="publisher", roles=["GENERATOR"]).site_id
    _refuses(store, lambda: sharing.create_keypair(ACTOR, site_id=site, name=text), text, "name")
    _refuses(
        store, lambda: sharing.create_keypair(ACTOR, site_id=site, contact=text), text, "contact"
    )


def test_list_arguments_refuse_credentials_by_entry(pasted: dict[str, str]) -> None:
    for text in pasted.values():
        with pytest.raises(InvalidInput, match="an entry of contacts looks like a credential"):
            inputs.names(["ops@example.com", text], "contacts", max_length=inputs.MAX_TEXT)


def test_a_full_credential_in_an_id_field_keeps_its_own_message(pasted: dict[str, str]) -> None:
    with pytest.raises(InvalidInput, match="never pass the full credential") as caught:
        inputs.credential_id(pasted["api key"], "key_id")
    assert pasted["api key"] not in str(caught.value)


def test_ordinary_names_still_work(
    svc: CredentialService, admin: AdminService, sharing: SharingService
) -> None:
    site = svc.create_participant(
        ACTOR,
        name="Example Publisher 2024",
        type="publisher",
        roles=["GENERATOR"],
        contacts=["ops.team-1@example.co.uk"],
    ).site_id
    key = svc.create_key(ACTOR, site_id=site, name="web-prod.v2", roles=["GENERATOR"])
    assert svc.rename_key(ACTOR, key.key_id, name="api.key-01.eu").name == "api.key-01.eu"
    revoked = svc.revoke_key(ACTOR, key.key_id, reason=f"replaced; {key.key_id} leaked 2024-05")
    assert revoked.state == "revoked"
    assert admin.create_admin_token(ACTOR, name="ci-bot.2", roles=["READ_ONLY"]).name == "ci-bot.2"
    pair = sharing.create_keypair(ACTOR, site_id=site, name="app-1.web", contact="a.b@example.com")
    assert (pair.name, pair.contact) == ("app-1.web", "a.b@example.com")
