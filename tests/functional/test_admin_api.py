"""The admin API end to end: the full key flow on real services and a real store, with no key or
secret ever leaving through a list, show, error, URL or log line; the headers, the OpenAPI
document, health, request ids and the error table."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from admin_api_harness import (
    CLIENT_HOST,
    PREFIX,
    AdminEnv,
    admin_env_fixture,
    open_admin_env,
    raw_asgi_request,
    schema_errors,
    secret_forms,
    sqlite_settings,
)
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from uid2_operator.domain.roles import AdminRole
from uid2_operator.errors import (
    AlreadyExists,
    BodyTooLarge,
    CredentialMissing,
    InvalidInput,
    KeyringError,
    PermissionDenied,
    SchemaOutOfDate,
    StoreAccessRefused,
    StoreUnavailable,
    UID2Error,
    WrongEnvironment,
)
from uid2_operator.web.admin_api import create_admin_app
from uid2_operator.web.admin_api.errors import ERROR_TABLE, mapping_for, render_error

SUPER, MAINTAINER, READER = AdminRole.SUPER_USER, AdminRole.MAINTAINER, AdminRole.READ_ONLY
DAY_MS = 86_400_000
SECRET_BEARING = {"createKey", "rotateKey", "rotateKeySecret", "createAdminToken"}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[AdminEnv]:
    with open_admin_env(sqlite_settings(tmp_path)) as opened:
        yield opened


any_env = admin_env_fixture()


def _document(env: AdminEnv) -> dict[str, Any]:
    response = env.client.request("GET", PREFIX + "/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def _check_schema(env: AdminEnv, response: httpx.Response, schema: str) -> None:
    document = _document(env)
    ref = {"$ref": f"#/components/schemas/{schema}"}
    assert schema_errors(document, ref, response.json(), schema) == []


def test_full_key_flow_on_every_backend(
    any_env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = any_env
    caplog.set_level(logging.DEBUG)
    issued_keys: list[str] = []
    issued_secrets: list[str] = []
    rid = {"X-Request-ID": "flow-0001"}

    created = env.call(
        "POST",
        "/participants",
        MAINTAINER,
        json={
            "name": "Example Publisher",
            "type": "publisher",
            "roles": ["GENERATOR", "MAPPER", "SHARER"],
            "contacts": ["ops@example.com"],
        },
        headers=rid,
    )
    assert created.status_code == 201, created.text
    _check_schema(env, created, "Participant")
    site_id = created.json()["site_id"]
    assert env.call("GET", f"/participants/{site_id}", READER).json()["name"] == (
        "Example Publisher"
    )
    assert [p["site_id"] for p in env.call("GET", "/participants", READER).json()["participants"]]
    widened = env.call(
        "PUT",
        f"/participants/{site_id}/roles",
        MAINTAINER,
        json={"roles": ["GENERATOR", "MAPPER", "SHARER", "OPTOUT"]},
    )
    assert widened.status_code == 200, widened.text
    assert widened.json()["roles"] == ["GENERATOR", "MAPPER", "OPTOUT", "SHARER"]

    key = env.call(
        "POST",
        "/keys",
        MAINTAINER,
        json={"site_id": site_id, "name": "web", "roles": ["GENERATOR"], "expires_in_days": 30},
    )
    assert key.status_code == 201, key.text
    assert key.headers["cache-control"] == "no-store"
    _check_schema(env, key, "IssuedKey")
    body = key.json()
    key_id = body["key_id"]
    issued_keys.append(body["key"])
    issued_secrets.append(body["secret"])
    assert body["key"].startswith(key_id + ".")
    assert len(base64.b64decode(body["secret"])) == 32
    # The issued key and secret are the ones the request path will accept.
    resolved = env.services.credentials.resolve_client(body["key"])
    assert base64.b64decode(body["secret"]) in resolved.secrets

    listed = env.call("GET", "/keys", READER, params={"site_id": site_id})
    assert [k["key_id"] for k in listed.json()["keys"]] == [key_id]
    _check_schema(env, listed, "KeyList")
    shown = env.call("GET", f"/keys/{key_id}", READER)
    _check_schema(env, shown, "Key")
    assert shown.json()["state"] == "active"
    assert shown.json()["expires_at_ms"] == env.clock.at_ms + 30 * DAY_MS

    renamed = env.call("POST", f"/keys/{key_id}/rename", MAINTAINER, json={"name": "web-prod"})
    assert renamed.json()["name"] == "web-prod"
    roles = env.call("PUT", f"/keys/{key_id}/roles", MAINTAINER, json={"roles": ["MAPPER"]})
    assert roles.json()["roles"] == ["MAPPER"]
    assert env.call("POST", f"/keys/{key_id}/disable", MAINTAINER).json()["state"] == "disabled"
    assert env.call("POST", f"/keys/{key_id}/enable", MAINTAINER, json={}).json()["state"] == (
        "active"
    )

    rotated = env.call("POST", f"/keys/{key_id}/rotate", MAINTAINER, json={"grace_days": 3})
    assert rotated.status_code == 201, rotated.text
    assert rotated.headers["cache-control"] == "no-store"
    _check_schema(env, rotated, "IssuedKey")
    successor = rotated.json()
    issued_keys.append(successor["key"])
    issued_secrets.append(successor["secret"])
    assert successor["key_view"]["rotated_from"] == key_id
    assert successor["roles"] == ["MAPPER"]
    old = env.call("GET", f"/keys/{key_id}", READER).json()
    assert old["rotated_to"] == successor["key_id"]
    assert old["retires_at_ms"] == env.clock.at_ms + 3 * DAY_MS
    again = env.call("POST", f"/keys/{key_id}/rotate", MAINTAINER, json={})
    assert again.status_code == 409

    new_secret = env.call(
        "POST", f"/keys/{successor['key_id']}/rotate-secret", MAINTAINER, json={"grace_days": 1}
    )
    assert new_secret.status_code == 200, new_secret.text
    assert new_secret.headers["cache-control"] == "no-store"
    _check_schema(env, new_secret, "IssuedSecret")
    issued_secrets.append(new_secret.json()["secret"])
    assert new_secret.json()["previous_secret_retires_at_ms"] == env.clock.at_ms + DAY_MS

    revoked = env.call("POST", f"/keys/{key_id}/revoke", MAINTAINER, json={"reason": "leaked"})
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["state"] == "revoked"
    assert revoked.json()["revoked_reason"] == "leaked"
    assert revoked.json()["revoked_by"] == f"admin:{env.token_ids[MAINTAINER]}"
    for path, payload in [
        ("/revoke", {"reason": "again"}),
        ("/enable", {}),
        ("/rename", {"name": "x"}),
        ("/rotate-secret", {}),
    ]:
        refused = env.call("POST", f"/keys/{key_id}{path}", MAINTAINER, json=payload)
        assert refused.status_code == 409, (path, refused.text)
        assert refused.json()["error"]["code"] == "invalid_transition"

    audit = env.call("GET", "/audit", READER, params={"limit": 1000})
    assert audit.status_code == 200
    _check_schema(env, audit, "AuditEventList")
    events = audit.json()["events"]
    actions = [e["action"] for e in events]
    for expected in [
        "participant.create",
        "key.create",
        "key.rotate",
        "key.rotate_secret",
        "key.revoke",
    ]:
        assert expected in actions
    first = next(e for e in events if e["action"] == "participant.create")
    assert first["request_id"] == "flow-0001"
    assert first["source"] == CLIENT_HOST
    assert first["actor"] == f"admin:{env.token_ids[MAINTAINER]}"
    page = env.call("GET", "/audit", READER, params={"since_seq": events[-2]["seq"]}).json()
    assert [e["seq"] for e in page["events"]] == [events[-1]["seq"]]
    only_key = env.call("GET", "/audit", READER, params={"target_id": key_id}).json()["events"]
    assert only_key
    assert {e["target_id"] for e in only_key} == {key_id}

    # A reader sees every event but those about admin tokens, which only SUPER_USER may list.
    every = env.call("GET", "/audit", SUPER, params={"limit": 1000}).json()["events"]
    assert events == [e for e in every if e["target_type"] != "admin_token"]
    assert events[-1] == every[-1]
    verdict = env.call("POST", "/audit/verify", SUPER)
    assert verdict.json() == {"ok": True, "checked": len(every), "first_bad_seq": None,
                              "reason": None, "head_seq": events[-1]["seq"],
                              "head_hash": events[-1]["hash"]}  # fmt: skip

    _assert_no_secret_leaked(env, issued_keys, issued_secrets, caplog)


def _assert_no_secret_leaked(
    env: AdminEnv, keys: list[str], secrets: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    needles = keys + [form for secret in secrets for form in secret_forms(secret)]
    tails = [key.split(".", 1)[1] for key in keys]
    issuing = 0
    for exchange in env.client.exchanges:
        for needle in needles + tails:
            assert needle not in exchange.url
        is_issue = (
            exchange.method == "POST"
            and exchange.status in (200, 201)
            and any(
                exchange.url.endswith(suffix)
                for suffix in ("/keys", "/rotate", "/rotate-secret", "/admin-tokens")
            )
        )
        if is_issue:
            issuing += 1
            assert exchange.headers["cache-control"] == "no-store"
            continue
        for needle in needles + tails:
            assert needle not in exchange.text, (exchange.method, exchange.url)
    assert issuing >= 3
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "admin POST /admin/api/keys" in logged  # the access log did run
    for needle in needles + tails:
        assert needle not in logged


def test_a_rotation_without_grace_days_keeps_the_old_credential_for_the_default_grace(
    env: AdminEnv,
) -> None:
    # Cutting the old key or secret off at once would be an outage for a routine rotation.
    site_id = env.call(
        "POST", "/participants", MAINTAINER,
        json={"name": "P", "type": "publisher", "roles": ["GENERATOR"]},
    ).json()["site_id"]  # fmt: skip
    key_id = env.call(
        "POST", "/keys", MAINTAINER, json={"site_id": site_id, "name": "k", "roles": ["GENERATOR"]}
    ).json()["key_id"]
    grace_ms = 7 * DAY_MS  # the documented default
    successor = env.call("POST", f"/keys/{key_id}/rotate", MAINTAINER, json={})
    assert successor.status_code == 201, successor.text
    old = env.call("GET", f"/keys/{key_id}", READER).json()
    assert old["retires_at_ms"] == env.clock.at_ms + grace_ms
    new_id = successor.json()["key_id"]
    secret = env.call("POST", f"/keys/{new_id}/rotate-secret", MAINTAINER, json={})
    assert secret.status_code == 200, secret.text
    assert secret.json()["previous_secret_retires_at_ms"] == env.clock.at_ms + grace_ms


def test_each_issued_credential_is_disclosed_once_and_only_by_post(env: AdminEnv) -> None:
    site = env.call(
        "POST", "/participants", json={"name": "P", "type": "dsp", "roles": ["ID_READER"]}
    )
    site_id = site.json()["site_id"]
    key = env.call("POST", "/keys", json={"site_id": site_id, "name": "k", "roles": ["ID_READER"]})
    token = env.call("POST", "/admin-tokens", json={"name": "ops", "roles": ["READ_ONLY"]})
    assert token.status_code == 201
    assert token.headers["cache-control"] == "no-store"
    _check_schema(env, token, "IssuedAdminToken")
    issued = token.json()
    # The new token works, with exactly its roles.
    headers = {"Authorization": f"Bearer {issued['token']}"}
    assert env.client.request("GET", PREFIX + "/keys", headers=headers).status_code == 200
    assert env.client.request("GET", PREFIX + "/admin-tokens", headers=headers).status_code == 403
    tokens = env.call("GET", "/admin-tokens").json()["admin_tokens"]
    assert issued["token_id"] in [t["token_id"] for t in tokens]

    secret_text = [key.json()["key"], key.json()["secret"], issued["token"]]
    for exchange in env.client.exchanges[2:]:
        if exchange.url.endswith("/admin-tokens") and exchange.method == "POST":
            continue
        for needle in secret_text:
            assert needle not in exchange.text
    # Every operation that discloses a secret is a POST and is documented as such.
    documented = {
        op["operationId"]
        for methods in _document(env)["paths"].values()
        for method, op in methods.items()
        if op.get("x-discloses-secret") and method == "post"
    }
    assert documented == SECRET_BEARING
    assert {op.operation_id for op in env.operations if op.discloses_secret} == SECRET_BEARING


def test_every_response_is_no_store_and_carries_a_request_id(env: AdminEnv) -> None:
    responses = [
        env.client.request("GET", PREFIX + "/health"),
        env.client.request("GET", PREFIX + "/openapi.json"),
        env.client.request("GET", PREFIX + "/keys"),
        env.call("GET", "/keys"),
        env.call("GET", "/nowhere"),
        env.call("DELETE", "/keys"),
        env.call("GET", "/keys/UID2-C-L-3-zzzzzz"),
    ]
    for response in responses:
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert len(response.headers["x-request-id"]) == 32
    assert [r.status_code for r in responses] == [200, 200, 401, 200, 404, 405, 404]
    assert set(responses[5].headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
    assert responses[5].json()["error"]["code"] == "method_not_allowed"


def test_request_ids_are_kept_when_safe_and_drawn_from_the_injected_source(
    tmp_path: Path,
) -> None:
    with open_admin_env(sqlite_settings(tmp_path)) as env:
        app = create_admin_app(env.services, random=lambda n: bytes(range(n)))
        auth = env.auth(MAINTAINER)
        client = env.client
        client.app = app
        kept = client.request(
            "POST",
            PREFIX + "/participants",
            json={"name": "R", "type": "advertiser"},
            headers={**auth, "X-Request-ID": "trace-42:a.b_c"},
        )
        assert kept.headers["x-request-id"] == "trace-42:a.b_c"
        replaced = client.request(
            "GET", PREFIX + "/participants", headers={**auth, "X-Request-ID": "has spaces"}
        )
        drawn = bytes(range(16)).hex()
        assert replaced.headers["x-request-id"] == drawn
        too_long = client.request("GET", PREFIX + "/health", headers={"X-Request-ID": "a" * 129})
        assert too_long.headers["x-request-id"] == drawn
        event = env.call("GET", "/audit", params={"action": "participant.create"}).json()
        assert event["events"][-1]["request_id"] == "trace-42:a.b_c"


def test_openapi_document_describes_every_route(env: AdminEnv) -> None:
    document = _document(env)
    assert document["openapi"] == "3.1.0"
    schemas = document["components"]["schemas"]
    documented = {
        (method.upper(), path) for path, methods in document["paths"].items() for method in methods
    }
    assert documented == {(op.method, op.full_path) for op in env.operations}
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            public = path in (PREFIX + "/health", PREFIX + "/openapi.json")
            assert (op["security"] == []) is public, (method, path)
            if not public:
                assert op["x-admin-action"]
                assert {"401", "403", "500"} <= set(op["responses"])
            if method in ("post", "put"):
                schema = op["requestBody"]["content"]["application/json"]["schema"]
                assert schema["additionalProperties"] is False
                assert {"400", "413", "415", "422"} <= set(op["responses"])
            for response in op["responses"].values():
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref.rsplit("/", 1)[-1] in schemas
            for parameter in op.get("parameters", []):
                assert parameter["name"] not in {"key", "secret", "token"}
    assert document["components"]["securitySchemes"]["adminToken"]["scheme"] == "bearer"


def test_health_needs_no_token_and_reports_a_dead_store(env: AdminEnv) -> None:
    assert env.client.request("GET", PREFIX + "/health").json() == {"status": "ok"}

    class DeadStore:
        def change_seq(self) -> int:
            raise ConnectionError("db.internal:5432 password=hunter2")

    class Broken:
        store = DeadStore()
        credentials = env.services.credentials
        admin = env.services.admin

    env.client.app = create_admin_app(Broken())
    response = env.client.request("GET", PREFIX + "/health")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "store_unavailable"
    assert "hunter2" not in response.text


def test_an_unexpected_exception_is_a_bare_500_logged_without_its_message(
    env: AdminEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(*args: object, **kwargs: object) -> object:
        raise RuntimeError("UID2-C-L-3-abcdef.sensitive-tail-text")

    monkeypatch.setattr(env.services.credentials, "participant_page", explode)
    with caplog.at_level(logging.INFO):
        response = env.call("GET", "/participants")
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "code": "internal_error",
            "message": "Internal error; quote the X-Request-ID header when reporting it",
        }
    }
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "RuntimeError" in errors[0].getMessage()
    assert response.headers["x-request-id"] in errors[0].getMessage()
    assert "sensitive-tail-text" not in caplog.text


def test_domain_errors_map_to_404_409_and_422(env: AdminEnv) -> None:
    site = env.call("POST", "/participants", json={"name": "A", "type": "publisher", "site_id": 50})
    assert site.status_code == 201
    taken = env.call(
        "POST", "/participants", json={"name": "B", "type": "publisher", "site_id": 50}
    )
    assert (taken.status_code, taken.json()["error"]["code"]) == (409, "already_exists")
    named = env.call("POST", "/participants", json={"name": " a ", "type": "dsp", "site_id": 51})
    assert (named.status_code, named.json()["error"]) == (
        409,
        {"code": "already_exists", "message": "Participant 50 already has this name"},
    )
    assert env.call("GET", "/participants/51").status_code == 404
    assert env.call("GET", "/participants/abc").status_code == 422
    assert env.call("GET", "/keys/UID2-C-L-50-zzzzzz").json()["error"]["code"] == "not_found"
    assert env.call("GET", "/keys", params={"site_id": 51}).status_code == 404
    outside = env.call("POST", "/keys", json={"site_id": 50, "name": "k", "roles": ["MAPPER"]})
    assert (outside.status_code, outside.json()["error"]["code"]) == (422, "invalid_input")
    assert "MAPPER" in outside.json()["error"]["message"]
    twice = env.call("POST", "/participants/50/enable")
    assert twice.status_code == 409


def _publisher(env: AdminEnv) -> int:
    created = env.call(
        "POST", "/participants", json={"name": "P", "type": "publisher", "roles": ["GENERATOR"]}
    )
    assert created.status_code == 201
    site_id: int = created.json()["site_id"]
    return site_id


def test_a_full_key_in_a_url_is_refused_without_being_echoed(env: AdminEnv) -> None:
    site_id = _publisher(env)
    key = env.call("POST", "/keys", json={"site_id": site_id, "name": "k", "roles": ["GENERATOR"]})
    text = key.json()["key"]
    response = env.call("GET", f"/keys/{text}")
    assert response.status_code == 422
    assert text.split(".")[1] not in response.text


def test_concurrent_rotations_make_exactly_one_successor(env: AdminEnv) -> None:
    site_id = _publisher(env)
    key_id = env.call(
        "POST", "/keys", json={"site_id": site_id, "name": "k", "roles": ["GENERATOR"]}
    ).json()["key_id"]
    statuses: list[int] = []

    async def rotate_all() -> None:
        transport = httpx.ASGITransport(app=env.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as client:

            async def rotate() -> None:
                response = await client.post(
                    f"{PREFIX}/keys/{key_id}/rotate", json={}, headers=env.auth(MAINTAINER)
                )
                statuses.append(response.status_code)

            async with anyio.create_task_group() as group:
                for _ in range(6):
                    group.start_soon(rotate)

    anyio.run(rotate_all)
    assert sorted(statuses) == [201] + [409] * 5
    keys = env.call("GET", "/keys", params={"site_id": site_id}).json()["keys"]
    assert len(keys) == 2


def test_the_error_table_is_looked_up_along_the_mro() -> None:
    class Narrower(InvalidInput):
        code = "narrower"

    assert mapping_for(Narrower) == ERROR_TABLE[InvalidInput]
    assert mapping_for(WrongEnvironment) is not None
    assert render_error(WrongEnvironment("This is the prod environment")).status == 401
    assert render_error(CredentialMissing()).status == 401
    assert render_error(PermissionDenied()).status == 403
    assert render_error(AlreadyExists()).status == 409
    assert render_error(BodyTooLarge()).status == 413
    narrower = render_error(Narrower("field x is wrong"))
    assert (narrower.status, narrower.body["error"]) == (
        422,
        {"code": "narrower", "message": "field x is wrong"},
    )
    # Infrastructure errors keep their code but never their instance message.
    hidden = render_error(SchemaOutOfDate("postgresql://admin:pw@db/prod is at r0001"))
    assert hidden.status == 500
    assert "pw@db" not in str(hidden.body)
    unavailable = render_error(
        StoreUnavailable("The store at postgresql://db-internal:5432 is down")
    )
    assert (unavailable.status, unavailable.body["error"]) == (
        503,
        {"code": "store_unavailable", "message": StoreUnavailable.message},
    )
    refused = render_error(StoreAccessRefused("permission denied for table api_keys at /srv/db"))
    assert (refused.status, refused.body["error"]["message"]) == (503, StoreAccessRefused.message)
    assert render_error(KeyringError("kek bytes 00ff")).body["error"]["message"] == (
        KeyringError.message
    )
    # Unlisted classes and foreign exceptions are internal errors.
    assert render_error(UID2Error("root")).status == 500
    assert render_error(ValueError("nope")).body["error"]["code"] == "internal_error"
    assert render_error(ValueError("nope")).expected is False


def test_raw_asgi_edges(env: AdminEnv) -> None:
    auth = ("authorization", f"Bearer {env.tokens[MAINTAINER]}")
    # Two Authorization headers: which one counts is ambiguous, so neither does.
    status, headers, _ = raw_asgi_request(
        env.app, "GET", PREFIX + "/keys", headers=[auth, auth], chunks=[]
    )
    assert (status, headers["www-authenticate"]) == (401, 'Bearer realm="uid2-admin"')
    # No peer address (a Unix socket): the audit row has no source. A server that hands over
    # something other than an address (a forwarded-for value applied by a server not configured
    # as serve configures uvicorn): not recorded as the address either.
    peers: list[tuple[tuple[str, int] | None, str | None]] = [
        (None, None),
        (("<script>x</script>", 1), None),
        (("UID2-C-L-3-abcDEF.secret-looking-text", 1), None),
        (("::1", 1), "::1"),
    ]
    for number, (client, source) in enumerate(peers):
        status, _, _ = raw_asgi_request(
            env.app,
            "POST",
            PREFIX + "/participants",
            headers=[auth, ("content-type", "application/json")],
            chunks=[b'{"name": "S%d", "type": "dsp"}' % number],
            client=client,
        )
        assert status == 201
        event = env.call("GET", "/audit", params={"action": "participant.create"}).json()
        assert event["events"][-1]["source"] == source, client


def test_lifespan_passes_through_the_request_context() -> None:
    app = create_admin_app(_NoServices())
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    anyio.run(app, {"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]


class _NoServices:
    store = None
    credentials = None
    admin = None


def test_errors_raised_outside_the_endpoints_keep_the_error_format(env: AdminEnv) -> None:
    async def teapot(request: Request) -> Response:
        raise HTTPException(418)

    async def broken(request: Request) -> Response:
        raise RuntimeError("password=hunter2")

    env.app.router.routes.append(Route("/teapot", teapot))
    env.app.router.routes.append(Route("/broken", broken))
    env.client.raise_app_exceptions = False
    tea = env.client.request("GET", "/teapot")
    assert (tea.status_code, tea.json()["error"]["code"]) == (418, "http_error")
    crash = env.client.request("GET", "/broken")
    assert crash.status_code == 500
    assert crash.json()["error"]["code"] == "internal_error"
    assert "hunter2" not in crash.text
