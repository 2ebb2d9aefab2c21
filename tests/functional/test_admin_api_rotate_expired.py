"""Rotating an API key past its hard expiry is refused, from the admin API and the command line.

A key created with ``expires_in_days`` stops at its ``expires_at_ms``; a successor would start a
new lifetime, so ``POST /admin/api/keys/{key_id}/rotate`` answers 409 ``invalid_transition`` and
``uid2-operator key rotate`` exits with status 1. The message names the key id and says it has
expired, never the key text or its secret, and nothing changes: the admin API only adds one
``failed`` audit event, the command line nothing. Before its expiry the same key still rotates.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from admin_api_harness import AdminEnv, admin_env_fixture, secret_forms
from cli_harness import Cli, Database, settings_of, state_of

from uid2_operator.bootstrap import open_services
from uid2_operator.clock import FixedClock
from uid2_operator.domain.roles import AdminRole
from uid2_operator.errors import CredentialRejected
from uid2_operator.services.context import SYSTEM

pytestmark = pytest.mark.functional

MAINTAINER, READER = AdminRole.MAINTAINER, AdminRole.READ_ONLY
DAY_MS = 86_400_000


env = admin_env_fixture()


def _expiring_key(env: AdminEnv, days: int = 1) -> tuple[int, dict[str, Any]]:
    body = {"name": "Pub", "type": "publisher", "roles": ["GENERATOR"]}
    site: int = env.call("POST", "/participants", json=body).json()["site_id"]
    created = env.call(
        "POST",
        "/keys",
        MAINTAINER,
        json={"site_id": site, "name": "web", "roles": ["GENERATOR"], "expires_in_days": days},
    )
    assert created.status_code == 201, created.text
    issued: dict[str, Any] = created.json()
    assert issued["expires_at_ms"] == env.clock.now_ms() + days * DAY_MS
    return site, issued


def _stored(env: AdminEnv, site: int) -> tuple[Any, Any]:
    """The participant's keys as listed, and the store's whole snapshot."""
    keys = env.call("GET", "/keys", READER, params={"site_id": site}).json()
    return keys, env.services.store.snapshot(env.clock.now_ms())


@pytest.mark.parametrize("past_expiry_ms", [0, 1, 30 * DAY_MS])
@pytest.mark.parametrize("body", [{}, {"grace_days": 0}, {"grace_days": 3, "name": "web-2"}])
def test_rotating_an_expired_key_is_409_and_changes_nothing(
    env: AdminEnv, past_expiry_ms: int, body: dict[str, Any]
) -> None:
    site, key = _expiring_key(env)
    env.clock.advance(DAY_MS + past_expiry_ms)
    with pytest.raises(CredentialRejected, match="key_expired"):
        env.services.credentials.resolve_client(key["key"])
    mark = env.mark()
    before = _stored(env, site)

    response = env.call("POST", f"/keys/{key['key_id']}/rotate", MAINTAINER, json=body)

    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_transition"
    assert key["key_id"] in error["message"]
    assert "has expired" in error["message"]
    for form in [key["key"], key["key"].split(".", 1)[-1], *secret_forms(key["secret"])]:
        assert form not in response.text
    [event] = env.refusals_since(mark)  # also checks the change sequence did not move
    assert (event.action, event.target_id, event.outcome.value) == (
        "key.rotate",
        key["key_id"],
        "failed",
    )
    assert event.after == {"code": "invalid_transition"}
    assert _stored(env, site) == before
    shown = env.call("GET", f"/keys/{key['key_id']}", READER).json()
    assert (shown["rotated_to"], shown["retires_at_ms"]) == (None, None)
    with pytest.raises(CredentialRejected, match="key_expired"):
        env.services.credentials.resolve_client(key["key"])


def test_one_millisecond_before_expiry_the_key_still_rotates(env: AdminEnv) -> None:
    _, key = _expiring_key(env)
    env.clock.advance(DAY_MS - 1)

    response = env.call("POST", f"/keys/{key['key_id']}/rotate", MAINTAINER, json={})

    assert response.status_code == 201, response.text
    assert response.json()["expires_at_ms"] == env.clock.now_ms() + DAY_MS


# ------------------------------------------------------------------------- the command line


@pytest.fixture
def cli(database: Database) -> Cli:
    return Cli(database)


def _ok(cli: Cli, *args: str) -> Any:
    result = cli(*args, "--json")
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


def _key_created_days_ago(cli: Cli, site: int, *, days_ago: int, expires_in_days: int) -> Any:
    """A key issued ``days_ago`` days back (the command line issues at the current time)."""
    clock = FixedClock(at_ms=time.time_ns() // 1_000_000 - days_ago * DAY_MS)
    services = open_services(settings_of(cli.database), clock=clock)
    try:
        return services.credentials.create_key(
            SYSTEM, site_id=site, name="web", roles=["GENERATOR"], expires_in_days=expires_in_days
        )
    finally:
        services.close()


def test_key_rotate_refuses_an_expired_key_with_exit_status_1(cli: Cli) -> None:
    _ok(cli, "init")
    site = _ok(cli, "participant", "create", "--name", "Pub", "--type", "publisher",
               "--roles", "GENERATOR")["site_id"]  # fmt: skip
    expired = _key_created_days_ago(cli, site, days_ago=2, expires_in_days=1)
    live = _key_created_days_ago(cli, site, days_ago=2, expires_in_days=30)
    before = state_of(cli.database)

    as_json = cli("key", "rotate", expired.key_id, "--json")
    human = cli("key", "rotate", expired.key_id, "--grace-days", "0")

    assert as_json.exit_code == 1, (as_json.stdout, as_json.stderr)
    error = json.loads(as_json.stdout)["error"]
    assert error["code"] == "invalid_transition"
    assert expired.key_id in error["message"]
    assert "has expired" in error["message"]
    assert human.exit_code == 1
    assert human.stdout == ""
    assert human.stderr.startswith("Error: ")
    assert expired.key_id in human.stderr
    assert "has expired" in human.stderr
    for result in (as_json, human):
        output = result.stdout + result.stderr
        assert "Traceback" not in output
        assert expired.key not in output
        assert expired.secret not in output
    assert state_of(cli.database) == before
    assert _ok(cli, "key", "show", expired.key_id)["rotated_to"] is None

    rotated = _ok(cli, "key", "rotate", live.key_id)
    assert rotated["key_id"] != live.key_id
    assert _ok(cli, "key", "show", live.key_id)["rotated_to"] == rotated["key_id"]
