"""Bad input to every admin write route gets a clear 4xx and leaves no state behind.

Cases are generated from each route's own field declarations: malformed JSON, the wrong JSON
shape, every field with every wrong type, unknown fields, oversized names and bodies, bad role
names, text that cannot be stored, unknown targets. For each, nothing may change but the audit
trail: no partial write, and at most one event, recording the refusal (``failed``, with the
error's code) when the service refused the request after the edge let it through. A path value
that breaks its parameter's declaration is refused at the edge (422) on every route that has
one, reads included, and leaves no event at all.

The routes come from the app's own route table, so a write route added to the app joins the
battery, and a test fails until the battery knows how to aim at it (a valid body to spoil, a
target for each path parameter).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, cast
from urllib.parse import quote

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
from uid2_operator.domain.participants import MAX_SITE_ID
from uid2_operator.domain.roles import AdminRole
from uid2_operator.web.admin_api import create_admin_app
from uid2_operator.web.admin_api.bodies import Field, Kind
from uid2_operator.web.admin_api.routing import WRITE_METHODS, Operation
from uid2_operator.web.admin_api.sharing import BooleanField, SiteIdListField

SITE = 500
OTHER_SITE = 501  # a second participant, for sharing lists


class _NoServices:
    """Building the app calls no service (only requests do)."""

    store = None
    credentials = None
    admin = None


def _served_operations() -> tuple[Operation, ...]:
    operations: tuple[Operation, ...] = create_admin_app(cast(Any, _NoServices())).state.operations
    return operations


WRITE_OPERATIONS = [op for op in _served_operations() if op.method in WRITE_METHODS]
TARGETED_OPERATIONS = [op for op in WRITE_OPERATIONS if "{" in op.path]
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
    "rotateKey": {"grace_days": 1, "name": "successor"},
    "rotateKeySecret": {"grace_days": 1},
    "createAdminToken": {"name": "ops", "roles": ["READ_ONLY"]},
    "setSharing": {"mode": "list", "sites": [OTHER_SITE], "types": ["dsp"], "rotate": False},
    "setDomainNames": {"domain_names": ["example.com"]},
    "setAppNames": {"app_names": ["com.example.app"]},
    "createKeypair": {"site_id": SITE, "name": "kp2", "contact": "ops@example.com"},
}
"""A valid body for each write route that declares fields: every declared field, each valid.
A case spoils one thing and keeps the rest."""
WRONG_TYPES: dict[Kind, list[Any]] = {
    Kind.STRING: [123, True, ["x"], {"x": 1}, 1.5],
    Kind.INTEGER: ["5", 1.5, True, [1], {"n": 1}, 2**70, -(2**70)],
    Kind.STRING_LIST: ["GENERATOR", [1], [None], [["GENERATOR"]], {"GENERATOR": True}, 7],
}
WRONG_BOOLEANS: list[Any] = ["true", "false", 1, 0, ["x"], {"x": 1}, 1.5]
WRONG_SITE_LISTS: list[Any] = [
    str(OTHER_SITE),
    OTHER_SITE,
    [str(OTHER_SITE)],
    [1.5],
    [True],
    [None],
    [[OTHER_SITE]],
    {str(OTHER_SITE): True},
    [2**70],
    [0],
    [-1],
    [MAX_SITE_ID + 1],
]
UNKNOWN_TARGETS = {
    "site_id": "9999",
    "key_id": "UID2-C-L-500-zzzzzz",
    "token_id": "UID2-A-L-0-zzzzzz",
    "subscription_id": "zzzzzzzzzz",
}
MALFORMED_PATH_VALUES: dict[str, list[str]] = {
    "site_id": [
        *("x1", "2", "0", "-500", str(MAX_SITE_ID + 1), "9" * 30, "5e2", "500.0", "+500"),
        *("\u00b2", "\u0665\u0660\u0660", "\uff15\uff10\uff10", " 9999", "9999 "),
    ],
    "key_id": [
        *("not-a-key-id", "UID2-C-L-500-zzzzz", "UID2-C-L-500-zzzzzzz", "UID2-c-L-500-zzzzzz"),
        *("UID2-C-L-0500-zzzzzz", "UID2-C-L-500-zzzzzz.tail", " UID2-C-L-500-zzzzzz"),
        "UID2-C-L-500-zzzzzz ",
    ],
    "token_id": [
        *("nope", "UID2-A-L-0-zzzzz", "UID2-A-L-0-zzzzzz.tail", " UID2-A-L-0-zzzzzz"),
    ],
    "subscription_id": [
        *("not-a-subscription-id", "zzzzzzzzz", "zzzzzzzzzzz", "zzzzzzzzz0", "zzzzzzzzzl"),
        *(" zzzzzzzzzz", "zzzzzzzzzz ", "z" * 65),
    ],
}
"""Path values each parameter's declaration refuses, each naming no stored object even once
stripped or read leniently (a request let through would answer 404, not change the fixture)."""


BLANK_BODIES = {"tab": b"\t", "space": b" ", "spaces and newline": b"  \n", "crlf": b"\r\n"}
"""Bodies of whitespace only: not JSON, so refused like any other body that is not (only a
zero-length body means no body)."""


class Case:
    def __init__(
        self, label: str, body: bytes, status: int, content_type: str = "application/json"
    ) -> None:
        self.label, self.body, self.status, self.content_type = label, body, status, content_type


def _dump(value: Any) -> bytes:
    return json.dumps(value).encode()


def _placeholders(path: str) -> list[str]:
    return re.findall(r"{([a-z_]+)}", path)


def _wrong_values(field: Field) -> list[Any]:
    if isinstance(field, BooleanField):
        return WRONG_BOOLEANS
    if isinstance(field, SiteIdListField):
        return WRONG_SITE_LISTS
    return WRONG_TYPES[field.kind]


def _field_cases(field: Field, base: dict[str, Any]) -> list[Case]:
    """Every wrong value of one field, the rest of the body valid."""
    cases: list[Case] = []
    for index, wrong in enumerate(_wrong_values(field)):
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
        # Items that are each valid, one more than the field takes (and never fewer than 500).
        item = (base.get(field.name) or ["A"])[0]
        many = [item] * max(500, field.max_items + 1)
        cases.append(Case(f"{field.name} too many", _dump({**base, field.name: many}), 422))
    if field.kind is Kind.STRING_LIST and not isinstance(field, SiteIdListField):
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
        *(Case(f"blank body {label}", body, 400) for label, body in BLANK_BODIES.items()),
        Case("blank body as text", b" ", 415, "text/plain"),
        Case("blank body as xml", b"\t", 415, "application/xml"),
        Case("blank body with no content type", b"\r\n", 415, ""),
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
    return cases + _sharing_cases(op, base)


def _sharing_cases(op: Operation, base: dict[str, Any]) -> list[Case]:
    """What the sharing and keypair routes refuse beyond their fields' declared types."""
    refused: list[tuple[str, dict[str, Any]]] = []
    if op.operation_id == "setSharing":
        refused += [
            ("unknown mode", {"mode": "wizard"}),
            ("mode in capitals", {**base, "mode": "LIST"}),
            ("sites outside mode list", {"mode": "owner_only", "sites": [OTHER_SITE]}),
            ("types outside mode list", {"mode": "bidders", "types": ["dsp"]}),
            ("list naming nobody", {**base, "sites": [], "types": []}),
            ("owner listed", {**base, "sites": [SITE]}),
            ("unknown site listed", {**base, "sites": [OTHER_SITE, 9999]}),
            ("reserved site listed", {**base, "sites": [2]}),
            ("unknown type", {**base, "types": ["dsp", "wizard"]}),
        ]
    if op.operation_id == "setDomainNames":
        for label, name in [
            ("url", "https://example.com/"),
            ("port", "example.com:8080"),
            ("subdomain", "sub.example.com"),
            ("public suffix", "co.uk"),
            ("no known suffix", "example"),
            ("wildcard", "*.example.com"),
            ("ip address", "1.2.3.4"),
            ("empty name", ""),
            ("space", "not a domain"),
        ]:
            refused.append((f"domain name: {label}", {"domain_names": ["example.com", name]}))
    if op.operation_id == "setAppNames":
        for label, name in [("empty name", ""), ("blank", " "), ("space", "com.example app")]:
            refused.append((f"app name: {label}", {"app_names": ["com.example.app", name]}))
    if op.operation_id == "createKeypair":
        refused.append(("reserved site id", {**base, "site_id": 2}))
    cases = [Case(label, _dump(body), 422) for label, body in refused]
    if op.operation_id == "createKeypair":
        cases.append(Case("unknown site", _dump({**base, "site_id": 9999}), 404))
    if op.operation_id == "enableKeypair":
        cases.append(Case("already enabled", _dump({}), 409))
    return cases


