"""``init --json`` always carries ``admin_token_id`` and ``admin_token``: the bootstrap admin
token on the run that issued it, ``null`` on every other (a rerun, an init that adopts a database
whose token another data directory's init issued), so a script reads the same fields each time.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from cli_harness import Cli, Database
from shared_database import second_data_directory

pytestmark = pytest.mark.functional


def _init(cli: Cli) -> dict[str, Any]:
    result = cli("init", "--json")
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_a_rerun_reports_no_token_as_null(database: Database) -> None:
    cli = Cli(database)
    first = _init(cli)
    assert first["admin_token"].startswith(first["admin_token_id"] + ".")

    again = _init(cli)

    assert (again["admin_token_id"], again["admin_token"]) == (None, None)
    assert set(again) == set(first)


def test_an_init_adopting_the_databases_environment_reports_no_token_as_null(
    database: Database,
) -> None:
    first = _init(Cli(database))
    other = second_data_directory(database)

    adopted = _init(Cli(other))

    assert adopted["environment_adopted"] is True
    assert (adopted["admin_token_id"], adopted["admin_token"]) == (None, None)
    assert set(adopted) == set(first)
