"""A refresh is its bearer key's usage only when that key authenticates.

``/v2/token/refresh`` needs no API key; one whose text verifies only makes error answers more
specific, whatever the key's state, as in the reference. Through a served worker's observer
(``build_worker``): a disabled key's bearer leaves the usage meter empty and labels no metrics
series, while its answers stay what they were; an active key's bearer is recorded as its usage.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from operator_harness import SITE_A, Credential, build_world_snapshot

from uid2_operator.clock import FixedClock
from uid2_operator.domain.sealing import generate_keyring
from uid2_operator.serve_settings import ServeSettings
from uid2_operator.services import data_plane
from uid2_operator.services.snapshot import Snapshot
from uid2_operator.settings import Settings
from uid2_operator.web.operator_api.server import OperatorServer, build_worker
from uid2_operator.wire.encoding import b64decode
from uid2_operator.wire.refresh import decrypt_refresh_response

REFRESH = "/v2/token/refresh"
World = tuple[OperatorServer, FixedClock, Snapshot, dict[str, Credential]]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    clock = FixedClock()
    snapshot, credentials = build_world_snapshot(clock.now_ms())
    server = build_worker(
        Settings.from_env({}, data_dir=str(tmp_path / "data")),
        ServeSettings(),
        keyring=generate_keyring(os.urandom, development=True),
        clock=clock,
    )
    server.worker.source.current = snapshot  # what the API reads, as a poll would install it
    yield server, clock, snapshot, credentials
    server.worker.write_behind.close()
    server.worker.source.close()
    server.worker.store.close()


def _token(snapshot: Snapshot, now_ms: int) -> tuple[str, bytes]:
    caller = next(c for c in snapshot.clients.values() if c.key.site_id == SITE_A).caller
    reply = data_plane.generate(
        snapshot, caller, {"email": "usage@example.com"}, now_ms, os.urandom
    )
    return reply.body["refresh_token"], b64decode(reply.body["refresh_response_key"])


def _refresh(server: OperatorServer, body: str, key: str) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=server)
        async with httpx.AsyncClient(transport=transport, base_url="http://op.test") as client:
            return await client.post(
                REFRESH,
                content=body,
                headers={"authorization": f"Bearer {key}", "content-type": "text/plain"},
            )

    return anyio.run(send)


def _usage(server: OperatorServer) -> list[tuple[str, str, int]]:
    return [(k, e, n) for k, e, n, _at in server.worker.write_behind.usage.take()]


def test_a_disabled_keys_refresh_is_answered_as_before_but_not_its_usage(world: World) -> None:
    server, clock, snapshot, creds = world
    x = creds["X"]  # a disabled key
    token, response_key = _token(snapshot, clock.now_ms())
    answered = _refresh(server, token, x.key)
    assert answered.status_code == 200
    assert decrypt_refresh_response(response_key, answered.text)["status"] == "success"
    # Its text verified, so a bad token still gets the specific answer.
    bad = _refresh(server, "abc", x.key)
    assert bad.status_code == 400
    assert bad.json() == {"status": "invalid_token", "message": "Invalid Token presented"}
    assert _usage(server) == []
    counts = server.worker.metrics.counts()
    assert counts == {(REFRESH, "", 200): 1, (REFRESH, "", 400): 1}


def test_an_active_keys_refresh_is_its_usage(world: World) -> None:
    server, clock, snapshot, creds = world
    a = creds["A"]
    token, response_key = _token(snapshot, clock.now_ms())
    answered = _refresh(server, token, a.key)
    assert answered.status_code == 200
    assert decrypt_refresh_response(response_key, answered.text)["status"] == "success"
    assert _usage(server) == [(a.key_id, REFRESH, 1)]
    assert server.worker.metrics.counts() == {(REFRESH, a.key_id, 200): 1}
