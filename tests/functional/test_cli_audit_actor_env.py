"""The CLI's audit actor through the command line, on SQLite and PostgreSQL: whatever $LOGNAME and
$USER hold, the audit row names the account the command runs as, and the command still runs."""

from __future__ import annotations

import json
import os
import pwd
import re
from typing import Any

import pytest
from cli_harness import Cli, Database

from uid2_operator.domain.credential_text import holds_credential_text

LOGIN_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")
PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}", re.ASCII)


def _ok(cli: Cli, *args: str, env: dict[str, str | None] | None = None) -> Any:
    result = cli(*args, "--json", env=env)
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


def _login_as(value: str) -> dict[str, str | None]:
    env: dict[str, str | None] = dict.fromkeys(LOGIN_VARIABLES, value)
    env["SUDO_USER"] = None
    return env


def _this_account() -> str:
    """The name of this process's account, or ``uid<N>`` if it has none (an unusual name skips)."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"
    if PLAIN_NAME.fullmatch(name) is None:
        pytest.skip(f"the account name {name!r} is not a plain one")
    return name


FORGED = "bob\n999  2026-01-01T00:00:00Z  cli:alice  key.revoke  site  1  success"
LOGINS = {
    "admin token": None,  # the one init hands out
    "forged line": FORGED,
    "control characters": "carol\x1b[2K\rmallory",
    "non-UTF-8": "\udcff\udcfe",  # bytes 0xff 0xfe, as os.environ decodes them
    "this account": "",  # the account's own name
}


@pytest.mark.parametrize("login", LOGINS)
def test_login_variables_never_reach_the_audit_row(database: Database, login: str) -> None:
    cli = Cli(database)
    admin_token = _ok(cli, "init", env=_login_as("alice"))["admin_token"]
    value = {"admin token": admin_token, "this account": _this_account()}.get(login, LOGINS[login])
    assert value
    created = _ok(
        cli, "participant", "create", "--name", "Pub", "--type", "publisher", env=_login_as(value)
    )
    assert created["name"] == "Pub"

    [event] = _ok(cli, "audit", "list", "--action", "participant.create")
    assert event["actor"] == f"cli:{_this_account()}"
    everything = _ok(cli, "audit", "list", "--limit", "1000")
    assert all(not holds_credential_text(event["actor"]) for event in everything)
    text = cli("audit", "list", "--action", "participant.create").stdout
    assert len(text.splitlines()) == 2  # a header, then the one event
    assert "key.revoke" not in text
    assert "cli:alice" not in text
    assert _ok(cli, "audit", "verify")["ok"] is True


def test_root_through_sudo_records_the_account_sudo_was_run_from(database: Database) -> None:
    if os.getuid() != 0:
        pytest.skip("sudo's account is recorded only for a command run as root")
    human = next(
        (e.pw_name for e in pwd.getpwall() if e.pw_uid != 0 and PLAIN_NAME.fullmatch(e.pw_name)),
        None,
    )
    if human is None:
        pytest.skip("no ordinary account besides root in the passwd database")
    cli = Cli(database)
    _ok(cli, "init")
    env = {**_login_as("root"), "SUDO_USER": human}
    _ok(cli, "participant", "create", "--name", "Pub", "--type", "publisher", env=env)
    [event] = _ok(cli, "audit", "list", "--action", "participant.create")
    assert event["actor"] == f"cli:{human}"
