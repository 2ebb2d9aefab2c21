"""A database upgraded by a newer version of uid2-operator: every command says so, clearly.

``db upgrade`` cannot help (this version does not ship the newer revision) and "run the database
upgrade" would be the wrong advice; both it and an ordinary command refuse with
``store_schema_out_of_date`` naming the newer version, exit 1, and leave the database as it was.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from cli_harness import Cli, Database

NEWER = "upgraded by a newer version of uid2-operator, and this version cannot use it"


def _revision(db: Database) -> list[str]:
    with closing(sqlite3.connect(db.sqlite_path)) as conn:
        return [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]


def test_commands_refuse_a_database_upgraded_by_a_newer_version(tmp_path: Path) -> None:
    cli = Cli(Database("sqlite", tmp_path / "data", None))
    assert cli("init").exit_code == 0
    with closing(sqlite3.connect(cli.database.sqlite_path)) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
        conn.commit()

    for args in (["db", "upgrade"], ["key", "list"], ["participant", "list"]):
        result = cli(*args, "--json")
        assert result.exit_code == 1, (args, result.stdout, result.stderr)
        error = json.loads(result.stdout)["error"]
        assert error["code"] == "store_schema_out_of_date", args
        assert NEWER in error["message"]
        assert "ffffffffffff" in error["message"]
        assert "run the database upgrade" not in error["message"]
        assert "internal error" not in result.stderr
        assert result.stderr == f"Error: {error['message']}\n"
    assert _revision(cli.database) == ["ffffffffffff"]
