"""Raw UID properties: sizes, bucket ranges, and metadata that reads back as it was written."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_operator.errors import SaltError, WireError
from uid2_operator.wire.raw_uid import (
    DAY_MS,
    PRODUCTION_BUCKET_COUNT,
    IdentityEnvironment,
    KeyMaterial,
    RawUidInfo,
    SaltBucket,
    bucket_id,
    bucket_index,
    describe_raw_uid,
    first_level_hash,
    previous_raw_uid,
    raw_uid_v2,
    raw_uid_v3,
    raw_uid_v4,
    refresh_from_ms,
)
from uid2_operator.wire.scope import IdentityScope, IdentityType

HASHES = st.binary(min_size=32, max_size=32)
SCOPES = st.sampled_from(list(IdentityScope))
KINDS = st.sampled_from(list(IdentityType))
ENVIRONMENTS = st.sampled_from(list(IdentityEnvironment))
SALTS = st.text(st.characters(exclude_categories=()), max_size=48)
AES_KEYS = st.sampled_from([16, 24, 32]).flatmap(
    lambda n: st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=n, max_size=n)
)
KEY_IDS = st.integers(min_value=0, max_value=(1 << 24) - 1)
LABELS = st.tuples(SCOPES, KINDS, ENVIRONMENTS)
TIMES = st.integers(min_value=-(10**13), max_value=10**14)


@settings(deadline=None)
@given(st.binary(min_size=3, max_size=40), st.integers(min_value=1, max_value=1 << 22))
def test_bucket_index_is_always_in_range(flh: bytes, count: int) -> None:
    index = bucket_index(flh, count)
    assert 0 <= index < count


@settings(deadline=None)
@given(HASHES)
def test_production_bucket_index_uses_the_20_bits_directly(flh: bytes) -> None:
    index = bucket_index(flh, PRODUCTION_BUCKET_COUNT)
    assert index == int.from_bytes(flh[:3], "big") >> 8 << 4 | (flh[2] & 0x0F)
    assert index < PRODUCTION_BUCKET_COUNT


@settings(deadline=None)
@given(st.binary(max_size=64), SALTS)
def test_first_level_hash_is_32_bytes_for_any_hash_and_salt(
    identity_hash: bytes, salt: str
) -> None:
    assert len(first_level_hash(identity_hash, salt)) == 32


@settings(deadline=None)
@given(HASHES, SALTS, SCOPES, KINDS)
def test_v2_and_v3_sizes_and_metadata(
    flh: bytes, salt: str, scope: IdentityScope, kind: IdentityType
) -> None:
    v2 = raw_uid_v2(flh, salt)
    v3 = raw_uid_v3(flh, salt, scope, kind)
    assert len(v2) == 32
    assert len(v3) == 33
    assert v3[1:] == v2
    assert describe_raw_uid(v2) == RawUidInfo(2)
    assert describe_raw_uid(v3) == RawUidInfo(3, scope, kind)


@settings(deadline=None)
@given(HASHES, KEY_IDS, AES_KEYS, SALTS, LABELS)
def test_v4_size_and_metadata(
    flh: bytes,
    key_id: int,
    key: str,
    key_salt: str,
    labels: tuple[IdentityScope, IdentityType, IdentityEnvironment],
) -> None:
    scope, kind, environment = labels
    v4 = raw_uid_v4(flh, key_id, key, key_salt, scope=scope, kind=kind, environment=environment)
    assert len(v4) == 33
    assert int.from_bytes(v4[1:4], "big") == key_id
    assert describe_raw_uid(v4) == RawUidInfo(4, scope, kind, environment)
    checksum = 0
    for byte in v4:
        checksum ^= byte
    assert checksum == 0


@settings(deadline=None)
@given(st.binary(max_size=40))
def test_describe_gives_info_or_a_wire_error(raw: bytes) -> None:
    try:
        info = describe_raw_uid(raw)
    except WireError:
        return
    assert len(raw) in (32, 33)
    assert info.version in (2, 3, 4)
    assert (info.environment is not None) is (info.version == 4)


@settings(deadline=None)
@given(HASHES, st.integers(), st.text(max_size=34), st.text(max_size=8), LABELS)
def test_v4_gives_a_raw_uid_or_a_salt_error(
    flh: bytes,
    key_id: int,
    key: str,
    key_salt: str,
    labels: tuple[IdentityScope, IdentityType, IdentityEnvironment],
) -> None:
    scope, kind, environment = labels
    try:
        v4 = raw_uid_v4(flh, key_id, key, key_salt, scope=scope, kind=kind, environment=environment)
    except SaltError:
        return
    assert len(v4) == 33


@settings(deadline=None)
@given(TIMES, TIMES)
def test_refresh_from_is_never_in_the_past_and_at_most_a_day_away_when_stale(
    refresh_from: int, now_ms: int
) -> None:
    bucket = SaltBucket(index=1, last_updated_ms=0, current_salt="s", refresh_from_ms=refresh_from)
    result = refresh_from_ms(bucket, now_ms)
    assert result >= now_ms
    if refresh_from < now_ms:
        assert result % DAY_MS == 0
        assert result - now_ms <= DAY_MS


@settings(deadline=None)
@given(HASHES, TIMES, TIMES, st.booleans())
def test_previous_exists_exactly_within_90_days(
    flh: bytes, last_updated: int, now_ms: int, identity_v3: bool
) -> None:
    bucket = SaltBucket(
        index=1,
        last_updated_ms=last_updated,
        current_salt=None,
        refresh_from_ms=0,
        previous_key=KeyMaterial(5, "k" * 32, "salt"),
    )
    previous = previous_raw_uid(
        bucket,
        flh,
        now_ms=now_ms,
        scope=IdentityScope.EUID,
        kind=IdentityType.PHONE,
        environment=IdentityEnvironment.INTEG,
        identity_v3=identity_v3,
    )
    assert (previous is not None) is (now_ms - last_updated < 90 * DAY_MS)


@settings(deadline=None)
@given(st.integers(min_value=0, max_value=1 << 40), st.text(max_size=12), st.text(max_size=30))
def test_bucket_ids_carry_the_prefix_and_minimum_length(
    index: int, prefix: str, secret: str
) -> None:
    value = bucket_id(index, id_prefix=prefix, id_secret=secret)
    assert value.startswith(prefix)
    assert len(value) - len(prefix) >= 9
    assert bucket_id(index, id_prefix=prefix, id_secret=secret) == value
