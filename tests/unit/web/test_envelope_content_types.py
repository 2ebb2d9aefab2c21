"""Which request Content-Types carry the v2 envelope as base64 text (operator-api §1.6).

Only ``application/octet-stream``, exactly and without parameters, announces raw envelope bytes;
every other value, or none, means base64 text and gets a base64 ``text/plain`` answer. Clients
send the text under several of them: ``text/plain``, urllib's default for a POST body
(``application/x-www-form-urlencoded``) and ``application/json; charset=utf-8``, as some test
harnesses of the reference do. A valid sealed request under each must succeed.
"""

from __future__ import annotations

import base64
import os

import httpx
import pytest
from operator_harness import (
    World,
    world_fixture,  # noqa: F401 (fixture)
)

from uid2_operator.wire.envelope import open_response, unframe_response

GENERATE = "/v2/token/generate"
HINT = (
    " See https://unifiedid.com/docs/getting-started/gs-encryption-decryption for details on "
    "the request envelope format."
)
TEXT_CONTENT_TYPES = [
    "text/plain",
    "application/json; charset=utf-8",
    "application/json",
    "Application/JSON;charset=UTF-8",
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=UTF-8",
    # Parameters make it another value than the one that announces raw bytes.
    "application/octet-stream; charset=binary",
    None,
]


def _post(world: World, body: bytes, content_type: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {world['A'].key}"}
    if content_type is not None:
        headers["content-type"] = content_type
    return httpx.post(world.base_url + GENERATE, content=body, headers=headers, timeout=30)


@pytest.mark.parametrize("content_type", TEXT_CONTENT_TYPES)
def test_a_sealed_generate_sent_as_base64_text_succeeds(
    world: World, content_type: str | None
) -> None:
    cred = world["A"]
    nonce = os.urandom(8)
    sealed = world.envelope({"email": "content-type@example.com"}, cred, nonce=nonce)
    response = _post(world, base64.b64encode(sealed), content_type)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain"
    assert response.content.isascii()
    opened = open_response(
        unframe_response(response.content, False), secret=cred.secret_bytes, nonce=nonce
    )
    assert opened["status"] == "success"
    identity = opened["body"]
    assert identity["advertising_token"].startswith("A4")
    assert len(identity["refresh_token"]) == 388
    assert set(identity) >= {
        "identity_expires",
        "refresh_expires",
        "refresh_from",
        "refresh_response_key",
    }


@pytest.mark.parametrize("content_type", TEXT_CONTENT_TYPES)
def test_raw_envelope_bytes_under_a_text_content_type_are_not_base64(
    world: World, content_type: str | None
) -> None:
    """The same types are read as text, not as raw bytes: the raw envelope is refused."""
    sealed = world.envelope({"email": "content-type@example.com"}, world["A"])
    response = _post(world, sealed, content_type)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "status": "client_error",
        "message": "Invalid body: Body is not valid base64." + HINT,
    }
