"""Client-side token generation: the golden vector, the request parser, opening and sealing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from uid2_operator import errors
from uid2_operator.wire.aead import seal_with_iv
from uid2_operator.wire.cstg import (
    CURVE_ORDER,
    DEFAULT_CSTG_TIMESTAMP_WINDOW,
    CstgRequest,
    build_request,
    load_private_key_der,
    load_public_key_der,
    open_request,
    open_response,
    parse_request,
    private_key_der,
    private_key_from_random,
    public_key_der,
    request_aad,
    seal_response,
    shared_secret,
)
from uid2_operator.wire.encoding import b64decode, b64encode
from uid2_operator.wire.envelope import TimestampWindow
from uid2_operator.wire.identity import InputKind
from uid2_operator.wire.scope import IdentityType

VECTOR = json.loads((Path(__file__).resolve().parents[2] / "vectors" / "cstg.json").read_text())
SERVER_PRIVATE = load_private_key_der(b64decode(VECTOR["server_private_key"][9:]))
SERVER_PUBLIC_DER = b64decode(VECTOR["server_public_key"][9:])
CLIENT_PRIVATE = load_private_key_der(b64decode(VECTOR["client_private_key_pkcs8"]))
SECRET = bytes.fromhex(VECTOR["shared_secret_hex"])
EMAIL_HASH = VECTOR["email_hash"]
PHONE_HASH = b64encode(hashlib.sha256(b"+12345678901").digest())
TS = 1_700_000_000_000


class Counter:
    """Deterministic bytes: a counter run through SHA-256."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, size: int) -> bytes:
        out = b""
        while len(out) < size:
            out += hashlib.sha256(self.n.to_bytes(8, "big")).digest()
            self.n += 1
        return out[:size]


def request(**fields: Any) -> CstgRequest:
    base: dict[str, Any] = {
        "payload": None,
        "iv": None,
        "public_key": None,
        "timestamp": TS,
        "subscription_id": "4WvryDGbR5",
        "app_name": None,
    }
    base.update(fields)
    return CstgRequest(**base)


def sealed(inner: bytes, *, ts: int = TS, app: str | None = None, iv: bytes = bytes(12)) -> Any:
    """A request whose payload is ``inner`` sealed to the vector's server key."""
    blob = seal_with_iv(SECRET, iv, inner, request_aad(ts, app))
    return request(
        payload=b64encode(blob[12:]),
        iv=b64encode(iv),
        public_key=VECTOR["client_public_key_spki"],
        timestamp=ts,
        app_name=app,
    )


def open_(req: CstgRequest, *, phone: bool = True, now: int = TS, **kw: Any) -> Any:
    return open_request(req, SERVER_PRIVATE, now_ms=now, phone_support=phone, **kw)


# ----------------------------------------------------------------------------- golden vector


def test_shared_secret_vector_from_both_sides() -> None:
    client_public = load_public_key_der(b64decode(VECTOR["client_public_key_spki"]))
    server_public = load_public_key_der(SERVER_PUBLIC_DER)
    assert shared_secret(SERVER_PRIVATE, client_public) == SECRET
    assert shared_secret(CLIENT_PRIVATE, server_public) == SECRET
    assert public_key_der(SERVER_PRIVATE.public_key()) == SERVER_PUBLIC_DER
    assert public_key_der(CLIENT_PRIVATE.public_key()) == b64decode(
        VECTOR["client_public_key_spki"]
    )


@pytest.mark.parametrize("case", VECTOR["requests"], ids=lambda c: c["name"])
def test_vector_requests_open_and_reseal(case: dict[str, Any]) -> None:
    body = case["request"]
    parsed = parse_request(json.dumps(body).encode())
    assert request_aad(parsed.timestamp, parsed.app_name) == case["aad"].encode()
    opened = open_(parsed, now=body["timestamp"])
    assert opened.secret == SECRET
    assert opened.kind is InputKind.EMAIL_HASH
    assert opened.identity.digest == b64decode(EMAIL_HASH)
    assert opened.identity.kind is IdentityType.EMAIL
    assert (opened.timestamp, opened.app_name) == (body["timestamp"], body.get("app_name"))
    # The other direction: the same IV, key and AAD reproduce the payload.
    iv = b64decode(body["iv"])
    blob = seal_with_iv(SECRET, iv, case["inner"].encode(), case["aad"].encode())
    assert b64encode(blob[12:]) == body["payload"]


def test_vector_response_both_directions() -> None:
    vec = VECTOR["response"]
    assert open_response(SECRET, vec["sealed"]) == vec["json"]
    iv = bytes.fromhex(vec["iv_hex"])
    assert seal_response(SECRET, vec["json"], lambda n: iv[:n]) == vec["sealed"]


# -------------------------------------------------------------------------------------- keys


