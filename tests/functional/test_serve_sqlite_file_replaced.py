"""The SQLite file deleted or replaced under a running ``serve``: noticed, and nothing written.

A real ``uid2-operator serve --workers 2`` runs on the embedded SQLite file. When the file is
deleted, or a copy is moved over it, every worker's health check turns non-200 within a poll or
two and the admin API refuses writes (503) instead of confirming a participant or a key that
exists nowhere; no new file appears where the deleted one was, and a replacement is not written.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
from cli_harness import Database
from serve_harness import Prepared, Served, poll, prepare, served

pytestmark = pytest.mark.functional

WORKERS = 2
POLL_S = 0.2
ENV = {"UID2_POLL_INTERVAL_S": str(POLL_S)}
MARGIN_S = 5.0  # process scheduling on a loaded machine: not a performance bound
IN_A_ROW = 10  # consecutive answers on fresh connections: both workers answer some of them


def _healthy(server: Served) -> bool:
    return server.request("GET", "/ops/healthcheck").status_code == 200


def _noticed_within_a_poll(server: Served) -> None:
    started = time.monotonic()
    noticed = poll(lambda: all(not _healthy(server) for _ in range(IN_A_ROW)), POLL_S + MARGIN_S)
    assert noticed, "\n".join(server.lines)
    assert time.monotonic() - started < POLL_S + MARGIN_S
    reply = server.request("GET", "/ops/healthcheck")
    assert reply.status_code == 503
    assert "store unreachable" in reply.text


def _admin_writes_refused(server: Served, prepared: Prepared) -> None:
    created = server.admin(
        "POST",
        "/participants",
        prepared.admin_token,
        {"name": "After the file went", "type": "publisher", "roles": "GENERATOR"},
    )
    assert created.status_code == 503, created.text
    issued = server.admin(
        "POST",
        "/keys",
        prepared.admin_token,
        {"site_id": prepared.site_id, "name": "after the file went", "roles": "GENERATOR"},
    )
    assert issued.status_code == 503, issued.text
    assert "secret" not in issued.text


def _serving(database: Database) -> tuple[Prepared, Path]:
    prepared = prepare(database)
    return prepared, database.sqlite_path


def test_a_deleted_file_is_noticed_and_not_recreated(tmp_path: Path) -> None:
    database = Database("sqlite", tmp_path / "data", None)
    prepared, path = _serving(database)
    with served(database, workers=WORKERS, env=ENV) as server:
        assert _healthy(server)
        path.unlink()
        _noticed_within_a_poll(server)
        _admin_writes_refused(server, prepared)
        assert not path.exists()
    assert not path.exists()


def test_a_replaced_file_is_noticed_and_left_as_it_is(tmp_path: Path) -> None:
    database = Database("sqlite", tmp_path / "data", None)
    prepared, path = _serving(database)
    backup = path.with_name("backup.db")
    with served(database, workers=WORKERS, env=ENV) as server:
        assert _healthy(server)
        with closing(sqlite3.connect(path)) as source, closing(sqlite3.connect(backup)) as copy:
            source.backup(copy)
        os.replace(backup, path)
        replacement = hashlib.sha256(path.read_bytes()).hexdigest()
        _noticed_within_a_poll(server)
        _admin_writes_refused(server, prepared)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == replacement
