"""Serve's workers log at serve's ``--log-level``, in serve's format.

Workers are spawned processes, which start with no logging set up: without their own set-up,
everything the operator code logs in a worker below WARNING was dropped whatever the level, and
its warnings came out without the level and logger name.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_harness import database_for
from serve_harness import poll, prepare, served

pytestmark = pytest.mark.functional

LOADED = "INFO uid2_operator.services.snapshot_source: snapshot "


def _loaded_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(LOADED) and " loaded at change_seq " in line]


def test_every_worker_logs_at_the_level_serve_was_given(tmp_path: Path) -> None:
    with database_for("sqlite", tmp_path) as database:
        prepare(database)
        with served(database, workers=2, log_level="info") as running:
            # Each worker loads its first snapshot as it starts, and says so at INFO.
            poll(lambda: len(_loaded_lines(running.lines)) >= 2 or None)
            assert len(_loaded_lines(running.lines)) >= 2, running.lines[-20:]


def test_at_the_default_level_a_worker_logs_nothing_below_warning(tmp_path: Path) -> None:
    with database_for("sqlite", tmp_path) as database:
        prepare(database)
        with served(database, workers=1) as running:
            assert running.request("GET", "/ops/healthcheck").status_code == 200
        assert _loaded_lines(running.lines) == []
