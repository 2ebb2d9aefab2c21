"""A real admin API over real services and a real store, driven in-process over ASGI.

``open_admin_env`` migrates a database (a SQLite file, or a fresh PostgreSQL schema), opens the
services on it with a fixed clock, issues one admin token per admin role and builds the app;
``admin_env_fixture`` makes a test module's fixture giving each test one on every backend.
``AdminClient`` sends requests through httpx's ASGI transport and keeps every exchange, so tests
can search every URL, header and body that went over the wire.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from starlette.types import Message

from ci_mode import unavailable
from uid2_operator.bootstrap import Services, open_services, upgrade_database
from uid2_operator.clock import FixedClock, system_random
from uid2_operator.domain.audit import AuditEvent, Outcome
from uid2_operator.domain.authorization import ADMIN_ACTIONS
from uid2_operator.domain.roles import AdminRole
from uid2_operator.domain.sealing import generate_keyring
from uid2_operator.services.context import SYSTEM
from uid2_operator.settings import Settings
from uid2_operator.web.admin_api import create_admin_app
from uid2_operator.web.admin_api.routing import Operation
from uid2_operator.web.http_connection import REFUSED_SCOPE

PREFIX = "/admin/api"
CLIENT_HOST = "192.0.2.10"
POSTGRES_URL = os.environ.get("UID2_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# Values for path placeholders when only the guard matters (auth runs before any lookup).
PLACEHOLDER_VALUES = {
    "site_id": "1001",
    "key_id": "UID2-C-L-1001-abcDEF",
    "token_id": "UID2-A-L-0-abcDEF",
    "subscription_id": "23456789ab",
}
# Each backend a test can run on; the PostgreSQL one carries the ``postgres`` mark.
ADMIN_BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@dataclass(frozen=True)
class Exchange:
    method: str
    url: str
    request_headers: dict[str, str]
    request_body: bytes
    status: int
    headers: httpx.Headers
    text: str


_UNSET: Any = object()


@dataclass
class AdminClient:
    app: Starlette
    exchanges: list[Exchange] = field(default_factory=list)
    raise_app_exceptions: bool = True

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = _UNSET,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: Any = None,
    ) -> httpx.Response:
        kwargs: dict[str, Any] = {"headers": headers or {}, "params": params}
        if json is not _UNSET:
            kwargs["json"] = json
        if content is not None:
            kwargs["content"] = content

        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(
                app=self.app,
                client=(CLIENT_HOST, 40000),
                raise_app_exceptions=self.raise_app_exceptions,
            )
            async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as c:
                response = await c.request(method, path, **kwargs)
                await response.aread()
                return response

        response = anyio.run(send)
        self.exchanges.append(
            Exchange(
                method=method,
                url=str(response.request.url),
                request_headers=dict(response.request.headers),
                request_body=response.request.content,
                status=response.status_code,
                headers=response.headers,
                text=response.text,
            )
        )
        return response


@dataclass(frozen=True)
class StoreMark:
    """Where the store stood: its change sequence and the seq of its last audit event."""

    change_seq: int
    audit_seq: int


@dataclass
class AdminEnv:
    services: Services
    app: Starlette
    client: AdminClient
    clock: FixedClock
    tokens: dict[AdminRole, str]  # one live token per admin role
    token_ids: dict[AdminRole, str]

    def auth(self, role: AdminRole = AdminRole.SUPER_USER) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def call(
        self, method: str, path: str, role: AdminRole = AdminRole.SUPER_USER, **kwargs: Any
    ) -> httpx.Response:
        headers = {**self.auth(role), **kwargs.pop("headers", {})}
        return self.client.request(method, PREFIX + path, headers=headers, **kwargs)

    def create_participant(self, roles: tuple[str, ...], name: str = "P") -> int:
        """A new publisher with ``roles``, through the API; its site id."""
        body = {"name": name, "type": "publisher", "roles": list(roles)}
        created = self.call("POST", "/participants", json=body)
        assert created.status_code == 201, created.text
        site: int = created.json()["site_id"]
        return site

    def change_seq(self) -> int:
        return self.services.store.change_seq()

    def audit_events(self) -> list[AuditEvent]:
        with self.services.store.read() as tx:
            return tx.audit.list_events()

    def mark(self) -> StoreMark:
        events = self.audit_events()
        return StoreMark(self.change_seq(), events[-1].seq if events else 0)

    def refusals_since(self, mark: StoreMark) -> list[AuditEvent]:
        """The audit events written since ``mark``, once checked to be all that changed: each
        records a refused request (``denied`` or ``failed``), and none moved the change
        sequence (a refused request makes no operator reload)."""
        events = [e for e in self.audit_events() if e.seq > mark.audit_seq]
        assert [e for e in events if e.outcome is Outcome.SUCCESS] == []
        assert self.change_seq() == mark.change_seq
        return events

    @property
    def operations(self) -> tuple[Operation, ...]:
        ops: tuple[Operation, ...] = self.app.state.operations
        return ops


@contextmanager
def open_admin_env(settings: Settings) -> Iterator[AdminEnv]:
    upgrade_database(settings)
    clock = FixedClock()
    services = open_services(
        settings, clock=clock, keyring=generate_keyring(system_random, development=True)
    )
    try:
        boot = services.admin.bootstrap_token(SYSTEM)
        assert boot is not None
        tokens = {AdminRole.SUPER_USER: boot.token}
        token_ids = {AdminRole.SUPER_USER: boot.token_id}
        for role in (AdminRole.MAINTAINER, AdminRole.READ_ONLY):
            issued = services.admin.create_admin_token(SYSTEM, name=role.value, roles=[role.value])
            tokens[role] = issued.token
            token_ids[role] = issued.token_id
        app = create_admin_app(services, clock=clock)
        yield AdminEnv(services, app, AdminClient(app), clock, tokens, token_ids)
    finally:
        services.close()


def sqlite_settings(directory: Path) -> Settings:
    return Settings(data_dir=directory)


def _libpq_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def postgres_settings(directory: Path) -> Iterator[Settings]:
    """Settings on a fresh PostgreSQL schema (dropped afterwards); skips when unreachable,
    except under CI=true, where an unreachable PostgreSQL fails the test."""
    try:
        with psycopg.connect(_libpq_dsn(POSTGRES_URL), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL at {make_url(POSTGRES_URL)!r} is unreachable: {exc}"
        unavailable(message)
    schema = f"admin_api_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_libpq_dsn(POSTGRES_URL), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield Settings(data_dir=directory, database_url=url.render_as_string(hide_password=False))
    finally:
        with psycopg.connect(_libpq_dsn(POSTGRES_URL), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def admin_env_on(backend: str, directory: Path) -> Iterator[AdminEnv]:
    """An ``AdminEnv`` on ``backend``: ``"sqlite"`` (a file under ``directory``) or
    ``"postgresql"`` (a fresh schema, as ``postgres_settings`` makes it)."""
    if backend == "sqlite":
        with open_admin_env(sqlite_settings(directory)) as opened:
            yield opened
        return
    with postgres_settings(directory) as settings, open_admin_env(settings) as opened:
        yield opened


def admin_env_fixture(
    backends: Sequence[Any] = ADMIN_BACKENDS,
) -> Callable[..., Iterator[AdminEnv]]:
    """A fixture giving each test a fresh ``AdminEnv`` under its ``tmp_path``, once per entry
    of ``backends``. Assign it in a test module; the name it is assigned to is the fixture's
    name (``env = admin_env_fixture()``)."""

    @pytest.fixture(params=backends)
    def admin_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AdminEnv]:
        with admin_env_on(request.param, tmp_path) as opened:
            yield opened

    return admin_env


def fill_path(path: str, values: dict[str, str] | None = None) -> str:
    filled = path
    for name, value in {**PLACEHOLDER_VALUES, **(values or {})}.items():
        filled = filled.replace("{" + name + "}", value)
    return filled


def roles_refused(action: str) -> list[AdminRole]:
    return sorted(set(AdminRole) - ADMIN_ACTIONS[action])


def secret_forms(secret_b64: str) -> list[str]:
    """A client secret as text, and its decoded bytes as they could appear in text (hex,
    URL-safe base64, latin-1)."""
    raw = base64.b64decode(secret_b64)
    return [
        secret_b64,
        raw.hex(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
    ]


_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "boolean": bool,
    "null": type(None),
}


def _type_matches(value: Any, kinds: str | list[str]) -> bool:
    allowed = kinds if isinstance(kinds, list) else [kinds]
    return any(
        isinstance(value, _JSON_TYPES[k]) and not (k == "integer" and isinstance(value, bool))
        for k in allowed
    )


def _object_errors(
    document: dict[str, Any], schema: dict[str, Any], value: dict[str, Any], at: str
) -> list[str]:
    errors = [f"{at}: missing {name}" for name in schema.get("required", []) if name not in value]
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    for name, item in value.items():
        if name in properties:
            errors += schema_errors(document, properties[name], item, f"{at}.{name}")
        elif extra is False:
            errors.append(f"{at}: undeclared {name}")
        elif isinstance(extra, dict):
            errors += schema_errors(document, extra, item, f"{at}.{name}")
    return errors


def schema_errors(
    document: dict[str, Any], schema: dict[str, Any], value: Any, at: str
) -> list[str]:
    """Check ``value`` against the subset of JSON Schema the admin API's document uses."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return schema_errors(document, document["components"]["schemas"][name], value, at)
    if "type" in schema and not _type_matches(value, schema["type"]):
        return [f"{at}: {type(value).__name__} is not {schema['type']}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{at}: {value!r} not in enum")
    if isinstance(value, dict):
        errors += _object_errors(document, schema, value, at)
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += schema_errors(document, schema["items"], item, f"{at}[{index}]")
    return errors


def raw_asgi_request(
    app: Starlette,
    method: str,
    path: str,
    *,
    headers: list[tuple[str, str]],
    chunks: list[bytes],
    client: tuple[str, int] | None = (CLIENT_HOST, 1),
    then_disconnect: bool = False,
    connection_answered: int | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request straight over ASGI: exact headers (none added), the body in ``chunks``; with
    ``then_disconnect``, more body is announced after them and the client disconnects instead.
    ``connection_answered``: the disconnect is the connection's, which answered the request
    itself with that status (a 408, say), as ``web.http_connection`` tells an application."""
    sent: list[Message] = []
    pending = list(chunks) or [b""]

    async def receive() -> Message:
        if not pending:
            if connection_answered is not None:
                scope[REFUSED_SCOPE] = connection_answered
            return {"type": "http.disconnect"}
        chunk = pending.pop(0)
        more = bool(pending) or then_disconnect
        return {"type": "http.request", "body": chunk, "more_body": more}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers],
        "client": client,
        "server": ("admin.test", 80),
    }
    anyio.run(app, scope, receive, send)
    start = sent[0]
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], response_headers, body
