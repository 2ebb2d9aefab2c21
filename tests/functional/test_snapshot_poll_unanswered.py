"""A worker whose poll of the store never answers reports Degraded long before it refuses.

A stalled database, a connection pooler that accepts and never answers, or a reload waiting
behind a table lock (``VACUUM FULL``, ``ALTER TABLE``) leave a read waiting without failing. The
worker keeps serving the last snapshot, as it does over a store that fails, and its health
check must say so once the poll has gone unanswered for ``STALLED_POLL_MIN_S``: a key disabled
meanwhile is still accepted. Past the age bound it refuses as stale; when the poll returns, its
outcome decides.

The worker application (``build_worker``) runs in-process over a real store made with the CLI,
wrapped so that its reads wait on an event the test releases; the clock is a ``FixedClock`` the
test moves, and the poller runs as its real asyncio loop (a 20 ms poll interval).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from cli_harness import Cli, Database, settings_of

from store_wrapper import StoreWrapper
from uid2_operator.clock import FixedClock
from uid2_operator.errors import StoreUnavailable
from uid2_operator.serve_settings import ServeSettings
from uid2_operator.services.snapshot_source import STALLED_POLL_MIN_S
from uid2_operator.storage import open_store
from uid2_operator.storage.interface import ReadTx, Snapshot, Store
from uid2_operator.web.operator_api.server import OperatorServer, build_worker
from uid2_operator.wire.envelope import seal_request

pytestmark = pytest.mark.functional

MAX_AGE_S = 120
POLL_S = 0.02
STALL_MS = int(STALLED_POLL_MIN_S * 1000)
GENERATE = "/v2/token/generate"
LOGGER = "uid2_operator.services.snapshot_source"


class HeldStore(StoreWrapper):
    """A real store whose reads wait while held, as behind a stalled database or a table lock.

    ``whole``: every query waits, the change sequence's included (a stalled database or pooler);
    otherwise only the reload's reads do (a table the reload reads is locked). While ``down``,
    every query fails as an unreachable store's does, those released from waiting included."""

    def __init__(self, inner: Store, *, whole: bool) -> None:
        super().__init__(inner)
        self.whole = whole
        self.released = threading.Event()
        self.released.set()
        self.waiting = threading.Event()
        self.down = False

    def hold(self) -> None:
        self.waiting.clear()
        self.released.clear()

    def _wait(self) -> None:
        if not self.released.is_set():
            self.waiting.set()
            self.released.wait(timeout=60)
        if self.down:
            raise StoreUnavailable("The store at sqlite:///test is unavailable: switched off")

    def change_seq(self) -> int:
        if self.whole or self.down:
            self._wait()
        return super().change_seq()

    def change_state(self) -> object:
        if self.whole or self.down:
            self._wait()
        return super().change_state()

    def read(self) -> AbstractContextManager[ReadTx]:
        self._wait()
        return super().read()

    def snapshot(self, now_ms: int, since: int = 0) -> Snapshot:
        self._wait()
        return super().snapshot(now_ms, since)


