"""Several data directories on one database: the database records its environment.

Each data directory records the environment it serves in its ``environment`` file, but a second
data directory set up for a database another one initialised (its keyring copied in) has none
until its ``init``, and without one ``local`` applied: its keys came out ``UID2-C-L-...`` in an
integ database, and its serve refused the database's real keys. The database now records the
environment its first ``init`` set it up for. ``init`` on a data directory that records none
(and is given none) adopts it and says so; one given another environment is refused. Every
command that opens the services, and ``serve`` before it takes its lock or binds a port, refuses
a database recorded for another environment, before any write. A database an earlier version
initialised records none: the next ``init`` or ``serve`` records it, from the data directory.
"""

from __future__ import annotations

import json

import pytest
from cli_harness import Cli, Database, state_of
from serve_harness import served
from shared_database import database_environment, forget_environment, second_data_directory

from uid2_operator.clock import system_random
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.sealing import generate_keyring

pytestmark = pytest.mark.functional

SERVE = ("serve", "--port", "0", "--admin-port", "0")
LIFETIME = "UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S"


def _ok(cli: Cli, *args: str, env: dict[str, str | None] | None = None) -> dict[str, object]:
    result = cli("--json", *args, env=env)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert isinstance(document, dict)
    return document


def _first(database: Database, environment: str = "integ") -> tuple[Cli, str]:
    """The first data directory, initialised for ``environment``, and a participant's site id."""
    cli = Cli(database)
    assert _ok(cli, "init", "--environment", environment)["environment"] == environment
    site = _ok(cli, "participant", "create", "--name", "P", "--type", "publisher",
               "--roles", "GENERATOR")["site_id"]  # fmt: skip
    return cli, str(site)


def test_init_records_the_environment_in_the_database(database: Database) -> None:
    assert database_environment(database) is None
    _first(database, "integ")
    assert database_environment(database) is Environment.INTEG


def test_a_refused_first_init_records_no_environment_in_the_database(database: Database) -> None:
    cli = Cli(database)
    assert cli("init", "--environment", "prod").exit_code != 0  # no provisioned keyring
    assert database_environment(database) is None
    assert _ok(cli, "init", "--environment", "local")["environment"] == "local"
    assert database_environment(database) is Environment.LOCAL


def test_a_second_data_directory_adopts_the_environment_of_the_database(
    database: Database,
) -> None:
    first, site = _first(database, "integ")
    other = second_data_directory(database)
    second = Cli(other)

    done = _ok(second, "init")
    assert done["environment"] == "integ"
    assert done["environment_adopted"] is True
    assert done["salt_buckets"] == 1 << 20  # integ's, the table's: nothing to refuse
    # the database's bootstrap token was issued already
    assert (done["admin_token_id"], done["admin_token"]) == (None, None)
    assert (other.data_dir / "environment").read_text(encoding="utf-8") == "integ\n"
    again = _ok(second, "init")
    assert (again["environment"], again["environment_adopted"]) == ("integ", False)

    issued = _ok(second, "key", "create", "--site-id", site, "--name", "k", "--roles", "GENERATOR")
    assert str(issued["key"]).startswith(f"UID2-C-I-{site}-")
    assert str(_ok(first, "key", "show", str(issued["key_id"]))["key_id"]) == issued["key_id"]

    text = Cli(second_data_directory(database, "third"))("init")
    assert text.exit_code == 0, text.output
    assert "environment          integ (adopted from the database)\n" in text.stdout


@pytest.mark.parametrize(
    ("how", "env"),
    [
        ("option", {}),
        ("variable", {"UID2_ENVIRONMENT": "prod"}),
    ],
)
def test_init_given_another_environment_than_the_databases_is_refused_and_writes_nothing(
    database: Database, how: str, env: dict[str, str | None]
) -> None:
    _first(database, "integ")
    before = state_of(database)
    other = second_data_directory(database)
    args = ("init", "--environment", "local") if how == "option" else ("init",)
    given = "local" if how == "option" else "prod"

    refused = Cli(other)("--json", *args, env=env)
    assert refused.exit_code == 2, refused.output
    assert refused.stderr == (
        f"Error: The database was initialised for the integ environment, not {given}: set "
        f"UID2_ENVIRONMENT (init: --environment) to integ, or give the database of the {given} "
        "deployment (--database-url)\n"
    )
    assert json.loads(refused.stdout)["error"]["code"] == "invalid_input"
    assert sorted(p.name for p in other.data_dir.iterdir()) == ["keyring.json"]
    assert state_of(database) == before
    assert database_environment(database) is Environment.INTEG


_NO_FILE = (
    "Error: The database was initialised for the integ environment, not local (the default: "
    "this data directory records no environment): set UID2_ENVIRONMENT=integ, or run init, "
    "which adopts the database's\n"
)
_VARIABLE = (
    "Error: The database was initialised for the integ environment, not local: set "
    "UID2_ENVIRONMENT (init: --environment) to integ, or give the database of the local "
    "deployment (--database-url)\n"
)


def _file_message(other: Database) -> str:
    return (
        "Error: The database was initialised for the integ environment, not local, which this "
        "data directory records: give it its own database (--database-url), or write integ "
        f"into {(other.data_dir / 'environment').absolute()}\n"
    )


