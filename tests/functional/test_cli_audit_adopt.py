"""``uid2-operator audit adopt``, through the command line, on SQLite and PostgreSQL.

An earlier version appends audit rows without moving the recorded head; from then on every audited
command is refused (``audit_chain_ahead``). ``audit adopt --through <last seq>`` checks the rows
past the head, moves the head over them and records its own ``audit.adopt`` event: ``audit
verify`` reports the chain intact again and audited commands work. Every refusal changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

from cli_harness import Cli, Database, settings_of, state_of
from sqlalchemy import select, update

from uid2_operator.storage import schema as t
from uid2_operator.storage.engines import make_engine

HEAD_NAMES = (t.AUDIT_HEAD_SEQ, *t.AUDIT_HEAD_HASH)
JSON_FIELDS = {"adopted_from_seq", "adopted_through_seq", "adopted", "head_seq", "head_hash"}


def _ok(cli: Cli, *args: str) -> Any:
    result = cli(*args, "--json")
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


def _refused(cli: Cli, *args: str, exit_code: int = 1) -> dict[str, str]:
    result = cli(*args, "--json")
    assert result.exit_code == exit_code, (args, result.stdout, result.stderr)
    error: dict[str, str] = json.loads(result.stdout)["error"]
    assert result.stderr == f"Error: {error['message']}\n"
    return error


def _create_participant(cli: Cli, name: str) -> None:
    _ok(cli, "participant", "create", "--name", name, "--type", "publisher")


def _head_rows(db: Database) -> dict[str, int]:
    engine, _ = make_engine(settings_of(db).store_url)
    m = t.store_meta.c
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(m.name, m.value).where(m.name.in_(HEAD_NAMES))).all()
    finally:
        engine.dispose()
    return {row.name: int(row.value) for row in rows}


def _set_head_rows(db: Database, rows: dict[str, int]) -> None:
    engine, _ = make_engine(settings_of(db).store_url)
    m = t.store_meta.c
    try:
        with engine.begin() as conn:
            for name, value in rows.items():
                conn.execute(update(t.store_meta).where(m.name == name).values(value=value))
    finally:
        engine.dispose()


def _edit_audit_row(db: Database, seq: int) -> None:
    engine, _ = make_engine(settings_of(db).store_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                update(t.audit_events)
                .where(t.audit_events.c.seq == seq)
                .values(actor="cli:mallory")
            )
    finally:
        engine.dispose()


def _rows_past_the_head(cli: Cli) -> tuple[int, int]:
    """Two participants created as an earlier version creates them: rows appended, the recorded
    head left behind. Returns (the recorded head's seq, the last row's seq)."""
    _ok(cli, "init")
    _create_participant(cli, "First")
    kept = _head_rows(cli.database)
    _create_participant(cli, "Second")
    _create_participant(cli, "Third")
    _set_head_rows(cli.database, kept)
    behind, last = kept[t.AUDIT_HEAD_SEQ], state_of(cli.database)[2]
    assert last >= behind + 2
    return behind, last


def test_adopt_makes_the_chain_intact_and_audited_commands_work_again(database: Database) -> None:
    cli = Cli(database)
    behind, last = _rows_past_the_head(cli)
    refusal = _refused(cli, "participant", "create", "--name", "Fourth", "--type", "publisher")
    assert refusal["code"] == "audit_chain_ahead"
    assert f"`uid2-operator audit adopt --through {last}`" in refusal["message"]
    broken = cli("audit", "verify", "--json")
    assert broken.exit_code == 1
    assert json.loads(broken.stdout)["reason"] == (
        f"the chain goes on past the recorded head (seq {behind}) to seq {last}"
    )
    assert json.loads(broken.stdout)["head_seq"] == last  # what --through names

    adopted = _ok(cli, "audit", "adopt", "--through", str(last))

    assert set(adopted) == JSON_FIELDS
    assert (
        adopted["adopted_from_seq"],
        adopted["adopted_through_seq"],
        adopted["adopted"],
        adopted["head_seq"],
    ) == (behind + 1, last, last - behind, last + 1)
    verdict = _ok(cli, "audit", "verify")
    assert (verdict["ok"], verdict["head_seq"], verdict["head_hash"]) == (
        True,
        last + 1,
        adopted["head_hash"],
    )
    (event,) = _ok(cli, "audit", "list", "--since", str(last))
    assert (event["seq"], event["action"], event["target_type"], event["target_id"]) == (
        last + 1,
        "audit.adopt",
        "audit_trail",
        str(last),
    )
    assert event["actor"].startswith("cli:")
    assert event["before"] == {"head_seq": behind}
    assert event["after"] == {"first_seq": behind + 1, "last_seq": last, "count": last - behind}
    assert event["hash"] == adopted["head_hash"]

    _create_participant(cli, "Fourth")
    names = [p["name"] for p in _ok(cli, "participant", "list")]
    assert names == ["First", "Second", "Third", "Fourth"]
    assert _ok(cli, "audit", "verify")["ok"] is True


def test_adopt_prints_what_it_adopted(database: Database) -> None:
    cli = Cli(database)
    behind, last = _rows_past_the_head(cli)

    result = cli("audit", "adopt", "--through", str(last))

    assert result.exit_code == 0, (result.stdout, result.stderr)
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert lines[:4] == [
        f"adopted from seq {behind + 1}",
        f"adopted through seq {last}",
        f"rows adopted {last - behind}",
        f"head seq {last + 1}",
    ]
    assert lines[4].startswith("head hash ")


def test_a_row_past_the_head_that_does_not_link_is_refused(database: Database) -> None:
    cli = Cli(database)
    behind, last = _rows_past_the_head(cli)
    _edit_audit_row(database, behind + 1)
    before = state_of(database), _head_rows(database)

    error = _refused(cli, "audit", "adopt", "--through", str(last))

    assert error == {
        "code": "audit_chain_broken",
        "message": (
            f"The audit rows past the recorded head (seq {behind}) do not link at seq "
            f"{behind + 1}: hash does not match the event's content; nothing was adopted"
        ),
    }
    assert (state_of(database), _head_rows(database)) == before


def test_through_other_than_the_last_row_is_refused(database: Database) -> None:
    cli = Cli(database)
    behind, last = _rows_past_the_head(cli)
    before = state_of(database), _head_rows(database)

    error = _refused(cli, "audit", "adopt", "--through", str(last - 1), exit_code=2)

    assert error["code"] == "invalid_input"
    assert error["message"] == (
        f"Seq {last - 1} is not the audit chain's last row: rows run past the recorded head "
        f"(seq {behind}) to seq {last}; adopt through seq {last}, once every process of the "
        "earlier version is stopped"
    )
    assert (state_of(database), _head_rows(database)) == before


def test_a_chain_that_ends_at_its_head_has_nothing_to_adopt(database: Database) -> None:
    cli = Cli(database)
    _ok(cli, "init")
    _create_participant(cli, "First")
    before = state_of(database), _head_rows(database)
    head = before[1][t.AUDIT_HEAD_SEQ]

    error = _refused(cli, "audit", "adopt", "--through", str(head))

    assert error == {
        "code": "invalid_transition",
        "message": f"Nothing to adopt: no audit rows exist past the recorded head (seq {head})",
    }
    assert (state_of(database), _head_rows(database)) == before


def test_through_is_required(database: Database) -> None:
    cli = Cli(database)
    _ok(cli, "init")

    error = _refused(cli, "audit", "adopt", exit_code=2)

    assert error["code"] == "usage"
    assert "--through" in error["message"]
