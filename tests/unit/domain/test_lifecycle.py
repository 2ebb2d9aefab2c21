from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from uid2_operator.domain.authorization import ALLOWED, Denied, DenyReason
from uid2_operator.domain.credentials import (
    ApiKey,
    KeyState,
    SealedSecret,
    accepted_secrets,
    authenticate,
    is_expired,
    is_retired,
    key_usable,
)
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import mint_admin_token, mint_api_key
from uid2_operator.domain.lifecycle import (
    DAY_MS,
    DEFAULT_GRACE_MS,
    DEFAULT_ROTATION_AGE_MS,
    MAX_GRACE_MS,
    TRANSITIONS,
    disable_key,
    enable_key,
    rename_key,
    retire_now,
    revoke_key,
    rotate_key,
    rotate_secret,
    rotation_due,
    set_key_roles,
)
from uid2_operator.domain.participants import Participant
from uid2_operator.domain.roles import ClientRole
from uid2_operator.errors import InvalidInput, InvalidTransition

MakeParticipant = Callable[..., Participant]
MakeKey = Callable[..., tuple[str, ApiKey]]
PEPPER = bytes(range(1, 33))
T0 = 1_700_000_000_000
G, M = ClientRole.GENERATOR, ClientRole.MAPPER


def test_transition_table() -> None:
    assert TRANSITIONS == {
        (KeyState.ACTIVE, "disable"): KeyState.DISABLED,
        (KeyState.DISABLED, "enable"): KeyState.ACTIVE,
        (KeyState.ACTIVE, "revoke"): KeyState.REVOKED,
        (KeyState.DISABLED, "revoke"): KeyState.REVOKED,
    }


def test_disable_enable_round_trip(make_key: MakeKey) -> None:
    _, key = make_key()
    disabled = disable_key(key, T0 + 1)
    assert (disabled.state, disabled.updated_at_ms) == (KeyState.DISABLED, T0 + 1)
    with pytest.raises(InvalidTransition, match=r"Cannot disable .* it is disabled"):
        disable_key(disabled, T0 + 2)
    enabled = enable_key(disabled, T0 + 3)
    assert enabled.state is KeyState.ACTIVE
    with pytest.raises(InvalidTransition, match="it is active"):
        enable_key(enabled, T0 + 4)


@pytest.mark.parametrize("start", [KeyState.ACTIVE, KeyState.DISABLED])
def test_revoke_records_the_tombstone(make_key: MakeKey, start: KeyState) -> None:
    _, key = make_key()
    revoked = revoke_key(replace(key, state=start), now_ms=T0 + 9, by="admin:a", reason=" leak ")
    assert revoked.state is KeyState.REVOKED
    assert (revoked.revoked_at_ms, revoked.revoked_by, revoked.revoked_reason) == (
        T0 + 9,
        "admin:a",
        "leak",
    )
    with pytest.raises(InvalidInput):
        revoke_key(key, now_ms=T0, by="a", reason=" ")


def test_revoked_is_terminal(
    make_key: MakeKey, make_participant: MakeParticipant, random: Callable[[int], bytes]
) -> None:
    participant = make_participant()
    _, key = make_key(participant=participant)
    revoked = revoke_key(key, now_ms=T0, by="a", reason="leak")
    successor = mint_api_key(Environment.LOCAL, 1001, PEPPER, random)
    secrets = [SealedSecret(1, key.key_id, 1, b"ct", T0)]
    attempts: list[Callable[[], object]] = [
        lambda: disable_key(revoked, T0),
        lambda: enable_key(revoked, T0),
        lambda: revoke_key(revoked, now_ms=T0, by="a", reason="again"),
        lambda: rename_key(revoked, "new", T0),
        lambda: set_key_roles(revoked, [G], participant, T0),
        lambda: rotate_key(revoked, successor, participant, now_ms=T0, by="a"),
        lambda: rotate_key(revoked, successor, participant, now_ms=T0, by="a", grace_ms=0),
        lambda: rotate_secret(revoked, secrets, now_ms=T0),
        lambda: retire_now(replace(revoked, rotated_to="x", retires_at_ms=T0 + 5), T0),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidTransition, match="revoked"):
            attempt()
    assert authenticate(revoked, participant, T0) == Denied(DenyReason.KEY_REVOKED)


