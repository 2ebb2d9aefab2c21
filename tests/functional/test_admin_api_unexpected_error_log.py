"""An admin request that fails with an error not of the project's is logged on one line without
its text.

A database driver's error carries the statement's parameters (key hashes, sealed secrets) in its
text: the line names the route, the error's class, the request id and the frames it came through
(this project's and the one that raised it, as ``file:line function``, no path), never the text.
A project error keeps its message in its own line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from admin_api_harness import AdminEnv, open_admin_env, sqlite_settings
from sqlalchemy.exc import OperationalError

from uid2_operator.errors import StoreUnavailable

LOGGER = "uid2_operator.web.admin_api.app"
MARKER = "raw-uid-marker"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[AdminEnv]:
    with open_admin_env(sqlite_settings(tmp_path)) as opened:
        yield opened


def test_a_driver_error_is_logged_by_class_and_frames_on_one_line_never_with_its_text(
    env: AdminEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    error = OperationalError("SELECT ?", (MARKER,), Exception("database is locked"))
    assert MARKER in str(error)

    def explode(*args: object, **kwargs: object) -> object:
        raise error

    monkeypatch.setattr(env.services.credentials, "participant_page", explode)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        response = env.call("GET", "/participants")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    request_id = response.headers["x-request-id"]
    assert re.fullmatch(
        rf"admin GET /admin/api/participants failed with OperationalError "
        rf"request_id={re.escape(request_id)} at "
        r"test_admin_api_unexpected_error_log\.py:\d+ explode( < \w+\.py:\d+ \w+)+",
        line,
    ), line
    assert " < app.py:" in line  # the endpoint's frame
    assert "starlette" not in line
    assert "anyio" not in line
    assert MARKER not in caplog.text


def test_a_store_outage_is_still_logged_with_its_message(
    env: AdminEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unreachable(*args: object, **kwargs: object) -> object:
        raise StoreUnavailable("The store at sqlite:///uid2.db is unavailable: switched off")

    monkeypatch.setattr(env.services.credentials, "participant_page", unreachable)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        response = env.call("GET", "/participants")
    assert response.status_code == 503
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "admin GET /admin/api/participants answered 503: "
        "The store at sqlite:///uid2.db is unavailable: switched off"
    ]
