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

import anyio
import pytest
from admin_api_harness import (
    CLIENT_HOST,
    PREFIX,
    AdminEnv,
    admin_env_fixture,
    open_admin_env,
    sqlite_settings,
)

from uid2_operator.domain.roles import AdminRole
from uid2_operator.services.context import SYSTEM
from uid2_operator.settings import DB_FILE

pytestmark = pytest.mark.functional

SUPER, MAINTAINER, READER = AdminRole.SUPER_USER, AdminRole.MAINTAINER, AdminRole.READ_ONLY
REQUEST_ID = "req-refusal-1"


env = admin_env_fixture()


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
    site, key = _participant_and_key(env)
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
    # The site of the key's id; none for a token, nor for a path that is not a key id.
    assert [e.site_id for e in events] == [site, None, None]
    assert events[1].actor == f"admin:{env.token_ids[MAINTAINER]}"
    assert key["key"].split(".")[1] not in repr(events)
    _verified(env)


def test_a_denied_event_records_no_id_for_a_path_value_not_in_the_exact_shape(
    env: AdminEnv,
) -> None:
    # The edge refuses these paths (422) for a token allowed to act; for one that is not, the
    # event is written before any check of the path, and may record an id only when the value is
    # exactly one: an id surrounded by whitespace is not (nor is its site).
    site, key = _participant_and_key(env)
    token_id = env.token_ids[READER]
    mark = env.mark()
    for path in (
        f"/keys/%20{key['key_id']}%09/rename",
        f"/admin-tokens/{token_id}%0A/revoke",
        f"/participants/%20{site}/disable",
    ):
        assert env.call("POST", path, READER, json={}).status_code == 403, path
    events = env.refusals_since(mark)
    assert [(e.action, e.target_type, e.target_id, e.site_id) for e in events] == [
        ("key.update", "api_key", "", None),
        ("admin_token.revoke", "admin_token", "", None),
        ("participant.disable", "participant", "", None),
    ]
    # In its exact shape the key's id is recorded, with its site (an attempt of another action:
    # repeated denials of one action are limited to one event a minute).
    mark = env.mark()
    assert env.call("POST", f"/keys/{key['key_id']}/disable", READER, json={}).status_code == 403
    [event] = env.refusals_since(mark)
    assert (event.action, event.target_id, event.site_id) == ("key.disable", key["key_id"], site)
    _verified(env)


def test_revoking_a_revoked_key_fails_and_leaves_one_failed_event(env: AdminEnv) -> None:
    site, key = _participant_and_key(env)
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
    # The site the key was issued to, as on the key's success events: found by site id too.
    assert event.site_id == site
    found = env.call("GET", "/audit", SUPER, params={"site_id": str(site), "action": "key.revoke"})
    assert [e["outcome"] for e in found.json()["events"]] == ["success", "failed"]
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


def test_a_create_refused_by_a_rule_names_the_site_its_body_asked_for(env: AdminEnv) -> None:
    site, _ = _participant_and_key(env)
    assert env.call("POST", f"/participants/{site}/disable", MAINTAINER, json={}).status_code == 200
    mark = env.mark()
    key = {"site_id": site, "name": "z", "roles": ["GENERATOR"]}
    assert env.call("POST", "/keys", MAINTAINER, json=key).status_code == 409
    assert env.call("POST", "/keypairs", MAINTAINER, json={"site_id": 4343}).status_code == 404
    taken = {"name": "Q", "type": "dsp", "site_id": site}
    assert env.call("POST", "/participants", MAINTAINER, json=taken).status_code == 409
    events = env.refusals_since(mark)
    assert [(e.action, e.target_type, e.target_id, e.site_id) for e in events] == [
        ("key.create", "api_key", "", site),
        ("keypair.create", "keypair", "", 4343),
        ("participant.create", "participant", str(site), site),
    ]
    # So the participant's refusals are found by its site id, as docs/admin-api.md says.
    found = env.call(
        "GET", "/audit", SUPER, params={"site_id": str(site), "since_seq": mark.audit_seq}
    )
    assert [(e["action"], e["outcome"]) for e in found.json()["events"]] == [
        ("key.create", "failed"),
        ("participant.create", "failed"),
    ]


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


def _denied_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "repeated denials" in r.getMessage()]


