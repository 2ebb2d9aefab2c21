"""The sharing body's declared rule between fields is checked at the edge, like its fields.

The OpenAPI document states, as an ``if``/``then``/``else`` rule on the body of
``PUT /participants/{site_id}/sharing``, that mode ``list`` names at least one site or type and the
other modes none. A body that breaks it breaks the route's declaration: it is refused with 422 while
the body is read, with the message the service gives for the same choice, and, like any refusal of
a declaration, it is not audited. What no schema can state (a listed site that is the owner, or no
participant) is still the service's refusal, audited as ``failed``.
"""

from __future__ import annotations

import itertools
from typing import Any, cast

import pytest
from admin_api_harness import AdminEnv, admin_env_fixture

from uid2_operator.domain.sharing import parse_sharing
from uid2_operator.errors import InvalidInput
from uid2_operator.web.admin_api import create_admin_app
from uid2_operator.web.admin_api.bodies import BodyRule, check_fields
from uid2_operator.web.admin_api.routing import Operation

env = admin_env_fixture()

OTHER_TYPE = "dsp"
# Bodies whose mode, sites and types break the document's rule; ``OTHER`` stands for a listed
# participant's site id.
OTHER: Any = object()
BREAKING = [
    pytest.param({"mode": "list"}, id="list-naming-nothing"),
    pytest.param({"mode": "list", "sites": [], "types": []}, id="list-of-empty-lists"),
    pytest.param({"mode": "list", "sites": None, "types": None}, id="list-of-nulls"),
    pytest.param({"mode": "owner_only", "sites": [OTHER]}, id="owner-only-with-a-site"),
    pytest.param({"mode": "owner_only", "types": [OTHER_TYPE]}, id="owner-only-with-a-type"),
    pytest.param(
        {"mode": "bidders", "sites": [OTHER], "types": [OTHER_TYPE], "rotate": False},
        id="bidders-with-both",
    ),
]


def _site(env: AdminEnv, name: str, type_: str = "publisher") -> int:
    body = {"name": name, "type": type_, "roles": ["SHARER", "GENERATOR"]}
    response = env.call("POST", "/participants", json=body)
    assert response.status_code == 201, response.text
    site: int = response.json()["site_id"]
    return site


def _filled(body: dict[str, Any], other: int) -> dict[str, Any]:
    return {
        name: [other if item is OTHER else item for item in value]
        if isinstance(value, list)
        else value
        for name, value in body.items()
    }


def _service_message(owner: int, body: dict[str, Any]) -> str:
    """What the service (and the command line) says of the same choice."""
    with pytest.raises(InvalidInput) as refused:
        parse_sharing(owner, body["mode"], body.get("sites") or (), body.get("types") or ())
    return refused.value.detail


@pytest.mark.parametrize("template", BREAKING)
def test_a_body_breaking_the_declared_mode_rule_is_refused_unaudited(
    env: AdminEnv, template: dict[str, Any]
) -> None:
    owner, other = _site(env, "Owner"), _site(env, "Reader", OTHER_TYPE)
    path = f"/participants/{owner}/sharing"
    placed = env.call("PUT", path, json={"mode": "list", "sites": [other], "rotate": False})
    assert placed.status_code == 200, placed.text
    before = env.call("GET", path).json()
    body = _filled(template, other)
    document = env.call("GET", "/openapi.json").json()
    schema = document["paths"]["/admin/api/participants/{site_id}/sharing"]["put"]["requestBody"]
    rules = schema["content"]["application/json"]["schema"]["allOf"]
    assert not all(allows(rule, body) for rule in rules), "the document must forbid the body"
    mark = env.mark()

    response = env.call("PUT", path, json=body)

    assert response.status_code == 422, response.text
    assert response.json()["error"] == {
        "code": "invalid_input",
        "message": _service_message(owner, body),
    }
    assert env.refusals_since(mark) == []  # not audited, and nothing changed
    assert env.call("GET", path).json() == before


def test_a_refusal_no_schema_can_state_is_still_the_services_and_audited(env: AdminEnv) -> None:
    owner = _site(env, "Owner")
    path = f"/participants/{owner}/sharing"
    mark = env.mark()
    for body in ({"mode": "list", "sites": [owner]}, {"mode": "list", "sites": [4242]}):
        response = env.call("PUT", path, json=body)
        assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_input")
    events = env.refusals_since(mark)
    assert [(e.action, e.outcome.value, e.after) for e in events] == [
        ("sharing.set", "failed", {"code": "invalid_input"})
    ] * 2


# ------------------------------------------------------------------ rules against their schemas


def allows(schema: dict[str, Any], value: Any) -> bool:
    """Whether ``value`` is valid against ``schema``, for the keywords body rules use."""
    kinds = {
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
        "string": lambda v: isinstance(v, str),
    }
    checks: list[bool] = []
    if "type" in schema:
        checks.append(kinds[schema["type"]](value))
    if "const" in schema:
        checks.append(value == schema["const"])
    if isinstance(value, list):
        checks.append(len(value) >= schema.get("minItems", 0))
        checks.append(len(value) <= schema.get("maxItems", len(value)))
    if isinstance(value, dict):
        checks += [name in value for name in schema.get("required", [])]
        properties = schema.get("properties", {})
        checks += [allows(properties[n], v) for n, v in value.items() if n in properties]
    checks += [allows(part, value) for part in schema.get("allOf", [])]
    if "anyOf" in schema:
        checks.append(any(allows(part, value) for part in schema["anyOf"]))
    if "if" in schema:
        branch = "then" if allows(schema["if"], value) else "else"
        checks.append(allows(schema.get(branch, {}), value))
    return all(checks)


_NOT_GIVEN: Any = object()


def _sharing_bodies() -> list[dict[str, Any]]:
    """Every mode with sites and types each not given, null, empty or naming one."""
    choices = (_NOT_GIVEN, None, [], [7])
    type_choices = (_NOT_GIVEN, None, [], [OTHER_TYPE])
    bodies = []
    for mode, sites, types in itertools.product(
        ("owner_only", "bidders", "list"), choices, type_choices
    ):
        body: dict[str, Any] = {"mode": mode}
        if sites is not _NOT_GIVEN:
            body["sites"] = sites
        if types is not _NOT_GIVEN:
            body["types"] = types
        bodies.append(body)
    return bodies


class _NoServices:
    store = None
    credentials = None
    admin = None


def test_each_body_rule_refuses_exactly_what_its_schema_forbids() -> None:
    operations: tuple[Operation, ...] = create_admin_app(cast(Any, _NoServices())).state.operations
    ruled = [op for op in operations if op.body is not None and op.body.rules]
    assert [op.operation_id for op in ruled] == ["setSharing"]
    for op in ruled:
        assert op.body is not None
        for rule in op.body.rules:
            assert isinstance(rule, BodyRule)
            for body in _sharing_bodies():
                values = check_fields(body, op.body.fields)
                try:
                    rule.check(values)
                    refused = False
                except InvalidInput:
                    refused = True
                assert refused is not allows(rule.json_schema(), body), (op.operation_id, body)