def test_rename_and_set_roles(make_key: MakeKey, make_participant: MakeParticipant) -> None:
    participant = make_participant(roles=frozenset({G, M}))
    _, key = make_key(participant=participant)
    assert rename_key(key, " api ", T0 + 1).name == "api"
    changed = set_key_roles(key, [M], participant, T0 + 2)
    assert (changed.roles, changed.updated_at_ms) == ({M}, T0 + 2)
    with pytest.raises(InvalidInput, match="OPTOUT"):
        set_key_roles(key, [ClientRole.OPTOUT], participant, T0)


def test_rotation_with_grace_window(
    make_key: MakeKey, make_participant: MakeParticipant, random: Callable[[int], bytes]
) -> None:
    participant = make_participant()
    _, key = make_key(participant=participant)
    minted = mint_api_key(Environment.LOCAL, 1001, PEPPER, random)
    now = T0 + 1000
    rotation = rotate_key(key, minted, participant, now_ms=now, by="admin:b")
    old, new = rotation.old, rotation.successor
    assert old.retires_at_ms == now + DEFAULT_GRACE_MS == now + 7 * DAY_MS
    assert (old.rotated_to, new.rotated_from) == (minted.key_id, key.key_id)
    assert (new.key_id, new.key_hash, new.site_id) == (minted.key_id, minted.key_hash, 1001)
    assert (new.name, new.roles, new.state) == (key.name, key.roles, KeyState.ACTIVE)
    assert (new.created_at_ms, new.created_by, new.expires_at_ms) == (now, "admin:b", None)
    # Both work during the grace window; the old one stops exactly at retires_at.
    assert authenticate(old, participant, now + DEFAULT_GRACE_MS - 1) is ALLOWED
    assert authenticate(new, participant, now + DEFAULT_GRACE_MS - 1) is ALLOWED
    assert authenticate(old, participant, now + DEFAULT_GRACE_MS) == Denied(DenyReason.KEY_RETIRED)
    assert authenticate(old, participant, now + DEFAULT_GRACE_MS + 1) == Denied(
        DenyReason.KEY_RETIRED
    )
    assert authenticate(new, participant, now + DEFAULT_GRACE_MS) is ALLOWED
    assert is_retired(old, now + DEFAULT_GRACE_MS)
    assert not is_retired(old, now + DEFAULT_GRACE_MS - 1)
    assert not is_retired(new, now + DEFAULT_GRACE_MS)
    # Rotating again is refused: the key already has a successor.
    other = mint_api_key(Environment.LOCAL, 1001, PEPPER, random)
    with pytest.raises(InvalidTransition, match="already rotated"):
        rotate_key(old, other, participant, now_ms=now, by="a")


def test_grace_zero_retires_at_once(
    make_key: MakeKey, make_participant: MakeParticipant, random: Callable[[int], bytes]
) -> None:
    participant = make_participant()
    _, key = make_key(participant=participant)
    minted = mint_api_key(Environment.LOCAL, 1001, PEPPER, random)
    rotation = rotate_key(key, minted, participant, now_ms=T0, by="a", grace_ms=0, name="v2")
    assert rotation.old.retires_at_ms == T0
    assert authenticate(rotation.old, participant, T0) == Denied(DenyReason.KEY_RETIRED)
    assert rotation.successor.name == "v2"


def test_rotation_refusals(
    make_key: MakeKey, make_participant: MakeParticipant, random: Callable[[int], bytes]
) -> None:
    participant = make_participant(roles=frozenset({G, M}))
    _, key = make_key(participant=participant)
    minted = mint_api_key(Environment.LOCAL, 1001, PEPPER, random)

    with pytest.raises(InvalidTransition, match="disabled"):
        rotate_key(disable_key(key, T0), minted, participant, now_ms=T0, by="a")
    for grace in (-1, MAX_GRACE_MS + 1):
        with pytest.raises(InvalidInput, match="grace"):
            rotate_key(key, minted, participant, now_ms=T0, by="a", grace_ms=grace)
    assert rotate_key(key, minted, participant, now_ms=T0, by="a", grace_ms=MAX_GRACE_MS)
    foreign = [
        mint_api_key(Environment.LOCAL, 1002, PEPPER, random),
        mint_admin_token(Environment.LOCAL, PEPPER, random),
    ]
    for successor in foreign:
        with pytest.raises(InvalidInput, match="same participant"):
            rotate_key(key, successor, participant, now_ms=T0, by="a")
    with pytest.raises(InvalidInput, match="same participant"):
        rotate_key(key, minted, make_participant(site_id=1002), now_ms=T0, by="a")
    narrowed = replace(participant, allowed_roles=frozenset({M}))
    with pytest.raises(InvalidInput, match="GENERATOR"):
        rotate_key(key, minted, narrowed, now_ms=T0, by="a")