def test_repeated_denials_within_a_minute_leave_one_event(
    env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    site, _ = _participant_and_key(env)
    mark = env.mark()
    attempt = {"site_id": site, "name": "escalate", "roles": ["GENERATOR"]}
    answers = []
    with caplog.at_level(logging.INFO):
        for n in range(100):  # 100 requests over 49.5 seconds
            env.clock.advance(0 if n == 0 else 500)
            response = env.call(
                "POST", "/keys", READER, json=attempt, headers={"X-Request-ID": f"req-{n}"}
            )
            answers.append((response.status_code, response.json()))
        assert answers == [(403, answers[0][1])] * 100  # the same answer, recorded or not
        [first] = env.refusals_since(mark)
        assert (first.outcome.value, first.action, first.request_id) == (
            "denied",
            "key.create",
            "req-0",
        )
        assert _denied_logs(caplog) == []

        # The window ends a minute after the recorded one: the next denial is recorded again,
        # with the 99 left out in ``after``.
        env.clock.advance(60_000 - 49_500)
        again = env.call("POST", "/keys", READER, json=attempt, headers={"X-Request-ID": "last"})
    assert (again.status_code, again.json()["error"]) == (403, answers[0][1]["error"])
    first_again, second = env.refusals_since(mark)
    assert first_again == first
    assert (second.outcome.value, second.action, second.actor, second.request_id) == (
        "denied",
        "key.create",
        f"admin:{env.token_ids[READER]}",
        "last",
    )
    assert second.at_ms == first.at_ms + 60_000
    assert (first.after, second.after) == (None, {"repeated": 99})
    [logged] = _denied_logs(caplog)
    assert "99 repeated denials" in logged
    assert "actor=admin:" + env.token_ids[READER] in logged
    assert [k["name"] for k in env.call("GET", "/keys").json()["keys"]] == ["k"]
    _verified(env)


def test_different_attempts_are_limited_separately(env: AdminEnv) -> None:
    _, key = _participant_and_key(env)
    mark = env.mark()
    attempts = [
        ("POST", "/keys", READER, {"site_id": 3, "name": "k", "roles": []}),
        ("POST", "/participants", READER, {"name": "Q", "type": "dsp"}),
        ("POST", f"/keys/{key['key_id']}/rename", READER, {"name": "x"}),
        # Same action (key.update), another route.
        ("PUT", f"/keys/{key['key_id']}/roles", READER, {"roles": []}),
        # Same route and action, another token.
        ("GET", "/admin-tokens", MAINTAINER, None),
        ("GET", "/admin-tokens", READER, None),
    ]
    for _ in range(3):
        for method, path, role, body in attempts:
            kwargs = {} if body is None else {"json": body}
            assert env.call(method, path, role, **kwargs).status_code == 403
    events = env.refusals_since(mark)
    reader, maintainer = (f"admin:{env.token_ids[r]}" for r in (READER, MAINTAINER))
    assert [(e.actor, e.action, e.target_id) for e in events] == [
        (reader, "key.create", ""),
        (reader, "participant.create", ""),
        (reader, "key.update", key["key_id"]),
        (reader, "key.update", key["key_id"]),
        (maintainer, "admin_token.list", ""),
        (reader, "admin_token.list", ""),
    ]


def test_failed_events_are_not_limited(env: AdminEnv) -> None:
    _, key = _participant_and_key(env)
    path = f"/keys/{key['key_id']}/revoke"
    assert env.call("POST", path, MAINTAINER, json={"reason": "leaked"}).status_code == 200
    mark = env.mark()
    for _ in range(3):
        assert env.call("POST", path, MAINTAINER, json={"reason": "again"}).status_code == 409
    events = env.refusals_since(mark)
    assert [(e.outcome.value, e.after) for e in events] == [
        ("failed", {"code": "invalid_transition"})
    ] * 3


def test_a_denial_that_could_not_be_written_is_counted_with_the_next(
    sqlite_env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = sqlite_env
    db = env.services.settings.data_dir / DB_FILE
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TRIGGER no_refusals BEFORE INSERT ON audit_events "
            "WHEN NEW.outcome != 'success' BEGIN SELECT RAISE(ABORT, 'trigger-says-no'); END"
        )
    conn.close()
    mark = env.mark()
    body = {"site_id": 3, "name": "k", "roles": []}
    with caplog.at_level(logging.INFO):
        for _ in range(3):  # the first is not written; the other two are repeats
            assert env.call("POST", "/keys", READER, json=body).status_code == 403
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TRIGGER no_refusals")
        conn.close()
        assert env.refusals_since(mark) == []
        env.clock.advance(60_000)
        assert env.call("POST", "/keys", READER, json=body).status_code == 403
    [event] = env.refusals_since(mark)
    assert (event.outcome.value, event.action, event.after) == (
        "denied",
        "key.create",
        {"repeated": 3},
    )
    [logged] = _denied_logs(caplog)
    assert "3 repeated denials" in logged
    _verified(env)


def _unreported_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "repeated=" in r.getMessage()
    ]


