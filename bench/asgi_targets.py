"""The ASGI applications the throughput benchmark serves, importable by any ASGI server.

``hello`` is the floor: the least an ASGI application can do per request (a fixed two-byte
answer, like the operator's health check). ``operator_app`` is a factory that builds the real
operator application over the deterministic benchmark world named by the environment (see
``operator_world``), so the server process holds its own snapshot. It is wired as
``uid2-operator serve`` wires a worker: the API sits behind the worker's ``OperatorServer`` (which
looks at the snapshot source's problem on every health check and answers ``/metrics`` itself),
the request observer counts Prometheus metrics and per-key usage on every request, the health
check looks for a keyset token issuance needs without an active key, and replays
are refused through a shared replay table (the default size) in a file mapped from a temporary
directory (``serve_like_app``); only the store behind them, and the loops that poll and flush it,
are absent. ``serve_http`` is the HTTP protocol a served worker's connections run on, for the
server's ``--http`` option (uvicorn), so that both the hello-world floor and the operator are
measured behind what ``serve`` runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry

from operator_world import world_from_environment
from uid2_operator.clock import SystemClock, system_random
from uid2_operator.serve_settings import ServeSettings
from uid2_operator.services.replay_table import TABLE_FILE, ReplayTable
from uid2_operator.services.snapshot import Snapshot
from uid2_operator.services.snapshot_source import SnapshotSource
from uid2_operator.services.write_behind import UsageMeter
from uid2_operator.web.http_connection import HttpConnection, HttpLimits, http_protocol
from uid2_operator.web.operator_api.app import BODY_LIMIT, OperatorApi, acknowledge_lifespan
from uid2_operator.web.operator_api.metrics import (
    ReplayTableCollector,
    RequestMetrics,
)
from uid2_operator.web.operator_api.server import ROUTES, OperatorServer, Worker, key_problem
from uid2_operator.web.operator_api.server import _registry as server_registry
from uid2_operator.wire.envelope import DEFAULT_TIMESTAMP_WINDOW

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
}
_BODY = {"type": "http.response.body", "body": b"OK"}

serve_http: type[HttpConnection] = http_protocol(
    HttpLimits.of(ServeSettings.from_env(), BODY_LIMIT)
)
"""The protocol class ``uid2-operator serve`` gives each worker (``cli.serve._worker_main``):
uvicorn's httptools protocol with the limits and timeouts of the serve settings."""


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """A bare ASGI hello-world (lifespan acknowledged, every HTTP request answered ``OK``)."""
    if scope["type"] == "lifespan":
        await acknowledge_lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    await send(dict(_START))
    await send(dict(_BODY))


def shared_replay_table(max_past_ms: int) -> ReplayTable:
    """A new replay table of the served default size, as ``serve`` makes one for its workers:
    created in a private temporary directory (in ``/dev/shm`` where the machine has it) and
    mapped; the directory is removed at once (the mapping and the lock live on with the open
    file), so nothing is left behind however the benchmark ends."""
    shm = Path("/dev/shm")  # noqa: S108 (mkdtemp makes a new 0700 directory with a random name)
    parent = str(shm) if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None
    directory = Path(tempfile.mkdtemp(prefix="uid2-bench-", dir=parent))
    try:
        ReplayTable.create(directory / TABLE_FILE, max_past_ms=max_past_ms)
        return ReplayTable.open(directory / TABLE_FILE)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class _LoadedSource:
    """The snapshot source of a worker whose snapshot never fails to load or goes stale."""

    current: Snapshot | None = None
    problem: None = None


@dataclass(frozen=True)
class _BenchWorker:
    """What ``OperatorServer`` reads of its worker while it answers requests: the source's
    problem (none), the ``/metrics`` registry, and the metrics publisher (none: one worker, no
    runtime directory shared with others)."""

    registry: CollectorRegistry
    source: _LoadedSource = _LoadedSource()
    publisher: None = None


class BenchServer(OperatorServer):
    """``OperatorServer`` over a world built once: its request path is the served worker's; its
    lifespan starts and stops nothing (there is no store to poll, nor usage to flush to one)."""

    async def start(self) -> None:
        return

    async def stop(self) -> None:
        return


def serve_like_app(snapshot: Snapshot) -> BenchServer:
    """The operator API over ``snapshot`` as a served worker runs it: behind ``OperatorServer``,
    with the observer a served worker has (metrics and usage counted per request) and its
    replay guard, a shared replay table, as ``web.operator_api.server.build_worker`` wires them."""
    metrics = RequestMetrics(ROUTES)
    usage = UsageMeter()

    def observe(path: str, key_id: str | None, status: int, seconds: float) -> None:
        metrics.observe(path, key_id, status, seconds)
        if key_id is not None and status != 401:  # a 401 is a refused key: not its usage
            usage.add(key_id, path)

    replay = shared_replay_table(DEFAULT_TIMESTAMP_WINDOW.max_past_ms)
    registry, _ = server_registry(metrics, [], None)  # the worker's, process figures included
    registry.register(ReplayTableCollector(replay))
    clock = SystemClock()
    api = OperatorApi(
        snapshot_provider=lambda: snapshot,
        clock=clock,
        random=system_random,
        observer=observe,
        replay=replay,
    )
    source = _LoadedSource(snapshot)
    return BenchServer(
        api,
        cast(Worker, _BenchWorker(registry, source)),
        key_problem=lambda: key_problem(cast(SnapshotSource, source), clock),
    )


def operator_app() -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The operator application over the benchmark world (an ASGI factory)."""
    return serve_like_app(world_from_environment().snapshot)
