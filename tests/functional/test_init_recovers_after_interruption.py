"""An ``init`` stopped part-way is finished by the next ``init``, as the interrupted one says, and
an ``init`` that cannot write its keyring file or create its data directory says which and why.

The stops are simulated where a Ctrl-C or a kill lands: once the keyring is open, before any of
it is written; and with the ``environment`` file left empty, as an earlier version's ``init``
stopped while writing it left it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_harness import Cli, Database

from interrupted_writes import (
    interrupt_first_write_in,
    read_only_parent_fixture,  # noqa: F401 (fixture)
)
from uid2_operator.bootstrap import load_keyring
from uid2_operator.cli import database as database_commands
from uid2_operator.cli.serve import _needs_init
from uid2_operator.settings import Settings

pytestmark = pytest.mark.functional


def _settings(database: Database) -> Settings:
    return Settings.from_env({}, data_dir=str(database.data_dir), database_url=database.url)


def _finished(cli: Cli) -> dict[str, object]:
    again = cli("init", "--json")
    assert again.exit_code == 0, again.output
    document: dict[str, object] = json.loads(again.stdout)
    assert str(document["admin_token"]).startswith("UID2-A-L-")
    return document


def test_init_interrupted_while_writing_the_keyring_is_finished_by_the_next_init(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = Cli(database)
    database.data_dir.mkdir(mode=0o700)
    with monkeypatch.context() as patched:
        interrupt_first_write_in(database.data_dir, patched)
        stopped = cli("init")
    assert stopped.exit_code == 1
    assert "run `uid2-operator init`" in stopped.output
    assert not (database.data_dir / "keyring.json").exists()

    document = _finished(cli)
    assert document["keyring_created"] is True
    load_keyring(_settings(database))
    assert cli("participant", "list").exit_code == 0


def test_init_stopped_with_an_empty_environment_file_is_finished_by_the_next_init(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    def stopped_while_writing(settings: Settings) -> None:
        settings.environment_path.write_text("", encoding="utf-8")
        raise KeyboardInterrupt

    cli = Cli(database)
    with monkeypatch.context() as patched:
        patched.setattr(database_commands, "record_environment", stopped_while_writing)
        assert cli("init").exit_code == 1
    environment = database.data_dir / "environment"
    assert environment.read_text(encoding="utf-8") == ""

    listed = cli("participant", "list")  # an empty file records no environment
    assert listed.exit_code == 0, listed.output
    _finished(cli)
    assert environment.read_text(encoding="utf-8") == "local\n"
    again = cli("init", "--environment", "local")
    assert again.exit_code == 0, again.output


def test_init_names_a_keyring_file_it_cannot_create_and_why(
    database: Database, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    keyring = blocker / "keys" / "keyring.json"
    result = Cli(database)("init", env={"UID2_KEYRING_FILE": str(keyring)})
    assert result.exit_code == 1
    assert f"Error: The keyring file {keyring} cannot be written: Not a directory" in result.output


def test_init_names_a_keyring_file_whose_name_is_too_long(
    database: Database, tmp_path: Path
) -> None:
    # Path.exists raises for such a name (it is not "not there"): never an internal error.
    keyring = tmp_path / f"{'k' * 300}.json"
    result = Cli(database)("init", "--json", env={"UID2_KEYRING_FILE": str(keyring)})
    assert result.exit_code == 1, result.output
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "keyring_invalid"
    assert error["message"].startswith(f"The keyring file {tmp_path}/kkk")
    assert error["message"].endswith(".json cannot be written: File name too long")


def test_init_names_a_keyring_file_in_a_directory_it_cannot_write(
    database: Database, read_only_parent: Path
) -> None:
    keyring = read_only_parent / "keyring.json"
    result = Cli(database)("init", "--json", env={"UID2_KEYRING_FILE": str(keyring)})
    assert result.exit_code == 1
    message = f"The keyring file {keyring} cannot be written: Permission denied"
    assert f"Error: {message}" in result.output
    assert json.loads(result.stdout)["error"] == {"code": "keyring_invalid", "message": message}


def test_init_names_a_data_directory_it_cannot_create_and_db_upgrade_creates_none(
    read_only_parent: Path,
) -> None:
    data_dir = read_only_parent / "data"
    cli = Cli(Database("sqlite", data_dir, None))
    result = cli("init")
    assert result.exit_code == 1
    assert f"Error: The data directory {data_dir} cannot be created: Permission denied" in (
        result.output
    )
    result = cli("db", "upgrade")
    assert result.exit_code == 1
    assert f"Error: No database: there is no data directory {data_dir}." in result.output


def test_init_replaces_an_empty_keyring_file_an_interrupted_init_left(database: Database) -> None:
    cli = Cli(database)
    database.data_dir.mkdir(mode=0o700)
    keyring_file = database.data_dir / "keyring.json"
    keyring_file.touch(mode=0o600)  # what an earlier version's init left when stopped

    document = _finished(cli)
    assert document["keyring_created"] is True
    assert keyring_file.stat().st_size > 0
    load_keyring(_settings(database))


def test_serve_init_if_new_counts_an_empty_keyring_or_environment_file_as_unfinished(
    database: Database,
) -> None:
    cli = Cli(database)
    _finished(cli)
    settings = _settings(database)
    assert _needs_init(settings) is False
    environment = settings.environment_path
    recorded = environment.read_text(encoding="utf-8")
    environment.write_text("", encoding="utf-8")
    assert _needs_init(settings) is True
    environment.write_text(recorded, encoding="utf-8")
    assert _needs_init(settings) is False


def test_serve_init_if_new_leaves_a_keyring_path_that_cannot_be_a_file_to_init(
    tmp_path: Path,
) -> None:
    not_a_directory = tmp_path / "afile"
    not_a_directory.write_text("", encoding="utf-8")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for keyring_file in (not_a_directory / "keyring.json", loop):
        settings = Settings.from_env(
            {"UID2_KEYRING_FILE": str(keyring_file)}, data_dir=str(tmp_path / "data")
        )
        assert _needs_init(settings) is True  # init then names the file and why
