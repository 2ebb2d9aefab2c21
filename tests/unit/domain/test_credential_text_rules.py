"""Free text (names, reasons, contacts) refuses a pasted API key, admin token or client secret,
in any form that gives the secret away (a key's tail alone, a secret unpadded or URL-safe), through
the domain rules and through the service input checks that apply them."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from uid2_operator.domain.audit import redact
from uid2_operator.domain.credentials import ApiKey
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import mint_admin_token, mint_api_key
from uid2_operator.domain.lifecycle import rename_key, revoke_key
from uid2_operator.domain.origins import validate_app_names, validate_domain_names
from uid2_operator.domain.participants import (
    refuse_credential_text,
    validate_contacts,
    validate_name,
)
from uid2_operator.domain.sealing import new_client_secret
from uid2_operator.errors import InvalidInput
from uid2_operator.services import inputs
from uid2_operator.services.public_suffix import registrable_domain_lookup
from uid2_operator.wire.aead import RandomBytes

MakeKey = Callable[..., tuple[str, ApiKey]]
PEPPER = bytes(range(1, 33))
T0 = 1_700_000_000_000


def _credentials(random: RandomBytes) -> list[str]:
    key = mint_api_key(Environment.LOCAL, 1001, PEPPER, random).text
    token = mint_admin_token(Environment.LOCAL, PEPPER, random).text
    secret = new_client_secret(random).text
    return [key, token, secret]


def _leaked_forms(random: RandomBytes) -> list[str]:
    """What a pasted credential may look like besides its full text: a key's or token's tail on
    its own (the key id is public), cut, or split from the id by a space; a client secret without
    its padding or in URL-safe base64."""
    forms: list[str] = []
    for _ in range(3):
        for minted in (
            mint_api_key(Environment.LOCAL, 1001, PEPPER, random),
            mint_admin_token(Environment.PROD, PEPPER, random),
        ):
            key_id, tail = minted.text.split(".")
            forms += [tail, tail[:33], f"{key_id} {tail}"]
        raw = new_client_secret(random).raw
        standard = base64.b64encode(raw).decode()
        url_safe = base64.urlsafe_b64encode(raw).decode()
        forms += [standard.rstrip("="), url_safe, url_safe.rstrip("=")]
    return forms


def _refused(check: Callable[[], object], credential: str, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check()
    message = str(caught.value)
    assert f"{field} looks like a credential; never paste one here" in message
    assert credential not in message
    assert credential[-12:] not in message


def test_names_and_reasons_refuse_credential_text(random: RandomBytes) -> None:
    for credential in _credentials(random):
        _refused(lambda c=credential: validate_name(c), credential, "name")
        _refused(lambda c=credential: validate_name(f"web {c} copy"), credential, "name")
        _refused(lambda c=credential: validate_name(f" {c}\n", "reason"), credential, "reason")


def test_contacts_refuse_credential_text(random: RandomBytes) -> None:
    for credential in _credentials(random):
        _refused(
            lambda c=credential: validate_contacts(["ops@example.com", f"{c}@example.com"]),
            credential,
            "contacts",
        )


def test_key_changes_refuse_credential_text(random: RandomBytes, make_key: MakeKey) -> None:
    _, key = make_key()
    for credential in _credentials(random):
        _refused(lambda c=credential: rename_key(key, c, T0), credential, "name")
        _refused(
            lambda c=credential: revoke_key(key, now_ms=T0, by="a", reason=f"leaked: {c}"),
            credential,
            "reason",
        )


def test_free_text_refuses_every_form_that_gives_a_secret_away(
    random: RandomBytes, make_key: MakeKey
) -> None:
    _, key = make_key()
    for leaked in _leaked_forms(random):
        _refused(lambda c=leaked: validate_name(c), leaked, "name")
        _refused(lambda c=leaked: validate_name(f"old one: {c} (rotated)"), leaked, "name")
        _refused(lambda c=leaked: validate_contacts([f"{c}@example.com"]), leaked, "contacts")
        _refused(lambda c=leaked: rename_key(key, f"web {c}", T0), leaked, "name")
        _refused(
            lambda c=leaked: revoke_key(key, now_ms=T0, by="a", reason=f"leaked: {c}"),
            leaked,
            "reason",
        )


def test_the_service_inputs_refuse_every_form_that_gives_a_secret_away(
    random: RandomBytes,
) -> None:
    """What the services check every name, reason, contact and keypair field with."""
    for leaked in _leaked_forms(random):
        _refused(lambda c=leaked: inputs.text(f"see {c}", "reason"), leaked, "reason")
        _refused(lambda c=leaked: inputs.optional_text(c, "name"), leaked, "name")
        _refused(
            lambda c=leaked: inputs.names(["ops@example.com", c], "contacts", max_length=1000),
            leaked,
            "an entry of contacts",
        )


def test_ordinary_values_pass_the_service_inputs_and_their_own_rules() -> None:
    """Human names, long e-mail addresses, domain names and reverse-DNS app ids go through
    ``inputs`` (as the services call it) and their own rules unchanged."""
    for name in [
        "María-José O'Connor-Smith",
        "The Example Publishing Company International Ltd. (EMEA)",
        "prebid server, EU west, primary (2024-05)",
    ]:
        assert validate_name(inputs.text(name, "name")) == name
    contacts = [
        "partnerships.and.integrations-team+uid2-alerts@europe.example-publisher.co.uk",
        "christopher.alexander.montgomery-wellington@mail.example-advertising-group.com",
    ]
    assert validate_contacts(inputs.names(contacts, "contacts", max_length=1000)) == tuple(contacts)
    domains = ["example.co.uk", "example-publisher-with-a-long-name.com", "xn--strae-oqa.de"]
    cleaned = [inputs.text(d, "each of domain_names", max_length=255) for d in domains]
    assert validate_domain_names(cleaned, registrable_domain_lookup()) == tuple(sorted(domains))
    apps = [
        "com.example.app",
        "com.example.publisher.ios.production.release",
        "org.example.very_long_application_name.beta",
        "1234567890",
    ]
    cleaned = [inputs.text(a, "each of app_names", max_length=257) for a in apps]
    assert set(validate_app_names(cleaned)) == set(apps)


@pytest.mark.parametrize(
    "name",
    [
        "web-prod.v2",
        "Example Publisher 2024",
        "api.key-01.eu",
        "replaces UID2-C-L-1001-abcDEF",  # a key id is public
    ],
)
def test_ordinary_names_still_work(name: str) -> None:
    assert validate_name(name) == name
    assert refuse_credential_text(name, "name") == name


def test_ordinary_contacts_still_work() -> None:
    contacts = ["ops.team-1@example.co.uk", "a.b+tag@example.com"]
    assert validate_contacts(contacts) == tuple(contacts)


def test_longer_base64_is_not_taken_for_a_secret() -> None:
    """Base64 longer than a secret (a hash, a public key) is not a secret; only a run of 33 or
    more letters and digits inside it would count, as a key tail."""
    longer = "UID2-X-L-" + "Abc1+/x9" * 8 + "Bw=="
    assert refuse_credential_text(longer, "contact") == longer


def test_the_audit_redacts_what_it_did_before(random: RandomBytes) -> None:
    key, token, secret = _credentials(random)
    assert redact({"a": key, "b": token, "c": secret, "d": "web"}) == {"c": secret, "d": "web"}


def test_a_long_camel_case_word_is_refused_with_a_way_out() -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_name("InternationalBusinessMachinesCorp")
    assert "write such a word in one case, or break it with a space" in str(refused.value)
    assert validate_name("internationalbusinessmachinescorp") == "internationalbusinessmachinescorp"
    assert validate_name("International Business Machines Corp") == (
        "International Business Machines Corp"
    )