PARAMS = [
    pytest.param(op, case, id=f"{op.method} {op.path}: {case.label}")
    for op in WRITE_OPERATIONS
    for case in _cases(op)
]
MALFORMED_PATH_CASES = [
    pytest.param(op, name, value, id=f"{op.method} {op.path}: {name}={value!r}")
    for op in _served_operations()
    if "{" in op.path
    for name in _placeholders(op.path)
    for value in MALFORMED_PATH_VALUES[name]
]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminEnv]:
    with open_admin_env(sqlite_settings(tmp_path_factory.mktemp("admin-input"))) as opened:
        for site, name in ((SITE, "Target"), (OTHER_SITE, "Other")):
            created = opened.call(
                "POST",
                "/participants",
                json={"name": name, "type": "publisher", "site_id": site,
                      "roles": ["GENERATOR", "MAPPER"]},
            )  # fmt: skip
            assert created.status_code == 201
        key = opened.call(
            "POST", "/keys", json={"site_id": SITE, "name": "k", "roles": ["GENERATOR"]}
        )
        assert key.status_code == 201
        opened.app.state.test_key_id = key.json()["key_id"]
        opened.app.state.test_credentials = (key.json()["key"], key.json()["secret"])
        keypair = opened.call("POST", "/keypairs", json={"site_id": SITE, "name": "kp"})
        assert keypair.status_code == 201
        opened.app.state.test_subscription_id = keypair.json()["subscription_id"]
        # State no baseline matches, so a case wrongly let through would show as a change.
        for path, body in [
            (f"/participants/{SITE}/sharing", {"mode": "list", "types": ["advertiser"]}),
            (f"/participants/{SITE}/domain-names", {"domain_names": ["example.org"]}),
            (f"/participants/{SITE}/app-names", {"app_names": ["org.example.app"]}),
        ]:
            assert opened.call("PUT", path, json=body).status_code == 200
        opened.app.state.test_initial = _snapshot(opened)
        yield opened


