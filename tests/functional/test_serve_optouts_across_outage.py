"""Logouts confirmed while the store cannot take writes survive a stop of ``serve``.

A real ``serve`` with two workers over SQLite: another connection holds the store's write lock
(``BEGIN EXCLUSIVE``) while logouts are answered ``{"optout": "OK"}``, and serve is stopped with
SIGTERM before the lock is released. Each worker's last flush gives up within its budget and
saves the opt-outs it could not write to the data directory; the next serve writes them, each
once, and removes the files. Nothing logged on the way carries a traceback or an identity.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest
from cli_harness import database_for
from serve_harness import Credential, cli, create_key, poll, prepare, served

from uid2_operator.services.write_behind import PENDING_OPTOUTS_DIR, read_saved
from uid2_operator.storage import open_store

pytestmark = pytest.mark.functional

LOGOUT = "/v2/token/logout"
GENERATE = "/v2/token/generate"
LOGOUTS = 30
FLUSH_EVERY = {"UID2_FLUSH_INTERVAL_S": "0.3"}


def test_logouts_confirmed_while_the_store_is_locked_are_written_after_a_restart(
    tmp_path: Path,
) -> None:
    with database_for("sqlite", tmp_path) as database:
        prepared = prepare(database)
        site = cli(database, "participant", "create", "--name", "Opt-out service",
                   "--type", "data_provider", "--roles", "OPTOUT")["site_id"]  # fmt: skip
        optout_key: Credential = create_key(database, int(site), "logout", roles="OPTOUT")
        emails = [f"leaving-{n}@example.com" for n in range(LOGOUTS)]
        pending = database.data_dir / PENDING_OPTOUTS_DIR

        with served(database, workers=2, env=FLUSH_EVERY) as server:
            lock = sqlite3.connect(database.sqlite_path, timeout=30, isolation_level=None)
            lock.execute("BEGIN EXCLUSIVE")
            try:
                for email in emails:
                    reply, body = server.call(LOGOUT, {"email": email}, optout_key)
                    assert reply.status_code == 200, reply.text
                    assert body == {"status": "success", "body": {"optout": "OK"}}
                time.sleep(1.0)  # the workers' flushes now wait for the lock
                stopping = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
                server.process.wait(timeout=60)
                took = time.monotonic() - stopping
            finally:
                lock.execute("ROLLBACK")
                lock.close()
        output = "\n".join(server.lines)

        saved = sorted(pending.glob("*.json"))
        assert saved, output
        assert sum(len(read_saved(path)) for path in saved) == LOGOUTS, output
        assert output.count("opt-outs not written to the store before stopping were saved to")
        assert took < 10, output  # no worker waited to be killed
        assert "Traceback" not in output
        assert not [email for email in emails if email in output]

        with served(database, workers=2, env=FLUSH_EVERY) as server:
            assert poll(lambda: not list(pending.iterdir()), timeout_s=30), server.lines

            def refused() -> bool:
                answers = [server.call(GENERATE, {"email": e}, prepared.key)[1] for e in emails]
                return all(a is not None and a["status"] == "optout" for a in answers)

            assert poll(refused, timeout_s=30)

    store = open_store(f"sqlite:///{database.sqlite_path}")
    try:
        with store.read() as tx:
            events = tx.audit.list_events(action="optout.add")
            optouts = tx.optouts.count()
    finally:
        store.close()
    written = [e.target_id for e in events if e.actor == "operator"]
    assert len(written) == len(set(written)) == LOGOUTS  # each confirmed opt-out, once
    assert optouts >= LOGOUTS
