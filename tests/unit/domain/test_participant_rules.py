from __future__ import annotations

import sys
import unicodedata
from collections.abc import Callable
from dataclasses import replace

import pytest

from uid2_operator.domain.keypairs import validate_keypair_contact, validate_keypair_name
from uid2_operator.domain.participants import (
    BIDI_CONTROL_RANGES,
    INVISIBLE_RANGES,
    MAX_SITE_ID,
    Participant,
    ParticipantType,
    name_key,
    new_participant,
    refuse_taken_name,
    set_participant_enabled,
    update_participant,
    validate_contacts,
    validate_name,
    validate_site_id,
)
from uid2_operator.domain.roles import (
    CLIENT_ROLE_LABELS,
    AdminRole,
    ClientRole,
    parse_admin_roles,
    parse_client_roles,
)
from uid2_operator.errors import AlreadyExists, InvalidInput, InvalidTransition

MakeParticipant = Callable[..., Participant]
T0 = 1_700_000_000_000


@pytest.mark.parametrize("site_id", [3, 1001, MAX_SITE_ID])
def test_valid_site_ids(site_id: int) -> None:
    assert validate_site_id(site_id) == site_id


@pytest.mark.parametrize("site_id", [-2, -1, 0, 1, 2, MAX_SITE_ID + 1, True])
def test_reserved_and_out_of_range_site_ids(site_id: int) -> None:
    with pytest.raises(InvalidInput, match="site_id"):
        validate_site_id(site_id)


def test_names() -> None:
    assert validate_name("  Acme  ") == "Acme"
    assert validate_name("x" * 200) == "x" * 200
    for bad in ("", "   ", "x" * 201):
        with pytest.raises(InvalidInput, match="1 to 200"):
            validate_name(bad)
    with pytest.raises(InvalidInput, match="reason must not contain control"):
        validate_name("evil\nline", "reason")


@pytest.mark.parametrize("bad", ["bad\udcff", "\ud800", "a\udfffb", "  \udc80  "])
def test_names_refuse_surrogate_code_points(bad: str) -> None:
    for what in ("name", "reason"):
        with pytest.raises(InvalidInput, match=f"^{what} must be valid UTF-8 text") as caught:
            validate_name(bad, what)
        assert bad.strip() not in caught.value.detail


@pytest.mark.parametrize(
    "bad", ["Acme \u202egnp.exe", "\u2066Acme\u2069", "a\u202ab", "x\u202d", "\u2067y"]
)
def test_names_refuse_bidirectional_controls(bad: str) -> None:
    with pytest.raises(InvalidInput, match=r"^name must not contain bidirectional formatting"):
        validate_name(bad)
    with pytest.raises(InvalidInput, match=r"^A keypair name must not contain bidirectional"):
        validate_keypair_name(bad)


@pytest.mark.parametrize(
    "bad",
    [
        "\u200b",
        " \u200b\u200d ",
        "\u3000\u200c",
        "\u00ad\u2060",
        "\ufeff",
        "\u3164",
        "\u2800\u034f",
        "\u115f\u061c\uffa0\u17b4",
        "\u206a\u206f",  # deprecated format controls
        "\U000e0041\U000e0001",  # tag characters
        "\ufe0f \u180b",  # variation selectors
        "\U0001d173\U0001bca0",  # musical and shorthand format controls
        "\ufff9\U00013430",  # annotation and hieroglyph format controls
    ],
)
def test_names_must_show_something(bad: str) -> None:
    with pytest.raises(InvalidInput, match=r"^name must contain at least one visible character"):
        validate_name(bad)
    with pytest.raises(InvalidInput, match=r"^A keypair contact must contain at least one visible"):
        validate_keypair_contact(bad)


def test_names_keep_joiners_and_marks_beside_visible_text() -> None:
    # ZWNJ in Persian, a combining accent, an emoji sequence joined by ZWJ; "-" alone is visible
    for good in (
        "\u0645\u06cc\u200c\u0631\u0648\u062f",
        "Cafe\u0301",
        "\U0001f469\u200d\U0001f4bb",
        "-",
    ):
        assert validate_name(good) == good
    assert validate_keypair_name("") == ""  # a keypair name may be left empty


def test_names_keep_characters_outside_the_basic_plane() -> None:
    assert validate_name(" Caf\u00e9 \U0001f600 ") == "Caf\u00e9 \U0001f600"
    assert validate_contacts(["\U0001f600@example.com"]) == ("\U0001f600@example.com",)


@pytest.mark.parametrize(
    "same",
    [
        "Acme Inc",
        "acme inc",
        "ACME  INC",
        " Acme\tInc ",
        "\uff21cme Inc",
        "Acme\u00a0Inc",
        "Acme Inc\u200b",  # a zero-width space: shows nothing
        "A\u00adcme Inc",  # a soft hyphen: shows nothing inside a line
        "Acme\u2800Inc",  # a Braille blank: shows as a space
        "Acme\u3164Inc",  # a Hangul filler: shows as a space
        "Acme Inc\u206a",  # a deprecated format control: shows nothing
        "Acme Inc\U000e0041",  # a tag character: shows nothing
        "Acme\ufe0f Inc",  # a variation selector with nothing to select
    ],
)
def test_names_that_read_alike_are_one_name(same: str) -> None:
    assert name_key(same) == name_key("Acme Inc") == "acme inc"


def test_case_folding_that_undoes_composition_still_compares_alike() -> None:
    # Case folding one of these leaves a decomposed form that only a second NFKC composes.
    assert name_key("\u03b0 Media") == name_key("\u03ab\u0301 MEDIA")


