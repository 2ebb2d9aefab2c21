"""A subscription id that cannot be one is invalid input, on every keypair command that takes one.

``keypair show|enable|disable|delete`` refuse it with exit status 2 and ``invalid_input``, as
``key show`` refuses a malformed key id and the admin API a malformed subscription id, without
repeating it and before any lookup; a well-formed id that names no keypair is still ``not_found``
(exit status 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_harness import Cli, Database, state_of

from uid2_operator.domain.keypairs import SUBSCRIPTION_ID_RULE

pytestmark = pytest.mark.functional

COMMANDS = ("show", "enable", "disable", "delete")
MALFORMED = ("abc", "", "   ", "0OIl0OIl0O", "abcdefghijk", "abcde-ghij")


def _ok(cli: Cli, *args: str) -> Any:
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    cli = Cli(Database("sqlite", tmp_path / "data", None))
    _ok(cli, "init")
    site = _ok(cli, "participant", "create", "--name", "P", "--type", "publisher",
               "--roles", "GENERATOR")["site_id"]  # fmt: skip
    _ok(cli, "keypair", "create", "--site-id", str(site))
    return cli


@pytest.mark.parametrize("command", COMMANDS)
def test_a_malformed_subscription_id_is_invalid_input(cli: Cli, command: str) -> None:
    before = state_of(cli.database)
    for text in MALFORMED:
        result = cli("keypair", command, text, "--json")
        assert result.exit_code == 2, (text, result.output)
        error = json.loads(result.stdout)["error"]
        assert error["code"] == "invalid_input", text
        assert error["message"].startswith("subscription_id must be 10 characters of "), text
        # The rule is stated in full: nothing in it is masked as credential text.
        assert error["message"] == f"subscription_id {SUBSCRIPTION_ID_RULE}", text
        assert result.stderr == f"Error: {error['message']}\n"
        if text.strip():
            assert text not in error["message"]
    assert state_of(cli.database) == before


def test_it_is_refused_as_a_malformed_key_id_is(cli: Cli) -> None:
    keypair = cli("keypair", "show", "garbage", "--json")
    key = cli("key", "show", "garbage", "--json")
    assert keypair.exit_code == key.exit_code == 2
    assert json.loads(keypair.stdout)["error"]["code"] == "invalid_input"
    assert json.loads(key.stdout)["error"]["code"] == "invalid_input"


@pytest.mark.parametrize("command", COMMANDS)
def test_a_well_formed_unknown_subscription_id_is_not_found(cli: Cli, command: str) -> None:
    result = cli("keypair", command, "zzzzzzzzzz", "--json")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["error"]["code"] == "not_found"


def test_a_subscription_id_with_surrounding_spaces_still_names_its_keypair(cli: Cli) -> None:
    (pair,) = _ok(cli, "keypair", "list")
    subscription = pair["subscription_id"]
    assert _ok(cli, "keypair", "show", f" {subscription} ")["subscription_id"] == subscription
    assert _ok(cli, "keypair", "disable", f"{subscription}\t")["disabled"] is True
    assert _ok(cli, "keypair", "enable", f" {subscription}")["disabled"] is False
    assert _ok(cli, "keypair", "delete", f" {subscription} ")["subscription_id"] == subscription
