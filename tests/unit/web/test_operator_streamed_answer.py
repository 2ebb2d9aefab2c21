"""A large ``/v2/identity/buckets`` answer is sent in pieces, the worker serving others meanwhile.

The application is called directly (ASGI messages in and out). An answer listing more than one
piece's worth of buckets starts without ``Content-Length`` (the server then chunks it), each
sealed piece a body message of its own, and ends with an empty last one; joined, the body is
byte for byte the one-shot answer under the same IV. A small answer is sent whole as before. A
piece that cannot be made after the start ends the answer without its last message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator, MutableMapping
from dataclasses import replace
from typing import Any

import pytest
from operator_harness import (
    Credential,
    asgi_exchange,
    build_world_snapshot,
    salt_table_updated_at,
    sealed_post,
)

from uid2_operator.clock import FixedClock
from uid2_operator.domain.salts import SaltTable
from uid2_operator.errors import SaltError
from uid2_operator.services import data_plane
from uid2_operator.services.data_plane import BUCKETS_PER_PIECE, StreamedReply
from uid2_operator.services.snapshot import Snapshot
from uid2_operator.web.operator_api.app import create_operator_app
from uid2_operator.wire.envelope import (
    frame_response,
    open_response,
    seal_response,
    unframe_response,
)

Message = MutableMapping[str, Any]
NOW = 1_750_000_000_000
HOUR = 3_600_000
BUCKETS = "/v2/identity/buckets"
EVERYTHING = {"since_timestamp": "1970-01-01T00:00"}
LISTED = 3 * BUCKETS_PER_PIECE + 10
IV = bytes(range(12))
LOGGER = "uid2_operator.web.operator_api.app"
MARKER = "marker-of-the-failure"


def _random(n: int) -> bytes:
    return (IV * (n // len(IV) + 1))[:n]


def _table(count: int, kind: type[SaltTable] = SaltTable) -> SaltTable:
    """``count`` buckets, every one updated an hour ago."""
    return salt_table_updated_at(count, NOW - HOUR, kind)


def _world(salts: SaltTable | None = None) -> tuple[Snapshot, Credential]:
    snapshot, credentials = build_world_snapshot(NOW)
    if salts is not None:
        snapshot = replace(snapshot, salts=salts)
    return snapshot, credentials["A"]


class _App:
    """The operator application over ``snapshot``, recording what its observer is told."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.observed: list[tuple[str, str | None, int]] = []
        self.app = create_operator_app(
            snapshot_provider=lambda: snapshot,
            clock=FixedClock(NOW),
            random=_random,
            observer=lambda path, key_id, status, _: self.observed.append((path, key_id, status)),
        )

    async def exchange(
        self, scope: dict[str, Any], body: bytes, log: list[tuple[str, Message]], name: str
    ) -> None:
        await asgi_exchange(self.app, scope, body, log, name)


def _request(
    cred: Credential, *, binary: bool, http_version: str = "1.1"
) -> tuple[dict[str, Any], bytes, bytes]:
    nonce = b"nonce-01"
    scope, body = sealed_post(
        cred,
        BUCKETS,
        EVERYTHING,
        now_ms=NOW,
        binary=binary,
        http_version=http_version,
        nonce=nonce,
        headers=((b"x-amzn-trace-id", b"Root=1-trace"),),
    )
    return scope, body, nonce


def _answer(
    app: _App, cred: Credential, *, binary: bool = False, http_version: str = "1.1"
) -> tuple[list[Message], bytes]:
    scope, body, nonce = _request(cred, binary=binary, http_version=http_version)
    log: list[tuple[str, Message]] = []
    asyncio.run(app.exchange(scope, body, log, "buckets"))
    return [message for _, message in log], nonce


def _expected_json(snapshot: Snapshot) -> bytes:
    reply = data_plane.buckets(snapshot, EVERYTHING, NOW)
    assert isinstance(reply, StreamedReply)
    return b"".join(reply.pieces())


