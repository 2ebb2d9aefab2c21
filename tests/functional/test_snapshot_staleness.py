"""A worker whose store becomes unreachable: degraded but serving, then refusing once stale.

The worker application (``build_worker``) runs in-process over a real SQLite store made with the
CLI, behind a switch that makes every store call fail as an unreachable database does; the
clock is a ``FixedClock`` the test moves, so "older than the bound" needs no waiting. The poller
and the flusher run as their real asyncio loops (a 20 ms poll interval).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_harness import Cli, Database

from uid2_operator.clock import FixedClock
from uid2_operator.errors import StoreUnavailable
from uid2_operator.serve_settings import ServeSettings
from uid2_operator.settings import Settings
from uid2_operator.storage import open_store
from uid2_operator.storage.interface import Store
from uid2_operator.web.operator_api.server import OperatorServer, build_worker
from uid2_operator.wire.envelope import seal_request

pytestmark = pytest.mark.functional

MAX_AGE_S = 5.0
POLL_S = 0.02
GENERATE = "/v2/token/generate"


class SwitchableStore:
    """A store whose every call fails with ``StoreUnavailable`` while ``down``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("The store at sqlite:///test is unavailable: switched off")

    def change_seq(self) -> int:
        self._check()
        return self.store.change_seq()

    def change_state(self) -> object:
        self._check()
        return self.store.change_state()

    def snapshot(self, now_ms: int, since: int = 0) -> Any:
        self._check()
        return self.store.snapshot(now_ms, since)

    def read(self) -> AbstractContextManager[Any]:
        self._check()
        return self.store.read()

    def one_read(self) -> AbstractContextManager[None]:
        self._check()
        return self.store.one_read()

    def transaction(self) -> AbstractContextManager[Any]:
        self._check()
        return self.store.transaction()

    def record_usage(self, batch: Any) -> list[str]:
        self._check()
        return self.store.record_usage(batch)

    @property
    def backend(self) -> str:
        return self.store.backend

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def world(tmp_path: Path) -> tuple[Database, dict[str, Any]]:
    database = Database("sqlite", tmp_path / "data", None)
    cli = Cli(database)
    assert cli("init").exit_code == 0
    assert cli("keys", "rotate").exit_code == 0  # creates the encryption material
    created = cli("--json", "participant", "create", "--name", "P", "--type", "publisher",
                  "--roles", "GENERATOR")  # fmt: skip
    site_id = json.loads(created.stdout)["site_id"]
    issued = cli("--json", "key", "create", "--site-id", str(site_id), "--name", "k",
                 "--roles", "GENERATOR")  # fmt: skip
    return database, json.loads(issued.stdout)


async def _generate(client: httpx.AsyncClient, key: dict[str, Any], now_ms: int) -> int:
    sealed = seal_request(
        json.dumps({"email": "stale@example.com"}).encode(),
        secret=base64.b64decode(key["secret"]),
        now_ms=now_ms,
        nonce=os.urandom(8),
        random=os.urandom,
    )
    response = await client.post(
        GENERATE,
        content=base64.b64encode(sealed),
        headers={"authorization": f"Bearer {key['key']}", "content-type": "text/plain"},
    )
    return response.status_code


async def _until(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the worker never got there"
        await asyncio.sleep(POLL_S)


async def _scenario(server: OperatorServer, store: SwitchableStore, clock: FixedClock,
                    key: dict[str, Any]) -> None:  # fmt: skip
    source = server.worker.source
    transport = httpx.ASGITransport(app=server)
    async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
        await server.start()
        try:
            health = await client.get("/ops/healthcheck")
            assert (health.status_code, health.text) == (200, "OK")
            assert await _generate(client, key, clock.now_ms()) == 200

            store.down = True
            clock.advance(1_000)
            await _until(lambda: not source.store_reachable)
            health = await client.get("/ops/healthcheck")
            assert health.status_code == 503
            assert health.headers["content-type"].startswith("text/plain")
            assert health.text.startswith("Degraded: store unreachable since")
            assert await _generate(client, key, clock.now_ms()) == 200  # still serving
            metrics = (await client.get("/metrics")).text
            assert "uid2_operator_store_reachable{" in metrics
            assert 'uid2_operator_serving{worker="' in metrics

            clock.advance(int(MAX_AGE_S * 1000) + 1)
            await _until(lambda: source.current is None)
            assert await _generate(client, key, clock.now_ms()) == 503
            health = await client.get("/ops/healthcheck")
            assert health.status_code == 503
            assert health.text.startswith("Snapshot is stale")

            store.down = False
            await _until(lambda: source.current is not None)
            health = await client.get("/ops/healthcheck")
            assert (health.status_code, health.text) == (200, "OK")
            assert await _generate(client, key, clock.now_ms()) == 200
        finally:
            await server.stop()


def test_unreachable_store_degrades_then_refuses_once_stale(
    world: tuple[Database, dict[str, Any]],
) -> None:
    database, key = world
    settings = Settings.from_env({}, data_dir=str(database.data_dir))
    store = SwitchableStore(open_store(settings.store_url))
    clock = FixedClock(at_ms=int(time.time() * 1000))
    server = build_worker(
        settings,
        ServeSettings(
            poll_interval_s=POLL_S, max_snapshot_age_s=MAX_AGE_S, flush_interval_s=POLL_S
        ),
        store=store,  # type: ignore[arg-type]
        clock=clock,
    )
    asyncio.run(_scenario(server, store, clock, key))
    # usage counted while the store was down was kept and written after it came back
    check = open_store(settings.store_url)
    try:
        with check.read() as tx:
            usage = {u.endpoint: u.count for u in tx.usage.list_for_key(key["key_id"])}
    finally:
        check.close()
    assert usage.get(GENERATE, 0) >= 3
