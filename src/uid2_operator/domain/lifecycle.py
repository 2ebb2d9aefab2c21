"""How an API key changes over its life: state transitions, rotation, secret rotation, policy.

States: ``active <-> disabled`` (reversible), ``active | disabled -> revoked``. Revoked is a
terminal tombstone: every later change to a revoked key is refused, so a leaked key that was
revoked can never be brought back by mistake.

Rotation issues a successor with the same site, roles and expiry policy and lets the old key work
for a grace window, so a participant can deploy the new key before the old one stops. A grace of
0 retires the old key at once (for a leak). Secret rotation does the same for the client secret
alone: each previous secret keeps opening requests until its ``retires_at_ms``, which a new
rotation brings forward to now + grace at the latest (so a grace of 0 stops them all).

An expired key cannot be rotated: its expiry ends access, and a successor would start a new
lifetime. Nor can its secret (a new secret for a key that no longer authenticates would be shown
once and never work), but a rotated one can still be retired now. A disabled key's secret can be
rotated: the key may be enabled again, and a leaked secret should be replaced before it is.

Every function returns new records; the caller stores them and writes the audit row in the same
transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from uid2_operator.domain.credentials import (
    ApiKey,
    KeyState,
    SealedSecret,
    is_expired,
    is_retired,
    validate_key_roles,
)
from uid2_operator.domain.key_format import CredentialKind, MintedCredential
from uid2_operator.domain.participants import Participant, validate_name
from uid2_operator.domain.roles import ClientRole
from uid2_operator.errors import InvalidInput, InvalidTransition

DAY_MS = 24 * 60 * 60 * 1000
DEFAULT_GRACE_MS = 7 * DAY_MS
MAX_GRACE_MS = 90 * DAY_MS
DEFAULT_ROTATION_AGE_MS = 365 * DAY_MS

# (from state, action) -> to state. Anything not listed is refused.
TRANSITIONS: dict[tuple[KeyState, str], KeyState] = {
    (KeyState.ACTIVE, "disable"): KeyState.DISABLED,
    (KeyState.DISABLED, "enable"): KeyState.ACTIVE,
    (KeyState.ACTIVE, "revoke"): KeyState.REVOKED,
    (KeyState.DISABLED, "revoke"): KeyState.REVOKED,
}


@dataclass(frozen=True, slots=True)
class Rotation:
    """The old key (now with ``retires_at_ms`` and ``rotated_to``) and its successor."""

    old: ApiKey
    successor: ApiKey


def _transition(key: ApiKey, action: str) -> KeyState:
    target = TRANSITIONS.get((key.state, action))
    if target is None:
        raise InvalidTransition(f"Cannot {action} API key {key.key_id}: it is {key.state.value}")
    return target


def _require_changeable(key: ApiKey, what: str) -> None:
    if key.state is KeyState.REVOKED:
        raise InvalidTransition(f"Cannot {what} API key {key.key_id}: it is revoked")


def _check_grace(grace_ms: int) -> None:
    if not 0 <= grace_ms <= MAX_GRACE_MS:
        raise InvalidInput(f"grace must be between 0 and {MAX_GRACE_MS // DAY_MS} days")


def disable_key(key: ApiKey, now_ms: int) -> ApiKey:
    return replace(key, state=_transition(key, "disable"), updated_at_ms=now_ms)


def enable_key(key: ApiKey, now_ms: int) -> ApiKey:
    return replace(key, state=_transition(key, "enable"), updated_at_ms=now_ms)


def revoke_key(key: ApiKey, *, now_ms: int, by: str, reason: str) -> ApiKey:
    """Terminal. The record stays as a tombstone carrying who, when and why."""
    state = _transition(key, "revoke")
    return replace(
        key,
        state=state,
        updated_at_ms=now_ms,
        revoked_at_ms=now_ms,
        revoked_by=by,
        revoked_reason=validate_name(reason, "reason"),
    )


def rename_key(key: ApiKey, name: str, now_ms: int) -> ApiKey:
    _require_changeable(key, "rename")
    return replace(key, name=validate_name(name), updated_at_ms=now_ms)


def set_key_roles(
    key: ApiKey, roles: Iterable[ClientRole], participant: Participant, now_ms: int
) -> ApiKey:
    _require_changeable(key, "change the roles of")
    return replace(key, roles=validate_key_roles(roles, participant), updated_at_ms=now_ms)


def rotate_key(
    old: ApiKey,
    successor: MintedCredential,
    participant: Participant,
    *,
    now_ms: int,
    by: str,
    grace_ms: int = DEFAULT_GRACE_MS,
    name: str | None = None,
) -> Rotation:
    """Issue ``successor`` in place of ``old``; ``old`` keeps working until now + grace."""
    if old.state is not KeyState.ACTIVE:
        raise InvalidTransition(f"Cannot rotate API key {old.key_id}: it is {old.state.value}")
    if old.rotated_to is not None:
        raise InvalidTransition(f"API key {old.key_id} was already rotated to {old.rotated_to}")
    if is_expired(old, now_ms):
        # A successor would get a fresh lifetime: rotation must not revive an expired key.
        raise InvalidTransition(
            f"Cannot rotate API key {old.key_id}: it has expired; create a new key instead"
        )
    _check_grace(grace_ms)
    if (
        successor.kind is not CredentialKind.CLIENT
        or successor.site_id != old.site_id
        or participant.site_id != old.site_id
    ):
        raise InvalidInput("The successor key must belong to the same participant")
    expires_at_ms = None
    if old.expires_at_ms is not None:
        # Same policy: the successor gets the lifetime the old key was given.
        expires_at_ms = now_ms + max(old.expires_at_ms - old.created_at_ms, 1)
    new = ApiKey(
        key_id=successor.key_id,
        site_id=old.site_id,
        name=old.name if name is None else validate_name(name),
        roles=validate_key_roles(old.roles, participant),
        state=KeyState.ACTIVE,
        key_hash=successor.key_hash,
        created_at_ms=now_ms,
        created_by=by,
        updated_at_ms=now_ms,
        expires_at_ms=expires_at_ms,
        rotated_from=old.key_id,
    )
    retiring = replace(
        old, retires_at_ms=now_ms + grace_ms, rotated_to=successor.key_id, updated_at_ms=now_ms
    )
    return Rotation(old=retiring, successor=new)


def retire_now(key: ApiKey, now_ms: int) -> ApiKey:
    """End a rotated key's grace window at once (the successor keeps working)."""
    _require_changeable(key, "retire")
    if key.rotated_to is None:
        raise InvalidTransition(f"API key {key.key_id} has not been rotated; revoke it instead")
    if key.retires_at_ms is not None and key.retires_at_ms <= now_ms:
        raise InvalidTransition(f"API key {key.key_id} is already retired")
    return replace(key, retires_at_ms=now_ms, updated_at_ms=now_ms)


