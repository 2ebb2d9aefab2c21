"""A logout answered ``{"optout":"OK"}`` holds across snapshot reloads that come before its write.

A real ``serve`` with one worker over SQLite. The store refuses to write opt-outs (a trigger on
its opt-out table) while a logout is answered, so the worker's write of it keeps failing; then
another change commits (an API key created with the CLI) and the worker reloads its snapshot,
which the new key authenticating shows. The worker must still answer ``optout`` for the identity
it logged out, with the opt-out not yet in the store. Once the store takes writes again, the
opt-out is written, and after a further reload the worker still answers ``optout`` (now from
the store's records).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from cli_harness import Database, database_for
from serve_harness import Credential, Served, cli, create_key, poll, prepare, served

pytestmark = pytest.mark.functional

LOGOUT = "/v2/token/logout"
GENERATE = "/v2/token/generate"
ENV = {"UID2_POLL_INTERVAL_S": "0.2", "UID2_FLUSH_INTERVAL_S": "0.3"}


def _stored_optouts(db_path: Path) -> int:
    with sqlite3.connect(db_path) as db:
        (count,) = db.execute("SELECT count(*) FROM optouts").fetchone()
    return int(count)


def _generated(server: Served, email: str, cred: Credential) -> str:
    """The status of a generate with the opt-out check (``success`` or ``optout``)."""
    reply, opened = server.call(GENERATE, {"email": email, "optout_check": 1}, cred)
    assert opened is not None, (reply.status_code, reply.text)
    return str(opened["status"])


def _reloaded_past(server: Served, database: Database, site_id: int, name: str) -> None:
    """Commit a change (a new API key) and wait until the worker serves a snapshot with it."""
    fresh = create_key(database, site_id, name)
    poll(
        lambda: (
            server.call(GENERATE, {"email": "someone@example.com"}, fresh)[0].status_code == 200
            or None
        )
    )


def test_the_worker_keeps_answering_optout_across_reloads_before_the_write(
    tmp_path: Path,
) -> None:
    with database_for("sqlite", tmp_path) as database:
        prepared = prepare(database)
        db_path = database.sqlite_path
        site = cli(database, "participant", "create", "--name", "Opt-out service",
                   "--type", "data_provider", "--roles", "OPTOUT")["site_id"]  # fmt: skip
        optout_key = create_key(database, int(site), "logout", roles="OPTOUT")
        email = "logged.out@example.com"
        with served(database, workers=1, env=ENV) as server:
            assert _generated(server, email, prepared.key) == "success"
            before = _stored_optouts(db_path)
            with sqlite3.connect(db_path) as db:
                db.execute(
                    "CREATE TRIGGER refuse_optouts BEFORE INSERT ON optouts "
                    "BEGIN SELECT RAISE(ABORT, 'opt-outs refused'); END"
                )
            reply, opened = server.call(LOGOUT, {"email": email}, optout_key)
            assert opened is not None, (reply.status_code, reply.text, server.lines)
            assert opened["body"] == {"optout": "OK"}
            assert _generated(server, email, prepared.key) == "optout"

            _reloaded_past(server, database, prepared.site_id, "first change")
            assert _stored_optouts(db_path) == before  # not written yet
            assert _generated(server, email, prepared.key) == "optout"

            with sqlite3.connect(db_path) as db:
                db.execute("DROP TRIGGER refuse_optouts")
            poll(lambda: _stored_optouts(db_path) == before + 1 or None)
            _reloaded_past(server, database, prepared.site_id, "second change")
            assert _generated(server, email, prepared.key) == "optout"
