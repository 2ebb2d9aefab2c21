"""A request the admin API's router refuses gets its INFO log line like any other request.

An unknown path (404) and a wrong method (405) are logged as ``admin <method> <unmatched> ->
<status> actor=anonymous request_id=... duration_ms=...``: the route is a fixed placeholder, never
the path as sent (an administrator may paste a key's text into a URL), nothing is authenticated so
the actor is ``anonymous``, and the request id is the one the response's ``X-Request-ID`` gives
the caller to quote. Real services on a real store, driven over ASGI.
"""

from __future__ import annotations

import logging
import re

import httpx
import pytest
from admin_api_harness import ADMIN_BACKENDS, PREFIX, AdminEnv, admin_env_fixture

from uid2_operator.domain.roles import AdminRole

pytestmark = pytest.mark.functional

ACCESS_LOGGER = "uid2_operator.web.admin_api.app"
SQLITE = ADMIN_BACKENDS[:1]  # the router answers before the store is used

env = admin_env_fixture(SQLITE)


def _issued_key(env: AdminEnv) -> str:
    body = {"name": "P", "type": "publisher", "roles": ["GENERATOR"]}
    site = env.call("POST", "/participants", json=body).json()["site_id"]
    key = env.call("POST", "/keys", json={"site_id": site, "name": "k", "roles": ["GENERATOR"]})
    assert key.status_code == 201, key.text
    text: str = key.json()["key"]
    return text


def _access_lines(caplog: pytest.LogCaptureFixture, request_id: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == ACCESS_LOGGER
        and r.levelno == logging.INFO
        and r.getMessage().startswith("admin ")
        and f" request_id={request_id} " in r.getMessage()
    ]


def _unmatched_line(
    caplog: pytest.LogCaptureFixture, answer: httpx.Response, method: str, status: int
) -> str:
    """The one INFO line of ``answer``'s request, checked to be the unmatched request's line."""
    assert answer.status_code == status, answer.text
    request_id = answer.headers["X-Request-ID"]
    [line] = _access_lines(caplog, request_id)
    expected = (
        rf"admin {re.escape(method)} <unmatched> -> {status} actor=anonymous "
        rf"request_id={re.escape(request_id)} duration_ms=\d+"
    )
    assert re.fullmatch(expected, line), line
    return line


def test_an_unknown_path_is_logged_without_the_path(
    env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    key = _issued_key(env)
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        answer = env.client.request(
            "GET", f"{PREFIX}/lookup/{key}", headers={"X-Request-ID": "unknown-1"}
        )
    assert answer.json()["error"]["code"] == "not_found"
    assert answer.headers["X-Request-ID"] == "unknown-1"
    _unmatched_line(caplog, answer, "GET", 404)
    assert key not in caplog.text
    assert key.split(".")[1] not in caplog.text
    assert "/lookup" not in caplog.text


def test_a_trailing_slash_is_logged_as_an_unknown_route(
    env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    key = _issued_key(env)
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        answer = env.call("POST", f"/keys/{key}/disable/", headers={"X-Request-ID": "slash"})
    _unmatched_line(caplog, answer, "POST", 404)
    assert key not in caplog.text


def test_a_wrong_method_is_logged_without_the_path(
    env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    key = _issued_key(env)
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        answer = env.call("DELETE", f"/keys/{key}", headers={"X-Request-ID": "wrong-method"})
    assert answer.json()["error"]["code"] == "method_not_allowed"
    assert answer.headers["Allow"]
    _unmatched_line(caplog, answer, "DELETE", 405)
    assert key not in caplog.text
    assert key.split(".")[1] not in caplog.text


def test_a_valid_token_on_an_unknown_route_is_not_named(
    env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    token = env.tokens[AdminRole.SUPER_USER]
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        answer = env.call("GET", "/nowhere", headers={"X-Request-ID": "with-token"})
    line = _unmatched_line(caplog, answer, "GET", 404)
    assert "admin:" not in line
    assert token not in caplog.text
    assert token.split(".")[1] not in caplog.text


def test_a_drawn_request_id_is_the_one_logged(
    env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        answer = env.client.request("PATCH", f"{PREFIX}/participants")
    request_id = answer.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id), request_id
    _unmatched_line(caplog, answer, "PATCH", 405)


def test_a_method_outside_the_standard_ones_is_not_written_as_sent(
    env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    method = "UID2-C-L-1001-fCXrMM"  # a valid method token that is caller text
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        unknown_path = env.client.request(method, f"{PREFIX}/nowhere")
        known_path = env.client.request(method, f"{PREFIX}/participants")
    _unmatched_line(caplog, unknown_path, "<other>", 404)
    _unmatched_line(caplog, known_path, "<other>", 405)
    assert method not in caplog.text


def test_the_unmatched_line_gives_the_request_s_duration(
    env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """The line gives how long the request took, by the app's clock."""
    real_now = env.clock.now_ms

    def ticking_now() -> int:  # each reading 7 ms after the last
        env.clock.advance(7)
        return real_now()

    env.clock.now_ms = ticking_now  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        answer = env.client.request("GET", f"{PREFIX}/nowhere", headers={"X-Request-ID": "timed"})
    line = _unmatched_line(caplog, answer, "GET", 404)
    assert line.endswith(" duration_ms=7"), line
