"""Advertising and refresh tokens: golden vectors and every decoder branch (operator-api §5.1-4)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from uid2_operator import errors
from uid2_operator.wire.aead import seal_with_iv
from uid2_operator.wire.encoding import (
    b64decode,
    b64encode,
    b64url_decode,
    b64url_encode,
    pack_i32,
    pack_i64,
)
from uid2_operator.wire.keys import EncryptionKey
from uid2_operator.wire.scope import IdentityScope, IdentityType
from uid2_operator.wire.tokens import (
    AdvertisingToken,
    RefreshToken,
    TokenVersion,
    decode_advertising_token,
    decode_refresh_token,
    encode_advertising_token,
    encode_advertising_token_v4,
    encode_advertising_token_with_ivs,
    encode_refresh_token,
    encode_refresh_token_with_iv,
    seal_refresh_token,
)

VECTORS = Path(__file__).resolve().parents[2] / "vectors"
AD_VECTORS = json.loads((VECTORS / "advertising_tokens.json").read_text())
RT_VECTORS = json.loads((VECTORS / "refresh_tokens.json").read_text())

MASTER = EncryptionKey(
    id=1001, keyset_id=-1, created=0, activates=0, expires=2**40, secret=b"M" * 32
)
SITE = EncryptionKey(id=2001, keyset_id=20, created=0, activates=0, expires=2**40, secret=b"S" * 32)
REFRESH = EncryptionKey(
    id=3001, keyset_id=-2, created=0, activates=0, expires=2**40, secret=b"R" * 32
)
ALL = {k.id: k for k in (MASTER, SITE, REFRESH)}
NOW = 1_700_000_000_123
UID32 = bytes(range(32))
FLH = bytes(range(100, 132))


def fixed(n: int) -> bytes:
    return bytes([0xA5]) * n


def only(*keys: EncryptionKey) -> Callable[[int], EncryptionKey | None]:
    return {k.id: k for k in keys}.get


def load_key(record: dict[str, Any]) -> EncryptionKey:
    return EncryptionKey(
        id=record["id"],
        keyset_id=record["keyset_id"],
        created=record["created"],
        activates=record["activates"],
        expires=record["expires"],
        secret=b64decode(record["secret"]),
    )


def from_fields(cls: type[Any], fields: dict[str, Any]) -> Any:
    values = dict(fields)
    values["scope"] = IdentityScope[values["scope"]]
    values["identity_type"] = IdentityType[values["identity_type"]]
    values["version"] = TokenVersion(values["version"])
    for name in ("raw_uid", "first_level_hash"):
        if name in values:
            values[name] = b64decode(values[name])
    return cls(**values)


def ad_token(**overrides: Any) -> AdvertisingToken:
    base: dict[str, Any] = {
        "scope": IdentityScope.UID2,
        "identity_type": IdentityType.EMAIL,
        "master_key_id": MASTER.id,
        "site_key_id": SITE.id,
        "expires_ms": NOW + 3_600_000,
        "created_ms": NOW,
        "site_id": 1234,
        "privacy_bits": 1,
        "established_ms": NOW - 1000,
        "refreshed_ms": NOW,
        "raw_uid": UID32,
    }
    base.update(overrides)
    return AdvertisingToken(**base)


def refresh_token(**overrides: Any) -> RefreshToken:
    base: dict[str, Any] = {
        "scope": IdentityScope.UID2,
        "identity_type": IdentityType.EMAIL,
        "key_id": REFRESH.id,
        "expires_ms": NOW + 86_400_000,
        "created_ms": NOW,
        "site_id": 1234,
        "privacy_bits": 1,
        "established_ms": NOW - 1000,
        "first_level_hash": FLH,
    }
    base.update(overrides)
    return RefreshToken(**base)


def decode(text: str) -> AdvertisingToken:
    return decode_advertising_token(text, master_key=only(MASTER), site_key=only(SITE))


# ----------------------------------------------------------------- raw builders for broken tokens


def site_payload(raw_uid: bytes = UID32, site_id: int = 1234) -> bytes:
    return (
        pack_i32(site_id)
        + pack_i64(0)
        + pack_i32(0)
        + pack_i32(1)
        + pack_i64(NOW - 1000)
        + pack_i64(NOW)
        + raw_uid
    )


def master_payload(site_blob: bytes, site_key_id: int = SITE.id) -> bytes:
    prefix = pack_i64(NOW + 1000) + pack_i64(NOW) + pack_i32(0) + b"\x01" + pack_i32(0) * 2
    return prefix + pack_i32(site_key_id) + site_blob


def v4_text(master_blob: bytes, b0: int = 0x03, master_key_id: int = MASTER.id) -> str:
    return b64url_encode(bytes([b0, 0x80]) + pack_i32(master_key_id) + master_blob)


def sealed_v4(raw_uid: bytes = UID32, b0: int = 0x03) -> str:
    site_blob = seal_with_iv(SITE.secret, fixed(12), site_payload(raw_uid))
    return v4_text(seal_with_iv(MASTER.secret, fixed(12), master_payload(site_blob)), b0)


def cbc(key: EncryptionKey, plain: bytes, iv: bytes = bytes(16)) -> bytes:
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key.secret), modes.CBC(iv)).encryptor()
    return iv + encryptor.update(padded) + encryptor.finalize()


def legacy_identity(ident: bytes, site_id: int = 1234, privacy: int = 1) -> bytes:
    text = b64encode(ident).encode()
    return pack_i32(site_id) + pack_i32(len(text)) + text + pack_i32(privacy) + pack_i64(NOW - 1000)


def v2_ad(site_plain: bytes, *, site_key_id: int = SITE.id, master_key_id: int = MASTER.id) -> str:
    master_plain = pack_i64(NOW + 1000) + pack_i32(site_key_id) + cbc(SITE, site_plain)
    return b64encode(b"\x02" + pack_i32(master_key_id) + cbc(MASTER, master_plain))


def v2_refresh(plain: bytes, key_id: int = REFRESH.id) -> str:
    prefix = b"\x02" + pack_i64(NOW) + pack_i64(NOW + 5000) + pack_i64(NOW + 65000)
    return b64encode(prefix + pack_i32(key_id) + cbc(REFRESH, plain))


# ---------------------------------------------------------------------------------- golden vectors


VECTOR_KEYS = {k["id"]: load_key(k) for k in AD_VECTORS["keys"]}


@pytest.mark.parametrize("vector", AD_VECTORS["v3_v4"], ids=lambda v: v["name"])
def test_v3_v4_vectors_decode_to_their_fields(vector: dict[str, Any]) -> None:
    token = decode_advertising_token(
        vector["token"], master_key=VECTOR_KEYS.get, site_key=VECTOR_KEYS.get
    )
    assert token == from_fields(AdvertisingToken, vector["fields"])


@pytest.mark.parametrize("vector", AD_VECTORS["v3_v4"], ids=lambda v: v["name"])
def test_v3_v4_vectors_encode_to_their_text(vector: dict[str, Any]) -> None:
    token = from_fields(AdvertisingToken, vector["fields"])
    if "encoded_identity_type" in vector:
        token = replace(token, identity_type=IdentityType[vector["encoded_identity_type"]])
    text = encode_advertising_token_with_ivs(
        token,
        master_key=VECTOR_KEYS[token.master_key_id],
        site_key=VECTOR_KEYS[token.site_key_id],
        master_iv=bytes.fromhex(vector["master_iv"]),
        site_iv=bytes.fromhex(vector["site_iv"]),
        identity_byte=vector.get("identity_byte"),
    )
    assert text == vector["token"]


def test_sdk_cross_platform_vector_has_the_documented_fields() -> None:
    (vector,) = [v for v in AD_VECTORS["v3_v4"] if v["name"] == "sdk_cross_platform_v4"]
    token = decode_advertising_token(
        vector["token"], master_key=VECTOR_KEYS.get, site_key=VECTOR_KEYS.get
    )
    assert token.version is TokenVersion.V4
    assert (token.master_key_id, token.site_key_id, token.site_id) == (164, 165, 9000)
    assert token.expires_ms == 2303254861000  # 2042-12-27T01:01:01Z
    assert token.created_ms == token.refreshed_ms == 1672534861000  # 2023-01-01T01:01:01Z
    assert token.established_ms == 1672531261000  # 2023-01-01T00:01:01Z
    assert (token.operator_site_id, token.operator_type, token.operator_version) == (0, 1, 0)
    assert (token.operator_key_id, token.publisher_id, token.client_key_id) == (0, 0, 0)
    assert token.privacy_bits == 0
    assert b64encode(token.raw_uid) == "ywsvDNINiZOVSsfkHpLpSJzXzhr6Jx9Z/4Q0+lsEUvM="
    assert len(vector["token"]) == 218


def test_operator_issued_lengths() -> None:
    by_name = {v["name"]: v["token"] for v in AD_VECTORS["v3_v4"]}
    assert len(by_name["v4_uid2_email_raw_uid_v2"]) == 218
    assert len(by_name["v4_uid2_phone_raw_uid_v3"]) == 219
    assert by_name["v4_uid2_email_raw_uid_v2"].startswith("A4")
    assert by_name["v4_uid2_phone_raw_uid_v3"].startswith("B4")
    assert by_name["v4_euid_email_raw_uid_v3"].startswith("E4")
    assert by_name["v4_euid_phone_raw_uid_v4_prod"].startswith("F4")
    assert by_name["v3_uid2_phone_raw_uid_v3"].startswith("B3")


@pytest.mark.parametrize("vector", AD_VECTORS["v2"], ids=lambda v: v["name"])
def test_v2_vectors_decode_to_their_fields(vector: dict[str, Any]) -> None:
    token = decode_advertising_token(
        vector["token"], master_key=VECTOR_KEYS.get, site_key=VECTOR_KEYS.get
    )
    assert token == from_fields(AdvertisingToken, vector["fields"])


@pytest.mark.parametrize("vector", AD_VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vectors_fail_with_their_error(vector: dict[str, Any]) -> None:
    with pytest.raises(getattr(errors, vector["error"])):
        decode_advertising_token(
            vector["token"], master_key=VECTOR_KEYS.get, site_key=VECTOR_KEYS.get
        )


REFRESH_VECTOR_KEYS = {k["id"]: load_key(k) for k in RT_VECTORS["keys"]}


@pytest.mark.parametrize("vector", RT_VECTORS["v3"], ids=lambda v: v["name"])
def test_refresh_v3_vectors_both_directions(vector: dict[str, Any]) -> None:
    token = from_fields(RefreshToken, vector["fields"])
    key = REFRESH_VECTOR_KEYS[token.key_id]
    assert decode_refresh_token(vector["token"], key_lookup=only(key)) == token
    text = encode_refresh_token_with_iv(token, key=key, iv=bytes.fromhex(vector["iv"]))
    assert text == vector["token"]
    assert len(text) == 168
    assert len(b64decode(text)) == 124


@pytest.mark.parametrize("vector", RT_VECTORS["v2"], ids=lambda v: v["name"])
def test_refresh_v2_vectors_decode(vector: dict[str, Any]) -> None:
    token = decode_refresh_token(vector["token"], key_lookup=REFRESH_VECTOR_KEYS.get)
    assert token == from_fields(RefreshToken, vector["fields"])
    assert token.version is TokenVersion.V2


# ------------------------------------------------------------------------- advertising: encoding


def test_encode_draws_ivs_from_random_and_round_trips() -> None:
    drawn: list[int] = []

    def random(n: int) -> bytes:
        drawn.append(n)
        return fixed(n)

    token = ad_token()
    text = encode_advertising_token(token, master_key=MASTER, site_key=SITE, random=random)
    assert drawn == [12, 12]
    assert decode(text) == token
    assert "=" not in text


def test_v3_encoding_is_standard_base64_of_the_same_bytes() -> None:
    v4 = encode_advertising_token(ad_token(), master_key=MASTER, site_key=SITE, random=fixed)
    v3 = encode_advertising_token(
        ad_token(version=TokenVersion.V3), master_key=MASTER, site_key=SITE, random=fixed
    )
    b3, b4 = b64decode(v3), b64url_decode(v4)
    assert (b3[1], b4[1]) == (0x70, 0x80)
    assert b3[0] == b4[0]
    assert b3[2:] == b4[2:]  # same IVs: identical bytes apart from the version
    assert (v3[1], v4[1]) == ("3", "4")
    assert decode(v3) == ad_token(version=TokenVersion.V3)


def test_encode_v4_forces_the_v4_format() -> None:
    text = encode_advertising_token_v4(
        ad_token(version=TokenVersion.V3), master_key=MASTER, site_key=SITE, random=fixed
    )
    assert decode(text).version is TokenVersion.V4


def test_v2_is_decode_only() -> None:
    with pytest.raises(ValueError, match="decode-only"):
        encode_advertising_token(
            ad_token(version=TokenVersion.V2), master_key=MASTER, site_key=SITE, random=fixed
        )


@pytest.mark.parametrize(("master", "site"), [(SITE, SITE), (MASTER, MASTER)])
def test_keys_must_match_the_token(master: EncryptionKey, site: EncryptionKey) -> None:
    with pytest.raises(ValueError, match="key ids"):
        encode_advertising_token(ad_token(), master_key=master, site_key=site, random=fixed)


def test_33_byte_uid_must_agree_with_the_token_identity() -> None:
    token = ad_token(raw_uid=b"\x04" + UID32)  # UID2 phone raw UID in an email token
    with pytest.raises(ValueError, match="scope/type"):
        encode_advertising_token(token, master_key=MASTER, site_key=SITE, random=fixed)


def test_32_byte_uid_tokens_read_back_as_uid2_email() -> None:
    token = ad_token(scope=IdentityScope.EUID, identity_type=IdentityType.PHONE)
    text = encode_advertising_token(token, master_key=MASTER, site_key=SITE, random=fixed)
    assert text.startswith("F4")
    decoded = decode(text)
    assert (decoded.scope, decoded.identity_type) == (IdentityScope.UID2, IdentityType.EMAIL)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("site_id", 2**31),
        ("privacy_bits", -(2**31) - 1),
        ("expires_ms", 2**63),
        ("operator_type", 256),
        ("operator_type", -1),
        ("master_key_id", 2**31),
        ("refreshed_ms", -(2**63) - 1),
    ],
)
def test_fields_must_fit_their_widths(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        ad_token(**{field: value})


@pytest.mark.parametrize("size", [0, 31, 34])
def test_raw_uid_size(size: int) -> None:
    with pytest.raises(ValueError, match="32 or 33"):
        ad_token(raw_uid=bytes(size))


def test_repr_hides_the_raw_uid_and_the_first_level_hash() -> None:
    assert "raw_uid" not in repr(ad_token())
    assert repr(UID32) not in repr(ad_token())
    assert "first_level_hash" not in repr(refresh_token())
    assert "site_id=1234" in repr(refresh_token())


# ------------------------------------------------------------------------- advertising: decoding


def test_33_byte_uid_states_scope_and_type() -> None:
    token = ad_token(scope=IdentityScope.EUID, identity_type=IdentityType.PHONE)
    token = replace(token, raw_uid=b"\xb4" + UID32)  # v4 raw UID: env PROD, version bit, EUID phone
    text = encode_advertising_token(token, master_key=MASTER, site_key=SITE, random=fixed)
    assert decode(text) == token


def test_33_byte_uid_disagreeing_with_the_header_is_rejected() -> None:
    with pytest.raises(errors.IdentityMismatch):
        decode(sealed_v4(b"\x14" + UID32, b0=0x07))  # EUID phone UID, UID2 phone header
    with pytest.raises(errors.IdentityMismatch):
        decode(sealed_v4(b"\x00" + UID32, b0=0x07))  # UID2 email UID, UID2 phone header


@pytest.mark.parametrize("size", [31, 34, 0])
def test_site_payload_with_wrong_uid_size(size: int) -> None:
    with pytest.raises(errors.MalformedToken):
        decode(sealed_v4(bytes(size)))


def test_invalid_identity_bits_in_the_header() -> None:
    with pytest.raises(errors.MalformedToken, match="identity type"):
        decode(sealed_v4(b0=0x0B))


@pytest.mark.parametrize(
    "text",
    ["", "A4A", "A$AAAAAA", "AA==AAAAAAAA", "A4AAAA", "A4AA" + "A" * 40, "A3AAAAAA", "A3AA$$$$"],
)
def test_malformed_advertising_tokens(text: str) -> None:
    with pytest.raises(errors.MalformedToken):
        decode(text)


def test_the_version_byte_is_outside_the_ciphertext() -> None:
    # As in the reference operator, the header is not authenticated: rewriting v4 as v3 (same
    # bytes, other version byte, standard base64) still opens; only the reported version changes.
    data = bytearray(b64url_decode(sealed_v4()))
    data[1] = 0x70
    token = decode(b64encode(bytes(data)))
    assert token.version is TokenVersion.V3
    assert token == replace(decode(sealed_v4()), version=TokenVersion.V3)


def test_v3_requires_standard_base64_for_the_whole_token() -> None:
    with pytest.raises(errors.MalformedToken):
        decode("A3AA-_AA")
    data = bytearray(b64url_decode(sealed_v4()))
    data[1] = 0x70
    text = b64encode(bytes(data))
    assert decode(text).version is TokenVersion.V3
    body = text[4:]
    assert "+" in body or "/" in body
    # The same bytes in the URL-safe alphabet after an unchanged header: not a v3 token.
    with pytest.raises(errors.MalformedToken):
        decode(text[:4] + body.translate(str.maketrans("+/", "-_")))


@pytest.mark.parametrize("second", [0x00, 0x71, 0x7F, 0x81, 0xFF])
def test_unknown_version_byte(second: int) -> None:
    text = b64encode(bytes([0x03, second]) + bytes(60))
    with pytest.raises(errors.UnsupportedTokenVersion):
        decode(text)


def test_url_alphabet_in_the_header_selects_base64url_for_detection() -> None:
    # 0xFB 0xF0 ... encodes to "-_" leading characters in base64url.
    data = bytes([0xFB, 0xF0, 0x80]) + bytes(57)
    text = b64url_encode(data)
    assert "-" in text[:4] or "_" in text[:4]
    with pytest.raises(errors.UnsupportedTokenVersion):
        decode(text)


def test_unknown_master_key() -> None:
    with pytest.raises(errors.UnknownTokenKey, match="Key ID: 1001"):
        decode_advertising_token(sealed_v4(), master_key=only(), site_key=only(SITE))


def test_master_lookup_can_be_restricted_to_the_master_keyset() -> None:
    # A token whose outer layer is sealed with a site key: the strict lookup refuses it.
    site_blob = seal_with_iv(SITE.secret, fixed(12), site_payload())
    forged = v4_text(
        seal_with_iv(SITE.secret, fixed(12), master_payload(site_blob)), master_key_id=SITE.id
    )
    assert decode_advertising_token(forged, master_key=ALL.get, site_key=ALL.get).site_id == 1234
    strict = {k.id: k for k in ALL.values() if k.keyset_id == -1}.get
    with pytest.raises(errors.UnknownTokenKey):
        decode_advertising_token(forged, master_key=strict, site_key=ALL.get)


def test_unknown_site_key() -> None:
    with pytest.raises(errors.UnknownTokenKey, match="Key ID: 2001"):
        decode_advertising_token(sealed_v4(), master_key=only(MASTER), site_key=only())


def test_master_layer_does_not_authenticate() -> None:
    wrong = replace(MASTER, secret=b"x" * 32)
    with pytest.raises(errors.TokenDecryptionFailed):
        decode_advertising_token(sealed_v4(), master_key=only(wrong), site_key=only(SITE))


def test_site_layer_does_not_authenticate() -> None:
    wrong = replace(SITE, secret=b"x" * 32)
    with pytest.raises(errors.TokenDecryptionFailed):
        decode_advertising_token(sealed_v4(), master_key=only(MASTER), site_key=only(wrong))


def test_tampered_ciphertext() -> None:
    data = bytearray(b64url_decode(sealed_v4()))
    data[40] ^= 1
    with pytest.raises(errors.TokenDecryptionFailed):
        decode(b64url_encode(bytes(data)))


def test_truncated_master_payload() -> None:
    short = seal_with_iv(MASTER.secret, fixed(12), bytes(40))
    with pytest.raises(errors.MalformedToken):
        decode(v4_text(short))


def test_too_short_for_a_header_and_a_tag() -> None:
    with pytest.raises(errors.MalformedToken):
        decode(b64url_encode(bytes([0x03, 0x80]) + bytes(20)))


# --------------------------------------------------------------------------------- advertising v2


def test_v2_round_trip_of_a_32_byte_uid() -> None:
    token = decode(v2_ad(legacy_identity(UID32, privacy=5)))
    assert token.version is TokenVersion.V2
    assert (token.scope, token.identity_type) == (IdentityScope.UID2, IdentityType.EMAIL)
    assert (token.raw_uid, token.site_id, token.privacy_bits) == (UID32, 1234, 5)
    assert token.created_ms == token.refreshed_ms == token.established_ms == NOW - 1000
    assert token.expires_ms == NOW + 1000
    assert (token.master_key_id, token.site_key_id) == (MASTER.id, SITE.id)


@pytest.mark.parametrize("high", [0x70, 0x80])
def test_v2_is_told_by_its_first_byte_whatever_the_second(high: int) -> None:
    # A v2 token's second byte is its master key id's first: 112 or 128 there is still v2.
    master = replace(MASTER, id=int.from_bytes(bytes([high, 0, 3, 0xE9]), "big", signed=True))
    text = v2_ad(legacy_identity(UID32), master_key_id=master.id)
    token = decode_advertising_token(text, master_key=only(master), site_key=only(SITE))
    assert token.version is TokenVersion.V2
    assert (token.master_key_id, token.raw_uid) == (master.id, UID32)


def test_v2_with_a_33_byte_uid_takes_scope_and_type_from_it() -> None:
    token = decode(v2_ad(legacy_identity(b"\x14" + UID32)))
    assert (token.scope, token.identity_type) == (IdentityScope.EUID, IdentityType.PHONE)


def test_v2_with_invalid_uid_identity_bits() -> None:
    with pytest.raises(errors.MalformedToken):
        decode(v2_ad(legacy_identity(b"\x08" + UID32)))


@pytest.mark.parametrize("ident", [b"", bytes(31), bytes(34)])
def test_v2_uid_size(ident: bytes) -> None:
    with pytest.raises(errors.MalformedToken):
        decode(v2_ad(legacy_identity(ident)))


@pytest.mark.parametrize(
    "site_plain",
    [
        b"\x00" * 7,  # no room for site id and length
        pack_i32(1) + pack_i32(-1) + bytes(20),  # negative length
        pack_i32(1) + pack_i32(44) + bytes(10),  # length beyond the payload
        pack_i32(1) + pack_i32(4) + b"AAAA" + bytes(13),  # trailing bytes
        pack_i32(1) + pack_i32(4) + b"A$A=" + bytes(12),  # not base64
    ],
)
def test_v2_malformed_identity(site_plain: bytes) -> None:
    with pytest.raises(errors.MalformedToken):
        decode(v2_ad(site_plain))


def test_v2_unknown_keys() -> None:
    text = v2_ad(legacy_identity(UID32))
    with pytest.raises(errors.UnknownTokenKey):
        decode_advertising_token(text, master_key=only(), site_key=only(SITE))
    with pytest.raises(errors.UnknownTokenKey):
        decode_advertising_token(text, master_key=only(MASTER), site_key=only())


def test_v2_bad_padding() -> None:
    # Decrypting under the wrong key yields random padding (this IV/key pair gives bad padding).
    wrong = replace(MASTER, secret=b"y" * 32)
    with pytest.raises(errors.TokenDecryptionFailed):
        decode_advertising_token(
            v2_ad(legacy_identity(UID32)), master_key=only(wrong), site_key=only(SITE)
        )


@pytest.mark.parametrize("body_size", [0, 15, 17])
def test_v2_ciphertext_not_whole_blocks(body_size: int) -> None:
    text = b64encode(b"\x02" + pack_i32(MASTER.id) + bytes(16) + bytes(body_size))
    with pytest.raises(errors.MalformedToken):
        decode(text)


def test_v2_too_short_for_a_key_id() -> None:
    with pytest.raises(errors.MalformedToken):
        decode("AgAA")


def test_v2_master_payload_too_short() -> None:
    text = b64encode(b"\x02" + pack_i32(MASTER.id) + cbc(MASTER, bytes(11)))
    with pytest.raises(errors.MalformedToken):
        decode(text)


def test_v2_whole_token_must_be_standard_base64() -> None:
    text = v2_ad(legacy_identity(UID32))
    with pytest.raises(errors.MalformedToken):
        decode(text[:10] + "-" + text[11:])


# -------------------------------------------------------------------------------- refresh tokens


def decode_rt(text: str) -> RefreshToken:
    return decode_refresh_token(text, key_lookup=only(REFRESH))


def test_refresh_round_trip_and_size() -> None:
    token = refresh_token(scope=IdentityScope.EUID, identity_type=IdentityType.PHONE)
    text = encode_refresh_token(token, key=REFRESH, random=fixed)
    assert len(text) == 168
    assert text.startswith("F3")
    assert decode_rt(text) == token


def test_refresh_encoder_rejects_v2_and_foreign_keys() -> None:
    for version in (TokenVersion.V2, TokenVersion.V4):
        with pytest.raises(ValueError, match="v3"):
            encode_refresh_token(refresh_token(version=version), key=REFRESH, random=fixed)
    with pytest.raises(ValueError, match="key id"):
        encode_refresh_token(refresh_token(), key=MASTER, random=fixed)


@pytest.mark.parametrize("size", [0, 31, 33])
def test_first_level_hash_size(size: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        refresh_token(first_level_hash=bytes(size))


def test_refresh_field_widths() -> None:
    with pytest.raises(ValueError, match="key_id"):
        refresh_token(key_id=2**31)


I32_FIELDS = ["site_id", "privacy_bits", "operator_site_id", "operator_version",
              "operator_key_id", "client_key_id"]  # fmt: skip
I64_FIELDS = ["publisher_id", "expires_ms", "created_ms", "established_ms"]


@pytest.mark.parametrize(
    ("build", "field", "bits"),
    [
        *[(refresh_token, name, 32) for name in [*I32_FIELDS, "key_id"]],
        *[(refresh_token, name, 64) for name in I64_FIELDS],
        *[(ad_token, name, 32) for name in [*I32_FIELDS, "master_key_id", "site_key_id"]],
        *[(ad_token, name, 64) for name in [*I64_FIELDS, "refreshed_ms"]],
        (refresh_token, "operator_type", 0),
        (ad_token, "operator_type", 0),
    ],
)
def test_a_token_is_built_only_with_values_its_fields_carry(
    build: Callable[..., object], field: str, bits: int
) -> None:
    low, high = (0, 256) if bits == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1))
    build(**{field: low})
    build(**{field: high - 1})
    for value in (low - 1, high):
        with pytest.raises(ValueError, match=f"^{field} does not fit its field$"):
            build(**{field: value})


def sealed_refresh(payload: bytes, b0: int = 0x03, key_id: int = REFRESH.id) -> str:
    blob = seal_with_iv(REFRESH.secret, fixed(12), payload)
    return b64encode(bytes([b0, 0x70]) + pack_i32(key_id) + blob)


def refresh_payload(identity: int = 0x03) -> bytes:
    body = pack_i64(NOW) + pack_i64(NOW) + pack_i32(0) + b"\x01" + pack_i32(0) * 2
    return (
        body + pack_i32(1) + pack_i64(0) + pack_i32(0) * 2 + pack_i64(0) + bytes([identity]) + FLH
    )


def test_refresh_payload_identity_must_match_the_header() -> None:
    assert decode_rt(sealed_refresh(refresh_payload(0x03))).identity_type is IdentityType.EMAIL
    with pytest.raises(errors.IdentityMismatch):
        decode_rt(sealed_refresh(refresh_payload(0x07)))
    with pytest.raises(errors.IdentityMismatch):
        decode_rt(sealed_refresh(refresh_payload(0x13)))
    # Bits outside scope and type may differ between the header and the payload, as upstream.
    token = decode_rt(sealed_refresh(refresh_payload(0x03), b0=0x00))
    assert (token.scope, token.identity_type) == (IdentityScope.UID2, IdentityType.EMAIL)


def test_refresh_header_identity_bits() -> None:
    with pytest.raises(errors.MalformedToken):
        decode_rt(sealed_refresh(refresh_payload(0x0F), b0=0x0F))


def test_refresh_unknown_key_and_wrong_key() -> None:
    text = encode_refresh_token(refresh_token(), key=REFRESH, random=fixed)
    with pytest.raises(errors.UnknownTokenKey, match="3001"):
        decode_refresh_token(text, key_lookup=only(MASTER))
    with pytest.raises(errors.TokenDecryptionFailed):
        decode_refresh_token(text, key_lookup=only(replace(REFRESH, secret=b"z" * 32)))


@pytest.mark.parametrize(
    "text",
    [
        "",  # empty
        "AA==",  # one byte
        "not base64!",
        b64encode(bytes([0x03, 0x70]) + bytes(121)),  # v3 of the wrong size
        b64encode(b"\x02" + bytes(20)),  # v2 too short for its prefix
        b64encode(b"\x02" + bytes(27)),  # v2 one byte short of its prefix
        sealed_refresh(refresh_payload() + b"\x00"),  # v3 of 125 bytes, sealed properly
    ],
)
def test_malformed_refresh_tokens(text: str) -> None:
    with pytest.raises(errors.MalformedToken):
        decode_rt(text)


def test_a_refresh_token_is_v3_by_its_second_byte_before_v2_by_its_first() -> None:
    # Identity byte 0x02 (UID2 email without the alignment bits) then the v3 version byte.
    data = seal_refresh_token(
        identity_byte=0x02, key=REFRESH, iv=bytes(12), expires_ms=NOW + 1000, created_ms=NOW,
        site_id=1234, privacy_bits=1, established_ms=NOW - 1000, first_level_hash=FLH,
    )  # fmt: skip
    assert data[:2] == b"\x02\x70"
    token = decode_rt(b64encode(data))
    assert token.version is TokenVersion.V3
    assert (token.site_id, token.first_level_hash) == (1234, FLH)


@pytest.mark.parametrize("data", [bytes([0x03, 0x80]) + bytes(122), bytes(124), b"\x01\x02"])
def test_unsupported_refresh_versions(data: bytes) -> None:
    with pytest.raises(errors.UnsupportedTokenVersion, match="Invalid refresh token version"):
        decode_rt(b64encode(data))


def test_refresh_v2_decodes_as_uid2_email_with_valid_till_as_expiry() -> None:
    token = decode_rt(v2_refresh(legacy_identity(FLH, privacy=3)))
    assert token.version is TokenVersion.V2
    assert (token.scope, token.identity_type) == (IdentityScope.UID2, IdentityType.EMAIL)
    assert (token.created_ms, token.expires_ms) == (NOW, NOW + 65000)
    assert (token.first_level_hash, token.privacy_bits, token.site_id) == (FLH, 3, 1234)
    assert token.key_id == REFRESH.id


def test_refresh_v2_expiry_is_its_valid_till_whatever_its_expires() -> None:
    prefix = b"\x02" + pack_i64(NOW) + pack_i64(NOW + 5000) + pack_i64(NOW + 10000)
    text = b64encode(prefix + pack_i32(REFRESH.id) + cbc(REFRESH, legacy_identity(FLH)))
    assert decode_rt(text).expires_ms == NOW + 10000


@pytest.mark.parametrize("length", [-1, -10, -11])
def test_a_legacy_identity_of_negative_length_is_malformed(length: int) -> None:
    # -11 and -10 would make the total length add up without the sign check.
    plain = pack_i32(1) + pack_i32(length) + bytes(12 + length)  # 8 + length + 12 in all
    with pytest.raises(errors.MalformedToken):
        decode_rt(v2_refresh(plain))
    with pytest.raises(errors.MalformedToken):
        decode(v2_ad(plain))


def test_a_legacy_identity_with_trailing_bytes_is_malformed() -> None:
    with pytest.raises(errors.MalformedToken):
        decode(v2_ad(legacy_identity(UID32) + b"\x00"))
    with pytest.raises(errors.MalformedToken):
        decode_rt(v2_refresh(legacy_identity(FLH) + b"\x00"))


def test_refresh_v2_failures() -> None:
    with pytest.raises(errors.MalformedToken):
        decode_rt(v2_refresh(legacy_identity(bytes(31))))
    with pytest.raises(errors.MalformedToken):
        decode_rt(v2_refresh(b"\x00" * 9))
    with pytest.raises(errors.UnknownTokenKey):
        decode_rt(v2_refresh(legacy_identity(FLH), key_id=77))
