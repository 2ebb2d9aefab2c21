"""An operator request that fails with an error not of the project's is logged without its text.

A database driver's error carries the statement's parameters (raw UIDs, first-level hashes) in
its text, and a traceback repeats it: the line names the route, the error's class and the frames
it came through, and the caller gets the bare 500 ``unknown`` as before. The project's own errors
answered 5xx keep their line with their message.
"""

from __future__ import annotations

import logging
import re

import anyio
import httpx
import pytest
from sqlalchemy.exc import OperationalError

from uid2_operator.clock import FixedClock
from uid2_operator.errors import SaltError
from uid2_operator.services.snapshot import Snapshot
from uid2_operator.web.operator_api.app import create_operator_app

GENERATE = "/v2/token/generate"
LOGGER = "uid2_operator.web.operator_api.app"
MARKER = "raw-uid-marker"


def _post(error: Exception) -> httpx.Response:
    """A generate to an app whose snapshot cannot be had: reading it raises ``error``."""

    def snapshot() -> Snapshot | None:
        raise error

    app = create_operator_app(snapshot_provider=snapshot, clock=FixedClock())

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://op.test") as client:
            return await client.post(
                GENERATE, content=b"e30=", headers={"content-type": "text/plain"}
            )

    return anyio.run(send)


def test_a_driver_error_is_logged_by_class_and_frames_never_with_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    error = OperationalError("SELECT ?", (MARKER,), Exception("database is locked"))
    assert MARKER in str(error)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        answer = _post(error)
    assert answer.status_code == 500
    assert answer.json() == {"status": "unknown", "message": "Unknown error"}
    records = [r for r in caplog.records if r.name == LOGGER]
    assert [(r.levelno, r.exc_info) for r in records] == [(logging.ERROR, None)]
    assert re.fullmatch(
        rf"operator request failed: path={GENERATE} OperationalError at "
        r"test_operator_unexpected_error_log\.py:\d+ snapshot < app\.py:\d+ _route"
        r" < app\.py:\d+ _handle",
        records[0].getMessage(),
    ), records[0].getMessage()
    assert MARKER not in caplog.text
    assert MARKER not in answer.text


def test_a_project_error_answered_500_is_still_logged_with_its_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        answer = _post(SaltError("The salt table has no bucket for this identity"))
    assert answer.status_code == 500
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        f"operator request answered 500: path={GENERATE} code=salt_error: "
        "The salt table has no bucket for this identity"
    ]
