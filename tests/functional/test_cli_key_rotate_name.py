"""``uid2-operator key rotate --name`` on SQLite and PostgreSQL.

The successor takes the name given, checked as ``key create --name`` checks one (same message,
exit 2, nothing changed) and recorded in the successor's ``key.create`` event; without
``--name`` it keeps the old key's.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from cli_harness import Cli, Database, state_of

from uid2_operator.domain.participants import MAX_NAME_LENGTH

pytestmark = pytest.mark.functional


@pytest.fixture
def cli(database: Database) -> Cli:
    runner = Cli(database)
    assert runner("init").exit_code == 0
    return runner


def _ok(cli: Cli, *args: str) -> Any:
    result = cli(*args, "--json")
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


def _site(cli: Cli) -> str:
    created = _ok(cli, "participant", "create", "--name", "P", "--type", "publisher",
                  "--roles", "GENERATOR")  # fmt: skip
    return str(created["site_id"])


def _key(cli: Cli, site: str) -> str:
    created = _ok(cli, "key", "create", "--site-id", site, "--name", "web",
                  "--roles", "GENERATOR")  # fmt: skip
    key_id: str = created["key_id"]
    return key_id


def _created_name(cli: Cli, key_id: str) -> str:
    [event] = _ok(cli, "audit", "list", "--target", key_id, "--action", "key.create")
    name: str = event["after"]["name"]
    return name


def test_the_successor_takes_the_name_given(cli: Cli) -> None:
    old_id = _key(cli, _site(cli))

    successor = _ok(cli, "key", "rotate", old_id, "--name", " web-2 ", "--grace-days", "1")

    assert (successor["name"], successor["key_view"]["name"]) == ("web-2", "web-2")
    assert _ok(cli, "key", "show", successor["key_id"])["name"] == "web-2"
    assert _ok(cli, "key", "show", old_id)["name"] == "web"
    assert _created_name(cli, successor["key_id"]) == "web-2"


def test_without_a_name_the_successor_keeps_the_old_one(cli: Cli) -> None:
    old_id = _key(cli, _site(cli))
    human = cli("key", "rotate", old_id)
    assert human.exit_code == 0, human.output
    [successor_id] = [
        line.split()[-1] for line in human.stdout.splitlines() if line.startswith("key id")
    ]
    assert _ok(cli, "key", "show", successor_id)["name"] == "web"
    assert _created_name(cli, successor_id) == "web"


def test_the_name_shows_in_the_readable_answer(cli: Cli) -> None:
    old_id = _key(cli, _site(cli))
    human = cli("key", "rotate", old_id, "--name", "web-2")
    assert human.exit_code == 0, human.output
    assert ["name", "web-2"] in [line.split() for line in human.stdout.splitlines()]


@pytest.mark.parametrize(
    "name", ["", "   ", "n" * (MAX_NAME_LENGTH + 1), "line\nbreak", "left\u202eright"]
)
def test_a_bad_name_is_refused_as_on_create_and_changes_nothing(cli: Cli, name: str) -> None:
    site = _site(cli)
    old_id = _key(cli, site)
    on_create = cli("key", "create", "--site-id", site, "--name", name, "--roles", "GENERATOR",
                    "--json")  # fmt: skip
    assert on_create.exit_code == 2, on_create.output
    before = state_of(cli.database)

    refused = cli("key", "rotate", old_id, "--name", name, "--json")

    assert refused.exit_code == 2, refused.output
    assert json.loads(refused.stdout) == json.loads(on_create.stdout)
    assert state_of(cli.database) == before
    assert _ok(cli, "key", "show", old_id)["rotated_to"] is None


def test_a_pasted_key_as_the_name_is_refused_without_being_repeated(cli: Cli) -> None:
    site = _site(cli)
    created = _ok(cli, "key", "create", "--site-id", site, "--name", "web",
                  "--roles", "GENERATOR")  # fmt: skip
    before = state_of(cli.database)
    refused = cli("key", "rotate", created["key_id"], "--name", created["key"], "--json")
    assert refused.exit_code == 2, refused.output
    assert json.loads(refused.stdout)["error"]["code"] == "invalid_input"
    assert created["key"].split(".", 1)[1] not in refused.output
    assert state_of(cli.database) == before
