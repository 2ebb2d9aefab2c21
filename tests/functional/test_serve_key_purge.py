"""``serve`` deletes keys long past their expiry on its rotation schedule, and refuses a retention
shorter than the tokens that may still need them.

The data directory is made as ``init`` would have made it 100 days ago (the material's clock held
back), then ``init`` runs for real: the old keys have expired 70 days ago, their successors are
active now.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from cli_harness import Database
from serve_harness import UID2_OPERATOR, clean_env, cli, create_key, poll, served

from uid2_operator.bootstrap import ensure_keyring, open_services, upgrade_database
from uid2_operator.clock import FixedClock, SystemClock
from uid2_operator.settings import Settings
from uid2_operator.storage import open_store

pytestmark = pytest.mark.functional

DAY_MS = 86_400_000


def _material_made_days_ago(database: Database, days: int) -> set[int]:
    settings = Settings.from_env({}, data_dir=str(database.data_dir))
    ensure_keyring(settings)
    upgrade_database(settings)
    opened = open_services(settings, clock=FixedClock(SystemClock().now_ms() - days * DAY_MS))
    try:
        return {k.key_id for k in opened.material.initialise().keys_created}
    finally:
        opened.close()


def _stored_key_ids(database: Database) -> set[int]:
    store = open_store(f"sqlite:///{database.sqlite_path}")
    try:
        with store.read() as rx:
            return {k.id for k in rx.encryption_keys.list_all()}
    finally:
        store.close()


def test_serve_purges_old_keys_on_its_schedule_and_stops_publishing_them(tmp_path: Path) -> None:
    database = Database("sqlite", tmp_path / "data", None)
    old = _material_made_days_ago(database, 100)
    # Successors for the expired keys, active now. The environment is named: the store holds
    # material but records none, as one an earlier version initialised.
    cli(database, "init", "--environment", "local")
    site_id = int(
        cli(database, "participant", "create", "--name", "P", "--type", "publisher",
            "--roles", "GENERATOR,ID_READER,SHARER")["site_id"]
    )  # fmt: skip
    cred = create_key(database, site_id, "reader", "ID_READER,SHARER")
    assert old < _stored_key_ids(database)
    env = {"UID2_KEY_ROTATION_INTERVAL_S": "0.5", "UID2_POLL_INTERVAL_S": "0.2"}
    with served(database, env=env, extra_args=("--log-level", "info")) as server:

        def published() -> set[int]:
            reply, opened = server.call("/v2/key/sharing", None, cred)
            assert reply.status_code == 200, reply.text
            assert opened is not None
            return {key["id"] for key in opened["body"]["keys"]}

        def purge_lines() -> list[str]:
            return [line for line in list(server.lines) if re.search(r"purged\D+[1-9]", line)]

        assert poll(purge_lines, 30.0), "\n".join(server.lines)

        # One line per rotation run, serve adding none of its own: counted once the next run
        # (which purges nothing) has logged, so every line of the purging run has been read.
        def next_run_logged() -> bool:
            lines = list(server.lines)
            first = lines.index(purge_lines()[0])
            return any(" purged=0 " in x for x in lines[first + 1 :])

        assert poll(next_run_logged, 30.0), "\n".join(server.lines)
        (line,) = purge_lines()
        assert "encryption keys rotated " in line
        assert f" purged={len(old)} " in line
        # Every worker reloads without them: the key endpoints stop publishing them.
        assert poll(lambda: not published() & old, 30.0)
        assert published()  # the keys in use are still there
    assert not _stored_key_ids(database) & old


def test_serve_refuses_a_retention_below_the_minimum_before_it_writes_anything(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    result = subprocess.run(  # noqa: S603 (our own command)
        [UID2_OPERATOR, "--data-dir", str(data_dir), "serve", "--init-if-new", "--port", "0",
         "--admin-port", "0"],
        capture_output=True,
        text=True,
        env=clean_env({"UID2_EXPIRED_KEY_RETENTION_S": "604800"}),
        timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert (
        "UID2_EXPIRED_KEY_RETENTION_S (604800) is below the minimum of 2678400 seconds in the "
        "local environment" in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not data_dir.exists()
