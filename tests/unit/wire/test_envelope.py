"""The v2 request envelope and the response envelope: golden vectors and every §2.3 failure."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from uid2_operator.errors import (
    BodyMissing,
    BodyTooShort,
    EnvelopeDecryptionFailed,
    EnvelopeError,
    InvalidPayload,
    NotBase64,
    ResponseEnvelopeError,
    StaleTimestamp,
    UnencryptedJson,
    UnsupportedEnvelopeVersion,
)
from uid2_operator.wire import aead
from uid2_operator.wire.envelope import (
    DEFAULT_TIMESTAMP_WINDOW,
    MIN_REQUEST_SIZE,
    RequestEnvelope,
    TimestampWindow,
    frame_response,
    open_response,
    parse_request,
    seal_request,
    seal_response,
    success_body,
    unframe_response,
)
from uid2_operator.wire.scope import IdentityScope

VECTORS = json.loads(
    (Path(__file__).resolve().parents[2] / "vectors" / "envelope.json").read_text("utf-8")
)
SECRET = base64.b64decode(VECTORS["secret_b64"])
NONCE = bytes.fromhex(VECTORS["nonce_hex"])
REQ = VECTORS["request"]
RESP = VECTORS["response"]
NOW = REQ["timestamp_ms"]
OTHER_SECRET = bytes(range(100, 132))

DOCS = "/docs/getting-started/gs-encryption-decryption"
HOSTS = {IdentityScope.UID2: "https://unifiedid.com", IdentityScope.EUID: "https://euid.eu"}


def hint(scope: IdentityScope) -> str:
    return f" See {HOSTS[scope]}{DOCS} for details on the request envelope format."


def unencrypted(scope: IdentityScope) -> str:
    return (
        "Invalid body: The request body is unencrypted JSON. It must be an encrypted request "
        f"envelope. See {HOSTS[scope]}{DOCS}#encryption-and-decryption-code-examples for "
        "encryption and decryption code examples."
    )


SCOPES = pytest.mark.parametrize("scope", list(IdentityScope), ids=lambda s: s.name)


def fixed(value: bytes) -> Callable[[int], bytes]:
    def draw(n: int) -> bytes:
        assert n == len(value)
        return value

    return draw


def counter_iv() -> Callable[[int], bytes]:
    return fixed(bytes(range(12)))


def parse(
    body: bytes,
    *,
    octet_stream: bool = False,
    secret: bytes = SECRET,
    now_ms: int = NOW,
    window: TimestampWindow = DEFAULT_TIMESTAMP_WINDOW,
    scope: IdentityScope = IdentityScope.UID2,
) -> RequestEnvelope:
    return parse_request(
        body, octet_stream=octet_stream, secret=secret, now_ms=now_ms, window=window, scope=scope
    )


def sealed(payload: bytes | None = b"{}", *, ts: int = NOW, secret: bytes = SECRET) -> bytes:
    return seal_request(payload, secret=secret, now_ms=ts, nonce=NONCE, random=counter_iv())


def as_text(raw: bytes) -> bytes:
    return base64.b64encode(raw)


def raises(error: type[EnvelopeError], message: str, body: bytes, **kwargs: Any) -> EnvelopeError:
    with pytest.raises(error) as info:
        parse(body, **kwargs)
    assert type(info.value) is error
    assert info.value.detail == message
    assert str(info.value) == message
    return info.value


# ---------------------------------------------------------------------------- golden vectors


def test_seal_request_reproduces_the_worked_example() -> None:
    raw = seal_request(
        REQ["payload"].encode(),
        secret=SECRET,
        now_ms=REQ["timestamp_ms"],
        nonce=NONCE,
        random=fixed(bytes.fromhex(REQ["iv_hex"])),
    )
    assert len(raw) == REQ["envelope_length"]
    assert base64.b64encode(raw).decode() == REQ["envelope_b64"]
    assert aead.open_(SECRET, raw[1:]).hex() == REQ["inner_plaintext_hex"]
    assert REQ["inner_plaintext_hex"].startswith(REQ["timestamp_hex"])


def test_parse_request_opens_the_worked_example() -> None:
    env = parse(REQ["envelope_b64"].encode())
    assert env == RequestEnvelope(
        timestamp_ms=REQ["timestamp_ms"], nonce=NONCE, payload=REQ["payload_object"], binary=False
    )


def test_parse_request_opens_the_worked_example_sent_raw() -> None:
    env = parse(base64.b64decode(REQ["envelope_b64"]), octet_stream=True)
    assert env.binary is True
    assert env.payload == REQ["payload_object"]
    assert env.nonce == NONCE


def test_seal_response_reproduces_the_worked_example() -> None:
    blob = seal_response(
        RESP["json"].encode(),
        secret=SECRET,
        nonce=NONCE,
        now_ms=RESP["server_timestamp_ms"],
        random=fixed(bytes.fromhex(RESP["iv_hex"])),
    )
    assert base64.b64encode(blob).decode() == RESP["envelope_b64"]
    assert blob[:12] == bytes.fromhex(RESP["iv_hex"])  # no version byte in front


def test_open_response_reads_the_worked_example() -> None:
    blob = base64.b64decode(RESP["envelope_b64"])
    assert open_response(blob, secret=SECRET, nonce=NONCE) == RESP["json_object"]
    plaintext = aead.open_(SECRET, blob)
    assert int.from_bytes(plaintext[:8], "big") == RESP["server_timestamp_ms"]


def test_request_base64_without_trailing_padding_is_accepted() -> None:
    text = REQ["envelope_b64"].rstrip("=")
    assert text != REQ["envelope_b64"]
    assert parse(text.encode()).payload == REQ["payload_object"]


# ----------------------------------------------------------------------- §2.3 step 1: missing


@pytest.mark.parametrize("octet_stream", [False, True])
def test_empty_body_is_missing(octet_stream: bool) -> None:
    raises(BodyMissing, "Invalid body: Body is missing.", b"", octet_stream=octet_stream)


# -------------------------------------------------------------------- §2.3 step 2: not base64


@SCOPES
def test_plain_json_object_text_is_unencrypted_json(scope: IdentityScope) -> None:
    raises(UnencryptedJson, unencrypted(scope), b'{"email":"user@example.com"}', scope=scope)


@SCOPES
def test_plain_json_with_invalid_utf8_is_still_recognised(scope: IdentityScope) -> None:
    raises(UnencryptedJson, unencrypted(scope), b'{"email":"\xff@example.com"}', scope=scope)


@SCOPES
def test_text_that_is_neither_base64_nor_json_object(scope: IdentityScope) -> None:
    message = "Invalid body: Body is not valid base64." + hint(scope)
    raises(NotBase64, message, b"not base64!", scope=scope)


@pytest.mark.parametrize(
    "body",
    [b'["a@b.com"]', b"12 3", b'{"a":NaN}', b'{"a":1} {"b":2}', b"\xff\xfe", b"AAAA\n"],
    ids=["array", "numbers", "nan", "two-objects", "binary", "trailing-newline"],
)
def test_other_non_base64_text_is_not_base64(body: bytes) -> None:
    message = "Invalid body: Body is not valid base64." + hint(IdentityScope.UID2)
    raises(NotBase64, message, body)


def test_url_safe_alphabet_is_not_base64() -> None:
    body = base64.urlsafe_b64encode(b"\xfb\xff" + sealed())
    assert body.startswith(b"-_")
    raises(NotBase64, "Invalid body: Body is not valid base64." + hint(IdentityScope.UID2), body)


# ------------------------------------------------------------------- §2.3 step 3: too short


@SCOPES
def test_short_body_is_too_short(scope: IdentityScope) -> None:
    message = "Invalid body: Body too short. Check encryption method." + hint(scope)
    raises(BodyTooShort, message, as_text(b"\x01" * (MIN_REQUEST_SIZE - 1)), scope=scope)


@SCOPES
def test_short_base64_json_is_unencrypted_json(scope: IdentityScope) -> None:
    raises(UnencryptedJson, unencrypted(scope), as_text(b'{"email":"a@b.c"}'), scope=scope)


def test_45_bytes_is_long_enough_to_reach_decryption() -> None:
    body = as_text(b"\x01" * MIN_REQUEST_SIZE)
    message = "Invalid body: Check encryption key (ClientSecret)." + hint(IdentityScope.UID2)
    raises(EnvelopeDecryptionFailed, message, body)


# ------------------------------------------------------------------------ §2.3 step 4: version


@SCOPES
@pytest.mark.parametrize("version", [0, 2, 0x7B, 0x80, 0xFF])
def test_wrong_version_byte_names_the_unsigned_value(scope: IdentityScope, version: int) -> None:
    body = as_text(bytes([version]) + sealed()[1:])
    message = (
        f"Invalid body: Invalid request envelope format version: received {version}, "
        f"must be 1.{hint(scope)}"
    )
    raises(UnsupportedEnvelopeVersion, message, body, scope=scope)


@SCOPES
def test_long_base64_json_is_unencrypted_json(scope: IdentityScope) -> None:
    payload = b'{"email_hash":"tMmiiTI7IaAcPpQPFQ65uMVCWH8av9jw4cwf/F5HVRQ="}'
    assert len(payload) >= MIN_REQUEST_SIZE
    raises(UnencryptedJson, unencrypted(scope), as_text(payload), scope=scope)


def test_long_base64_json_array_is_a_version_error() -> None:
    payload = b'["tMmiiTI7IaAcPpQPFQ65uMVCWH8av9jw4cwf/F5HVRQ=", "x"]'
    message = (
        "Invalid body: Invalid request envelope format version: received 91, must be 1."
        + hint(IdentityScope.UID2)
    )
    raises(UnsupportedEnvelopeVersion, message, as_text(payload))


# --------------------------------------------------------------------- §2.3 step 5: decryption


@SCOPES
def test_wrong_secret_fails_decryption(scope: IdentityScope) -> None:
    message = "Invalid body: Check encryption key (ClientSecret)." + hint(scope)
    raises(EnvelopeDecryptionFailed, message, as_text(sealed(secret=OTHER_SECRET)), scope=scope)


@pytest.mark.parametrize("index", [1, 13, 20, -1])
def test_any_flipped_byte_fails_decryption(index: int) -> None:
    raw = bytearray(sealed())
    raw[index] ^= 0x01
    message = "Invalid body: Check encryption key (ClientSecret)." + hint(IdentityScope.UID2)
    raises(EnvelopeDecryptionFailed, message, as_text(bytes(raw)))


# ---------------------------------------------------------------------- §2.3 step 6: timestamp

STALE = "Invalid timestamp: Request too old or client time drift."


@pytest.mark.parametrize("age_ms", [0, 1, 59_999, 60_000, 119_999, -1, -60_000, -119_000])
def test_timestamps_inside_the_reference_window_are_accepted(age_ms: int) -> None:
    env = parse(as_text(sealed(ts=NOW - age_ms)))
    assert env.timestamp_ms == NOW - age_ms


@pytest.mark.parametrize("age_ms", [120_000, 120_001, 10**9, -119_001, -120_000, -(10**9)])
def test_timestamps_outside_the_reference_window_are_stale(age_ms: int) -> None:
    raises(StaleTimestamp, STALE, as_text(sealed(ts=NOW - age_ms)))


@pytest.mark.parametrize("ts", [-(2**63), 2**63 - 1, 0])
def test_extreme_timestamps_are_stale_not_crashes(ts: int) -> None:
    raises(StaleTimestamp, STALE, as_text(sealed(ts=ts)))


def test_the_stale_check_comes_before_the_payload_check() -> None:
    raises(StaleTimestamp, STALE, as_text(sealed(b"[not json", ts=NOW - 120_000)))


def test_a_narrower_window_is_a_setting() -> None:
    window = TimestampWindow(max_past_ms=5_000, max_future_ms=0)
    assert parse(as_text(sealed(ts=NOW - 5_000)), window=window).timestamp_ms == NOW - 5_000
    raises(StaleTimestamp, STALE, as_text(sealed(ts=NOW - 5_001)), window=window)
    raises(StaleTimestamp, STALE, as_text(sealed(ts=NOW + 1)), window=window)


@pytest.mark.parametrize(("past", "future"), [(-1, 0), (0, -1)])
def test_window_bounds_must_not_be_negative(past: int, future: int) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        TimestampWindow(max_past_ms=past, max_future_ms=future)


def test_window_accepts_matches_its_bounds() -> None:
    window = DEFAULT_TIMESTAMP_WINDOW
    assert (window.max_past_ms, window.max_future_ms) == (119_999, 119_000)
    assert window.accepts(NOW - 119_999, NOW)
    assert not window.accepts(NOW - 120_000, NOW)
    assert window.accepts(NOW + 119_000, NOW)
    assert not window.accepts(NOW + 119_001, NOW)


# ------------------------------------------------------------------------ §2.3 step 7: payload

BAD_PAYLOAD = "Invalid payload in body: Data is not valid json string."


@pytest.mark.parametrize(
    "payload",
    [
        b'["a@b.com"]',
        b"42",
        b'"text"',
        b"null",
        b"true",
        b"   ",
        b"{",
        b'{"a":1} x',
        b'{"a":1}{"b":2}',
        b'{"a":NaN}',
        b'{"a":-Infinity}',
        b'{"email":"\xff@example.com"}',
        b"\xef\xbb\xbf{}",
        '{"a":1}'.encode("utf-16"),
        b"{'a':1}",
        b'{"a":"\x01"}',
        b"[" * 100_000,
        b'{"a":' + b"1" * 5_000 + b"}",
        b'{"email":}',
        b'{"email": x}',
        b'{"email":-}',
        b'{"email":[1,]}',
        b'{"a":{"b":}}',
    ],
    ids=[
        "array", "number", "string", "null", "true", "blank", "truncated", "trailing-junk",
        "two-objects", "nan", "infinity", "invalid-utf8", "bom", "utf16", "single-quotes",
        "control-char", "deep-nesting", "huge-integer", "missing-value", "bare-word",
        "lone-minus", "trailing-comma", "nested-missing-value",
    ],
)  # fmt: skip
def test_payload_that_is_not_a_json_object_is_invalid(payload: bytes) -> None:
    raises(InvalidPayload, BAD_PAYLOAD, as_text(sealed(payload)))


@pytest.mark.parametrize("payload", [None, b""])
def test_empty_payload_is_accepted_as_no_payload(payload: bytes | None) -> None:
    raw = sealed(payload)
    assert len(aead.open_(SECRET, raw[1:])) == 16
    assert len(raw) == MIN_REQUEST_SIZE
    env = parse(as_text(raw))
    assert env == RequestEnvelope(timestamp_ms=NOW, nonce=NONCE, payload=None, binary=False)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"{}", {}),
        (b' \n{"a" : [1, 2.5, null, true], "b": {"c": "\\u00e9"}}\t', {
            "a": [1, 2.5, None, True], "b": {"c": "é"}}),
        ('{"e":"üñí@例え.jp"}'.encode(), {"e": "üñí@例え.jp"}),
        (b'{"a":1,"a":2}', {"a": 2}),
    ],
    ids=["empty-object", "whitespace-and-nesting", "non-ascii", "duplicate-key"],
)  # fmt: skip
def test_json_object_payloads_are_parsed(payload: bytes, expected: dict[str, Any]) -> None:
    assert parse(as_text(sealed(payload))).payload == expected


# ------------------------------------------------------------------ octet-stream (operator §1.6)


def test_octet_stream_raw_envelope_answers_in_binary() -> None:
    env = parse(sealed(b'{"a":1}'), octet_stream=True)
    assert env == RequestEnvelope(timestamp_ms=NOW, nonce=NONCE, payload={"a": 1}, binary=True)


def test_octet_stream_carrying_base64_text_falls_back_and_answers_in_text() -> None:
    env = parse(as_text(sealed(b'{"a":1}')), octet_stream=True)
    assert env == RequestEnvelope(timestamp_ms=NOW, nonce=NONCE, payload={"a": 1}, binary=False)


def test_octet_stream_fallback_reports_the_text_reading_error() -> None:
    # Read raw, the text starts with 'A' (65): a version error. Read as base64 it is an envelope
    # under another secret; the reference reports the second reading.
    body = as_text(sealed(secret=OTHER_SECRET))
    assert body[:1] == b"A"
    message = "Invalid body: Check encryption key (ClientSecret)." + hint(IdentityScope.UID2)
    raises(EnvelopeDecryptionFailed, message, body, octet_stream=True)


def test_octet_stream_that_is_not_base64_keeps_the_raw_reading_error() -> None:
    raw = sealed(secret=OTHER_SECRET)
    message = "Invalid body: Check encryption key (ClientSecret)." + hint(IdentityScope.EUID)
    raises(EnvelopeDecryptionFailed, message, raw, octet_stream=True, scope=IdentityScope.EUID)


def test_octet_stream_raw_stale_request_keeps_its_error() -> None:
    raises(StaleTimestamp, STALE, sealed(ts=NOW - 10**6), octet_stream=True)


@SCOPES
def test_octet_stream_plain_json_is_unencrypted_json(scope: IdentityScope) -> None:
    raises(
        UnencryptedJson, unencrypted(scope), b'{"email":"a@b.c"}', octet_stream=True, scope=scope
    )


def test_octet_stream_short_raw_body() -> None:
    message = "Invalid body: Body too short. Check encryption method." + hint(IdentityScope.UID2)
    raises(BodyTooShort, message, b"\x01\x02\x03", octet_stream=True)


def test_octet_stream_wrong_raw_version() -> None:
    body = b"\x00" + sealed()[1:]
    message = (
        "Invalid body: Invalid request envelope format version: received 0, must be 1."
        + hint(IdentityScope.UID2)
    )
    raises(UnsupportedEnvelopeVersion, message, body, octet_stream=True)


# ------------------------------------------------------------------------------- response side


def test_success_body_is_compact_json() -> None:
    assert success_body({"a": [1, "é/"]}) == '{"status":"success","body":{"a":[1,"é/"]}}'.encode()
    assert success_body(True) == b'{"status":"success","body":true}'


def test_frame_response_binary_is_raw_octet_stream() -> None:
    blob = seal_response(b"{}", secret=SECRET, nonce=NONCE, now_ms=NOW, random=counter_iv())
    assert frame_response(blob, binary=True) == (blob, "application/octet-stream")
    assert unframe_response(blob, binary=True) == blob


def test_frame_response_text_is_base64_plain_text() -> None:
    blob = seal_response(b"{}", secret=SECRET, nonce=NONCE, now_ms=NOW, random=counter_iv())
    body, content_type = frame_response(blob, binary=False)
    assert content_type == "text/plain"
    assert body == base64.b64encode(blob)
    assert unframe_response(body, binary=False) == blob


def test_unframe_response_rejects_bad_base64() -> None:
    with pytest.raises(ResponseEnvelopeError, match="not valid base64"):
        unframe_response(b"*not base64*", binary=False)


def test_open_response_rejects_another_secret() -> None:
    blob = base64.b64decode(RESP["envelope_b64"])
    with pytest.raises(ResponseEnvelopeError, match="does not decrypt"):
        open_response(blob, secret=OTHER_SECRET, nonce=NONCE)


@pytest.mark.parametrize("blob", [b"", b"\x00" * 27])
def test_open_response_rejects_truncated_blobs(blob: bytes) -> None:
    with pytest.raises(ResponseEnvelopeError, match="does not decrypt"):
        open_response(blob, secret=SECRET, nonce=NONCE)


def test_open_response_rejects_a_nonce_mismatch() -> None:
    blob = base64.b64decode(RESP["envelope_b64"])
    with pytest.raises(ResponseEnvelopeError, match="nonce mismatch"):
        open_response(blob, secret=SECRET, nonce=bytes(8))


def test_open_response_rejects_a_plaintext_shorter_than_its_header() -> None:
    blob = aead.seal_with_iv(SECRET, bytes(12), NONCE)
    with pytest.raises(ResponseEnvelopeError, match="too short"):
        open_response(blob, secret=SECRET, nonce=NONCE)


@pytest.mark.parametrize(
    "json_bytes", [b"", b"[1]", b"nope", b"\xff", b'{"status":}', b'{"body":[1,]}']
)
def test_open_response_rejects_a_payload_that_is_not_an_object(json_bytes: bytes) -> None:
    blob = seal_response(json_bytes, secret=SECRET, nonce=NONCE, now_ms=NOW, random=counter_iv())
    with pytest.raises(ResponseEnvelopeError, match="not a JSON object"):
        open_response(blob, secret=SECRET, nonce=NONCE)


@pytest.mark.parametrize("nonce", [b"", bytes(7), bytes(9)])
def test_sealing_needs_an_eight_byte_nonce(nonce: bytes) -> None:
    with pytest.raises(ValueError, match="nonce must be 8 bytes"):
        seal_request(b"{}", secret=SECRET, now_ms=NOW, nonce=nonce, random=counter_iv())
    with pytest.raises(ValueError, match="nonce must be 8 bytes"):
        seal_response(b"{}", secret=SECRET, nonce=nonce, now_ms=NOW, random=counter_iv())


def test_request_and_response_round_trip_through_the_nonce() -> None:
    env = parse(sealed(b'{"x":1}'), octet_stream=True)
    body, _ = frame_response(
        seal_response(
            success_body(env.payload),
            secret=SECRET,
            nonce=env.nonce,
            now_ms=NOW + 5,
            random=fixed(bytes(range(50, 62))),
        ),
        env.binary,
    )
    opened = open_response(unframe_response(body, env.binary), secret=SECRET, nonce=NONCE)
    assert opened == {"status": "success", "body": {"x": 1}}


def test_an_opened_envelope_keeps_what_the_caller_sent_out_of_its_repr() -> None:
    opened = parse(as_text(sealed(b'{"email":"alice@example.com","phone":"+12345678901"}')))
    assert opened.payload == {"email": "alice@example.com", "phone": "+12345678901"}
    shown = repr(opened)
    assert "alice" not in shown
    assert "12345678901" not in shown
    assert f"timestamp_ms={NOW}" in shown
