"""``key list`` and ``participant list`` a page at a time (``--limit``, ``--after``), on both
backends: the pages give the whole listing once, in order; the JSON stays an array (what
automation already reads), and in text a line on standard error names the next ``--after``,
printed only while more follow. Bounds are refused with a clear message and no traceback."""

from __future__ import annotations

import json
from typing import Any

from cli_harness import Cli, Database


def _json(cli: Cli, *args: str) -> Any:
    result = cli(*args, "--json")
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    assert "follow" not in result.stderr  # JSON is the whole answer
    return json.loads(result.stdout)


def _seed(cli: Cli) -> None:
    assert cli("init").exit_code == 0
    for site in (101, 102, 103):
        _json(cli, "participant", "create", "--name", f"P{site}", "--type", "publisher",
              "--site-id", str(site), "--roles", "GENERATOR")  # fmt: skip
        for n in range(2):
            _json(cli, "key", "create", "--site-id", str(site), "--name", f"k{n}",
                  "--roles", "GENERATOR")  # fmt: skip


def test_cli_pages_give_the_whole_listing(database: Database) -> None:
    cli = Cli(database)
    _seed(cli)
    whole = _json(cli, "key", "list")
    pages, after = [], None
    while True:
        more = () if after is None else ("--after", after)
        page = _json(cli, "key", "list", "--limit", "4", *more)
        pages.append(page)
        if len(page) < 4:
            break
        after = page[-1]["key_id"]
    assert [k for page in pages for k in page] == whole
    assert [len(page) for page in pages] == [4, 2]

    first = cli("key", "list", "--limit", "4")
    assert first.exit_code == 0
    assert first.stderr.strip() == f"More keys follow: --after {whole[3]['key_id']}"
    last = cli("key", "list", "--limit", "4", "--after", whole[3]["key_id"])
    assert last.exit_code == 0
    assert last.stderr == ""
    assert whole[4]["key_id"] in last.stdout

    sites = [p["site_id"] for p in _json(cli, "participant", "list", "--limit", "2")]
    assert sites == [101, 102]
    rest = _json(cli, "participant", "list", "--after", "102")
    assert [p["site_id"] for p in rest] == [103]
    text = cli("participant", "list", "--limit", "2")
    assert text.stderr.strip() == "More participants follow: --after 102"


def test_cli_page_bounds_are_refused_cleanly(database: Database) -> None:
    cli = Cli(database)
    _seed(cli)
    for args in (
        ("key", "list", "--limit", "0"),
        ("key", "list", "--limit", "1001"),
        ("key", "list", "--after", "UID2-C-L-999-abcdef"),
        ("participant", "list", "--limit", "0"),
        ("participant", "list", "--after", "-5"),
    ):
        result = cli(*args)
        assert result.exit_code != 0, args
        assert "Traceback" not in result.stdout + result.stderr
        assert (
            ("limit" in result.stderr)
            or ("after" in result.stderr)
            or ("No API key" in result.stderr)
        ), (args, result.stderr)