def test_private_key_from_random_is_reproducible_and_in_range() -> None:
    first = private_key_from_random(Counter())
    again = private_key_from_random(Counter())
    assert private_key_der(first) == private_key_der(again)
    zeros = private_key_from_random(bytes)
    assert zeros.private_numbers().private_value == 1
    ones = private_key_from_random(lambda n: b"\xff" * n)
    assert 1 <= ones.private_numbers().private_value < CURVE_ORDER
    assert load_private_key_der(private_key_der(first)).private_numbers() == (
        first.private_numbers()
    )


def test_private_key_takes_forty_random_bytes_reduced_into_the_group() -> None:
    # 320 bits of seed reduced modulo n - 1 leave a bias under 2^-64 (32 bytes would leave 2^-32).
    asked: list[int] = []

    def all_ones(size: int) -> bytes:
        asked.append(size)
        return b"\xff" * size

    key = private_key_from_random(all_ones)
    assert asked == [40]
    expected = 1 + (2**320 - 1) % (CURVE_ORDER - 1)
    assert expected == 0xFFFFFFFE00000001431905529C0166CD22159165B6FAAE71F756A572FC632550
    assert key.private_numbers().private_value == expected


def _other_keys() -> list[bytes]:
    p384 = ec.derive_private_key(5, ec.SECP384R1()).public_key()
    edkey = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key()
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return [p384.public_bytes(*fmt), edkey.public_bytes(*fmt)]


@pytest.mark.parametrize("der", [b"", b"\x30\x00", b"junk", *_other_keys()])
def test_public_keys_other_than_p256_are_bad(der: bytes) -> None:
    with pytest.raises(errors.CstgBadPublicKey):
        load_public_key_der(der)


def test_private_keys_other_than_p256_are_refused() -> None:
    other = ec.derive_private_key(5, ec.SECP384R1())
    edkey = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32))
    for key in (other, edkey):
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with pytest.raises(ValueError, match="P-256"):
            load_private_key_der(der)


# --------------------------------------------------------------------------------------- AAD


@pytest.mark.parametrize(
    ("timestamp", "app", "expected"),
    [
        (TS, None, b"[1700000000000]"),
        (-5, None, b"[-5]"),
        (TS, "com.example.app", b'[1700000000000,"com.example.app"]'),
        (1, 'a"b\\c/\u00e9', '[1,"a\\"b\\\\c/\u00e9"]'.encode()),
        (1, "\b\t\n\f\r\x00\x1f\x7f", b'[1,"\\b\\t\\n\\f\\r\\u0000\\u001F\x7f"]'),
        (1, "\ud800x", b'[1,"?x"]'),
        (1, "My App 2", b'[1,"My App 2"]'),
    ],
)
def test_request_aad(timestamp: int, app: str | None, expected: bytes) -> None:
    assert request_aad(timestamp, app) == expected


# --------------------------------------------------------------------------------- the body


def test_parse_full_request() -> None:
    body = {
        "payload": "p",
        "iv": "i",
        "public_key": "k",
        "timestamp": TS,
        "subscription_id": "s",
        "app_name": "a",
        "extra": [1],
    }
    assert parse_request(json.dumps(body)) == CstgRequest("p", "i", "k", TS, "s", "a")


def test_parse_defaults_absent_and_null_fields() -> None:
    assert parse_request(b"{}") == CstgRequest(None, None, None, 0, None, None)
    nulls = b'{"payload":null,"timestamp":null,"app_name":null}'
    assert parse_request(nulls) == CstgRequest(None, None, None, 0, None, None)


@pytest.mark.parametrize("body", [b"", "", b"null", b" null "])
def test_missing_body(body: bytes | str) -> None:
    with pytest.raises(errors.CstgJsonMissing) as info:
        parse_request(body)
    assert info.value.detail == "json payload expected but not found"
    assert isinstance(info.value, errors.CstgClientError)


@pytest.mark.parametrize(
    "body",
    [
        b"not a valid json payload",
        b" ",
        b"\xff{}",
        b"[1]",
        b'"text"',
        b'{"timestamp": NaN}',
        b"[" * 100_000,
        b'{"payload": 1}',
        b'{"iv": {}}',
        b'{"public_key": []}',
        b'{"subscription_id": 5}',
        b'{"app_name": true}',
        b'{"timestamp": "1"}',
        b'{"timestamp": 1.5}',
        b'{"timestamp": true}',
        b'{"timestamp": 9223372036854775808}',
        b'{"timestamp": -9223372036854775809}',
    ],
)
def test_invalid_body(body: bytes) -> None:
    with pytest.raises(errors.CstgJsonInvalid) as info:
        parse_request(body)
    assert info.value.detail == "json payload is not valid"


