"""Identity input: email normalisation, phone validation, hashing and pre-hashed input (§3).

Every identity-taking endpoint receives one of four kinds of input (``email``, ``email_hash``,
``phone``, ``phone_hash``) and reduces it to an *identity hash* ``H`` plus an identity type. Two
operators must derive the same ``H`` from the same input or the same person gets two different
UID2s, so the rules below reproduce the reference operator character for character, including
where it differs from the SDKs (spaces anywhere in the local part of an email are dropped).
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from uid2_operator.errors import InvalidIdentifier, MissingIdentity
from uid2_operator.wire.encoding import Base64Error, b64decode
from uid2_operator.wire.scope import IdentityType

GMAIL_DOMAIN = "gmail.com"
HASH_BASE64_LENGTH = 44
HASH_HEX_LENGTH = 64

MISSING_IDENTITY_WITH_PHONE = MissingIdentity.message
MISSING_IDENTITY_EMAIL_ONLY = (
    "Required Parameter Missing: exactly one of email or email_hash must be specified"
)

_PHONE = re.compile(r"\+[0-9]{10,15}")
_HEX_HASH = re.compile(r"[0-9A-Fa-f]{64}")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def java_utf8(text: str) -> bytes:
    """UTF-8 bytes of ``text`` exactly as the JVM's ``String.getBytes(UTF_8)`` produces them.

    JSON may carry unpaired UTF-16 surrogates (``"\\ud800"``). The reference operator hashes such
    strings after replacing each unpaired surrogate with ``?``; Python's strict encoder would
    raise instead, and hashing anything else would make the same input map to a different UID2.
    Surrogate pairs that arrive as two separate code points are joined first, as UTF-16 would.
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
        return joined.encode("utf-8", "replace")


def normalize_email(text: str) -> str:
    """The reference operator's email normalisation (§3.1); invalid input raises.

    * Only ASCII ``A``-``Z`` are lowercased; no other case folding.
    * In the local part (before the first ``@``) every ASCII space is dropped, wherever it is.
    * A second ``@`` is invalid; trailing ASCII spaces of the domain are dropped, inner and
      leading ones kept.
    * For exactly ``gmail.com`` the local part loses its dots and everything from the first ``+``;
      every other domain (``googlemail.com`` included) keeps the local part as written.
    * An empty domain or an empty resulting local part is invalid.
    """
    # For ASCII text ``str.lower`` folds exactly A-Z, many times faster than the table.
    lowered = text.lower() if text.isascii() else text.translate(_ASCII_LOWER)
    local, at, domain = lowered.partition("@")
    if "@" in domain:
        raise InvalidIdentifier
    domain = domain.rstrip(" ")
    if not at or not domain:
        raise InvalidIdentifier
    local = local.replace(" ", "")
    if domain == GMAIL_DOMAIN:
        local = local.partition("+")[0].replace(".", "")
    if not local:
        raise InvalidIdentifier
    return f"{local}@{domain}"


def validate_phone(text: str) -> str:
    """Return ``text`` unchanged if it is ``+`` followed by 10 to 15 ASCII digits (§3.2).

    Phone numbers are never normalised: callers must send E.164 themselves, and anything else is
    rejected rather than guessed at.
    """
    if _PHONE.fullmatch(text) is None:
        raise InvalidIdentifier
    return text


def hash_identity(normalised: str) -> bytes:
    """``SHA256(utf8(normalised))``: the identity hash of a normalised email or phone."""
    return hashlib.sha256(java_utf8(normalised)).digest()


def parse_identity_hash(text: str) -> bytes:
    """A client-supplied identity hash (§3.3): 44 characters of base64 or 64 hex digits.

    The 44-character form is taken as whatever it decodes to, so an unpadded 44-character string
    yields 33 bytes and a ``==``-padded one 31; the reference operator accepts both and they only
    ever select a salt bucket, so they are accepted here too.
    """
    if len(text) == HASH_BASE64_LENGTH:
        try:
            return b64decode(text)
        except Base64Error as exc:
            raise InvalidIdentifier from exc
    if _HEX_HASH.fullmatch(text) is not None:
        return bytes.fromhex(text)
    raise InvalidIdentifier


