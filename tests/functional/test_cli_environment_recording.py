"""When the database's environment is recorded, and what a database that records none says.

A database initialised by an earlier version records no environment; the next ``init`` or
``serve`` start records it. It is recorded last, once the rest of the command has succeeded: a
refused ``init`` (a salt bucket count that is not the table's, say) or a refused ``serve``
start records nothing, since the record never changes. Until it is recorded, the ids of the
database's API keys and admin tokens (``UID2-C-L-...``, ``UID2-A-I-...``) say which
environment it serves: a data directory for another one is refused before any write, and
when the ids disagree among themselves nothing is recorded. A refusal only tells a data
directory to take the database's environment when the database's credentials confirm it.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from cli_harness import Cli, Database, settings_of, state_of
from serve_harness import UID2_OPERATOR, clean_env, served
from shared_database import (
    CODES,
    database_environment,
    forget_environment,
    second_data_directory,
)
from sqlalchemy import insert

from uid2_operator.cli import database as database_commands
from uid2_operator.domain.admin_tokens import AdminToken
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.roles import AdminRole
from uid2_operator.settings import Settings
from uid2_operator.storage import open_store
from uid2_operator.storage import schema as t

pytestmark = pytest.mark.functional

SMALL: dict[str, str | None] = {"UID2_SALT_BUCKETS": "1024"}
"""The salt table the tests create (quick); a table's count is fixed once it exists."""
OTHER_COUNT: dict[str, str | None] = {"UID2_SALT_BUCKETS": "2048"}
_INFERRED = (
    "Error: The database records no environment (an earlier version initialised it), but its "
    "API key and admin token ids carry local's letter (L), not integ's"
)


def _ok(cli: Cli, *args: str, env: dict[str, str | None] | None = None) -> dict[str, object]:
    result = cli("--json", *args, env={**SMALL, **(env or {})})
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert isinstance(document, dict)
    return document


def _earlier_database(database: Database, environment: str = "local") -> tuple[Cli, str]:
    """A data directory whose database an earlier version initialised for ``environment``, and
    a participant's site id: an API key (``UID2-C-L-...`` for local) and the bootstrap admin
    token (``UID2-A-L-...``) in it, and no environment recorded in the database."""
    cli = Cli(database)
    assert _ok(cli, "init", "--environment", environment)["environment"] == environment
    site = str(_ok(cli, "participant", "create", "--name", "P", "--type", "publisher",
                   "--roles", "GENERATOR")["site_id"])  # fmt: skip
    key = _ok(cli, "key", "create", "--site-id", site, "--name", "k", "--roles", "GENERATOR")
    assert str(key["key_id"]).startswith(f"UID2-C-{Environment(environment).letter}-")
    forget_environment(database)
    return cli, site


def _set_environment_row(database: Database, environment: Environment) -> None:
    """A database whose record an earlier version's refused init made wrongly."""
    forget_environment(database)
    code = {v: k for k, v in CODES.items()}[environment]
    store = open_store(settings_of(database).store_url)
    try:
        with store.engine.begin() as conn:
            conn.execute(insert(t.store_meta).values(name="environment", value=code))
    finally:
        store.close()


def _add_admin_token_id(database: Database, token_id: str) -> None:
    """An admin token row with ``token_id`` (as another version, or a misconfigured data
    directory, would have left it)."""
    store = open_store(settings_of(database).store_url)
    try:
        with store.transaction() as tx:
            tx.admin_tokens.add(
                AdminToken(
                    token_id=token_id,
                    name="stray",
                    roles=frozenset({AdminRole.READ_ONLY}),
                    token_hash=bytes(32),
                    created_at_ms=1,
                    created_by="cli:test",
                )
            )
    finally:
        store.close()


