"""The bundled Public Suffix List behind the origin check, private suffixes included, offline."""

from __future__ import annotations

import pytest

from uid2_operator.domain.origins import origin_site, validate_domain_name
from uid2_operator.services.public_suffix import registrable_domain_lookup

LOOKUP = registrable_domain_lookup()


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("sub.cstg.co.uk", "cstg.co.uk"),
        ("cstg.co.uk", "cstg.co.uk"),
        ("abc.examplewebsite.com", "examplewebsite.com"),
        ("aussiedomain.id.au", "aussiedomain.id.au"),
        ("a.b.github.io", "b.github.io"),
        ("co.uk", None),
        ("github.io", None),
        ("com", None),
        ("foo.notarealsuffix", None),
        ("localhost", None),
        ("", None),
        (".com", None),
        ("a..com", None),
    ],
)
def test_registrable_domains(host: str, expected: str | None) -> None:
    assert LOOKUP(host) == expected


def test_origins_against_the_real_list() -> None:
    assert origin_site("https://sub.cstg.co.uk", LOOKUP) == "cstg.co.uk"
    assert origin_site("https://app.customer.github.io:8443/x", LOOKUP) == "customer.github.io"
    assert origin_site("https://x.localhost", LOOKUP) == "localhost"
    assert origin_site("https://github.io", LOOKUP) is None
    assert validate_domain_name("Customer.GitHub.io", LOOKUP) == "customer.github.io"


def test_a_second_lookup_answers_the_same() -> None:
    assert registrable_domain_lookup()("www.example.com") == "example.com"
