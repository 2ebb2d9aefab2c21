"""``uid2-operator key retire-now`` end to end, on SQLite and PostgreSQL.

A rotated key is retired before its grace ends: from then on the lookup refuses it while its
successor keeps working; a key never rotated, or already retired, is refused with a clear
message, changing nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_harness import Cli, Database, settings_of, state_of

from uid2_operator.bootstrap import open_services
from uid2_operator.errors import CredentialRejected

UNKNOWN_KEY = "UID2-C-L-3-AAAAAA"


@pytest.fixture
def cli(database: Database) -> Cli:
    return Cli(database)


def _ok(cli: Cli, *args: str) -> Any:
    result = cli(*args, "--json")
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


def _refusal(db: Database, key_text: str) -> str | None:
    """Why the lookup refuses ``key_text`` now, or None when it accepts it."""
    services = open_services(settings_of(db))
    try:
        services.credentials.resolve_client(key_text)
    except CredentialRejected as refused:
        return refused.detail
    finally:
        services.close()
    return None


def _resolves(db: Database, key_text: str) -> bool:
    return _refusal(db, key_text) is None


def _refused(cli: Cli, key_id: str, message: str) -> None:
    """Refused in both output forms with ``message``, changing nothing."""
    before = state_of(cli.database)
    as_json = cli("key", "retire-now", key_id, "--json")
    assert as_json.exit_code == 1, (as_json.stdout, as_json.stderr)
    error = json.loads(as_json.stdout)["error"]
    assert message in error["message"]
    human = cli("key", "retire-now", key_id)
    assert human.exit_code == 1
    assert human.stdout == ""
    assert human.stderr.startswith("Error: ")
    assert message in human.stderr
    assert "Traceback" not in human.stderr + as_json.stderr
    assert state_of(cli.database) == before


def test_retire_now_stops_the_old_key_and_keeps_the_successor(cli: Cli) -> None:
    _ok(cli, "init")
    site = _ok(cli, "participant", "create", "--name", "Pub", "--type", "publisher",
               "--roles", "GENERATOR")["site_id"]  # fmt: skip
    old = _ok(cli, "key", "create", "--site-id", str(site), "--name", "web",
              "--roles", "GENERATOR")  # fmt: skip
    _refused(cli, old["key_id"], "has not been rotated; revoke it instead")
    new = _ok(cli, "key", "rotate", old["key_id"], "--grace-days", "7")
    assert _resolves(cli.database, old["key"])  # inside the grace, both keys work

    retired = _ok(cli, "key", "retire-now", old["key_id"])

    shown = _ok(cli, "key", "show", old["key_id"])
    assert retired.keys() == shown.keys()
    assert (retired["key_id"], retired["state"], retired["rotated_to"]) == (
        old["key_id"],
        "active",
        new["key_id"],
    )
    assert retired["retires_at_ms"] == shown["retires_at_ms"]
    assert _refusal(cli.database, old["key"]) == "The API key is not usable: key_retired"
    assert _resolves(cli.database, new["key"])
    assert "retired" in cli("key", "show", old["key_id"]).stdout
    events = _ok(cli, "audit", "list", "--target", old["key_id"], "--action", "key.retire_now")
    assert len(events) == 1

    _refused(cli, old["key_id"], "is already retired")
    _refused(cli, new["key_id"], "has not been rotated")
    _refused(cli, UNKNOWN_KEY, f"No API key {UNKNOWN_KEY}")
    zero = _ok(cli, "key", "rotate", new["key_id"], "--grace-days", "0")
    _refused(cli, new["key_id"], "is already retired")
    assert _resolves(cli.database, zero["key"])
    assert _ok(cli, "audit", "verify")["ok"] is True


def test_retire_now_in_human_form(tmp_path: Path) -> None:
    cli = Cli(Database("sqlite", tmp_path / "data", None))
    _ok(cli, "init")
    site = _ok(cli, "participant", "create", "--name", "Pub", "--type", "publisher",
               "--roles", "MAPPER")["site_id"]  # fmt: skip
    old = _ok(cli, "key", "create", "--site-id", str(site), "--name", "web", "--roles", "MAPPER")
    _ok(cli, "key", "rotate", old["key_id"])
    result = cli("key", "retire-now", old["key_id"])
    assert result.exit_code == 0, result.stderr
    assert old["key_id"] in result.stdout
    assert "active (retired)" in result.stdout
    assert old["key"] not in result.stdout + result.stderr
