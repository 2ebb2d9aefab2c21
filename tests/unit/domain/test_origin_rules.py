"""Origin and app-name checks of client-side token generation, and set-domains validation.

The suffix lookup is a small in-test table here, so these rules are tested without the real list;
the adapter over the real list has its own tests in the services suite.
"""

from __future__ import annotations

import pytest

from uid2_operator.domain.origins import (
    app_name_allowed,
    check_origin_or_app,
    origin_allowed,
    origin_host,
    origin_site,
    validate_app_name,
    validate_app_names,
    validate_domain_name,
    validate_domain_names,
)
from uid2_operator.errors import CstgInvalidAppName, CstgInvalidOrigin, InvalidInput

SUFFIXES = {"com", "org", "co.uk", "uk", "id.au", "au", "github.io", "io", "example", "de"}


def registrable(host: str) -> str | None:
    labels = host.split(".")
    for i in range(len(labels)):
        if ".".join(labels[i:]) in SUFFIXES:
            return None if i == 0 else ".".join(labels[i - 1 :])
    return None


ALLOWED = {"examplewebsite.com", "e-wb.org", "aussiedomain.id.au", "cstg.co.uk", "b.github.io"}


@pytest.mark.parametrize(
    "origin",
    [
        "http://examplewebsite.com",
        "https://examplewebsite.com",
        "https://abc.examplewebsite.com:8080",
        "https://abc.examplewebsite.com:8080/",
        "https://abc.eXampleWebsIte.com:8080/",
        "https://abc.exAmplewEbsite.com:8080/blahh/a.html",
        "HTTPS://abc.e-wb.org:8080?x#y",
        "http://aussiedomain.id.au",
        "https://aussiedomain.id.au/head.html",
        "https://sub.cstg.co.uk",
        "https://a.b.github.io",
        "https://examplewebsite.com.",
        "https://x_y.examplewebsite.com:",
    ],
)
def test_allowed_origins(origin: str) -> None:
    assert origin_allowed(origin, ALLOWED, registrable)


@pytest.mark.parametrize(
    "origin",
    [
        None,
        "",
        "null",
        "examplewebsite.com",
        "examplewebsite.com:999999",
        "abc:examplewebsite.com",
        "/:$2231examplewebsite.com",
        "ftp://examplewebsite.com",
        "http://boohoo.id.au",
        "https://blah12.com",
        "http://123.boohoo.id.au",
        "https://github.io",
        "https://c.github.io",
        "https://user@examplewebsite.com",
        "https://examplewebsite.com:99999",
        "https://examplewebsite.com:8o",
        "https://examplewebsite.com:\u0661",
        "https://[::1]:8080",
        "https://127.0.0.1",
        "https://examplewebsite.1com",
        "https://bücher.examplewebsite.com",
        "https://-a.examplewebsite.com",
        "https://a..examplewebsite.com",
        "https://" + "a" * 64 + ".examplewebsite.com",
        "https://" + "a." * 127 + "examplewebsite.com",
        "https://unknown.tld",
        "https://localhost",
        # The registrable domain must be an allowed name, not merely end with one.
        "https://notexamplewebsite.com",
        "https://evil-examplewebsite.com",
        "https://xcstg.co.uk",
        "https://examplewebsite.com.evil.com",
    ],
)
def test_refused_origins(origin: str | None) -> None:
    assert not origin_allowed(origin, ALLOWED, registrable)


@pytest.mark.parametrize(
    ("origin", "site"),
    [
        ("http://localhost", "localhost"),
        ("https://localhost:8080/", "localhost"),
        ("https://abc.locaLHost:8080/blahh/a.html", "localhost"),
        ("https://a.b.localhost", None),
        ("https://sub.cstg.co.uk", "cstg.co.uk"),
        ("https://co.uk", None),
    ],
)
def test_origin_site(origin: str, site: str | None) -> None:
    assert origin_site(origin, registrable) == site


def test_origin_host() -> None:
    assert origin_host("https://ABC.Example.com:443/x") == "abc.example.com"
    assert origin_host("https://") is None
    assert origin_host("https://example.com:00443") == "example.com"
    # Longer than five digits is refused before conversion: int() of thousands of digits raises.
    assert origin_host("https://example.com:000443") is None
    assert origin_host("https://example.com:" + "1" * 5000) is None


def test_origin_host_bounds_are_inclusive() -> None:
    assert origin_host("https://example.com:65535") == "example.com"
    assert origin_host("https://example.com:65536") is None
    longest = ("a" * 63 + ".") * 3 + "a" * 57 + ".com"
    assert len(longest) == 253
    assert origin_host("https://" + longest) == longest
    assert origin_host("https://a" + longest) is None
    # A label may start (and end) with an underscore, as a browser's host may.
    assert origin_host("https://_sub_.example.com") == "_sub_.example.com"
    assert origin_site("https://_sub.cstg.co.uk", registrable) == "cstg.co.uk"


def test_a_non_ascii_host_is_refused_before_lowercasing() -> None:
    # The Kelvin sign lowercases to an ASCII "k": lowercased first, it would pass as another host.
    assert "\u212a".lower() == "k"
    assert origin_host("https://\u212aexample.com") is None
    assert origin_site("https://\u212acstg.co.uk", registrable) is None


