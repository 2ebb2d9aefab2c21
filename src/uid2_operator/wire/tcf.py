"""EUID user consent: the IAB TCF v2 "TC string" and the consent rule of token generate.

An EUID ``/v2/token/generate`` request may carry ``tcf_consent_string`` (operator-api §6.1), the
Transparency and Consent string a consent management platform (CMP) produced for the end user.
When it does, tokens are issued only when it grants the operator's vendor (``DEFAULT_VENDOR_ID``,
21, unless configured otherwise) every purpose in ``EUID_REQUIRED_PURPOSES``
(``TCString.grants_euid``); no special feature is required (precise geolocation, special feature
1, no longer is upstream either). A request without the key gets no consent check. The UID2
scope never reads it.

The format is public (IAB Tech Lab, "Consent string and vendor list formats v2"). A TC string is
one or more segments of URL-safe base64 without padding, joined by ``.``; the first is the core
segment, a big-endian bit string::

    version 6 (= 2) | created 36 | last updated 36 | CMP id 12 | CMP version 12 |
    consent screen 6 | consent language 12 | vendor list version 12 | policy version 6 |
    is service specific 1 | use non-standard texts 1 | special feature opt-ins 12 |
    purposes consent 24 | purposes LI transparency 24 | purpose one treatment 1 |
    publisher country code 12 | vendor consent section | vendor legitimate interest section |
    publisher restrictions ...

Each vendor section is ``max vendor id 16 | is range encoding 1`` and then either a bit field of
``max vendor id`` bits (bit *n*, counting from 1, is vendor *n*) or ``entries 12`` entries of
``is a range 1 | start 16 [| end 16]``. Purpose and special-feature fields likewise: bit *n* is
purpose (feature) *n*.

What is decoded is what the consent decision and a diagnostic need: the header, the purposes and
both vendor sections. The publisher restrictions and the other segments (disclosed vendors,
publisher purposes) are not interpreted, as no decision here reads them, but every segment must
still be non-empty URL-safe base64. That keeps the work bounded by the two vendor sections, which
the format itself bounds (a bit field of at most 65 535 bits, at most 4 095 range entries), and
never by a count an attacker chooses in a section nobody needs. The text is refused outright above
``MAX_TC_STRING_LENGTH`` characters, far beyond what the two largest vendor sections need.

Ranges are kept as ranges (merged, ascending), never expanded into sets: one entry
``1..65535`` is two integers, not 65 535 members. A bit field is kept as the integer it encodes.

Every text either parses into a ``TCString`` or raises ``InvalidConsentString``, whose ``detail``
names the field and bit position that failed (property-tested over arbitrary text and bytes);
the client only ever sees the protocol's fixed message.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from uid2_operator.errors import InvalidConsentString
from uid2_operator.wire.encoding import Base64Error, b64url_decode

TCF_VERSION: Final = 2
DEFAULT_VENDOR_ID: Final = 21
"""The vendor id the EUID operator checks consent for, unless configured otherwise."""
EUID_REQUIRED_PURPOSES: Final = frozenset({1, 2, 3, 4, 7, 10})
"""Purposes the vendor must hold, by consent or legitimate interest, for a token to be issued:
store/access information on a device (1), basic ads (2), create and use a personalised ads
profile (3, 4), measure ad performance (7), develop and improve products (10)."""
MAX_TC_STRING_LENGTH: Final = 64 * 1024
"""Characters. Two full 65 535-bit vendor bit fields are about 22 000 characters of base64."""
MAX_VENDOR_ID: Final = (1 << 16) - 1
"""The largest vendor id the format can carry (16 bits)."""
SEGMENT_SEPARATOR: Final = "."

_PURPOSE_BITS: Final = 24
_SPECIAL_FEATURE_BITS: Final = 12
_RANGE_ENCODING: Final = 1
_HEADER_FIELDS: Final = (
    ("created", 36),
    ("last updated", 36),
    ("CMP id", 12),
    ("CMP version", 12),
    ("consent screen", 6),
    ("consent language", 12),
    ("vendor list version", 12),
    ("policy version", 6),
    ("is service specific", 1),
    ("use non-standard texts", 1),
    ("special feature opt-ins", _SPECIAL_FEATURE_BITS),
    ("purposes consent", _PURPOSE_BITS),
    ("purposes LI transparency", _PURPOSE_BITS),
    ("purpose one treatment", 1),
    ("publisher country code", 12),
)
"""The core segment's fields after the version, up to the vendor sections, in order."""
_HEADER_WIDTH: Final = sum(width for _, width in _HEADER_FIELDS)