def _serve_refused(database: Database, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``serve`` run as the operator would, expected to stop at start-up."""
    done = subprocess.run(  # noqa: S603 (our own command)
        [UID2_OPERATOR, *database.cli_args(), "serve", "--port", "0", "--admin-port", "0"],
        capture_output=True,
        text=True,
        env=clean_env(env),
        timeout=120,
        check=False,
    )
    assert done.returncode != 0, done
    return done


def test_an_init_refused_by_the_salt_table_records_no_environment(database: Database) -> None:
    cli, _ = _earlier_database(database)
    before = state_of(database)

    refused = cli("init", env=OTHER_COUNT)
    assert refused.exit_code == 2, refused.output
    assert "The salt table was created with 1024 buckets" in refused.stderr
    assert database_environment(database) is None
    assert state_of(database) == before

    assert _ok(cli, "init")["environment"] == "local"
    assert database_environment(database) is Environment.LOCAL


def test_a_wrong_init_on_an_earlier_versions_database_without_credentials_records_nothing(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local database an earlier version's init left without its admin token (nothing in it
    names an environment): ``init --environment integ`` is refused by the salt table (integ's
    count is not local's), and leaves the database for its local data directory."""

    def interrupted(settings: Settings) -> None:
        del settings
        raise KeyboardInterrupt

    monkeypatch.setattr(database_commands, "record_environment", interrupted)
    cli = Cli(database)
    assert cli("init", env=SMALL).exit_code == 1
    monkeypatch.undo()
    forget_environment(database)
    before = state_of(database)

    refused = cli("init", "--environment", "integ", env=SMALL | {"UID2_SALT_BUCKETS": None})
    assert refused.exit_code == 2, refused.output
    assert "The salt table was created with 1024 buckets" in refused.stderr
    assert database_environment(database) is None
    assert state_of(database) == before
    assert not (database.data_dir / "environment").exists()

    done = _ok(cli, "init")  # the interrupted init finished, for the default: local
    assert (done["environment"], done["material_created"]) == ("local", False)
    assert done["admin_token"] is not None
    assert database_environment(database) is Environment.LOCAL


def test_an_init_interrupted_before_it_recorded_the_databases_environment_is_finished_by_the_next(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(settings: Settings, store: object) -> None:
        del settings, store
        raise KeyboardInterrupt

    monkeypatch.setattr(database_commands, "record_store_environment", interrupted)
    cli = Cli(database)
    assert cli("init", env=SMALL).exit_code == 1
    monkeypatch.undo()
    assert database_environment(database) is None

    done = _ok(cli, "init")
    assert (done["environment"], done["material_created"]) == ("local", False)
    assert done["admin_token"] is not None
    assert database_environment(database) is Environment.LOCAL


def _file_given(other: Database) -> tuple[tuple[str, ...], dict[str, str | None]]:
    (other.data_dir / "environment").write_text("integ\n", encoding="utf-8")
    return ("init",), {}


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        (
            "option",
            f"{_INFERRED}: set UID2_ENVIRONMENT (init: --environment) to local, or give the "
            "database of the integ deployment (--database-url)\n",
        ),
        (
            "variable",
            f"{_INFERRED}: set UID2_ENVIRONMENT (init: --environment) to local, or give the "
            "database of the integ deployment (--database-url)\n",
        ),
        (
            "environment file",
            f"{_INFERRED}, which this data directory records: give it the database of its own "
            "deployment (--database-url)\n",
        ),
    ],
)
def test_init_for_another_environment_than_the_ids_of_an_earlier_versions_database_is_refused(
    database: Database, how: str, expected: str
) -> None:
    """The salt table would not refuse it (the same count): only the ids say it is local's."""
    _earlier_database(database)
    before = state_of(database)
    other = second_data_directory(database)
    args: tuple[str, ...] = ("init", "--environment", "integ")
    env: dict[str, str | None] = {}
    if how == "variable":
        args, env = ("init",), {"UID2_ENVIRONMENT": "integ"}
    elif how == "environment file":
        args, env = _file_given(other)
    files = sorted(p.name for p in other.data_dir.iterdir())

    refused = Cli(other)("--json", *args, env=SMALL | env)
    assert refused.exit_code == 2, refused.output
    assert refused.stderr == expected
    assert json.loads(refused.stdout)["error"]["code"] == "invalid_input"
    assert sorted(p.name for p in other.data_dir.iterdir()) == files
    assert state_of(database) == before
    assert database_environment(database) is None


def test_commands_for_another_environment_than_the_ids_of_an_earlier_versions_database_are_refused(
    database: Database,
) -> None:
    """Another data directory on it (its keyring copied) run with UID2_ENVIRONMENT=integ."""
    _, site = _earlier_database(database)
    before = state_of(database)
    other = second_data_directory(database)
    second = Cli(other)
    expected = (
        f"{_INFERRED}: set UID2_ENVIRONMENT (init: --environment) to local, or give the "
        "database of the integ deployment (--database-url)\n"
    )
    integ: dict[str, str | None] = {"UID2_ENVIRONMENT": "integ"}
    for command in (
        ["key", "create", "--site-id", site, "--name", "k2", "--roles", "GENERATOR"],
        ["admin-token", "list"],
    ):
        refused = second("--json", *command, env=SMALL | integ)
        assert refused.exit_code == 2, (command, refused.output)
        assert refused.stderr == expected, command
        assert json.loads(refused.stdout)["error"]["code"] == "invalid_input", command
    served_refused = _serve_refused(
        other, {"UID2_SALT_BUCKETS": "1024", "UID2_ENVIRONMENT": "integ"}
    )
    assert served_refused.returncode == 2
    assert served_refused.stderr.endswith(expected), served_refused.stderr
    assert sorted(p.name for p in other.data_dir.iterdir()) == ["keyring.json"]  # no serve.lock
    assert state_of(database) == before
    assert database_environment(database) is None


