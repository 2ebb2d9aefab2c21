"""The admin API's sharing, keypair and origin routes: bodies checked, responses as documented."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from admin_api_harness import PREFIX, AdminEnv, open_admin_env, schema_errors, sqlite_settings

from uid2_operator.domain.roles import AdminRole

pytestmark = pytest.mark.functional


@pytest.fixture
def env(tmp_path: Path) -> Iterator[AdminEnv]:
    with open_admin_env(sqlite_settings(tmp_path)) as opened:
        yield opened


def _documented(env: AdminEnv, response: httpx.Response, schema: str) -> Any:
    document = env.client.request("GET", PREFIX + "/openapi.json").json()
    ref = {"$ref": f"#/components/schemas/{schema}"}
    assert schema_errors(document, ref, response.json(), schema) == []
    return response.json()


def _site(env: AdminEnv, name: str) -> int:
    body = {"name": name, "type": "publisher", "roles": ["SHARER"]}
    response = env.call("POST", "/participants", json=body)
    assert response.status_code == 201
    site: int = response.json()["site_id"]
    return site


def test_sharing_routes(env: AdminEnv) -> None:
    a, b = _site(env, "A"), _site(env, "B")
    path = f"/participants/{a}/sharing"
    changed = env.call("PUT", path, json={"mode": "list", "sites": [b], "rotate": False})
    assert changed.status_code == 200, changed.text
    body = _documented(env, changed, "Sharing")
    assert (body["mode"], body["sites"], body["rotated_key_ids"]) == ("list", [b], [])
    shown = env.call("GET", path, AdminRole.READ_ONLY)
    assert _documented(env, shown, "Sharing")["sites"] == [b]
    mark = env.mark()
    for bad in (
        {"mode": "everyone"},
        {"mode": "list", "sites": ["1002"]},
        {"mode": "list", "sites": [True]},
        {"mode": "list", "sites": [b], "rotate": "yes"},
        {"mode": "list", "sites": [4242]},
        {"mode": "owner_only", "sites": [b]},
        {"sites": [b]},
    ):
        response = env.call("PUT", path, json=bad)
        assert response.status_code == 422, (bad, response.text)
    assert (
        env.call("PUT", "/participants/4242/sharing", json={"mode": "owner_only"}).status_code
        == 404
    )
    # Refused by the service (not by the body's declarations, its if/then/else rule included):
    # a ``failed`` event each, for the site that names no participant and the unknown owner.
    assert [(e.outcome.value, e.after) for e in env.refusals_since(mark)] == [
        ("failed", {"code": "invalid_input"}),
        ("failed", {"code": "not_found"}),
    ]
    mark = env.mark()
    assert (
        env.call("PUT", path, AdminRole.READ_ONLY, json={"mode": "owner_only"}).status_code == 403
    )
    [denied] = env.refusals_since(mark)
    assert (denied.outcome.value, denied.action, denied.target_id) == (
        "denied",
        "sharing.set",
        str(a),
    )


def test_keypair_and_origin_routes(env: AdminEnv) -> None:
    a = _site(env, "A")
    created = env.call(
        "POST", "/keypairs", AdminRole.MAINTAINER, json={"site_id": a, "name": "web"}
    )
    assert created.status_code == 201
    pair = _documented(env, created, "Keypair")
    assert pair["public_key"].startswith("UID2-X-L-")
    ident = pair["subscription_id"]
    listed = env.call("GET", "/keypairs", AdminRole.READ_ONLY, params={"site_id": a})
    assert [k["subscription_id"] for k in _documented(env, listed, "KeypairList")["keypairs"]] == [
        ident
    ]
    disabled = env.call("POST", f"/keypairs/{ident}/disable", json={})
    assert _documented(env, disabled, "Keypair")["disabled"] is True
    assert env.call("POST", f"/keypairs/{ident}/disable", json={}).status_code == 409
    assert env.call("POST", f"/keypairs/{ident}/enable", json={}).status_code == 200
    assert env.call("DELETE", f"/keypairs/{ident}", json={}).status_code == 200
    assert env.call("GET", f"/keypairs/{ident}").status_code == 404
    assert env.call("POST", "/keypairs", json={"site_id": 4242}).status_code == 404

    domains = env.call(
        "PUT", f"/participants/{a}/domain-names", json={"domain_names": ["Example.com"]}
    )
    assert _documented(env, domains, "SiteOrigins")["domain_names"] == ["example.com"]
    apps = env.call("PUT", f"/participants/{a}/app-names", json={"app_names": ["com.x.App"]})
    assert _documented(env, apps, "SiteOrigins")["app_names"] == ["com.x.App"]
    origins = env.call("GET", f"/participants/{a}/origins", AdminRole.READ_ONLY)
    assert _documented(env, origins, "SiteOrigins") == {
        "site_id": a,
        "domain_names": ["example.com"],
        "app_names": ["com.x.App"],
    }
    for bad in (["https://example.com"], ["www.example.com"], "example.com", [1]):
        response = env.call("PUT", f"/participants/{a}/domain-names", json={"domain_names": bad})
        assert response.status_code == 422, bad
