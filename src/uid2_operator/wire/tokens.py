"""Advertising tokens and refresh tokens (operator-api §5.2-§5.4).

What is here:

* advertising tokens v3 and v4 (identical bytes; v4 is base64url without padding, v3 standard
  base64): encode and decode;
* advertising tokens v2 (AES-256-CBC, nested): decode only, for ``/v2/token/validate``;
* refresh tokens v3 (always 124 bytes, 168 base64 characters, sealed under a refresh key and
  carrying the first-level hash rather than the raw UID): encode and decode;
* refresh tokens v2: decode only, for tokens issued before v3.

All timestamps inside tokens are epoch **milliseconds**. Every decoder turns any text into a token
or a ``TokenError``; encoders raise ``ValueError`` for inputs that cannot be represented.

Key lookups are callables from key id to key (or ``None``), one per layer, so the caller decides
which keyset a layer may use. The reference operator resolves every id against its whole key
store; a caller that only offers master keys (keyset -1) to the outer layer of advertising tokens
and refresh keys (keyset -2) to refresh tokens stays compatible with every legitimate client while
denying holders of a shared site key the ability to forge either.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from operator import attrgetter
from typing import Final

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from uid2_operator.errors import (
    IdentityMismatch,
    MalformedToken,
    TokenDecryptionFailed,
    UnknownTokenKey,
    UnsupportedTokenVersion,
)
from uid2_operator.wire.aead import (
    IV_SIZE,
    OVERHEAD,
    AeadFailure,
    RandomBytes,
    cipher,
    open_,
)
from uid2_operator.wire.encoding import (
    Base64Error,
    b64decode,
    b64encode,
    b64url_decode,
    b64url_encode,
    unpack_i32,
    unpack_i64,
)
from uid2_operator.wire.keys import EncryptionKey
from uid2_operator.wire.scope import IdentityScope, IdentityType, identity_type_byte
from uid2_operator.wire.scope import parse_identity_type_byte as _parse_identity_byte

KeyLookup = Callable[[int], EncryptionKey | None]
"""Key id → key, or ``None`` when the id is unknown (or not allowed for this layer)."""


class TokenVersion(IntEnum):
    """Version codes: v2 sits in byte 0, v3 and v4 in byte 1."""

    V2 = 2
    V3 = 112
    V4 = 128


OPERATOR_TYPE_SERVICE: Final = 1
"""Operator type written by this service ("Service"; 17 = "Snowflake" exists in the enum)."""

RAW_UID_SIZES: Final = (32, 33)
FIRST_LEVEL_HASH_SIZE: Final = 32
REFRESH_TOKEN_V3_SIZE: Final = 124
REFRESH_TOKEN_V3_LENGTH: Final = 168
REFRESH_PAYLOAD_V3_SIZE: Final = 90

# The identity bits of an identity-type byte (scope bit 4, type bits 2-3). Version and environment
# bits of raw UIDs and the "| 3" of token headers lie outside this mask.
_IDENTITY_MASK: Final = 0x1C

_HEADER_SIZE: Final = 6  # identity byte, version byte, key id
_MASTER_PREFIX_SIZE: Final = 33  # expires, created, operator identity (13), site key id
_SITE_PREFIX_SIZE: Final = 36  # site id, publisher, client key, privacy, established, refreshed
_CBC_IV_SIZE: Final = 16
_CBC_BLOCK: Final = 16
_REFRESH_V2_PREFIX_SIZE: Final = 29  # version, created, expires, valid_till, key id

_I32: Final = (-(1 << 31), 1 << 31)
_I64: Final = (-(1 << 63), 1 << 63)
_U8: Final = (0, 1 << 8)
_SHARED_RANGES: Final = (
    ("site_id", _I32), ("privacy_bits", _I32), ("operator_site_id", _I32),
    ("operator_type", _U8), ("operator_version", _I32), ("operator_key_id", _I32),
    ("client_key_id", _I32), ("publisher_id", _I64), ("expires_ms", _I64), ("created_ms", _I64),
    ("established_ms", _I64),
)  # fmt: skip
_AD_RANGES: Final = (
    *_SHARED_RANGES, ("master_key_id", _I32), ("site_key_id", _I32), ("refreshed_ms", _I64),
)  # fmt: skip
_REFRESH_RANGES: Final = (*_SHARED_RANGES, ("key_id", _I32))

# Big-endian layouts, one ``struct`` call each. ``struct`` refuses a value its field cannot carry
# with exactly the bounds of the ranges above, so packing doubles as the range check.
_TOKEN_HEADER: Final = struct.Struct(">BBi")  # identity byte, version, key id
_MASTER_PREFIX: Final = struct.Struct(">qqiBiii")  # expires .. operator key id, site key id
_SITE_PREFIX: Final = struct.Struct(">iqiiqq")  # site id .. refreshed
_REFRESH_PREFIX: Final = struct.Struct(">qqiBiiiqiiqB")  # expires .. established, identity byte
_FORMAT_OF_RANGE: Final = {_I32: "i", _I64: "q", _U8: "B"}


class _RangeCheck:
    """Reads the range-checked fields of a token in one call and packs them in one more."""

    __slots__ = ("fields", "layout", "ranges")

    def __init__(self, ranges: tuple[tuple[str, tuple[int, int]], ...]) -> None:
        self.ranges = ranges
        self.fields = attrgetter(*(name for name, _ in ranges))
        self.layout = struct.Struct(">" + "".join(_FORMAT_OF_RANGE[r] for _, r in ranges))


_AD_CHECK: Final = _RangeCheck(_AD_RANGES)
_REFRESH_CHECK: Final = _RangeCheck(_REFRESH_RANGES)


def _check_ranges(obj: object, check: _RangeCheck) -> None:
    """Reject values the fixed-width fields cannot carry, so a bad token is unrepresentable.

    The common case (everything fits) costs one ``struct`` call; only a refusal walks the fields
    one by one, to name the first that does not fit.
    """
    try:
        check.layout.pack(*check.fields(obj))
    except struct.error:
        for name, (low, high) in check.ranges:
            if not low <= getattr(obj, name) < high:
                raise ValueError(f"{name} does not fit its field") from None
        raise ValueError("token fields must be integers") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class _TokenFields:
    """The fields both kinds of token carry (``_SHARED_RANGES``): what the token stands for, its
    times, the site it was issued to and the operator that issued it."""

    scope: IdentityScope
    identity_type: IdentityType
    expires_ms: int
    created_ms: int
    site_id: int
    privacy_bits: int
    established_ms: int
    operator_site_id: int = 0
    operator_type: int = OPERATOR_TYPE_SERVICE
    operator_version: int = 0
    operator_key_id: int = 0
    publisher_id: int = 0
    client_key_id: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class AdvertisingToken(_TokenFields):
    """Every field of an advertising token (§5.2); timestamps in epoch milliseconds.

    ``scope`` and ``identity_type`` are what the token stands for. A 33-byte raw UID states them
    in its first byte (and the decoder insists the token header agrees); a 32-byte raw UID does
    not, and the decoder then reports UID2/email whatever the header says, because the header is
    outside the authenticated ciphertext. v2 tokens have no created/refreshed fields: the decoder
    fills both with ``established_ms``.

    ``raw_uid`` is the pseudonymous identifier of a person; it is kept out of ``repr`` so tokens
    that reach a log line do not carry it.
    """

    master_key_id: int
    site_key_id: int
    refreshed_ms: int
    raw_uid: bytes = field(repr=False)
    version: TokenVersion = TokenVersion.V4

    def __post_init__(self) -> None:
        _check_ranges(self, _AD_CHECK)
        if len(self.raw_uid) not in RAW_UID_SIZES:
            raise ValueError("raw UID must be 32 or 33 bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshToken(_TokenFields):
    """Every field of a refresh token (§5.4); timestamps in epoch milliseconds.

    ``key_id`` is the refresh key that sealed it. ``first_level_hash`` is the salted hash of the
    identity (not the raw UID) so a refresh can re-derive the current raw UID; it is as sensitive
    as the identity itself and is kept out of ``repr``. v2 tokens are always UID2/email and their
    ``expires_ms`` is the "valid till" field (expiry plus 60 s).
    """

    key_id: int
    first_level_hash: bytes = field(repr=False)
    version: TokenVersion = TokenVersion.V3

    def __post_init__(self) -> None:
        _check_ranges(self, _REFRESH_CHECK)
        if len(self.first_level_hash) != FIRST_LEVEL_HASH_SIZE:
            raise ValueError("first-level hash must be 32 bytes")


# ------------------------------------------------------------------------------ advertising tokens


def encode_advertising_token(
    token: AdvertisingToken,
    *,
    master_key: EncryptionKey,
    site_key: EncryptionKey,
    random: RandomBytes,
) -> str:
    """Seal ``token`` as v4 (base64url, no padding) or v3 (standard base64) per ``token.version``.

    Two fresh IVs are drawn from ``random``: the site layer's first, then the master layer's.
    """
    site_iv = random(IV_SIZE)
    master_iv = random(IV_SIZE)
    return encode_advertising_token_with_ivs(
        token, master_key=master_key, site_key=site_key, master_iv=master_iv, site_iv=site_iv
    )


def encode_advertising_token_v4(
    token: AdvertisingToken,
    *,
    master_key: EncryptionKey,
    site_key: EncryptionKey,
    random: RandomBytes,
) -> str:
    """The format the operator issues: ``token`` sealed as v4 whatever its ``version`` says."""
    site_iv = random(IV_SIZE)
    master_iv = random(IV_SIZE)
    return _encode_advertising(
        token,
        TokenVersion.V4,
        master_key=master_key,
        site_key=site_key,
        master_iv=master_iv,
        site_iv=site_iv,
        identity_byte=None,
    )


def encode_advertising_token_with_ivs(
    token: AdvertisingToken,
    *,
    master_key: EncryptionKey,
    site_key: EncryptionKey,
    master_iv: bytes,
    site_iv: bytes,
    identity_byte: int | None = None,
) -> str:
    """Deterministic form of ``encode_advertising_token`` for golden vectors.

    ``identity_byte`` overrides header byte 0 (normally ``scope<<4 | type<<2 | 3``) so tokens made
    by peers that omit the low bits can be reproduced byte for byte.
    """
    return _encode_advertising(
        token,
        token.version,
        master_key=master_key,
        site_key=site_key,
        master_iv=master_iv,
        site_iv=site_iv,
        identity_byte=identity_byte,
    )


def _encode_advertising(
    token: AdvertisingToken,
    version: TokenVersion,
    *,
    master_key: EncryptionKey,
    site_key: EncryptionKey,
    master_iv: bytes,
    site_iv: bytes,
    identity_byte: int | None,
) -> str:
    if version is TokenVersion.V2:
        raise ValueError("v2 advertising tokens are decode-only")
    if master_key.id != token.master_key_id or site_key.id != token.site_key_id:
        raise ValueError("the keys do not match the token's key ids")
    identity = identity_type_byte(token.scope, token.identity_type)
    raw_uid = token.raw_uid
    if len(raw_uid) == 33 and (raw_uid[0] ^ identity) & _IDENTITY_MASK:
        raise ValueError("the raw UID's scope/type differ from the token's")
    data = seal_advertising_token(
        identity_byte=identity if identity_byte is None else identity_byte,
        version=version,
        master_key=master_key,
        site_key=site_key,
        master_iv=master_iv,
        site_iv=site_iv,
        expires_ms=token.expires_ms,
        created_ms=token.created_ms,
        operator_site_id=token.operator_site_id,
        operator_type=token.operator_type,
        operator_version=token.operator_version,
        operator_key_id=token.operator_key_id,
        site_id=token.site_id,
        publisher_id=token.publisher_id,
        client_key_id=token.client_key_id,
        privacy_bits=token.privacy_bits,
        established_ms=token.established_ms,
        refreshed_ms=token.refreshed_ms,
        raw_uid=raw_uid,
    )
    return b64url_encode(data) if version is TokenVersion.V4 else b64encode(data)


def seal_advertising_token(
    *,
    identity_byte: int,
    version: int,
    master_key: EncryptionKey,
    site_key: EncryptionKey,
    master_iv: bytes,
    site_iv: bytes,
    expires_ms: int,
    created_ms: int,
    site_id: int,
    privacy_bits: int,
    established_ms: int,
    refreshed_ms: int,
    raw_uid: bytes,
    operator_site_id: int = 0,
    operator_type: int = OPERATOR_TYPE_SERVICE,
    operator_version: int = 0,
    operator_key_id: int = 0,
    publisher_id: int = 0,
    client_key_id: int = 0,
) -> bytes:
    """The binary v3/v4 advertising token (before base64), built straight from its fields.

    The layout of ``encode_advertising_token_with_ivs`` without an ``AdvertisingToken`` in
    between, for callers that issue tokens on every request. Each layer is packed in one
    ``struct`` call and sealed with the key's cached cipher. A value its field cannot carry, or
    an IV that is not 12 bytes, raises ``ValueError``; the caller vouches for the rest (the raw
    UID's size and its agreement with ``identity_byte``, a non-v2 ``version``).
    """
    if len(master_iv) != IV_SIZE or len(site_iv) != IV_SIZE:
        raise ValueError(f"IV must be {IV_SIZE} bytes")
    try:
        site_plain = (
            _SITE_PREFIX.pack(
                site_id, publisher_id, client_key_id, privacy_bits, established_ms, refreshed_ms
            )
            + raw_uid
        )
        master_plain = (
            _MASTER_PREFIX.pack(
                expires_ms,
                created_ms,
                operator_site_id,
                operator_type,
                operator_version,
                operator_key_id,
                site_key.id,
            )
            + site_iv
            + cipher(site_key.secret).encrypt(site_iv, site_plain, None)
        )
        header = _TOKEN_HEADER.pack(identity_byte, version, master_key.id)
    except struct.error as exc:
        raise ValueError(f"a token field does not fit: {exc}") from None
    return header + master_iv + cipher(master_key.secret).encrypt(master_iv, master_plain, None)


def decode_advertising_token(
    text: str, *, master_key: KeyLookup, site_key: KeyLookup
) -> AdvertisingToken:
    """Decode a v2, v3 or v4 advertising token.

    Version detection follows the reference operator and the SDKs: the first four characters are
    decoded on their own (as base64url if they contain ``-`` or ``_``, else standard base64);
    byte 0 == 2 means v2 (standard base64), otherwise byte 1 == 112 means v3 (standard base64)
    and byte 1 == 128 means v4 (base64url); anything else is an unsupported version.

    Header type bits that name no identity type are rejected even when the raw UID is 32 bytes
    (where the reference operator ignores the header); no issuer writes them.
    """
    if len(text) < 4:
        raise MalformedToken("Advertising token is too short")
    head = text[:4]
    header = _decode_text(head, url="-" in head or "_" in head)
    if header[0] == TokenVersion.V2:
        return _decode_advertising_v2(_decode_text(text, url=False), master_key, site_key)
    if len(header) < 2:
        raise MalformedToken
    if header[1] == TokenVersion.V3:
        data, version = _decode_text(text, url=False), TokenVersion.V3
    elif header[1] == TokenVersion.V4:
        data, version = _decode_text(text, url=True), TokenVersion.V4
    else:
        raise UnsupportedTokenVersion("Invalid advertising token version")
    return _decode_advertising_v3_v4(data, version, master_key, site_key)


def _decode_advertising_v3_v4(
    data: bytes, version: TokenVersion, master_key: KeyLookup, site_key: KeyLookup
) -> AdvertisingToken:
    if len(data) < _HEADER_SIZE + OVERHEAD:
        raise MalformedToken
    scope, kind = _parse_identity_bits(data[0])
    master_key_id = unpack_i32(data, 2)
    master = _open_gcm(_lookup(master_key, master_key_id), data[_HEADER_SIZE:])
    if len(master) < _MASTER_PREFIX_SIZE + OVERHEAD:
        raise MalformedToken
    site_key_id = unpack_i32(master, 29)
    site = _open_gcm(_lookup(site_key, site_key_id), master[_MASTER_PREFIX_SIZE:])
    raw_uid = site[_SITE_PREFIX_SIZE:]
    if len(raw_uid) not in RAW_UID_SIZES:
        raise MalformedToken
    if len(raw_uid) == 33:
        if (raw_uid[0] ^ data[0]) & _IDENTITY_MASK:
            raise IdentityMismatch
    else:
        scope, kind = IdentityScope.UID2, IdentityType.EMAIL
    return AdvertisingToken(
        version=version,
        scope=scope,
        identity_type=kind,
        master_key_id=master_key_id,
        expires_ms=unpack_i64(master, 0),
        created_ms=unpack_i64(master, 8),
        operator_site_id=unpack_i32(master, 16),
        operator_type=master[20],
        operator_version=unpack_i32(master, 21),
        operator_key_id=unpack_i32(master, 25),
        site_key_id=site_key_id,
        site_id=unpack_i32(site, 0),
        publisher_id=unpack_i64(site, 4),
        client_key_id=unpack_i32(site, 12),
        privacy_bits=unpack_i32(site, 16),
        established_ms=unpack_i64(site, 20),
        refreshed_ms=unpack_i64(site, 28),
        raw_uid=raw_uid,
    )


def _decode_advertising_v2(
    data: bytes, master_key: KeyLookup, site_key: KeyLookup
) -> AdvertisingToken:
    """``0x02 | master key id | CBC(master)[expires | site key id | CBC(site)[identity]]``."""
    if len(data) < 5:
        raise MalformedToken
    master_key_id = unpack_i32(data, 1)
    master = _open_cbc(_lookup(master_key, master_key_id), data[5:])
    if len(master) < 12:
        raise MalformedToken
    site_key_id = unpack_i32(master, 8)
    site = _open_cbc(_lookup(site_key, site_key_id), master[12:])
    site_id, raw_uid, privacy_bits, established_ms = _legacy_identity(site)
    if len(raw_uid) not in RAW_UID_SIZES:
        raise MalformedToken
    scope, kind = IdentityScope.UID2, IdentityType.EMAIL
    if len(raw_uid) == 33:
        scope, kind = _parse_identity_bits(raw_uid[0])
    return AdvertisingToken(
        version=TokenVersion.V2,
        scope=scope,
        identity_type=kind,
        master_key_id=master_key_id,
        expires_ms=unpack_i64(master, 0),
        created_ms=established_ms,
        site_key_id=site_key_id,
        site_id=site_id,
        privacy_bits=privacy_bits,
        established_ms=established_ms,
        refreshed_ms=established_ms,
        raw_uid=raw_uid,
    )


# ---------------------------------------------------------------------------------- refresh tokens


def encode_refresh_token(token: RefreshToken, *, key: EncryptionKey, random: RandomBytes) -> str:
    """Seal a v3 refresh token under ``key`` (a refresh key); 168 characters of standard base64."""
    return encode_refresh_token_with_iv(token, key=key, iv=random(IV_SIZE))


def encode_refresh_token_with_iv(token: RefreshToken, *, key: EncryptionKey, iv: bytes) -> str:
    """Deterministic form of ``encode_refresh_token`` for golden vectors."""
    if token.version is not TokenVersion.V3:
        raise ValueError("only v3 refresh tokens are issued")
    if key.id != token.key_id:
        raise ValueError("the key does not match the token's key id")
    data = seal_refresh_token(
        identity_byte=identity_type_byte(token.scope, token.identity_type),
        key=key,
        iv=iv,
        expires_ms=token.expires_ms,
        created_ms=token.created_ms,
        operator_site_id=token.operator_site_id,
        operator_type=token.operator_type,
        operator_version=token.operator_version,
        operator_key_id=token.operator_key_id,
        site_id=token.site_id,
        publisher_id=token.publisher_id,
        client_key_id=token.client_key_id,
        privacy_bits=token.privacy_bits,
        established_ms=token.established_ms,
        first_level_hash=token.first_level_hash,
    )
    return b64encode(data)


def seal_refresh_token(
    *,
    identity_byte: int,
    key: EncryptionKey,
    iv: bytes,
    expires_ms: int,
    created_ms: int,
    site_id: int,
    privacy_bits: int,
    established_ms: int,
    first_level_hash: bytes,
    operator_site_id: int = 0,
    operator_type: int = OPERATOR_TYPE_SERVICE,
    operator_version: int = 0,
    operator_key_id: int = 0,
    publisher_id: int = 0,
    client_key_id: int = 0,
) -> bytes:
    """The 124-byte v3 refresh token (before base64), built straight from its fields.

    The layout of ``encode_refresh_token_with_iv`` without a ``RefreshToken`` in between: one
    ``struct`` call and the key's cached cipher. A value its field cannot carry, or an IV that is
    not 12 bytes, raises ``ValueError``; the caller vouches for the 32-byte first-level hash.
    """
    if len(iv) != IV_SIZE:
        raise ValueError(f"IV must be {IV_SIZE} bytes")
    try:
        header = _TOKEN_HEADER.pack(identity_byte, TokenVersion.V3, key.id)
        plain = (
            _REFRESH_PREFIX.pack(
                expires_ms,
                created_ms,
                operator_site_id,
                operator_type,
                operator_version,
                operator_key_id,
                site_id,
                publisher_id,
                client_key_id,
                privacy_bits,
                established_ms,
                identity_byte,
            )
            + first_level_hash
        )
    except struct.error as exc:
        raise ValueError(f"a token field does not fit: {exc}") from None
    return header + iv + cipher(key.secret).encrypt(iv, plain, None)


def decode_refresh_token(text: str, *, key_lookup: KeyLookup) -> RefreshToken:
    """Decode the inner refresh token (the text inside the refresh envelope, or a legacy body).

    Version detection as the reference operator does it: byte 1 == 112 → v3, else byte 0 == 2 →
    v2, else an unsupported version. ``key_lookup`` should only offer refresh keys (keyset -2).
    """
    data = _decode_text(text, url=False)
    if len(data) < 2:
        raise MalformedToken("Invalid refresh token")
    if data[1] == TokenVersion.V3:
        return _decode_refresh_v3(data, key_lookup)
    if data[0] == TokenVersion.V2:
        return _decode_refresh_v2(data, key_lookup)
    raise UnsupportedTokenVersion("Invalid refresh token version")


def _decode_refresh_v3(data: bytes, key_lookup: KeyLookup) -> RefreshToken:
    if len(data) != REFRESH_TOKEN_V3_SIZE:
        raise MalformedToken("Invalid refresh token")
    scope, kind = _parse_identity_bits(data[0])
    key_id = unpack_i32(data, 2)
    payload = _open_gcm(_lookup(key_lookup, key_id), data[_HEADER_SIZE:])
    if (payload[57] ^ data[0]) & _IDENTITY_MASK:
        raise IdentityMismatch
    return RefreshToken(
        version=TokenVersion.V3,
        scope=scope,
        identity_type=kind,
        key_id=key_id,
        expires_ms=unpack_i64(payload, 0),
        created_ms=unpack_i64(payload, 8),
        operator_site_id=unpack_i32(payload, 16),
        operator_type=payload[20],
        operator_version=unpack_i32(payload, 21),
        operator_key_id=unpack_i32(payload, 25),
        site_id=unpack_i32(payload, 29),
        publisher_id=unpack_i64(payload, 33),
        client_key_id=unpack_i32(payload, 41),
        privacy_bits=unpack_i32(payload, 45),
        established_ms=unpack_i64(payload, 49),
        first_level_hash=payload[58:90],
    )


def _decode_refresh_v2(data: bytes, key_lookup: KeyLookup) -> RefreshToken:
    """``0x02 | created | expires | valid_till | key id | CBC(key)[identity]``, UID2/email."""
    if len(data) < _REFRESH_V2_PREFIX_SIZE:
        raise MalformedToken("Invalid refresh token")
    key_id = unpack_i32(data, 25)
    plain = _open_cbc(_lookup(key_lookup, key_id), data[_REFRESH_V2_PREFIX_SIZE:])
    site_id, flh, privacy_bits, established_ms = _legacy_identity(plain)
    if len(flh) != FIRST_LEVEL_HASH_SIZE:
        raise MalformedToken("Invalid refresh token")
    return RefreshToken(
        version=TokenVersion.V2,
        scope=IdentityScope.UID2,
        identity_type=IdentityType.EMAIL,
        key_id=key_id,
        expires_ms=unpack_i64(data, 17),
        created_ms=unpack_i64(data, 1),
        site_id=site_id,
        privacy_bits=privacy_bits,
        established_ms=established_ms,
        first_level_hash=flh,
    )


# ----------------------------------------------------------------------------------------- shared


def _decode_text(text: str, *, url: bool) -> bytes:
    try:
        return b64url_decode(text) if url else b64decode(text)
    except Base64Error as exc:
        raise MalformedToken from exc


def _parse_identity_bits(value: int) -> tuple[IdentityScope, IdentityType]:
    try:
        return _parse_identity_byte(value)
    except ValueError as exc:
        raise MalformedToken("Invalid identity type") from exc


def _lookup(lookup: KeyLookup, key_id: int) -> EncryptionKey:
    key = lookup(key_id)
    if key is None:
        raise UnknownTokenKey(f"Token was encrypted with an unknown key (Key ID: {key_id})")
    return key


def _open_gcm(key: EncryptionKey, blob: bytes) -> bytes:
    try:
        return open_(key.secret, blob)
    except AeadFailure as exc:
        raise TokenDecryptionFailed from exc


def _open_cbc(key: EncryptionKey, blob: bytes) -> bytes:
    """``IV(16) || AES-256-CBC/PKCS7 ciphertext`` of the legacy formats.

    CBC carries no authentication: a wrong key or a tampered token usually shows up as bad
    padding, but may also decrypt to garbage that the field checks then reject. Callers must answer
    every ``TokenError`` alike, so the padding outcome is never observable (no padding oracle).
    """
    body = blob[_CBC_IV_SIZE:]
    if not body or len(body) % _CBC_BLOCK:
        raise MalformedToken
    decryptor = Cipher(algorithms.AES(key.secret), modes.CBC(blob[:_CBC_IV_SIZE])).decryptor()
    padded = decryptor.update(body) + decryptor.finalize()
    unpadder = padding.PKCS7(_CBC_BLOCK * 8).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError as exc:
        raise TokenDecryptionFailed from exc


def _legacy_identity(plain: bytes) -> tuple[int, bytes, int, int]:
    """``site_id(4) | L(4) | base64 text (L bytes) | privacy_bits(4) | established_ms(8)``."""
    if len(plain) < 8:
        raise MalformedToken
    length = unpack_i32(plain, 4)
    if length < 0 or len(plain) != 8 + length + 12:
        raise MalformedToken
    try:
        identity = b64decode(plain[8 : 8 + length])
    except Base64Error as exc:
        raise MalformedToken from exc
    return (
        unpack_i32(plain, 0),
        identity,
        unpack_i32(plain, 8 + length),
        unpack_i64(plain, 12 + length),
    )
