"""Every admin route is guarded: enumerated from the app's own route table, each is called without a
token, with garbage, with a token of another environment, with a revoked token and with an
under-privileged one. A route added without a declared action cannot be built; a route slipped in
around the builder is caught by the enumeration."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from admin_api_harness import (
    CLIENT_HOST,
    PREFIX,
    AdminEnv,
    fill_path,
    open_admin_env,
    roles_refused,
    sqlite_settings,
)
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from uid2_operator.clock import system_random
from uid2_operator.domain.authorization import AdminAction
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import mint_admin_token
from uid2_operator.domain.roles import AdminRole
from uid2_operator.services.context import SYSTEM
from uid2_operator.web.admin_api import keys, routing
from uid2_operator.web.admin_api.bodies import BodySpec
from uid2_operator.web.admin_api.routing import (
    PUBLIC,
    PUBLIC_PATHS,
    Call,
    Operation,
    Reply,
    RouteTableError,
    check_operations,
)

PUBLIC_FULL_PATHS = {PREFIX + path for path in PUBLIC_PATHS}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[AdminEnv]:
    with open_admin_env(sqlite_settings(tmp_path)) as opened:
        yield opened


def _route_methods(env: AdminEnv) -> list[tuple[str, str]]:
    """(method, path) for every route the app actually serves, HEAD aside."""
    found: list[tuple[str, str]] = []
    for route in env.app.routes:
        assert isinstance(route, Route), route
        found += [(m, route.path) for m in sorted(route.methods or ()) if m != "HEAD"]
    return found


def _unguarded(env: AdminEnv, credentials: dict[str, str]) -> list[str]:
    """Routes that do not answer 401 to each of ``credentials`` (label -> header value)."""
    problems: list[str] = []
    for method, path in _route_methods(env):
        if path in PUBLIC_FULL_PATHS:
            continue
        url = fill_path(path)
        for label, value in credentials.items():
            headers = {} if value == "" else {"Authorization": value}
            response = env.client.request(method, url, headers=headers, json={})
            if response.status_code != 401 or "error" not in response.json():
                problems.append(f"{method} {path} with {label}: {response.status_code}")
            elif response.headers.get("www-authenticate", "").split(" ")[0] != "Bearer":
                problems.append(f"{method} {path} with {label}: no WWW-Authenticate")
    return problems


def _bad_credentials(env: AdminEnv) -> dict[str, str]:
    other_env = mint_admin_token(Environment.PROD, b"\x01" * 32, system_random).text
    unknown = mint_admin_token(Environment.LOCAL, b"\x02" * 32, system_random).text
    revoked = env.services.admin.create_admin_token(SYSTEM, name="gone", roles=["SUPER_USER"])
    env.services.admin.revoke_admin_token(SYSTEM, revoked.token_id)
    return {
        "no token": "",
        "garbage": "Bearer garbage",
        "wrong scheme": f"Basic {env.tokens[AdminRole.SUPER_USER]}",
        "empty bearer": "Bearer ",
        "oversized": "Bearer " + "A" * 5000,
        "other environment": f"Bearer {other_env}",
        "unknown token": f"Bearer {unknown}",
        "revoked token": f"Bearer {revoked.token}",
    }


def test_every_route_but_health_and_openapi_refuses_bad_credentials(env: AdminEnv) -> None:
    routes = _route_methods(env)
    assert len(routes) == len(env.operations)
    # Each served route is a declared operation, described in the OpenAPI document.
    declared = {(op.method, op.full_path) for op in env.operations}
    assert set(routes) == declared
    document = env.client.request("GET", PREFIX + "/openapi.json").json()
    documented = {(m.upper(), p) for p, methods in document["paths"].items() for m in methods}
    assert set(routes) <= documented
    assert {p for m, p in routes if p in PUBLIC_FULL_PATHS} == PUBLIC_FULL_PATHS
    seq = env.change_seq()
    assert _unguarded(env, _bad_credentials(env)) == []
    assert env.change_seq() == seq + 2  # only the revoked token set-up wrote anything


def _guarded_routes(env: AdminEnv) -> list[tuple[str, str]]:
    return [(m, p) for m, p in _route_methods(env) if p not in PUBLIC_FULL_PATHS]


@pytest.mark.parametrize(
    "carrier",
    ["query token", "query access_token", "cookie token", "cookie access_token"],
)
def test_a_valid_token_outside_the_authorization_header_is_not_accepted(
    env: AdminEnv, carrier: str
) -> None:
    token = env.tokens[AdminRole.SUPER_USER]
    where, name = carrier.split(" ")
    params = {name: token} if where == "query" else None
    headers = {"Cookie": f"{name}={token}"} if where == "cookie" else None
    seq = env.change_seq()
    problems: list[str] = []
    for method, path in _guarded_routes(env):
        response = env.client.request(
            method, fill_path(path), headers=headers, params=params, json={}
        )
        code = response.json().get("error", {}).get("code")
        if (response.status_code, code) != (401, "credential_missing"):
            problems.append(f"{method} {path}: {response.status_code} {code}")
        elif token in response.text:
            problems.append(f"{method} {path}: the token is echoed")
    assert problems == []
    assert env.change_seq() == seq
    # The same token in the header is accepted (so the refusals above are about where it was).
    assert env.call("GET", "/keys").status_code == 200


def _with_raw_headers(
    env: AdminEnv, method: str, path: str, headers: list[tuple[str, str]]
) -> httpx.Response:
    """One request carrying ``headers`` exactly as listed (repeated names included)."""

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=env.app, client=(CLIENT_HOST, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as c:
            response = await c.request(method, path, headers=headers, json={})
            await response.aread()
            return response

    return anyio.run(send)


def test_two_authorization_headers_are_refused_even_if_both_are_valid(env: AdminEnv) -> None:
    super_user = f"Bearer {env.tokens[AdminRole.SUPER_USER]}"
    reader = f"Bearer {env.tokens[AdminRole.READ_ONLY]}"
    seq = env.change_seq()
    for method, path in _guarded_routes(env):
        for pair in ((super_user, super_user), (reader, super_user), (super_user, reader)):
            headers = [("Authorization", pair[0]), ("Authorization", pair[1])]
            response = _with_raw_headers(env, method, fill_path(path), headers)
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["error"] == {
                "code": "credential_malformed",
                "message": "Send exactly one Authorization header",
            }, (method, path)
            assert response.headers["www-authenticate"].split(" ")[0] == "Bearer"
            assert env.tokens[AdminRole.SUPER_USER] not in response.text
    assert env.change_seq() == seq


def test_every_route_refuses_a_token_without_the_role_for_its_action(env: AdminEnv) -> None:
    mark = env.mark()
    refused: dict[AdminRole, set[tuple[str, str]]] = {role: set() for role in AdminRole}
    attempts: list[tuple[str, str, str]] = []
    for op in env.operations:
        if op.public:
            continue
        assert isinstance(op.access, AdminAction)
        for role in roles_refused(op.access.value):
            response = env.call(op.method, fill_path(op.path), role, json={})
            assert response.status_code == 403, (op.method, op.path, role)
            error = response.json()["error"]
            assert error["code"] == "permission_denied"
            assert op.access.value in error["message"]
            refused[role].add((op.method, op.path))
            attempts.append((f"admin:{env.token_ids[role]}", op.access.value, "denied"))
    # READ_ONLY is refused every write and the admin tokens; MAINTAINER the admin tokens and
    # audit verification; SUPER_USER nothing.
    writes = {(op.method, op.path) for op in env.operations if op.method != "GET"}
    tokens = {(op.method, op.path) for op in env.operations if op.path.startswith("/admin-tok")}
    assert refused[AdminRole.READ_ONLY] == writes | tokens
    assert refused[AdminRole.MAINTAINER] == tokens | {("POST", "/audit/verify")}
    assert refused[AdminRole.SUPER_USER] == set()
    # Nothing changed but one ``denied`` audit event per refusal, reads included.
    events = env.refusals_since(mark)
    assert [(e.actor, e.action, e.outcome.value) for e in events] == attempts


def test_read_routes_admit_every_role(env: AdminEnv) -> None:
    for op in env.operations:
        if op.method != "GET" or op.public or op.path.startswith("/admin-tokens"):
            continue
        for role in AdminRole:
            response = env.call("GET", fill_path(op.path), role)
            assert response.status_code in (200, 404), (op.path, role, response.text)


def test_the_enumeration_catches_a_route_slipped_in_unguarded(env: AdminEnv) -> None:
    async def leak(request: Request) -> JSONResponse:
        return JSONResponse({"participants": []})

    env.app.router.routes.append(Route(PREFIX + "/participants-export", leak, methods=["GET"]))
    problems = _unguarded(env, {"no token": ""})
    assert problems == ["GET /admin/api/participants-export with no token: 200"]


def test_a_revoked_admin_token_stops_working_at_once(env: AdminEnv) -> None:
    maintainer = env.token_ids[AdminRole.MAINTAINER]
    assert env.call("GET", "/keys", AdminRole.MAINTAINER).status_code == 200
    revoked = env.call("POST", f"/admin-tokens/{maintainer}/revoke")
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at_ms"] is not None
    response = env.call("GET", "/keys", AdminRole.MAINTAINER)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "credential_rejected"
    again = env.call("POST", f"/admin-tokens/{maintainer}/revoke")
    assert again.status_code == 409
    unknown = env.call("POST", "/admin-tokens/UID2-A-L-0-zzzzzz/revoke")
    assert unknown.status_code == 404


def test_the_body_is_not_read_before_the_caller_is_authenticated(env: AdminEnv) -> None:
    big = b"{" + b" " * (1024 * 1024) + b"}"
    headers = {"Content-Type": "application/json"}
    response = env.client.request("POST", PREFIX + "/keys", content=big, headers=headers)
    assert response.status_code == 401
    malformed = env.client.request("POST", PREFIX + "/keys", content=b"{", headers=headers)
    assert malformed.status_code == 401
    reader = env.call("POST", "/keys", AdminRole.READ_ONLY, content=big, headers=headers)
    assert reader.status_code == 403


def test_a_wrong_environment_token_is_named_in_the_refusal(env: AdminEnv) -> None:
    prod = mint_admin_token(Environment.PROD, b"\x01" * 32, system_random).text
    response = env.client.request(
        "GET", PREFIX + "/keys", headers={"Authorization": f"Bearer {prod}"}
    )
    assert response.status_code == 401
    assert "prod" in response.json()["error"]["message"]
    assert prod.split(".")[1] not in response.text


def _noop(call: Call) -> Reply:
    return Reply({})


def _op(**changes: object) -> Operation:
    base = Operation(
        "GET",
        "/things",
        AdminAction.KEY_LIST,
        _noop,
        operation_id="things",
        summary="Things",
        response="Health",
        tag="t",
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"access": None}, "no admin action declared"),
        ({"access": "key.list"}, "no admin action declared"),
        ({"access": PUBLIC}, "may be public"),
        ({"access": PUBLIC, "path": "/health", "method": "POST", "body": BodySpec()}, "public"),
        ({"method": "POST"}, "write methods take a body spec"),
        ({"body": BodySpec()}, "write methods take a body spec"),
        ({"method": "TRACE"}, "unsupported method"),
        ({"discloses_secret": True}, "only returned by POST"),
        ({"path": "/things/{thing_id}"}, "path parameters"),
    ],
)
def test_the_route_table_builder_refuses_unsafe_routes(
    changes: dict[str, object], problem: str
) -> None:
    with pytest.raises(RouteTableError, match=problem):
        check_operations([_op(**changes)])


def test_the_route_table_builder_refuses_an_action_the_domain_gives_no_roles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(routing, "ADMIN_ACTIONS", {})
    with pytest.raises(RouteTableError, match="has no roles"):
        check_operations([_op()])


def test_the_route_table_builder_refuses_duplicates_and_accepts_the_real_table() -> None:
    with pytest.raises(RouteTableError, match="declared twice"):
        check_operations([_op(), _op()])
    assert check_operations(keys.OPERATIONS) == keys.OPERATIONS
    assert check_operations([_op(access=PUBLIC, path="/health")])[0].public
