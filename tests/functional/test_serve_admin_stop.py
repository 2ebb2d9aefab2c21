"""An admin request under way when serve is told to stop is answered: serve waits for the admin
API's requests (at most its graceful-shutdown bound) before it closes the store under them."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from cli_harness import database_for
from serve_harness import prepare, served


def test_an_admin_request_under_way_at_stop_is_answered(tmp_path: Path) -> None:
    with database_for("sqlite", tmp_path) as database:
        prepared = prepare(database)
        with served(database, workers=1) as server:
            # The request waits for the store's write lock, held here, across the stop.
            lock = sqlite3.connect(database.sqlite_path, timeout=30, isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")
            outcome: dict[str, Any] = {}

            def create_key() -> None:
                try:
                    reply = server.admin(
                        "POST",
                        "/keys",
                        prepared.admin_token,
                        {"site_id": prepared.site_id, "name": "late", "roles": ["GENERATOR"]},
                    )
                    outcome["status"] = reply.status_code
                except Exception as exc:  # what the client saw is the result
                    outcome["error"] = repr(exc)

            caller = threading.Thread(target=create_key)
            caller.start()
            time.sleep(0.5)
            server.process.send_signal(signal.SIGTERM)
            time.sleep(1.5)  # well inside the bound
            lock.execute("ROLLBACK")
            lock.close()
            server.process.wait(30)
            caller.join(30)
    assert outcome == {"status": 201}, outcome