def test_a_token_walking_through_ids_makes_one_attempt(
    env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    mark = env.mark()
    body = {"roles": ["GENERATOR"]}
    with caplog.at_level(logging.INFO):
        for n in range(200):  # 200 sites in 59.7 seconds
            env.clock.advance(0 if n == 0 else 300)
            response = env.call("PUT", f"/participants/{1000 + n}/roles", READER, json=body)
            assert response.status_code == 403
        [first] = env.refusals_since(mark)
        # The recorded one names its own target.
        assert (first.outcome.value, first.action, first.target_id, first.site_id) == (
            "denied",
            "participant.update",
            "1000",
            1000,
        )
        # After the window, the next denial of that route, on yet another site, carries the count.
        env.clock.advance(60_000 - 59_700)
        assert env.call("PUT", "/participants/5000/roles", READER, json=body).status_code == 403
    _, second = env.refusals_since(mark)
    assert (second.action, second.target_id, second.after) == (
        "participant.update",
        "5000",
        {"repeated": 199},
    )
    assert _unreported_logs(caplog) == []
    _verified(env)


def test_a_burst_that_stops_is_logged_at_the_next_denial_of_anything(
    env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    mark = env.mark()
    reader = f"admin:{env.token_ids[READER]}"
    body = {"site_id": 3, "name": "k", "roles": []}
    with caplog.at_level(logging.INFO):
        for _ in range(500):
            assert env.call("POST", "/keys", READER, json=body).status_code == 403
        env.clock.advance(60_000)
        # Another token, another route: the burst's window has ended, so its count is logged now.
        assert env.call("GET", "/admin-tokens", MAINTAINER).status_code == 403
    [logged] = _unreported_logs(caplog)
    assert f"actor={reader} action=key.create route=POST /keys repeated=499" in logged
    # No audit event was written for the burst from the other request: one each.
    events = env.refusals_since(mark)
    assert [(e.actor, e.action, e.after) for e in events] == [
        (reader, "key.create", None),
        (f"admin:{env.token_ids[MAINTAINER]}", "admin_token.list", None),
    ]
    # Reported once: the burst's next denial starts afresh.
    assert env.call("POST", "/keys", READER, json=body).status_code == 403
    assert env.refusals_since(mark)[-1].after is None
    assert len(_unreported_logs(caplog)) == 1


def test_the_counts_pending_at_shutdown_are_logged(
    sqlite_env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = sqlite_env
    body = {"site_id": 3, "name": "k", "roles": []}
    for _ in range(4):
        assert env.call("POST", "/keys", READER, json=body).status_code == 403

    async def run_and_stop() -> None:
        async with env.app.router.lifespan_context(env.app):
            pass

    with caplog.at_level(logging.INFO):
        anyio.run(run_and_stop)
    [logged] = _unreported_logs(caplog)
    assert "shutting down" in logged
    assert f"actor=admin:{env.token_ids[READER]} action=key.create" in logged
    assert logged.endswith("repeated=3")


def test_a_broken_chain_verified_over_the_admin_api_is_a_warning_in_the_log(
    sqlite_env: AdminEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _participant_and_key(sqlite_env)
    with sqlite3.connect(tmp_path / DB_FILE) as conn:
        conn.execute("UPDATE audit_events SET actor = 'evil' WHERE seq = 2")
    with caplog.at_level(logging.WARNING, logger="uid2_operator.web.admin_api.audit"):
        verdict = sqlite_env.call("POST", "/audit/verify", SUPER)
    assert verdict.status_code == 200
    assert verdict.json()["first_bad_seq"] == 2
    assert "audit chain broken first_bad_seq=2 problem=hash does not match" in caplog.text
