"""Only a zero-length request body means "no body" on the admin API. A body of whitespace only is
a body: sent as anything but ``application/json`` it is 415, and as JSON it does not decode, so it
is 400 ``malformed_body`` with the message any other body that is not JSON gets. Real services on
a real store, driven over ASGI.
"""

from __future__ import annotations

from typing import Any

import pytest
from admin_api_harness import AdminEnv, admin_env_fixture

pytestmark = pytest.mark.functional

JSON_TYPE = {"Content-Type": "application/json"}
BLANK_BODIES = [b"\t", b" ", b"  \n", b"\r\n", b"\n\t \r"]


env = admin_env_fixture()


def _keypair(env: AdminEnv) -> str:
    site = env.call("POST", "/participants", json={"name": "P", "type": "publisher"})
    assert site.status_code == 201, site.text
    created = env.call("POST", "/keypairs", json={"site_id": site.json()["site_id"]})
    assert created.status_code == 201, created.text
    ident: str = created.json()["subscription_id"]
    return ident


def _error(response: Any) -> tuple[int, str, str]:
    error = response.json()["error"]
    return response.status_code, error["code"], error["message"]


def _not_json_message(env: AdminEnv, path: str) -> str:
    response = env.call("POST", path, content=b"{", headers=JSON_TYPE)
    status, code, message = _error(response)
    assert (status, code) == (400, "malformed_body")
    return message


@pytest.mark.parametrize("body", BLANK_BODIES, ids=repr)
def test_a_blank_json_body_is_malformed_and_changes_nothing(env: AdminEnv, body: bytes) -> None:
    ident = _keypair(env)
    path = f"/keypairs/{ident}/disable"
    expected = _not_json_message(env, path)
    mark = env.mark()

    response = env.call("POST", path, content=body, headers=JSON_TYPE)

    assert _error(response) == (400, "malformed_body", expected)
    assert env.refusals_since(mark) == []
    assert env.call("GET", f"/keypairs/{ident}").json()["disabled"] is False


@pytest.mark.parametrize("media_type", ["text/plain", "application/xml", None])
def test_a_blank_body_of_another_media_type_is_415(env: AdminEnv, media_type: str | None) -> None:
    ident = _keypair(env)
    headers = {} if media_type is None else {"Content-Type": media_type}
    mark = env.mark()

    response = env.call("POST", f"/keypairs/{ident}/disable", content=b"\t", headers=headers)

    assert _error(response)[:2] == (415, "unsupported_media_type")
    assert env.refusals_since(mark) == []
    assert env.call("GET", f"/keypairs/{ident}").json()["disabled"] is False


def test_a_blank_body_with_required_fields_is_malformed_not_missing_fields(env: AdminEnv) -> None:
    expected = _not_json_message(env, "/participants")
    mark = env.mark()

    response = env.call("POST", "/participants", content=b" ", headers=JSON_TYPE)

    assert _error(response) == (400, "malformed_body", expected)
    assert env.refusals_since(mark) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="no body, no content type"),
        pytest.param({"content": b"", "headers": JSON_TYPE}, id="zero-length json"),
        pytest.param({"content": b"", "headers": {"Content-Type": "text/plain"}}, id="as text"),
        pytest.param({"content": b" {}\r\n", "headers": JSON_TYPE}, id="object among spaces"),
    ],
)
def test_no_body_and_json_among_whitespace_are_still_accepted(
    env: AdminEnv, kwargs: dict[str, Any]
) -> None:
    ident = _keypair(env)

    response = env.call("POST", f"/keypairs/{ident}/disable", **kwargs)

    assert response.status_code == 200, response.text
    assert response.json()["disabled"] is True