def test_timestamp_extremes_parse() -> None:
    assert parse_request(b'{"timestamp": 9223372036854775807}').timestamp == 2**63 - 1
    assert parse_request(b'{"timestamp": -9223372036854775808}').timestamp == -(2**63)


# ------------------------------------------------------------------------------ opening steps


@pytest.mark.parametrize("missing", ["payload", "iv", "public_key"])
def test_required_parameters(missing: str) -> None:
    req = sealed(b"{}")
    fields = {
        "payload": req.payload,
        "iv": req.iv,
        "public_key": req.public_key,
        "timestamp": TS,
        "subscription_id": "x",
        "app_name": None,
    }
    fields[missing] = None
    with pytest.raises(errors.CstgMissingParameters) as info:
        open_(CstgRequest(**fields))
    assert info.value.detail == "required parameters: payload, iv, public_key"


@pytest.mark.parametrize(
    "key", ["bad-key", "UID2-C-L-999-fCXrMM.fsR3mDqAXELtWWMS+xG1s7RdgRTM", "AAAA"]
)
def test_bad_public_key(key: str) -> None:
    req = sealed(b"{}")
    with pytest.raises(errors.CstgBadPublicKey) as info:
        open_(request(payload=req.payload, iv=req.iv, public_key=key))
    assert info.value.detail == "bad public key"


@pytest.mark.parametrize("iv", ["!!!!", "", b64encode(bytes(11)), b64encode(bytes(16))])
def test_bad_iv(iv: str) -> None:
    req = sealed(b"{}")
    with pytest.raises(errors.CstgBadIv) as info:
        open_(request(payload=req.payload, iv=iv, public_key=req.public_key))
    assert info.value.detail == "bad iv"


def test_decryption_failures() -> None:
    good = sealed(json.dumps({"email_hash": EMAIL_HASH}).encode())
    assert good.payload is not None
    raw = bytearray(b64decode(good.payload))
    raw[0] ^= 1
    cases = [
        request(payload="%%%", iv=good.iv, public_key=good.public_key),
        request(payload="", iv=good.iv, public_key=good.public_key),
        request(payload=b64encode(bytes(raw)), iv=good.iv, public_key=good.public_key),
        request(payload=good.payload, iv=good.iv, public_key=good.public_key, timestamp=TS + 1),
        request(payload=good.payload, iv=good.iv, public_key=good.public_key, app_name="x"),
        request(
            payload=good.payload,
            iv=b64encode(bytes(range(12))),
            public_key=good.public_key,
        ),
    ]
    for case in cases:
        with pytest.raises(errors.CstgDecryptionFailed) as info:
            open_(case)
        assert info.value.detail == "payload decryption failed"


def test_timestamp_window() -> None:
    inner = json.dumps({"email_hash": EMAIL_HASH}).encode()
    window = DEFAULT_CSTG_TIMESTAMP_WINDOW
    assert open_(sealed(inner), now=TS + window.max_past_ms).kind is InputKind.EMAIL_HASH
    assert open_(sealed(inner), now=TS - window.max_future_ms).kind is InputKind.EMAIL_HASH
    for now in (TS + window.max_past_ms + 1, TS - window.max_future_ms - 1):
        with pytest.raises(errors.CstgStaleTimestamp) as info:
            open_(sealed(inner), now=now)
        assert info.value.status == "client_error"
    # A narrower window is a setting; None reproduces the reference (no check at all).
    with pytest.raises(errors.CstgStaleTimestamp):
        open_(sealed(inner), now=TS + 2, window=TimestampWindow(1, 1))
    assert open_(sealed(inner, ts=0), now=TS, window=None).timestamp == 0


def test_staleness_is_judged_only_after_authentication() -> None:
    # A tampered payload with a stale timestamp reports the decryption failure, not staleness.
    req = sealed(b"{}", ts=0)
    with pytest.raises(errors.CstgDecryptionFailed):
        open_(request(payload=req.payload, iv=req.iv, public_key=req.public_key, timestamp=1))


@pytest.mark.parametrize("inner", [b"not json", b"\xff", b"[1]", b"null", b'{"a": NaN}'])
def test_inner_json_invalid(inner: bytes) -> None:
    with pytest.raises(errors.CstgPayloadJsonInvalid) as info:
        open_(sealed(inner))
    assert info.value.detail == "encrypted payload contains invalid json"


