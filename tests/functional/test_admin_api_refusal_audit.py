"""Refused admin requests leave an audit event: ``denied`` for a token whose roles do not allow the
action (403), ``failed`` for a write refused by a rule after authorisation (404, 409, 422). Real
services on a real store (SQLite, and PostgreSQL when reachable), driven over ASGI.

Not recorded: requests without a valid token (401), reads that fail, and bodies refused before the
action (400, 413, 415, 422 from the declared fields). A failing audit write never changes the
answer.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from admin_api_harness import (
    CLIENT_HOST,
    PREFIX,
    AdminEnv,
    open_admin_env,
    postgres_settings,
    sqlite_settings,
)

from uid2_operator.domain.roles import AdminRole
from uid2_operator.services.context import SYSTEM
from uid2_operator.settings import DB_FILE

pytestmark = pytest.mark.functional

SUPER, MAINTAINER, READER = AdminRole.SUPER_USER, AdminRole.MAINTAINER, AdminRole.READ_ONLY
REQUEST_ID = "req-refusal-1"


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AdminEnv]:
    if request.param == "sqlite":
        with open_admin_env(sqlite_settings(tmp_path)) as opened:
            yield opened
    else:
        with postgres_settings(tmp_path) as settings, open_admin_env(settings) as opened:
            yield opened


@pytest.fixture
def sqlite_env(tmp_path: Path) -> Iterator[AdminEnv]:
    with open_admin_env(sqlite_settings(tmp_path)) as opened:
        yield opened


def _participant_and_key(env: AdminEnv) -> tuple[int, dict[str, Any]]:
    body = {"name": "P", "type": "publisher", "roles": ["GENERATOR"]}
    site: int = env.call("POST", "/participants", json=body).json()["site_id"]
    key = env.call("POST", "/keys", json={"site_id": site, "name": "k", "roles": ["GENERATOR"]})
    assert key.status_code == 201, key.text
    return site, key.json()


def _verified(env: AdminEnv) -> dict[str, Any]:
    verdict = env.call("POST", "/audit/verify", SUPER)
    assert verdict.status_code == 200, verdict.text
    body: dict[str, Any] = verdict.json()
    assert body["ok"] is True, body
    return body


def test_a_reader_creating_a_key_is_denied_and_leaves_one_denied_event(env: AdminEnv) -> None:
    site, _ = _participant_and_key(env)
    mark = env.mark()
    attempt = {"site_id": site, "name": "escalate", "roles": ["GENERATOR"]}
    response = env.call("POST", "/keys", READER, json=attempt, headers={"X-Request-ID": REQUEST_ID})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"

    [event] = env.refusals_since(mark)
    assert event.outcome.value == "denied"
    assert event.actor == f"admin:{env.token_ids[READER]}"
    assert event.action == "key.create"
    assert (event.target_type, event.target_id, event.site_id) == ("api_key", "", None)
    assert (event.request_id, event.source) == (REQUEST_ID, CLIENT_HOST)
    assert (event.before, event.after) == (None, None)
    assert event.at_ms == env.clock.now_ms()
    # Nothing else happened: no key was issued.
    assert [k["name"] for k in env.call("GET", "/keys").json()["keys"]] == ["k"]
    # The event is on the chain like any other, and the API lists it.
    verdict = _verified(env)
    assert verdict["head_seq"] == event.seq
    listed = env.call("GET", "/audit", READER, params={"since_seq": mark.audit_seq}).json()
    assert [(e["seq"], e["outcome"], e["action"]) for e in listed["events"]] == [
        (event.seq, "denied", "key.create")
    ]


def test_a_denied_event_names_the_target_from_the_path(env: AdminEnv) -> None:
    _, key = _participant_and_key(env)
    mark = env.mark()
    path = f"/keys/{key['key_id']}/revoke"
    assert env.call("POST", path, READER, json={"reason": "x"}).status_code == 403
    # Reads a role may not perform are denied and recorded as well.
    assert env.call("GET", "/admin-tokens", MAINTAINER).status_code == 403
    # A whole key in the path is never recorded as the target.
    assert env.call("POST", f"/keys/{key['key']}/disable", READER, json={}).status_code == 403
    events = env.refusals_since(mark)
    assert [(e.outcome.value, e.action, e.target_type, e.target_id) for e in events] == [
        ("denied", "key.revoke", "api_key", key["key_id"]),
        ("denied", "admin_token.list", "admin_token", ""),
        ("denied", "key.disable", "api_key", ""),
    ]
    assert events[1].actor == f"admin:{env.token_ids[MAINTAINER]}"
    assert key["key"].split(".")[1] not in repr(events)
    _verified(env)


def test_revoking_a_revoked_key_fails_and_leaves_one_failed_event(env: AdminEnv) -> None:
    _, key = _participant_and_key(env)
    path = f"/keys/{key['key_id']}/revoke"
    assert env.call("POST", path, MAINTAINER, json={"reason": "leaked"}).status_code == 200
    mark = env.mark()
    again = env.call(
        "POST", path, MAINTAINER, json={"reason": "again"}, headers={"X-Request-ID": REQUEST_ID}
    )
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "invalid_transition"

    [event] = env.refusals_since(mark)
    assert event.outcome.value == "failed"
    assert event.actor == f"admin:{env.token_ids[MAINTAINER]}"
    assert (event.action, event.target_type, event.target_id) == (
        "key.revoke",
        "api_key",
        key["key_id"],
    )
    assert (event.request_id, event.source) == (REQUEST_ID, CLIENT_HOST)
    # The error's code only: no message, nothing of the body.
    assert (event.before, event.after) == (None, {"code": "invalid_transition"})
    assert "again" not in repr(event)
    _verified(env)


def test_an_unknown_participant_fails_with_the_site_as_target(env: AdminEnv) -> None:
    mark = env.mark()
    response = env.call("POST", "/participants/4242/disable", MAINTAINER, json={})
    assert response.status_code == 404
    [event] = env.refusals_since(mark)
    assert (event.outcome.value, event.action, event.after) == (
        "failed",
        "participant.disable",
        {"code": "not_found"},
    )
    assert (event.target_type, event.target_id, event.site_id) == ("participant", "4242", 4242)


def test_requests_without_a_valid_token_leave_no_event(env: AdminEnv) -> None:
    revoked = env.services.admin.create_admin_token(SYSTEM, name="old", roles=["SUPER_USER"])
    env.services.admin.revoke_admin_token(SYSTEM, revoked.token_id)
    mark = env.mark()
    for headers in (
        {},
        {"Authorization": "Bearer nonsense"},
        {"Authorization": f"Bearer {revoked.token}"},
        {"Authorization": f"Bearer {env.tokens[READER]}x"},
    ):
        response = env.client.request(
            "POST", PREFIX + "/keys", headers=headers, json={"site_id": 3, "name": "k"}
        )
        assert response.status_code == 401, response.text
    assert env.refusals_since(mark) == []
    assert env.change_seq() == mark.change_seq


def test_reads_leave_no_event_even_when_they_fail(env: AdminEnv) -> None:
    _, key = _participant_and_key(env)
    mark = env.mark()
    assert env.call("GET", "/keys", READER).status_code == 200
    assert env.call("GET", f"/keys/{key['key_id']}", READER).status_code == 200
    assert env.call("GET", "/keys/UID2-C-L-3-zzzzzz", READER).status_code == 404
    assert env.call("GET", "/participants/4242", READER).status_code == 404
    assert env.call("GET", "/keys", READER, params={"site_id": "x"}).status_code == 422
    assert env.refusals_since(mark) == []
    assert env.change_seq() == mark.change_seq


def test_bodies_refused_before_the_action_leave_no_event(env: AdminEnv) -> None:
    _, key = _participant_and_key(env)
    path = f"/keys/{key['key_id']}/revoke"
    mark = env.mark()
    json_type = {"Content-Type": "application/json"}
    assert env.call("POST", path, content=b"{not json", headers=json_type).status_code == 400
    text_type = {"Content-Type": "text/plain"}
    assert env.call("POST", path, content=b'{"reason": "x"}', headers=text_type).status_code == 415
    assert env.call("POST", path, json={"reason": "x", "extra": 1}).status_code == 422
    assert env.call("POST", path, json={}).status_code == 422
    assert env.refusals_since(mark) == []
    assert env.change_seq() == mark.change_seq


def test_an_audit_write_that_fails_does_not_change_the_answer(
    sqlite_env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = sqlite_env
    _, key = _participant_and_key(env)
    path = f"/keys/{key['key_id']}/revoke"
    assert env.call("POST", path, json={"reason": "leaked"}).status_code == 200
    # The store refuses every refusal event from now on (successes still go through).
    db = env.services.settings.data_dir / DB_FILE
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TRIGGER no_refusals BEFORE INSERT ON audit_events "
            "WHEN NEW.outcome != 'success' BEGIN SELECT RAISE(ABORT, 'trigger-says-no'); END"
        )
    conn.close()
    mark = env.mark()
    with caplog.at_level(logging.INFO):
        denied = env.call("POST", "/keys", READER, json={"site_id": 3, "name": "k", "roles": []})
        failed = env.call("POST", path, json={"reason": "again"})
    assert (denied.status_code, denied.json()["error"]["code"]) == (403, "permission_denied")
    assert (failed.status_code, failed.json()["error"]["code"]) == (409, "invalid_transition")
    assert env.refusals_since(mark) == []
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2, errors
    assert "the denied audit event could not be written" in errors[0]
    assert "the failed audit event could not be written" in errors[1]
    assert not any("trigger-says-no" in message for message in errors)
    # Successful changes are still recorded.
    created = env.call("POST", "/participants", json={"name": "Q", "type": "dsp"})
    assert created.status_code == 201
    _verified(env)
