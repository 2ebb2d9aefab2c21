"""``POST /admin/api/keys/{key_id}/retire-now`` on real services and a real SQLite store.

A MAINTAINER (or SUPER_USER) ends a rotated key's grace at once: the answer is the key, the old
key stops resolving and its successor keeps working. READ_ONLY is refused; a key never rotated or
already retired is a 409, an unknown key a 404; a refusal changes nothing but the audit trail,
which gains one ``denied`` or ``failed`` event.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from admin_api_harness import PREFIX, AdminEnv, open_admin_env, schema_errors, sqlite_settings

from uid2_operator.domain.roles import AdminRole
from uid2_operator.errors import CredentialRejected

SUPER, MAINTAINER, READER = AdminRole.SUPER_USER, AdminRole.MAINTAINER, AdminRole.READ_ONLY
DAY_MS = 86_400_000


@pytest.fixture
def env(tmp_path: Path) -> Iterator[AdminEnv]:
    with open_admin_env(sqlite_settings(tmp_path)) as opened:
        yield opened


def _rotated(env: AdminEnv, grace_days: int = 7) -> tuple[dict[str, Any], dict[str, Any]]:
    site = env.call(
        "POST", "/participants", json={"name": "P", "type": "publisher", "roles": ["GENERATOR"]}
    ).json()["site_id"]
    old = env.call("POST", "/keys", json={"site_id": site, "name": "k", "roles": ["GENERATOR"]})
    assert old.status_code == 201, old.text
    new = env.call("POST", f"/keys/{old.json()['key_id']}/rotate", json={"grace_days": grace_days})
    assert new.status_code == 201, new.text
    return old.json(), new.json()


def _refused(env: AdminEnv, key_id: str, role: AdminRole, status: int, code: str) -> str:
    mark = env.mark()
    response = env.call("POST", f"/keys/{key_id}/retire-now", role)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    [event] = env.refusals_since(mark)
    assert (event.action, event.target_type) == ("key.retire_now", "api_key")
    assert event.actor == f"admin:{env.token_ids[role]}"
    assert event.target_id == ("" if "." in key_id else key_id)
    if status == 403:
        assert (event.outcome.value, event.after) == ("denied", None)
    else:
        assert (event.outcome.value, event.after) == ("failed", {"code": code})
    message: str = response.json()["error"]["message"]
    return message


def test_a_maintainer_retires_a_rotated_key_now(env: AdminEnv) -> None:
    old, new = _rotated(env)
    env.clock.advance(DAY_MS)
    credentials = env.services.credentials
    assert credentials.resolve_client(old["key"]).key.key_id == old["key_id"]
    _refused(env, old["key_id"], READER, 403, "permission_denied")

    response = env.call("POST", f"/keys/{old['key_id']}/retire-now", MAINTAINER)

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    document = env.client.request("GET", PREFIX + "/openapi.json").json()
    ref = {"$ref": "#/components/schemas/Key"}
    assert schema_errors(document, ref, response.json(), "Key") == []
    body = response.json()
    assert (body["key_id"], body["rotated_to"]) == (old["key_id"], new["key_id"])
    assert body["retires_at_ms"] == env.clock.now_ms()
    assert "key" not in body
    assert "secret" not in body
    with pytest.raises(CredentialRejected, match="key_retired"):
        credentials.resolve_client(old["key"])
    assert credentials.resolve_client(new["key"]).key.key_id == new["key_id"]
    events = env.call("GET", "/audit", READER, params={"action": "key.retire_now"}).json()
    assert [(e["target_id"], e["actor"], e["outcome"]) for e in events["events"]] == [
        (old["key_id"], f"admin:{env.token_ids[READER]}", "denied"),
        (old["key_id"], f"admin:{env.token_ids[MAINTAINER]}", "success"),
    ]

    again = _refused(env, old["key_id"], SUPER, 409, "invalid_transition")
    assert "already retired" in again


def test_refusals_are_404_and_409_and_change_nothing(env: AdminEnv) -> None:
    old, new = _rotated(env, grace_days=0)
    assert "already retired" in _refused(env, old["key_id"], SUPER, 409, "invalid_transition")
    never = _refused(env, new["key_id"], MAINTAINER, 409, "invalid_transition")
    assert "has not been rotated" in never
    assert _refused(env, "UID2-C-L-3-AAAAAA", MAINTAINER, 404, "not_found")
    mark = env.mark()
    pasted = env.call("POST", f"/keys/{new['key']}/retire-now", MAINTAINER)
    # Not a key id: refused at the edge, as a body field of the wrong shape is, and not audited.
    assert pasted.status_code == 422, pasted.text
    assert pasted.json()["error"]["code"] == "invalid_input"
    assert new["key"].split(".", 1)[1] not in pasted.text
    assert env.refusals_since(mark) == []
    as_body = env.call("POST", f"/keys/{new['key_id']}/retire-now", json={"grace_days": 1})
    assert as_body.status_code == 422
    assert env.services.credentials.resolve_client(new["key"]).key.key_id == new["key_id"]


def test_the_route_is_in_the_openapi_document(env: AdminEnv) -> None:
    document = env.client.request("GET", PREFIX + "/openapi.json").json()
    operation = document["paths"][PREFIX + "/keys/{key_id}/retire-now"]["post"]
    assert operation["operationId"] == "retireKeyNow"
    assert operation["x-admin-action"] == "key.retire_now"
    assert {"200", "403", "404", "409"} <= set(operation["responses"])