def test_rotation_keeps_the_expiry_policy(
    make_key: MakeKey, make_participant: MakeParticipant, random: Callable[[int], bytes]
) -> None:
    participant = make_participant()
    _, key = make_key(participant=participant, expires_at_ms=T0 + 90 * DAY_MS)
    minted = mint_api_key(Environment.LOCAL, 1001, PEPPER, random)
    rotation = rotate_key(key, minted, participant, now_ms=T0 + DAY_MS, by="a")
    assert rotation.successor.expires_at_ms == T0 + DAY_MS + 90 * DAY_MS


def test_retire_now(
    make_key: MakeKey, make_participant: MakeParticipant, random: Callable[[int], bytes]
) -> None:
    participant = make_participant()
    _, key = make_key(participant=participant)
    with pytest.raises(InvalidTransition, match="not been rotated"):
        retire_now(key, T0)
    minted = mint_api_key(Environment.LOCAL, 1001, PEPPER, random)
    old = rotate_key(key, minted, participant, now_ms=T0, by="a").old
    retired = retire_now(old, T0 + 5)
    assert retired.retires_at_ms == T0 + 5
    assert authenticate(retired, participant, T0 + 5) == Denied(DenyReason.KEY_RETIRED)
    with pytest.raises(InvalidTransition, match="already retired"):
        retire_now(retired, T0 + 6)
    assert retire_now(replace(old, retires_at_ms=None), T0).retires_at_ms == T0


def test_secret_rotation_overlap(make_key: MakeKey) -> None:
    _, key = make_key()
    older = SealedSecret(1, key.key_id, 1, b"a", T0, retires_at_ms=T0 + 50)
    current = SealedSecret(2, key.key_id, 1, b"b", T0)
    foreign = SealedSecret(3, "UID2-C-L-1001-otherK", 1, b"c", T0)
    now = T0 + 10
    rotation = rotate_secret(key, [older, current, foreign], now_ms=now, grace_ms=DAY_MS)
    assert rotation.updates == [replace(current, retires_at_ms=now + DAY_MS)]
    assert rotation.previous_retires_at_ms == now + DAY_MS
    updated = rotation.updates
    newest = SealedSecret(4, key.key_id, 1, b"d", now)
    after = [older, updated[0], newest]
    assert accepted_secrets(after, now + DAY_MS - 1) == [newest, updated[0]]
    assert accepted_secrets(after, now + DAY_MS) == [newest]
    # An overlap that ends before now + grace is left as it is.
    assert rotate_secret(key, [older], now_ms=now).updates == []
    assert rotate_secret(key, [older], now_ms=now).previous_retires_at_ms == T0 + 50
    assert rotate_secret(disable_key(key, now), [current], now_ms=now, grace_ms=0).updates == [
        replace(current, retires_at_ms=now)
    ]
    with pytest.raises(InvalidInput):
        rotate_secret(key, [current], now_ms=now, grace_ms=-1)


def test_no_new_secret_for_a_key_that_no_longer_authenticates(make_key: MakeKey) -> None:
    _, key = make_key(expires_at_ms=T0 + 10)
    current = SealedSecret(1, key.key_id, 1, b"a", T0)
    assert rotate_secret(key, [current], now_ms=T0 + 9).previous_retires_at_ms is not None
    with pytest.raises(InvalidTransition, match="it has expired"):
        rotate_secret(key, [current], now_ms=T0 + 10)
    rotated = replace(key, expires_at_ms=None, rotated_to="UID2-C-L-1001-next00")
    within_grace = replace(rotated, retires_at_ms=T0 + 10)
    assert rotate_secret(within_grace, [current], now_ms=T0 + 9).updates
    with pytest.raises(InvalidTransition, match="retired in favour of UID2-C-L-1001-next00"):
        rotate_secret(within_grace, [current], now_ms=T0 + 10)