@dataclass(frozen=True, slots=True)
class VendorSet:
    """One vendor section: which vendor ids (1 to ``max_vendor_id``) it names.

    ``range_encoded`` says how the string encoded it. A bit field is kept in ``bitfield``, the
    section's bits read as one big-endian integer (vendor *n* is bit ``max_vendor_id - n``); a
    range section in ``starts`` / ``ends``, its inclusive ranges merged into disjoint ascending
    runs, so that membership is one binary search whatever the string's order or overlaps.
    """

    max_vendor_id: int
    range_encoded: bool
    bitfield: int = 0
    starts: tuple[int, ...] = ()
    ends: tuple[int, ...] = ()

    def __contains__(self, vendor_id: int) -> bool:
        if not 1 <= vendor_id <= self.max_vendor_id:
            return False
        if not self.range_encoded:
            return bool((self.bitfield >> (self.max_vendor_id - vendor_id)) & 1)
        at = bisect_right(self.starts, vendor_id) - 1
        return at >= 0 and vendor_id <= self.ends[at]


@dataclass(frozen=True, slots=True)
class TCString:
    """The decoded core segment of a TCF v2 TC string (see the module docstring for the layout).

    Times are the string's deciseconds since the epoch, as encoded. Purposes and special features
    are the numbers (from 1) whose bits are set.
    """

    version: int
    created_ds: int
    last_updated_ds: int
    cmp_id: int
    cmp_version: int
    consent_screen: int
    vendor_list_version: int
    policy_version: int
    is_service_specific: bool
    use_non_standard_texts: bool
    special_feature_opt_ins: frozenset[int]
    purposes_consent: frozenset[int]
    purposes_li_transparency: frozenset[int]
    purpose_one_treatment: bool
    vendor_consents: VendorSet
    vendor_legitimate_interests: VendorSet

    def has_consent(self, vendor_id: int, purposes: Iterable[int]) -> bool:
        """Whether ``vendor_id`` may pursue every one of ``purposes``.

        A purpose counts when the user consented to it and to the vendor, or when the user was
        told of it as a legitimate interest (LI transparency) and the vendor is in the LI section:
        the union of the two must hold all of ``purposes``. Special features are not consulted.
        """
        granted: frozenset[int] = frozenset()
        if vendor_id in self.vendor_consents:
            granted = self.purposes_consent
        if vendor_id in self.vendor_legitimate_interests:
            granted = granted | self.purposes_li_transparency
        return granted.issuperset(purposes)

    def grants_euid(self, vendor_id: int) -> bool:
        """Whether an EUID token may be issued for ``vendor_id``: every purpose in
        ``EUID_REQUIRED_PURPOSES`` (``has_consent``), whatever the special-feature opt-ins."""
        return self.has_consent(vendor_id, EUID_REQUIRED_PURPOSES)


class _Bits:
    """A cursor over a big-endian bit string; reading past its end is ``InvalidConsentString``."""

    __slots__ = ("_data", "_position", "_size")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._position = 0
        self._size = len(data) * 8

    def read(self, width: int, field: str) -> int:
        """The next ``width`` bits as an unsigned integer (only the bytes they span are read)."""
        start = self._position
        end = start + width
        if end > self._size:
            raise InvalidConsentString(
                f"truncated: {field} needs bits {start} to {end} but the core segment has "
                f"{self._size}"
            )
        first, last = start >> 3, (end + 7) >> 3
        chunk = int.from_bytes(self._data[first:last], "big")
        self._position = end
        return (chunk >> ((last << 3) - end)) & ((1 << width) - 1)

    def flag(self, field: str) -> bool:
        return self.read(1, field) == 1

    def read_fields(self, fields: tuple[tuple[str, int], ...], width: int) -> list[int]:
        """The next fields, ``(name, width)`` each and ``width`` bits together, read as one
        integer when all of them are there; else field by field, so that the error names the
        field the string cut."""
        if self._position + width > self._size:
            return [self.read(w, name) for name, w in fields]
        together = self.read(width, "")
        values: list[int] = []
        for _, w in fields:
            width -= w
            values.append((together >> width) & ((1 << w) - 1))
        return values


