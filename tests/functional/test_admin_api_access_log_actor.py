"""The admin API's access log line names who made each request as the audit trail does.

A token that authenticated is named ``admin:<token_id>`` on its request's log line whatever the
answer, a 403 for roles it lacks included (the audit trail's ``denied`` event names the same
actor). A request without a valid token (401) is logged as ``anonymous``. The token's text is
never logged. Real services on a real store, driven over ASGI.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from admin_api_harness import PREFIX, AdminEnv, admin_env_fixture

from uid2_operator.domain.roles import AdminRole

pytestmark = pytest.mark.functional

SUPER, READER = AdminRole.SUPER_USER, AdminRole.READ_ONLY
ACCESS_LOGGER = "uid2_operator.web.admin_api.app"

env = admin_env_fixture()


def _key(env: AdminEnv) -> dict[str, Any]:
    body = {"name": "P", "type": "publisher", "roles": ["GENERATOR"]}
    site = env.call("POST", "/participants", json=body).json()["site_id"]
    key = env.call("POST", "/keys", json={"site_id": site, "name": "k", "roles": ["GENERATOR"]})
    assert key.status_code == 201, key.text
    issued: dict[str, Any] = key.json()
    return issued


def _access_line(caplog: pytest.LogCaptureFixture, request_id: str) -> str:
    """The one access log line of the request with ``request_id``."""
    [line] = [
        r.getMessage()
        for r in caplog.records
        if r.name == ACCESS_LOGGER
        and r.getMessage().startswith("admin ")
        and " -> " in r.getMessage()
        and f"request_id={request_id} " in r.getMessage()
    ]
    return line


def _token_parts(token: str) -> list[str]:
    """The token's whole text and its secret tail (after the token id)."""
    return [token, token.rsplit(".", maxsplit=1)[-1]]


def test_a_403_is_logged_with_the_token_that_was_refused(
    env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    key_id = _key(env)["key_id"]
    mark = env.mark()
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        refused = env.call(
            "POST", f"/keys/{key_id}/disable", READER, headers={"X-Request-ID": "req-403"}
        )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"

    reader = f"admin:{env.token_ids[READER]}"
    line = _access_line(caplog, "req-403")
    assert line.startswith(f"admin POST {PREFIX}/keys/{{key_id}}/disable -> 403 actor={reader} ")
    assert "anonymous" not in line
    # The audit trail's denied event and the log line name the same caller.
    [event] = env.refusals_since(mark)
    assert (event.outcome.value, event.actor) == ("denied", reader)
    for part in _token_parts(env.tokens[READER]):
        assert part not in caplog.text


def test_a_403_on_a_read_is_logged_with_the_token(
    env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        refused = env.call("GET", "/admin-tokens", READER, headers={"X-Request-ID": "req-read"})
    assert refused.status_code == 403
    line = _access_line(caplog, "req-read")
    assert f" -> 403 actor=admin:{env.token_ids[READER]} " in line
    for part in _token_parts(env.tokens[READER]):
        assert part not in caplog.text


def test_a_granted_request_is_logged_with_its_token(
    env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    key_id = _key(env)["key_id"]
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        done = env.call("POST", f"/keys/{key_id}/disable", SUPER, headers={"X-Request-ID": "ok-1"})
    assert done.status_code == 200, done.text
    assert f" -> 200 actor=admin:{env.token_ids[SUPER]} " in _access_line(caplog, "ok-1")
    for part in _token_parts(env.tokens[SUPER]):
        assert part not in caplog.text


def test_a_401_is_logged_as_anonymous(env: AdminEnv, caplog: pytest.LogCaptureFixture) -> None:
    key_id = _key(env)["key_id"]
    reader_token = env.tokens[READER]
    # The reader's id with a wrong secret: a well-formed token that does not authenticate.
    token_id, _, tail = reader_token.rpartition(".")
    wrong = f"{token_id}.{'A' if tail[0] != 'A' else 'B'}{tail[1:]}"
    attempts = {
        "no-token": {},
        "wrong-tail": {"Authorization": f"Bearer {wrong}"},
        "malformed": {"Authorization": "Bearer not-a-token"},
    }
    path = f"{PREFIX}/keys/{key_id}/disable"
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        for request_id, headers in attempts.items():
            answer = env.client.request(
                "POST", path, headers={**headers, "X-Request-ID": request_id}
            )
            assert answer.status_code == 401, request_id
    for request_id in attempts:
        line = _access_line(caplog, request_id)
        assert " -> 401 actor=anonymous " in line, line
        assert "admin:" not in line
    for part in [*_token_parts(reader_token), *_token_parts(wrong)]:
        assert part not in caplog.text


def test_a_revoked_token_is_logged_as_anonymous(
    env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    revoked = env.call("POST", f"/admin-tokens/{env.token_ids[READER]}/revoke", SUPER, json={})
    assert revoked.status_code == 200, revoked.text
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        refused = env.call("GET", "/admin-tokens", READER, headers={"X-Request-ID": "gone"})
    assert refused.status_code == 401
    assert " -> 401 actor=anonymous " in _access_line(caplog, "gone")
    for part in _token_parts(env.tokens[READER]):
        assert part not in caplog.text
