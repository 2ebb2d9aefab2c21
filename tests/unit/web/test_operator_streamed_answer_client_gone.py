"""A large ``/v2/identity/buckets`` answer stops being made once its client has gone.

The application is called directly (ASGI messages in and out). The server drops what is sent to
a client that disconnected, so the application notices the disconnect itself (the only message
left to receive once the body has been read) and makes no further piece; the observer is told
499. An answer whose client stays is sent whole, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, MutableMapping
from dataclasses import replace
from typing import Any

import pytest
from operator_harness import Credential, build_world_snapshot, salt_table_updated_at, sealed_post

from uid2_operator.clock import FixedClock
from uid2_operator.domain.salts import SaltTable
from uid2_operator.services.data_plane import BUCKETS_PER_PIECE
from uid2_operator.services.snapshot import Snapshot
from uid2_operator.web.operator_api.app import create_operator_app

Message = MutableMapping[str, Any]
NOW = 1_750_000_000_000
HOUR = 3_600_000
BUCKETS = "/v2/identity/buckets"
EVERYTHING = {"since_timestamp": "1970-01-01T00:00"}
PIECES = 8
LISTED = PIECES * BUCKETS_PER_PIECE
IV = bytes(range(12))


def _random(n: int) -> bytes:
    return (IV * (n // len(IV) + 1))[:n]


class _CountingTable(SaltTable):
    """A table that counts the buckets read from it."""

    listed = 0

    def updated_since(self, since_ms: int, now_ms: int) -> Iterator[tuple[int, int]]:
        for entry in super().updated_since(since_ms, now_ms):
            type(self).listed += 1
            yield entry


def _table() -> type[_CountingTable]:
    """A fresh counting table class; its ``listed`` starts at 0."""
    return type("Counting", (_CountingTable,), {"listed": 0})


def _world(kind: type[SaltTable]) -> tuple[Snapshot, Credential]:
    salts = salt_table_updated_at(LISTED, NOW - HOUR, kind)
    snapshot, credentials = build_world_snapshot(NOW)
    return replace(snapshot, salts=salts), credentials["A"]


def _request(
    cred: Credential, *, binary: bool, http_version: str = "1.1"
) -> tuple[dict[str, Any], bytes]:
    return sealed_post(
        cred, BUCKETS, EVERYTHING, now_ms=NOW, binary=binary, http_version=http_version
    )


def _exchange(
    snapshot: Snapshot, scope: dict[str, Any], body: bytes, *, leaves: bool, at_once: bool = False
) -> tuple[list[Message], list[tuple[str | None, int]]]:
    """The messages sent and the (key id, status) pairs observed; the client disconnects once the
    first body message has been sent when it ``leaves`` (``at_once``: as soon as its request is
    read), and otherwise waits for the whole answer."""
    observed: list[tuple[str | None, int]] = []
    app = create_operator_app(
        snapshot_provider=lambda: snapshot,
        clock=FixedClock(NOW),
        random=_random,
        observer=lambda _path, key_id, status, _elapsed: observed.append((key_id, status)),
    )
    sent: list[Message] = []

    async def run() -> None:
        first_body_sent = asyncio.Event()
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            if not leaves:
                await asyncio.Event().wait()
            if not at_once:
                await first_body_sent.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            # As the server does: what is sent after the disconnect is silently dropped.
            sent.append(dict(message))
            if message["type"] == "http.response.body":
                first_body_sent.set()

        await app(scope, receive, send)

    asyncio.run(run())
    return sent, observed


@pytest.mark.parametrize("binary", [False, True])
def test_no_more_pieces_are_made_once_the_client_of_a_large_answer_has_gone(
    binary: bool,
) -> None:
    kind = _table()
    snapshot, cred = _world(kind)
    scope, body = _request(cred, binary=binary)
    sent, observed = _exchange(snapshot, scope, body, leaves=True)
    start, *bodies = sent
    assert start["type"] == "http.response.start"
    assert start["status"] == 200
    assert 1 <= len(bodies) <= 2
    assert all(m["more_body"] is True for m in bodies)
    # The two pieces made before the start, and at most one more.
    assert kind.listed <= 3 * BUCKETS_PER_PIECE + 1 < LISTED
    assert observed == [(cred.key_id, 499)]  # under the key checked before the answer began


@pytest.mark.parametrize("binary", [False, True])
def test_a_large_answer_whose_client_stays_is_sent_whole(binary: bool) -> None:
    kind = _table()
    snapshot, cred = _world(kind)
    scope, body = _request(cred, binary=binary)
    sent, observed = _exchange(snapshot, scope, body, leaves=False)
    _, *bodies = sent
    assert len(bodies) == PIECES + 1
    assert bodies[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert kind.listed == LISTED
    assert observed == [(cred.key_id, 200)]


@pytest.mark.parametrize("binary", [False, True])
def test_an_http_1_0_client_gone_while_its_answer_is_counted_gets_nothing_more_made(
    binary: bool,
) -> None:
    kind = _table()
    snapshot, cred = _world(kind)
    scope, body = _request(cred, binary=binary, http_version="1.0")
    sent, observed = _exchange(snapshot, scope, body, leaves=True, at_once=True)
    assert sent == []  # gone before the length was known: the answer never started
    # The two pieces made before the count, and at most two counted.
    assert kind.listed <= 4 * BUCKETS_PER_PIECE + 2 < LISTED
    assert observed == [(cred.key_id, 499)]


@pytest.mark.parametrize("binary", [False, True])
def test_an_http_1_0_answer_whose_client_stays_is_counted_then_sent(binary: bool) -> None:
    kind = _table()
    snapshot, cred = _world(kind)
    scope, body = _request(cred, binary=binary, http_version="1.0")
    sent, observed = _exchange(snapshot, scope, body, leaves=False)
    start, *bodies = sent
    length = int(dict(start["headers"])[b"content-length"])
    assert length == sum(len(m["body"]) for m in bodies)
    assert len(bodies) == PIECES + 1
    assert kind.listed == 2 * LISTED  # made once to count, once to send; never held whole
    assert observed == [(cred.key_id, 200)]


@pytest.mark.parametrize("first", [None, b"part of a body"])
def test_a_client_gone_while_its_body_arrives_is_counted_499_with_no_key(
    first: bytes | None,
) -> None:
    # Nothing is answered (there is no one to answer), but the request still shows in the
    # metrics, as a proxy counts it; no key was checked, so none is named.
    snapshot, cred = _world(_table())
    scope, _ = _request(cred, binary=False)
    observed: list[tuple[str, str | None, int]] = []
    app = create_operator_app(
        snapshot_provider=lambda: snapshot,
        clock=FixedClock(NOW),
        random=_random,
        observer=lambda path, key_id, status, _elapsed: observed.append((path, key_id, status)),
    )
    sent: list[Message] = []
    messages = [{"type": "http.disconnect"}]
    if first is not None:
        messages.insert(0, {"type": "http.request", "body": first, "more_body": True})

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(dict(message))

    asyncio.run(app(scope, receive, send))
    assert sent == []
    assert observed == [(BUCKETS, None, 499)]
