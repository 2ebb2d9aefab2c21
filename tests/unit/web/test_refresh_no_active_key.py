"""A refresh that finds no active key to issue with is answered as every other refusal is.

``data_plane.refresh`` lets ``NoActiveKey`` through (the server's 500, ``unknown``) only for a
caller whose API key verified; anyone else (the JavaScript SDK and mobile apps refresh without a
key) gets the bare ``error`` every other failure of a refresh gets, as in the reference. The same
through the operator application, over the test world's snapshot with its master key gone.
"""

from __future__ import annotations

import os

import anyio
import httpx
import pytest
from operator_harness import SnapshotHolder, build_world_snapshot

from uid2_operator.clock import FixedClock
from uid2_operator.errors import NoActiveKey, RefreshFailed
from uid2_operator.services import data_plane
from uid2_operator.services.snapshot import Snapshot, build_snapshot
from uid2_operator.web.operator_api.app import create_operator_app
from uid2_operator.wire.keys import MASTER_KEYSET_ID

REFRESH = "/v2/token/refresh"


def _without_master_key(world: Snapshot) -> Snapshot:
    keys = [k for k in world.keys_by_id.values() if k.keyset_id != MASTER_KEYSET_ID]
    assert len(keys) < len(world.keys_by_id)
    return build_snapshot(
        generation=world.generation + 1,
        built_at_ms=world.built_at_ms,
        identity=world.identity,
        lifetimes=world.lifetimes,
        pepper=world.pepper,
        clients=list(world.clients.values()),
        keysets=list(world.keysets.values()),
        keys=keys,
        salts=world.salts,
    )


def _refresh_token(world: Snapshot, creds: dict, now_ms: int) -> str:
    caller = world.clients[creds["A"].key_id].caller
    reply = data_plane.generate(world, caller, {"email": "nokey@example.com"}, now_ms, os.urandom)
    assert reply.status == "success"
    token: str = reply.body["refresh_token"]
    return token


@pytest.mark.parametrize(
    ("authenticated", "refusal"), [(True, NoActiveKey), (False, RefreshFailed)]
)
def test_no_active_key_is_told_only_to_an_authenticated_caller(
    authenticated: bool, refusal: type[Exception]
) -> None:
    now_ms = FixedClock().now_ms()
    world, creds = build_world_snapshot(now_ms)
    token = _refresh_token(world, creds, now_ms)
    keyless = _without_master_key(world)
    with pytest.raises(refusal) as caught:
        data_plane.refresh(
            keyless, token.encode(), authenticated=authenticated, now_ms=now_ms, random=os.urandom
        )
    assert type(caught.value) is refusal


@pytest.mark.parametrize(
    ("key_name", "status", "expected"),
    [
        (None, 400, {"status": "error", "message": "Error refreshing token"}),
        ("A", 500, {"status": "unknown", "message": "No active encryption key available"}),
    ],
)
def test_the_operator_answers_no_active_key_by_caller(
    key_name: str | None, status: int, expected: dict[str, str]
) -> None:
    clock = FixedClock()
    world, creds = build_world_snapshot(clock.now_ms())
    token = _refresh_token(world, creds, clock.now_ms())
    holder = SnapshotHolder(_without_master_key(world))
    app = create_operator_app(snapshot_provider=holder, clock=clock)
    headers = {"content-type": "text/plain"}
    if key_name is not None:
        headers["authorization"] = f"Bearer {creds[key_name].key}"

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://op.test") as client:
            return await client.post(REFRESH, content=token, headers=headers)

    answered = anyio.run(send)
    assert answered.status_code == status
    assert answered.json() == expected
