"""Bad input to every admin write route gets a clear 4xx and leaves no state behind.

Cases are generated from each route's own field declarations: malformed JSON, the wrong JSON
shape, every field with every wrong type, unknown fields, oversized names and bodies, bad role
names, text that cannot be stored, unknown targets. For each, nothing may change but the audit
trail: no partial write, and at most one event, recording the refusal (``failed``, with the
error's code) when the service refused the request after the edge let it through.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from admin_api_harness import (
    PREFIX,
    AdminEnv,
    StoreMark,
    fill_path,
    open_admin_env,
    raw_asgi_request,
    sqlite_settings,
)

from uid2_operator.domain.audit import AuditEvent
from uid2_operator.domain.authorization import AdminAction
from uid2_operator.domain.roles import AdminRole
from uid2_operator.web.admin_api import admin_tokens, audit, keys, participants
from uid2_operator.web.admin_api.bodies import Field, Kind
from uid2_operator.web.admin_api.routing import Operation

SITE = 500
WRITE_OPERATIONS = [
    op
    for op in (
        *participants.OPERATIONS,
        *keys.OPERATIONS,
        *audit.OPERATIONS,
        *admin_tokens.OPERATIONS,
    )
    if op.body is not None
]
BASELINES: dict[str, dict[str, Any]] = {
    "createParticipant": {
        "name": "New",
        "type": "publisher",
        "site_id": 77,
        "roles": ["GENERATOR"],
        "contacts": ["ops@example.com"],
    },
    "setParticipantRoles": {"roles": ["GENERATOR", "MAPPER"]},
    "createKey": {"site_id": SITE, "name": "k2", "roles": ["GENERATOR"], "expires_in_days": 10},
    "renameKey": {"name": "renamed"},
    "setKeyRoles": {"roles": ["MAPPER"]},
    "revokeKey": {"reason": "leaked"},
    "rotateKey": {"grace_days": 1},
    "rotateKeySecret": {"grace_days": 1},
    "createAdminToken": {"name": "ops", "roles": ["READ_ONLY"]},
}
WRONG_TYPES: dict[Kind, list[Any]] = {
    Kind.STRING: [123, True, ["x"], {"x": 1}, 1.5],
    Kind.INTEGER: ["5", 1.5, True, [1], {"n": 1}, 2**70, -(2**70)],
    Kind.STRING_LIST: ["GENERATOR", [1], [None], [["GENERATOR"]], {"GENERATOR": True}, 7],
}


class Case:
    def __init__(
        self, label: str, body: bytes, status: int, content_type: str = "application/json"
    ) -> None:
        self.label, self.body, self.status, self.content_type = label, body, status, content_type


def _dump(value: Any) -> bytes:
    return json.dumps(value).encode()


def _field_cases(field: Field, base: dict[str, Any]) -> list[Case]:
    """Every wrong value of one field, the rest of the body valid."""
    cases: list[Case] = []
    for index, wrong in enumerate(WRONG_TYPES[field.kind]):
        cases.append(
            Case(f"{field.name} wrong type {index}", _dump({**base, field.name: wrong}), 422)
        )
    if field.required:
        cases.append(
            Case(
                f"{field.name} missing",
                _dump({k: v for k, v in base.items() if k != field.name}),
                422,
            )
        )
        cases.append(Case(f"{field.name} null", _dump({**base, field.name: None}), 422))
    if field.kind is Kind.STRING:
        for label, text in [
            ("too long", "n" * 10_000),
            ("lone surrogate", "\ud800"),
            ("nul", "a\x00b"),
            ("newline", "a\nb"),
        ]:
            body = json.dumps({**base, field.name: text}).encode()
            cases.append(Case(f"{field.name} {label}", body, 422))
    if field.kind is Kind.STRING_LIST:
        cases.append(Case(f"{field.name} too many", _dump({**base, field.name: ["A"] * 500}), 422))
        cases.append(
            Case(f"{field.name} long item", _dump({**base, field.name: ["A" * 5000]}), 422)
        )
    if field.kind is Kind.INTEGER:
        cases.append(Case(f"{field.name} negative", _dump({**base, field.name: -1}), 422))
        cases.append(Case(f"{field.name} too big", _dump({**base, field.name: 2**40}), 422))
    return cases


def _cases(op: Operation) -> list[Case]:
    assert op.body is not None
    base = BASELINES.get(op.operation_id, {})
    cases = [
        Case("truncated json", b'{"name": ', 400),
        Case("not json", b"name=x", 400),
        Case("array body", _dump([base]), 400),
        Case("string body", b'"text"', 400),
        Case("number body", b"42", 400),
        Case("null body", b"null", 400),
        Case("duplicate field", b'{"a": 1, "a": 2}', 400),
        Case("nan", b'{"grace_days": NaN}', 400),
        Case("deep nesting", b'{"a": ' + b"[" * 30000 + b"]" * 30000 + b"}", 400),
        Case("invalid utf-8", b'{"name": "\xff\xfe"}', 400),
        Case("huge integer literal", b'{"grace_days": ' + b"9" * 5000 + b"}", 400),
        Case("unknown field", _dump({**base, "surprise": 1}), 422),
        Case("field pasted with a key", _dump({**base, "UID2-C-L-3-abcdef.tail": 1}), 422),
        Case("oversize body", _dump({**base, "pad": "x" * 70_000}), 413),
        Case("100 kB name", _dump({**base, "name": "n" * 100_000}), 413),
        Case("form content type", _dump(base), 415, "application/x-www-form-urlencoded"),
        Case("no content type", _dump(base), 415, ""),
    ]
    for field in op.body.fields:
        cases += _field_cases(field, base)
    if any(f.required for f in op.body.fields):
        cases.append(Case("empty body", b"", 422))
    names = {f.name for f in op.body.fields}
    if "roles" in names:
        bad = {**base, "roles": ["GENERATOR", "WIZARD"]}
        cases.append(Case("unknown role name", _dump(bad), 422))
        if op.operation_id in ("createKey", "setKeyRoles", "createAdminToken"):
            cases.append(Case("empty role list", _dump({**base, "roles": []}), 422))
    if op.operation_id == "createKey":
        cases.append(Case("unknown site", _dump({**base, "site_id": 9999}), 404))
        cases.append(
            Case("role outside the participant's", _dump({**base, "roles": ["OPTOUT"]}), 422)
        )
    if op.operation_id == "setParticipantRoles":
        # Narrowing would strip a role an active key holds.
        cases.append(Case("role an active key holds", _dump({"roles": ["MAPPER"]}), 422))
    if op.operation_id == "createParticipant":
        cases.append(Case("taken site id", _dump({**base, "site_id": SITE}), 409))
        cases.append(Case("reserved site id", _dump({**base, "site_id": 2}), 422))
        cases.append(Case("unknown type", _dump({**base, "type": "wizard"}), 422))
        cases.append(Case("bad contact", _dump({**base, "contacts": ["not-an-address"]}), 422))
    if op.operation_id == "rotateKey":
        cases.append(Case("grace beyond policy", _dump({"grace_days": 91}), 422))
    return cases


PARAMS = [
    pytest.param(op, case, id=f"{op.method} {op.path}: {case.label}")
    for op in WRITE_OPERATIONS
    for case in _cases(op)
]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminEnv]:
    with open_admin_env(sqlite_settings(tmp_path_factory.mktemp("admin-input"))) as opened:
        created = opened.call(
            "POST",
            "/participants",
            json={"name": "Target", "type": "publisher", "site_id": SITE,
                  "roles": ["GENERATOR", "MAPPER"]},
        )  # fmt: skip
        assert created.status_code == 201
        key = opened.call(
            "POST", "/keys", json={"site_id": SITE, "name": "k", "roles": ["GENERATOR"]}
        )
        assert key.status_code == 201
        opened.app.state.test_key_id = key.json()["key_id"]
        opened.app.state.test_credentials = (key.json()["key"], key.json()["secret"])
        yield opened


def _targets(env: AdminEnv) -> dict[str, str]:
    return {
        "site_id": str(SITE),
        "key_id": env.app.state.test_key_id,
        "token_id": env.token_ids[AdminRole.READ_ONLY],
    }


def _snapshot(env: AdminEnv) -> list[Any]:
    return [
        env.call("GET", "/participants").json(),
        env.call("GET", "/keys").json(),
        env.call("GET", "/admin-tokens").json(),
        [e["outcome"] for e in env.call("GET", "/audit", params={"limit": 1000}).json()["events"]],
    ]


def _assert_clean_error(status: int, payload: Any) -> None:
    assert 400 <= status < 500
    assert set(payload) == {"error"}
    assert set(payload["error"]) == {"code", "message"}
    assert payload["error"]["code"] not in ("internal_error", "error")
    assert payload["error"]["message"]


def _refusal_recorded(
    env: AdminEnv, mark: StoreMark, op: Operation, status: int, code: str
) -> AuditEvent | None:
    """The one ``failed`` event a refused write may leave (none for a refusal at the edge)."""
    events = env.refusals_since(mark)
    assert len(events) <= 1, events
    if not events:
        return None
    [event] = events
    assert status in (404, 409, 422), status
    assert isinstance(op.access, AdminAction)
    assert (event.outcome.value, event.action, event.before) == ("failed", op.access.value, None)
    assert event.after == {"code": code}
    assert event.actor == f"admin:{env.token_ids[AdminRole.SUPER_USER]}"
    return event


@pytest.mark.parametrize(("op", "case"), PARAMS)
def test_bad_input_is_a_clear_4xx_with_no_state_change(
    env: AdminEnv, op: Operation, case: Case
) -> None:
    mark = env.mark()
    headers = {"Content-Type": case.content_type} if case.content_type else {}
    response = env.call(
        op.method, fill_path(op.path, _targets(env)), content=case.body, headers=headers
    )
    assert response.status_code == case.status, response.text
    _assert_clean_error(response.status_code, response.json())
    assert "UID2-C-L-3-abcdef.tail" not in response.text
    code = response.json()["error"]["code"]
    event = _refusal_recorded(env, mark, op, response.status_code, code)
    assert event is None or "UID2-C-L-3-abcdef.tail" not in repr(event)


@pytest.mark.parametrize(
    "op", [op for op in WRITE_OPERATIONS if "{" in op.path], ids=lambda op: f"{op.method} {op.path}"
)
def test_unknown_targets_are_404_with_no_state_change(env: AdminEnv, op: Operation) -> None:
    unknown = {"site_id": "9999", "key_id": "UID2-C-L-500-zzzzzz", "token_id": "UID2-A-L-0-zzzzzz"}
    mark = env.mark()
    response = env.call(
        op.method, fill_path(op.path, unknown), json=BASELINES.get(op.operation_id, {})
    )
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "not_found"
    event = _refusal_recorded(env, mark, op, 404, "not_found")
    assert event is not None
    assert event.target_id in unknown.values()
    malformed = {"site_id": "x1", "key_id": "not-a-key-id", "token_id": "nope"}
    mark = env.mark()
    response = env.call(
        op.method, fill_path(op.path, malformed), json=BASELINES.get(op.operation_id, {})
    )
    assert response.status_code == 422, response.text
    event = _refusal_recorded(env, mark, op, 422, "invalid_input")
    assert event is not None
    assert event.target_id == ""  # not an id: not recorded as one


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/keys", {"site_id": "abc"}),
        ("/keys", {"site_id": "1.5"}),
        ("/keys", {"site_id": "9" * 40}),
        ("/keys", {"site_id": "2"}),
        ("/keys", [("site_id", "500"), ("site_id", "501")]),
        ("/keys", {"secret": "x"}),
        ("/participants", {"site_id": "500"}),
        ("/audit", {"limit": "0"}),
        ("/audit", {"limit": "100000"}),
        ("/audit", {"since_seq": "-1"}),
        ("/audit", {"target_id": "t" * 500}),
        ("/audit", {"action": "a\u0000b"}),
    ],
)
def test_bad_query_strings_are_422(env: AdminEnv, path: str, params: Any) -> None:
    response = env.call("GET", path, params=params)
    assert response.status_code == 422, response.text
    _assert_clean_error(response.status_code, response.json())


def test_a_chunked_body_over_the_limit_is_413(env: AdminEnv) -> None:
    """No Content-Length: the limit is enforced while the body streams in."""
    mark = env.mark()
    status, _, body = raw_asgi_request(
        env.app,
        "POST",
        f"{PREFIX}/admin-tokens",
        headers=[
            ("authorization", f"Bearer {env.tokens[AdminRole.SUPER_USER]}"),
            ("content-type", "application/json"),
        ],
        chunks=[b'{"name": "', b"x" * 40_000, b"x" * 40_000, b'"}'],
    )
    assert status == 413
    assert json.loads(body)["error"]["code"] == "body_too_large"
    assert env.refusals_since(mark) == []  # refused before the action: not audited


@pytest.mark.parametrize("declared", ["abc", "-1", "9" * 30, "1e3", "\u00b2", " 12"])
def test_a_content_length_that_is_not_a_size_is_refused(env: AdminEnv, declared: str) -> None:
    mark = env.mark()
    status, _, body = raw_asgi_request(
        env.app,
        "POST",
        f"{PREFIX}/admin-tokens",
        headers=[
            ("authorization", f"Bearer {env.tokens[AdminRole.SUPER_USER]}"),
            ("content-type", "application/json"),
            ("content-length", declared),
        ],
        chunks=[b'{"name": "x", "roles": ["READ_ONLY"]}'],
    )
    assert status == 413
    assert json.loads(body)["error"]["code"] == "body_too_large"
    assert env.refusals_since(mark) == []


def test_the_whole_battery_left_the_store_as_it_was(env: AdminEnv) -> None:
    """Runs last in this module: the visible state is what the fixture created."""
    participants_, keys_, tokens_, events = _snapshot(env)
    assert [p["site_id"] for p in participants_["participants"]] == [SITE]
    assert [k["name"] for k in keys_["keys"]] == ["k"]
    assert keys_["keys"][0]["state"] == "active"
    assert len(tokens_["admin_tokens"]) == 3
    # Three tokens, the participant, the key; every other event records a refusal.
    assert [e for e in events if e == "success"] == ["success"] * 5
    assert set(events) == {"success", "failed"}


PASTED_INTO = [
    ("POST", "/participants", {"name": "P", "type": "publisher", "roles": ["{}"]}),
    ("PUT", f"/participants/{SITE}/roles", {"roles": ["GENERATOR", "{}"]}),
    ("POST", "/keys", {"site_id": SITE, "name": "k", "roles": ["{}"]}),
    ("PUT", "/keys/{key_id}/roles", {"roles": ["{}"]}),
    ("POST", "/admin-tokens", {"name": "t", "roles": ["{}"]}),
    ("PUT", f"/participants/{SITE}/sharing", {"mode": "{}"}),
    ("PUT", f"/participants/{SITE}/sharing", {"mode": "list", "types": ["dsp", "{}"]}),
    ("PUT", f"/participants/{SITE}/domain-names", {"domain_names": ["example.com", "{}"]}),
]


@pytest.mark.parametrize(("method", "path", "body"), PASTED_INTO, ids=str)
def test_a_credential_pasted_into_a_checked_field_is_refused_without_being_repeated(
    env: AdminEnv, method: str, path: str, body: dict[str, Any]
) -> None:
    """A key, its secret or an admin token pasted where a role, mode, type or domain name goes
    is refused by naming the field, never by quoting it back (answers end up in logs)."""
    key, secret = env.app.state.test_credentials
    target = fill_path(path, _targets(env))
    token = env.tokens[AdminRole.SUPER_USER]
    # Whole, and a piece short enough to pass every field's length limit.
    for credential in (key, secret, token, secret[:24]):
        mark = env.mark()
        pasted = json.loads(json.dumps(body).replace("{}", credential))
        response = env.call(method, target, json=pasted)
        assert response.status_code == 422, response.text
        _assert_clean_error(response.status_code, response.json())
        recorded = repr(env.refusals_since(mark))  # at most the refusal, with its code only
        for part in (credential, *credential.split(".")[1:]):
            for text in (response.text, recorded):
                assert part not in text
                assert part.lower() not in text.lower()
