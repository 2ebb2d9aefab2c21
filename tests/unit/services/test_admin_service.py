"""Admin tokens through the service: issue once, hash at rest, authenticate, revoke."""

from __future__ import annotations

import os

import pytest
from service_fixtures import ACTOR, KEYRING

from uid2_operator.clock import FixedClock
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import checksum, mint_admin_token
from uid2_operator.errors import (
    CredentialRejected,
    InvalidInput,
    InvalidTransition,
    MalformedCredential,
    NotFound,
    WrongEnvironment,
)
from uid2_operator.services.admin import AdminService
from uid2_operator.services.audit_trail import record_event
from uid2_operator.services.context import Actor
from uid2_operator.storage import SqlStore


def test_a_token_authenticates_until_revoked(admin: AdminService) -> None:
    issued = admin.create_admin_token(ACTOR, name="ops", roles=["MAINTAINER", "read_only"])
    assert issued.roles == ["MAINTAINER", "READ_ONLY"]
    assert issued.token.startswith(issued.token_id + ".")
    view = admin.authenticate(issued.token)
    assert (view.token_id, view.revoked_at_ms) == (issued.token_id, None)
    revoked = admin.revoke_admin_token(ACTOR, issued.token_id)
    assert revoked.revoked_at_ms is not None
    with pytest.raises(CredentialRejected):
        admin.authenticate(issued.token)
    with pytest.raises(InvalidTransition):
        admin.revoke_admin_token(ACTOR, issued.token_id)
    assert [t.token_id for t in admin.list_admin_tokens(ACTOR)] == [issued.token_id]


def test_a_wrong_tail_and_an_unknown_id_are_rejected_alike(admin: AdminService) -> None:
    issued = admin.create_admin_token(ACTOR, name="ops", roles=["READ_ONLY"])
    body = f"{issued.token_id}.{'A' * 33}"
    wrong_tail = body + checksum(body)
    unknown = mint_admin_token(Environment.LOCAL, KEYRING.pepper, os.urandom).text
    messages = set()
    for text in (wrong_tail, unknown):
        with pytest.raises(CredentialRejected) as caught:
            admin.authenticate(text)
        messages.add(caught.value.detail)
    assert messages == {"The admin token is not valid"}


def _head(store: SqlStore) -> object:
    with store.read() as rx:
        return rx.audit.head()


def _record_change(store: SqlStore, token_id: str) -> None:
    actor = Actor(f"admin:{token_id}", admin_token_id=token_id)
    with store.transaction() as tx:
        record_event(
            tx, actor, at_ms=1, action="participant.update", target_type="participant",
            target_id="1001",
        )  # fmt: skip


def test_a_change_by_an_actor_whose_token_is_gone_is_refused_and_rolled_back(
    admin: AdminService, store: SqlStore
) -> None:
    issued = admin.create_admin_token(ACTOR, name="ops", roles=["SUPER_USER"])
    _record_change(store, issued.token_id)  # a token still stored: recorded
    head = _head(store)
    gone = mint_admin_token(Environment.LOCAL, KEYRING.pepper, os.urandom).key_id
    with pytest.raises(CredentialRejected):
        _record_change(store, gone)  # as a token deleted from the store would be
    assert _head(store) == head


def test_tokens_of_another_environment_or_shape_are_refused(
    store: SqlStore, admin: AdminService
) -> None:
    prod = AdminService(store, KEYRING, Environment.PROD, FixedClock(), os.urandom)
    issued = admin.create_admin_token(ACTOR, name="ops", roles=["SUPER_USER"])
    with pytest.raises(WrongEnvironment, match="local environment; this is the prod"):
        prod.authenticate(issued.token)
    for bad in (None, "", "Bearer x", issued.token_id):
        with pytest.raises(MalformedCredential):
            admin.authenticate(bad)


def test_bad_token_requests(admin: AdminService, store: SqlStore) -> None:
    seq = store.change_seq()
    for call in (
        lambda: admin.create_admin_token(ACTOR, name="x", roles=["GENERATOR"]),
        lambda: admin.create_admin_token(ACTOR, name="x", roles=[]),
        lambda: admin.create_admin_token(ACTOR, name="x" * 201, roles=["READ_ONLY"]),
        lambda: admin.create_admin_token(ACTOR, name=1, roles=["READ_ONLY"]),
        lambda: admin.revoke_admin_token(ACTOR, "not-an-id"),
    ):
        with pytest.raises(InvalidInput):
            call()
    with pytest.raises(NotFound):
        admin.revoke_admin_token(ACTOR, "UID2-A-L-0-AAAAAA")
    assert store.change_seq() == seq
    assert admin.list_admin_tokens(ACTOR) == []


def test_the_bootstrap_token_is_made_once(admin: AdminService) -> None:
    first = admin.bootstrap_token(ACTOR)
    assert first is not None
    assert first.roles == ["SUPER_USER"]
    assert admin.bootstrap_token(ACTOR) is None
    assert admin.authenticate(first.token).roles == ["SUPER_USER"]


def test_issued_tokens_hide_their_text(admin: AdminService) -> None:
    issued = admin.create_admin_token(ACTOR, name="ops", roles=["READ_ONLY"])
    assert issued.token not in repr(issued)
    assert issued.token not in str(issued)
    assert issued.to_json()["token"] == issued.token


def test_token_ids_are_redrawn_on_a_clash(store: SqlStore, clock: FixedClock) -> None:
    fixed = b"\x01" * 4096

    def same(n: int) -> bytes:
        return fixed[:n]

    service = AdminService(store, KEYRING, Environment.LOCAL, clock, same)
    service.create_admin_token(ACTOR, name="a", roles=["READ_ONLY"])
    with pytest.raises(Exception, match="unused token id"):
        service.create_admin_token(ACTOR, name="b", roles=["READ_ONLY"])
    assert len(service.list_admin_tokens(ACTOR)) == 1
