"""The refresh envelope, refresh-response encryption and the identity a token request issues.

The client-visible ``refresh_token`` (operator-api §5.5) is not the inner refresh token but an
envelope around it::

    scope<<4 (1) | refresh key id (4) | IV (12) | AES-GCM(JSON) | tag (16)

where the JSON is ``{"refresh_response_key":"<44>","refresh_token":"<168>"}``. That is always 291
bytes, exactly 388 base64 characters; the refresh endpoint uses that length to tell envelopes from
bare legacy tokens, so the length is checked on the way out. The response key rides inside the
envelope so the server can encrypt the refresh response for the holder of the previous identity
without storing anything per identity.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any, Final, NamedTuple, TypedDict

from uid2_operator.errors import (
    RefreshDecryptionFailed,
    RefreshKeyUnknown,
    RefreshNotBase64,
    RefreshPayloadInvalid,
    ResponseEnvelopeError,
)
from uid2_operator.wire.aead import IV_SIZE, AeadFailure, RandomBytes, cipher, open_, seal_with_iv
from uid2_operator.wire.encoding import (
    Base64Error,
    b64decode,
    b64encode,
    b64encode_ascii,
    b64url_encode,
    dumps,
    unpack_i32,
)
from uid2_operator.wire.keys import EncryptionKey
from uid2_operator.wire.scope import IdentityScope, IdentityType, identity_type_byte
from uid2_operator.wire.tokens import (
    FIRST_LEVEL_HASH_SIZE,
    RAW_UID_SIZES,
    REFRESH_TOKEN_V3_LENGTH,
    REFRESH_TOKEN_V3_SIZE,
    AdvertisingToken,
    KeyLookup,
    RefreshToken,
    TokenVersion,
    seal_advertising_token,
    seal_refresh_token,
)

ENVELOPE_SIZE: Final = 291
ENVELOPE_LENGTH: Final = 388
RESPONSE_KEY_SIZE: Final = 32
_ISSUE_RANDOM_SIZE: Final = RESPONSE_KEY_SIZE + 4 * IV_SIZE
_ENVELOPE_HEADER_SIZE: Final = 5
_ENVELOPE_HEADER: Final = struct.Struct(">Bi")  # scope << 4, refresh key id
# The envelope's JSON, as ``dumps`` writes it for two base64 values (which never need escaping).
_ENVELOPE_JSON: Final = b'{"refresh_response_key":"%s","refresh_token":"%s"}'
# The identity bits of an identity-type byte (scope bit 4, type bits 2-3).
_IDENTITY_MASK: Final = 0x1C
# ``success_identity_json``: what ``dumps({"status": "success", "body": body})`` writes.
_SUCCESS_IDENTITY_JSON: Final = (
    b'{"status":"success","body":{"advertising_token":"%s","refresh_token":"%s",'
    b'"identity_expires":%d,"refresh_expires":%d,"refresh_from":%d,"refresh_response_key":"%s"}}'
)
# ASCII characters a JSON string carries as they are (no escape): everything printable but the
# quote and the backslash. Deleting them from a value leaves nothing iff it needs no escaping.
_JSON_PLAIN: Final = bytes(c for c in range(0x20, 0x80) if c not in b'"\\')


class RefreshEnvelopeHeader(NamedTuple):
    """The unencrypted prefix of an envelope: the scope byte as sent, and the refresh key id."""

    scope_byte: int
    key_id: int


class OpenedRefreshEnvelope(NamedTuple):
    """What an envelope carries: the key for the response, and the inner refresh token text.

    The repr leaves both out: the key seals the answer, and the token is a credential.
    """

    response_key: bytes
    refresh_token: str

    def __repr__(self) -> str:
        return "OpenedRefreshEnvelope(response_key=<hidden>, refresh_token=<hidden>)"


class IdentityResponseBody(TypedDict):
    """The ``body`` of a successful generate, refresh or client-generate response."""

    advertising_token: str
    refresh_token: str
    identity_expires: int
    refresh_expires: int
    refresh_from: int
    refresh_response_key: str


def wrap_refresh_token(
    inner_b64: str,
    response_key: bytes,
    key: EncryptionKey,
    scope: IdentityScope,
    random: RandomBytes,
) -> str:
    """Put a v3 inner refresh token and its response key in the 388-character envelope."""
    return wrap_refresh_token_with_iv(inner_b64, response_key, key, scope, random(IV_SIZE))


def wrap_refresh_token_with_iv(
    inner_b64: str, response_key: bytes, key: EncryptionKey, scope: IdentityScope, iv: bytes
) -> str:
    """Deterministic form of ``wrap_refresh_token`` for golden vectors."""
    if len(response_key) != RESPONSE_KEY_SIZE:
        raise ValueError("the refresh response key must be 32 bytes")
    if len(inner_b64) != REFRESH_TOKEN_V3_LENGTH:
        raise ValueError("the inner refresh token must be 168 characters")
    try:
        inner_size = len(b64decode(inner_b64))
    except Base64Error as exc:
        raise ValueError("the inner refresh token must be standard base64") from exc
    if inner_size != REFRESH_TOKEN_V3_SIZE:
        raise ValueError("the inner refresh token must be 124 bytes")
    if len(iv) != IV_SIZE:
        raise ValueError(f"IV must be {IV_SIZE} bytes")
    text = _seal_envelope(b64encode_ascii(response_key), inner_b64.encode("ascii"), key, scope, iv)
    if len(text) != ENVELOPE_LENGTH:
        raise AssertionError("refresh envelope length drifted from 388")
    return text


def _seal_envelope(
    response_key_b64: bytes, inner_b64: bytes, key: EncryptionKey, scope: int, iv: bytes
) -> str:
    """The envelope from checked parts: a 44-character key, a 168-character token, a 12-byte IV.

    Key order in the JSON matters only for the length; it follows the reference operator.
    """
    plaintext = _ENVELOPE_JSON % (response_key_b64, inner_b64)
    try:
        header = _ENVELOPE_HEADER.pack(scope << 4, key.id)
    except struct.error as exc:
        raise ValueError(f"an envelope field does not fit: {exc}") from None
    data = header + iv + cipher(key.secret).encrypt(iv, plaintext, None)
    return b64encode_ascii(data).decode("ascii")


def read_refresh_envelope_header(text: str) -> RefreshEnvelopeHeader:
    """Decode only the clear prefix of an envelope (scope byte and refresh key id).

    Text too short to hold a key id fails like an envelope that does not decrypt.
    """
    try:
        data = b64decode(text)
    except Base64Error as exc:
        raise RefreshNotBase64 from exc
    if len(data) < _ENVELOPE_HEADER_SIZE:
        raise RefreshDecryptionFailed
    return RefreshEnvelopeHeader(data[0], unpack_i32(data, 1))


def unwrap_refresh_envelope(text: str, key_lookup: KeyLookup) -> OpenedRefreshEnvelope:
    """Open an envelope; failures carry the exact messages of the refresh endpoint (§6.2 step 1).

    ``key_lookup`` should only offer refresh keys (keyset -2). The scope byte is not checked here:
    the inner token carries the authenticated scope, which the refresh flow compares.
    """
    try:
        data = b64decode(text)
    except Base64Error as exc:
        raise RefreshNotBase64 from exc
    if len(data) < _ENVELOPE_HEADER_SIZE:
        raise RefreshDecryptionFailed
    key_id = unpack_i32(data, 1)
    key = key_lookup(key_id)
    if key is None:
        raise RefreshKeyUnknown(
            f"Invalid key: Generator of this token (Key ID: {key_id}) does not exist."
        )
    try:
        plaintext = open_(key.secret, data[_ENVELOPE_HEADER_SIZE:])
    except AeadFailure as exc:
        raise RefreshDecryptionFailed from exc
    try:
        payload = json.loads(plaintext.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise RefreshPayloadInvalid from exc
    if not isinstance(payload, dict):
        raise RefreshPayloadInvalid
    encoded_key, inner = payload.get("refresh_response_key"), payload.get("refresh_token")
    if not isinstance(encoded_key, str) or not isinstance(inner, str):
        raise RefreshPayloadInvalid
    try:
        response_key = b64decode(encoded_key)
    except Base64Error as exc:
        raise RefreshPayloadInvalid from exc
    if len(response_key) != RESPONSE_KEY_SIZE:
        raise RefreshPayloadInvalid
    return OpenedRefreshEnvelope(response_key, inner)


def encrypt_refresh_response(
    response_key: bytes, payload: Mapping[str, Any], random: RandomBytes
) -> str:
    """``base64(IV || AES-GCM(response_key, JSON) || tag)``: no timestamp or nonce prefix.

    The refresh request carries no nonce of its own; the per-identity response key is what binds
    the answer to the holder of the envelope.
    """
    return b64encode(seal_with_iv(response_key, random(IV_SIZE), dumps(payload)))


def decrypt_refresh_response(response_key: bytes, text: str) -> Any:
    """Inverse of ``encrypt_refresh_response``, for clients and tests."""
    try:
        plaintext = open_(response_key, b64decode(text))
        return json.loads(plaintext.decode("utf-8"))
    except (Base64Error, AeadFailure, ValueError, RecursionError) as exc:
        raise ResponseEnvelopeError from exc


def issue_identity(
    *,
    now_ms: int,
    identity_lifetime_s: int,
    refresh_lifetime_s: int,
    refresh_after_s: int,
    master_key: EncryptionKey,
    site_key: EncryptionKey,
    refresh_key: EncryptionKey,
    site_id: int,
    privacy_bits: int,
    established_ms: int,
    raw_uid: bytes,
    first_level_hash: bytes,
    scope: IdentityScope,
    identity_type: IdentityType,
    random: RandomBytes,
    draw_once: bool = False,
) -> IdentityResponseBody:
    """The token pair of §5.9: a v4 advertising token, a v3 refresh token in its envelope.

    ``now_ms`` and ``established_ms`` are epoch milliseconds, lifetimes are seconds. The caller
    has already selected the active keys and checked opt-out.

    This runs on every generate and refresh, so the tokens are packed straight from the
    arguments (``seal_advertising_token``, ``seal_refresh_token``) rather than through
    ``AdvertisingToken`` / ``RefreshToken`` values; the bytes are those of
    ``encode_advertising_token_v4``, ``encode_refresh_token`` and ``wrap_refresh_token``, and
    ``random`` is drawn in their order (response key, refresh token IV, site IV, master IV,
    envelope IV). Anything those values would refuse raises the same ``ValueError``.

    ``draw_once`` draws the same 80 bytes in one call of ``random`` and splits them in that
    order: one system call instead of five, for a source such as ``os.urandom`` whose cost is
    per call. The default keeps five draws, which the golden vectors record.
    """
    identity_expires = now_ms + identity_lifetime_s * 1000
    refresh_expires = now_ms + refresh_lifetime_s * 1000
    identity = identity_type_byte(scope, identity_type)
    try:
        _check_issuable(raw_uid, first_level_hash, identity)
        if draw_once:
            block = random(_ISSUE_RANDOM_SIZE)
            response_key = block[:32]
            refresh_iv, site_iv, master_iv, envelope_iv = (
                block[32:44],
                block[44:56],
                block[56:68],
                block[68:80],
            )
        else:
            response_key = random(RESPONSE_KEY_SIZE)
            refresh_iv = random(IV_SIZE)
            site_iv = random(IV_SIZE)
            master_iv = random(IV_SIZE)
            envelope_iv = random(IV_SIZE)
        if len(response_key) != RESPONSE_KEY_SIZE:
            raise ValueError("the refresh response key must be 32 bytes")
        if len(envelope_iv) != IV_SIZE:
            raise ValueError(f"IV must be {IV_SIZE} bytes")
        inner = seal_refresh_token(
            identity_byte=identity,
            key=refresh_key,
            iv=refresh_iv,
            expires_ms=refresh_expires,
            created_ms=now_ms,
            site_id=site_id,
            privacy_bits=privacy_bits,
            established_ms=established_ms,
            first_level_hash=first_level_hash,
        )
        advertising = seal_advertising_token(
            identity_byte=identity,
            version=TokenVersion.V4,
            master_key=master_key,
            site_key=site_key,
            master_iv=master_iv,
            site_iv=site_iv,
            expires_ms=identity_expires,
            created_ms=now_ms,
            site_id=site_id,
            privacy_bits=privacy_bits,
            established_ms=established_ms,
            refreshed_ms=now_ms,
            raw_uid=raw_uid,
        )
    except ValueError:
        # Only reached when issuing fails: raise what building the two token values raises
        # first (naming the field), else the packing's own error, so a refusal reads exactly as
        # it did when the tokens were built as values before being encoded.
        AdvertisingToken(
            scope=scope,
            identity_type=identity_type,
            master_key_id=master_key.id,
            site_key_id=site_key.id,
            expires_ms=identity_expires,
            created_ms=now_ms,
            site_id=site_id,
            privacy_bits=privacy_bits,
            established_ms=established_ms,
            refreshed_ms=now_ms,
            raw_uid=raw_uid,
        )
        RefreshToken(
            scope=scope,
            identity_type=identity_type,
            key_id=refresh_key.id,
            expires_ms=refresh_expires,
            created_ms=now_ms,
            site_id=site_id,
            privacy_bits=privacy_bits,
            established_ms=established_ms,
            first_level_hash=first_level_hash,
        )
        raise
    response_key_b64 = b64encode_ascii(response_key)
    return {
        "advertising_token": b64url_encode(advertising),
        "refresh_token": _seal_envelope(
            response_key_b64,
            b64encode_ascii(inner),
            refresh_key,
            scope,
            envelope_iv,
        ),
        "identity_expires": identity_expires,
        "refresh_expires": refresh_expires,
        "refresh_from": now_ms + refresh_after_s * 1000,
        "refresh_response_key": response_key_b64.decode("ascii"),
    }


def _check_issuable(raw_uid: bytes, first_level_hash: bytes, identity: int) -> None:
    """What the token values and ``encode_advertising_token_v4`` check beyond field ranges."""
    if len(raw_uid) not in RAW_UID_SIZES:
        raise ValueError("raw UID must be 32 or 33 bytes")
    if len(first_level_hash) != FIRST_LEVEL_HASH_SIZE:
        raise ValueError("first-level hash must be 32 bytes")
    if len(raw_uid) == 33 and (raw_uid[0] ^ identity) & _IDENTITY_MASK:
        raise ValueError("the raw UID's scope/type differ from the token's")


def success_identity_json(body: IdentityResponseBody) -> bytes:
    """``envelope.success_body(body)`` byte for byte, without the general JSON encoder.

    The response of every generate and refresh; the encoder costs several times the formatting.
    Values that are not plain integers, or text that JSON would escape, go through ``dumps``.
    """
    try:
        ad = body["advertising_token"].encode("ascii")
        refresh = body["refresh_token"].encode("ascii")
        key = body["refresh_response_key"].encode("ascii")
    except (AttributeError, UnicodeEncodeError):
        return dumps({"status": "success", "body": body})
    expires, refresh_expires, refresh_from = (
        body["identity_expires"],
        body["refresh_expires"],
        body["refresh_from"],
    )
    if (
        ad.translate(None, _JSON_PLAIN)
        or refresh.translate(None, _JSON_PLAIN)
        or key.translate(None, _JSON_PLAIN)
        or type(expires) is not int
        or type(refresh_expires) is not int
        or type(refresh_from) is not int
    ):
        return dumps({"status": "success", "body": body})
    return _SUCCESS_IDENTITY_JSON % (ad, refresh, expires, refresh_expires, refresh_from, key)
