"""Control characters and bidirectional controls in stored free text are refused the same way
whichever way the text comes in: the domain checks the text as given, before trimming, so a
command line that trims cannot store what the admin API refuses, and neither stores text that
would reach a terminal as escape sequences or display reordered."""

from __future__ import annotations

import pytest

from uid2_operator.domain.keypairs import validate_keypair_contact, validate_keypair_name
from uid2_operator.domain.origins import validate_app_name, validate_domain_name
from uid2_operator.domain.participants import validate_contacts, validate_name
from uid2_operator.errors import InvalidInput

CONTROLLED = ["\tAcme", "Acme\n", "Acme\x1f", "Acme\x85", "Ac\x1b[31mme", "Acme\x7f"]


@pytest.mark.parametrize("text", CONTROLLED)
def test_names_with_a_control_character_are_refused_not_trimmed(text: str) -> None:
    with pytest.raises(InvalidInput, match="must not contain control characters"):
        validate_name(text)
    with pytest.raises(InvalidInput, match="must not contain control characters"):
        validate_keypair_name(text)


def test_names_are_still_trimmed_of_spaces() -> None:
    assert validate_name("  Acme  ") == "Acme"
    assert validate_keypair_name("  Acme  ") == "Acme"


@pytest.mark.parametrize(
    "contact", ["a\x1b[31mRED\x01@b.com", "ops@example.com\x7f", "\tops@example.com", "o@e.com\n"]
)
def test_contacts_with_a_control_character_are_refused(contact: str) -> None:
    with pytest.raises(InvalidInput, match="contacts must not contain control characters"):
        validate_contacts([contact])
    with pytest.raises(InvalidInput, match="must not contain control characters"):
        validate_keypair_contact(contact)


def test_contacts_with_a_bidirectional_control_are_refused() -> None:
    with pytest.raises(InvalidInput, match="bidirectional"):
        validate_contacts(["evil\u202emoc.liame@b.com"])
    assert validate_contacts(["  ops@example.com "]) == ("ops@example.com",)


@pytest.mark.parametrize(
    "name", ["com.\u202eppa.elpmaxe", "com.app\u2066", "\tcom.app", "com.app\n"]
)
def test_app_names_with_control_characters_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        validate_app_name(name)


def test_app_names_are_still_trimmed_of_spaces() -> None:
    assert validate_app_name(" com.example.app ") == "com.example.app"


@pytest.mark.parametrize("name", ["\texample.com", "example.com\n", "exa\x7fmple.com"])
def test_domain_names_with_control_characters_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match="must not contain control characters"):
        validate_domain_name(name, lambda host: host)
