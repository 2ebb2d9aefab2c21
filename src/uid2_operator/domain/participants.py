"""Participants (UID2 "sites"): who holds credentials, and which roles they may grant."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final

from uid2_operator.domain.credential_text import holds_credential_text
from uid2_operator.domain.roles import ClientRole
from uid2_operator.errors import AlreadyExists, InvalidInput, InvalidTransition


class ParticipantType(StrEnum):
    PUBLISHER = "publisher"
    ADVERTISER = "advertiser"
    DSP = "dsp"
    DATA_PROVIDER = "data_provider"


@dataclass(frozen=True, slots=True)
class Participant:
    site_id: int
    name: str
    type: ParticipantType
    allowed_roles: frozenset[ClientRole]
    enabled: bool
    contacts: tuple[str, ...]
    created_at_ms: int
    updated_at_ms: int


# Site ids 0-2 are reserved by the protocol (and -1/-2 name keysets); ids travel as signed 32-bit
# integers in tokens.
MIN_SITE_ID = 3
MAX_SITE_ID = 2**31 - 1
MAX_NAME_LENGTH = 200
MAX_CONTACTS = 20
MAX_CONTACT_LENGTH = 254
# Deliberately loose: one '@', no whitespace, a dot in the domain. Delivery proves the rest.
_CONTACT = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
# Unpaired surrogates (Unicode category Cs): what Python makes of invalid UTF-8 bytes in a command
# line, and what JSON "\ud800" escapes decode to. No database encoding can store them.
_SURROGATE = re.compile("[\ud800-\udfff]")


def refuse_surrogates(value: str, what: str) -> str:
    """``value`` unchanged, or InvalidInput naming ``what`` (never the value) if it holds
    surrogate code points, which are not text any database can store."""
    if _SURROGATE.search(value) is not None:
        raise InvalidInput(f"{what} must be valid UTF-8 text (it holds surrogate code points)")
    return value


def refuse_credential_text(value: str, what: str) -> str:
    """``value`` unchanged, or InvalidInput naming ``what`` (never echoing the value) if it holds
    credential text: a full API key or admin token, a key's tail alone, or a client secret in any
    base64 form (see ``credential_text``). Free text (names, reasons, contacts) is stored and shown
    in plaintext, so a credential pasted there by mistake must not be kept."""
    if holds_credential_text(value):
        raise InvalidInput(
            f"{what} looks like a credential; never paste one here (API keys, admin tokens and "
            "client secrets are refused, and so is any run of 33 or more letters and digits "
            "that mixes upper and lower case: if this is no credential, write such a word in "
            "one case, or break it with a space or another character the field takes)"
        )
    return value


def validate_site_id(site_id: int) -> int:
    if isinstance(site_id, bool) or not MIN_SITE_ID <= site_id <= MAX_SITE_ID:
        raise InvalidInput(f"site_id must be between {MIN_SITE_ID} and {MAX_SITE_ID}")
    return site_id


def refuse_control_characters(value: str, what: str) -> str:
    """``value`` unchanged, or InvalidInput naming ``what`` if it holds a control character
    (category Cc: tabs and line breaks too). Checked before any trimming, so that text with a
    control character is refused whatever way it came in, not trimmed clean by one way and
    refused by another; stored text reaches logs, audit rows and terminals as it is."""
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise InvalidInput(f"{what} must not contain control characters")
    return value


def validate_name(name: str, what: str = "name") -> str:
    """Trimmed, 1..200 characters, no control characters (names end up in logs and audit rows),
    no surrogate code points, no credential text (see ``refuse_credential_text``)."""
    checked = refuse_credential_text(refuse_surrogates(name, what), what)
    cleaned = refuse_control_characters(checked, what).strip()
    if not 1 <= len(cleaned) <= MAX_NAME_LENGTH:
        raise InvalidInput(f"{what} must be 1 to {MAX_NAME_LENGTH} characters")
    return refuse_deceptive_text(cleaned, what)


BIDI_CONTROL_RANGES: Final = ((0x202A, 0x202E), (0x2066, 0x2069))
"""The embedding, override and isolate controls: they reorder how the text around them is shown,
so a name listed in a terminal or a page could read as something else. Refused anywhere."""
INVISIBLE_RANGES: Final = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x2060, 0x2065),
    (0x206A, 0x206F),
    (0x2800, 0x2800),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFFB),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)
"""Characters that show nothing: Unicode's default-ignorable code points (soft hyphen,
combining grapheme joiner, Arabic letter mark, Hangul fillers, Khmer inherent vowels, Mongolian
variation selectors and vowel separator, zero-width spaces and joiners, marks of direction,
word joiner, invisible operators and deprecated format controls, variation selectors, byte
order mark, tag characters, shorthand and musical format controls) less the bidirectional
controls, refused on their own (``BIDI_CONTROL_RANGES``), plus the Braille blank, the
interlinear annotation controls and the Egyptian hieroglyph format controls. Every other
format character (category Cf) is a sign shown in front of digits. Allowed beside visible text
(Persian names need the zero-width non-joiner, emoji their variation selectors), but a name of
only these and spaces shows nothing."""
INVISIBLE_BASIC_PLANE_RANGES: Final = tuple(r for r in INVISIBLE_RANGES if r[1] <= 0xFFFF)
"""Of ``INVISIBLE_RANGES``, those a ``\\uXXXX`` escape can name: what a pattern written for
both Python and ECMA-262 can hold (the others are refused by ``refuse_deceptive_text``)."""


def _characters(ranges: tuple[tuple[int, int], ...]) -> frozenset[str]:
    return frozenset(chr(c) for low, high in ranges for c in range(low, high + 1))


_BIDI_CONTROLS = _characters(BIDI_CONTROL_RANGES)
_INVISIBLE = _characters(INVISIBLE_RANGES)
_BLANK = frozenset("\u115f\u1160\u2800\u3164\uffa0")
"""Of ``INVISIBLE_RANGES``, those shown as a blank the width of a letter (Hangul fillers,
Braille blank), not as nothing."""


def refuse_bidi_controls(value: str, what: str) -> str:
    """``value`` unchanged, or InvalidInput naming ``what`` if it holds a bidirectional
    embedding, override or isolate control."""
    if any(ch in _BIDI_CONTROLS for ch in value):
        raise InvalidInput(
            f"{what} must not contain bidirectional formatting characters (U+202A-U+202E, "
            "U+2066-U+2069): they change how the text around them is displayed"
        )
    return value


def refuse_invisible_characters(value: str, what: str) -> str:
    """``value`` unchanged, or InvalidInput naming ``what`` if it holds a character that shows
    nothing or only a blank (``INVISIBLE_RANGES``) anywhere: for identifiers (app ids), which
    need none, and where one would make two different values look alike."""
    if any(ch in _INVISIBLE for ch in value):
        raise InvalidInput(
            f"{what} must not contain invisible characters (zero-width spaces and joiners, soft "
            "hyphens, variation selectors, tag characters, fillers): it would look like another"
        )
    return value


def refuse_deceptive_text(value: str, what: str) -> str:
    """``value`` unchanged, or InvalidInput naming ``what`` if it holds a bidirectional
    embedding, override or isolate control, or, not empty, shows nothing (only white space and
    ``INVISIBLE_RANGES`` characters)."""
    refuse_bidi_controls(value, what)
    if value and all(ch.isspace() or ch in _INVISIBLE for ch in value):
        raise InvalidInput(f"{what} must contain at least one visible character")
    return value


def name_key(name: str) -> str:
    """What two participants' names are compared by: characters that show nothing left out
    and those that show as a blank taken as a space (``INVISIBLE_RANGES``), NFKC compatibility
    forms, case folded (and normalised again, as folding can undo NFKC's composition), white
    space runs as one space. ``Acme Inc``, ``ACME  Inc``, ``Acme Inc`` with a zero-width space
    after it and the same in full-width letters are one name: listed side by side, an
    administrator could not tell which participant is which."""
    shown = "".join(" " if ch in _BLANK else "" if ch in _INVISIBLE else ch for ch in name)
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", shown).casefold())
    return " ".join(folded.split())


def refuse_taken_name(name: str, participants: Iterable[Participant]) -> None:
    """AlreadyExists naming the participant whose name compares equal to ``name``
    (``name_key``), if there is one. A retried create is refused instead of making a second
    participant."""
    key = name_key(name)
    for other in participants:
        if name_key(other.name) == key:
            raise AlreadyExists(f"Participant {other.site_id} already has this name")


def validate_contacts(contacts: Iterable[str]) -> tuple[str, ...]:
    """Trimmed e-mail-like addresses, duplicates (ignoring case) dropped, order kept; credential
    text is refused before the address check, with its own message, and so are control
    characters and bidirectional controls, which the address pattern would let through."""
    cleaned: list[str] = []
    seen: set[str] = set()
    for raw in contacts:
        checked = refuse_credential_text(refuse_surrogates(raw, "contacts"), "contacts")
        contact = refuse_control_characters(checked, "contacts").strip()
        refuse_bidi_controls(contact, "contacts")
        if len(contact) > MAX_CONTACT_LENGTH or not _CONTACT.fullmatch(contact):
            raise InvalidInput("contacts must be e-mail addresses")
        if contact.casefold() not in seen:
            seen.add(contact.casefold())
            cleaned.append(contact)
    if len(cleaned) > MAX_CONTACTS:
        raise InvalidInput(f"at most {MAX_CONTACTS} contacts")
    return tuple(cleaned)


def new_participant(
    *,
    site_id: int,
    name: str,
    type: ParticipantType,
    allowed_roles: Iterable[ClientRole],
    contacts: Iterable[str],
    now_ms: int,
    enabled: bool = True,
) -> Participant:
    return Participant(
        site_id=validate_site_id(site_id),
        name=validate_name(name),
        type=type,
        allowed_roles=frozenset(allowed_roles),
        enabled=enabled,
        contacts=validate_contacts(contacts),
        created_at_ms=now_ms,
        updated_at_ms=now_ms,
    )


def update_participant(
    participant: Participant,
    *,
    now_ms: int,
    name: str | None = None,
    type: ParticipantType | None = None,
    allowed_roles: Iterable[ClientRole] | None = None,
    contacts: Iterable[str] | None = None,
) -> Participant:
    """Change the given fields. Narrowing ``allowed_roles`` takes effect on existing keys at once:
    a key's effective roles are always intersected with its participant's (see credentials)."""
    return replace(
        participant,
        name=participant.name if name is None else validate_name(name),
        type=participant.type if type is None else type,
        allowed_roles=(
            participant.allowed_roles if allowed_roles is None else frozenset(allowed_roles)
        ),
        contacts=participant.contacts if contacts is None else validate_contacts(contacts),
        updated_at_ms=now_ms,
    )


def set_participant_enabled(participant: Participant, enabled: bool, now_ms: int) -> Participant:
    """Enable or disable a participant. Disabling stops every key of the participant at once."""
    if participant.enabled == enabled:
        state = "enabled" if enabled else "disabled"
        raise InvalidTransition(f"participant {participant.site_id} is already {state}")
    return replace(participant, enabled=enabled, updated_at_ms=now_ms)
