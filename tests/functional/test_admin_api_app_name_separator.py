"""``PUT /participants/{site_id}/app-names`` refuses an app name holding a comma.

No app id (package name, bundle id, App Store id) holds a comma, and the command line reads
``--app-names com.a,com.b`` as two names; a stored ``"com.a,com.b"`` could never match a
client-side request. The route's declared pattern excludes the comma, so the body is refused with
422 while it is read: nothing changes and, like any refusal of a declaration, nothing is audited.
The service refuses the same name by the same rule when called without the admin API.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from admin_api_harness import PREFIX, AdminEnv, admin_env_fixture

from uid2_operator.domain.roles import AdminRole
from uid2_operator.errors import InvalidInput
from uid2_operator.services.context import SYSTEM

pytestmark = pytest.mark.functional

env = admin_env_fixture()

KEPT = ["com.example.app", "123456789"]
COMMA_BODIES = [
    pytest.param(["com.a,com.b"], id="two-ids-in-one"),
    pytest.param(["com.example.app", "com.a,com.b"], id="one-of-several"),
    pytest.param([" com.a,com.b "], id="padded"),
    pytest.param([","], id="comma-alone"),
    pytest.param(["com.a,"], id="trailing-comma"),
]


def _site_with_app_names(env: AdminEnv) -> int:
    body = {"name": "Publisher", "type": "publisher", "roles": ["GENERATOR"]}
    created = env.call("POST", "/participants", json=body)
    assert created.status_code == 201, created.text
    site: int = created.json()["site_id"]
    placed = env.call("PUT", f"/participants/{site}/app-names", json={"app_names": KEPT})
    assert placed.status_code == 200, placed.text
    return site


def _origins(env: AdminEnv, site: int) -> Any:
    shown = env.call("GET", f"/participants/{site}/origins", AdminRole.READ_ONLY)
    assert shown.status_code == 200
    return shown.json()


@pytest.mark.parametrize("names", COMMA_BODIES)
def test_an_app_name_with_a_comma_is_refused_and_changes_nothing(
    env: AdminEnv, names: list[str]
) -> None:
    site = _site_with_app_names(env)
    before = _origins(env, site)
    mark = env.mark()

    refused = env.call("PUT", f"/participants/{site}/app-names", json={"app_names": names})

    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "invalid_input"
    assert "app_names" in error["message"]
    assert "commas" in error["message"]
    assert _origins(env, site) == before
    assert sorted(before["app_names"]) == sorted(KEPT)
    assert env.refusals_since(mark) == []  # refused as declared: not audited, nothing moved


def test_the_documented_pattern_refuses_a_comma(env: AdminEnv) -> None:
    document = env.client.request("GET", PREFIX + "/openapi.json").json()
    put = document["paths"][PREFIX + "/participants/{site_id}/app-names"]["put"]
    schema = put["requestBody"]["content"]["application/json"]["schema"]
    items = schema["properties"]["app_names"]["items"]
    assert "comma" in schema["properties"]["app_names"]["description"]
    pattern = items["pattern"]
    assert re.search(pattern, "com.a,com.b") is None
    assert re.search(pattern, ",") is None
    for name in KEPT:
        assert re.search(pattern, name) is not None


def test_ordinary_app_ids_are_still_stored(env: AdminEnv) -> None:
    site = _site_with_app_names(env)
    names = ["com.example.ios", "org.example.app_beta-2", "987654321"]
    stored = env.call("PUT", f"/participants/{site}/app-names", json={"app_names": names})
    assert stored.status_code == 200, stored.text
    assert stored.json()["app_names"] == sorted(names, key=str.lower)


def test_the_service_refuses_a_comma_by_the_same_rule(env: AdminEnv) -> None:
    site = _site_with_app_names(env)
    before = _origins(env, site)
    mark = env.mark()
    with pytest.raises(InvalidInput, match="no commas"):
        env.services.sharing.set_app_names(SYSTEM, site, ["com.a,com.b"])
    assert _origins(env, site) == before
    assert env.refusals_since(mark) == []
