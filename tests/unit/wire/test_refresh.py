"""The refresh envelope, refresh responses and identity issuance (operator-api §5.5, §5.9, §6.2)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from uid2_operator import errors
from uid2_operator.wire.aead import open_, seal_with_iv
from uid2_operator.wire.encoding import b64decode, b64encode, pack_i32
from uid2_operator.wire.keys import EncryptionKey
from uid2_operator.wire.refresh import (
    ENVELOPE_LENGTH,
    ENVELOPE_SIZE,
    decrypt_refresh_response,
    encrypt_refresh_response,
    issue_identity,
    read_refresh_envelope_header,
    unwrap_refresh_envelope,
    wrap_refresh_token,
    wrap_refresh_token_with_iv,
)
from uid2_operator.wire.scope import IdentityScope, IdentityType
from uid2_operator.wire.tokens import (
    RefreshToken,
    TokenVersion,
    decode_advertising_token,
    decode_refresh_token,
    encode_refresh_token,
)

VECTORS = json.loads(
    (Path(__file__).resolve().parents[2] / "vectors" / "refresh_tokens.json").read_text()
)
REFRESH = EncryptionKey(
    id=3001, keyset_id=-2, created=0, activates=0, expires=2**40, secret=b"R" * 32
)
MASTER = EncryptionKey(
    id=1001, keyset_id=-1, created=0, activates=0, expires=2**40, secret=b"M" * 32
)
SITE = EncryptionKey(id=2001, keyset_id=20, created=0, activates=0, expires=2**40, secret=b"S" * 32)
NOW = 1_700_000_000_123
RESPONSE_KEY = bytes(range(32))


class Seq:
    """Deterministic random source: ``sha256(f"{label}:{n}")`` blocks, as the vectors say."""

    def __init__(self, label: str) -> None:
        self.label, self.n = label, 0

    def __call__(self, size: int) -> bytes:
        out = b""
        while len(out) < size:
            out += hashlib.sha256(f"{self.label}:{self.n}".encode()).digest()
            self.n += 1
        return out[:size]


def load_key(record: dict[str, Any]) -> EncryptionKey:
    return EncryptionKey(
        id=record["id"],
        keyset_id=record["keyset_id"],
        created=record["created"],
        activates=record["activates"],
        expires=record["expires"],
        secret=b64decode(record["secret"]),
    )


KEYS = {k["id"]: load_key(k) for k in VECTORS["keys"]}


def only(*keys: EncryptionKey) -> Callable[[int], EncryptionKey | None]:
    return {k.id: k for k in keys}.get


def inner_token() -> str:
    token = RefreshToken(
        scope=IdentityScope.UID2,
        identity_type=IdentityType.EMAIL,
        key_id=REFRESH.id,
        expires_ms=NOW + 1000,
        created_ms=NOW,
        site_id=99,
        privacy_bits=1,
        established_ms=NOW,
        first_level_hash=bytes(32),
    )
    return encode_refresh_token(token, key=REFRESH, random=Seq("inner"))


def envelope_with(plaintext: bytes, key: EncryptionKey = REFRESH, scope_byte: int = 0) -> str:
    return b64encode(
        bytes([scope_byte]) + pack_i32(key.id) + seal_with_iv(key.secret, bytes(12), plaintext)
    )


# ---------------------------------------------------------------------------------- golden vectors


@pytest.mark.parametrize("vector", VECTORS["v3"], ids=lambda v: v["name"])
def test_envelope_vectors_both_directions(vector: dict[str, Any]) -> None:
    env = vector["envelope"]
    key = KEYS[vector["fields"]["key_id"]]
    response_key = b64decode(env["response_key"])
    text = wrap_refresh_token_with_iv(
        vector["token"], response_key, key, IdentityScope[env["scope"]], bytes.fromhex(env["iv"])
    )
    assert text == env["text"]
    assert len(text) == ENVELOPE_LENGTH
    assert unwrap_refresh_envelope(env["text"], only(key)) == (response_key, vector["token"])
    header = read_refresh_envelope_header(env["text"])
    assert header == (IdentityScope[env["scope"]] << 4, key.id)


def test_envelope_plaintext_is_the_compact_json_in_key_order() -> None:
    (vector, *_) = VECTORS["v3"]
    data = b64decode(vector["envelope"]["text"])
    assert len(data) == ENVELOPE_SIZE
    key = KEYS[vector["fields"]["key_id"]]
    plain = open_(key.secret, data[5:]).decode()
    assert plain == (
        '{"refresh_response_key":"' + vector["envelope"]["response_key"] + '",'
        '"refresh_token":"' + vector["token"] + '"}'
    )


@pytest.mark.parametrize("vector", VECTORS["responses"], ids=lambda v: v["name"])
def test_response_vectors_both_directions(vector: dict[str, Any]) -> None:
    key = b64decode(vector["response_key"])
    assert (
        encrypt_refresh_response(key, vector["payload"], Seq(vector["random_label"]))
        == (vector["text"])
    )
    assert decrypt_refresh_response(key, vector["text"]) == vector["payload"]


@pytest.mark.parametrize("vector", VECTORS["issued"], ids=lambda v: v["name"])
def test_issued_identity_vectors(vector: dict[str, Any]) -> None:
    i = vector["inputs"]
    body = issue_identity(
        now_ms=i["now_ms"],
        identity_lifetime_s=i["identity_lifetime_s"],
        refresh_lifetime_s=i["refresh_lifetime_s"],
        refresh_after_s=i["refresh_after_s"],
        master_key=KEYS[i["master_key_id"]],
        site_key=KEYS[i["site_key_id"]],
        refresh_key=KEYS[i["refresh_key_id"]],
        site_id=i["site_id"],
        privacy_bits=i["privacy_bits"],
        established_ms=i["established_ms"],
        raw_uid=b64decode(i["raw_uid"]),
        first_level_hash=b64decode(i["first_level_hash"]),
        scope=IdentityScope[i["scope"]],
        identity_type=IdentityType[i["identity_type"]],
        random=Seq(vector["random_label"]),
    )
    assert body == vector["body"]


def test_sdk_expired_identity_envelope_names_an_unknown_key() -> None:
    vector = VECTORS["sdk_expired_identity"]
    identity = json.loads(vector["identity_json"])
    text = identity["refresh_token"]
    assert len(text) == ENVELOPE_LENGTH
    header = read_refresh_envelope_header(text)
    assert header.scope_byte == vector["envelope_scope_byte"] == 0
    assert header.key_id == vector["envelope_key_id"] == 4
    with pytest.raises(errors.RefreshKeyUnknown) as caught:
        unwrap_refresh_envelope(text, KEYS.get)
    assert caught.value.detail == vector["message"]
    assert str(caught.value) == "Invalid key: Generator of this token (Key ID: 4) does not exist."
    assert type(caught.value).__name__ == vector["error"]


# ------------------------------------------------------------------------------------ wrapping


def test_wrap_draws_its_iv_from_random_and_round_trips() -> None:
    inner = inner_token()
    text = wrap_refresh_token(inner, RESPONSE_KEY, REFRESH, IdentityScope.EUID, Seq("wrap"))
    assert len(text) == 388
    assert b64decode(text)[0] == 0x10
    opened = unwrap_refresh_envelope(text, only(REFRESH))
    assert opened.response_key == RESPONSE_KEY
    assert opened.refresh_token == inner
    assert decode_refresh_token(opened.refresh_token, key_lookup=only(REFRESH)).site_id == 99


def test_an_opened_envelopes_repr_shows_neither_its_key_nor_its_token() -> None:
    inner = inner_token()
    text = wrap_refresh_token(inner, RESPONSE_KEY, REFRESH, IdentityScope.UID2, Seq("repr"))
    opened = unwrap_refresh_envelope(text, only(REFRESH))
    shown = repr(opened)
    assert shown.startswith("OpenedRefreshEnvelope(")
    assert repr(RESPONSE_KEY)[2:-1] not in shown
    assert inner not in shown
    assert opened == (RESPONSE_KEY, inner)


@pytest.mark.parametrize(
    ("inner", "response_key", "message"),
    [
        ("A" * 168, bytes(31), "32 bytes"),
        ("A" * 167, bytes(32), "168 characters"),
        ("$" * 168, bytes(32), "standard base64"),
        ("A" * 168, bytes(32), "124 bytes"),
    ],
)
def test_wrap_rejects_what_would_not_make_388_characters(
    inner: str, response_key: bytes, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        wrap_refresh_token(inner, response_key, REFRESH, IdentityScope.UID2, Seq("x"))


# ------------------------------------------------------------------------------------ unwrapping


def test_not_base64() -> None:
    with pytest.raises(errors.RefreshNotBase64) as caught:
        unwrap_refresh_envelope("%" * 388, only(REFRESH))
    assert caught.value.detail == "Invalid body: Body is not valid base64."
    with pytest.raises(errors.RefreshNotBase64):
        read_refresh_envelope_header("%%%%")


def test_too_short_for_a_key_id() -> None:
    with pytest.raises(errors.RefreshDecryptionFailed):
        unwrap_refresh_envelope("AAAA", only(REFRESH))
    with pytest.raises(errors.RefreshDecryptionFailed):
        read_refresh_envelope_header("AAAA")


def test_negative_key_ids_are_reported_signed() -> None:
    text = b64encode(b"\x00\xff\xff\xff\xfe" + bytes(40))
    assert read_refresh_envelope_header(text).key_id == -2
    with pytest.raises(errors.RefreshKeyUnknown, match=r"\(Key ID: -2\)"):
        unwrap_refresh_envelope(text, only(REFRESH))


def test_wrong_key_material() -> None:
    text = wrap_refresh_token(inner_token(), RESPONSE_KEY, REFRESH, IdentityScope.UID2, Seq("w"))
    wrong = replace(REFRESH, secret=b"w" * 32)
    with pytest.raises(errors.RefreshDecryptionFailed) as caught:
        unwrap_refresh_envelope(text, only(wrong))
    assert caught.value.detail == "Invalid data: Check encryption method and encryption key."


def test_the_lookup_decides_which_keys_may_open_envelopes() -> None:
    text = envelope_with(b"{}", key=MASTER)
    with pytest.raises(errors.RefreshKeyUnknown):
        unwrap_refresh_envelope(text, only(REFRESH))
    with pytest.raises(errors.RefreshPayloadInvalid):
        unwrap_refresh_envelope(text, only(MASTER))


@pytest.mark.parametrize(
    "plaintext",
    [
        b"\xff\xfe",
        b"not json",
        b"[1, 2]",
        b"{}",
        b'{"refresh_response_key": 5, "refresh_token": "x"}',
        b'{"refresh_response_key": "AAAA", "refresh_token": 7}',
        b'{"refresh_response_key": "A$==", "refresh_token": "x"}',
        b'{"refresh_response_key": "AAAA", "refresh_token": "x"}',
        b"[" * 100_000,
    ],
)
def test_payload_invalid(plaintext: bytes) -> None:
    with pytest.raises(errors.RefreshPayloadInvalid) as caught:
        unwrap_refresh_envelope(envelope_with(plaintext), only(REFRESH))
    assert caught.value.detail == (
        "Invalid format: Payload is not valid json or missing required data."
    )


def test_inner_token_is_returned_as_is() -> None:
    payload = json.dumps({"refresh_response_key": b64encode(RESPONSE_KEY), "refresh_token": "x"})
    opened = unwrap_refresh_envelope(envelope_with(payload.encode()), only(REFRESH))
    assert opened == (RESPONSE_KEY, "x")


# ----------------------------------------------------------------------------------- responses


def test_response_has_no_timestamp_or_nonce_prefix() -> None:
    text = encrypt_refresh_response(RESPONSE_KEY, {"status": "optout"}, Seq("r"))
    data = b64decode(text)
    assert data[:12] == Seq("r")(12)
    assert len(data) == 12 + len(b'{"status":"optout"}') + 16


@pytest.mark.parametrize(
    "text",
    [
        "%%%",
        "",
        b64encode(bytes(40)),
        b64encode(seal_with_iv(RESPONSE_KEY, bytes(12), b"{nope")),
        b64encode(seal_with_iv(RESPONSE_KEY, bytes(12), b"\xff")),
    ],
)
def test_response_failures(text: str) -> None:
    with pytest.raises(errors.ResponseEnvelopeError):
        decrypt_refresh_response(RESPONSE_KEY, text)


def test_response_under_another_key() -> None:
    text = encrypt_refresh_response(RESPONSE_KEY, {"status": "success"}, Seq("r"))
    with pytest.raises(errors.ResponseEnvelopeError):
        decrypt_refresh_response(bytes(32), text)


# ------------------------------------------------------------------------------------- issuance


@pytest.mark.parametrize(
    ("scope", "kind", "raw_uid"),
    [
        (IdentityScope.UID2, IdentityType.EMAIL, bytes(range(32))),
        (IdentityScope.UID2, IdentityType.PHONE, b"\x04" + bytes(32)),
        (IdentityScope.EUID, IdentityType.EMAIL, b"\x10" + bytes(32)),
    ],
)
def test_issue_identity(scope: IdentityScope, kind: IdentityType, raw_uid: bytes) -> None:
    flh = bytes(range(1, 33))
    body = issue_identity(
        now_ms=NOW,
        identity_lifetime_s=3600,
        refresh_lifetime_s=86400,
        refresh_after_s=900,
        master_key=MASTER,
        site_key=SITE,
        refresh_key=REFRESH,
        site_id=1234,
        privacy_bits=3,
        established_ms=NOW - 5000,
        raw_uid=raw_uid,
        first_level_hash=flh,
        scope=scope,
        identity_type=kind,
        random=Seq("issue"),
    )
    assert list(body) == [
        "advertising_token",
        "refresh_token",
        "identity_expires",
        "refresh_expires",
        "refresh_from",
        "refresh_response_key",
    ]
    assert body["identity_expires"] == NOW + 3_600_000
    assert body["refresh_expires"] == NOW + 86_400_000
    assert body["refresh_from"] == NOW + 900_000

    ad = decode_advertising_token(
        body["advertising_token"], master_key=only(MASTER), site_key=only(SITE)
    )
    assert ad.version is TokenVersion.V4
    assert (ad.scope, ad.identity_type, ad.raw_uid) == (scope, kind, raw_uid)
    assert (ad.created_ms, ad.refreshed_ms, ad.expires_ms) == (NOW, NOW, NOW + 3_600_000)
    assert (ad.site_id, ad.privacy_bits, ad.established_ms) == (1234, 3, NOW - 5000)

    assert len(body["refresh_token"]) == 388
    opened = unwrap_refresh_envelope(body["refresh_token"], only(REFRESH))
    assert b64encode(opened.response_key) == body["refresh_response_key"]
    rt = decode_refresh_token(opened.refresh_token, key_lookup=only(REFRESH))
    assert (rt.scope, rt.identity_type, rt.first_level_hash) == (scope, kind, flh)
    assert (rt.created_ms, rt.expires_ms, rt.site_id) == (NOW, NOW + 86_400_000, 1234)
    assert (rt.privacy_bits, rt.established_ms, rt.key_id) == (3, NOW - 5000, REFRESH.id)
    assert read_refresh_envelope_header(body["refresh_token"]).scope_byte == scope << 4