@pytest.mark.parametrize("other", ["Acme Incorporated", "AcmeInc", "Acme Inc 2", "Acne Inc"])
def test_names_that_read_differently_are_distinct(other: str) -> None:
    assert name_key(other) != name_key("Acme Inc")


def test_a_taken_name_is_refused_naming_its_holder(make_participant: MakeParticipant) -> None:
    holders = [
        replace(make_participant(site_id=7), name="Other"),
        replace(make_participant(site_id=9), name="Acme"),
    ]
    with pytest.raises(AlreadyExists, match=r"^Participant 9 already has this name$"):
        refuse_taken_name("ACME", holders)
    refuse_taken_name("Acme Two", holders)
    refuse_taken_name("Acme", [])


def test_contacts_refuse_surrogate_code_points() -> None:
    with pytest.raises(InvalidInput, match=r"^contacts must be valid UTF-8 text") as caught:
        validate_contacts(["ok@example.com", "a\udcff@example.com"])
    assert "\udcff" not in caught.value.detail
    with pytest.raises(InvalidInput, match=r"^contacts must be valid UTF-8 text"):
        new_participant(
            site_id=1001, name="Acme", type=ParticipantType.DSP, allowed_roles=[],
            contacts=["\ud83d@example.com"], now_ms=T0,
        )  # fmt: skip


def test_contacts() -> None:
    assert validate_contacts([" a@b.co ", "A@B.co", "c@d.org"]) == ("a@b.co", "c@d.org")
    assert validate_contacts([]) == ()
    for bad in (["nope"], ["a@b"], ["a b@c.d"], ["a@@b.c"], ["x" * 250 + "@b.co"]):
        with pytest.raises(InvalidInput, match="e-mail"):
            validate_contacts(bad)
    with pytest.raises(InvalidInput, match="at most 20"):
        validate_contacts([f"u{i}@example.com" for i in range(21)])


def test_new_participant() -> None:
    p = new_participant(
        site_id=1001, name=" Acme ", type=ParticipantType.DSP,
        allowed_roles=[ClientRole.ID_READER], contacts=["ops@acme.com"], now_ms=T0,
    )  # fmt: skip
    assert p == Participant(
        1001, "Acme", ParticipantType.DSP, frozenset({ClientRole.ID_READER}), True,
        ("ops@acme.com",), T0, T0,
    )  # fmt: skip
    with pytest.raises(InvalidInput):
        new_participant(
            site_id=2, name="x", type=ParticipantType.DSP, allowed_roles=[], contacts=[], now_ms=T0
        )


def test_update_participant(make_participant: MakeParticipant) -> None:
    p = make_participant()
    assert update_participant(p, now_ms=T0 + 1) == Participant(
        p.site_id, p.name, p.type, p.allowed_roles, p.enabled, p.contacts, T0, T0 + 1
    )
    changed = update_participant(
        p, now_ms=T0 + 2, name="New", type=ParticipantType.ADVERTISER,
        allowed_roles=[ClientRole.MAPPER], contacts=["x@y.zz"],
    )  # fmt: skip
    assert (changed.name, changed.type, changed.allowed_roles, changed.contacts) == (
        "New", ParticipantType.ADVERTISER, {ClientRole.MAPPER}, ("x@y.zz",),
    )  # fmt: skip
    with pytest.raises(InvalidInput):
        update_participant(p, now_ms=T0, name="")


def test_enable_disable_participant(make_participant: MakeParticipant) -> None:
    p = make_participant()
    disabled = set_participant_enabled(p, False, T0 + 1)
    assert (disabled.enabled, disabled.updated_at_ms) == (False, T0 + 1)
    with pytest.raises(InvalidTransition, match="already disabled"):
        set_participant_enabled(disabled, False, T0)
    with pytest.raises(InvalidTransition, match="already enabled"):
        set_participant_enabled(p, True, T0)
    assert set_participant_enabled(disabled, True, T0 + 2).enabled


def test_parse_roles() -> None:
    assert parse_client_roles([" generator", "ID_READER "]) == {
        ClientRole.GENERATOR,
        ClientRole.ID_READER,
    }
    assert parse_admin_roles(["read_only"]) == {AdminRole.READ_ONLY}
    with pytest.raises(InvalidInput, match=r"^Unknown role at roles\[0\], roles\[1\]; use ") as e:
        parse_client_roles(["SUPER_USER", "operator", "MAPPER"])
    assert "SUPER_USER" not in e.value.detail
    assert "OPERATOR" not in e.value.detail
    with pytest.raises(InvalidInput, match=r"roles\[0\]") as e:
        parse_admin_roles(["GENERATOR"])
    assert "GENERATOR" not in e.value.detail


def test_role_labels() -> None:
    assert set(CLIENT_ROLE_LABELS) == set(ClientRole)
    assert CLIENT_ROLE_LABELS[ClientRole.ID_READER] == "Bidder"


def test_every_format_character_shows_nothing_or_is_a_sign_before_digits() -> None:
    # Category Cf: invisible (INVISIBLE_RANGES), a bidirectional control (refused on its own),
    # or one of the signs written in front of a number, which show.
    signs_before_digits = {
        *range(0x0600, 0x0606),
        0x06DD,
        0x070F,
        0x0890,
        0x0891,
        0x08E2,
        0x110BD,
        0x110CD,
    }
    ranges = INVISIBLE_RANGES + BIDI_CONTROL_RANGES
    for code in range(sys.maxunicode + 1):
        if unicodedata.category(chr(code)) != "Cf" or code in signs_before_digits:
            continue
        assert any(low <= code <= high for low, high in ranges), hex(code)
    assert validate_name("\u0600\u0661") == "\u0600\u0661"  # an Arabic number sign and 1
