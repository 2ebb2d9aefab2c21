"""Checks at the operator application's door, called directly (no server in front to do them
first or differently):

- a replayed envelope is refused for as long as it could still pass the timestamp check, by the
  application's own replay cache (the one used where no shared table is given);
- a body over the limit is refused even when it arrives in one message with no Content-Length
  (a server that hands the whole body over at once);
- only the ``Bearer`` scheme carries an API key.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from operator_harness import AsgiLog, asgi_exchange, build_world_snapshot, sealed_post

from uid2_operator.clock import FixedClock
from uid2_operator.web.operator_api.app import BODY_LIMIT, OperatorApiConfig, create_operator_app

GENERATE = "/v2/token/generate"


def _answer(app: Any, scope: dict[str, Any], body: bytes) -> tuple[int, bytes]:
    log: AsgiLog = []
    asyncio.run(asgi_exchange(app, scope, body, log, "client"))
    status = next(m["status"] for _, m in log if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for _, m in log if m["type"] == "http.response.body")
    return status, content


def test_a_replay_is_refused_until_its_timestamp_leaves_the_window() -> None:
    clock = FixedClock()
    snapshot, creds = build_world_snapshot(clock.now_ms())
    app = create_operator_app(snapshot_provider=lambda: snapshot, clock=clock)
    window = OperatorApiConfig().window.max_past_ms
    request = sealed_post(
        creds["A"], GENERATE, {"email": "replay@example.com"}, now_ms=clock.now_ms()
    )
    assert _answer(app, *request)[0] == 200
    # again at once, and one second before the envelope's timestamp leaves the window
    for step_ms in (1_000, window - 2_000):
        clock.advance(step_ms)
        status, content = _answer(app, *request)
        assert status == 400
        assert json.loads(content)["message"] == "Invalid nonce: Request already received."


def test_a_body_over_the_limit_in_one_message_without_a_length_is_refused() -> None:
    clock = FixedClock()
    snapshot, creds = build_world_snapshot(clock.now_ms())
    app = create_operator_app(snapshot_provider=lambda: snapshot, clock=clock)
    scope, _body = sealed_post(
        creds["A"], GENERATE, {"email": "x@example.com"}, now_ms=clock.now_ms()
    )
    assert not any(name == b"content-length" for name, _ in scope["headers"])
    status, _content = _answer(app, scope, b"A" * (BODY_LIMIT + 1))
    assert status == 413


def test_only_the_bearer_scheme_carries_an_api_key() -> None:
    clock = FixedClock()
    snapshot, creds = build_world_snapshot(clock.now_ms())
    app = create_operator_app(snapshot_provider=lambda: snapshot, clock=clock)
    answers = []
    for number, scheme in enumerate(["Bearer", "bearer", "Bxarer", "Tokens"]):
        scope, body = sealed_post(
            creds["A"],
            GENERATE,
            {"email": "x@example.com"},
            now_ms=clock.now_ms(),
            nonce=b"nonce-%02d" % number,
        )
        scope["headers"] = [
            (name, value.replace(b"Bearer", scheme.encode()) if name == b"authorization" else value)
            for name, value in scope["headers"]
        ]
        answers.append(_answer(app, scope, body)[0])
    assert answers == [200, 200, 401, 401]
