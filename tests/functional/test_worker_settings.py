"""The serve settings reach the worker: token lifetimes and the envelope's timestamp window.

A worker (``build_worker``) runs in-process over a SQLite store made with the CLI, with a clock the
test holds still, and is called through its ASGI interface.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from typing import Any

import httpx
import pytest
from cli_harness import Cli, Database

from uid2_operator.clock import FixedClock
from uid2_operator.serve_settings import LifetimeOverrides, ServeSettings
from uid2_operator.settings import Settings
from uid2_operator.web.operator_api.server import OperatorServer, build_worker
from uid2_operator.wire.envelope import TimestampWindow, open_response, seal_request

pytestmark = pytest.mark.functional

GENERATE = "/v2/token/generate"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict[str, Any], int]:
    """Settings, an API key, and a time (held still) just after the material was made."""
    database = Database("sqlite", tmp_path_factory.mktemp("worker") / "data", None)
    cli = Cli(database)
    assert cli("init").exit_code == 0
    created = cli("--json", "participant", "create", "--name", "P", "--type", "publisher",
                  "--roles", "GENERATOR")  # fmt: skip
    site_id = json.loads(created.stdout)["site_id"]
    issued = cli("--json", "key", "create", "--site-id", str(site_id), "--name", "k",
                 "--roles", "GENERATOR")  # fmt: skip
    assert issued.exit_code == 0, issued.output
    # The new participant's keyset is made by serve's upkeep; init again does the same here.
    assert cli("init").exit_code == 0
    now_ms = int(time.time() * 1000) + 1_000
    return Settings.from_env({}, data_dir=str(database.data_dir)), json.loads(issued.stdout), now_ms


def _worker(settings: Settings, serve: ServeSettings, clock: FixedClock) -> OperatorServer:
    return build_worker(settings, serve, clock=clock)


async def _generate(server: OperatorServer, key: dict[str, Any], sent_at_ms: int) -> Any:
    secret = base64.b64decode(key["secret"])
    nonce = os.urandom(8)
    sealed = seal_request(
        json.dumps({"email": "lifetime@example.com"}).encode(),
        secret=secret,
        now_ms=sent_at_ms,
        nonce=nonce,
        random=os.urandom,
    )
    transport = httpx.ASGITransport(app=server)
    async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
        await server.start()
        try:
            response = await client.post(
                GENERATE,
                content=base64.b64encode(sealed),
                headers={"authorization": f"Bearer {key['key']}", "content-type": "text/plain"},
            )
        finally:
            await server.stop()
    if response.status_code != 200:
        return response.status_code
    return open_response(base64.b64decode(response.content), secret=secret, nonce=nonce)


def test_identity_lifetime_override_reaches_the_token(
    world: tuple[Settings, dict[str, Any], int],
) -> None:
    settings, key, now_ms = world
    clock = FixedClock(at_ms=now_ms)
    serve = ServeSettings(
        lifetimes=LifetimeOverrides(identity_token_s=1_234, refresh_identity_after_s=600)
    )
    opened = asyncio.run(_generate(_worker(settings, serve, clock), key, now_ms))
    assert not isinstance(opened, int), opened
    body = opened["body"]
    assert body["identity_expires"] == now_ms + 1_234_000
    assert body["refresh_from"] == now_ms + 600_000
    assert body["refresh_expires"] == now_ms + 86_400_000  # the local default


def test_the_request_window_setting_reaches_the_worker(
    world: tuple[Settings, dict[str, Any], int],
) -> None:
    settings, key, now_ms = world
    clock = FixedClock(at_ms=now_ms)
    sent_at = now_ms - 60_000  # inside the default window, outside a 30 s one
    default = asyncio.run(_generate(_worker(settings, ServeSettings(), clock), key, sent_at))
    assert not isinstance(default, int), default
    narrow = ServeSettings(request_window=TimestampWindow(max_past_ms=30_000, max_future_ms=0))
    assert asyncio.run(_generate(_worker(settings, narrow, clock), key, sent_at)) == 400
