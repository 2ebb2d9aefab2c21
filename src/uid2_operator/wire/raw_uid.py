"""Raw UID2 derivation: first-level hash, salt bucket choice, raw UID v2/v3/v4, bucket ids (§4).

The chain is ``H -> FLH -> bucket -> raw UID``. Every step reproduces the reference operator's
bytes, because a raw UID is only useful if every operator derives the same one for the same person
at the same time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from uid2_operator.errors import SaltError, WireError
from uid2_operator.wire.encoding import b64encode_ascii
from uid2_operator.wire.identity import java_utf8
from uid2_operator.wire.scope import IdentityScope, IdentityType

DAY_MS = 86_400_000
PREVIOUS_UID_MAX_AGE_DAYS = 90
PRODUCTION_BUCKET_COUNT = 1 << 20

RAW_UID_V2_SIZE = 32
RAW_UID_V3_SIZE = 33
RAW_UID_V4_SIZE = 33
V4_IV_SIZE = 12
V4_KEY_ID_LIMIT = 1 << 24
V4_VERSION_BIT = 0x20
_AES_KEY_SIZES = (16, 24, 32)

BUCKET_ID_MIN_LENGTH = 9
BUCKET_ID_MAX_NUMBER = 9_007_199_254_740_992  # the largest id the hashids scheme encodes (2^53)


class IdentityEnvironment(IntEnum):
    """Where a v4 raw UID was minted (runtime config ``identity_environment``), bits 6-7."""

    TEST = 0
    INTEG = 1
    PROD = 2

    @classmethod
    def parse(cls, name: str) -> IdentityEnvironment:
        """``test`` / ``integ`` / ``prod`` in any case; anything else raises ``ValueError``."""
        for member in cls:
            if member.name.lower() == name.lower():
                return member
        raise ValueError(f"unknown identity environment {name!r}")


# ------------------------------------------------------------------------------ hashing chain


def first_level_hash(identity_hash: bytes, first_level_salt: str) -> bytes:
    """``SHA256(base64(H) || first_level_salt)``: ``H`` is salted as base64 *text* (§4.2)."""
    return hashlib.sha256(b64encode_ascii(identity_hash) + java_utf8(first_level_salt)).digest()


def bucket_index(flh: bytes, bucket_count: int) -> int:
    """Line position of the salt bucket for ``flh`` in a salt file of ``bucket_count`` lines.

    Both rules take the same 20 bits (``FLH[0]``, ``FLH[1]``, low nibble of ``FLH[2]``); the
    production file has exactly 2^20 lines and uses them directly, any other size takes them
    modulo the size.
    """
    if bucket_count <= 0:
        raise SaltError("Salt file has no buckets")
    if len(flh) < 3:
        raise SaltError("First-level hash too short")
    value = (flh[0] << 12) | (flh[1] << 4) | (flh[2] & 0x0F)
    if bucket_count == PRODUCTION_BUCKET_COUNT:
        return value
    return value % bucket_count


def raw_uid_v2(flh: bytes, salt: str) -> bytes:
    """``SHA256(base64(FLH) || salt)`` (32 bytes)."""
    return hashlib.sha256(b64encode_ascii(flh) + java_utf8(salt)).digest()


def v3_metadata(scope: IdentityScope, kind: IdentityType) -> int:
    return (scope << 4) | (kind << 2)


def raw_uid_v3(flh: bytes, salt: str, scope: IdentityScope, kind: IdentityType) -> bytes:
    """One metadata byte ``scope<<4 | type<<2`` followed by the v2 bytes (33 bytes)."""
    return bytes([v3_metadata(scope, kind)]) + raw_uid_v2(flh, salt)


def v4_metadata(scope: IdentityScope, kind: IdentityType, environment: IdentityEnvironment) -> int:
    return (environment << 6) | V4_VERSION_BIT | (scope << 4) | (kind << 2)


def raw_uid_v4(
    flh: bytes,
    key_id: int,
    key: str,
    key_salt: str,
    *,
    scope: IdentityScope,
    kind: IdentityType,
    environment: IdentityEnvironment,
) -> bytes:
    """The refreshable raw UID (33 bytes)::

        metadata(1) || key_id(3, BE) || IV(12) || AES-CTR(key, IV||0^4)(FLH[16:32])(16) || xor(1)

    ``IV = SHA256(key_salt || FLH[16:32] || metadata || key_id)[:12]`` is derived, not random: the
    same person under the same key must always get the same raw UID. Key ids that do not fit the
    three bytes, and keys that are not an AES key size once UTF-8 encoded, are refused rather than
    truncated, so every raw UID minted here names the key that can open it.
    """
    if not 0 <= key_id < V4_KEY_ID_LIMIT:
        raise SaltError("Key id does not fit a v4 raw UID")
    aes_key = java_utf8(key)
    if len(aes_key) not in _AES_KEY_SIZES:
        raise SaltError("Key is not an AES key")
    metadata = bytes([v4_metadata(scope, kind, environment)])
    key_id_bytes = key_id.to_bytes(3, "big")
    tail = flh[-16:]
    iv = hashlib.sha256(java_utf8(key_salt) + tail + metadata + key_id_bytes).digest()[:V4_IV_SIZE]
    encryptor = Cipher(algorithms.AES(aes_key), modes.CTR(iv + bytes(4))).encryptor()
    body = metadata + key_id_bytes + iv + encryptor.update(tail) + encryptor.finalize()
    checksum = 0
    for byte in body:
        checksum ^= byte
    return body + bytes([checksum])


@dataclass(frozen=True)
class RawUidInfo:
    """What the leading byte of a raw UID says; v2 raw UIDs carry no metadata."""

    version: int
    scope: IdentityScope | None = None
    kind: IdentityType | None = None
    environment: IdentityEnvironment | None = None


def describe_raw_uid(raw_uid: bytes) -> RawUidInfo:
    """Read the version, scope, type and environment back out of a raw UID.

    32 bytes is v2. 33 bytes is v4 when bit 5 is set, else v3; bits 0-1 must be clear, the type
    must be email or phone, a v3 byte has no environment bits and a v4 byte no unknown
    environment.
    """
    if len(raw_uid) == RAW_UID_V2_SIZE:
        return RawUidInfo(version=2)
    if len(raw_uid) != RAW_UID_V3_SIZE:
        raise WireError("Invalid raw UID length")
    meta = raw_uid[0]
    type_bits = (meta >> 2) & 0x03
    env_bits = meta >> 6
    is_v4 = bool(meta & V4_VERSION_BIT)
    if meta & 0x03 or type_bits > IdentityType.PHONE or env_bits > IdentityEnvironment.PROD:
        raise WireError("Invalid raw UID metadata")
    if not is_v4 and env_bits:
        raise WireError("Invalid raw UID metadata")
    scope = IdentityScope((meta >> 4) & 0x01)
    kind = IdentityType(type_bits)
    if not is_v4:
        return RawUidInfo(version=3, scope=scope, kind=kind)
    return RawUidInfo(version=4, scope=scope, kind=kind, environment=IdentityEnvironment(env_bits))


# ---------------------------------------------------------------------------------- buckets


@dataclass(frozen=True)
class KeyMaterial:
    """A v4 key of a salt bucket. Secrets stay out of ``repr``.

    ``salt`` may be missing in Core's file; such material cannot mint a raw UID: as current
    material that is an error, as previous material it counts as absent.
    """

    key_id: int
    key: str = field(repr=False)
    salt: str | None = field(repr=False)


@dataclass(frozen=True)
class SaltBucket:
    """One line of a salt file. ``index`` is the ``id`` column (what the bucket id encodes)."""

    index: int
    last_updated_ms: int
    current_salt: str | None = field(repr=False)
    refresh_from_ms: int
    previous_salt: str | None = field(default=None, repr=False)
    current_key: KeyMaterial | None = None
    previous_key: KeyMaterial | None = None


def _raw_uid(
    flh: bytes,
    salt: str | None,
    key: KeyMaterial | None,
    *,
    scope: IdentityScope,
    kind: IdentityType,
    environment: IdentityEnvironment,
    identity_v3: bool,
) -> bytes:
    if salt is not None:
        return raw_uid_v3(flh, salt, scope, kind) if identity_v3 else raw_uid_v2(flh, salt)
    if key is None or key.salt is None:
        raise SaltError
    return raw_uid_v4(
        flh, key.key_id, key.key, key.salt, scope=scope, kind=kind, environment=environment
    )


def current_raw_uid(
    bucket: SaltBucket,
    flh: bytes,
    *,
    scope: IdentityScope,
    kind: IdentityType,
    environment: IdentityEnvironment,
    identity_v3: bool,
) -> bytes:
    """The raw UID of ``flh`` today: v2 (or v3 with ``identity_v3``) from the current salt,
    else v4 from the current key material, else ``SaltError``."""
    return _raw_uid(
        flh,
        bucket.current_salt,
        bucket.current_key,
        scope=scope,
        kind=kind,
        environment=environment,
        identity_v3=identity_v3,
    )


def previous_raw_uid(
    bucket: SaltBucket,
    flh: bytes,
    *,
    now_ms: int,
    scope: IdentityScope,
    kind: IdentityType,
    environment: IdentityEnvironment,
    identity_v3: bool,
) -> bytes | None:
    """The raw UID before the bucket's last rotation, for 90 whole days after it; else ``None``.

    The age is counted in whole days (integer division). The reference truncates toward zero
    and Python floors, which only differs for a negative age, and both give "under 90" there.
    """
    if (now_ms - bucket.last_updated_ms) // DAY_MS >= PREVIOUS_UID_MAX_AGE_DAYS:
        return None
    key = bucket.previous_key
    if key is not None and key.salt is None:
        key = None
    if bucket.previous_salt is None and key is None:
        return None
    return _raw_uid(
        flh,
        bucket.previous_salt,
        key,
        scope=scope,
        kind=kind,
        environment=environment,
        identity_v3=identity_v3,
    )


def refresh_from_ms(bucket: SaltBucket, now_ms: int) -> int:
    """When a mapper should map this bucket's identities again (epoch ms).

    The bucket's own ``refresh_from`` while it is not in the past, otherwise the next UTC
    midnight after ``now_ms``.
    """
    if bucket.refresh_from_ms >= now_ms:
        return bucket.refresh_from_ms
    return (now_ms // DAY_MS + 1) * DAY_MS


def refresh_from_seconds(bucket: SaltBucket, now_ms: int) -> int:
    """``refresh_from_ms`` in whole seconds, the unit of the v3 identity map's ``r`` field."""
    return refresh_from_ms(bucket, now_ms) // 1000


