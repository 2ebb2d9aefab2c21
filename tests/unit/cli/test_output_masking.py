"""Error text the CLI prints masks credential text by its shape, whatever its characters.

click repeats a refused option value back ("'...' is not a valid integer"), so whatever was pasted
there is masked: a key's tail on its own, a client secret unpadded or in URL-safe base64, even
when (as a random draw sometimes is) it holds no digit and so does not look random enough for the
catch-all mask.
"""

from __future__ import annotations

import base64
import json
import random as stdlib_random
from collections.abc import Callable

import pytest

from uid2_operator.cli.output import MAX_MESSAGE_LENGTH, print_json_error, safe_message
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import RANDOM_LENGTH, mint_api_key
from uid2_operator.domain.sealing import ClientSecret, new_client_secret

PEPPER = bytes(range(1, 33))


def _first(what: str, draw: Callable[[Callable[[int], bytes]], str], needs: str = "") -> str:
    """The first text ``draw`` makes, from a seeded stream, that holds no digit (and, if
    ``needs`` names some, at least one of those characters)."""
    source = stdlib_random.Random(what).randbytes  # noqa: S311 (reproducible test data)
    for _ in range(50_000):
        text = draw(source)
        if not any(c.isdigit() for c in text) and (not needs or any(c in needs for c in text)):
            return text
    raise AssertionError(f"no draw gave {what} without a digit")


def _tail(source: Callable[[int], bytes]) -> str:
    return mint_api_key(Environment.PROD, 1001, PEPPER, source).text.split(".")[1]


def _secret(source: Callable[[int], bytes]) -> ClientSecret:
    return new_client_secret(source)


TAIL = _first("a key tail", _tail)
STANDARD = _first("a secret", lambda s: _secret(s).text, needs="+/").rstrip("=")
URL_SAFE = _first(
    "a URL-safe secret",
    lambda s: base64.urlsafe_b64encode(_secret(s).raw).decode("ascii"),
    needs="-_",
)
PASTED = {
    "key tail": TAIL,
    "cut key tail": TAIL[:RANDOM_LENGTH],
    "key id and tail split by a space": f"UID2-C-P-1001-abcDEF {TAIL}",
    "unpadded secret": STANDARD,
    "URL-safe secret": URL_SAFE,
    "unpadded URL-safe secret": URL_SAFE.rstrip("="),
}


@pytest.mark.parametrize("form", PASTED)
def test_credential_text_without_a_digit_is_masked(form: str) -> None:
    pasted = PASTED[form]
    shown = safe_message(f"Invalid value for '--site-id': '{pasted}' is not a valid integer.")
    assert "<redacted>" in shown
    assert pasted.split(" ")[-1].rstrip("=")[:RANDOM_LENGTH] not in shown


@pytest.mark.parametrize(
    "message",
    [
        "Invalid value for '--site-id': 'abc' is not a valid integer.",
        "No participant 1001",
        "The data directory /var/lib/uid2-operator/data-2024/keyring.json is in use",
        "contacts must be e-mail addresses (partnerships.team+uid2@europe.example-publisher.co.uk)",
        "key UID2-C-L-1001-abcDEF is revoked",
    ],
)
def test_ordinary_messages_are_unchanged(message: str) -> None:
    assert safe_message(message) == message


def test_a_long_message_keeps_its_end_where_the_reason_is() -> None:
    # A long data directory fills the start of a store error: the reason comes last.
    path = "/srv/" + "/".join(f"customer-{n:03d}" for n in range(30)) + "/data/uid2.db"
    message = f"The store at sqlite:///{path} is unavailable: database or disk is full"
    shown = safe_message(message)
    assert len(message) > MAX_MESSAGE_LENGTH
    assert len(shown) == MAX_MESSAGE_LENGTH
    assert shown.startswith("The store at sqlite:////srv/customer-000/")
    assert shown.endswith("/data/uid2.db is unavailable: database or disk is full")
    assert " ... " in shown


@pytest.mark.parametrize("brand", ["UID2", "EUID"])
def test_a_credential_with_a_short_tail_is_masked_whole(brand: str) -> None:
    # Too short a tail for the shape masks: the credential pattern takes the key id and all after.
    assert safe_message(f"bad key {brand}-C-L-123-abCD12.xyz/kj here") == "bad key <redacted> here"


def test_a_long_random_looking_run_is_masked() -> None:
    assert safe_message("secret 9fA3kLm2Qx7Rt5Vw8Yz1Bc4De6Fg0Hj2 end") == "secret <redacted> end"


def test_a_message_is_one_line() -> None:
    assert safe_message("first\nsecond\r\n\tthird  fourth") == "first second third fourth"


def test_a_json_error_document_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    document = {"error": {"code": "invalid_input", "message": "key_id is not a valid id"}}
    print_json_error(document)
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert json.loads(out) == document