@pytest.mark.parametrize("binary", [False, True])
def test_a_large_answer_comes_in_several_body_messages_without_content_length(
    binary: bool,
) -> None:
    snapshot, cred = _world(_table(LISTED))
    app = _App(snapshot)
    messages, nonce = _answer(app, cred, binary=binary)
    start, *bodies = messages
    assert start["type"] == "http.response.start"
    assert start["status"] == 200
    headers = dict(start["headers"])
    assert b"content-length" not in headers
    assert headers[b"content-type"] == (b"application/octet-stream" if binary else b"text/plain")
    assert headers[b"x-amzn-trace-id"] == b"Root=1-trace"
    assert all(m["type"] == "http.response.body" for m in bodies)
    assert len(bodies) == 4 + 1  # one per piece, then the empty last one
    assert all(m["more_body"] is True and m["body"] for m in bodies[:-1])
    assert bodies[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    received = b"".join(m["body"] for m in bodies)

    whole = _expected_json(snapshot)
    sealed = seal_response(whole, secret=cred.secret_bytes, nonce=nonce, now_ms=NOW, random=_random)
    assert received == frame_response(sealed, binary)[0]
    opened = open_response(
        unframe_response(received, binary), secret=cred.secret_bytes, nonce=nonce
    )
    assert opened["status"] == "success"
    assert len(opened["body"]) == LISTED
    assert len({entry["bucket_id"] for entry in opened["body"]}) == LISTED
    assert app.observed == [(BUCKETS, cred.key_id, 200)]


@pytest.mark.parametrize("binary", [False, True])
def test_a_small_answer_is_sent_whole_with_content_length(binary: bool) -> None:
    snapshot, cred = _world()  # 1024 buckets: one piece
    app = _App(snapshot)
    messages, nonce = _answer(app, cred, binary=binary)
    start, body = messages
    assert start["status"] == 200
    assert dict(start["headers"])[b"content-length"] == b"%d" % len(body["body"])
    assert body.get("more_body", False) is False
    sealed = seal_response(
        _expected_json(snapshot), secret=cred.secret_bytes, nonce=nonce, now_ms=NOW, random=_random
    )
    assert body["body"] == frame_response(sealed, binary)[0]
    assert app.observed == [(BUCKETS, cred.key_id, 200)]


@pytest.mark.parametrize("binary", [False, True])
def test_a_large_answer_to_an_http_1_0_request_announces_its_length_and_comes_in_parts(
    binary: bool,
) -> None:
    # HTTP/1.0 has no chunked transfer encoding: without a length the server would chunk the
    # answer anyway, and the client would read the chunk framing as part of the body. The length
    # is counted first, so the answer is still never held whole.
    snapshot, cred = _world(_table(LISTED))
    app = _App(snapshot)
    messages, nonce = _answer(app, cred, binary=binary, http_version="1.0")
    start, *bodies = messages
    assert start["status"] == 200
    assert len(bodies) == 4 + 1  # one per piece, then the empty last one
    assert all(m["more_body"] is True and m["body"] for m in bodies[:-1])
    assert bodies[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    received = b"".join(m["body"] for m in bodies)
    assert dict(start["headers"])[b"content-length"] == b"%d" % len(received)
    sealed = seal_response(
        _expected_json(snapshot), secret=cred.secret_bytes, nonce=nonce, now_ms=NOW, random=_random
    )
    assert received == frame_response(sealed, binary)[0]
    opened = open_response(
        unframe_response(received, binary), secret=cred.secret_bytes, nonce=nonce
    )
    assert len(opened["body"]) == LISTED
    assert app.observed == [(BUCKETS, cred.key_id, 200)]


def test_the_worker_answers_a_health_check_while_an_http_1_0_answer_is_counted() -> None:
    snapshot, cred = _world(_table(LISTED))
    app = _App(snapshot)
    scope, body, _ = _request(cred, binary=False, http_version="1.0")
    health = {"type": "http", "method": "GET", "path": "/ops/healthcheck", "headers": []}
    log: list[tuple[str, Message]] = []

    async def both() -> None:
        buckets = asyncio.create_task(app.exchange(scope, body, log, "buckets"))
        await asyncio.sleep(0)  # the request is read and the counting under way
        await asyncio.gather(buckets, app.exchange(health, b"", log, "health"))

    asyncio.run(both())
    order = [(name, m["type"]) for name, m in log]
    assert order.index(("health", "http.response.body")) < order.index(
        ("buckets", "http.response.start")
    )


def test_the_worker_answers_a_health_check_while_a_large_answer_is_sent() -> None:
    snapshot, cred = _world(_table(LISTED))
    app = _App(snapshot)
    scope, body, _ = _request(cred, binary=False)
    health = {"type": "http", "method": "GET", "path": "/ops/healthcheck", "headers": []}
    log: list[tuple[str, Message]] = []

    async def both() -> None:
        buckets = asyncio.create_task(app.exchange(scope, body, log, "buckets"))
        while not buckets.done() and not any(
            name == "buckets" and m["type"] == "http.response.body" for name, m in log
        ):
            await asyncio.sleep(0)
        await asyncio.gather(buckets, app.exchange(health, b"", log, "health"))

    asyncio.run(both())
    order = [(name, m["type"], m.get("more_body", False)) for name, m in log]
    last_piece = order.index(("buckets", "http.response.body", False))
    health_answer = order.index(("health", "http.response.body", False))
    assert health_answer < last_piece
    assert order[health_answer - 1] == ("health", "http.response.start", False)


class _FailingTable(SaltTable):
    """A table that cannot list past its first ``readable`` buckets."""

    readable = 0
    error: Exception = RuntimeError(MARKER)

    def updated_since(self, since_ms: int, now_ms: int) -> Iterator[tuple[int, int]]:
        listing = super().updated_since(since_ms, now_ms)
        for _ in range(self.readable):
            yield next(listing)
        raise self.error


def _failing(readable: int, error: Exception) -> type[SaltTable]:
    return type("Failing", (_FailingTable,), {"readable": readable, "error": error})


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            RuntimeError(MARKER),
            rf"operator request failed: path={BUCKETS} RuntimeError at "
            r"test_operator_streamed_answer\.py:\d+ updated_since < .*",
        ),
        (
            SaltError(MARKER),
            rf"operator request answered 500: path={BUCKETS} code=salt_error: {MARKER}",
        ),
    ],
)
def test_a_piece_that_fails_after_the_start_ends_the_answer_without_its_last_message(
    error: Exception, line: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The first two pieces are made before the start; the third cannot be.
    snapshot, cred = _world(_table(LISTED, _failing(2 * BUCKETS_PER_PIECE + 1, error)))
    app = _App(snapshot)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        messages, _ = _answer(app, cred)
    start, *bodies = messages
    assert start["status"] == 200
    assert b"content-length" not in dict(start["headers"])
    assert bodies
    assert all(m["more_body"] is True for m in bodies)
    records = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(records) == 1
    assert re.fullmatch(line, records[0]), records[0]
    if not isinstance(error, SaltError):
        assert MARKER not in caplog.text
    assert app.observed == [(BUCKETS, cred.key_id, 500)]


def test_a_piece_that_fails_before_the_start_is_answered_as_any_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    snapshot, cred = _world(_table(LISTED, _failing(BUCKETS_PER_PIECE, RuntimeError(MARKER))))
    app = _App(snapshot)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        messages, _ = _answer(app, cred)
    start, body = messages
    assert start["status"] == 500
    assert dict(start["headers"])[b"content-length"] == b"%d" % len(body["body"])
    assert json.loads(body["body"]) == {"status": "unknown", "message": "Unknown error"}
    assert MARKER not in caplog.text
    assert app.observed == [(BUCKETS, cred.key_id, 500)]


def test_a_piece_that_fails_while_an_http_1_0_answer_is_counted_is_answered_as_any_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The two pieces made before the count are fine; counting reaches the third, which fails.
    snapshot, cred = _world(
        _table(LISTED, _failing(2 * BUCKETS_PER_PIECE + 1, RuntimeError(MARKER)))
    )
    app = _App(snapshot)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        messages, _ = _answer(app, cred, http_version="1.0")
    start, body = messages
    assert start["status"] == 500
    assert dict(start["headers"])[b"content-length"] == b"%d" % len(body["body"])
    assert json.loads(body["body"]) == {"status": "unknown", "message": "Unknown error"}
    records = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(records) == 1
    assert records[0].startswith(f"operator request failed: path={BUCKETS} RuntimeError at ")
    assert MARKER not in caplog.text
    assert app.observed == [(BUCKETS, cred.key_id, 500)]
