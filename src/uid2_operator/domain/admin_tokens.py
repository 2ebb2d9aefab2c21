"""Administrators' bearer tokens for the admin API (hashed like API keys, carrying admin roles)."""

from __future__ import annotations

from dataclasses import dataclass, field

from uid2_operator.domain.roles import AdminRole


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