def test_a_shorter_grace_also_cuts_an_earlier_overlap(make_key: MakeKey) -> None:
    """S1 rotated with 7 days (-> S2), then S1 leaks: a rotation with grace 0 stops S1 and S2."""
    _, key = make_key()
    s1 = SealedSecret(1, key.key_id, 1, b"a", T0)
    first = rotate_secret(key, [s1], now_ms=T0, grace_ms=7 * DAY_MS)
    s2 = SealedSecret(2, key.key_id, 1, b"b", T0)
    now = T0 + DAY_MS
    second = rotate_secret(key, [*first.updates, s2], now_ms=now, grace_ms=0)
    assert second.updates == [replace(s1, retires_at_ms=now), replace(s2, retires_at_ms=now)]
    assert second.previous_retires_at_ms == now
    s3 = SealedSecret(3, key.key_id, 1, b"c", now)
    assert accepted_secrets([*second.updates, s3], now) == [s3]


def test_a_longer_grace_never_extends_an_earlier_overlap(make_key: MakeKey) -> None:
    _, key = make_key()
    s1 = SealedSecret(1, key.key_id, 1, b"a", T0, retires_at_ms=T0 + DAY_MS)
    s2 = SealedSecret(2, key.key_id, 1, b"b", T0)
    gone = SealedSecret(0, key.key_id, 1, b"z", T0, retires_at_ms=T0)
    rotation = rotate_secret(key, [gone, s1, s2], now_ms=T0, grace_ms=7 * DAY_MS)
    assert rotation.updates == [replace(s2, retires_at_ms=T0 + 7 * DAY_MS)]
    assert rotation.previous_retires_at_ms == T0 + 7 * DAY_MS
    assert rotate_secret(key, [gone], now_ms=T0).previous_retires_at_ms is None


def test_expiry(make_key: MakeKey) -> None:
    _, key = make_key(expires_at_ms=T0 + 10)
    assert not is_expired(key, T0 + 9)
    assert is_expired(key, T0 + 10)
    _, forever = make_key()
    assert not is_expired(forever, T0 + 10**12)


def test_rotation_due_at_the_policy_age(make_key: MakeKey) -> None:
    _, key = make_key()
    assert DEFAULT_ROTATION_AGE_MS == 365 * DAY_MS
    assert not rotation_due(key, T0 + DEFAULT_ROTATION_AGE_MS - 1)
    assert rotation_due(key, T0 + DEFAULT_ROTATION_AGE_MS)
    assert rotation_due(key, T0 + 30 * DAY_MS, policy_age_ms=30 * DAY_MS)
    assert not rotation_due(key, T0 + 30 * DAY_MS - 1, policy_age_ms=30 * DAY_MS)
    late = T0 + 2 * DEFAULT_ROTATION_AGE_MS
    assert not rotation_due(replace(key, state=KeyState.REVOKED), late)
    assert not rotation_due(replace(key, rotated_to="UID2-C-L-1001-next00"), late)
    assert rotation_due(replace(key, state=KeyState.DISABLED), late)


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"state": KeyState.DISABLED},
        {"state": KeyState.REVOKED},
        {"expires_at_ms": T0 + 10},
        {"expires_at_ms": T0 + 11},
        {"retires_at_ms": T0 + 10},
        {"retires_at_ms": T0 + 11},
    ],
)
def test_a_key_is_usable_exactly_when_authenticate_allows_it_for_an_enabled_participant(
    make_key: MakeKey, make_participant: Callable[..., Participant], change: dict[str, object]
) -> None:
    participant = make_participant()
    _, key = make_key(participant=participant)
    key = replace(key, **change)  # type: ignore[arg-type]
    assert key_usable(key, T0 + 10) is (authenticate(key, participant, T0 + 10) == ALLOWED)
