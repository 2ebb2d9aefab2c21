"""API keys and client secrets: the records, and the pure rules around them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from uid2_operator.domain.authorization import (
    ALLOWED,
    Decision,
    Denied,
    DenyReason,
    authorize_endpoint,
)
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import CredentialKind, MintedCredential, verify
from uid2_operator.domain.participants import Participant, validate_name
from uid2_operator.domain.roles import ClientRole
from uid2_operator.errors import InvalidInput, InvalidTransition


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


def validate_key_roles(
    roles: Iterable[ClientRole], participant: Participant
) -> frozenset[ClientRole]:
    """A key's roles: a non-empty subset of what its participant may grant."""
    wanted = frozenset(roles)
    if not wanted:
        raise InvalidInput("An API key needs at least one role")
    not_allowed = wanted - participant.allowed_roles
    if not_allowed:
        raise InvalidInput(_roles_not_allowed(not_allowed, participant))
    return wanted


def _roles_not_allowed(not_allowed: frozenset[ClientRole], participant: Participant) -> str:
    """The refusal, with what the participant may grant and how to widen that (role names and
    the site id only)."""
    site = participant.site_id
    names = ", ".join(sorted(not_allowed))
    may = ", ".join(sorted(participant.allowed_roles)) or "no roles"
    widened = ",".join(sorted(participant.allowed_roles | not_allowed))
    return (
        f"Role(s) not allowed for participant {site}: {names} (it may grant {may}). "
        f"To change its roles: uid2-operator participant set-roles {site} --roles {widened} "
        f"(admin API: PUT /admin/api/participants/{site}/roles)"
    )


def effective_roles(key: ApiKey, participant: Participant) -> frozenset[ClientRole]:
    """The roles a request may use: the key's, narrowed to what the participant may hold *now*.

    Taking a role away from a participant therefore takes it away from every key at once.
    """
    return key.roles & participant.allowed_roles


def issue_api_key(
    minted: MintedCredential,
    participant: Participant,
    *,
    name: str,
    roles: Iterable[ClientRole],
    now_ms: int,
    created_by: str,
    expires_at_ms: int | None = None,
) -> ApiKey:
    """The record for a newly minted key (its text and secret go to the holder, once)."""
    if minted.kind is not CredentialKind.CLIENT or minted.site_id != participant.site_id:
        raise InvalidInput("The minted key does not belong to this participant")
    if not participant.enabled:
        raise InvalidTransition(f"Participant {participant.site_id} is disabled")
    if expires_at_ms is not None and expires_at_ms <= now_ms:
        raise InvalidInput("expires_at must be in the future")
    return ApiKey(
        key_id=minted.key_id,
        site_id=participant.site_id,
        name=validate_name(name),
        roles=validate_key_roles(roles, participant),
        state=KeyState.ACTIVE,
        key_hash=minted.key_hash,
        created_at_ms=now_ms,
        created_by=created_by,
        updated_at_ms=now_ms,
        expires_at_ms=expires_at_ms,
    )


def verify_api_key(
    text: str,
    *,
    environment: Environment,
    pepper: bytes,
    lookup: Callable[[str], ApiKey | None],
) -> ApiKey:
    """Shape, checksum and environment first; then one lookup by key id; then a constant-time
    compare of keyed hashes. The record's state is judged by ``authenticate``."""
    return verify(
        text,
        kind=CredentialKind.CLIENT,
        environment=environment,
        pepper=pepper,
        lookup=lookup,
        stored_hash=_key_hash,
    )


def _key_hash(key: ApiKey) -> bytes:
    return key.key_hash


def is_expired(key: ApiKey, now_ms: int) -> bool:
    return key.expires_at_ms is not None and key.expires_at_ms <= now_ms


def is_retired(key: ApiKey, now_ms: int) -> bool:
    return key.retires_at_ms is not None and key.retires_at_ms <= now_ms


def key_usable(key: ApiKey, now_ms: int) -> bool:
    """Whether the key itself passes ``authenticate`` at ``now_ms``: active, neither expired
    nor retired (its participant is checked there too)."""
    return (
        key.state is KeyState.ACTIVE and not is_expired(key, now_ms) and not is_retired(key, now_ms)
    )


def authenticate(key: ApiKey, participant: Participant, now_ms: int) -> Decision:
    """May this (hash-verified) key be used at ``now_ms``? Checks the participant too."""
    checks = (
        (key.site_id != participant.site_id, DenyReason.PARTICIPANT_MISMATCH),
        (key.state is KeyState.REVOKED, DenyReason.KEY_REVOKED),
        (key.state is KeyState.DISABLED, DenyReason.KEY_DISABLED),
        (not participant.enabled, DenyReason.PARTICIPANT_DISABLED),
        (is_expired(key, now_ms), DenyReason.KEY_EXPIRED),
        (is_retired(key, now_ms), DenyReason.KEY_RETIRED),
    )
    for failed, reason in checks:
        if failed:
            return Denied(reason)
    return ALLOWED


def authorize_request(key: ApiKey, participant: Participant, path: str, now_ms: int) -> Decision:
    """``authenticate``, then the endpoint table with the key's effective roles."""
    decision = authenticate(key, participant, now_ms)
    if isinstance(decision, Denied):
        return decision
    return authorize_endpoint(path, effective_roles(key, participant))


def current_secret(secrets: Iterable[SealedSecret]) -> SealedSecret | None:
    """The newest secret not replaced yet (highest ``secret_id`` without ``retires_at_ms``)."""
    live = [s for s in secrets if s.retires_at_ms is None]
    return max(live, key=lambda s: s.secret_id, default=None)


def still_accepted(retires_at_ms: int | None, now_ms: int) -> bool:
    """Whether a secret that retires at ``retires_at_ms`` (None: not replaced) is accepted at
    ``now_ms``: the rule of ``accepted_secrets``, for a secret in any form (sealed or opened)."""
    return retires_at_ms is None or retires_at_ms > now_ms


def accepted_secrets(secrets: Iterable[SealedSecret], now_ms: int) -> list[SealedSecret]:
    """Secrets a request may be sealed with at ``now_ms``, newest first: the current one and
    replaced ones still inside their overlap window (``retires_at_ms`` in the future)."""
    live = [s for s in secrets if still_accepted(s.retires_at_ms, now_ms)]
    return sorted(live, key=lambda s: s.secret_id, reverse=True)


def purgeable_secrets(secrets: Iterable[SealedSecret], now_ms: int) -> list[SealedSecret]:
    """Secrets past their overlap window: never accepted again, safe to delete."""
    return [s for s in secrets if not still_accepted(s.retires_at_ms, now_ms)]
