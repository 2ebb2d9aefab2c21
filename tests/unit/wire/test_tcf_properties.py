"""TC string properties: any text or bytes gives a value or ``InvalidConsentString``; strings built
by the test-only encoder from plain sets parse back to those sets, and the consent rule agrees
with the rule computed on the sets."""

from __future__ import annotations

import base64
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st
from tcf_encoder import Vendors, encode

from uid2_operator.errors import InvalidConsentString
from uid2_operator.wire.tcf import EUID_REQUIRED_PURPOSES, TCString, VendorSet, parse_tc_string


def _parse_or_none(text: str) -> TCString | None:
    try:
        return parse_tc_string(text)
    except InvalidConsentString:
        return None


def _url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


@settings(deadline=None, max_examples=400)
@given(st.text(max_size=200) | st.text(alphabet="ABCDEFGHIJQgw_-.=+/", max_size=120))
def test_any_text_parses_or_is_invalid(text: str) -> None:
    _parse_or_none(text)


@settings(deadline=None, max_examples=400)
@given(st.binary(max_size=600), st.lists(st.binary(min_size=1, max_size=8), max_size=3))
def test_any_bytes_parse_or_are_invalid(data: bytes, extra: list[bytes]) -> None:
    # As sent, and with the first six bits made version 2 so that the rest gets read.
    versioned = bytes([0x08 | (data[0] & 0x03)]) + data[1:] if data else b"\x08"
    for core in (data, versioned):
        _parse_or_none(".".join([_url(core), *map(_url, extra)]))


vendor_ids = st.frozensets(st.integers(1, 400), max_size=40)
large_ids = st.frozensets(st.integers(1, 65_535), max_size=6)
purposes = st.frozensets(st.integers(1, 24))
features = st.frozensets(st.integers(1, 12))


@st.composite
def vendor_sections(draw: st.DrawFn) -> Vendors:
    ids = draw(vendor_ids | large_ids)
    ranges = draw(st.booleans()) or max(ids, default=0) > 2_000
    slack = draw(st.integers(0, 20))
    return Vendors(ids, max_vendor_id=min(max(ids, default=0) + slack, 65_535), ranges=ranges)


def _members(section: VendorSet, candidates: frozenset[int]) -> frozenset[int]:
    return frozenset(v for v in candidates if v in section)


@settings(deadline=None, max_examples=300)
@given(
    consents=vendor_sections(),
    li=vendor_sections(),
    purposes_consent=purposes,
    purposes_li=purposes,
    special_features=features,
    probe=st.integers(1, 400),
)
def test_encoded_strings_round_trip(
    *,
    consents: Vendors,
    li: Vendors,
    purposes_consent: frozenset[int],
    purposes_li: frozenset[int],
    special_features: frozenset[int],
    probe: int,
) -> None:
    parsed = parse_tc_string(
        encode(
            vendor_consents=consents,
            vendor_li=li,
            purposes_consent=purposes_consent,
            purposes_li=purposes_li,
            special_features=special_features,
        )
    )
    assert parsed.purposes_consent == purposes_consent
    assert parsed.purposes_li_transparency == purposes_li
    assert parsed.special_feature_opt_ins == special_features
    for section, vendors in (
        (parsed.vendor_consents, consents),
        (parsed.vendor_legitimate_interests, li),
    ):
        assert section.max_vendor_id == vendors.max_id
        assert section.range_encoded == vendors.ranges
        # Every id, the neighbours of every id and the edges of the section.
        candidates = frozenset(
            {0, 1, vendors.max_id, vendors.max_id + 1}
            | {v + d for v in vendors.ids for d in (-1, 0, 1)}
        )
        assert _members(section, candidates) == vendors.ids
    for vendor in {probe, *consents.ids, *li.ids}:
        granted = (purposes_consent if vendor in consents.ids else frozenset()) | (
            purposes_li if vendor in li.ids else frozenset()
        )
        expected = granted.issuperset(EUID_REQUIRED_PURPOSES)
        assert parsed.has_consent(vendor, EUID_REQUIRED_PURPOSES) == expected


entries = st.lists(
    st.tuples(st.integers(1, 300), st.integers(0, 30)).map(lambda p: (p[0], p[0] + p[1])),
    max_size=30,
)


@settings(deadline=None, max_examples=300)
@given(entries)
def test_range_entries_in_any_order_name_their_union(given_entries: list[tuple[int, int]]) -> None:
    max_id = max((end for _, end in given_entries), default=0)
    section = parse_tc_string(
        encode(
            vendor_consents=Vendors(max_vendor_id=max_id, ranges=True, entries=tuple(given_entries))
        )
    ).vendor_consents
    expected = frozenset(v for start, end in given_entries for v in range(start, end + 1))
    assert _members(section, frozenset(range(max_id + 2))) == expected
    # Kept as disjoint, ascending, non-adjacent runs: never more than the entries sent.
    runs = list(zip(section.starts, section.ends, strict=True))
    assert len(runs) <= len(given_entries)
    assert all(a_end + 1 < b_start for (_, a_end), (b_start, _) in pairwise(runs))