# Bucket ids use the hashids scheme (the library Core uses) with its default alphabet, the bucket id
# secret as salt, a minimum length of 9 and exactly one number per id. Its generic encoder
# re-derives the whole alphabet on every call; for one number everything but the base conversion,
# one guard pick and the final slicing depends only on the secret and ``n % 100``, so it is derived
# once per secret below and every id afterwards is a few string operations.

_HASHIDS_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ1234567890"
_HASHIDS_SEPARATORS = "cfhistuCFHISTU"
# The alphabet without its separators (48 characters). The scheme wants at least one separator per
# 3.5 alphabet characters (ceil(48 / 3.5) = 14, exactly the 14 there are), so none is borrowed from
# the alphabet, and one guard per 12 (ceil(48 / 12) = 4), taken from the front of the shuffled
# alphabet. Separators only ever sit between two numbers, so a one-number id never shows one.
_HASHIDS_LETTERS = "".join(c for c in _HASHIDS_ALPHABET if c not in _HASHIDS_SEPARATORS)
_HASHIDS_GUARD_COUNT = 4
# ``n % 100`` picks the lottery character (the first character of the id), which keys the
# per-id alphabet, and, with that character, the guard in front of short ids.
_HASHIDS_LOTTERY_CLASSES = 100


def _consistent_shuffle(chars: str, key: str) -> str:
    """The scheme's deterministic shuffle of ``chars`` driven by the code points of ``key``."""
    if not key:
        return chars
    out = list(chars)
    index = 0
    key_sum = 0
    for i in range(len(out) - 1, 0, -1):
        code = ord(key[index])
        key_sum += code
        j = (code + index + key_sum) % i
        out[i], out[j] = out[j], out[i]
        index = (index + 1) % len(key)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class _LotteryClass:
    """What one ``n % 100`` class of bucket ids shares under one secret.

    ``digits`` is the base-44 digit alphabet, ``front_guard`` the guard put in front of ids of
    under eight characters (the one behind ids of under seven depends on their first digit too),
    and ``pad_before`` / ``pad_after`` surround ids still shorter than nine before the middle
    nine characters are kept.
    """

    lottery: str
    digits: str
    front_guard: str
    pad_before: str
    pad_after: str


