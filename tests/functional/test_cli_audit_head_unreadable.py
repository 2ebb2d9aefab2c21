"""A recorded audit chain head that is not what uid2-operator writes (edited outside it: text, a
fraction, a number past 64 bits, in SQLite's untyped column) is a verdict of ``audit verify``
naming the head, and refuses every audited command with an error that says so: never an
internal error, and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_harness import Cli, database_for, edit_outside, state_of

from uid2_operator.storage import schema as t


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (t.AUDIT_HEAD_SEQ, "abc"),
        (t.AUDIT_HEAD_SEQ, 2.5),
        (t.AUDIT_HEAD_SEQ, -1),
        (t.AUDIT_HEAD_HASH[1], "99999999999999999999999"),
        (t.AUDIT_HEAD_HASH[0], b"\x01"),
    ],
    ids=["seq-text", "seq-fraction", "seq-negative", "hash-word-past-64-bits", "hash-word-bytes"],
)
def test_an_unreadable_head_is_a_verdict_and_refuses_audited_writes(
    tmp_path: Path, name: str, value: object
) -> None:
    with database_for("sqlite", tmp_path) as database:
        cli = Cli(database)
        assert cli("init", "--json").exit_code == 0
        created = cli("participant", "create", "--name", "First", "--type", "publisher")
        assert created.exit_code == 0
        edit_outside(database, "UPDATE store_meta SET value = ? WHERE name = ?", (value, name))
        before = state_of(database)

        verdict = cli("audit", "verify", "--json")
        assert verdict.exit_code == 1, (verdict.stdout, verdict.stderr)
        report = json.loads(verdict.stdout)
        assert report["ok"] is False
        assert report["reason"] == (
            "the recorded head cannot be read: it is not what uid2-operator writes"
        )
        assert report["first_bad_seq"] == report["head_seq"] == before[2]

        refused = cli("participant", "create", "--name", "Second", "--type", "publisher", "--json")
        assert refused.exit_code == 1, (refused.stdout, refused.stderr)
        error = json.loads(refused.stdout)["error"]
        assert error["code"] == "audit_head_unreadable"
        assert "`uid2-operator audit verify`" in error["message"]
        assert state_of(database) == before