def _targets(env: AdminEnv) -> dict[str, str]:
    return {
        "site_id": str(SITE),
        "key_id": env.app.state.test_key_id,
        "token_id": env.token_ids[AdminRole.READ_ONLY],
        "subscription_id": env.app.state.test_subscription_id,
    }


def _snapshot(env: AdminEnv) -> list[Any]:
    """What the admin API shows of every object the battery aims at, then every event's
    outcome."""
    return [
        env.call("GET", "/participants").json(),
        env.call("GET", "/keys").json(),
        env.call("GET", "/admin-tokens").json(),
        env.call("GET", "/keypairs").json(),
        env.call("GET", f"/participants/{SITE}/sharing").json(),
        env.call("GET", f"/participants/{SITE}/origins").json(),
        [e.outcome.value for e in env.audit_events()],
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


@pytest.mark.parametrize("op", TARGETED_OPERATIONS, ids=lambda op: f"{op.method} {op.path}")
def test_unknown_targets_are_404_with_no_state_change(env: AdminEnv, op: Operation) -> None:
    unknown = UNKNOWN_TARGETS
    mark = env.mark()
    response = env.call(
        op.method, fill_path(op.path, unknown), json=BASELINES.get(op.operation_id, {})
    )
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "not_found"
    event = _refusal_recorded(env, mark, op, 404, "not_found")
    assert event is not None
    assert event.target_id in unknown.values()


@pytest.mark.parametrize(("op", "name", "value"), MALFORMED_PATH_CASES)
def test_a_path_value_that_breaks_its_declaration_is_422_and_not_audited(
    env: AdminEnv, op: Operation, name: str, value: str
) -> None:
    """Refused at the edge like a body field that breaks the route's declaration: the same error
    shape, before the route runs, and no audit row (a refused write of a well-formed id that
    names nothing is the service's 404, recorded: see the test above)."""
    rows = len(env.audit_events())
    seq = env.change_seq()
    path = fill_path(op.path, {**_targets(env), name: quote(value, safe="")})
    kwargs: dict[str, Any] = {}
    if op.method in WRITE_METHODS:
        kwargs["json"] = BASELINES.get(op.operation_id, {})

    response = env.call(op.method, path, **kwargs)

    assert response.status_code == 422, response.text
    _assert_clean_error(response.status_code, response.json())
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert f"'{name}'" in error["message"]
    assert "tail" not in response.text
    assert len(env.audit_events()) == rows
    assert env.change_seq() == seq


def test_a_malformed_path_value_without_a_token_is_still_401(env: AdminEnv) -> None:
    """The token is checked before anything the request carries is read."""
    rows = len(env.audit_events())
    response = env.client.request("POST", PREFIX + "/participants/x1/disable", json={})
    assert response.status_code == 401
    assert len(env.audit_events()) == rows


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


def _half_a_body_then_gone(env: AdminEnv, connection_answered: int | None = None) -> int:
    """A participant created with half its body sent, then a disconnect (the client's, or with
    ``connection_answered`` the connection's, which answered that itself): the status sent."""
    status, _, _ = raw_asgi_request(
        env.app,
        "POST",
        f"{PREFIX}/participants",
        headers=[
            ("authorization", f"Bearer {env.tokens[AdminRole.SUPER_USER]}"),
            ("content-type", "application/json"),
            ("content-length", "1000"),
        ],
        chunks=[b'{"name": "half'],
        then_disconnect=True,
        connection_answered=connection_answered,
    )
    return status


def test_a_client_leaving_mid_body_is_not_an_internal_error(
    env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """A dropped connection is the client's doing: no error line, no audit event, no change."""
    mark = env.mark()
    before = _snapshot(env)
    with caplog.at_level("INFO", logger="uid2_operator.web.admin_api.app"):
        status = _half_a_body_then_gone(env)
    assert status == 499
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
    assert any(" -> 499 " in r.getMessage() for r in caplog.records)
    assert env.refusals_since(mark) == []
    assert _snapshot(env) == before


@pytest.mark.parametrize("answered", [408, 413, 503])
def test_a_request_the_connection_answered_itself_is_logged_with_that_answer(
    env: AdminEnv, caplog: pytest.LogCaptureFixture, answered: int
) -> None:
    """The client got the connection's own answer (a body too slow, too large, or a stop): the
    line gives that status, not the 499 of a client that left without one."""
    with caplog.at_level("INFO", logger="uid2_operator.web.admin_api.app"):
        _half_a_body_then_gone(env, connection_answered=answered)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("admin POST")]
    assert len(lines) == 1
    assert f" -> {answered} " in lines[0]


def _declaring(env: AdminEnv, declared: str, role: str = "READ_ONLY") -> tuple[int, Any]:
    status, _, body = raw_asgi_request(
        env.app,
        "POST",
        f"{PREFIX}/admin-tokens",
        headers=[
            ("authorization", f"Bearer {env.tokens[AdminRole.SUPER_USER]}"),
            ("content-type", "application/json"),
            ("content-length", declared),
        ],
        chunks=[b'{"name": "x", "roles": ["%s"]}' % role.encode()],
    )
    return status, json.loads(body)


@pytest.mark.parametrize("declared", ["abc", "-1", "+37", "1e3", "\u00b2", "3 7", "", "\f37"])
def test_a_content_length_that_is_not_a_size_is_refused(env: AdminEnv, declared: str) -> None:
    mark = env.mark()
    status, payload = _declaring(env, declared)
    assert (status, payload["error"]["code"]) == (400, "invalid_content_length")
    assert env.refusals_since(mark) == []


@pytest.mark.parametrize("declared", ["65537", "9" * 13, "9" * 5000])
def test_a_declared_size_over_the_limit_is_413_whatever_its_length(
    env: AdminEnv, declared: str
) -> None:
    status, payload = _declaring(env, declared)
    assert (status, payload["error"]["code"]) == (413, "body_too_large")


@pytest.mark.parametrize("declared", ["37 ", "37\t", " 37", "\t 37 \t", "0" * 20 + "37"])
def test_whitespace_and_leading_zeros_in_a_content_length_are_read_past(
    env: AdminEnv, declared: str
) -> None:
    # RFC 9112 §5: optional whitespace around a field value; the server passes trailing OWS on.
    # The body is read and judged (a role name of the same length that is none: no token made).
    status, payload = _declaring(env, declared, role="NOT_ROLE!")
    assert (status, payload["error"]["code"]) == (422, "invalid_input"), payload


def test_the_battery_covers_every_write_route_the_app_serves(env: AdminEnv) -> None:
    """Each write route of the app under test gets the bad-input cases and the unknown-target
    cases, with a valid body to spoil and a value for each of its path parameters."""
    served = {(op.method, op.path) for op in env.operations if op.method in WRITE_METHODS}
    assert {(p.values[0].method, p.values[0].path) for p in PARAMS} == served
    targeted = {(op.method, op.path) for op in TARGETED_OPERATIONS}
    assert targeted == {(method, path) for method, path in served if "{" in path}
    for op in env.operations:
        if op.method not in WRITE_METHODS:
            continue
        for values in (_targets(env), UNKNOWN_TARGETS, MALFORMED_PATH_VALUES):
            assert set(_placeholders(op.path)) <= set(values), op.path
        assert op.body is not None
        if op.body.fields:
            assert op.operation_id in BASELINES, f"{op.operation_id} has no valid body"
            base = BASELINES[op.operation_id]
            assert set(base) == {f.name for f in op.body.fields}, op.operation_id
            op.body.parse(_dump(base))  # passes the route's declared checks
    assert set(BASELINES) <= {op.operation_id for op in env.operations}


def test_the_whole_battery_left_the_store_as_it_was(env: AdminEnv) -> None:
    """Runs after the battery: the visible state is what the fixture created."""
    *state, events = _snapshot(env)
    *initial, initial_events = env.app.state.test_initial
    assert state == initial
    participants_, keys_, tokens_, keypairs_, sharing_, origins_ = state
    assert [p["site_id"] for p in participants_["participants"]] == [SITE, OTHER_SITE]
    assert [k["name"] for k in keys_["keys"]] == ["k"]
    assert keys_["keys"][0]["state"] == "active"
    assert len(tokens_["admin_tokens"]) == 3
    assert [(k["name"], k["disabled"]) for k in keypairs_["keypairs"]] == [("kp", False)]
    assert (sharing_["mode"], sharing_["sites"], sharing_["types"]) == ("list", [], ["advertiser"])
    assert (origins_["domain_names"], origins_["app_names"]) == (
        ["example.org"],
        ["org.example.app"],
    )
    # The fixture's changes, then only refusals.
    assert events[: len(initial_events)] == initial_events
    assert set(initial_events) == {"success"}
    assert set(events[len(initial_events) :]) == {"failed"}


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


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/participants", {"name": "a\u202eb", "type": "dsp"}, "name"),
        ("/admin-tokens", {"name": "Ad\u2066min", "roles": ["READ_ONLY"]}, "name"),
    ],
)
def test_a_bidirectional_control_is_refused_for_what_it_is(
    env: AdminEnv, path: str, body: dict[str, object], field: str
) -> None:
    # The text is not blank: the refusal says what it holds that the field refuses.
    refused = env.call("POST", path, json=body)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["message"] == (
        f"Field '{field}' must show a visible character, with no bidirectional controls"
    )


def test_a_blank_name_is_refused_in_the_same_words(env: AdminEnv) -> None:
    refused = env.call("POST", "/participants", json={"name": " \u3000 ", "type": "dsp"})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["message"] == (
        "Field 'name' must show a visible character, with no bidirectional controls"
    )


@pytest.mark.parametrize("name", ["\u206b", "\U000e0041\U000e0042", " \U0001d173\ufe0f "])
def test_a_name_of_format_characters_alone_is_refused(env: AdminEnv, name: str) -> None:
    # Deprecated format controls, tag characters, a musical beam mark beside a variation
    # selector: nothing to see, whether or not the schema's pattern can name them.
    refused = env.call("POST", "/participants", json={"name": name, "type": "dsp"})
    assert refused.status_code == 422, refused.text
    assert "visible character" in refused.json()["error"]["message"]


@pytest.mark.parametrize("suffix", ["\u206a", "\U000e0020", "\ufe0f", "\u180b"])
def test_a_name_differing_by_a_character_that_shows_nothing_is_taken(
    env: AdminEnv, suffix: str
) -> None:
    refused = env.call("POST", "/participants", json={"name": f"Target{suffix}", "type": "dsp"})
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["message"] == f"Participant {SITE} already has this name"
