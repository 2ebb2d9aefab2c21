"""API keys and admin tokens as text: minting, parsing, checksum, keyed hashing, verification.

Layout (kind ``C`` for a participant's API key, ``A`` for an administrator's token)::

    UID2-<kind>-<env letter>-<site id>-<public id>.<random><checksum>
    UID2-C-L-1001-fCXrMM.<33 base62 random chars><5 base62 checksum chars>

A deployment of the EUID identity scope issues its API keys as ``EUID-...`` (``BRANDS``); either
brand parses everywhere, and a key is found by its whole key id, brand included.

* ``key_id`` (everything before the '.') is public: it is the lookup id and safe in logs, URLs and
  audit rows. The public id is drawn independently of the secret tail, so the key id reveals
  nothing of it.
* The 33 random base62 characters carry more than 196 bits.
* The checksum is CRC32 of everything before it, reduced mod 62**5 and written as 5 base62
  characters. It lets the verifier (and secret scanners) refuse typos and made-up strings without
  touching the store.
* The shape still matches the UID2 pattern ``(UID2|EUID)-[CO]-[LTIP]-\\d+-.{6}\\..{38}`` for client
  keys, so existing scanners recognise it.

At rest only ``HMAC-SHA-256(pepper, utf8(full text))`` is kept. The pepper lives in the keyring,
not in the database, so a copy of the database alone cannot be used to test guesses.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from uid2_operator.domain.environments import Environment
from uid2_operator.errors import (
    CredentialRejected,
    InvalidInput,
    MalformedCredential,
    WrongEnvironment,
)
from uid2_operator.wire.aead import RandomBytes

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BRAND = "UID2"
"""The brand of the UID2 identity scope's credentials, and the default."""
BRANDS = ("UID2", "EUID")
"""The brands a credential may carry: its deployment's identity scope (``wire.scope``) by name.
Both have four letters, so every position in a credential is the same whichever it carries."""
PUBLIC_ID_LENGTH = 6
RANDOM_LENGTH = 33
CHECKSUM_LENGTH = 5
TAIL_LENGTH = RANDOM_LENGTH + CHECKSUM_LENGTH
ADMIN_SITE_ID = 0
MAX_SITE_ID = 2**31 - 1
MIN_CLIENT_SITE_ID = 3
HASH_SIZE = 32
KEY_ID_PATTERN = (
    f"(?:{'|'.join(BRANDS)})-[A-Z]-[A-Z]-(?:0|[1-9][0-9]{{0,{len(str(MAX_SITE_ID)) - 1}}})-"
    f"[A-Za-z0-9]{{{PUBLIC_ID_LENGTH}}}"
)
"""A key's or admin token's id, the public part before the '.', as a regular expression."""
# Longest possible credential: brand, kind, env, 10-digit site id, public id, tail and separators.
MAX_TEXT_LENGTH = len(BRAND) + 1 + 1 + 1 + 1 + 1 + 10 + 1 + PUBLIC_ID_LENGTH + 1 + TAIL_LENGTH

_SHAPE = re.compile(
    r"(?:UID2|EUID)-([A-Z])-([A-Z])-(0|[1-9][0-9]{0,9})-([A-Za-z0-9]{6})\.([A-Za-z0-9]{38})"
)
# Highest byte value below which ``byte % 62`` is uniform (4 * 62 = 248).
_UNBIASED_LIMIT = 256 - 256 % len(BASE62)
# Compared against when a key id is unknown, so that a miss costs the same HMAC and compare.
_DUMMY_HASH = bytes(HASH_SIZE)


class CredentialKind(StrEnum):
    CLIENT = "C"
    ADMIN = "A"

    @property
    def noun(self) -> str:
        return "API key" if self is CredentialKind.CLIENT else "admin token"


@dataclass(frozen=True, slots=True)
class ParsedCredential:
    """A presented credential whose shape, checksum and environment are right (not yet verified)."""

    kind: CredentialKind
    environment: Environment
    site_id: int
    key_id: str
    text: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class MintedCredential:
    """A freshly minted credential. ``text`` is shown to its holder once and never stored."""

    kind: CredentialKind
    environment: Environment
    site_id: int
    key_id: str
    text: str = field(repr=False)
    key_hash: bytes = field(repr=False)


def random_base62(length: int, random: RandomBytes) -> str:
    """``length`` uniformly distributed base62 characters (rejection sampling, no modulo bias)."""
    out: list[str] = []
    while len(out) < length:
        for byte in random(length - len(out) + 8):
            if byte < _UNBIASED_LIMIT and len(out) < length:
                out.append(BASE62[byte % len(BASE62)])
    return "".join(out)


def checksum(body: str) -> str:
    """CRC32 of ``body`` (UTF-8) mod 62**5, as 5 base62 characters, most significant first."""
    value = zlib.crc32(body.encode("utf-8")) % len(BASE62) ** CHECKSUM_LENGTH
    chars = []
    for _ in range(CHECKSUM_LENGTH):
        value, digit = divmod(value, len(BASE62))
        chars.append(BASE62[digit])
    return "".join(reversed(chars))


