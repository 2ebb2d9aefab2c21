"""Raw UID derivation (operator-api §4): golden vectors, salt bucket rules and bucket ids."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hashids import Hashids  # type: ignore[import-untyped]

from uid2_operator.errors import SaltError, WireError
from uid2_operator.wire.identity import InputKind
from uid2_operator.wire.raw_uid import (
    DAY_MS,
    IdentityEnvironment,
    KeyMaterial,
    RawUidInfo,
    SaltBucket,
    bucket_id,
    bucket_index,
    current_raw_uid,
    describe_raw_uid,
    first_level_hash,
    previous_raw_uid,
    raw_uid_v2,
    raw_uid_v3,
    raw_uid_v4,
    refresh_from_ms,
    refresh_from_seconds,
    v3_metadata,
    v4_metadata,
)
from uid2_operator.wire.scope import IdentityScope, IdentityType

VECTOR_DIR = Path(__file__).parents[2] / "vectors"
RAW: dict[str, Any] = json.loads((VECTOR_DIR / "raw_uid.json").read_text("utf-8"))
BUCKET_IDS: dict[str, Any] = json.loads((VECTOR_DIR / "bucket_ids.json").read_text("utf-8"))
WORKED: dict[str, Any] = RAW["worked_example"]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _d(text: str) -> bytes:
    return base64.b64decode(text)


FLH = _d(WORKED["first_level_hash"])
KEY = KeyMaterial(2100002, WORKED["key"], WORKED["key_salt"])
OLD_KEY = KeyMaterial(
    2000002, "key12345key12345key12345key12345", "salt1234salt1234salt1234salt1234"
)
UID2_EMAIL_PROD: dict[str, Any] = {
    "scope": IdentityScope.UID2,
    "kind": IdentityType.EMAIL,
    "environment": IdentityEnvironment.PROD,
}
NOW = 1_700_000_000_123  # 2023-11-14T22:13:20.123Z
NEXT_MIDNIGHT = 1_700_006_400_000  # 2023-11-15T00:00:00Z


# ------------------------------------------------------------------------------ golden vectors


def test_worked_example() -> None:
    identity_hash = InputKind.EMAIL.digest(WORKED["email"])
    assert _b64(identity_hash) == WORKED["identity_hash"]
    flh = first_level_hash(identity_hash, WORKED["first_level_salt"])
    assert _b64(flh) == WORKED["first_level_hash"]
    assert bucket_index(flh, WORKED["bucket_count"]) == WORKED["bucket_index"] == 71860
    assert _b64(raw_uid_v2(flh, WORKED["salt"])) == WORKED["raw_uid_v2"]
    v3 = raw_uid_v3(flh, WORKED["salt"], IdentityScope.UID2, IdentityType.EMAIL)
    assert _b64(v3) == WORKED["raw_uid_v3"]
    v4 = raw_uid_v4(flh, WORKED["key_id"], WORKED["key"], WORKED["key_salt"], **UID2_EMAIL_PROD)
    assert _b64(v4) == WORKED["raw_uid_v4"]


@pytest.mark.parametrize("case", RAW["derivations"], ids=lambda c: f"{c['scope']}-{c['type']}")
def test_derivations_match_the_reference(case: dict[str, Any]) -> None:
    scope = IdentityScope[case["scope"]]
    kind = IdentityType[case["type"]]
    environment = IdentityEnvironment[case["environment"]]
    flh = first_level_hash(_d(case["identity_hash"]), case["first_level_salt"])
    assert _b64(flh) == case["first_level_hash"]
    assert bucket_index(flh, 1 << 20) == case["bucket_index_2_20"]
    assert _b64(raw_uid_v2(flh, case["salt"])) == case["raw_uid_v2"]
    assert _b64(raw_uid_v3(flh, case["salt"], scope, kind)) == case["raw_uid_v3"]
    assert v4_metadata(scope, kind, environment) == case["v4_metadata"]
    v4 = raw_uid_v4(
        flh,
        case["key_id"],
        case["key"],
        case["key_salt"],
        scope=scope,
        kind=kind,
        environment=environment,
    )
    assert _b64(v4) == case["raw_uid_v4"]
    assert describe_raw_uid(v4) == RawUidInfo(4, scope, kind, environment)
    assert describe_raw_uid(_d(case["raw_uid_v3"])) == RawUidInfo(3, scope, kind)
    assert describe_raw_uid(_d(case["raw_uid_v2"])) == RawUidInfo(2)


@pytest.mark.parametrize("case", RAW["v4_metadata_examples"], ids=lambda c: hex(c["byte"]))
def test_v4_metadata_examples(case: dict[str, Any]) -> None:
    scope = IdentityScope[case["scope"]]
    kind = IdentityType[case["type"]]
    environment = IdentityEnvironment[case["environment"]]
    assert v4_metadata(scope, kind, environment) == case["byte"]
    v4 = raw_uid_v4(FLH, 1, KEY.key, "s", scope=scope, kind=kind, environment=environment)
    assert v4[0] == case["byte"]


@pytest.mark.parametrize("case", RAW["v3_metadata_examples"], ids=lambda c: hex(c["byte"]))
def test_v3_metadata_examples(case: dict[str, Any]) -> None:
    scope = IdentityScope[case["scope"]]
    kind = IdentityType[case["type"]]
    assert v3_metadata(scope, kind) == case["byte"]
    raw = raw_uid_v3(FLH, "salt", scope, kind)
    assert _b64(raw)[0] == case["base64_first_char"]
    assert len(_b64(raw)) == 44


@pytest.mark.parametrize(
    "case", RAW["bucket_index"], ids=lambda c: f"{c['first_level_hash'][:4]}-{c['bucket_count']}"
)
def test_bucket_index_vectors(case: dict[str, Any]) -> None:
    assert bucket_index(_d(case["first_level_hash"]), case["bucket_count"]) == case["index"]


# ------------------------------------------------------------------------------- formats


def test_v4_layout() -> None:
    v4 = raw_uid_v4(FLH, 0x0A0B0C, KEY.key, KEY.salt or "", **UID2_EMAIL_PROD)
    assert len(v4) == 33
    assert v4[1:4] == bytes([0x0A, 0x0B, 0x0C])
    checksum = 0
    for byte in v4[:32]:
        checksum ^= byte
    assert v4[32] == checksum


def test_v4_is_deterministic_and_depends_on_every_input() -> None:
    base = raw_uid_v4(FLH, 7, KEY.key, "salt", **UID2_EMAIL_PROD)
    assert raw_uid_v4(FLH, 7, KEY.key, "salt", **UID2_EMAIL_PROD) == base
    variants = {
        raw_uid_v4(FLH, 8, KEY.key, "salt", **UID2_EMAIL_PROD),
        raw_uid_v4(FLH, 7, OLD_KEY.key, "salt", **UID2_EMAIL_PROD),
        raw_uid_v4(FLH, 7, KEY.key, "salt2", **UID2_EMAIL_PROD),
        raw_uid_v4(bytes(32), 7, KEY.key, "salt", **UID2_EMAIL_PROD),
        raw_uid_v4(FLH, 7, KEY.key, "salt", **{**UID2_EMAIL_PROD, "kind": IdentityType.PHONE}),
    }
    assert base not in variants
    assert len(variants) == 5


@pytest.mark.parametrize("key_id", [-1, 1 << 24, 1 << 31])
def test_v4_refuses_key_ids_that_do_not_fit(key_id: int) -> None:
    with pytest.raises(SaltError):
        raw_uid_v4(FLH, key_id, KEY.key, "salt", **UID2_EMAIL_PROD)


@pytest.mark.parametrize("key", ["", "short", "k" * 31, "k" * 33, "é" * 16 + "k"])
def test_v4_refuses_keys_that_are_not_aes_keys(key: str) -> None:
    with pytest.raises(SaltError):
        raw_uid_v4(FLH, 1, key, "salt", **UID2_EMAIL_PROD)


def test_v4_accepts_every_aes_key_size() -> None:
    for size in (16, 24, 32):
        assert len(raw_uid_v4(FLH, 1, "k" * size, "salt", **UID2_EMAIL_PROD)) == 33


@pytest.mark.parametrize("count", [0, -1])
def test_bucket_index_needs_buckets(count: int) -> None:
    with pytest.raises(SaltError):
        bucket_index(FLH, count)


def test_bucket_index_needs_three_bytes() -> None:
    with pytest.raises(SaltError):
        bucket_index(b"\x01\x02", 5)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        bytes(31),
        bytes(34),
        bytes([0x01]) + bytes(32),  # low bits set
        bytes([0x08]) + bytes(32),  # type 2
        bytes([0x0C]) + bytes(32),  # type 3
        bytes([0x40]) + bytes(32),  # environment bits without the v4 bit
        bytes([0xE0]) + bytes(32),  # v4 with environment 3
    ],
)
def test_describe_rejects_malformed_raw_uids(raw: bytes) -> None:
    with pytest.raises(WireError):
        describe_raw_uid(raw)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("test", IdentityEnvironment.TEST),
        ("INTEG", IdentityEnvironment.INTEG),
        ("Prod", IdentityEnvironment.PROD),
    ],
)
def test_environment_names(name: str, expected: IdentityEnvironment) -> None:
    assert IdentityEnvironment.parse(name) is expected


@pytest.mark.parametrize("name", ["", "production", "dev", "TEST ", "\u0131nteg"])
def test_unknown_environment_names(name: str) -> None:
    with pytest.raises(ValueError, match="unknown identity environment"):
        IdentityEnvironment.parse(name)


# --------------------------------------------------------------------------- salt buckets (§4.5)


def _bucket(**overrides: Any) -> SaltBucket:
    fields: dict[str, Any] = {
        "index": 1000002,
        "last_updated_ms": NOW - 10 * DAY_MS,
        "current_salt": WORKED["salt"],
        "refresh_from_ms": NOW + DAY_MS,
        "previous_salt": "old-salt",
        "current_key": None,
        "previous_key": None,
    }
    fields.update(overrides)
    return SaltBucket(**fields)


def _current(bucket: SaltBucket, *, identity_v3: bool = False) -> bytes:
    return current_raw_uid(bucket, FLH, identity_v3=identity_v3, **UID2_EMAIL_PROD)


def _previous(bucket: SaltBucket, *, now_ms: int = NOW, identity_v3: bool = False) -> bytes | None:
    return previous_raw_uid(bucket, FLH, now_ms=now_ms, identity_v3=identity_v3, **UID2_EMAIL_PROD)


def test_current_uses_the_salt_as_v2_or_v3() -> None:
    bucket = _bucket(current_key=KEY)
    assert _b64(_current(bucket)) == WORKED["raw_uid_v2"]
    assert _b64(_current(bucket, identity_v3=True)) == WORKED["raw_uid_v3"]


def test_current_without_salt_uses_the_key_as_v4() -> None:
    bucket = _bucket(current_salt=None, current_key=KEY)
    assert _b64(_current(bucket)) == WORKED["raw_uid_v4"]
    assert _b64(_current(bucket, identity_v3=True)) == WORKED["raw_uid_v4"]


@pytest.mark.parametrize("key", [None, KeyMaterial(1, KEY.key, None)])
def test_current_without_usable_material_is_a_salt_error(key: KeyMaterial | None) -> None:
    with pytest.raises(SaltError):
        _current(_bucket(current_salt=None, current_key=key))


def test_previous_uses_the_previous_salt() -> None:
    bucket = _bucket(previous_key=OLD_KEY)
    assert _previous(bucket) == raw_uid_v2(FLH, "old-salt")
    assert _previous(bucket, identity_v3=True) == raw_uid_v3(
        FLH, "old-salt", IdentityScope.UID2, IdentityType.EMAIL
    )


def test_previous_without_salt_uses_the_previous_key() -> None:
    bucket = _bucket(current_salt=None, current_key=KEY, previous_salt=None, previous_key=OLD_KEY)
    expected = raw_uid_v4(FLH, OLD_KEY.key_id, OLD_KEY.key, OLD_KEY.salt or "", **UID2_EMAIL_PROD)
    assert _previous(bucket) == expected


@pytest.mark.parametrize("key", [None, KeyMaterial(3, "k" * 32, None)])
def test_previous_without_material_is_none(key: KeyMaterial | None) -> None:
    assert _previous(_bucket(previous_salt=None, previous_key=key)) is None


@pytest.mark.parametrize(
    ("age_ms", "present"),
    [
        (0, True),
        (-5 * DAY_MS, True),
        (-1, True),
        (89 * DAY_MS, True),
        (90 * DAY_MS - 1, True),
        (90 * DAY_MS, False),
        (400 * DAY_MS, False),
    ],
)
def test_previous_is_kept_for_90_whole_days(age_ms: int, present: bool) -> None:
    bucket = _bucket(last_updated_ms=NOW - age_ms)
    assert (_previous(bucket) is not None) is present


def test_refresh_from_is_the_buckets_own_while_not_past() -> None:
    assert refresh_from_ms(_bucket(refresh_from_ms=NOW + 5), NOW) == NOW + 5
    assert refresh_from_ms(_bucket(refresh_from_ms=NOW), NOW) == NOW


@pytest.mark.parametrize("refresh_from", [NOW - 1, 0, -DAY_MS])
def test_refresh_from_in_the_past_becomes_next_utc_midnight(refresh_from: int) -> None:
    assert refresh_from_ms(_bucket(refresh_from_ms=refresh_from), NOW) == NEXT_MIDNIGHT


def test_refresh_from_at_midnight_is_the_following_midnight() -> None:
    bucket = _bucket(refresh_from_ms=0)
    assert refresh_from_ms(bucket, NEXT_MIDNIGHT) == NEXT_MIDNIGHT + DAY_MS
    assert refresh_from_ms(bucket, NEXT_MIDNIGHT - 1) == NEXT_MIDNIGHT


def test_refresh_from_in_seconds() -> None:
    assert refresh_from_seconds(_bucket(refresh_from_ms=NOW + 1999), NOW) == (NOW + 1999) // 1000
    assert refresh_from_seconds(_bucket(refresh_from_ms=0), NOW) == NEXT_MIDNIGHT // 1000


def test_salt_bucket_repr_hides_secrets() -> None:
    bucket = _bucket(current_key=KEY, previous_key=OLD_KEY)
    text = repr(bucket)
    for secret in (WORKED["salt"], "old-salt", KEY.key, KEY.salt, OLD_KEY.key, OLD_KEY.salt):
        assert secret is not None
        assert secret not in text
    assert "1000002" in text
    assert "2100002" in text


# ---------------------------------------------------------------------------------- bucket ids


@pytest.mark.parametrize(
    "case", BUCKET_IDS["bucket_ids"], ids=lambda c: f"{c['id_prefix']}-{c['id']}"
)
def test_bucket_ids_match_the_java_library(case: dict[str, Any]) -> None:
    got = bucket_id(case["id"], id_prefix=case["id_prefix"], id_secret=case["id_secret"])
    assert got == case["bucket_id"]


@pytest.mark.parametrize("case", BUCKET_IDS["library_vectors"], ids=lambda c: c["hash"])
def test_hashids_agrees_with_the_java_library_suite(case: dict[str, Any]) -> None:
    hasher = Hashids(salt=case["salt"], min_length=case["min_length"])
    assert hasher.encode(case["number"]) == case["hash"]


def test_bucket_ids_have_the_prefix_and_at_least_nine_characters() -> None:
    ids = {bucket_id(i, id_prefix="p-", id_secret="secret") for i in range(300)}
    assert len(ids) == 300
    assert all(b.startswith("p-") and len(b) >= 11 for b in ids)
    assert bucket_id(5, id_prefix="p-", id_secret="secret") == bucket_id(
        5, id_prefix="p-", id_secret="secret"
    )
    assert bucket_id(5, id_prefix="p-", id_secret="other") != bucket_id(
        5, id_prefix="p-", id_secret="secret"
    )


@pytest.mark.parametrize("value", [-1, 9_007_199_254_740_993])
def test_bucket_ids_out_of_range(value: int) -> None:
    with pytest.raises(SaltError):
        bucket_id(value, id_prefix="b", id_secret="s")
