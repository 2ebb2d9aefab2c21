"""TCF v2 TC strings: the reference operator's vectors, the consent rule, and every refusal.

Strings other than the reference vectors are built by the test-only encoder (``tcf_encoder``)
from plain sets; each refusal is checked by the precise reason the error carries, so a test
cannot pass because the string failed for some other reason.
"""

from __future__ import annotations

import pytest
from tcf_encoder import HEADER_BITS, Vendors, core_bits, encode, segment

from uid2_operator.errors import InvalidConsentString, WireError
from uid2_operator.wire.tcf import (
    DEFAULT_VENDOR_ID,
    EUID_REQUIRED_PURPOSES,
    MAX_TC_STRING_LENGTH,
    TCString,
    VendorSet,
    parse_tc_string,
)

SUFFICIENT = "CPehNtWPehNtWABAMBFRACBoALAAAEJAAIYgAKwAQAKgArABAAqAAA"
LACKS_PURPOSE_1 = "CPehXK9PehXK9ABAMBFRACBoADAAAEJAAIYgAKwAQAKgArABAAqAAA"
INVALID = "invalid_consent_string"
REQUIRED = sorted(EUID_REQUIRED_PURPOSES)
VENDOR = DEFAULT_VENDOR_ID
BOTH = Vendors(frozenset({VENDOR}), ranges=True)


def _reason(text: str) -> str:
    with pytest.raises(InvalidConsentString) as caught:
        parse_tc_string(text)
    assert caught.value.message == "User consent is invalid"
    return caught.value.detail


# ------------------------------------------------------------------------------ reference vectors


def test_the_reference_sufficient_vector_grants_vendor_21_every_euid_purpose() -> None:
    parsed = parse_tc_string(SUFFICIENT)
    assert parsed.version == 2
    assert parsed.cmp_id == 1
    assert parsed.cmp_version == 12
    assert parsed.consent_screen == 1
    assert parsed.vendor_list_version == 2
    assert parsed.policy_version == 1
    assert parsed.created_ds == parsed.last_updated_ds == 16_618_150_742
    assert parsed.is_service_specific
    assert not parsed.use_non_standard_texts
    assert parsed.purpose_one_treatment
    assert parsed.special_feature_opt_ins == {1}
    assert parsed.purposes_consent == {1, 3, 4}
    assert parsed.purposes_li_transparency == {2, 7, 10}
    assert 21 in parsed.vendor_consents
    assert 21 in parsed.vendor_legitimate_interests
    assert parsed.has_consent(21, EUID_REQUIRED_PURPOSES)
    assert not parsed.has_consent(20, EUID_REQUIRED_PURPOSES)


def test_the_reference_vector_without_purpose_1_is_insufficient() -> None:
    parsed = parse_tc_string(LACKS_PURPOSE_1)
    assert parsed.purposes_consent == {3, 4}
    assert not parsed.has_consent(21, EUID_REQUIRED_PURPOSES)
    assert parsed.has_consent(21, EUID_REQUIRED_PURPOSES - {1})


def test_the_reference_invalid_vector_is_refused_for_its_version() -> None:
    assert _reason(INVALID) == "version 34 (only TCF version 2 is read)"


def test_the_constants_are_the_protocols() -> None:
    assert DEFAULT_VENDOR_ID == 21
    assert sorted(EUID_REQUIRED_PURPOSES) == [1, 2, 3, 4, 7, 10]
    assert issubclass(InvalidConsentString, WireError)


# ------------------------------------------------------------------------------ the consent rule


def _tc(**fields: object) -> TCString:
    return parse_tc_string(encode(**fields))


def test_consent_alone_is_enough_when_every_purpose_is_consented() -> None:
    parsed = _tc(purposes_consent=REQUIRED, vendor_consents=Vendors(frozenset({VENDOR})))
    assert parsed.has_consent(VENDOR, EUID_REQUIRED_PURPOSES)
    assert not parsed.has_consent(VENDOR + 1, EUID_REQUIRED_PURPOSES)


def test_legitimate_interest_alone_is_enough_when_every_purpose_is_disclosed() -> None:
    parsed = _tc(purposes_li=REQUIRED, vendor_li=Vendors(frozenset({VENDOR})))
    assert parsed.has_consent(VENDOR, EUID_REQUIRED_PURPOSES)


