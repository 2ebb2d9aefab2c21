"""The envelope's framing follows the media type without the whitespace around the field value.

RFC 9110 §5.5 excludes leading and trailing whitespace from a field's value, and the reference's
server trims both; the HTTP parser here drops only the leading part. A trailing space or tab after
``application/octet-stream`` must still select the binary framing, in any case, on the enveloped
routes and on refresh.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

import pytest
from operator_harness import build_world_snapshot

from uid2_operator.clock import FixedClock
from uid2_operator.web.operator_api.app import create_operator_app
from uid2_operator.wire.envelope import open_response, seal_request

Message = MutableMapping[str, Any]
NOW = 1_750_000_000_000


def _post(app: Any, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> list[Message]:
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "http_version": "1.1",
        "headers": headers,
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(dict(message))

    asyncio.run(app(scope, receive, send))
    return sent


@pytest.mark.parametrize(
    "content_type",
    [
        b"application/octet-stream",
        b"application/octet-stream ",
        b"application/octet-stream\t",
        b" Application/Octet-Stream \t",
    ],
)
def test_a_binary_envelope_is_read_and_answered_in_binary(content_type: bytes) -> None:
    snapshot, credentials = build_world_snapshot(NOW)
    cred = credentials["A"]
    app = create_operator_app(snapshot_provider=lambda: snapshot, clock=FixedClock(NOW))
    nonce = b"nonce-ct"
    sealed = seal_request(
        json.dumps({"email": "ct@example.com"}).encode(),
        secret=cred.secret_bytes,
        now_ms=NOW,
        nonce=nonce,
        random=bytes,
    )
    headers = [(b"content-type", content_type), (b"authorization", f"Bearer {cred.key}".encode())]
    start, answer = _post(app, "/v2/token/generate", sealed, headers)
    assert start["status"] == 200, answer
    assert dict(start["headers"])[b"content-type"] == b"application/octet-stream"
    generated = open_response(answer["body"], secret=cred.secret_bytes, nonce=nonce)
    assert generated["status"] == "success"

    # Refresh frames its answer by the same media type.
    refresh = generated["body"]["refresh_token"].encode()
    start, answer = _post(app, "/v2/token/refresh", refresh, [(b"content-type", content_type)])
    assert start["status"] == 200, answer
    assert dict(start["headers"])[b"content-type"] == b"application/octet-stream"
