"""``init`` never seals anything under a keyring that does not fit the database.

A data directory whose keyring is missing (a new one pointed at a database another initialised,
or one whose keyring file was lost) would otherwise get a fresh keyring whose version 1 is another
key than the database's version 1; whatever it then sealed could not be opened by the processes
that use the real keyring, and their snapshot loads would fail. A refused ``init`` writes nothing:
no keyring, no environment record, no row. And a run that stops in the material has not yet
issued the one-time bootstrap admin token, so the next run still prints it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_harness import Cli, Database

from uid2_operator.bootstrap import open_services
from uid2_operator.cli import database as database_commands
from uid2_operator.domain.sealing import generate_keyring
from uid2_operator.errors import StoreError
from uid2_operator.services.context import SYSTEM
from uid2_operator.services.material import MaterialService
from uid2_operator.settings import Settings

pytestmark = pytest.mark.functional


def _settings(database: Database) -> Settings:
    return Settings.from_env({}, data_dir=str(database.data_dir), database_url=database.url)


def _state(database: Database) -> tuple[int, int, bool]:
    """The change sequence, how many admin tokens exist, and whether the audit chain verifies;
    and, through ``load_material``, that everything sealed still opens with the keyring."""
    opened = open_services(_settings(database))
    try:
        opened.material.load_material()
        with opened.store.read() as tx:
            tokens = len(tx.admin_tokens.list_all())
        return opened.store.change_seq(), tokens, opened.credentials.verify_audit(SYSTEM).ok
    finally:
        opened.close()


def _initialised(database: Database) -> Cli:
    cli = Cli(database)
    done = cli("init", "--json")
    assert done.exit_code == 0, done.output
    made = cli("participant", "create", "--name", "P", "--type", "publisher",
               "--roles", "GENERATOR", "--json")  # fmt: skip
    assert made.exit_code == 0, made.output
    return cli


def _refused(result: Any, *phrases: str) -> None:
    assert result.exit_code != 0, result.output
    for phrase in phrases:
        assert phrase in result.output


def test_a_new_data_directory_on_an_initialised_database_is_refused_and_writes_nothing(
    database: Database, tmp_path: Path
) -> None:
    _initialised(database)
    before = _state(database)
    shared_url = database.url or f"sqlite:///{database.sqlite_path}"
    other = Database(database.backend, tmp_path / "other", shared_url, database.schema)

    result = Cli(other)("init", "--json")
    _refused(result, "already holds", "copy that keyring")
    assert not (other.data_dir / "keyring.json").exists()
    assert not (other.data_dir / "environment").exists()
    assert _state(database) == before


def test_a_lost_keyring_is_not_replaced_while_the_database_holds_sealed_items(
    database: Database,
) -> None:
    cli = _initialised(database)
    keyring = database.data_dir / "keyring.json"
    kept = keyring.read_text(encoding="utf-8")
    keyring.unlink()

    _refused(cli("init"), "already holds", str(keyring))
    assert not keyring.exists()
    keyring.write_text(kept, encoding="utf-8")
    keyring.chmod(0o600)
    assert cli("init").exit_code == 0


def test_a_keyring_that_does_not_open_the_database_is_refused_before_any_write(
    database: Database,
) -> None:
    cli = _initialised(database)
    before = _state(database)
    keyring = database.data_dir / "keyring.json"
    kept = keyring.read_text(encoding="utf-8")
    # The same version number, another key: what a second data directory's own init made.
    stranger = generate_keyring(lambda n: bytes(range(1, n + 1)), development=True)
    keyring.write_text(stranger.to_json(), encoding="utf-8")
    keyring.chmod(0o600)

    # Caught by the database's check value of version 1, before the salt table is even read.
    _refused(cli("init"), "is another key than the database's version 1")
    keyring.write_text(kept, encoding="utf-8")
    assert _state(database) == before


def test_an_init_that_stops_in_the_material_leaves_the_bootstrap_token_to_the_next(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = MaterialService.initialise
    calls: list[int] = []

    def failing_once(self: MaterialService, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise StoreError("The store went away")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MaterialService, "initialise", failing_once)
    cli = Cli(database)
    assert cli("init", "--json").exit_code != 0
    again = cli("init", "--json")
    assert again.exit_code == 0, again.output
    document = json.loads(again.stdout)
    assert document["admin_token"].startswith("UID2-A-")
    assert _state(database)[1] == 1  # one admin token: the one shown


def test_a_refused_prod_init_leaves_the_directory_free_for_another_environment(
    database: Database,
) -> None:
    cli = Cli(database)
    refused = cli("init", "--environment", "prod")
    _refused(refused, "prod needs a provisioned one, in the data directory's keyring.json")
    assert "run init to create one" not in refused.output
    assert not (database.data_dir / "environment").exists()
    assert cli("init", "--environment", "local").exit_code == 0
    assert (database.data_dir / "environment").read_text(encoding="utf-8") == "local\n"


def test_the_bootstrap_token_is_issued_last_so_a_late_failure_cannot_lose_it(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unwritable(settings: Settings) -> None:
        raise PermissionError(13, "Permission denied", str(settings.environment_path))

    with monkeypatch.context() as patched:
        patched.setattr(database_commands, "record_environment", unwritable)
        assert Cli(database)("init", "--json").exit_code != 0
    assert _state(database)[1] == 0  # no token issued, so none lost
    again = Cli(database)("init", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["admin_token"].startswith("UID2-A-")
