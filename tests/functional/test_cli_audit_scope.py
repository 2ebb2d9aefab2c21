"""``audit list --site-id`` and ``--target-type``, the events the command line sees, and
``participant create`` without ``--site-id`` once the highest allowed id is taken, on every
backend."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_harness import BACKENDS, Cli, database_for

from uid2_operator.domain.authorization import AUDIT_TARGET_TYPES
from uid2_operator.domain.participants import MAX_SITE_ID

pytestmark = pytest.mark.functional


@pytest.fixture(params=BACKENDS)
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cli]:
    with database_for(request.param, tmp_path) as db:
        runner = Cli(db)
        result = runner("init", "--json")
        assert result.exit_code == 0, result.output
        yield runner


def ok(cli: Cli, *args: str) -> Any:
    result = cli(*args, "--json")
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


def refused(cli: Cli, *args: str) -> str:
    result = cli(*args, "--json")
    assert result.exit_code == 2, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.output
    message: str = json.loads(result.stdout)["error"]["message"]
    return message


_NUMBERS = itertools.count(1)  # participant names are unique


def _participant(cli: Cli, *site_id: str) -> int:
    args = ["participant", "create", "--name", f"P {next(_NUMBERS)}", "--type", "publisher"]
    created = ok(
        cli, *args, "--roles", "GENERATOR,SHARER", *(("--site-id", *site_id) if site_id else ())
    )
    site: int = created["site_id"]
    return site


def test_the_command_line_lists_the_admin_token_events(cli: Cli) -> None:
    ok(cli, "admin-token", "create", "--name", "ops", "--roles", "READ_ONLY")
    about_tokens = ok(cli, "audit", "list", "--target-type", "admin_token")
    assert [e["action"] for e in about_tokens] == ["admin_token.create", "admin_token.create"]
    assert [e["action"] for e in ok(cli, "audit", "list", "--action", "admin_token.create")] == [
        "admin_token.create",
        "admin_token.create",
    ]


def test_site_id_and_target_type_narrow_the_events(cli: Cli) -> None:
    for site in ("3", "4"):
        _participant(cli, site)
        ok(cli, "sharing", "set", "--site-id", site, "--owner-only")
    key = ok(cli, "key", "create", "--site-id", "4", "--name", "web", "--roles", "GENERATOR")
    # Site 3's keyset has id 4, the other site's id.
    assert ok(cli, "sharing", "show", "--site-id", "3")["keyset_id"] == 4

    about_four = ok(cli, "audit", "list", "--site-id", "4")
    assert {e["site_id"] for e in about_four} == {4}
    kinds = {(e["action"], e["target_type"]) for e in about_four}
    assert {("participant.create", "participant"), ("keyset.sharing", "keyset")} <= kinds
    assert ("key.create", "api_key") in kinds

    keys = ok(cli, "audit", "list", "--site-id", "4", "--target-type", "api_key")
    assert [(e["action"], e["target_id"]) for e in keys] == [("key.create", key["key_id"])]
    keyset_four = ok(cli, "audit", "list", "--target", "4", "--target-type", "keyset")
    assert keyset_four
    assert {e["site_id"] for e in keyset_four} == {3}
    participant_four = ok(cli, "audit", "list", "--target", "4", "--target-type", "participant")
    assert [e["action"] for e in participant_four] == ["participant.create"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--target-type", "site"], AUDIT_TARGET_TYPES[0]),
        (["--target-type", "API_KEY"], AUDIT_TARGET_TYPES[-1]),
        (["--site-id", "abc"], "'abc' is not a valid integer"),
        (["--site-id", "٤"], "is not a valid integer"),
        (["--site-id", str(2**31)], "--site-id"),
    ],
)
def test_bad_audit_filters_are_refused(cli: Cli, args: list[str], says: str) -> None:
    assert says in refused(cli, "audit", "list", *args)


def test_a_site_id_is_found_after_the_highest_allowed_one_is_taken(cli: Cli) -> None:
    assert _participant(cli, str(MAX_SITE_ID)) == MAX_SITE_ID
    assert _participant(cli) == 3
    assert _participant(cli, "5") == 5
    assert _participant(cli) == 4
    assert _participant(cli) == 6
    listed = [p["site_id"] for p in ok(cli, "participant", "list")]
    assert listed == [3, 4, 5, 6, MAX_SITE_ID]
