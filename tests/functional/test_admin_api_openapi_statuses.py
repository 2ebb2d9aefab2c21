"""The OpenAPI document declares every status a route answers for its store and its query string,
and says what the product answers where it describes a value.

* 503 ``store_unavailable``: on every route that reads the store (each one that takes a token, whose
  token is looked up there, and ``/health``), answered while the database is gone;
* 422 ``invalid_input``: on every route whose query string is checked (an unknown parameter is
  refused, unaudited); ``/health`` reads none, as the operator's ``/ops/healthcheck``, so a load
  balancer's cache-busting parameter gets the usual answer;
* ``Sharing.keyset_id``: a participant without a keyset yet shows the mode its keyset will be
  created with, from its roles.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
from admin_api_harness import (
    PREFIX,
    AdminEnv,
    admin_env_fixture,
    fill_path,
    open_admin_env,
    sqlite_settings,
)

from uid2_operator.settings import DB_FILE
from uid2_operator.web.admin_api import create_admin_app
from uid2_operator.web.admin_api.bodies import Field, Kind
from uid2_operator.web.admin_api.routing import Operation, RouteTableError, check_operations

any_env = admin_env_fixture()
HEALTH = PREFIX + "/health"
DOCUMENT = PREFIX + "/openapi.json"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[AdminEnv]:
    with open_admin_env(sqlite_settings(tmp_path)) as opened:
        yield opened


def _document(env: AdminEnv) -> dict[str, Any]:
    response = env.client.request("GET", DOCUMENT)
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def _declared(document: dict[str, Any], op: Operation) -> set[int]:
    responses = document["paths"][op.full_path][op.method.lower()]["responses"]
    return {int(status) for status in responses}


def _send(env: AdminEnv, op: Operation, params: dict[str, str] | None = None) -> tuple[int, str]:
    headers = {} if op.public else env.auth()
    kwargs: dict[str, Any] = {"headers": headers, "params": params}
    if op.body is not None:
        kwargs["content"] = b"{}"
        headers["Content-Type"] = "application/json"
    response = env.client.request(op.method, fill_path(op.full_path), **kwargs)
    code = response.json()["error"]["code"] if response.status_code >= 400 else ""
    return response.status_code, code


def test_every_route_that_reads_the_store_declares_and_answers_503(
    env: AdminEnv, tmp_path: Path
) -> None:
    document = _document(env)
    (tmp_path / DB_FILE).unlink()  # the store is gone: every request that reads it gets 503
    undeclared, unanswered = [], []
    for op in env.operations:
        status, code = _send(env, op)
        if op.full_path == DOCUMENT:  # built once, from the route table: no store involved
            assert status == 200
            assert 503 not in _declared(document, op)
            continue
        if (status, code) != (503, "store_unavailable"):
            unanswered.append(f"{op.method} {op.path}: {status} {code}")
        if 503 not in _declared(document, op):
            undeclared.append(f"{op.method} {op.path}")
    assert unanswered == []
    assert undeclared == []


def test_every_route_that_checks_its_query_string_declares_and_answers_422(
    any_env: AdminEnv,
) -> None:
    env = any_env
    document = _document(env)
    undeclared, unanswered = [], []
    mark = env.mark()
    for op in env.operations:
        if op.full_path == HEALTH:
            continue
        status, code = _send(env, op, {"t": "1"})
        if (status, code) != (422, "invalid_input"):
            unanswered.append(f"{op.method} {op.path}: {status} {code}")
        if 422 not in _declared(document, op):
            undeclared.append(f"{op.method} {op.path}")
    assert unanswered == []
    assert undeclared == []
    assert env.refusals_since(mark) == []  # refused while the request was read: not audited


@pytest.mark.parametrize("query", ["t=1", "t=1&t=2", "site_id=x", "%ff=%00"])
def test_health_ignores_its_query_string_as_the_operators_healthcheck_does(
    env: AdminEnv, query: str
) -> None:
    response = env.client.request("GET", f"{HEALTH}?{query}")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    [health] = [op for op in env.operations if op.full_path == HEALTH]
    operation = _document(env)["paths"][HEALTH]["get"]
    assert set(operation["responses"]) == {"200", "500", "503"}
    assert "query string is ignored" in operation["description"]
    assert health.query_ignored


@pytest.mark.parametrize(
    ("kind", "roles", "mode"),
    [
        ("dsp", ["GENERATOR", "SHARER"], "bidders"),
        ("dsp", ["ID_READER"], "owner_only"),
        ("publisher", [], "bidders"),
    ],
)
def test_keyset_id_description_gives_the_mode_a_participant_without_a_keyset_shows(
    any_env: AdminEnv, kind: str, roles: list[str], mode: str
) -> None:
    env = any_env
    body = {"name": "New", "type": kind, "roles": roles}
    created = env.call("POST", "/participants", json=body)
    assert created.status_code == 201, created.text
    shown = env.call("GET", f"/participants/{created.json()['site_id']}/sharing").json()
    assert (shown["keyset_id"], shown["mode"]) == (None, mode)
    sharing = _document(env)["components"]["schemas"]["Sharing"]
    description = sharing["properties"]["keyset_id"]["description"]
    expected = "bidders for a publisher or when it holds GENERATOR, owner_only otherwise"
    assert expected in description, description
    assert "mode is then bidders" not in description


def test_a_route_that_ignores_its_query_string_declares_no_query_fields() -> None:
    operations = create_admin_app(cast(Any, None)).state.operations
    [health] = [op for op in operations if op.query_ignored]
    with pytest.raises(RouteTableError, match="ignores its query string"):
        check_operations([replace(health, query=(Field("t", Kind.STRING, "T"),))])
