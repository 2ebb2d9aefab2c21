"""An API request answered 5xx by one of the project's own errors leaves an ERROR line.

The caller is told only ``{"status":"unknown", ...}``; the line says which route, which error
and why, at most once a minute per route and error code, with the repeats held back counted on
the next line.
"""

from __future__ import annotations

import base64
import logging
import os

import anyio
import httpx
import pytest
from operator_harness import build_world_snapshot

from uid2_operator.clock import FixedClock
from uid2_operator.web.operator_api.app import REFUSAL_LOG_INTERVAL_MS, create_operator_app
from uid2_operator.wire.envelope import seal_request

GENERATE = "/v2/token/generate"
LOGGER = "uid2_operator.web.operator_api.app"
YEAR_MS = 366 * 86_400_000


def _generate(app: object, clock: FixedClock, key: str, secret: str) -> httpx.Response:
    sealed = seal_request(
        b'{"email":"someone@example.com"}',
        secret=base64.b64decode(secret),
        now_ms=clock.now_ms(),
        nonce=os.urandom(8),
        random=os.urandom,
    )

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://op.test") as client:
            return await client.post(
                GENERATE,
                content=base64.b64encode(sealed),
                headers={"authorization": f"Bearer {key}", "content-type": "text/plain"},
            )

    return anyio.run(send)


def test_a_generate_with_no_active_key_is_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FixedClock()
    snapshot, credentials = build_world_snapshot(clock.now_ms())
    app = create_operator_app(snapshot_provider=lambda: snapshot, clock=clock)
    publisher = credentials["A"]
    assert _generate(app, clock, publisher.key, publisher.secret).status_code == 200
    clock.advance(YEAR_MS)  # every encryption key of the snapshot has expired by then
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        for _ in range(3):
            answer = _generate(app, clock, publisher.key, publisher.secret)
            assert answer.status_code == 500
            assert answer.json()["status"] == "unknown"
        lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"operator request answered 500: path={GENERATE} code=")
        assert not lines[0].endswith("since the last line)")
        clock.advance(REFUSAL_LOG_INTERVAL_MS)
        assert _generate(app, clock, publisher.key, publisher.secret).status_code == 500
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 2, lines
    assert lines[1].endswith("(2 more since the last line)")
    assert publisher.secret not in caplog.text
    assert publisher.key.split(".")[1] not in caplog.text
