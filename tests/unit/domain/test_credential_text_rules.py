"""Free text (names, reasons, contacts) refuses a pasted API key, admin token or client secret."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from uid2_operator.domain.audit import redact
from uid2_operator.domain.credentials import ApiKey
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import mint_admin_token, mint_api_key
from uid2_operator.domain.lifecycle import rename_key, revoke_key
from uid2_operator.domain.participants import (
    refuse_credential_text,
    validate_contacts,
    validate_name,
)
from uid2_operator.domain.sealing import new_client_secret
from uid2_operator.errors import InvalidInput
from uid2_operator.wire.aead import RandomBytes

MakeKey = Callable[..., tuple[str, ApiKey]]
PEPPER = bytes(range(1, 33))
T0 = 1_700_000_000_000


def _credentials(random: RandomBytes) -> list[str]:
    key = mint_api_key(Environment.LOCAL, 1001, PEPPER, random).text
    token = mint_admin_token(Environment.LOCAL, PEPPER, random).text
    secret = new_client_secret(random).text
    return [key, token, secret]


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


def test_longer_base64_such_as_a_public_key_is_not_taken_for_a_secret() -> None:
    public_key = "UID2-X-L-" + "A" * 60 + "Bw=="
    assert refuse_credential_text(public_key, "contact") == public_key


def test_the_audit_redacts_what_it_did_before(random: RandomBytes) -> None:
    key, token, secret = _credentials(random)
    assert redact({"a": key, "b": token, "c": secret, "d": "web"}) == {"c": secret, "d": "web"}
