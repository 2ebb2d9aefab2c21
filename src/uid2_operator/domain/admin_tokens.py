"""Administrators' bearer tokens for the admin API (hashed like API keys, carrying admin roles)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from uid2_operator.domain.authorization import ALLOWED, Decision, Denied, DenyReason
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import CredentialKind, MintedCredential, verify
from uid2_operator.domain.participants import validate_name
from uid2_operator.domain.roles import AdminRole
from uid2_operator.errors import InvalidInput, InvalidTransition


@dataclass(frozen=True, slots=True)
class AdminToken:
    token_id: str  # public lookup id (the token's prefix)
    name: str
    roles: frozenset[AdminRole]
    token_hash: bytes = field(repr=False)
    created_at_ms: int
    created_by: str
    revoked_at_ms: int | None = None
    revoked_by: str | None = None


def issue_admin_token(
    minted: MintedCredential,
    *,
    name: str,
    roles: Iterable[AdminRole],
    now_ms: int,
    created_by: str,
) -> AdminToken:
    if minted.kind is not CredentialKind.ADMIN:
        raise InvalidInput("The minted credential is not an admin token")
    wanted = frozenset(roles)
    if not wanted:
        raise InvalidInput("An admin token needs at least one role")
    return AdminToken(
        token_id=minted.key_id,
        name=validate_name(name),
        roles=wanted,
        token_hash=minted.key_hash,
        created_at_ms=now_ms,
        created_by=created_by,
    )


def revoke_admin_token(token: AdminToken, *, now_ms: int, by: str) -> AdminToken:
    """Terminal, like a revoked API key."""
    if token.revoked_at_ms is not None:
        raise InvalidTransition(f"Admin token {token.token_id} is already revoked")
    return replace(token, revoked_at_ms=now_ms, revoked_by=by)


def is_active_super_user(token: AdminToken) -> bool:
    """A token that works now and carries SUPER_USER (admin tokens do not expire)."""
    return token.revoked_at_ms is None and AdminRole.SUPER_USER in token.roles


def keep_a_super_user(tokens: Iterable[AdminToken], changed: AdminToken) -> None:
    """Refuse replacing one of ``tokens`` by ``changed`` when that leaves no active SUPER_USER.

    Only SUPER_USER tokens may manage admin tokens, so without one the admin API can no longer
    issue any (the command line still can). A change that does not take away the last one, for
    instance revoking another token where no SUPER_USER token is left already, passes.
    """
    current = list(tokens)
    if not any(is_active_super_user(t) for t in current):
        return
    after = [changed if t.token_id == changed.token_id else t for t in current]
    if not any(is_active_super_user(t) for t in after):
        raise InvalidTransition(
            f"Admin token {changed.token_id} is the last active SUPER_USER token; "
            "create another SUPER_USER token first"
        )


def verify_admin_token(
    text: str,
    *,
    environment: Environment,
    pepper: bytes,
    lookup: Callable[[str], AdminToken | None],
) -> AdminToken:
    """As for API keys: shape, checksum, environment, one lookup, constant-time compare."""
    return verify(
        text,
        kind=CredentialKind.ADMIN,
        environment=environment,
        pepper=pepper,
        lookup=lookup,
        stored_hash=_token_hash,
    )


def _token_hash(token: AdminToken) -> bytes:
    return token.token_hash


def authenticate_admin_token(token: AdminToken) -> Decision:
    if token.revoked_at_ms is not None:
        return Denied(DenyReason.TOKEN_REVOKED)
    return ALLOWED