@dataclass(frozen=True, slots=True)
class SecretRotation:
    """What a secret rotation changes before the new secret is added.

    ``updates``: the key's secrets whose retirement moved (store them). ``previous_retires_at_ms``:
    when the last of the previous secrets stops being accepted (None when none was accepted)."""

    updates: list[SealedSecret]
    previous_retires_at_ms: int | None


def rotate_secret(
    key: ApiKey,
    secrets: Iterable[SealedSecret],
    *,
    now_ms: int,
    grace_ms: int = DEFAULT_GRACE_MS,
) -> SecretRotation:
    """Start replacing the key's secrets: every secret still accepted (the current one, and older
    ones still inside an overlap) retires at ``now + grace`` at the latest. A shorter grace
    therefore also shortens an earlier overlap: a grace of 0 stops every previous secret now. The
    caller adds the new sealed secret in the same transaction.
    """
    _require_changeable(key, "rotate the secret of")
    # A new secret for a key that no longer authenticates would be shown once and never work.
    if is_expired(key, now_ms):
        raise InvalidTransition(
            f"Cannot rotate the secret of API key {key.key_id}: it has expired; create a new key "
            "instead"
        )
    if is_retired(key, now_ms):
        raise InvalidTransition(
            f"Cannot rotate the secret of API key {key.key_id}: it was retired in favour of "
            f"{key.rotated_to}; rotate that key's secret instead"
        )
    _check_grace(grace_ms)
    limit = now_ms + grace_ms
    updates: list[SealedSecret] = []
    retirements: list[int] = []
    for secret in secrets:
        if secret.key_id != key.key_id:
            continue
        if secret.retires_at_ms is not None and secret.retires_at_ms <= now_ms:
            continue  # no longer accepted: nothing to stop
        retires_at = limit if secret.retires_at_ms is None else min(secret.retires_at_ms, limit)
        retirements.append(retires_at)
        if retires_at != secret.retires_at_ms:
            updates.append(replace(secret, retires_at_ms=retires_at))
    return SecretRotation(updates, max(retirements, default=None))


def rotation_due(key: ApiKey, now_ms: int, policy_age_ms: int = DEFAULT_ROTATION_AGE_MS) -> bool:
    """Older than the policy age, and neither revoked nor already rotated."""
    if key.state is KeyState.REVOKED or key.rotated_to is not None:
        return False
    return now_ms - key.created_at_ms >= policy_age_ms
