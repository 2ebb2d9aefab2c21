"""The admin API refuses to revoke the last active SUPER_USER token (409), as the CLI does.

Without a SUPER_USER token nobody can issue admin tokens through the API any more; the refusal
tells the caller to issue another SUPER_USER token first, is audited as a failed attempt, and
leaves the token working.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from admin_api_harness import AdminEnv, open_admin_env, sqlite_settings
from cli_harness import Cli, Database

from uid2_operator.domain.roles import AdminRole

pytestmark = pytest.mark.functional

ADVICE = "create another SUPER_USER token first"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[AdminEnv]:
    with open_admin_env(sqlite_settings(tmp_path)) as opened:
        yield opened


def test_a_super_user_cannot_revoke_itself_when_it_is_the_last(env: AdminEnv) -> None:
    own = env.token_ids[AdminRole.SUPER_USER]
    mark = env.mark()

    response = env.call("POST", f"/admin-tokens/{own}/revoke", json={})

    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_transition"
    assert ADVICE in error["message"]
    assert env.tokens[AdminRole.SUPER_USER].split(".")[-1] not in response.text
    [event] = env.refusals_since(mark)
    assert (event.outcome.value, event.action, event.target_id, event.after) == (
        "failed",
        "admin_token.revoke",
        own,
        {"code": "invalid_transition"},
    )
    assert env.call("GET", "/admin-tokens").status_code == 200


def test_a_second_super_user_token_lets_the_first_go(env: AdminEnv) -> None:
    first = env.token_ids[AdminRole.SUPER_USER]
    created = env.call("POST", "/admin-tokens", json={"name": "two", "roles": ["SUPER_USER"]})
    assert created.status_code == 201, created.text
    second = created.json()

    revoked = env.call("POST", f"/admin-tokens/{first}/revoke", json={})
    assert revoked.status_code == 200, revoked.text

    headers = {"Authorization": f"Bearer {second['token']}"}
    again = env.client.request(
        "POST", f"/admin/api/admin-tokens/{second['token_id']}/revoke", headers=headers, json={}
    )
    assert again.status_code == 409, again.text
    assert ADVICE in again.json()["error"]["message"]


def test_the_command_line_refuses_it_too(database: Database) -> None:
    cli = Cli(database)
    init = cli("init", "--json")
    assert init.exit_code == 0, init.stderr
    boot = json.loads(init.stdout)["admin_token_id"]

    refused = cli("admin-token", "revoke", boot)
    assert refused.exit_code == 1, (refused.stdout, refused.stderr)
    assert refused.stderr.startswith("Error: ")
    assert ADVICE in refused.stderr

    recovery = cli("admin-token", "create", "--name", "recovery", "--roles", "SUPER_USER")
    assert recovery.exit_code == 0, recovery.stderr
    revoked = cli("admin-token", "revoke", boot, "--json")
    assert revoked.exit_code == 0, revoked.stderr
    assert json.loads(revoked.stdout)["revoked_at_ms"] is not None