@pytest.mark.parametrize(
    ("inner", "phone", "error", "message"),
    [
        (
            {"phone_hash": PHONE_HASH},
            False,
            errors.CstgPhoneNotSupported,
            "phone support not enabled",
        ),
        (
            {"email_hash": EMAIL_HASH, "phone_hash": PHONE_HASH},
            False,
            errors.CstgPhoneNotSupported,
            "phone support not enabled",
        ),
        (
            {},
            True,
            errors.CstgIdentityMissing,
            "please provide exactly one of: email_hash, phone_hash",
        ),
        ({}, False, errors.CstgIdentityMissing, "please provide email_hash"),
        ({"email_hash": None}, False, errors.CstgIdentityMissing, "please provide email_hash"),
        (
            {"email": "a@b.com"},
            True,
            errors.CstgIdentityMissing,
            "please provide exactly one of: email_hash, phone_hash",
        ),
        (
            {"email_hash": EMAIL_HASH, "phone_hash": PHONE_HASH},
            True,
            errors.CstgIdentityMissing,
            "please provide exactly one of: email_hash, phone_hash",
        ),
        ({"email_hash": "abc"}, True, errors.CstgInvalidIdentifier, "Invalid Identifier"),
        ({"email_hash": 5}, True, errors.CstgInvalidIdentifier, "Invalid Identifier"),
        ({"email_hash": [EMAIL_HASH]}, True, errors.CstgInvalidIdentifier, "Invalid Identifier"),
        ({"phone_hash": {"a": 1}}, True, errors.CstgInvalidIdentifier, "Invalid Identifier"),
        ({"phone_hash": "!" * 44}, True, errors.CstgInvalidIdentifier, "Invalid Identifier"),
    ],
)
def test_identity_rules(
    inner: dict[str, Any], phone: bool, error: type[errors.CstgError], message: str
) -> None:
    with pytest.raises(error) as info:
        open_(sealed(json.dumps(inner).encode()), phone=phone)
    assert info.value.detail == message


def test_phone_hash_opens_with_phone_support() -> None:
    opened = open_(sealed(json.dumps({"phone_hash": PHONE_HASH}).encode()))
    assert opened.kind is InputKind.PHONE_HASH
    assert opened.identity.kind is IdentityType.PHONE
    assert opened.identity.digest == b64decode(PHONE_HASH)
    hex_hash = hashlib.sha256(b"x").hexdigest()
    opened = open_(sealed(json.dumps({"email_hash": hex_hash}).encode()))
    assert opened.identity.digest == bytes.fromhex(hex_hash)
    assert "secret" not in repr(opened)


def test_a_hash_given_as_a_json_number_is_read_as_its_digits() -> None:
    digits = "1" * 64
    by_number = open_(sealed(b'{"email_hash": ' + digits.encode() + b"}"))
    by_text = open_(sealed(json.dumps({"email_hash": digits}).encode()))
    assert by_number.identity == by_text.identity
    assert by_number.identity.digest == bytes.fromhex(digits)


# ------------------------------------------------------------------------------ client side


@pytest.mark.parametrize("app", [None, "com.example.app"])
def test_build_request_opens_on_the_server(app: str | None) -> None:
    built = build_request(
        SERVER_PUBLIC_DER,
        {"email_hash": EMAIL_HASH},
        timestamp=TS,
        subscription_id="4WvryDGbR5",
        random=Counter(),
        app_name=app,
    )
    assert ("app_name" in built.body) is (app is not None)
    assert set(built.body) >= {"payload", "iv", "public_key", "timestamp", "subscription_id"}
    parsed = parse_request(json.dumps(built.body).encode())
    opened = open_(parsed)
    assert opened.secret == built.secret
    assert opened.identity.digest == b64decode(EMAIL_HASH)
    text = seal_response(opened.secret, {"status": "success"}, Counter())
    assert open_response(built.secret, text) == {"status": "success"}
    assert "secret" not in repr(built)


@pytest.mark.parametrize("text", ["%%%", "", b64encode(bytes(40)), b64encode(b"x" * 12)])
def test_open_response_refuses_what_does_not_open(text: str) -> None:
    with pytest.raises(errors.ResponseEnvelopeError):
        open_response(SECRET, text)


def test_open_response_refuses_non_json() -> None:
    text = b64encode(seal_with_iv(SECRET, bytes(12), b"not json"))
    with pytest.raises(errors.ResponseEnvelopeError):
        open_response(SECRET, text)


def test_error_classes_tell_the_status() -> None:
    assert errors.CstgKeypairDisabled().status == "unauthorized"
    assert errors.CstgKeypairDisabled().detail == "Unauthorized"
    assert errors.CstgInvalidOrigin().status == "invalid_http_origin"
    assert errors.CstgInvalidOrigin().detail == "unexpected http origin"
    assert errors.CstgInvalidAppName().status == "invalid_app_name"
    assert errors.CstgInvalidAppName().detail == "unexpected app name"
    assert errors.CstgBadSubscription().detail == "bad subscription_id"
    assert isinstance(errors.CstgBadSubscription(), errors.CstgClientError)
    assert not isinstance(errors.CstgKeypairDisabled(), errors.CstgClientError)
