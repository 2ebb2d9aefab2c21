"""The embedded SQLite file is created only by init, and always owner-only.

A command run on a data directory before init must not leave an empty database file with the
umask's mode behind; and a file some earlier run did leave that way is made 0600 by init.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from cli_harness import Cli, Database

from uid2_operator.clock import system_random
from uid2_operator.domain.sealing import generate_keyring

pytestmark = pytest.mark.functional


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _modes(data_dir: Path) -> dict[str, int]:
    return {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in data_dir.iterdir()
        if p.name.startswith("uid2.db")
    }


@pytest.mark.usefixtures("umask_022")
def test_a_command_before_init_creates_no_database_file(tmp_path: Path) -> None:
    database = Database("sqlite", tmp_path / "data", None)
    database.data_dir.mkdir(mode=0o700)
    keyring = generate_keyring(system_random, development=True).to_json()
    cli = Cli(database)

    for command in (["participant", "list"], ["key", "list"], ["keyring", "status"]):
        result = cli("--json", *command, env={"UID2_KEYRING": keyring})
        assert result.exit_code != 0, (command, result.output)
        assert "run `uid2-operator init` first" in result.output, (command, result.output)
        assert _modes(database.data_dir) == {}, command

    assert cli("init", env={"UID2_KEYRING": keyring}).exit_code == 0
    assert _modes(database.data_dir)["uid2.db"] == 0o600
    listed = cli("--json", "participant", "list", env={"UID2_KEYRING": keyring})
    assert listed.exit_code == 0, listed.output


@pytest.mark.usefixtures("umask_022")
def test_init_makes_a_world_readable_database_file_and_its_journals_owner_only(
    tmp_path: Path,
) -> None:
    database = Database("sqlite", tmp_path / "data", None)
    database.data_dir.mkdir(mode=0o700)
    # What an earlier run could leave: a file (and, while a connection is open, its WAL journals)
    # created by SQLite itself with the umask's mode.
    with closing(sqlite3.connect(database.sqlite_path, isolation_level=None)) as held:
        held.execute("PRAGMA journal_mode=WAL")
        held.execute("CREATE TABLE probe (x)")
        assert _modes(database.data_dir) == {
            "uid2.db": 0o644,
            "uid2.db-wal": 0o644,
            "uid2.db-shm": 0o644,
        }

        result = Cli(database)("init")

        assert result.exit_code == 0, result.output
        assert _modes(database.data_dir) == {
            "uid2.db": 0o600,
            "uid2.db-wal": 0o600,
            "uid2.db-shm": 0o600,
        }
    assert set(_modes(database.data_dir).values()) <= {0o600}