def test_the_two_bases_add_up() -> None:
    parsed = _tc(
        purposes_consent=[1, 2, 3],
        purposes_li=[4, 7, 10],
        vendor_consents=BOTH,
        vendor_li=BOTH,
    )
    assert parsed.has_consent(VENDOR, EUID_REQUIRED_PURPOSES)


def test_purposes_count_only_for_the_section_that_names_the_vendor() -> None:
    # The LI purposes would complete the set, but the vendor is only in the consent section.
    consent_only = _tc(
        purposes_consent=[1, 2, 3],
        purposes_li=[4, 7, 10],
        vendor_consents=BOTH,
        vendor_li=Vendors(frozenset({VENDOR + 1})),
    )
    assert not consent_only.has_consent(VENDOR, EUID_REQUIRED_PURPOSES)
    li_only = _tc(
        purposes_consent=[1, 2, 3],
        purposes_li=[4, 7, 10],
        vendor_consents=Vendors(frozenset({VENDOR + 1}), ranges=True),
        vendor_li=BOTH,
    )
    assert not li_only.has_consent(VENDOR, EUID_REQUIRED_PURPOSES)


@pytest.mark.parametrize("missing", REQUIRED)
def test_each_required_purpose_is_required(missing: int) -> None:
    purposes = [p for p in REQUIRED if p != missing]
    parsed = _tc(
        purposes_consent=purposes, purposes_li=purposes, vendor_consents=BOTH, vendor_li=BOTH
    )
    assert not parsed.has_consent(VENDOR, EUID_REQUIRED_PURPOSES)


def test_special_features_and_other_purposes_are_not_purposes() -> None:
    parsed = _tc(purposes_consent=REQUIRED, vendor_consents=BOTH, special_features=())
    assert parsed.special_feature_opt_ins == frozenset()
    assert parsed.has_consent(VENDOR, EUID_REQUIRED_PURPOSES)
    assert not parsed.has_consent(VENDOR, {*REQUIRED, 5})


@pytest.mark.parametrize(
    ("purposes", "special_features", "granted"),
    [
        (REQUIRED, (1,), True),
        (REQUIRED, (1, 2), True),
        (REQUIRED, (), True),  # every purpose, no opt-in to precise geolocation: enough
        (REQUIRED, (2,), True),
        (REQUIRED[1:], (1,), False),  # a special feature does not make up for a purpose
        (REQUIRED[1:], (), False),
    ],
)
def test_an_euid_grant_needs_every_purpose_and_no_special_feature(
    purposes: list[int], special_features: tuple[int, ...], granted: bool
) -> None:
    parsed = _tc(purposes_consent=purposes, vendor_consents=BOTH, special_features=special_features)
    assert parsed.grants_euid(VENDOR) is granted
    assert not _tc(purposes_consent=REQUIRED, special_features=(1,)).grants_euid(VENDOR)


def test_a_vendor_in_neither_section_has_no_purpose() -> None:
    parsed = _tc(purposes_consent=range(1, 25), purposes_li=range(1, 25))
    assert not parsed.has_consent(VENDOR, [1])
    assert parsed.has_consent(VENDOR, [])


# ------------------------------------------------------------------------------ vendor sections


def test_a_bit_field_names_exactly_its_set_bits() -> None:
    ids = frozenset({1, 2, 9, 21, 300})
    parsed = _tc(vendor_consents=Vendors(ids, max_vendor_id=301))
    section = parsed.vendor_consents
    assert not section.range_encoded
    assert section.max_vendor_id == 301
    assert {v for v in range(-1, 400) if v in section} == ids


def test_an_empty_bit_field_names_no_vendor() -> None:
    section = _tc().vendor_consents
    assert section == VendorSet(0, False)
    assert 1 not in section


def test_range_entries_are_merged_not_expanded() -> None:
    entries = ((40, 50), (1, 65_535), (7, 7))
    parsed = _tc(vendor_li=Vendors(max_vendor_id=65_535, ranges=True, entries=entries))
    section = parsed.vendor_legitimate_interests
    assert section.range_encoded
    assert (section.starts, section.ends) == ((1,), (65_535,))
    assert 65_535 in section
    assert 0 not in section


