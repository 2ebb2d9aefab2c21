"""``POST /admin/api/keys/{key_id}/rotate`` with a ``name``: the successor takes it.

The name is checked exactly as ``POST /keys`` checks a key's name (the same declared field, the
same service and domain rules, the same error), is recorded in the successor's ``key.create``
event as a created key's name is, and is the successor's name in the answer. Without a name (or
with ``null``) the successor keeps the old key's; the old key keeps its own either way.
"""

from __future__ import annotations

from typing import Any

import pytest
from admin_api_harness import (
    PREFIX,
    AdminEnv,
    admin_env_fixture,
    schema_errors,
)

from uid2_operator.domain.participants import MAX_NAME_LENGTH
from uid2_operator.domain.roles import AdminRole

pytestmark = pytest.mark.functional

MAINTAINER, READER = AdminRole.MAINTAINER, AdminRole.READ_ONLY


env = admin_env_fixture()


def _create(env: AdminEnv, site: int, name: Any) -> Any:
    return env.call(
        "POST", "/keys", MAINTAINER, json={"site_id": site, "name": name, "roles": ["GENERATOR"]}
    )


def _key(env: AdminEnv, site: int, name: str = "web") -> str:
    created = _create(env, site, name)
    assert created.status_code == 201, created.text
    key_id: str = created.json()["key_id"]
    return key_id


def _created_event(env: AdminEnv, key_id: str) -> dict[str, Any]:
    events = env.call(
        "GET", "/audit", READER, params={"target_id": key_id, "action": "key.create"}
    ).json()["events"]
    assert len(events) == 1, events
    after: dict[str, Any] = events[0]["after"]
    return after


def test_the_successor_takes_the_name_given(env: AdminEnv) -> None:
    old_id = _key(env, env.create_participant(("GENERATOR", "MAPPER"), name="Pub"))

    rotated = env.call(
        "POST", f"/keys/{old_id}/rotate", MAINTAINER, json={"grace_days": 1, "name": " web-2 "}
    )

    assert rotated.status_code == 201, rotated.text
    document = env.client.request("GET", PREFIX + "/openapi.json").json()
    ref = {"$ref": "#/components/schemas/IssuedKey"}
    assert schema_errors(document, ref, rotated.json(), "IssuedKey") == []
    successor = rotated.json()
    assert (successor["name"], successor["key_view"]["name"]) == ("web-2", "web-2")  # trimmed
    assert env.call("GET", f"/keys/{successor['key_id']}", READER).json()["name"] == "web-2"
    old = env.call("GET", f"/keys/{old_id}", READER).json()
    assert (old["name"], old["rotated_to"]) == ("web", successor["key_id"])
    recorded = _created_event(env, successor["key_id"])
    assert (recorded["name"], recorded["rotated_from"]) == ("web-2", old_id)


@pytest.mark.parametrize("body", [{}, {"name": None}, {"grace_days": 2}])
def test_without_a_name_the_successor_keeps_the_old_one(
    env: AdminEnv, body: dict[str, Any]
) -> None:
    old_id = _key(env, env.create_participant(("GENERATOR", "MAPPER"), name="Pub"))
    rotated = env.call("POST", f"/keys/{old_id}/rotate", MAINTAINER, json=body)
    assert rotated.status_code == 201, rotated.text
    assert rotated.json()["name"] == "web"
    assert _created_event(env, rotated.json()["key_id"])["name"] == "web"


BAD_NAMES: list[Any] = [
    "",
    "   ",
    "n" * (MAX_NAME_LENGTH + 1),
    "line\nbreak",
    "\u200b",
    "left\u202eright",
    "nul\x00",
    7,
    ["web"],
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_a_bad_name_is_refused_as_on_create_and_changes_nothing(env: AdminEnv, name: Any) -> None:
    site = env.create_participant(("GENERATOR", "MAPPER"), name="Pub")
    old_id = _key(env, site)
    on_create = _create(env, site, name)
    assert on_create.status_code == 422, on_create.text
    seq = env.change_seq()

    refused = env.call("POST", f"/keys/{old_id}/rotate", MAINTAINER, json={"name": name})

    assert (refused.status_code, refused.json()) == (422, on_create.json())
    assert env.change_seq() == seq
    assert env.call("GET", f"/keys/{old_id}", READER).json()["rotated_to"] is None


def test_credential_text_as_the_name_is_refused_as_on_create(env: AdminEnv) -> None:
    """Caught by the services rather than the declared field: the refusal is audited, as a
    refused write is, without the text."""
    site = env.create_participant(("GENERATOR", "MAPPER"), name="Pub")
    created = _create(env, site, "web")
    old_id, pasted = created.json()["key_id"], created.json()["key"]
    on_create = _create(env, site, pasted)
    mark = env.mark()

    refused = env.call("POST", f"/keys/{old_id}/rotate", MAINTAINER, json={"name": pasted})

    assert (refused.status_code, refused.json()) == (422, on_create.json())
    assert pasted.split(".", 1)[1] not in refused.text
    [event] = env.refusals_since(mark)
    assert (event.action, event.target_id, event.after) == (
        "key.rotate",
        old_id,
        {"code": "invalid_input"},
    )
    assert env.call("GET", f"/keys/{old_id}", READER).json()["rotated_to"] is None


def test_the_document_declares_the_name_as_the_create_route_does(env: AdminEnv) -> None:
    document = env.client.request("GET", PREFIX + "/openapi.json").json()

    def body(path: str) -> dict[str, Any]:
        schema: dict[str, Any] = document["paths"][PREFIX + path]["post"]["requestBody"]
        return schema["content"]["application/json"]["schema"]

    rotate, create = body("/keys/{key_id}/rotate"), body("/keys")
    assert "name" not in rotate.get("required", [])
    declared = dict(rotate["properties"]["name"])
    assert declared.pop("type") == ["string", "null"]
    expected = dict(create["properties"]["name"])
    assert expected.pop("type") == "string"
    declared.pop("description"), expected.pop("description")
    assert declared == expected
    assert "name" not in body("/keys/{key_id}/rotate-secret")["properties"]
