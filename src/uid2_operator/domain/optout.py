"""Opt-outs: records by first-level hash, the built-in test identities, the FLH rules (§7).

A person who opted out is recorded by the first-level hash of their identity (what every token
and map request derives first), with the time of the opt-out and, when it is known, the raw UID
they had then (``advertising_id``, standard base64, for ``/v2/optout/status``). Nothing here
holds an e-mail address or phone number: the input is hashed before a record is made.

Decisions, in order (operator-api §7.2-§7.3):

1. the all-0xFF FLH and the "never opted out" test identities are never opted out;
2. a recorded FLH, the all-zero FLH and the "always opted out" test identities are opted out;
3. at refresh only, the "refresh opt-out" test identities are opted out too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from uid2_operator.errors import InvalidInput
from uid2_operator.wire.identity import InputKind, hash_identity, normalize_email
from uid2_operator.wire.raw_uid import first_level_hash
from uid2_operator.wire.scope import IdentityType

FLH_SIZE: Final = 32
ALWAYS_OPTED_OUT_FLH: Final = bytes(FLH_SIZE)
NEVER_OPTED_OUT_FLH: Final = b"\xff" * FLH_SIZE
MAX_ADVERTISING_ID_LENGTH: Final = 64

ALWAYS_OPTED_OUT_EMAIL: Final = "optout@example.com"
ALWAYS_OPTED_OUT_PHONE: Final = "+00000000000"
REFRESH_OPTED_OUT_EMAIL: Final = "refresh-optout@example.com"
REFRESH_OPTED_OUT_PHONE: Final = "+00000000002"
NEVER_OPTED_OUT_EMAIL: Final = "validate@example.com"
NEVER_OPTED_OUT_PHONE: Final = "+12345678901"


@dataclass(frozen=True, slots=True)
class OptOutRecord:
    """One opt-out: the first-level hash, when (epoch ms), and the raw UID then, if known."""

    first_level_hash: bytes = field(repr=False)
    timestamp_ms: int
    advertising_id: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.first_level_hash) != FLH_SIZE:
            raise InvalidInput(f"A first-level hash is {FLH_SIZE} bytes")
        if self.timestamp_ms < 0:
            raise InvalidInput("An opt-out time cannot be before 1970")
        if self.advertising_id is not None and not (
            0 < len(self.advertising_id) <= MAX_ADVERTISING_ID_LENGTH
            and self.advertising_id.isascii()
        ):
            raise InvalidInput("An advertising id is base64 text of a raw UID")


def latest(existing: OptOutRecord | None, new: OptOutRecord) -> OptOutRecord:
    """What a store keeps when an FLH opts out again: the later time (§7.2: lookups answer the
    latest), and the newest known raw UID."""
    if existing is None:
        return new
    if new.timestamp_ms >= existing.timestamp_ms:
        ad_id = new.advertising_id or existing.advertising_id
        return OptOutRecord(new.first_level_hash, new.timestamp_ms, ad_id)
    return OptOutRecord(
        existing.first_level_hash,
        existing.timestamp_ms,
        existing.advertising_id or new.advertising_id,
    )


def identity_first_level_hash(kind: InputKind, value: object, first_level_salt: str) -> bytes:
    """The FLH of one identity input (email, phone, or their hashes), validated as requests are.

    Raises ``InvalidIdentifier`` (a WireError) for input a request would refuse.
    """
    return first_level_hash(kind.digest(value), first_level_salt)


# -------------------------------------------------------------------- built-in identities

BuiltInIdentity = tuple[IdentityType, bytes]


@dataclass(frozen=True, slots=True)
class BuiltInIdentities:
    """The built-in test identities of §7.3 as (type, FLH) pairs, for one first-level salt."""

    always: frozenset[BuiltInIdentity] = field(repr=False)
    at_refresh: frozenset[BuiltInIdentity] = field(repr=False)
    never: frozenset[BuiltInIdentity] = field(repr=False)


def _identity(kind: IdentityType, text: str, first_level_salt: str) -> BuiltInIdentity:
    normalised = normalize_email(text) if kind is IdentityType.EMAIL else text
    return kind, first_level_hash(hash_identity(normalised), first_level_salt)


def builtin_identities(first_level_salt: str) -> BuiltInIdentities:
    email, phone = IdentityType.EMAIL, IdentityType.PHONE

    def pair(email_text: str, phone_text: str) -> frozenset[BuiltInIdentity]:
        return frozenset(
            {
                _identity(email, email_text, first_level_salt),
                _identity(phone, phone_text, first_level_salt),
            }
        )

    return BuiltInIdentities(
        always=pair(ALWAYS_OPTED_OUT_EMAIL, ALWAYS_OPTED_OUT_PHONE),
        at_refresh=pair(REFRESH_OPTED_OUT_EMAIL, REFRESH_OPTED_OUT_PHONE),
        never=pair(NEVER_OPTED_OUT_EMAIL, NEVER_OPTED_OUT_PHONE),
    )


def is_opted_out(
    kind: IdentityType,
    flh: bytes,
    records: Mapping[bytes, int],
    builtins: BuiltInIdentities,
    *,
    at_refresh: bool = False,
) -> bool:
    """The decision of token generate and identity map (and, with ``at_refresh``, of refresh).

    ``records`` maps a first-level hash to its opt-out time (any value counts: §7.1, the time is
    no longer compared with the token's).
    """
    identity = (kind, flh)
    if flh == NEVER_OPTED_OUT_FLH or identity in builtins.never:
        return False
    if flh in records or flh == ALWAYS_OPTED_OUT_FLH or identity in builtins.always:
        return True
    return at_refresh and identity in builtins.at_refresh