def test_app_names_ignore_case() -> None:
    names = ["com.example.App", "123456789"]
    assert app_name_allowed("COM.EXAMPLE.app", names)
    assert app_name_allowed("123456789", names)
    assert not app_name_allowed("com.example.ap", names)
    assert not app_name_allowed("com.example.appx", names)
    assert app_name_allowed("\u0130", ["\u0069\u0307"]) is False
    assert app_name_allowed("\u00df", ["\u00df"])


def test_check_origin_or_app() -> None:
    def check(origin: str | None, app: str | None) -> None:
        check_origin_or_app(
            origin=origin,
            app_name=app,
            domain_names=ALLOWED,
            app_names=["com.example.app"],
            registrable_domain=registrable,
        )

    check("https://examplewebsite.com", None)
    check(None, "com.example.APP")
    # With an app name the origin is not looked at, even when it would pass.
    with pytest.raises(CstgInvalidAppName):
        check("https://examplewebsite.com", "com.other")
    with pytest.raises(CstgInvalidOrigin):
        check(None, None)
    with pytest.raises(CstgInvalidOrigin):
        check("https://blah12.com", None)


# ---------------------------------------------------------------------------- set-domains


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("example.com", "example.com"),
        (" Example.COM ", "example.com"),
        ("example.com.", "example.com"),
        ("cstg.co.uk", "cstg.co.uk"),
        ("b.github.io", "b.github.io"),
        ("localhost", "localhost"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("XN--Bcher-KVA.example", "xn--bcher-kva.example"),  # an A-label, as browsers send it
        ("x_y.example", "x_y.example"),  # browsers accept an underscore in a host
        ("_a.com", "_a.com"),
    ],
)
def test_valid_domain_names(text: str, stored: str) -> None:
    assert validate_domain_name(text, registrable) == stored


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("https://example.com", "bare domain"),
        ("example.com/path", "bare domain"),
        ("example.com:443", "bare domain"),
        ("a b.com", "bare domain"),
        ("", "bare domain"),
        ("a..com", "not a valid"),
        ("-a.com", "not a valid"),
        ("127.0.0.1", "not a valid"),
        ("x" * 300 + ".com", "not a valid"),
        ("co.uk", "public suffix"),
        ("unknown.tld", "public suffix"),
        ("www.example.com", "use example.com"),
        ("xn--zz.com", "not a valid"),  # not punycode
        ("xn--ab.com", "not a valid"),  # punycode of control characters
        ("xn--ls8h.com", "not a valid"),  # an emoji, which IDNA 2008 does not permit
        ("xn--abc-.com", "not a valid"),  # the A-label of ASCII "abc"
    ],
)
def test_invalid_domain_names(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_domain_name(text, registrable)


def test_domain_name_lists() -> None:
    names = validate_domain_names(["b.com", "A.com", "a.com"], registrable)
    assert names == ("a.com", "b.com")
    with pytest.raises(InvalidInput, match="At most"):
        validate_domain_names([f"d{i}.com" for i in range(1001)], registrable)
    assert len(validate_domain_names([f"d{i}.com" for i in range(1000)], registrable)) == 1000


def test_app_name_validation() -> None:
    assert validate_app_name(" com.example.app ") == "com.example.app"
    assert validate_app_names(["b.app", "A.app", "a.APP", "123"]) == ("123", "A.app", "b.app")
    for bad in ("", " ", "a b", "a\x00", "x" * 256):
        with pytest.raises(InvalidInput):
            validate_app_name(bad)
    assert validate_app_name("x" * 255) == "x" * 255
    with pytest.raises(InvalidInput, match="At most"):
        validate_app_names([f"app{i}" for i in range(1001)])
    assert len(validate_app_names([f"app{i}" for i in range(1000)])) == 1000


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (["\u0130", "i\u0307"], ("i\u0307", "\u0130")),  # one lower-cases to the other
        (["\u212a.app", "k.app", "K.APP"], ("\u212a.app",)),  # Kelvin sign: k ignoring case
        (["x.app", "X.App", "x.app"], ("x.app",)),
    ],
)
def test_only_names_a_request_could_not_tell_apart_are_folded(
    given: list[str], kept: tuple[str, ...]
) -> None:
    folded = validate_app_names(given)
    assert folded == kept
    # every name given is still allowed to a request that uses it
    assert all(app_name_allowed(name, folded) for name in given)


@pytest.mark.parametrize(
    ("typed", "stored", "not_this"),
    [
        ("straße.de", "xn--strae-oqa.de", "strasse.de"),
        ("faß.de", "xn--fa-hia.de", "fass.de"),
        ("βόλος.com", "xn--nxasmm1c.com", "xn--nxasmq6b.com"),
    ],
)
def test_a_unicode_domain_name_is_stored_as_browsers_send_it(
    typed: str, stored: str, not_this: str
) -> None:
    """Browsers put the IDNA 2008 (UTS #46, non-transitional) form in Origin; the older IDNA 2003
    form of the same text is another domain, registered by someone else."""
    assert validate_domain_name(typed, registrable) == stored
    assert origin_allowed(f"https://{stored}", (stored,), registrable)
    assert not origin_allowed(f"https://{not_this}", (stored,), registrable)