@pytest.mark.parametrize("how", ["no environment file", "environment file", "variable"])
def test_commands_on_a_data_directory_not_matching_the_database_are_refused_before_any_write(
    database: Database, how: str
) -> None:
    """A data directory the database's environment does not apply to: one that records none
    (a keyring copied, init not run), one an earlier version initialised as local on an integ
    database, or one run with UID2_ENVIRONMENT=local."""
    _, site = _first(database, "integ")
    other = second_data_directory(database)
    env: dict[str, str | None] = {}
    expected = _NO_FILE
    if how == "environment file":
        (other.data_dir / "environment").write_text("local\n", encoding="utf-8")
        expected = _file_message(other)
    elif how == "variable":
        env = {"UID2_ENVIRONMENT": "local"}
        expected = _VARIABLE
    files = sorted(p.name for p in other.data_dir.iterdir())
    before = state_of(database)
    commands = [
        ["key", "create", "--site-id", site, "--name", "k", "--roles", "GENERATOR"],
        ["participant", "create", "--name", "Q", "--type", "publisher", "--roles", "GENERATOR"],
        ["participant", "list"],
        ["admin-token", "list"],
        ["keys", "rotate"],
        ["keyring", "status"],
        [*SERVE],
    ]
    if how != "no environment file":  # with none, serve --init-if-new runs init: it adopts
        commands.append([*SERVE, "--init-if-new"])

    second = Cli(other)
    for command in commands:
        refused = second("--json", *command, env=env)
        assert refused.exit_code == 2, (command, refused.output)
        assert refused.stderr == expected, command
        assert json.loads(refused.stdout)["error"]["code"] == "invalid_input", command

    assert state_of(database) == before
    assert sorted(p.name for p in other.data_dir.iterdir()) == files  # no serve.lock either
    assert database_environment(database) is Environment.INTEG


def test_an_earlier_versions_database_gets_its_environment_at_the_next_init(
    database: Database,
) -> None:
    first, _ = _first(database, "integ")
    forget_environment(database)
    done = _ok(first, "init")
    assert (done["environment"], done["environment_adopted"]) == ("integ", False)
    assert database_environment(database) is Environment.INTEG


def test_a_new_data_directory_on_an_earlier_versions_database_must_name_its_environment(
    database: Database,
) -> None:
    """Nothing says which environment such a database serves: a data directory that records
    none does not guess local."""
    _first(database, "integ")
    forget_environment(database)
    before = state_of(database)
    other = second_data_directory(database)
    second = Cli(other)

    refused = second("init")
    assert refused.exit_code == 2, refused.output
    assert refused.stderr == (
        "Error: The database was initialised by an earlier version, which did not record its "
        "environment, and this data directory records none: run init with --environment (or "
        "UID2_ENVIRONMENT) naming the database's environment\n"
    )
    assert sorted(p.name for p in other.data_dir.iterdir()) == ["keyring.json"]
    assert state_of(database) == before
    assert database_environment(database) is None

    done = _ok(second, "init", "--environment", "integ")
    assert (done["environment"], done["environment_adopted"]) == ("integ", False)
    assert database_environment(database) is Environment.INTEG


def test_an_earlier_versions_database_gets_its_environment_at_the_next_serve_start(
    database: Database,
) -> None:
    _first(database, "integ")
    forget_environment(database)
    with served(database):
        assert database_environment(database) is Environment.INTEG


def test_serve_init_if_new_on_a_second_data_directory_adopts_the_environment_of_the_database(
    database: Database,
) -> None:
    _first(database, "integ")
    other = second_data_directory(database)
    with served(other, extra_args=("--init-if-new",)) as running:
        output = "\n".join(running.lines)
    assert "environment          integ (adopted from the database)" in output, output
    assert (other.data_dir / "environment").read_text(encoding="utf-8") == "integ\n"
    assert database_environment(database) is Environment.INTEG


def test_serve_init_if_new_checks_the_lifetimes_of_the_environment_it_will_adopt(
    database: Database,
) -> None:
    # 100000 s is a valid identity lifetime in prod (3600 to 2592000 with its defaults), not in
    # local (900 to 86400), the default of a data directory that records no environment yet;
    # and 1800 the other way round, which must be refused before init writes anything.
    keyring = database.data_dir / "keyring.json"
    database.data_dir.mkdir(mode=0o700, exist_ok=True)
    keyring.write_text(generate_keyring(system_random, development=False).to_json())
    keyring.chmod(0o600)
    _first(database, "prod")
    other = second_data_directory(database)
    refused = Cli(other)(*SERVE, "--init-if-new", env={LIFETIME: "1800"})
    assert refused.exit_code == 1
    assert "(3600) <= UID2_IDENTITY_TOKEN_EXPIRES_AFTER_S (1800)" in refused.stderr
    assert not (other.data_dir / "environment").exists()  # nothing written
    with served(other, extra_args=("--init-if-new",), env={LIFETIME: "100000"}) as running:
        output = "\n".join(running.lines)
    assert "environment          prod (adopted from the database)" in output, output