def _numbered(bits: int, width: int) -> frozenset[int]:
    """The numbers (from 1, most significant bit first) of the bits set in a ``width``-bit field;
    only the set bits are visited."""
    numbers: list[int] = []
    while bits:
        lowest = bits & -bits
        numbers.append(width - lowest.bit_length() + 1)
        bits ^= lowest
    return frozenset(numbers)


def _vendor_set(bits: _Bits, section: str) -> VendorSet:
    max_vendor_id = bits.read(16, f"{section} max vendor id")
    if bits.read(1, f"{section} encoding type") != _RANGE_ENCODING:
        return VendorSet(max_vendor_id, False, bits.read(max_vendor_id, f"{section} bit field"))
    entries = bits.read(12, f"{section} number of entries")
    runs: list[tuple[int, int]] = []
    for index in range(entries):
        where = f"{section} entry {index}"
        is_range = bits.flag(f"{where} range flag")
        start = bits.read(16, f"{where} vendor id")
        end = bits.read(16, f"{where} end vendor id") if is_range else start
        if start == 0:
            raise InvalidConsentString(f"{where}: vendor id 0 (vendor ids start at 1)")
        if end < start:
            raise InvalidConsentString(f"{where}: range ends at {end}, before its start {start}")
        if end > max_vendor_id:
            raise InvalidConsentString(
                f"{where}: vendor id {end} beyond the section's max vendor id {max_vendor_id}"
            )
        runs.append((start, end))
    runs.sort()
    starts: list[int] = []
    ends: list[int] = []
    for start, end in runs:
        if ends and start <= ends[-1] + 1:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return VendorSet(max_vendor_id, True, 0, tuple(starts), tuple(ends))


def _segments(text: str) -> bytes:
    """The core segment's bytes, after checking that every segment is URL-safe base64."""
    if not text:
        raise InvalidConsentString("empty TC string")
    if len(text) > MAX_TC_STRING_LENGTH:
        raise InvalidConsentString(
            f"TC string of {len(text)} characters (at most {MAX_TC_STRING_LENGTH})"
        )
    decoded: list[bytes] = []
    for index, segment in enumerate(text.split(SEGMENT_SEPARATOR)):
        if not segment:
            raise InvalidConsentString(f"segment {index} is empty")
        try:
            decoded.append(b64url_decode(segment))
        except Base64Error as exc:
            raise InvalidConsentString(f"segment {index} is not URL-safe base64: {exc}") from None
    return decoded[0]


def parse_tc_string(text: str) -> TCString:
    """Decode a TC string's core segment; anything malformed raises ``InvalidConsentString``."""
    bits = _Bits(_segments(text))
    version = bits.read(6, "version")
    if version != TCF_VERSION:
        raise InvalidConsentString(f"version {version} (only TCF version {TCF_VERSION} is read)")
    (
        created,
        last_updated,
        cmp_id,
        cmp_version,
        consent_screen,
        _consent_language,
        vendor_list_version,
        policy_version,
        is_service_specific,
        use_non_standard_texts,
        special_features,
        purposes_consent,
        purposes_li,
        purpose_one_treatment,
        _publisher_country_code,
    ) = bits.read_fields(_HEADER_FIELDS, _HEADER_WIDTH)
    vendor_consents = _vendor_set(bits, "vendor consent")
    vendor_legitimate_interests = _vendor_set(bits, "vendor legitimate interest")
    return TCString(
        version=version,
        created_ds=created,
        last_updated_ds=last_updated,
        cmp_id=cmp_id,
        cmp_version=cmp_version,
        consent_screen=consent_screen,
        vendor_list_version=vendor_list_version,
        policy_version=policy_version,
        is_service_specific=is_service_specific == 1,
        use_non_standard_texts=use_non_standard_texts == 1,
        special_feature_opt_ins=_numbered(special_features, _SPECIAL_FEATURE_BITS),
        purposes_consent=_numbered(purposes_consent, _PURPOSE_BITS),
        purposes_li_transparency=_numbered(purposes_li, _PURPOSE_BITS),
        purpose_one_treatment=purpose_one_treatment == 1,
        vendor_consents=vendor_consents,
        vendor_legitimate_interests=vendor_legitimate_interests,
    )
