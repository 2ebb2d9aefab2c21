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
from collections.abc import Mapping
from typing import Any, Final, NamedTuple, TypedDict

from uid2_operator.errors import (
    RefreshDecryptionFailed,
    RefreshKeyUnknown,
    RefreshNotBase64,
    RefreshPayloadInvalid,
    ResponseEnvelopeError,
)
from uid2_operator.wire.aead import IV_SIZE, AeadFailure, RandomBytes, open_, seal_with_iv
from uid2_operator.wire.encoding import (
    Base64Error,
    b64decode,
    b64encode,
    dumps,
    pack_i32,
    unpack_i32,
)
from uid2_operator.wire.keys import EncryptionKey
from uid2_operator.wire.scope import IdentityScope, IdentityType
from uid2_operator.wire.tokens import (
    REFRESH_TOKEN_V3_LENGTH,
    REFRESH_TOKEN_V3_SIZE,
    AdvertisingToken,
    KeyLookup,
    RefreshToken,
    encode_advertising_token_v4,
    encode_refresh_token,
)

ENVELOPE_SIZE: Final = 291
ENVELOPE_LENGTH: Final = 388
RESPONSE_KEY_SIZE: Final = 32
_ENVELOPE_HEADER_SIZE: Final = 5


class RefreshEnvelopeHeader(NamedTuple):
    """The unencrypted prefix of an envelope: the scope byte as sent, and the refresh key id."""

    scope_byte: int
    key_id: int


class OpenedRefreshEnvelope(NamedTuple):
    """What an envelope carries: the key for the response, and the inner refresh token text."""

    response_key: bytes
    refresh_token: str


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
    # Key order matters only for the length; it follows the reference operator.
    plaintext = dumps({"refresh_response_key": b64encode(response_key), "refresh_token": inner_b64})
    data = bytes([scope << 4]) + pack_i32(key.id) + seal_with_iv(key.secret, iv, plaintext)
    text = b64encode(data)
    if len(text) != ENVELOPE_LENGTH:
        raise AssertionError("refresh envelope length drifted from 388")
    return text


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
) -> IdentityResponseBody:
    """The token pair of §5.9: a v4 advertising token, a v3 refresh token in its envelope.

    ``now_ms`` and ``established_ms`` are epoch milliseconds, lifetimes are seconds. The caller
    has already selected the active keys and checked opt-out.
    """
    identity_expires = now_ms + identity_lifetime_s * 1000
    refresh_expires = now_ms + refresh_lifetime_s * 1000
    advertising = AdvertisingToken(
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
    refresh = RefreshToken(
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
    response_key = random(RESPONSE_KEY_SIZE)
    inner = encode_refresh_token(refresh, key=refresh_key, random=random)
    return {
        "advertising_token": encode_advertising_token_v4(
            advertising, master_key=master_key, site_key=site_key, random=random
        ),
        "refresh_token": wrap_refresh_token(inner, response_key, refresh_key, scope, random),
        "identity_expires": identity_expires,
        "refresh_expires": refresh_expires,
        "refresh_from": now_ms + refresh_after_s * 1000,
        "refresh_response_key": b64encode(response_key),
    }
