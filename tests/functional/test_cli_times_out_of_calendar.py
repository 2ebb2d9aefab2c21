"""A time no calendar date holds, in a row changed outside uid2-operator, is shown as its number.

The store reads any 64-bit number back as a time; the text listings print times as dates. A
listing is what an operator reads to look into a changed trail, so one such row must not make the
whole listing an internal error: it shows the number, the other rows as dates, and ``--json``
gives the number as it always does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_harness import Cli, database_for, edit_outside

from uid2_operator.cli.output import when

PAST_YEAR_9999 = 253_402_300_800_000  # 10000-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("ms", "shown"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (PAST_YEAR_9999 - 1000, "9999-12-31T23:59:59Z"),
        (PAST_YEAR_9999, f"{PAST_YEAR_9999} ms since the epoch"),
        (-(2**63), f"{-(2**63)} ms since the epoch"),
        (2**63 - 1, f"{2**63 - 1} ms since the epoch"),
        (None, "-"),
    ],
)
def test_when_shows_a_date_or_else_the_number(ms: int | None, shown: str) -> None:
    assert when(ms) == shown


@pytest.mark.parametrize(
    ("listing", "table", "column"),
    [
        (["audit", "list"], "audit_events", "at_ms"),
        (["admin-token", "list"], "admin_tokens", "created_at_ms"),
    ],
)
def test_a_listing_shows_every_row_when_one_holds_a_time_past_the_calendar(
    tmp_path: Path, listing: list[str], table: str, column: str
) -> None:
    with database_for("sqlite", tmp_path) as database:
        cli = Cli(database)
        assert cli("init", "--json").exit_code == 0
        created = cli("participant", "create", "--name", "First", "--type", "publisher")
        assert created.exit_code == 0
        first = f"(SELECT min(rowid) FROM {table})"  # noqa: S608 (fixed names)
        edit_outside(
            database,
            f"UPDATE {table} SET {column} = ? WHERE rowid = {first}",  # noqa: S608 (fixed names)
            (PAST_YEAR_9999,),
        )

        text = cli(*listing)
        assert text.exit_code == 0, (text.stdout, text.stderr)
        assert f"{PAST_YEAR_9999} ms since the epoch" in text.stdout
        assert "internal error" not in text.stderr
        document = json.loads(cli(*listing, "--json").stdout)
        assert str(PAST_YEAR_9999) in json.dumps(document)
