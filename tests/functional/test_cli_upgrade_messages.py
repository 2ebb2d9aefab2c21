"""Upgrading from an earlier version, through the command line, on SQLite and PostgreSQL.

A database at an older schema revision is refused with the command that upgrades it; after
``db upgrade`` an audit chain the earlier version wrote (with no recorded head) verifies intact;
and an audited command against a chain an earlier version appended to behind the recorded head
fails with ``audit_chain_ahead`` and its remedy, not an internal error (the admin API answers
the same refusal).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from admin_api_harness import open_admin_env, sqlite_settings
from alembic import command
from cli_harness import Cli, Database, settings_of, state_of
from serve_harness import UID2_OPERATOR, clean_env
from sqlalchemy import delete, select, text, update

from uid2_operator.storage import schema as t
from uid2_operator.storage.engines import make_engine
from uid2_operator.storage.migrate import _config, current_revision

HEAD_NAMES = (t.AUDIT_HEAD_SEQ, *t.AUDIT_HEAD_HASH)
UPGRADE = "uid2-operator db upgrade"


def _ok(cli: Cli, *args: str) -> Any:
    result = cli(*args, "--json")
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


def _refused(cli: Cli, *args: str) -> dict[str, str]:
    result = cli(*args, "--json")
    assert result.exit_code == 1, (args, result.stdout, result.stderr)
    assert "internal error" not in result.stderr
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


def _forget_head(db: Database) -> None:
    engine, _ = make_engine(settings_of(db).store_url)
    try:
        with engine.begin() as conn:
            conn.execute(delete(t.store_meta).where(t.store_meta.c.name.in_(HEAD_NAMES)))
    finally:
        engine.dispose()


def _as_an_earlier_version_left_it(db: Database) -> None:
    """Schema revision 0003 and an audit chain with no recorded head."""
    engine, flavour = make_engine(settings_of(db).store_url)
    try:
        with engine.connect() as conn:
            flavour.begin_migration(conn)
            conn.execute(delete(t.store_meta).where(t.store_meta.c.name.in_(HEAD_NAMES)))
            command.downgrade(_config(conn), "0003")
            conn.commit()
    finally:
        engine.dispose()


def test_a_store_an_earlier_version_wrote_is_intact_after_db_upgrade(database: Database) -> None:
    cli = Cli(database)
    _ok(cli, "init")
    _create_participant(cli, "Pub")
    _as_an_earlier_version_left_it(database)

    error = _refused(cli, "participant", "list")
    assert error["code"] == "store_schema_out_of_date"
    assert "schema revision 0003" in error["message"]
    assert "stop every process of the earlier version" in error["message"]
    assert f"`{UPGRADE}`" in error["message"]

    _ok(cli, "db", "upgrade")
    verdict = _ok(cli, "audit", "verify")
    assert (verdict["ok"], verdict["reason"]) == (True, None)
    assert verdict["head_seq"] >= 1
    _create_participant(cli, "Next")  # the next audited change builds on the recorded head
    assert _ok(cli, "audit", "verify")["ok"] is True


def test_init_refuses_a_database_an_earlier_version_set_up_and_leaves_it_as_it_was(
    database: Database,
) -> None:
    """``init`` checks the database's environment and keyring before it writes, which it cannot
    read at an earlier schema: upgrading it there would pull the schema from under that
    version's running processes even when the checks then refuse the run."""
    cli = Cli(database)
    _ok(cli, "init")
    _create_participant(cli, "Pub")
    _as_an_earlier_version_left_it(database)

    error = _refused(cli, "init")
    assert error["code"] == "store_schema_out_of_date"
    assert error["message"] == (
        "The database is at schema revision 0003, set up by an earlier version of "
        "uid2-operator, and init does not upgrade it: stop every process of the earlier "
        f"version on this database, then run `{UPGRADE}`"
    )
    assert current_revision(settings_of(database).store_url) == "0003"  # left as it was

    _ok(cli, "db", "upgrade")
    _ok(cli, "init")  # at this version's schema: a rerun creates only what is missing
    assert [p["name"] for p in _ok(cli, "participant", "list")] == ["Pub"]


