"""A disabled participant's refresh tokens no longer refresh; enabled again, they do.

``data_plane.refresh`` refuses a token whose site the snapshot holds as a disabled participant,
with the answer an invalid token gets on the same path (``invalid_token`` for a caller whose API
key verified, the bare ``error`` otherwise). A site the snapshot does not hold as a participant
refreshes as before. The same through the operator application, over the test world's snapshot.
"""

from __future__ import annotations

import os
from dataclasses import replace
from types import MappingProxyType

import anyio
import httpx
import pytest
from operator_harness import SITE_A, SnapshotHolder, build_world_snapshot

from uid2_operator.clock import FixedClock
from uid2_operator.domain.participants import ParticipantType
from uid2_operator.errors import InvalidTokenPresented, RefreshFailed
from uid2_operator.services import data_plane
from uid2_operator.services.snapshot import SiteData, Snapshot
from uid2_operator.web.operator_api.app import create_operator_app
from uid2_operator.wire.encoding import b64decode
from uid2_operator.wire.refresh import decrypt_refresh_response

REFRESH = "/v2/token/refresh"


def _with_site_a(snapshot: Snapshot, *, enabled: bool) -> Snapshot:
    site = SiteData(SITE_A, ParticipantType.PUBLISHER, enabled)
    return replace(snapshot, sites=MappingProxyType({SITE_A: site}))


def _refresh_token(snapshot: Snapshot, now_ms: int) -> tuple[str, bytes]:
    """A fresh identity of participant A: its refresh envelope and response key."""
    caller = next(c for c in snapshot.clients.values() if c.key.site_id == SITE_A).caller
    reply = data_plane.generate(
        snapshot, caller, {"email": "refresh@example.com"}, now_ms, os.urandom
    )
    assert reply.status == "success"
    body = reply.body
    return body["refresh_token"], b64decode(body["refresh_response_key"])


def _refresh(snapshot: Snapshot, token: str, now_ms: int, *, authenticated: bool) -> str:
    outcome = data_plane.refresh(
        snapshot, token.encode(), authenticated=authenticated, now_ms=now_ms, random=os.urandom
    )
    return outcome.reply.status


@pytest.mark.parametrize(
    ("authenticated", "refusal"), [(True, InvalidTokenPresented), (False, RefreshFailed)]
)
def test_a_disabled_participants_token_is_refused_as_an_invalid_one(
    authenticated: bool, refusal: type[Exception]
) -> None:
    now_ms = FixedClock().now_ms()
    world, _ = build_world_snapshot(now_ms)
    enabled = _with_site_a(world, enabled=True)
    disabled = _with_site_a(world, enabled=False)
    token, _key = _refresh_token(enabled, now_ms)
    assert _refresh(enabled, token, now_ms, authenticated=authenticated) == "success"
    with pytest.raises(refusal) as caught:
        _refresh(disabled, token, now_ms, authenticated=authenticated)
    assert type(caught.value) is refusal  # exactly what an invalid token gets on this path
    with pytest.raises(refusal):
        _refresh(disabled, "not a refresh token", now_ms, authenticated=authenticated)
    # Enabled again: the same token refreshes again.
    assert _refresh(enabled, token, now_ms, authenticated=authenticated) == "success"


def test_a_site_unknown_as_a_participant_refreshes_as_before() -> None:
    now_ms = FixedClock().now_ms()
    world, _ = build_world_snapshot(now_ms)  # holds no participant records at all
    assert SITE_A not in world.sites
    token, _key = _refresh_token(world, now_ms)
    assert _refresh(world, token, now_ms, authenticated=False) == "success"
    other = replace(world, sites=MappingProxyType({7: SiteData(7, enabled=False)}))
    assert _refresh(other, token, now_ms, authenticated=False) == "success"


def _post(holder: SnapshotHolder, clock: FixedClock, token: str, key: str | None) -> httpx.Response:
    app = create_operator_app(snapshot_provider=holder, clock=clock)
    headers = {"content-type": "text/plain"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://op.test") as client:
            return await client.post(REFRESH, content=token, headers=headers)

    return anyio.run(send)


@pytest.mark.parametrize(
    ("key_name", "expected"),
    [
        (None, {"status": "error", "message": "Error refreshing token"}),
        ("A", {"status": "invalid_token", "message": "Invalid Token presented"}),
    ],
)
def test_the_operator_refuses_refreshing_for_a_disabled_participant(
    key_name: str | None, expected: dict[str, str]
) -> None:
    clock = FixedClock()
    world, creds = build_world_snapshot(clock.now_ms())
    key = None if key_name is None else creds[key_name].key
    holder = SnapshotHolder(_with_site_a(world, enabled=True))
    token, response_key = _refresh_token(holder.snapshot, clock.now_ms())

    holder.snapshot = _with_site_a(world, enabled=False)
    refused = _post(holder, clock, token, key)
    assert refused.status_code == 400
    assert refused.json() == expected

    holder.snapshot = _with_site_a(world, enabled=True)
    answered = _post(holder, clock, token, key)
    assert answered.status_code == 200
    assert decrypt_refresh_response(response_key, answered.text)["status"] == "success"
