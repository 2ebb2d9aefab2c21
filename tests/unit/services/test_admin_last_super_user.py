"""Revoking admin tokens never leaves the store without an active SUPER_USER token.

Only a SUPER_USER token may issue admin tokens through the admin API, so revoking the last one
would lock every administrator out of it. The refusal says how to proceed (issue another first)
and changes nothing; revoked tokens do not count as the remaining one.
"""

from __future__ import annotations

import pytest
from service_fixtures import ACTOR

from uid2_operator.errors import InvalidTransition
from uid2_operator.services.admin import AdminService
from uid2_operator.storage import SqlStore

LAST = "the last active SUPER_USER token; create another SUPER_USER token first"


def test_the_only_super_user_token_cannot_be_revoked(admin: AdminService, store: SqlStore) -> None:
    only = admin.create_admin_token(ACTOR, name="root", roles=["SUPER_USER"])
    seq = store.change_seq()
    with pytest.raises(InvalidTransition, match=LAST) as caught:
        admin.revoke_admin_token(ACTOR, only.token_id)
    assert only.token_id in caught.value.detail
    assert only.token not in caught.value.detail
    assert store.change_seq() == seq
    assert admin.authenticate(only.token).revoked_at_ms is None


def test_the_bootstrap_token_alone_cannot_be_revoked(admin: AdminService) -> None:
    boot = admin.bootstrap_token(ACTOR)
    assert boot is not None
    with pytest.raises(InvalidTransition, match=LAST):
        admin.revoke_admin_token(ACTOR, boot.token_id)


def test_of_two_super_user_tokens_one_may_go(admin: AdminService) -> None:
    first = admin.create_admin_token(ACTOR, name="one", roles=["SUPER_USER"])
    second = admin.create_admin_token(ACTOR, name="two", roles=["SUPER_USER"])
    assert admin.revoke_admin_token(ACTOR, first.token_id).revoked_at_ms is not None
    with pytest.raises(InvalidTransition, match=LAST):
        admin.revoke_admin_token(ACTOR, second.token_id)
    assert admin.authenticate(second.token).revoked_at_ms is None


def test_issuing_a_replacement_first_lets_the_old_one_go(admin: AdminService) -> None:
    old = admin.create_admin_token(ACTOR, name="lost", roles=["SUPER_USER"])
    with pytest.raises(InvalidTransition):
        admin.revoke_admin_token(ACTOR, old.token_id)
    recovery = admin.create_admin_token(ACTOR, name="recovery", roles=["SUPER_USER"])
    assert admin.revoke_admin_token(ACTOR, old.token_id).revoked_at_ms is not None
    assert admin.authenticate(recovery.token).roles == ["SUPER_USER"]


def test_a_token_with_more_roles_than_super_user_counts(admin: AdminService) -> None:
    wide = admin.create_admin_token(ACTOR, name="wide", roles=["READ_ONLY", "SUPER_USER"])
    plain = admin.create_admin_token(ACTOR, name="plain", roles=["SUPER_USER"])
    admin.revoke_admin_token(ACTOR, plain.token_id)
    with pytest.raises(InvalidTransition, match=LAST):
        admin.revoke_admin_token(ACTOR, wide.token_id)


def test_other_tokens_may_be_revoked_beside_the_last_super_user(admin: AdminService) -> None:
    admin.create_admin_token(ACTOR, name="root", roles=["SUPER_USER"])
    for role in ("MAINTAINER", "READ_ONLY"):
        issued = admin.create_admin_token(ACTOR, name=role, roles=[role])
        assert admin.revoke_admin_token(ACTOR, issued.token_id).revoked_at_ms is not None