def test_a_data_directory_recording_none_on_an_earlier_versions_database_is_refused_by_its_ids(
    database: Database,
) -> None:
    """A keyring copied and init not run: local by default, in an integ database."""
    _, site = _earlier_database(database, "integ")
    before = state_of(database)
    second = Cli(second_data_directory(database))

    refused = second("key", "create", "--site-id", site, "--name", "k2", "--roles", "GENERATOR",
                     env=SMALL)  # fmt: skip
    assert refused.exit_code == 2, refused.output
    assert refused.stderr == (
        "Error: The database records no environment (an earlier version initialised it), but "
        "its API key and admin token ids carry integ's letter (I), not local's (the default: "
        "this data directory records no environment): set UID2_ENVIRONMENT=integ, or run init "
        "--environment integ\n"
    )
    assert state_of(database) == before
    assert database_environment(database) is None


def test_an_earlier_versions_database_gets_the_right_environment_at_the_next_serve_start(
    database: Database,
) -> None:
    """A wrong init from another data directory changes nothing; the database's own data
    directory's serve records local."""
    _earlier_database(database)
    other = second_data_directory(database)
    refused = Cli(other)("init", "--environment", "integ", env=SMALL)
    assert refused.exit_code == 2, refused.output
    assert database_environment(database) is None

    with served(database, env={"UID2_SALT_BUCKETS": "1024"}):
        assert database_environment(database) is Environment.LOCAL


def test_a_serve_refused_at_start_records_no_environment(database: Database) -> None:
    _earlier_database(database)
    before = state_of(database)

    refused = _serve_refused(database, {"UID2_SALT_BUCKETS": "2048"})
    assert "The salt table was created with 1024 buckets" in refused.stderr, refused.stderr
    assert database_environment(database) is None
    assert state_of(database) == before


def test_an_earlier_versions_database_whose_ids_disagree_gets_no_environment_recorded(
    database: Database,
) -> None:
    cli, _ = _earlier_database(database)
    _add_admin_token_id(database, "UID2-A-I-0-strAY1")
    before = state_of(database)
    expected = (
        "The database records no environment (an earlier version initialised it), and the ids "
        "of its API keys and admin tokens disagree: they carry the environment letters I, L. "
        "Nothing says which environment it serves, so local is not recorded in it"
    )

    refused = cli("init", env=SMALL)
    assert refused.exit_code == 2, refused.output
    assert refused.stderr == f"Error: {expected}\n"
    served_refused = _serve_refused(database, {"UID2_SALT_BUCKETS": "1024"})
    assert f"Error: {expected}\n" in served_refused.stderr, served_refused.stderr
    assert database_environment(database) is None
    assert state_of(database) == before
    # nothing to hold a command to: it runs as before
    listed = cli("--json", "participant", "list", env=SMALL)
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout)


def test_a_data_directory_is_not_told_to_take_a_record_its_databases_credentials_contradict(
    database: Database,
) -> None:
    """A database an earlier version's refused ``init --environment integ`` recorded as integ,
    though every key and token in it is local's: the local data directory is not told to write
    integ into its environment file."""
    cli, _ = _earlier_database(database)
    _set_environment_row(database, Environment.INTEG)

    refused = cli("participant", "list", env=SMALL)
    assert refused.exit_code == 2, refused.output
    assert refused.stderr == (
        "Error: The database was initialised for the integ environment, not local, but its API "
        "key and admin token ids carry local's letter (L): its record and its credentials "
        "disagree (the record cannot change). Make sure which deployment the database is "
        "before setting any data directory to integ\n"
    )
    assert "write integ" not in refused.stderr
    assert (database.data_dir / "environment").read_text(encoding="utf-8") == "local\n"


def test_a_data_directory_is_not_told_to_take_a_record_no_credential_confirms(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An integ database holding no key or token yet (its init cut short before the token),
    and a data directory recording local: both are named, neither is said to be wrong."""

    def interrupted(settings: Settings) -> None:
        del settings
        raise KeyboardInterrupt

    monkeypatch.setattr(database_commands, "record_environment", interrupted)
    assert Cli(database)("init", "--environment", "integ", env=SMALL).exit_code == 1
    monkeypatch.undo()
    assert database_environment(database) is Environment.INTEG
    other = second_data_directory(database)
    (other.data_dir / "environment").write_text("local\n", encoding="utf-8")

    refused = Cli(other)("participant", "list", env=SMALL)
    assert refused.exit_code == 2, refused.output
    assert refused.stderr == (
        "Error: The database was initialised for the integ environment, not local, which this "
        "data directory records: give it the database of its own deployment (--database-url)\n"
    )
    assert sorted(p.name for p in other.data_dir.iterdir()) == ["environment", "keyring.json"]