class _BucketIdEncoder:
    """``Hashids(salt=id_secret, min_length=9).encode(n)`` for one non-negative ``n``."""

    __slots__ = ("_classes", "_guards")

    def __init__(self, id_secret: str) -> None:
        shuffled = _consistent_shuffle(_HASHIDS_LETTERS, id_secret)
        guards = shuffled[:_HASHIDS_GUARD_COUNT]
        alphabet = shuffled[_HASHIDS_GUARD_COUNT:]
        size = len(alphabet)
        half = size // 2
        classes: list[_LotteryClass] = []
        for remainder in range(_HASHIDS_LOTTERY_CLASSES):
            lottery = alphabet[remainder % size]
            digits = _consistent_shuffle(alphabet, (lottery + id_secret + alphabet)[:size])
            padding = _consistent_shuffle(digits, digits)
            classes.append(
                _LotteryClass(
                    lottery=lottery,
                    digits=digits,
                    front_guard=guards[(remainder + ord(lottery)) % _HASHIDS_GUARD_COUNT],
                    pad_before=padding[half:],
                    pad_after=padding[:half],
                )
            )
        self._classes = tuple(classes)
        self._guards = guards

    def encode(self, number: int) -> str:
        remainder = number % _HASHIDS_LOTTERY_CLASSES
        kind = self._classes[remainder]
        digits = kind.digits
        base = len(digits)
        text = ""
        while True:
            number, digit = divmod(number, base)
            text = digits[digit] + text
            if not number:
                break
        encoded = kind.lottery + text
        if len(encoded) >= BUCKET_ID_MIN_LENGTH:
            return encoded
        encoded = kind.front_guard + encoded
        if len(encoded) >= BUCKET_ID_MIN_LENGTH:
            return encoded
        encoded += self._guards[(remainder + ord(text[0])) % _HASHIDS_GUARD_COUNT]
        if len(encoded) >= BUCKET_ID_MIN_LENGTH:
            return encoded
        # One round of padding always reaches the minimum (44 characters are added); the scheme
        # then keeps the middle nine, leaning left when the excess is odd.
        padded = kind.pad_before + encoded + kind.pad_after
        start = (len(padded) - BUCKET_ID_MIN_LENGTH) // 2
        return padded[start : start + BUCKET_ID_MIN_LENGTH]


@lru_cache(maxsize=8)
def _bucket_encoder(id_secret: str) -> _BucketIdEncoder:
    return _BucketIdEncoder(id_secret)


def bucket_id(index_or_id: int, *, id_prefix: str, id_secret: str) -> str:
    """``id_prefix + hashids(id_secret, min_length=9).encode(id)``: the public name of a bucket.

    Identical to Core's encoding (checked against the reference hashids library in the golden
    vectors). Ids outside what that library can encode are refused.
    """
    if not 0 <= index_or_id <= BUCKET_ID_MAX_NUMBER:
        raise SaltError("Bucket id out of range")
    return id_prefix + _bucket_encoder(id_secret).encode(index_or_id)
