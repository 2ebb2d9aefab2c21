"""``db upgrade`` upgrades only a database ``init`` set up, and creates nothing otherwise.

Given a data directory that does not exist, one without its database file (say, a PostgreSQL
deployment's, run without ``--database-url``), a SQLite file a URL names that does not exist, or
a database with no schema at all, it refuses with exit status 1 and ``store_schema_out_of_date``,
names where it looked and points at ``init``, as the other commands name a missing data
directory. Nothing is created, so no later command can work on a database no serve uses. Every
database ``init`` set up is still upgraded.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from cli_harness import Cli, Database, database_for, libpq_dsn, settings_of
from click.testing import Result

from uid2_operator.clock import system_random
from uid2_operator.domain.sealing import generate_keyring
from uid2_operator.storage import current_revision, head_revision

pytestmark = pytest.mark.functional

CODE = "store_schema_out_of_date"
INIT = "`uid2-operator init` sets up a new one"


def _refused(result: Result) -> str:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    error = json.loads(result.stdout)["error"]
    assert error["code"] == CODE
    assert result.stderr == f"Error: {error['message']}\n"
    message: str = error["message"]
    return message


def _tables(database: Database) -> int:
    assert database.url is not None
    assert database.schema is not None
    with psycopg.connect(libpq_dsn(database.url)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s",
            (database.schema,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_data_directory_that_does_not_exist_is_refused_and_not_created(tmp_path: Path) -> None:
    data_dir = tmp_path / "nowhere"
    cli = Cli(Database("sqlite", data_dir, None))

    message = _refused(cli("db", "upgrade", "--json"))

    assert message.startswith(f"No database: there is no data directory {data_dir}. ")
    assert message.endswith(INIT)
    assert not data_dir.exists()
    # What the other commands give for the same directory: the same exit status, the same
    # directory named.
    other = cli("participant", "list", "--json")
    assert other.exit_code == 1
    assert f"there is no data directory {data_dir}." in other.stderr
    assert not data_dir.exists()


def test_a_data_directory_without_its_database_file_gets_none(tmp_path: Path) -> None:
    """A PostgreSQL deployment's data directory (its keyring and environment file, no SQLite
    file), used without --database-url: no empty database appears for a token to be minted in."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    (data_dir / "keyring.json").write_text(
        generate_keyring(system_random, development=True).to_json(), encoding="utf-8"
    )
    (data_dir / "environment").write_text("local\n", encoding="utf-8")
    cli = Cli(Database("sqlite", data_dir, None))

    message = _refused(cli("db", "upgrade", "--json"))

    assert message.startswith(f"No database: the data directory {data_dir} has no uid2.db. ")
    assert "--database-url" in message
    assert message.endswith(INIT)
    assert sorted(p.name for p in data_dir.iterdir()) == ["environment", "keyring.json"]
    minted = cli("admin-token", "create", "--name", "n", "--roles", "SUPER_USER", "--json")
    assert minted.exit_code == 1
    assert json.loads(minted.stdout)["error"]["code"] == CODE
    assert not (data_dir / "uid2.db").exists()


def test_a_sqlite_url_naming_no_file_is_refused_and_the_file_not_created(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    path = tmp_path / "elsewhere.db"
    cli = Cli(Database("sqlite", data_dir, f"sqlite:///{path}"))

    message = _refused(cli("db", "upgrade", "--json"))

    assert message.startswith(f"No database: the SQLite file {path} does not exist. ")
    assert message.endswith(INIT)
    assert not path.exists()
    assert list(data_dir.iterdir()) == []


def test_an_empty_sqlite_file_is_refused_and_left_empty(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    (data_dir / "uid2.db").touch(mode=0o600)
    cli = Cli(Database("sqlite", data_dir, None))

    message = _refused(cli("db", "upgrade", "--json"))

    assert "was never initialised (it has no schema revision)" in message
    assert "`uid2-operator init`" in message
    assert (data_dir / "uid2.db").stat().st_size == 0


@pytest.mark.postgres
def test_an_empty_postgresql_schema_is_refused_and_left_empty(tmp_path: Path) -> None:
    with database_for("postgresql", tmp_path) as database:
        cli = Cli(database)

        message = _refused(cli("db", "upgrade", "--json"))

        assert message.startswith("The database at postgresql+psycopg://")
        assert "was never initialised (it has no schema revision)" in message
        assert "`uid2-operator init`" in message
        assert _tables(database) == 0
        assert not database.data_dir.exists()


def test_a_database_init_set_up_is_upgraded(database: Database) -> None:
    cli = Cli(database)
    assert cli("init").exit_code == 0

    result = cli("db", "upgrade", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "schema_revision": head_revision(),
        "database": database.backend,
    }
    assert current_revision(settings_of(database).store_url) == head_revision()


def test_a_database_url_needs_no_data_directory(database: Database, tmp_path: Path) -> None:
    """With a database URL the upgrade neither reads nor writes the data directory: it runs
    from wherever the URL is given (a host without the serve's data directory, say)."""
    cli = Cli(database)
    assert cli("init").exit_code == 0
    url = database.url or f"sqlite:///{database.sqlite_path}"
    elsewhere = Cli(Database(database.backend, tmp_path / "no-data-dir", url))

    result = elsewhere("db", "upgrade", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["schema_revision"] == head_revision()
    assert not (tmp_path / "no-data-dir").exists()
