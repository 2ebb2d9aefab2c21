"""A TCF v2 TC string encoder for tests only: the operator reads TC strings and never writes them.

``encode`` lays out the core segment field by field from the published format (see the docstring
of ``uid2_operator.wire.tcf``), independently of the parser, so that the parser can be checked
against strings built from plain sets. ``Vendors`` describes one vendor section; ``entries``
forces the exact range entries (overlapping, unsorted or malformed ones included).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

CREATED_DS = 16_618_150_742
HEADER_BITS = 213
"""Bits before the vendor consent section."""


@dataclass(frozen=True)
class Vendors:
    ids: frozenset[int] = frozenset()
    max_vendor_id: int | None = None
    """Default: the largest id (0 when there is none)."""
    ranges: bool = False
    entries: tuple[tuple[int, int], ...] | None = None
    """Range encoding only: the ``(start, end)`` entries to write as they are (single ids have
    ``start == end`` and are written without an end)."""

    @property
    def max_id(self) -> int:
        if self.max_vendor_id is not None:
            return self.max_vendor_id
        return max(self.ids, default=0)


class BitWriter:
    def __init__(self) -> None:
        self.bits: list[str] = []

    def put(self, value: int, width: int) -> None:
        assert 0 <= value < (1 << width) or width == 0 == value, (value, width)
        if width:
            self.bits.append(format(value, f"0{width}b"))

    def flags(self, numbers: Iterable[int], width: int) -> None:
        chosen = set(numbers)
        self.bits.append("".join("1" if n in chosen else "0" for n in range(1, width + 1)))

    def text(self) -> str:
        return "".join(self.bits)


def runs(ids: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Consecutive ids as inclusive runs, ascending."""
    out: list[list[int]] = []
    for vendor in sorted(set(ids)):
        if out and out[-1][1] == vendor - 1:
            out[-1][1] = vendor
        else:
            out.append([vendor, vendor])
    return tuple((start, end) for start, end in out)


def _vendor_section(out: BitWriter, vendors: Vendors) -> None:
    out.put(vendors.max_id, 16)
    out.put(1 if vendors.ranges else 0, 1)
    if not vendors.ranges:
        out.flags(vendors.ids, vendors.max_id)
        return
    entries = vendors.entries if vendors.entries is not None else runs(vendors.ids)
    out.put(len(entries), 12)
    for start, end in entries:
        out.put(0 if start == end else 1, 1)
        out.put(start, 16)
        if start != end:
            out.put(end, 16)


def core_bits(
    *,
    version: int = 2,
    purposes_consent: Iterable[int] = (),
    purposes_li: Iterable[int] = (),
    special_features: Iterable[int] = (),
    vendor_consents: Vendors = Vendors(),
    vendor_li: Vendors = Vendors(),
    cmp_id: int = 1,
    cmp_version: int = 12,
    vendor_list_version: int = 2,
    policy_version: int = 2,
    service_specific: bool = True,
    purpose_one_treatment: bool = False,
    restrictions: Sequence[tuple[int, int, tuple[tuple[int, int], ...]]] = (),
) -> str:
    """The core segment as a string of ``0``/``1`` (not padded)."""
    out = BitWriter()
    out.put(version, 6)
    out.put(CREATED_DS, 36)
    out.put(CREATED_DS + 7, 36)
    out.put(cmp_id, 12)
    out.put(cmp_version, 12)
    out.put(1, 6)  # consent screen
    out.put((4 << 6) | 13, 12)  # "EN"
    out.put(vendor_list_version, 12)
    out.put(policy_version, 6)
    out.put(int(service_specific), 1)
    out.put(0, 1)  # use non-standard texts
    out.flags(special_features, 12)
    out.flags(purposes_consent, 24)
    out.flags(purposes_li, 24)
    out.put(int(purpose_one_treatment), 1)
    out.put((0 << 6) | 0, 12)  # publisher country code "AA"
    _vendor_section(out, vendor_consents)
    _vendor_section(out, vendor_li)
    out.put(len(restrictions), 12)
    for purpose, kind, entries in restrictions:
        out.put(purpose, 6)
        out.put(kind, 2)
        out.put(len(entries), 12)
        for start, end in entries:
            out.put(0 if start == end else 1, 1)
            out.put(start, 16)
            if start != end:
                out.put(end, 16)
    return out.text()


def segment(bits: str) -> str:
    """A bit string, zero-padded to whole bytes, as URL-safe base64 without padding."""
    padded = bits + "0" * (-len(bits) % 8)
    data = int(padded, 2).to_bytes(len(padded) // 8, "big") if padded else b""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def encode(*, extra_segments: Sequence[str] = (), **fields: Any) -> str:
    """A whole TC string: the core segment of ``core_bits(**fields)`` and ``extra_segments``."""
    return ".".join([segment(core_bits(**fields)), *extra_segments])
