"""The embedded SQLite file is created only by init, and always owner-only.

A command run on a data directory before init must not leave an empty database file with the
umask's mode behind; and a file some earlier run did leave that way is made 0600 by init, as is
a keyring file provisioned with the umask's mode. A keyring file any user may read is warned
about by every command that reads it.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from cli_harness import Cli, Database

from uid2_operator.clock import system_random
from uid2_operator.domain.sealing import generate_keyring

pytestmark = pytest.mark.functional

ENTRY_POINT = Path(sys.executable).with_name("uid2-operator")
WARNING = "can be read or changed by any user"


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


def test_init_sets_an_existing_database_file_of_any_other_mode_to_0600(tmp_path: Path) -> None:
    # 0000 included: no bit to take away, but the service's own user must read and write it.
    database = Database("sqlite", tmp_path / "data", None)
    database.data_dir.mkdir(mode=0o700)
    with closing(sqlite3.connect(database.sqlite_path)) as made:
        made.execute("CREATE TABLE probe (x)")
    database.sqlite_path.chmod(0o000)

    Cli(database)("init")  # refused or not (a table in the way), the file's mode is set first

    assert _modes(database.data_dir) == {"uid2.db": 0o600}


@pytest.mark.usefixtures("umask_022")
@pytest.mark.parametrize("environment", ["local", "prod"])
def test_init_makes_a_keyring_file_it_was_given_private(
    tmp_path: Path, environment: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Provisioned by hand with the umask's mode: it holds every key-encryption key and the
    # pepper, the keys to everything the database beside it seals.
    database = Database("sqlite", tmp_path / "data", None)
    database.data_dir.mkdir(mode=0o700)
    keyring_file = database.data_dir / "keyring.json"
    development = environment != "prod"
    keyring_file.write_text(generate_keyring(system_random, development=development).to_json())
    assert stat.S_IMODE(keyring_file.stat().st_mode) == 0o644

    result = Cli(database)("init", "--environment", environment)

    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(keyring_file.stat().st_mode) == 0o600
    # Made private before it was read: nothing to warn about.
    assert [r.getMessage() for r in caplog.records if WARNING in r.getMessage()] == []


@pytest.mark.usefixtures("umask_022")
def test_init_goes_on_with_a_keyring_file_whose_mode_cannot_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A read-only mount (a deployment's secret volume): the file stays as it is, with a warning.
    database = Database("sqlite", tmp_path / "data", None)
    database.data_dir.mkdir(mode=0o700)
    keyring_file = database.data_dir / "keyring.json"
    keyring_file.write_text(generate_keyring(system_random, development=True).to_json())
    chmod = os.chmod

    def read_only(path: str | os.PathLike[str], mode: int, **kwargs: object) -> None:
        if Path(path) == keyring_file:
            raise OSError(errno.EROFS, "Read-only file system")
        chmod(path, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "chmod", read_only)

    result = Cli(database)("init")

    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(keyring_file.stat().st_mode) == 0o644
    assert any(f"{WARNING} (mode 0644)" in r.getMessage() for r in caplog.records)


@pytest.mark.usefixtures("umask_022")
def test_a_keyring_file_any_user_may_read_is_warned_about(tmp_path: Path) -> None:
    database = Database("sqlite", tmp_path / "data", None)
    assert Cli(database)("init").exit_code == 0
    keyring_file = database.data_dir / "keyring.json"
    assert stat.S_IMODE(keyring_file.stat().st_mode) == 0o600

    def stderr_with(mode: int) -> str:
        keyring_file.chmod(mode)
        done = subprocess.run(  # noqa: S603 (our own entry point, fixed arguments)
            [str(ENTRY_POINT), "--data-dir", str(database.data_dir), "participant", "list"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert WARNING not in stderr_with(0o600)
    assert WARNING not in stderr_with(0o640)  # a group may be how the service is given it
    warned = stderr_with(0o644)
    assert f"{keyring_file} {WARNING} (mode 0644)" in warned
    assert "chmod 600" in warned
    assert keyring_file.read_text() not in warned


def test_init_leaves_a_keyring_file_its_group_may_read(tmp_path: Path) -> None:
    # A group may be how a deployment hands the file to the service: not init's to take away.
    database = Database("sqlite", tmp_path / "data", None)
    database.data_dir.mkdir(mode=0o700)
    keyring_file = database.data_dir / "keyring.json"
    keyring_file.write_text(generate_keyring(system_random, development=True).to_json())
    keyring_file.chmod(0o640)

    result = Cli(database)("init")

    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(keyring_file.stat().st_mode) == 0o640
