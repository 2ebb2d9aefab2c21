"""A worker's snapshot reload that fails is logged without the error's text.

A database driver's error carries the statement and its parameters (raw UIDs, first-level
hashes, sealed secrets) in its text, and a traceback repeats that text: an error that is not the
project's own is named by its class and the frames it came through, once per change, and the
project's own errors keep their message.
"""

from __future__ import annotations

import logging
import re
from typing import Any, cast

import pytest
from sqlalchemy.exc import OperationalError

from uid2_operator.clock import FixedClock
from uid2_operator.errors import KeyringError
from uid2_operator.services.snapshot_loader import Loaded
from uid2_operator.services.snapshot_source import SnapshotSource

LOGGER = "uid2_operator.services.snapshot_source"
MARKER = "raw-uid-marker"


class _Snapshot:
    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.change_seq = 1


def _driver_error() -> OperationalError:
    """What SQLAlchemy raises for a statement the database refused: its text holds the
    statement's parameters."""
    return OperationalError(
        "SELECT * FROM optouts WHERE identity_hash = ?", (MARKER,), Exception("database locked")
    )


def _failing_source(errors: list[BaseException]) -> SnapshotSource:
    """A source whose first load works and whose next ones raise ``errors`` in turn."""
    loads = iter([None, *errors])
    seq = iter(range(1, 100))

    def load(previous: Loaded | None, generation: int) -> Loaded:
        del previous
        error = next(loads)
        if error is not None:
            raise error
        return Loaded(cast(Any, _Snapshot(generation)), cast(Any, None))

    source = SnapshotSource(
        load, lambda: next(seq), FixedClock(), poll_interval_s=1, max_snapshot_age_s=10
    )
    assert source.refresh()
    return source


def test_a_driver_error_is_logged_by_class_and_frames_once_never_with_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert MARKER in str(_driver_error())  # what a log line must not repeat
    source = _failing_source([_driver_error(), _driver_error(), _driver_error()])
    try:
        with caplog.at_level(logging.DEBUG, logger=LOGGER):
            for _ in range(3):
                assert not source.refresh()
        records = [r for r in caplog.records if r.name == LOGGER]
        assert [r.exc_info for r in records] == [None]  # once: the same failure, no traceback
        assert re.fullmatch(
            r"snapshot refresh failed: OperationalError at "
            r"test_snapshot_source_failure_log\.py:\d+ load < snapshot_source\.py:\d+ _fetch"
            r" < snapshot_source\.py:\d+ refresh",
            records[0].getMessage(),
        ), records[0].getMessage()
        assert MARKER not in caplog.text
        assert MARKER not in (source.problem_detail or "")
        assert "OperationalError at " in (source.problem_detail or "")
    finally:
        source.close()


def test_a_project_error_is_still_logged_with_its_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = _failing_source([KeyringError("The keyring file /srv/a is unreadable")])
    try:
        with caplog.at_level(logging.DEBUG, logger=LOGGER):
            assert not source.refresh()
        assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
            "snapshot refresh failed: The keyring file /srv/a is unreadable"
        ]
    finally:
        source.close()
