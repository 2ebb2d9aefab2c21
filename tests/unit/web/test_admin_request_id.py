"""The admin API keeps a caller's request id only when it holds no credential text.

The id is written to log lines and to hash-chained audit rows, which cannot be scrubbed later, so
a key, token, key tail or client secret sent as ``X-Request-ID`` by mistake must be replaced.
"""

from __future__ import annotations

import base64
import hashlib
import random as stdlib_random

import pytest

from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import mint_admin_token, mint_api_key
from uid2_operator.domain.sealing import new_client_secret
from uid2_operator.web.admin_api.request_context import accepted_request_id, request_id_source

PEPPER = bytes(range(1, 33))


def _random(seed: int) -> stdlib_random.Random:
    return stdlib_random.Random(seed)  # noqa: S311 (reproducible test data, not secrets)


def _credential_ids() -> dict[str, str]:
    """Credential text made only of characters a request id may hold ([A-Za-z0-9._:-])."""
    ids: dict[str, str] = {}
    for seed in range(5):
        draw = _random(seed).randbytes
        for kind, minted in (
            ("key", mint_api_key(Environment.INTEG, 1001, PEPPER, draw)),
            ("token", mint_admin_token(Environment.PROD, PEPPER, draw)),
        ):
            key_id, tail = minted.text.split(".")
            ids[f"{kind} {seed}"] = minted.text
            ids[f"{kind} {seed} tail"] = tail
            ids[f"{kind} {seed} cut tail"] = tail[:33]
            ids[f"{kind} {seed} id:tail"] = f"{key_id}:{tail}"
            ids[f"{kind} {seed} prefixed tail"] = f"req-{tail}"
        url_safe = base64.urlsafe_b64encode(new_client_secret(draw).raw).decode().rstrip("=")
        ids[f"secret {seed}"] = url_safe
        ids[f"secret {seed} prefixed"] = f"trace:{url_safe}"
    return ids


CREDENTIAL_IDS = _credential_ids()


@pytest.mark.parametrize("case", CREDENTIAL_IDS)
def test_credential_text_is_never_kept_as_a_request_id(case: str) -> None:
    assert accepted_request_id(CREDENTIAL_IDS[case]) is None


@pytest.mark.parametrize(
    "presented",
    [
        "flow-0001",
        "trace-42:a.b_c",
        "3f2a9c1e-7b4d-4e8a-9f0c-2d6b8a1e5c3f",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # a W3C traceparent
        "UID2-C-L-1001-abcDEF",  # a key id is public
        hashlib.sha256(b"trace").hexdigest(),  # one letter case: not random base62
        "req." + ".".join(["segment-0123456789"] * 6),
        request_id_source(_random(7).randbytes)(),  # what the API draws itself
    ],
)
def test_ordinary_request_ids_are_kept(presented: str) -> None:
    assert len(presented) <= 128
    assert accepted_request_id(presented) == presented


@pytest.mark.parametrize("presented", [None, "", "has spaces", "a" * 129, "tab\there", "é"])
def test_unsafe_or_missing_request_ids_are_still_replaced(presented: str | None) -> None:
    assert accepted_request_id(presented) is None
