"""Where a client-side token request may come from: the site's domain names and app names (§8).

A client-side keypair's public key and subscription id are public, so what ties a request to the
publisher is where it comes from. A request carrying ``app_name`` must name one of the site's app
names (compared ignoring case) and its ``Origin`` header is then not looked at. Otherwise the
``Origin`` header is parsed as an ``http``/``https`` URL and its host reduced to its registrable
domain with the Public Suffix List, private suffixes included (``https://sub.cstg.co.uk`` ->
``cstg.co.uk``, ``https://a.b.github.io`` -> ``b.github.io``); the result must be one of the
site's domain names, exactly. ``localhost`` and one-label subdomains ``x.localhost`` count as
``localhost`` (for development); deeper ``a.b.localhost``, IP literals, hosts that are themselves a
public suffix and hosts under no known suffix are refused. A missing ``Origin`` is refused.

The suffix list is data read from disk, so the lookup is injected as ``registrable_domain``: it
takes a lowercase ASCII host and returns its registrable domain, or ``None`` when the host is a
public suffix itself or under none.

Domain names are stored in the same form the check produces (lowercase ASCII, IDNA-encoded,
registrable domains only), so a name that could never match is refused when it is set rather than
failing requests later.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Final, TypeAlias

import idna

from uid2_operator.domain.participants import (
    refuse_bidi_controls,
    refuse_control_characters,
    refuse_invisible_characters,
    refuse_surrogates,
)
from uid2_operator.errors import CstgInvalidAppName, CstgInvalidOrigin, InvalidInput

RegistrableDomain: TypeAlias = Callable[[str], str | None]

LOCALHOST: Final = "localhost"
MAX_HOST_LENGTH: Final = 253
MAX_LABELS: Final = 127
MAX_DOMAIN_NAMES: Final = 1000
MAX_APP_NAMES: Final = 1000
MAX_APP_NAME_LENGTH: Final = 255
APP_NAME_SEPARATOR: Final = ","
"""Never in an app name: the command line separates app names with it."""
MAX_PORT: Final = 65535
MAX_PORT_DIGITS: Final = 5

_ORIGIN: Final = re.compile(r"(?i:https?)://([^/?#]*)(?:[/?#].*)?", re.DOTALL)
# A DNS label as the reference's domain parser accepts it: letters, digits, '-' and '_', not at
# either end, 1 to 63 characters.
_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def _is_hostname(host: str) -> bool:
    """Lowercase ASCII labels; the last must not start with a digit (this refuses IPv4 literals)."""
    labels = host.split(".")
    return (
        0 < len(host) <= MAX_HOST_LENGTH
        and len(labels) <= MAX_LABELS
        and all(_LABEL.fullmatch(label) for label in labels)
        and not labels[-1][0].isdigit()
    )


def origin_host(origin: str) -> str | None:
    """The lowercase host of an ``http(s)://host[:port][/...]`` origin, or ``None`` if it has no
    usable host name (user info, IPv6 literal, a port that is not 1 to 5 ASCII digits up to 65535,
    non-ASCII, malformed)."""
    match = _ORIGIN.fullmatch(origin)
    if match is None:
        return None
    authority = match.group(1)
    host, colon, port = authority.partition(":")
    # The length is checked before ``int``: a port of thousands of digits would otherwise make
    # ``int`` raise (or spend quadratic time) instead of refusing the origin.
    if (
        colon
        and port
        and (
            len(port) > MAX_PORT_DIGITS
            or not port.isascii()
            or not port.isdigit()
            or int(port) > MAX_PORT
        )
    ):
        return None
    if host.endswith("."):
        host = host[:-1]
    if not host.isascii():
        return None
    host = host.lower()
    return host if _is_hostname(host) else None


def origin_site(origin: str, registrable_domain: RegistrableDomain) -> str | None:
    """The domain name an ``Origin`` header stands for, or ``None`` when it stands for none."""
    host = origin_host(origin)
    if host is None:
        return None
    labels = host.split(".")
    if labels[-1] == LOCALHOST and len(labels) <= 2:
        return LOCALHOST
    return registrable_domain(host)


def origin_allowed(
    origin: str | None, domain_names: Iterable[str], registrable_domain: RegistrableDomain
) -> bool:
    if origin is None:
        return False
    site = origin_site(origin, registrable_domain)
    return site is not None and site in set(domain_names)


def _same_ignoring_case(left: str, right: str) -> bool:
    """Character by character, upper or lower case equal (Java ``equalsIgnoreCase``)."""
    return len(left) == len(right) and all(
        a == b or a.upper() == b.upper() or a.lower() == b.lower()
        for a, b in zip(left, right, strict=True)
    )


def app_name_allowed(app_name: str, app_names: Iterable[str]) -> bool:
    return any(_same_ignoring_case(app_name, allowed) for allowed in app_names)


def check_origin_or_app(
    *,
    origin: str | None,
    app_name: str | None,
    domain_names: Iterable[str],
    app_names: Iterable[str],
    registrable_domain: RegistrableDomain,
) -> None:
    """Raise ``CstgInvalidAppName`` or ``CstgInvalidOrigin`` (both 403) unless the request may
    come from where it says. With ``app_name`` present only the app names are consulted."""
    if app_name is not None:
        if not app_name_allowed(app_name, app_names):
            raise CstgInvalidAppName
        return
    if not origin_allowed(origin, domain_names, registrable_domain):
        raise CstgInvalidOrigin


# -------------------------------------------------------------------------- set-domains


def _refuse_invalid_a_labels(ascii_name: str) -> None:
    """IDNAError unless each ``xn--`` label of ``ascii_name`` (lowercase) is the A-label of a
    name IDNA 2008 permits, written as IDNA writes it: ``xn--zz`` decodes to nothing and
    ``xn--ab`` to control characters, so no browser sends either in ``Origin``. Other labels
    are left as they are (an underscore, which browsers accept in a host, stays allowed)."""
    for label in ascii_name.split("."):
        if label.startswith("xn--") and idna.alabel(idna.ulabel(label)).decode("ascii") != label:
            raise idna.IDNAError("not the A-label IDNA writes")


def validate_domain_name(
    text: str, registrable_domain: RegistrableDomain, *, where: str = "The domain name"
) -> str:
    """A domain name as stored: a bare registrable domain, lowercase ASCII.

    A name with non-ASCII letters is stored in the ASCII form a browser sends in ``Origin``:
    IDNA 2008 with UTS #46 mapping, non-transitional (``straße.de`` is ``xn--strae-oqa.de``, as
    browsers resolve it, never ``strasse.de``, someone else's domain, as the older IDNA 2003
    rules of Python's ``idna`` codec would have it).

    ``https://example.com``, ``example.com/path``, ``example.com:443`` and ``www.example.com``
    (not registrable: ``example.com`` is) are refused with a message saying what to enter. The
    message names the value by ``where`` (``domain_names[2]``), never repeats it: what was
    pasted there may be a credential.
    """
    cleaned = refuse_control_characters(text, where).strip()  # checked as given, not trimmed
    if not cleaned or any(ch in cleaned for ch in "/:@?#\\") or any(ch.isspace() for ch in cleaned):
        raise InvalidInput(
            f"{where} is not a bare domain name (like example.com: no scheme, path or port)"
        )
    try:
        if cleaned.isascii():
            ascii_name = cleaned.lower()
            _refuse_invalid_a_labels(ascii_name)
        else:
            ascii_name = idna.encode(cleaned, uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        raise InvalidInput(f"{where} is not a valid domain name") from None
    ascii_name = ascii_name.removesuffix(".")
    if ascii_name == LOCALHOST:
        return ascii_name
    if not _is_hostname(ascii_name):
        raise InvalidInput(f"{where} is not a valid domain name")
    registrable = registrable_domain(ascii_name)
    if registrable is None:
        raise InvalidInput(f"{where} is a public suffix or is not under any known public suffix")
    if registrable != ascii_name:
        raise InvalidInput(f"{where} is not a registrable domain; use {registrable}")
    return ascii_name


def validate_domain_names(
    names: Iterable[str], registrable_domain: RegistrableDomain
) -> tuple[str, ...]:
    """Each name validated (a refusal names its place: ``domain_names[i]``), duplicates folded,
    sorted."""
    cleaned = sorted(
        {
            validate_domain_name(name, registrable_domain, where=f"domain_names[{index}]")
            for index, name in enumerate(names)
        }
    )
    if len(cleaned) > MAX_DOMAIN_NAMES:
        raise InvalidInput(f"At most {MAX_DOMAIN_NAMES} domain names")
    return tuple(cleaned)


def validate_app_name(text: str) -> str:
    """A mobile app id (package name, bundle id or store id): 1-255 visible characters, none a
    comma, a space or a character that shows nothing (``participants.INVISIBLE_RANGES``: an id
    holding a zero-width space would list exactly as the id without it, and match no request).

    No app id holds a comma (``com.example.app``, ``123456789``), so a name with one could never
    match a request's ``app_name``: it is two ids run together, and the command line reads
    ``--app-names com.a,com.b`` as those two names. It is refused here, where every way of
    setting app names checks them, so the admin API cannot store one the command line would split.
    """
    label = "An app name"
    cleaned = refuse_control_characters(refuse_surrogates(text, label), label).strip()
    if not 1 <= len(cleaned) <= MAX_APP_NAME_LENGTH:
        raise InvalidInput(f"An app name is 1 to {MAX_APP_NAME_LENGTH} characters")
    if any(ch.isspace() for ch in cleaned):
        raise InvalidInput("An app name has no spaces")
    refuse_bidi_controls(cleaned, label)
    refuse_invisible_characters(cleaned, label)
    if APP_NAME_SEPARATOR in cleaned:
        raise InvalidInput("An app name has no commas: give each app id as a name of its own")
    return cleaned


def validate_app_names(names: Iterable[str]) -> tuple[str, ...]:
    """Each name validated; names equal ignoring case as a request's is compared with them
    (``app_name_allowed``) folded, the first kept; sorted. ``str.lower`` only groups the
    candidates: it equates names that comparison tells apart (``İ`` and ``i̇``), and folding
    those would drop a name a request may use."""
    alike: dict[str, list[str]] = {}
    for name in names:
        cleaned = validate_app_name(name)
        group = alike.setdefault(cleaned.lower(), [])
        if not any(_same_ignoring_case(cleaned, kept) for kept in group):
            group.append(cleaned)
    kept = [name for group in alike.values() for name in group]
    if len(kept) > MAX_APP_NAMES:
        raise InvalidInput(f"At most {MAX_APP_NAMES} app names")
    return tuple(sorted(kept, key=lambda name: (name.lower(), name)))
