"""Keysets, the key rotation schedule, and encryption keys sealed at rest."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from material_fixtures import T0, Drbg

from uid2_operator.domain.keysets import (
    DAY_S,
    HOUR_S,
    MAX_KEYSET_ID,
    KeyPolicy,
    Keyset,
    PlannedKey,
    SealedKey,
    SharingMode,
    mint_keys,
    new_keyset_sharing,
    new_site_keyset,
    next_keyset_id,
    open_key,
    plan_purge,
    plan_rotation,
    purge_retention_s,
    reserved_keysets,
    seal_key,
    site_default_keyset,
)
from uid2_operator.domain.material_sealing import (
    ENCRYPTION_KEY_LABEL,
    SALT_CHUNK_LABEL,
    SealedMaterial,
    material_aad,
    open_material,
    seal_material,
)
from uid2_operator.domain.participants import ParticipantType
from uid2_operator.domain.roles import ClientRole
from uid2_operator.domain.sealing import Keyring
from uid2_operator.errors import InvalidInput, NoActiveKey, SealedSecretUnreadable
from uid2_operator.wire.keys import (
    FALLBACK_PUBLISHER_KEYSET_ID,
    MASTER_KEYSET_ID,
    REFRESH_KEYSET_ID,
    EncryptionKey,
    active_key,
)

NOW_S = T0 // 1000
POLICY = KeyPolicy(lifetime_s=30 * DAY_S, activation_lead_s=HOUR_S, renew_before_s=7 * DAY_S)


def keyset(keyset_id: int = 10, site_id: int = 1001, **changes: object) -> Keyset:
    base = Keyset(keyset_id, site_id, f"Site {site_id}", True, True, T0)
    return replace(base, **changes)  # type: ignore[arg-type]


def key(key_id: int, keyset_id: int, activates: int, expires: int) -> EncryptionKey:
    return EncryptionKey(
        key_id, keyset_id, activates, activates, expires, bytes([key_id % 256]) * 32
    )


# ----------------------------------------------------------------------------- keysets


def test_a_keyset_defaults_to_owner_only_sharing() -> None:
    record = keyset()
    assert record.sharing is SharingMode.OWNER_ONLY
    assert record.allowed_sites == frozenset()


def test_only_a_list_keyset_names_sites() -> None:
    assert keyset(sharing=SharingMode.LIST, allowed_sites=frozenset({7})).allowed_sites == {7}
    with pytest.raises(InvalidInput, match="list of sites"):
        keyset(sharing=SharingMode.BIDDERS, allowed_sites=frozenset({7}))


def test_a_keyset_name_is_bounded() -> None:
    assert keyset(name="n" * 200).name == "n" * 200
    with pytest.raises(InvalidInput, match="200"):
        keyset(name="n" * 201)


def test_the_reserved_keysets() -> None:
    master, refresh, fallback = reserved_keysets(T0)
    assert (master.keyset_id, master.site_id) == (MASTER_KEYSET_ID, -1)
    assert (refresh.keyset_id, refresh.site_id) == (REFRESH_KEYSET_ID, -2)
    assert (fallback.keyset_id, fallback.site_id) == (FALLBACK_PUBLISHER_KEYSET_ID, 2)
    assert fallback.sharing is SharingMode.BIDDERS
    assert all(k.enabled and k.is_default and k.created_at_ms == T0 for k in (master, refresh))


@pytest.mark.parametrize(
    ("existing", "expected"),
    [([], 4), ([-2, -1, 2], 4), ([-1, 10, 7], 11), ([3], 4)],
)
def test_next_keyset_id_skips_the_reserved_ids(existing: list[int], expected: int) -> None:
    assert next_keyset_id(existing) == expected


def test_next_keyset_id_stays_below_the_published_master_stand_in() -> None:
    assert next_keyset_id([MAX_KEYSET_ID - 1]) == MAX_KEYSET_ID
    with pytest.raises(InvalidInput, match="No keyset id"):
        next_keyset_id([MAX_KEYSET_ID])


def test_a_site_keyset_is_the_default_and_shared_with_bidders() -> None:
    record = new_site_keyset(4, 1001, T0)
    assert record == Keyset(4, 1001, "Site 1001", True, True, T0, SharingMode.BIDDERS)
    assert new_site_keyset(5, 1001, T0, name="web").name == "web"
    owned = new_site_keyset(6, 1002, T0, sharing=SharingMode.OWNER_ONLY)
    assert owned == Keyset(6, 1002, "Site 1002", True, True, T0, SharingMode.OWNER_ONLY)


@pytest.mark.parametrize("kind", list(ParticipantType))
@pytest.mark.parametrize(
    "roles",
    [
        {ClientRole.GENERATOR},
        {ClientRole.GENERATOR, ClientRole.SHARER},
        set(ClientRole),
    ],
)
def test_a_participant_holding_generator_starts_shared_with_bidders(
    kind: ParticipantType, roles: set[ClientRole]
) -> None:
    assert new_keyset_sharing(kind, roles) is SharingMode.BIDDERS
    assert new_keyset_sharing(kind, iter(roles)) is SharingMode.BIDDERS


NO_GENERATOR = [
    set(),
    {ClientRole.SHARER},
    {ClientRole.SHARER, ClientRole.MAPPER},
    {ClientRole.ID_READER},
    set(ClientRole) - {ClientRole.GENERATOR},
]


@pytest.mark.parametrize("roles", NO_GENERATOR)
def test_a_publisher_starts_shared_with_bidders_whatever_its_roles(roles: set[ClientRole]) -> None:
    # client-side token generation needs a keypair, not a role: its tokens go to the bid stream
    assert new_keyset_sharing(ParticipantType.PUBLISHER, roles) is SharingMode.BIDDERS


@pytest.mark.parametrize(
    "kind", [ParticipantType.ADVERTISER, ParticipantType.DATA_PROVIDER, ParticipantType.DSP]
)
@pytest.mark.parametrize("roles", NO_GENERATOR)
def test_another_participant_without_generator_starts_owner_only(
    kind: ParticipantType, roles: set[ClientRole]
) -> None:
    assert new_keyset_sharing(kind, roles) is SharingMode.OWNER_ONLY


@pytest.mark.parametrize("site_id", [2, 0, -1])
def test_reserved_sites_own_no_site_keyset(site_id: int) -> None:
    with pytest.raises(InvalidInput, match="reserved"):
        new_site_keyset(4, site_id, T0)


@pytest.mark.parametrize("keyset_id", [3, -1, MAX_KEYSET_ID + 1])
def test_reserved_keyset_ids_are_refused_for_sites(keyset_id: int) -> None:
    with pytest.raises(InvalidInput, match="reserved"):
        new_site_keyset(keyset_id, 1001, T0)


def test_site_default_keyset() -> None:
    other = keyset(5, 2002)
    extra = keyset(6, 1001, is_default=False)
    default = keyset(7, 1001, enabled=False)
    assert site_default_keyset([], 1001) is None
    assert site_default_keyset([other, extra], 1001) is None
    assert site_default_keyset([other, extra, default], 1001) == default
    with pytest.raises(InvalidInput, match="more than one"):
        site_default_keyset([default, keyset(8, 1001)], 1001)


# ----------------------------------------------------------------------------- schedule


@pytest.mark.parametrize(
    ("lifetime", "lead", "renew"),
    [(10, 0, 5), (10, 5, 5), (10, 6, 5), (10, 2, 10), (10, 2, 11)],
)
def test_a_key_policy_must_leave_room_for_a_successor(lifetime: int, lead: int, renew: int) -> None:
    with pytest.raises(InvalidInput, match="activation lead"):
        KeyPolicy(lifetime_s=lifetime, activation_lead_s=lead, renew_before_s=renew)


def test_the_policy_names_how_often_rotation_must_run() -> None:
    assert POLICY.run_interval_s == 7 * DAY_S - HOUR_S


def test_a_keyset_without_keys_gets_one_active_now() -> None:
    plans = plan_rotation([keyset()], [], T0 + 999, POLICY)
    assert plans == [PlannedKey(10, NOW_S, NOW_S, NOW_S + 30 * DAY_S)]


def test_a_keyset_whose_keys_all_expired_gets_one_active_now() -> None:
    expired = key(1, 10, NOW_S - 40 * DAY_S, NOW_S)
    assert plan_rotation([keyset()], [expired], T0, POLICY) == [
        PlannedKey(10, NOW_S, NOW_S, NOW_S + 30 * DAY_S)
    ]


def test_nothing_is_due_while_the_newest_key_lives_longer_than_the_renewal_window() -> None:
    current = key(1, 10, NOW_S - DAY_S, NOW_S + 7 * DAY_S + 1)
    assert plan_rotation([keyset()], [current], T0, POLICY) == []


def test_a_successor_activates_after_the_lead_time_before_the_old_key_expires() -> None:
    current = key(1, 10, NOW_S - 23 * DAY_S, NOW_S + 7 * DAY_S)
    [plan] = plan_rotation([keyset()], [current], T0, POLICY)
    assert plan == PlannedKey(10, NOW_S, NOW_S + HOUR_S, NOW_S + HOUR_S + 30 * DAY_S)
    assert plan.activates < current.expires


def test_a_late_run_activates_the_successor_exactly_when_the_old_key_expires() -> None:
    current = key(1, 10, NOW_S - 30 * DAY_S + 60, NOW_S + 60)
    [plan] = plan_rotation([keyset()], [current], T0, POLICY)
    assert plan.activates == current.expires


def test_a_pending_successor_counts_towards_the_horizon() -> None:
    old = key(1, 10, NOW_S - 25 * DAY_S, NOW_S + 5 * DAY_S)
    pending = key(2, 10, NOW_S + HOUR_S, NOW_S + HOUR_S + 30 * DAY_S)
    assert plan_rotation([keyset()], [old, pending], T0, POLICY) == []


def test_disabled_keysets_are_not_rotated_and_keys_count_per_keyset() -> None:
    other_keyset_key = key(1, 11, NOW_S, NOW_S + 30 * DAY_S)
    plans = plan_rotation(
        [keyset(12, enabled=False), keyset(11, 2002), keyset(10)], [other_keyset_key], T0, POLICY
    )
    assert [p.keyset_id for p in plans] == [10]


def test_sealed_keys_can_be_planned_without_their_secrets(keyring: Keyring, random: Drbg) -> None:
    sealed = seal_key(keyring, key(1, 10, NOW_S, NOW_S + 30 * DAY_S), random)
    assert plan_rotation([keyset()], [sealed], T0, POLICY) == []


@settings(deadline=None, max_examples=40)
@given(
    gaps=st.lists(st.integers(min_value=1, max_value=POLICY.run_interval_s), max_size=40),
    lead=st.integers(min_value=1, max_value=3 * DAY_S),
)
def test_runs_no_further_apart_than_the_run_interval_never_leave_a_gap(
    gaps: list[int], lead: int
) -> None:
    policy = KeyPolicy(
        lifetime_s=30 * DAY_S, activation_lead_s=lead, renew_before_s=lead + 4 * DAY_S
    )
    random = Drbg(b"schedule")
    keys: list[EncryptionKey] = []
    now_s = NOW_S
    next_id = 1
    for gap in [0, *(min(g, policy.run_interval_s) for g in gaps)]:
        # Between the previous run and this one, some key was active at every second checked.
        for probe in (now_s, now_s + gap // 2, now_s + gap):
            if keys:
                active_key(keys, probe * 1000)
        now_s += gap
        plans = plan_rotation([keyset()], keys, now_s * 1000, policy)
        assert len(plans) <= 1
        minted = mint_keys(plans, list(range(next_id, next_id + len(plans))), random)
        next_id += len(plans)
        keys.extend(minted)
        assert active_key(keys, now_s * 1000).keyset_id == 10
    assert [k.id for k in keys] == sorted({k.id for k in keys})


def test_without_any_run_the_keyset_eventually_has_no_active_key() -> None:
    [plan] = plan_rotation([keyset()], [], T0, POLICY)
    minted = mint_keys([plan], [1], Drbg())
    with pytest.raises(NoActiveKey):
        active_key(minted, (plan.expires + 1) * 1000)


# ----------------------------------------------------------------------------- purging

RETENTION = 31 * DAY_S


def test_a_key_is_purged_exactly_retention_after_its_expiry() -> None:
    expired = key(1, 10, NOW_S - 40 * DAY_S, NOW_S - 10 * DAY_S)
    boundary_ms = (expired.expires + RETENTION) * 1000
    assert plan_purge([expired], boundary_ms - 1, RETENTION) == []
    assert plan_purge([expired], boundary_ms, RETENTION) == [expired]
    assert plan_purge([expired], boundary_ms + 1, RETENTION) == [expired]


def test_a_purge_keeps_keys_the_recorded_lifetime_plus_a_day_when_that_is_longer() -> None:
    assert purge_retention_s(RETENTION, None) == RETENTION
    assert purge_retention_s(RETENTION, 90 * DAY_S) == 91 * DAY_S
    assert purge_retention_s(RETENTION, 30 * DAY_S) == RETENTION
    assert purge_retention_s(RETENTION, 10 * DAY_S) == RETENTION
    assert purge_retention_s(100 * DAY_S, 90 * DAY_S) == 100 * DAY_S
    expired = key(1, 10, NOW_S - 70 * DAY_S, NOW_S - 40 * DAY_S)
    assert plan_purge([expired], T0, purge_retention_s(RETENTION, 90 * DAY_S)) == []
    assert plan_purge([expired], T0, purge_retention_s(RETENTION, None)) == [expired]


def test_an_unexpired_key_is_never_purged_whatever_the_retention() -> None:
    live = key(1, 10, NOW_S - DAY_S, NOW_S + 1)
    pending = key(2, 10, NOW_S + HOUR_S, NOW_S + 30 * DAY_S)
    assert plan_purge([live, pending], T0, 0) == []
    assert plan_purge([live, pending], T0 + 999, 0) == []
    # With no retention at all, a key goes the millisecond it expires, not before.
    assert plan_purge([live], (live.expires * 1000) - 1, 0) == []
    assert plan_purge([live], live.expires * 1000, 0) == [live]


def test_keys_of_every_keyset_follow_the_same_rule_and_come_back_by_id() -> None:
    old = NOW_S - RETENTION - DAY_S
    keysets = [
        keyset(MASTER_KEYSET_ID, -1),
        keyset(REFRESH_KEYSET_ID, -2),
        keyset(FALLBACK_PUBLISHER_KEYSET_ID, 2),
        keyset(10),
        keyset(11, 1002, enabled=False, is_default=False),
    ]
    doomed = [key(9 - n, ks.keyset_id, old - 30 * DAY_S, old) for n, ks in enumerate(keysets)]
    kept = [key(20 + n, ks.keyset_id, old, NOW_S + DAY_S) for n, ks in enumerate(keysets)]
    assert [k.id for k in plan_purge([*kept, *doomed], T0, RETENTION)] == [5, 6, 7, 8, 9]


def test_sealed_keys_can_be_purged_without_their_secrets(keyring: Keyring, random: Drbg) -> None:
    sealed = seal_key(keyring, key(3, 10, NOW_S - 90 * DAY_S, NOW_S - 60 * DAY_S), random)
    assert plan_purge([sealed], T0, RETENTION) == [sealed]


@pytest.mark.parametrize("retention", [-1, True, 1.5, "31"])
def test_a_retention_must_be_whole_seconds_and_not_negative(retention: object) -> None:
    with pytest.raises(InvalidInput, match="retention"):
        plan_purge([], T0, retention)  # type: ignore[arg-type]


@settings(deadline=None, max_examples=60)
@given(
    times=st.lists(
        st.tuples(
            st.integers(min_value=-120 * DAY_S, max_value=60 * DAY_S),
            st.integers(min_value=1, max_value=40 * DAY_S),
        ),
        max_size=12,
    ),
    retention=st.integers(min_value=0, max_value=60 * DAY_S),
)
def test_purged_keys_are_exactly_those_past_expiry_plus_retention(
    times: list[tuple[int, int]], retention: int
) -> None:
    keys = [
        key(n + 1, 10 + n % 3, NOW_S + start, NOW_S + start + life)
        for n, (start, life) in enumerate(times)
    ]
    purged = plan_purge(keys, T0, retention)
    assert {k.id for k in purged} == {k.id for k in keys if k.expires + retention <= NOW_S}
    assert all(k.expires <= NOW_S for k in purged)
    assert [k.id for k in purged] == sorted(k.id for k in purged)


# ----------------------------------------------------------------------------- minting


def test_mint_keys_uses_the_issued_ids_and_fresh_secrets(random: Drbg) -> None:
    plans = [PlannedKey(-1, NOW_S, NOW_S, NOW_S + 10), PlannedKey(4, NOW_S, NOW_S + 1, NOW_S + 11)]
    first, second = mint_keys(plans, [7, 9], random)
    assert (first.id, first.keyset_id, first.activates, first.expires) == (7, -1, NOW_S, NOW_S + 10)
    assert (second.id, second.keyset_id, second.activates) == (9, 4, NOW_S + 1)
    assert len(first.secret) == 32
    assert first.secret != second.secret
    assert mint_keys([], [], random) == []


@pytest.mark.parametrize("ids", [[1], [1, 2, 3], [2, 2], [3, 2], [0, 1], [-5, 1]])
def test_mint_keys_refuses_ids_that_do_not_fit(ids: list[int], random: Drbg) -> None:
    plans = [PlannedKey(-1, NOW_S, NOW_S, NOW_S + 10)] * 2
    with pytest.raises(ValueError, match="key id"):
        mint_keys(plans, ids, random)


# ----------------------------------------------------------------------------- at rest


def test_a_sealed_key_opens_back_to_the_same_key(keyring: Keyring, random: Drbg) -> None:
    original = key(42, -1, NOW_S, NOW_S + 100)
    sealed = seal_key(keyring, original, random)
    assert sealed.secret.kek_version == keyring.active_version
    assert original.secret not in sealed.secret.ciphertext
    assert open_key(keyring, sealed) == original
    assert "ciphertext" not in repr(sealed)
    assert original.secret.hex() not in repr(sealed)


def test_a_sealed_key_does_not_open_under_another_id(keyring: Keyring, random: Drbg) -> None:
    sealed = seal_key(keyring, key(42, -1, NOW_S, NOW_S + 100), random)
    with pytest.raises(SealedSecretUnreadable, match="encryption_key 43"):
        open_key(keyring, replace(sealed, id=43))


def test_a_sealed_key_needs_its_kek_version(keyring: Keyring, random: Drbg) -> None:
    sealed = seal_key(keyring, key(42, -1, NOW_S, NOW_S + 100), random)
    with pytest.raises(SealedSecretUnreadable, match="version 9"):
        open_key(keyring, replace(sealed, secret=SealedMaterial(9, sealed.secret.ciphertext)))


def test_a_sealed_blob_of_the_wrong_size_is_not_a_key(keyring: Keyring, random: Drbg) -> None:
    short = seal_material(keyring, ENCRYPTION_KEY_LABEL, 5, b"x" * 16, random)
    with pytest.raises(SealedSecretUnreadable, match="not a key"):
        open_key(keyring, SealedKey(5, -1, NOW_S, NOW_S, NOW_S + 1, short))


def test_material_labels_separate_kinds(keyring: Keyring, random: Drbg) -> None:
    assert material_aad(SALT_CHUNK_LABEL, 3) == b"salt_chunk:3"
    sealed = seal_material(keyring, ENCRYPTION_KEY_LABEL, 3, b"payload", random)
    assert open_material(keyring, ENCRYPTION_KEY_LABEL, 3, sealed) == b"payload"
    with pytest.raises(SealedSecretUnreadable):
        open_material(keyring, SALT_CHUNK_LABEL, 3, sealed)
