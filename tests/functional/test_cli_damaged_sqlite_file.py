"""A SQLite file that is not a database (damaged, or another file copied over it) is reported
as such by every command, serve included: the store is unavailable, named, with the driver's
reason, exit 1 and no traceback; not an unnamed internal error."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from cli_harness import Cli, Database
from serve_harness import UID2_OPERATOR, clean_env


@pytest.fixture
def damaged(tmp_path: Path) -> Database:
    database = Database("sqlite", tmp_path / "data", None)
    assert Cli(database)("init").exit_code == 0
    (tmp_path / "data" / "uid2.db").write_bytes(os.urandom(5000))
    return database


@pytest.mark.parametrize(
    "args", [("key", "list"), ("db", "upgrade"), ("participant", "list", "--json")]
)
def test_every_command_names_the_damaged_file(damaged: Database, args: tuple[str, ...]) -> None:
    result = Cli(damaged)(*args)
    assert result.exit_code == 1
    said = result.stdout + result.stderr
    assert "is unavailable: file is not a database" in said
    assert str(damaged.sqlite_path) in said
    assert "internal" not in said
    assert "Traceback" not in said


def test_serve_names_the_damaged_file(damaged: Database) -> None:
    done = subprocess.run(  # noqa: S603 (our own command)
        [UID2_OPERATOR, *damaged.cli_args(), "serve", "--port", "0", "--admin-port", "0"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "is unavailable: file is not a database" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