def keyed_hash(pepper: bytes, text: str) -> bytes:
    """``HMAC-SHA-256(pepper, utf8(text))``: the only form in which a credential is stored."""
    return hmac.new(pepper, text.encode("utf-8"), hashlib.sha256).digest()


def hash_matches(pepper: bytes, text: str, stored_hash: bytes | None) -> bool:
    """Compare the keyed hash of ``text`` with ``stored_hash`` in constant time.

    With no stored hash (unknown key id) the HMAC and the comparison still run, against a dummy,
    so a miss and a wrong key cost the same and timing tells nothing about which ids exist.
    """
    candidate = keyed_hash(pepper, text)
    equal = hmac.compare_digest(candidate, _DUMMY_HASH if stored_hash is None else stored_hash)
    return equal and stored_hash is not None


def mint(
    kind: CredentialKind,
    environment: Environment,
    site_id: int,
    pepper: bytes,
    random: RandomBytes,
    *,
    brand: str = BRAND,
) -> MintedCredential:
    """A new credential for ``site_id`` (0 for admin tokens) in ``environment``, carrying
    ``brand`` (one of ``BRANDS``: the deployment's identity scope)."""
    _check_site_id(kind, site_id, InvalidInput)
    if brand not in BRANDS:
        raise InvalidInput(f"A credential's brand is one of {', '.join(BRANDS)}")
    key_id = f"{brand}-{kind.value}-{environment.letter}-{site_id}-"
    key_id += random_base62(PUBLIC_ID_LENGTH, random)
    body = f"{key_id}.{random_base62(RANDOM_LENGTH, random)}"
    text = body + checksum(body)
    return MintedCredential(
        kind=kind,
        environment=environment,
        site_id=site_id,
        key_id=key_id,
        text=text,
        key_hash=keyed_hash(pepper, text),
    )


def mint_api_key(
    environment: Environment,
    site_id: int,
    pepper: bytes,
    random: RandomBytes,
    *,
    brand: str = BRAND,
) -> MintedCredential:
    return mint(CredentialKind.CLIENT, environment, site_id, pepper, random, brand=brand)


def mint_admin_token(
    environment: Environment, pepper: bytes, random: RandomBytes
) -> MintedCredential:
    return mint(CredentialKind.ADMIN, environment, ADMIN_SITE_ID, pepper, random)


def parse(text: str, kind: CredentialKind, environment: Environment) -> ParsedCredential:
    """Check shape, checksum and environment, in that order, before anything is looked up.

    Raises ``MalformedCredential`` or ``WrongEnvironment`` and nothing else. Messages never
    repeat the presented text: it may be a real key pasted into the wrong place.
    """
    noun = kind.noun
    match = _SHAPE.fullmatch(text) if len(text) <= MAX_TEXT_LENGTH else None
    if match is None:
        raise MalformedCredential(f"The {noun} is malformed")
    kind_letter, env_letter, site_text, _public_id, _tail = match.groups()
    if kind_letter != kind.value:
        raise MalformedCredential(f"This is not an {noun}")
    if checksum(text[:-CHECKSUM_LENGTH]) != text[-CHECKSUM_LENGTH:]:
        raise MalformedCredential(f"The {noun} checksum does not match (mistyped or truncated?)")
    presented_env = Environment.from_letter(env_letter)
    if presented_env is None:
        raise MalformedCredential(f"The {noun} names an unknown environment")
    if presented_env is not environment:
        raise WrongEnvironment(
            f"This {noun} belongs to the {presented_env.value} environment; "
            f"this is the {environment.value} environment"
        )
    site_id = int(site_text)
    _check_site_id(kind, site_id, MalformedCredential)
    return ParsedCredential(
        kind=kind,
        environment=environment,
        site_id=site_id,
        key_id=text[: text.index(".")],
        text=text,
    )


_Record = TypeVar("_Record")


def verify(
    text: str,
    *,
    kind: CredentialKind,
    environment: Environment,
    pepper: bytes,
    lookup: Callable[[str], _Record | None],
    stored_hash: Callable[[_Record], bytes],
) -> _Record:
    """Parse ``text``, fetch the one record its key id names, and compare keyed hashes.

    Refusals before the lookup: ``MalformedCredential``, ``WrongEnvironment``. After it: an unknown
    key id and a wrong tail both raise ``CredentialRejected`` with the same message, after the same
    work. State (disabled, revoked, expired...) is judged separately by the caller.
    """
    parsed = parse(text, kind, environment)
    record = lookup(parsed.key_id)
    matched = hash_matches(pepper, parsed.text, None if record is None else stored_hash(record))
    if record is None or not matched:
        raise CredentialRejected(f"The {kind.noun} is not valid")
    return record


def _check_site_id(kind: CredentialKind, site_id: int, error: type[Exception]) -> None:
    if kind is CredentialKind.ADMIN:
        ok = site_id == ADMIN_SITE_ID
    else:
        ok = MIN_CLIENT_SITE_ID <= site_id <= MAX_SITE_ID
    if isinstance(site_id, bool) or not ok:
        raise error(f"site id {site_id} cannot hold an {kind.noun}")
