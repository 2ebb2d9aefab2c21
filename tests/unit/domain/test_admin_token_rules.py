from __future__ import annotations

from collections.abc import Callable

import pytest

from uid2_operator.domain.admin_tokens import (
    AdminToken,
    authenticate_admin_token,
    issue_admin_token,
    revoke_admin_token,
    verify_admin_token,
)
from uid2_operator.domain.authorization import ALLOWED, Denied, DenyReason
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import mint_admin_token, mint_api_key
from uid2_operator.domain.roles import AdminRole
from uid2_operator.errors import (
    CredentialRejected,
    InvalidInput,
    InvalidTransition,
    MalformedCredential,
)

PEPPER = bytes(range(1, 33))
T0 = 1_700_000_000_000
LOCAL = Environment.LOCAL


def test_issue_verify_revoke(random: Callable[[int], bytes]) -> None:
    minted = mint_admin_token(LOCAL, PEPPER, random)
    token = issue_admin_token(
        minted, name=" ops ", roles=[AdminRole.MAINTAINER], now_ms=T0, created_by="cli:root"
    )
    assert token == AdminToken(
        minted.key_id, "ops", frozenset({AdminRole.MAINTAINER}), minted.key_hash, T0, "cli:root"
    )
    assert minted.text.split(".")[1] not in repr(token)
    for shown in (minted.key_hash.hex(), repr(minted.key_hash)[2:-1]):
        assert shown not in repr(token)
    found = {token.token_id: token}
    assert (
        verify_admin_token(minted.text, environment=LOCAL, pepper=PEPPER, lookup=found.get) is token
    )
    with pytest.raises(CredentialRejected, match="admin token"):
        verify_admin_token(minted.text, environment=LOCAL, pepper=bytes(32), lookup=found.get)
    assert authenticate_admin_token(token) is ALLOWED

    revoked = revoke_admin_token(token, now_ms=T0 + 1, by="admin:x")
    assert (revoked.revoked_at_ms, revoked.revoked_by) == (T0 + 1, "admin:x")
    assert authenticate_admin_token(revoked) == Denied(DenyReason.TOKEN_REVOKED)
    with pytest.raises(InvalidTransition, match="already revoked"):
        revoke_admin_token(revoked, now_ms=T0 + 2, by="admin:x")


def test_issue_refusals(random: Callable[[int], bytes]) -> None:
    with pytest.raises(InvalidInput, match="not an admin token"):
        issue_admin_token(
            mint_api_key(LOCAL, 1001, PEPPER, random),
            name="x", roles=[AdminRole.READ_ONLY], now_ms=T0, created_by="a",
        )  # fmt: skip
    with pytest.raises(InvalidInput, match="at least one role"):
        issue_admin_token(
            mint_admin_token(LOCAL, PEPPER, random), name="x", roles=[], now_ms=T0, created_by="a"
        )


def test_an_api_key_is_not_an_admin_token(random: Callable[[int], bytes]) -> None:
    minted = mint_api_key(LOCAL, 1001, PEPPER, random)
    looked_up: list[str] = []
    with pytest.raises(MalformedCredential):
        verify_admin_token(
            minted.text, environment=LOCAL, pepper=PEPPER,
            lookup=looked_up.append,
        )  # fmt: skip
    assert looked_up == []
