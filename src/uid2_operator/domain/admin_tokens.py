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
