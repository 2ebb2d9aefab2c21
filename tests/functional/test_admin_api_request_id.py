"""A credential sent as ``X-Request-ID`` never reaches the audit trail, the response or the log.

The admin API writes the request id into hash-chained audit rows (which cannot be scrubbed later
without breaking ``audit verify``) and into its log lines, and echoes it back. A caller who puts a
real API key, admin token, key tail or client secret there by mistake gets a freshly drawn id
instead, on a write that succeeds, on one that is refused, and on a request without a valid token.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest
from admin_api_harness import PREFIX, AdminEnv, admin_env_fixture

from uid2_operator.domain.roles import AdminRole

MAINTAINER, READER = AdminRole.MAINTAINER, AdminRole.READ_ONLY
ORDINARY_ID = "trace-42:a.b_c"


env = admin_env_fixture()


def _issue_key(env: AdminEnv) -> tuple[str, dict[str, Any]]:
    site = env.call(
        "POST",
        "/participants",
        MAINTAINER,
        json={"name": "Source", "type": "publisher", "roles": ["GENERATOR"]},
    )
    assert site.status_code == 201, site.text
    key = env.call(
        "POST",
        "/keys",
        MAINTAINER,
        json={"site_id": site.json()["site_id"], "name": "web", "roles": ["GENERATOR"]},
    )
    assert key.status_code == 201, key.text
    issued: dict[str, Any] = key.json()
    return site.json()["site_id"], issued


def _pasted(env: AdminEnv, issued: dict[str, Any]) -> dict[str, str]:
    """Credential text made only of characters a request id may hold ([A-Za-z0-9._:-])."""
    key, token = issued["key"], env.tokens[AdminRole.SUPER_USER]
    url_safe = base64.urlsafe_b64encode(base64.b64decode(issued["secret"])).decode()
    return {
        "api key": key,
        "api key tail": key.split(".")[1],
        "admin token": token,
        "admin token tail": token.split(".")[1],
        "client secret, URL-safe, unpadded": url_safe.rstrip("="),
    }


def _secret_parts(text: str) -> list[str]:
    return [text, text.rsplit(".", maxsplit=1)[-1]]


def test_a_credential_as_request_id_is_replaced_and_never_recorded(
    env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    site_id, issued = _issue_key(env)
    pasted = _pasted(env, issued)
    responses = []
    for n, (form, credential) in enumerate(pasted.items()):
        headers = {"X-Request-ID": credential}
        # A write that succeeds, a write that is refused (403, recorded as denied), and a
        # request without a valid token (401, logged only).
        renamed = env.call(
            "POST", f"/keys/{issued['key_id']}/rename", json={"name": f"web-{n}"}, headers=headers
        )
        assert renamed.status_code == 200, (form, renamed.text)
        denied = env.call(
            "POST",
            "/keys",
            READER,
            json={"site_id": site_id, "name": "x", "roles": ["GENERATOR"]},
            headers=headers,
        )
        assert denied.status_code == 403, form
        anonymous = env.client.request("POST", PREFIX + "/participants", headers=headers, json={})
        assert anonymous.status_code == 401, form
        responses += [renamed, denied, anonymous]
    kept = env.call(
        "POST",
        f"/keys/{issued['key_id']}/rename",
        json={"name": "web-last"},
        headers={"X-Request-ID": ORDINARY_ID},
    )
    assert kept.headers["x-request-id"] == ORDINARY_ID

    listed = env.call("GET", "/audit", READER, params={"limit": 1000})
    assert listed.status_code == 200
    events = listed.json()["events"]
    request_ids = [e["request_id"] for e in events]
    assert ORDINARY_ID in request_ids  # the trail does keep a caller's ordinary id
    assert [e["action"] for e in events].count("key.rename") == len(pasted) + 1
    drawn = [r.headers["x-request-id"] for r in responses]
    assert all(len(d) == 32 and d not in pasted.values() for d in drawn)
    assert len(set(drawn)) == len(drawn)  # each request got its own fresh id
    for credential in pasted.values():
        for part in _secret_parts(credential):
            assert part not in listed.text
            assert part not in repr(env.audit_events())
            assert part not in caplog.text
            for response in responses:
                assert part not in str(response.headers)
    verdict = env.call("POST", "/audit/verify")
    assert verdict.json()["ok"] is True