def _world(database: Database) -> tuple[Cli, dict[str, Any]]:
    cli = Cli(database)
    assert cli("init").exit_code == 0
    assert cli("keys", "rotate").exit_code == 0  # creates the encryption material
    created = cli("--json", "participant", "create", "--name", "P", "--type", "publisher",
                  "--roles", "GENERATOR")  # fmt: skip
    site_id = json.loads(created.stdout)["site_id"]
    issued = cli("--json", "key", "create", "--site-id", str(site_id), "--name", "k",
                 "--roles", "GENERATOR")  # fmt: skip
    return cli, json.loads(issued.stdout)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _generate(client: httpx.AsyncClient, key: dict[str, Any], now_ms: int) -> int:
    sealed = seal_request(
        json.dumps({"email": "unanswered@example.com"}).encode(),
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


async def _until(condition: Callable[[], object], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the worker never got there"
        await asyncio.sleep(POLL_S)


async def _health(client: httpx.AsyncClient) -> tuple[int, str]:
    answer = await client.get("/ops/healthcheck")
    return answer.status_code, answer.text


async def _store_reachable_gauge(client: httpx.AsyncClient) -> str:
    metrics = (await client.get("/metrics")).text
    (line,) = [x for x in metrics.splitlines() if x.startswith("uid2_operator_store_reachable{")]
    return line.rsplit(" ", 1)[1]


async def _hold_a_poll(store: HeldStore, cli: Cli) -> None:
    """Hold the store and wait until a poll is waiting on it."""
    store.hold()
    if not store.whole:  # a change, so that the next poll reloads and meets the lock
        created = cli("participant", "create", "--name", "Q", "--type", "publisher",
                      "--roles", "GENERATOR")  # fmt: skip
        assert created.exit_code == 0
    await asyncio.to_thread(store.waiting.wait, 10)
    assert store.waiting.is_set(), "no poll ever reached the store"


def _worker(database: Database, *, whole: bool) -> tuple[OperatorServer, HeldStore, FixedClock]:
    settings = settings_of(database)
    store = HeldStore(open_store(settings.store_url), whole=whole)
    clock = FixedClock(at_ms=int(time.time() * 1000))
    serve = ServeSettings(
        poll_interval_s=POLL_S, max_snapshot_age_s=MAX_AGE_S, flush_interval_s=POLL_S
    )
    return build_worker(settings, serve, store=store, clock=clock), store, clock


async def _unanswered(
    server: OperatorServer, store: HeldStore, clock: FixedClock, cli: Cli, key: dict[str, Any]
) -> None:
    source = server.worker.source
    transport = httpx.ASGITransport(app=server)
    async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
        await server.start()
        try:
            assert await _health(client) == (200, "OK")
            await _hold_a_poll(store, cli)
            since = _when(clock.now_ms())  # the clock stands still: the poll started now

            clock.advance(STALL_MS)  # at the bound: a slow reload, nothing to report
            assert await _health(client) == (200, "OK")
            assert source.store_reachable
            assert await _store_reachable_gauge(client) == "1.0"

            clock.advance(1)  # past it
            assert await _health(client) == (
                503,
                f"Degraded: a poll of the store has not answered since {since}; serving the "
                f"last snapshot, confirmed {STALL_MS // 1000} s ago",
            )
            assert not source.store_reachable
            assert await _store_reachable_gauge(client) == "0.0"
            assert await _generate(client, key, clock.now_ms()) == 200  # still serving

            clock.advance(MAX_AGE_S * 1000 - STALL_MS)  # past the age bound
            await _until(lambda: source.current is None)
            status, text = await _health(client)
            assert status == 503
            assert text == (
                f"Snapshot is stale ({MAX_AGE_S} s since last confirmed; the bound is "
                f"{MAX_AGE_S} s): refusing API requests. A poll of the store has not answered "
                f"since {since}"
            )
            assert await _store_reachable_gauge(client) == "0.0"
            assert await _generate(client, key, clock.now_ms()) == 503

            store.released.set()  # the poll returns, and the next ones confirm the snapshot
            await _until(lambda: source.current is not None and source.confirmed_age_ms == 0)
            assert await _health(client) == (200, "OK")
            assert source.store_reachable
            assert await _store_reachable_gauge(client) == "1.0"
            assert await _generate(client, key, clock.now_ms()) == 200
        finally:
            store.released.set()
            await server.stop()


@pytest.mark.parametrize("whole", [True, False], ids=["every-query-waits", "reload-waits"])
def test_a_poll_that_does_not_answer_is_reported_degraded_then_stale_then_ok(
    database: Database, whole: bool, caplog: pytest.LogCaptureFixture
) -> None:
    cli, key = _world(database)
    server, store, clock = _worker(database, whole=whole)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        asyncio.run(_unanswered(server, store, clock, cli, key))
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    stalled = [m for m in warnings if m.startswith("a poll of the store has not answered for")]
    assert len(stalled) == 1
    assert stalled[0].startswith("a poll of the store has not answered for more than 30 s")


async def _unanswered_then_failing(
    server: OperatorServer, store: HeldStore, clock: FixedClock, cli: Cli
) -> None:
    source = server.worker.source
    transport = httpx.ASGITransport(app=server)
    async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
        await server.start()
        try:
            await _hold_a_poll(store, cli)
            since = _when(clock.now_ms())
            clock.advance(STALL_MS + 1_000)
            status, text = await _health(client)
            assert status == 503
            assert text.startswith(f"Degraded: a poll of the store has not answered since {since}")

            store.down = True  # the poll that waited fails at last, and every one after it
            store.released.set()
            await _until(lambda: source.problem is not None and "unreachable" in source.problem)
            assert await _health(client) == (
                503,
                f"Degraded: store unreachable since {since}; serving the last snapshot, "
                f"confirmed {STALL_MS // 1000 + 1} s ago",
            )
            assert not source.store_reachable
            assert await _store_reachable_gauge(client) == "0.0"

            store.down = False
            await _until(lambda: source.problem is None)
            assert await _health(client) == (200, "OK")
            assert source.store_reachable
        finally:
            store.released.set()
            await server.stop()


def test_a_poll_that_does_not_answer_then_fails_reports_the_failure(database: Database) -> None:
    cli, _key = _world(database)
    server, store, clock = _worker(database, whole=True)
    asyncio.run(_unanswered_then_failing(server, store, clock, cli))
