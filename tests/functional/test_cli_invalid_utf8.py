"""Invalid UTF-8 on the command line is refused as bad input, on SQLite and PostgreSQL.

Python turns command-line bytes that are not UTF-8 into lone surrogates. Every text option that
reaches the store refuses them with ``invalid_input`` (exit 2) naming the option's field, never
echoing the value, and writes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_harness import BACKENDS, Cli, database_for, state_of

ENTRY_POINT = Path(sys.executable).with_name("uid2-operator")
BAD = "bad\udcff"  # what b"bad\xff" in argv becomes

# (arguments, with {site} and {key} filled in; the field the error names)
COMMANDS: list[tuple[list[str], str]] = [
    (["participant", "create", "--name", BAD, "--type", "publisher", "--roles", "GENERATOR"],
     "name"),
    (["participant", "create", "--name", "P2", "--type", "publisher",
      "--contact", f"{BAD}@example.com"], "contacts"),
    (["participant", "create", "--name", "P2", "--type", BAD], "type"),
    (["key", "create", "--site-id", "{site}", "--name", BAD, "--roles", "GENERATOR"], "name"),
    (["key", "create", "--site-id", "{site}", "--name", "k2", "--roles", f"GENERATOR,{BAD}"],
     "roles"),
    (["key", "rename", "{key}", "--name", BAD], "name"),
    (["key", "revoke", "{key}", "--reason", BAD], "reason"),
    (["key", "show", f"UID2-C-L-3-{BAD}"], "key_id"),
    (["admin-token", "create", "--name", BAD, "--roles", "READ_ONLY"], "name"),
    (["keypair", "create", "--site-id", "{site}", "--name", BAD], "name"),
    (["keypair", "create", "--site-id", "{site}", "--contact", BAD], "contact"),
    (["audit", "list", "--action", BAD], "action"),
    # Hashed, it would opt out another identity (the surrogate read as "?"): refused.
    (["optout", "add", "--email", f"{BAD}@example.com"], "email"),
    (["optout", "add", "--phone", f"+1{BAD}"], "phone"),
    (["optout", "add", "--email-hash", BAD], "email"),
    (["optout", "add", "--phone-hash", BAD], "phone"),
]  # fmt: skip


@pytest.fixture(scope="module", params=BACKENDS)
def seeded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Cli, dict[str, str]]]:
    with database_for(request.param, tmp_path_factory.mktemp("utf8")) as db:
        cli = Cli(db)
        assert cli("init").exit_code == 0
        created = cli("participant", "create", "--name", "Pub", "--type", "publisher",
                      "--roles", "GENERATOR", "--json")  # fmt: skip
        site = json.loads(created.stdout)["site_id"]
        issued = cli("key", "create", "--site-id", str(site), "--name", "web",
                     "--roles", "GENERATOR", "--json")  # fmt: skip
        yield cli, {"site": str(site), "key": json.loads(issued.stdout)["key_id"]}


@pytest.mark.parametrize(
    ("argv", "field"), COMMANDS, ids=[" ".join(a[:2]) + f" {f}" for a, f in COMMANDS]
)
def test_invalid_utf8_is_invalid_input_and_writes_nothing(
    seeded: tuple[Cli, dict[str, str]], argv: list[str], field: str
) -> None:
    cli, values = seeded
    before = state_of(cli.database)
    result = cli(*[part.format(**values) for part in argv], "--json")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "invalid_input"
    assert field in error["message"]
    assert "UTF-8" in error["message"]
    assert "\udcff" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert state_of(cli.database) == before


def test_the_installed_entry_point_refuses_invalid_utf8_bytes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UID2_")}
    env["UID2_DATA_DIR"] = str(tmp_path / "data")

    def run(*args: str | bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(  # noqa: S603 (our own entry point, fixed arguments)
            [str(ENTRY_POINT), *args], capture_output=True, env=env, timeout=120, check=False
        )

    assert run("init").returncode == 0
    refused = run("participant", "create", "--name", b"bad\xff", "--type", "publisher")
    assert refused.returncode == 2, refused.stderr
    assert refused.stdout == b""
    assert refused.stderr == (
        b"Error: name must be valid UTF-8 text (it holds surrogate code points)\n"
    )
    listed = run("participant", "list", "--json")
    assert json.loads(listed.stdout) == []