@dataclass(frozen=True, slots=True)
class HashedIdentity:
    """The identity hash ``H`` and the type it was derived from; the digest stays out of logs."""

    kind: IdentityType
    digest: bytes = field(repr=False)


class InputKind(Enum):
    """The four identity inputs; the value is the JSON field that carries it."""

    EMAIL = "email"
    EMAIL_HASH = "email_hash"
    PHONE = "phone"
    PHONE_HASH = "phone_hash"

    @property
    def identity_type(self) -> IdentityType:
        if self in (InputKind.PHONE, InputKind.PHONE_HASH):
            return IdentityType.PHONE
        return IdentityType.EMAIL

    @property
    def is_hashed(self) -> bool:
        return self in (InputKind.EMAIL_HASH, InputKind.PHONE_HASH)

    def digest(self, value: object) -> bytes:
        """The identity hash of one input of this kind; any non-string value is invalid."""
        if not isinstance(value, str):
            raise InvalidIdentifier
        if self is InputKind.EMAIL:
            return hash_identity(normalize_email(value))
        if self is InputKind.PHONE:
            return hash_identity(validate_phone(value))
        return parse_identity_hash(value)

    def hashed(self, value: object) -> HashedIdentity:
        return HashedIdentity(self.identity_type, self.digest(value))


EMAIL_KINDS = (InputKind.EMAIL, InputKind.EMAIL_HASH)
ALL_KINDS = tuple(InputKind)
# The JSON field of each kind, read once: ``Enum.value`` is a descriptor lookup on every access.
_EMAIL_FIELDS = tuple((kind.value, kind) for kind in EMAIL_KINDS)
_FIELDS_WITH_PHONE = tuple((kind.value, kind) for kind in ALL_KINDS)
_IDENTITY_TYPES = {kind: kind.identity_type for kind in ALL_KINDS}


def input_kinds(*, phone_support: bool) -> tuple[InputKind, ...]:
    """The kinds a request may use; without phone support the phone fields are not even read."""
    return ALL_KINDS if phone_support else EMAIL_KINDS


def scalar_text(value: object) -> str | None:
    """A JSON scalar read as text, as the reference operator reads every identity field: a
    string as it is, ``true``/``false``, a number's digits; None for ``null``, arrays and
    objects. A number or boolean is then valid only where its text is (a hash of 64 digits)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return None


def identity_text(value: object) -> str:
    """A given identity field's value as text (``scalar_text``); an array or object is an
    ``InvalidIdentifier``."""
    text = scalar_text(value)
    if text is None:
        raise InvalidIdentifier
    return text


def identity_from_request(payload: Mapping[str, object], *, phone_support: bool) -> HashedIdentity:
    """The single identity of a token generate/validate request (§3.4).

    Presence is decided before validity, as the reference operator does: a field counts as given
    when it is present and not ``null``, whatever its type, so two given fields are a
    ``MissingIdentity`` even when one of them would have been invalid. The given value is read
    as text (``identity_text``), as the identity maps read theirs; an array or object is invalid.
    """
    given = [
        (kind, value)
        for field_name, kind in (_FIELDS_WITH_PHONE if phone_support else _EMAIL_FIELDS)
        if (value := payload.get(field_name)) is not None
    ]
    if len(given) != 1:
        message = MISSING_IDENTITY_WITH_PHONE if phone_support else MISSING_IDENTITY_EMAIL_ONLY
        raise MissingIdentity(message)
    kind, value = given[0]
    return HashedIdentity(_IDENTITY_TYPES[kind], kind.digest(identity_text(value)))
