"""Rotation refuses a key past its hard expiry: a successor would start a new lifetime.

A key created with ``expires_at_ms`` stops at that instant, and rotation must not bring it back
under another id. Up to the last millisecond before expiry it still rotates; from expiry on it is
refused with a message naming the key id (never its text), changing nothing. Retire-now of an
expired key stays allowed (it does not make the key work again); secret rotation is refused, as
a new secret for a key that no longer authenticates would be shown once and never work.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_operator.domain.authorization import Denied, DenyReason
from uid2_operator.domain.credentials import (
    ApiKey,
    KeyState,
    SealedSecret,
    authenticate,
    is_expired,
    is_retired,
    issue_api_key,
)
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import MintedCredential, mint_api_key
from uid2_operator.domain.lifecycle import (
    DAY_MS,
    retire_now,
    rotate_key,
    rotate_secret,
)
from uid2_operator.domain.participants import Participant, ParticipantType, new_participant
from uid2_operator.domain.roles import ClientRole
from uid2_operator.errors import InvalidTransition

PEPPER = bytes(range(1, 33))
T0 = 1_700_000_000_000
SITE = 1001
LIFETIME_MS = 30 * DAY_MS


class _Bytes:
    """A reproducible byte stream (SHA-256 in counter mode)."""

    def __init__(self) -> None:
        self._counter = 0

    def __call__(self, size: int) -> bytes:
        out = b""
        while len(out) < size:
            out += hashlib.sha256(b"expired-rotation" + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
        return out[:size]


def _participant() -> Participant:
    return new_participant(
        site_id=SITE,
        name="Example Publisher",
        type=ParticipantType.PUBLISHER,
        allowed_roles=frozenset({ClientRole.GENERATOR}),
        contacts=["ops@example.com"],
        now_ms=T0,
    )


def _world(
    expires_at_ms: int | None = T0 + LIFETIME_MS,
) -> tuple[Participant, str, ApiKey, MintedCredential]:
    """A participant, a key's text and record (created at T0), and a minted successor."""
    random = _Bytes()
    participant = _participant()
    minted = mint_api_key(Environment.LOCAL, SITE, PEPPER, random)
    key = issue_api_key(
        minted,
        participant,
        name="web",
        roles=[ClientRole.GENERATOR],
        now_ms=T0,
        created_by="admin:test",
        expires_at_ms=expires_at_ms,
    )
    successor = mint_api_key(Environment.LOCAL, SITE, PEPPER, random)
    return participant, minted.text, key, successor


@pytest.mark.parametrize("after_expiry_ms", [0, 1, DAY_MS, 400 * DAY_MS])
def test_rotating_an_expired_key_is_refused(after_expiry_ms: int) -> None:
    participant, text, key, successor = _world()
    assert key.expires_at_ms is not None
    now = key.expires_at_ms + after_expiry_ms
    assert authenticate(key, participant, now) == Denied(DenyReason.KEY_EXPIRED)

    with pytest.raises(InvalidTransition) as refused:
        rotate_key(key, successor, participant, now_ms=now, by="admin:b")

    message = str(refused.value)
    assert message == (
        f"Cannot rotate API key {key.key_id}: it has expired; create a new key instead"
    )
    assert text not in message
    assert successor.text not in message
    assert successor.key_id not in message


@pytest.mark.parametrize("grace_ms", [0, DAY_MS])
def test_a_grace_of_zero_does_not_make_an_expired_key_rotatable(grace_ms: int) -> None:
    participant, _, key, successor = _world()
    assert key.expires_at_ms is not None
    with pytest.raises(InvalidTransition, match="has expired"):
        rotate_key(
            key,
            successor,
            participant,
            now_ms=key.expires_at_ms,
            by="admin:b",
            grace_ms=grace_ms,
            name="web-2",
        )


def test_the_last_millisecond_before_expiry_still_rotates() -> None:
    participant, _, key, successor = _world()
    assert key.expires_at_ms is not None
    now = key.expires_at_ms - 1
    assert not is_expired(key, now)

    rotation = rotate_key(key, successor, participant, now_ms=now, by="admin:b")

    assert rotation.old.rotated_to == successor.key_id
    assert rotation.successor.expires_at_ms == now + LIFETIME_MS


def test_a_key_without_expiry_rotates_at_any_time() -> None:
    participant, _, key, successor = _world(expires_at_ms=None)
    now = T0 + 10 * 365 * DAY_MS
    rotation = rotate_key(key, successor, participant, now_ms=now, by="admin:b")
    assert rotation.successor.expires_at_ms is None


@settings(deadline=None)
@given(
    lifetime_ms=st.integers(min_value=1, max_value=400 * DAY_MS),
    offset_ms=st.integers(min_value=-400 * DAY_MS, max_value=400 * DAY_MS),
)
def test_rotation_never_outlives_an_expiry_that_has_passed(
    lifetime_ms: int, offset_ms: int
) -> None:
    participant, _, key, successor = _world(expires_at_ms=T0 + lifetime_ms)
    now = max(T0, T0 + lifetime_ms + offset_ms)
    if is_expired(key, now):
        with pytest.raises(InvalidTransition, match="has expired"):
            rotate_key(key, successor, participant, now_ms=now, by="admin:b")
        return
    rotation = rotate_key(key, successor, participant, now_ms=now, by="admin:b")
    assert rotation.successor.expires_at_ms == now + lifetime_ms


def test_state_refusals_keep_their_own_message_for_an_expired_key() -> None:
    participant, _, key, successor = _world()
    assert key.expires_at_ms is not None
    later = key.expires_at_ms + 1
    disabled = replace(key, state=KeyState.DISABLED)
    with pytest.raises(InvalidTransition, match="it is disabled"):
        rotate_key(disabled, successor, participant, now_ms=later, by="admin:b")
    rotated = replace(key, rotated_to="UID2-C-L-1001-abcDEF", retires_at_ms=later + DAY_MS)
    with pytest.raises(InvalidTransition, match="already rotated"):
        rotate_key(rotated, successor, participant, now_ms=later, by="admin:b")


def test_retire_now_of_an_expired_key_stays_allowed_and_secret_rotation_is_refused() -> None:
    """Retiring does not bring the key back: its expiry still refuses it afterwards."""
    participant, _, key, successor = _world()
    assert key.expires_at_ms is not None
    rotation = rotate_key(key, successor, participant, now_ms=T0 + 1, by="admin:b")
    old = rotation.old
    later = key.expires_at_ms + DAY_MS

    secrets = [SealedSecret(1, old.key_id, 1, b"ct", T0)]
    with pytest.raises(InvalidTransition, match=f"secret of API key {old.key_id}: it has expired"):
        rotate_secret(replace(old, retires_at_ms=None), secrets, now_ms=later, grace_ms=0)

    retired = retire_now(replace(old, retires_at_ms=later + DAY_MS), later)
    assert retired.retires_at_ms == later
    assert is_retired(retired, later)
    assert authenticate(retired, participant, later) == Denied(DenyReason.KEY_EXPIRED)