def test_unsorted_overlapping_and_adjacent_ranges_keep_their_members() -> None:
    entries = ((30, 35), (5, 5), (10, 12), (13, 14), (11, 20), (33, 40))
    section = _tc(
        vendor_consents=Vendors(max_vendor_id=60, ranges=True, entries=entries)
    ).vendor_consents
    assert (section.starts, section.ends) == ((5, 10, 30), (5, 20, 40))
    expected = {5, *range(10, 21), *range(30, 41)}
    assert {v for v in range(70) if v in section} == expected


def test_the_largest_range_section_parses() -> None:
    entries = tuple((n, n) for n in range(1, 4096))
    section = _tc(
        vendor_consents=Vendors(max_vendor_id=65_535, ranges=True, entries=entries)
    ).vendor_consents
    assert (section.starts, section.ends) == ((1,), (4095,))


def test_the_largest_bit_field_parses() -> None:
    ids = frozenset({1, 65_535})
    section = _tc(vendor_consents=Vendors(ids, max_vendor_id=65_535)).vendor_consents
    assert {v for v in (1, 2, 65_534, 65_535) if v in section} == ids


# ------------------------------------------------------------------------------ refusals


def test_an_empty_string_is_refused() -> None:
    assert _reason("") == "empty TC string"


def test_the_length_is_bounded() -> None:
    core = encode(vendor_consents=BOTH)
    filler = "A" * (MAX_TC_STRING_LENGTH - len(core) - 1)
    at_limit = f"{core}.{filler}"
    assert len(at_limit) == MAX_TC_STRING_LENGTH
    assert parse_tc_string(at_limit) == parse_tc_string(core)
    reason = _reason(at_limit + "A")
    assert reason == f"TC string of {MAX_TC_STRING_LENGTH + 1} characters (at most 65536)"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (".", "segment 0 is empty"),
        (f"{SUFFICIENT}.", "segment 1 is empty"),
        (f"{SUFFICIENT}..IAAA", "segment 1 is empty"),
        (f".{SUFFICIENT}", "segment 0 is empty"),
    ],
)
def test_empty_segments_are_refused(text: str, reason: str) -> None:
    assert _reason(text) == reason


@pytest.mark.parametrize(
    ("text", "index"),
    [
        (SUFFICIENT.replace("W", "+"), 0),  # the standard alphabet
        (SUFFICIENT.replace("W", "/"), 0),
        (SUFFICIENT + "AAA", 0),  # 57 characters: a length no base64 text has
        ("CPeh!tWP", 0),
        ("CPéhNtWP", 0),  # not ASCII
        (f"{SUFFICIENT}.IA AA", 1),
        (f"{SUFFICIENT}.IAAA===", 1),
    ],
)
def test_text_that_is_not_url_safe_base64_is_refused(text: str, index: int) -> None:
    assert _reason(text).startswith(f"segment {index} is not URL-safe base64")


def test_padding_is_tolerated_and_other_segments_are_not_interpreted() -> None:
    padded = SUFFICIENT + "=" * (-len(SUFFICIENT) % 4)
    assert parse_tc_string(padded) == parse_tc_string(SUFFICIENT)
    with_segments = f"{SUFFICIENT}.IAAA.QAAA.____"
    assert parse_tc_string(with_segments) == parse_tc_string(SUFFICIENT)


@pytest.mark.parametrize("version", [0, 1, 3, 63])
def test_only_version_2_is_read(version: int) -> None:
    text = encode(version=version, vendor_consents=BOTH)
    assert _reason(text) == f"version {version} (only TCF version 2 is read)"


def test_every_truncation_of_the_fields_read_is_refused() -> None:
    bits = core_bits(
        purposes_consent=REQUIRED,
        vendor_consents=Vendors(frozenset({3, VENDOR}), max_vendor_id=30),
        vendor_li=Vendors(frozenset({4, 8, 9}), ranges=True),
    )
    needed = HEADER_BITS + (17 + 30) + (17 + 12 + 17 + 33)
    assert len(bits) == needed + 12  # plus an empty publisher restrictions section
    assert parse_tc_string(segment(bits[:needed])).has_consent(VENDOR, [1])
    refused = 0
    for length in range(needed):
        if length + (-length % 8) >= needed:  # zero padding completes the string
            continue
        text = segment(bits[:length])
        if not text:
            continue
        reason = _reason(text)
        assert reason.startswith(("truncated: ", "version 0 ")), (length, reason)
        refused += 1
    assert refused > needed - 16


