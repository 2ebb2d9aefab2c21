"""``participant set-app-names --app-names`` reads a comma-separated list: ``com.a,com.b`` is two
app names, as before, on every backend. (An app name never holds a comma, so the list cannot be
read another way; the admin API refuses one name with a comma.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_harness import BACKENDS, Cli, database_for

pytestmark = pytest.mark.functional


@pytest.fixture(params=BACKENDS)
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cli]:
    with database_for(request.param, tmp_path) as db:
        yield Cli(db)


def _ok(cli: Cli, *args: str) -> Any:
    result = cli(*args, "--json")
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


def test_set_app_names_splits_on_commas(cli: Cli) -> None:
    _ok(cli, "init")
    created = _ok(
        cli, "participant", "create", "--name", "P", "--type", "publisher", "--roles", "GENERATOR"
    )
    site = str(created["site_id"])

    two = _ok(cli, "participant", "set-app-names", "--site-id", site, "--app-names", "com.a,com.b")
    assert two["app_names"] == ["com.a", "com.b"]
    spaced = _ok(
        cli, "participant", "set-app-names", "--site-id", site, "--app-names", " com.c , com.d ,"
    )
    assert spaced["app_names"] == ["com.c", "com.d"]
    shown = _ok(cli, "participant", "show-origins", "--site-id", site)
    assert shown["app_names"] == ["com.c", "com.d"]
    cleared = _ok(cli, "participant", "set-app-names", "--site-id", site, "--app-names", "")
    assert cleared["app_names"] == []


@pytest.mark.parametrize(
    ("option", "text"),
    [
        ("--app-names", "com.tab\t"),
        ("--app-names", "com.a,\ncom.nl"),
        ("--app-names", "com.x\r"),
        ("--domains", "example.com\t"),
        ("--domains", "example.com,\nexample.org"),
        ("--domains", "example.org\r"),
    ],
)
def test_a_control_character_in_a_list_is_refused_not_trimmed(
    cli: Cli, option: str, text: str
) -> None:
    """As the admin API refuses it: only spaces are trimmed around the items of a list."""
    _ok(cli, "init")
    created = _ok(
        cli, "participant", "create", "--name", "P", "--type", "publisher", "--roles", "GENERATOR"
    )
    site = str(created["site_id"])
    command = "set-app-names" if option == "--app-names" else "set-domains"
    refused = cli("participant", command, "--site-id", site, option, text, "--json")
    assert refused.exit_code != 0
    assert "control characters" in refused.stdout + refused.stderr
    shown = _ok(cli, "participant", "show-origins", "--site-id", site)
    assert shown["app_names"] == []
    assert shown["domain_names"] == []