def test_an_upgrade_statement_the_database_refuses_is_a_store_error_and_changes_nothing(
    database: Database,
) -> None:
    """A table in the way of a revision (made by hand, say): the database refuses the statement
    that creates it, on SQLite as on PostgreSQL; not an unavailable store, and nothing moves."""
    cli = Cli(database)
    _ok(cli, "init")
    _create_participant(cli, "Pub")
    _as_an_earlier_version_left_it(database)
    engine, _flavour = make_engine(settings_of(database).store_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE change_marks (id INTEGER)"))  # made by revision 0008
    finally:
        engine.dispose()

    error = _refused(cli, "db", "upgrade")
    assert error["code"] == "store_error"
    already = {
        "sqlite": "table change_marks already exists",
        "postgresql": 'relation "change_marks" already exists',
    }[database.backend]
    assert error["message"] == f"The database refused the schema upgrade: {already}"
    assert current_revision(settings_of(database).store_url) == "0003"


def test_verify_of_a_chain_without_a_recorded_head_names_db_upgrade(database: Database) -> None:
    cli = Cli(database)
    _ok(cli, "init")
    _create_participant(cli, "Pub")
    _forget_head(database)

    result = cli("audit", "verify", "--json")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    verdict = json.loads(result.stdout)
    assert verdict["ok"] is False
    assert verdict["reason"].startswith("no chain head is recorded, yet the chain reaches seq ")
    assert f"run `{UPGRADE}`" in verdict["reason"]

    _ok(cli, "db", "upgrade")
    assert _ok(cli, "audit", "verify")["ok"] is True


def test_an_audited_command_refuses_a_chain_past_its_recorded_head(database: Database) -> None:
    cli = Cli(database)
    _ok(cli, "init")
    _create_participant(cli, "First")
    kept = _head_rows(database)
    _create_participant(cli, "Second")
    _set_head_rows(database, kept)  # as an earlier version appends: the head stays behind
    behind = kept[t.AUDIT_HEAD_SEQ]
    before = state_of(database)
    last_seq = before[2]  # seqs run from 1 without a gap
    assert last_seq > behind

    error = _refused(cli, "participant", "create", "--name", "Third", "--type", "publisher")
    assert error["code"] == "audit_chain_ahead"
    assert error["message"] == (
        f"Audit rows exist past the recorded head (seq {last_seq} > {behind}); a process of an "
        "earlier version may be writing to this database; stop it, then run "
        f"`uid2-operator audit verify`, and `uid2-operator audit adopt --through {last_seq}` to "
        "keep its rows"
    )
    assert state_of(database) == before

    plain = cli("participant", "create", "--name", "Third", "--type", "publisher")
    assert plain.exit_code == 1
    assert plain.stderr == f"Error: {error['message']}\n"
    assert state_of(database) == before


def test_the_admin_api_answers_the_refusal_with_its_code_and_message(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path / "data")
    database = Database("sqlite", settings.data_dir, None)
    with open_admin_env(settings) as env:
        assert env.call("POST", "/participants", json={"name": "A", "type": "dsp"}).is_success
        kept = _head_rows(database)
        assert env.call("POST", "/participants", json={"name": "B", "type": "dsp"}).is_success
        _set_head_rows(database, kept)
        mark = env.mark()

        response = env.call("POST", "/participants", json={"name": "C", "type": "dsp"})

        assert response.status_code == 500
        assert response.json() == {
            "error": {
                "code": "audit_chain_ahead",
                "message": (
                    f"Audit rows exist past the recorded head (seq {mark.audit_seq} > "
                    f"{kept[t.AUDIT_HEAD_SEQ]}); a process of an earlier version may be writing "
                    "to this database; stop it, then run `uid2-operator audit verify`, and "
                    f"`uid2-operator audit adopt --through {mark.audit_seq}` to keep its rows"
                ),
            }
        }
        assert env.mark() == mark


def test_serve_init_if_new_refuses_an_earlier_schema_instead_of_migrating_it(
    database: Database,
) -> None:
    """``--init-if-new`` initialises what is new; a database an earlier version initialised is
    not: migrating it there would pull the schema from under that version's running processes."""
    cli = Cli(database)
    _ok(cli, "init")
    _create_participant(cli, "Pub")
    _as_an_earlier_version_left_it(database)

    process = subprocess.run(  # noqa: S603 (our own command)
        [UID2_OPERATOR, *database.cli_args(), "serve", "--port", "0", "--admin-port", "0",
         "--init-if-new"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )  # fmt: skip
    assert process.returncode == 1, (process.stdout, process.stderr)
    assert f"`{UPGRADE}`" in process.stderr
    assert "Next steps" not in process.stdout + process.stderr
    assert current_revision(settings_of(database).store_url) == "0003"  # left as it was
