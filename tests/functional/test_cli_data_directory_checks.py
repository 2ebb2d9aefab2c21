"""Every command checks the data directory it is given before it reads or writes anything.

A data directory recorded for one environment is refused under another (UID2_ENVIRONMENT), by
every command that opens the services and by ``serve``, with the message ``init`` gives: a key
minted for integ on a local directory would be refused by the local serve, and a serve started
as integ would refuse every local key. ``db upgrade`` does not depend on the environment and
still runs. A command run where the data directory is not (a relative ``--data-dir``, the
default ``./data`` included, from another working directory) names the directory it looked in,
absolute, and creates nothing there; ``init`` prints the directory it set up as an absolute path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_harness import Cli, Database, state_of

pytestmark = pytest.mark.functional

INTEG: dict[str, str | None] = {"UID2_ENVIRONMENT": "integ"}
MISMATCH = (
    "The data directory was initialised for the local environment, not integ: set "
    "UID2_ENVIRONMENT to local or unset it, or give the integ data directory (--data-dir); the "
    "recorded environment cannot change"
)


def _ok(cli: Cli, *args: str) -> dict[str, object]:
    result = cli("--json", *args)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert isinstance(document, dict)
    return document


def test_a_data_directory_recorded_as_local_is_refused_under_integ(database: Database) -> None:
    cli = Cli(database)
    _ok(cli, "init")
    site = str(_ok(cli, "participant", "create", "--name", "P", "--type", "publisher",
                   "--roles", "GENERATOR")["site_id"])  # fmt: skip
    before = state_of(database)

    for command in (
        ["key", "create", "--site-id", site, "--name", "k", "--roles", "GENERATOR"],
        ["participant", "list"],
        ["admin-token", "list"],
        ["keys", "rotate"],
        ["keyring", "status"],
        ["serve", "--port", "0", "--admin-port", "0"],
        ["serve", "--init-if-new", "--port", "0", "--admin-port", "0"],
    ):
        refused = cli("--json", *command, env=INTEG)
        assert refused.exit_code == 2, (command, refused.output)
        assert refused.stderr == f"Error: {MISMATCH}\n", command
        assert json.loads(refused.stdout)["error"]["code"] == "invalid_input", command

    assert state_of(database) == before
    assert not (database.data_dir / "serve.lock").exists()  # refused before serve locked it
    assert _ok(cli, "db", "upgrade")["schema_revision"]  # the environment plays no part in it
    assert cli("db", "upgrade", env=INTEG).exit_code == 0
    issued = _ok(cli, "key", "create", "--site-id", site, "--name", "k", "--roles", "GENERATOR")
    assert str(issued["key"]).startswith(f"UID2-C-L-{site}-")


def test_a_command_run_away_from_the_data_directory_names_it_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served_from = tmp_path / "project"
    served_from.mkdir()
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    monkeypatch.chdir(served_from)
    cli = Cli(Database("sqlite", Path("data"), None))
    assert _ok(cli, "init")["data_dir"] == str(served_from / "data")

    monkeypatch.chdir(elsewhere)
    for command in (["participant", "list"], ["serve", "--port", "0", "--admin-port", "0"]):
        refused = cli(*command)
        assert refused.exit_code == 1, (command, refused.output)
        message = refused.stderr
        assert message.startswith(
            f"Error: No keyring: there is no data directory {elsewhere / 'data'}. "
        ), command
        assert message.index("--data-dir (or UID2_DATA_DIR)") < message.index("init"), command
        assert list(elsewhere.iterdir()) == [], command

    monkeypatch.chdir(served_from)
    text = cli("init")
    assert text.exit_code == 0, text.output
    assert f"data directory       {served_from / 'data'}\n" in text.stdout


def test_a_keyring_file_that_is_not_there_is_named(tmp_path: Path) -> None:
    cli = Cli(Database("sqlite", tmp_path / "data", None))
    _ok(cli, "init")
    missing = tmp_path / "elsewhere" / "keyring.json"
    env: dict[str, str | None] = {"UID2_KEYRING_FILE": str(missing)}
    for command in (["participant", "list"], ["serve", "--port", "0", "--admin-port", "0"]):
        refused = cli("--json", *command, env=env)
        assert refused.exit_code == 1, (command, refused.output)
        error = json.loads(refused.stdout.splitlines()[-1])["error"]
        assert error["code"] == "keyring_missing", command
        assert error["message"].startswith(
            f"No keyring: the keyring file {missing} does not exist; "
        ), command
    assert not missing.parent.exists()


def test_the_environment_file_is_read_in_any_case_and_a_wrong_one_is_named(
    tmp_path: Path,
) -> None:
    cli = Cli(Database("sqlite", tmp_path / "data", None))
    assert cli("init", "--environment", "integ").exit_code == 0
    recorded = tmp_path / "data" / "environment"
    recorded.write_text("Integ\n", encoding="utf-8")  # edited by hand
    listed = cli("--json", "participant", "list")
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == []

    recorded.write_text("staging\n", encoding="utf-8")
    refused = cli("--json", "participant", "list")
    assert refused.exit_code == 1, refused.output
    error = json.loads(refused.stdout)["error"]
    assert error["message"] == (
        f"{recorded} records 'staging', which is no environment: it must hold one of local, "
        "integ, prod"
    )
