"""What ``key create --name``, ``key rename --name`` and ``key rotate --name`` say about names is
what they enforce."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_harness import Cli, Database

from uid2_operator.domain.participants import MAX_NAME_LENGTH

pytestmark = pytest.mark.functional


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    runner = Cli(Database("sqlite", tmp_path / "data", None))
    assert runner("init").exit_code == 0
    return runner


def _site(cli: Cli) -> str:
    created = cli("--json", "participant", "create", "--name", "P", "--type", "publisher",
                  "--roles", "GENERATOR")  # fmt: skip
    return str(json.loads(created.stdout)["site_id"])


@pytest.mark.parametrize("command", [["key", "create"], ["key", "rename"], ["key", "rotate"]])
def test_the_help_states_the_enforced_limit(cli: Cli, command: list[str]) -> None:
    shown = cli(*command, "--help")
    assert shown.exit_code == 0
    assert f"1 to {MAX_NAME_LENGTH} characters" in " ".join(shown.stdout.split())


def test_key_names_are_limited_as_the_help_says(cli: Cli) -> None:
    site = _site(cli)

    def create(name: str) -> tuple[int, str]:
        result = cli("--json", "key", "create", "--site-id", site, "--name", name,
                     "--roles", "GENERATOR")  # fmt: skip
        return result.exit_code, result.stdout

    status, body = create("n" * MAX_NAME_LENGTH)
    assert status == 0, body
    key_id = json.loads(body)["key_id"]
    status, body = create("n" * (MAX_NAME_LENGTH + 1))
    assert status == 2
    assert f"1 to {MAX_NAME_LENGTH} characters" in json.loads(body)["error"]["message"]
    renamed = cli("--json", "key", "rename", key_id, "--name", "r" * (MAX_NAME_LENGTH + 1))
    assert renamed.exit_code == 2
    assert cli("--json", "key", "rename", key_id, "--name", "r" * MAX_NAME_LENGTH).exit_code == 0
    rotated = cli("--json", "key", "rotate", key_id, "--name", "s" * (MAX_NAME_LENGTH + 1))
    assert rotated.exit_code == 2
    assert f"1 to {MAX_NAME_LENGTH} characters" in json.loads(rotated.stdout)["error"]["message"]
    rotated = cli("--json", "key", "rotate", key_id, "--name", "s" * MAX_NAME_LENGTH)
    assert rotated.exit_code == 0, rotated.stdout
    assert json.loads(rotated.stdout)["name"] == "s" * MAX_NAME_LENGTH
