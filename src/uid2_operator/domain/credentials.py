"""API keys and client secrets: the records, and the pure rules around them."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from uid2_operator.domain.roles import ClientRole


class KeyState(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"  # reversible
    REVOKED = "revoked"  # terminal; the row stays as a tombstone


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One API key. The plaintext key is never held here: only its keyed hash."""

    key_id: str  # public lookup id, the key's prefix up to the '.', e.g. "UID2-C-L-999-fCXrMM"
    site_id: int  # immutable: the key text embeds it
    name: str
    roles: frozenset[ClientRole]
    state: KeyState
    key_hash: bytes = field(repr=False)  # HMAC-SHA-256(pepper, full key text)
    created_at_ms: int
    created_by: str
    updated_at_ms: int
    expires_at_ms: int | None = None  # optional hard expiry chosen at creation
    retires_at_ms: int | None = None  # end of the grace window after a rotation
    rotated_from: str | None = None  # key_id of the predecessor
    rotated_to: str | None = None  # key_id of the successor
    revoked_at_ms: int | None = None
    revoked_by: str | None = None
    revoked_reason: str | None = None
    last_used_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class SealedSecret:
    """A client secret encrypted at rest under a versioned key-encryption key.

    ``ciphertext`` is AES-256-GCM ``IV || ct || tag`` with the owning ``key_id`` as associated
    data, so a sealed secret copied onto another key's row does not open.
    """

    secret_id: int  # store-assigned, increasing; the highest live one is the current secret
    key_id: str
    kek_version: int
    ciphertext: bytes = field(repr=False)
    created_at_ms: int
    retires_at_ms: int | None = None  # set when a newer secret replaced this one
