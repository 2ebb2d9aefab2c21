"""An unknown body field or query parameter is named in its refusal only when its name is
plain: never when the name is credential text (a key's or token's tail, a client secret in
URL-safe base64 without padding), which a plain identifier can be."""

from __future__ import annotations

import base64
import random
import re

import pytest

from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import mint_admin_token, mint_api_key
from uid2_operator.domain.sealing import new_client_secret
from uid2_operator.errors import InvalidInput
from uid2_operator.web.admin_api.bodies import Field, Kind, check_fields, parse_query

PEPPER = bytes(range(1, 33))
FIELDS = (Field("name", Kind.STRING, "Name"),)
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _credential_names() -> list[str]:
    """Credential text that is also a plain identifier (what a field name may be); the same on
    every test process (a seeded source), since the names are test parameters."""
    draw = random.Random(7).randbytes  # noqa: S311 (test parameters, not secrets)
    names: list[str] = []
    while len(names) < 12:
        for text in (
            mint_api_key(Environment.LOCAL, 1001, PEPPER, draw).text.split(".")[1],
            mint_admin_token(Environment.PROD, PEPPER, draw).text.split(".")[1],
            base64.urlsafe_b64encode(new_client_secret(draw).raw).decode().rstrip("="),
        ):
            if IDENTIFIER.fullmatch(text):
                names.append(text)
    return names


def _refusal(check: object) -> str:
    with pytest.raises(InvalidInput) as refused:
        check()  # type: ignore[operator]
    return str(refused.value)


@pytest.mark.parametrize("name", _credential_names())
def test_a_credential_given_as_a_name_is_not_repeated(name: str) -> None:
    body = _refusal(lambda: check_fields({"name": "a", name: 1}, FIELDS))
    query = _refusal(lambda: parse_query([(name, "1")], FIELDS))
    for message in (body, query):
        assert name not in message
        assert "(a field with an unexpected name)" in message


def test_a_plain_unknown_name_is_repeated() -> None:
    body = _refusal(lambda: check_fields({"name": "a", "colour": 1}, FIELDS))
    assert body == "Unknown field(s): 'colour' (allowed: name)"
    query = _refusal(lambda: parse_query([("colour", "1")], FIELDS))
    assert query == "Unknown query parameter 'colour' (allowed: name)"