def test_a_field_that_ends_on_the_segments_last_bit_is_read() -> None:
    # Without the publisher restrictions count, the LI bit field (bits 268 to 288) is the last
    # field and ends exactly where 36 bytes end: nothing is missing, so nothing is truncated.
    bits = core_bits(
        purposes_consent=[1, 2, 3, 4, 7, 10],
        vendor_consents=Vendors(frozenset({21})),
        vendor_li=Vendors(frozenset({20})),
    )[:-12]
    assert len(bits) == 288
    parsed = parse_tc_string(segment(bits))
    assert 21 in parsed.vendor_consents
    assert 20 in parsed.vendor_legitimate_interests
    assert 21 not in parsed.vendor_legitimate_interests
    # One bit fewer, and the same field is cut.
    assert _reason(segment(bits[:280])).startswith(
        "truncated: vendor legitimate interest bit field needs bits 268 to 288"
    )


@pytest.mark.parametrize(
    ("cut_bytes", "field"),
    [
        (1, "created"),
        (9, "last updated"),
        (10, "CMP id"),
        (26, "publisher country code"),
        (27, "vendor consent max vendor id"),
        (29, "vendor consent bit field"),
        (33, "vendor legitimate interest max vendor id"),
        (36, "vendor legitimate interest number of entries"),
        (38, "vendor legitimate interest entry 0 vendor id"),
    ],
)
def test_a_truncation_names_the_field_it_cut(cut_bytes: int, field: str) -> None:
    # Consent: a 30-bit field (bits 230 to 260); LI: one range entry (its vendor id from 290).
    bits = core_bits(vendor_consents=Vendors(frozenset({30})), vendor_li=BOTH)
    assert _reason(segment(bits[: cut_bytes * 8])).startswith(f"truncated: {field} needs bits ")


def test_a_truncated_range_entry_names_it() -> None:
    bits = core_bits(vendor_consents=Vendors(frozenset({5}), ranges=True, max_vendor_id=9))
    cut = bits[: HEADER_BITS + 17 + 12 + 1 + 8]  # into the first entry's vendor id
    assert _reason(segment(cut)).startswith(
        "truncated: vendor consent entry 0 vendor id needs bits "
    )


@pytest.mark.parametrize(
    ("entries", "max_id", "reason"),
    [
        (((5, 4),), 10, "vendor consent entry 0: range ends at 4, before its start 5"),
        (((1, 1), (9, 2)), 10, "vendor consent entry 1: range ends at 2, before its start 9"),
        (((0, 0),), 10, "vendor consent entry 0: vendor id 0 (vendor ids start at 1)"),
        (((0, 3),), 10, "vendor consent entry 0: vendor id 0 (vendor ids start at 1)"),
        (
            ((11, 11),),
            10,
            "vendor consent entry 0: vendor id 11 beyond the section's max vendor id 10",
        ),
        (
            ((2, 3), (8, 12)),
            10,
            "vendor consent entry 1: vendor id 12 beyond the section's max vendor id 10",
        ),
        (((1, 1),), 0, "vendor consent entry 0: vendor id 1 beyond the section's max vendor id 0"),
    ],
)
def test_malformed_range_entries_are_refused(
    entries: tuple[tuple[int, int], ...], max_id: int, reason: str
) -> None:
    text = encode(vendor_consents=Vendors(max_vendor_id=max_id, ranges=True, entries=entries))
    assert _reason(text) == reason


def test_the_legitimate_interest_section_is_checked_alike() -> None:
    text = encode(vendor_li=Vendors(max_vendor_id=3, ranges=True, entries=((2, 7),)))
    assert _reason(text) == (
        "vendor legitimate interest entry 0: vendor id 7 beyond the section's max vendor id 3"
    )
