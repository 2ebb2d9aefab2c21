"""One operator worker process: the API over a store-backed snapshot, with health and metrics.

``create_worker_app`` is the factory ``uid2-operator serve`` starts in every worker process. It
wires, per process:

- a ``SnapshotSource`` that loads the snapshot from the store at startup and polls for changes,
  opening it with the keyring file as it is at each load (``bootstrap.follow_keyring``), so a KEK
  rotation reaches the worker without a restart;
- the operator API (``app.OperatorApi``) reading ``SnapshotSource.current`` once per request;
- a ``WriteBehind`` that aggregates usage and logout opt-outs and writes them in batches, and
  keeps the opt-outs a stop could not write in the data directory (``PENDING_OPTOUTS_DIR``),
  for the workers still running, or the next one started, to write;
- ``RequestMetrics`` counted on the request path and exported at ``/metrics``; under ``serve``
  (a runtime directory) a ``MetricsPublisher`` that writes them to this worker's metrics file,
  and a collector that reads the other workers' files, so any scrape reports every worker
  (``metrics_files`` explains why and how);
- the serve settings' token lifetimes and timestamp windows (``ServeSettings``).

``OperatorServer`` sits in front of the API and answers two paths itself: ``GET /metrics``
(Prometheus text) and ``GET /ops/healthcheck`` while the worker has a problem (503 with the
reason as plain text, operator-api §6.13: ``SnapshotSource.problem``, fixed phrases that never
carry an error's text, since anyone may ask, or else ``key_problem``: a keyset token issuance
needs has no active key); a healthy health check goes to the API (200 ``OK``). Its own answers
on the operator port are told to the same observer as the API's, under their route and timed
the same way, so the request metrics count every answer of that port.
With a metrics listener of its own (``serve --metrics-port``), ``/metrics`` is answered there
only, and that listener answers nothing else (``OperatorServer``).
Its ASGI lifespan starts and stops the background loops; shutdown flushes what is pending
(within ``write_behind.STOP_BUDGET_S``, saving the opt-outs it could not write), then removes
this worker's metrics file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric

from uid2_operator.bootstrap import follow_keyring, material_service, open_configured_store
from uid2_operator.clock import Clock, SystemClock, system_random
from uid2_operator.domain.authorization import KEYLESS_ENDPOINTS, OPERATOR_ENDPOINTS
from uid2_operator.domain.sealing import Keyring, KeyringSource
from uid2_operator.errors import MethodNotAllowed, NotFound
from uid2_operator.serve_settings import RUNTIME_DIR_VARIABLE, ServeSettings
from uid2_operator.services.replay_table import TABLE_FILE, ReplayTable
from uid2_operator.services.snapshot_loader import Loaded, load_snapshot, operator_identity
from uid2_operator.services.snapshot_source import SnapshotSource
from uid2_operator.services.write_behind import PENDING_OPTOUTS_DIR, WriteBehind
from uid2_operator.settings import Settings
from uid2_operator.storage.interface import Store
from uid2_operator.web.http_connection import REFUSED_SCOPE
from uid2_operator.web.operator_api.app import (
    ALLOW_READ,
    HEALTHCHECK,
    OperatorApi,
    OperatorApiConfig,
    Receive,
    RequestObserver,
    Scope,
    Send,
)
from uid2_operator.web.operator_api.errors import TEXT, UNAUTHORIZED, render
from uid2_operator.web.operator_api.metrics import (
    PROCESS_CPU,
    Gauge,
    MetricsCollector,
    ReplayTableCollector,
    RequestMetrics,
    process_gauges,
)
from uid2_operator.web.operator_api.metrics_files import MetricsFiles, MetricsPublisher
from uid2_operator.web.operator_api.metrics_page import MetricsPage
from uid2_operator.wire.aead import RandomBytes

log = logging.getLogger(__name__)

METRICS: Final = "/metrics"
API_ROUTES: Final = frozenset({*OPERATOR_ENDPOINTS, *KEYLESS_ENDPOINTS})
"""The paths counted under their own name when ``/metrics`` has a listener of its own: on the
operator port it is then an unknown path like any other (counted as ``other``)."""
ROUTES: Final = API_ROUTES | {METRICS}
OPTOUTS_DROPPED: Final = "uid2_operator_optouts_dropped"
COUNTERS: Final = frozenset({OPTOUTS_DROPPED, PROCESS_CPU})
"""Worker figures exported as counters (``_WorkerCollector``), the rest of them as gauges."""


@dataclass(frozen=True, slots=True)
class Worker:
    """The parts of a worker, for the server and for tests."""

    store: Store
    source: SnapshotSource
    write_behind: WriteBehind
    metrics: RequestMetrics
    registry: CollectorRegistry
    publisher: MetricsPublisher | None = None


class OperatorServer:
    """The ASGI application of one worker process (see the module docstring).

    With ``metrics_port`` (``serve --metrics-port``: the worker listens on that port too), a
    connection to that port is the metrics listener's: ``GET``/``HEAD /metrics`` is answered
    there, and any other request is answered 404 as the API answers an unknown path (without its
    CORS headers), never reaching the API nor counted; every other connection is the operator
    port's, where ``/metrics`` goes to the API like any unknown path (404, counted as ``other``:
    ``API_ROUTES``). The listener is told by the local port of the connection, ``scope["server"]``:
    the server takes it from the accepted socket's own address (``getsockname``), never from
    anything the client sends (its ``Host`` header, a proxy's headers), and serve never gives the
    two listeners the same port. A connection whose local port is unknown is the operator
    port's, so ``/metrics`` is never answered there.

    ``observer`` is the API's (``build_worker``): the answers given here on the operator port
    (the degraded health check's 503, ``/metrics``' 200 and 405) are told to it as the API's
    are, under ``HEALTHCHECK`` and ``METRICS``, with no key id, timed from the moment this layer
    knows it answers them. The metrics listener's answers are not counted."""

    def __init__(
        self,
        api: OperatorApi,
        worker: Worker,
        *,
        metrics_port: int | None = None,
        key_problem: Callable[[], str | None] | None = None,
        observer: RequestObserver | None = None,
    ) -> None:
        self._api = api
        api.dispatch_through(self)
        self.worker = worker
        self._metrics_port = metrics_port
        self._key_problem = key_problem
        self._observer = observer
        self._tasks: list[asyncio.Task[None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._metrics_page = MetricsPage(worker.registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]  # the API sends one it routes elsewhere back here, routed
            if self._metrics_port is not None and _local_port(scope) == self._metrics_port:
                if path == METRICS and scope["method"] in ("GET", "HEAD"):
                    await self._metrics(send)
                else:
                    await _answer(send, *render(NotFound()))
                return
            # Only these two paths are timed here; the API times and counts what it answers (a
            # healthy health check included), and its routes reach it with no work added here.
            if path == HEALTHCHECK:
                problem = self.worker.source.problem
                if problem is None and self._key_problem is not None:
                    problem = self._key_problem()
                if problem is not None and scope["method"] in ("GET", "HEAD"):
                    # Timed from here: a healthy health check, the benchmarks' floor, reads no
                    # clock in this layer.
                    started = time.perf_counter()
                    await _answer(send, 503, problem.encode(), TEXT)
                    if self._observer is not None:
                        status = scope.get(REFUSED_SCOPE, 503)
                        self._observer(HEALTHCHECK, None, status, time.perf_counter() - started)
                    return
            elif path == METRICS and self._metrics_port is None:
                await self._operator_port_metrics(scope, send)
                return
            await self._api(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            # No websocket routes: closing before accepting makes the server refuse the
            # handshake (403), where returning without a word would be its 500.
            await send({"type": "websocket.close", "code": 1000})

    def connection_answered(
        self, path: str, status: int, seconds: float, server: tuple[str, int | None] | None
    ) -> None:
        """An answer the connection gave itself (``web.http_connection``: a malformed request's
        400, 408, 413, 431, the 503 at shutdown), counted as every answer of the operator port
        is, with no key id (none was checked). ``server`` is the local address the connection
        came in on: the metrics port's answers are not counted. The admin port's server has no
        such method."""
        if self._observer is None:
            return
        port = self._metrics_port
        if port is not None and server is not None and server[1] == port:
            return
        self._observer(path, None, status, seconds)

    async def _operator_port_metrics(self, scope: Scope, send: Send) -> None:
        """``/metrics`` on the operator port, counted under ``METRICS``."""
        observer = self._observer
        started = time.perf_counter() if observer is not None else 0.0
        if scope["method"] in ("GET", "HEAD"):
            await self._metrics(send)
            status = 200
        else:
            # A known path: the wrong method is a 405, as on the API's own paths.
            await _answer(send, *render(MethodNotAllowed()), ALLOW_READ)
            status = 405
        if observer is not None:
            status = scope.get(REFUSED_SCOPE, status)
            observer(METRICS, None, status, time.perf_counter() - started)

    async def _metrics(self, send: Send) -> None:
        # The collector publishes the figures it reports as ours first, so that they are in our
        # file too (MetricsCollector.publish_to, metrics_files). Rendered after this request
        # came in, at most once in a span bounded by the last rendering's cost (MetricsPage).
        body = await self._metrics_page.body()
        await _answer(send, 200, body, CONTENT_TYPE_LATEST.encode())

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def start(self) -> None:
        """Load the first snapshot (a failure is reported on the health check and retried by
        the poller), then start the poller, the flusher (which writes the opt-outs stops saved,
        first and then every few seconds) and the metrics publisher."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.worker.source.refresh)
        self._tasks = [asyncio.create_task(self.worker.source.run(), name="snapshot-poller")]
        self._flusher = asyncio.create_task(self.worker.write_behind.run(), name="write-behind")
        if self.worker.publisher is not None:
            self._tasks.append(
                asyncio.create_task(self.worker.publisher.run(), name="metrics-publisher")
            )

    async def stop(self) -> None:
        """Stop the loops, publish the final metrics (the other workers report them while this
        one flushes), let the flusher make its last flush (bounded in time: what it cannot
        write is saved, ``write_behind``), close, and remove the metrics file."""
        publisher = self.worker.publisher
        self.worker.source.stop()
        self.worker.write_behind.stop()
        if publisher is not None:
            publisher.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if publisher is not None:
            publisher.publish()
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        self.worker.write_behind.close()
        self.worker.source.close()
        self.worker.store.close()
        if publisher is not None:
            publisher.close()


def _local_port(scope: Scope) -> int | None:
    """The port of this server the request's connection came in on (None when unknown)."""
    server = scope.get("server")
    return None if server is None else server[1]


async def _answer(
    send: Send, status: int, body: bytes, content_type: bytes, *more: tuple[bytes, bytes]
) -> None:
    """One whole answer with its ``Content-Length``, so the server need not chunk it (for ``HEAD``
    the length a ``GET`` gets; the server does not send the body), and ``more`` header fields."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", b"%d" % len(body)),
                *more,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def build_worker(
    settings: Settings,
    serve: ServeSettings,
    *,
    store: Store | None = None,
    keyring: KeyringSource | None = None,
    clock: Clock | None = None,
    random: RandomBytes = system_random,
    runtime_dir: Path | None = None,
    metrics_port: int | None = None,
) -> OperatorServer:
    """Wire one worker over ``store`` (default: the configured one, opened lazily).

    ``metrics_port`` is the port of the worker's metrics listener (``serve --metrics-port``),
    None when ``/metrics`` is answered on the operator port (``OperatorServer``).

    ``runtime_dir`` is the directory the workers of one serve share (``RUNTIME_DIR_VARIABLE``);
    None for a worker on its own (tests, benchmarks). A worker with one refuses replays through
    the table the serving process created there (every worker's, and any restarted one's); a
    worker on its own keeps a replay cache of its own.

    ``keyring`` defaults to the configured one, followed (``bootstrap.follow_keyring``): each
    snapshot load opens everything with the keyring file as it is then. A reload that failed
    for want of a KEK version is retried at every poll (the store's sequence is still past the
    snapshot's), so the worker recovers as soon as the file holds that version."""
    now = clock or SystemClock()
    ring = follow_keyring(settings) if keyring is None else keyring
    # The parent checked the schema before starting workers; a worker must start (and report
    # degraded) even while the store is unreachable, so nothing connects here.
    lifetimes = serve.token_lifetimes(settings.environment)
    db = store or open_configured_store(settings, check_schema=False)
    material = material_service(settings, db, ring, now, random)
    identity = replace(
        operator_identity(
            settings.environment, settings.identity_scope, identity_v3=settings.identity_v3
        ),
        client_side_generate=serve.client_side_generate,
    )

    def load(previous: Loaded | None, generation: int) -> Loaded:
        return load_snapshot(
            db,
            ring,
            material,
            identity=identity,
            lifetimes=lifetimes,
            generation=generation,
            now_ms=now.now_ms(),
            previous=previous,
        )

    source = SnapshotSource(
        load,
        db.change_state,
        now,
        poll_interval_s=serve.poll_interval_s,
        max_snapshot_age_s=serve.max_snapshot_age_s,
    )
    write_behind = WriteBehind(
        db,
        now,
        flush_interval_s=serve.flush_interval_s,
        on_optouts=source.add_optouts,
        on_written=source.optouts_written,
        on_dropped=source.optouts_dropped,
        saved_dir=settings.data_dir / PENDING_OPTOUTS_DIR,
    )
    metrics = RequestMetrics(ROUTES if metrics_port is None else API_ROUTES)
    usage = write_behind.usage
    refused = UNAUTHORIZED.http_status

    def observe(path: str, key_id: str | None, status: int, seconds: float) -> None:
        metrics.observe(path, key_id, status, seconds)
        # A 401 is a refused credential: its key id labels the metrics, but only requests the
        # key authenticated are its usage (a forged text naming a public key id must not move
        # that key's counts or its last use).
        if key_id is not None and status != refused:
            usage.add(key_id, path)

    registry, publisher = _registry(metrics, _gauges(source, write_behind), runtime_dir)
    replay = (
        None
        if runtime_dir is None
        else ReplayTable.open(
            runtime_dir / TABLE_FILE, max_past_ms=serve.request_window.max_past_ms
        )
    )
    if replay is not None:
        registry.register(ReplayTableCollector(replay))
    api = OperatorApi(
        snapshot_provider=lambda: source.current,
        clock=now,
        random=random,
        record_optout=write_behind.record_optout,
        config=OperatorApiConfig(
            window=serve.request_window,
            cstg_window=serve.cstg_window,
            tcf_vendor_id=serve.tcf_vendor_id,
        ),
        observer=observe,
        replay=replay,
    )
    worker = Worker(db, source, write_behind, metrics, registry, publisher)
    return OperatorServer(
        api,
        worker,
        metrics_port=metrics_port,
        key_problem=lambda: key_problem(source, now),
        observer=observe,
    )


def key_problem(source: SnapshotSource, clock: Clock) -> str | None:
    """What the health check answers while the snapshot served has no active key in a keyset
    token issuance needs (``Snapshot.keysets_without_active_key`` at the clock's time of day),
    else None. Every request that needs such a key is answered 500 meanwhile; the serving
    process's key rotation makes one as soon as it sees the gap, and the worker's next reload
    brings it."""
    snapshot = source.current
    if snapshot is None:
        return None
    missing = snapshot.keysets_without_active_key(clock.now_ms())
    if not missing:
        return None
    return (
        f"Degraded: no active encryption key in the {', '.join(missing)}; token requests "
        "that need one fail until the key rotation makes one"
    )


def _registry(
    metrics: RequestMetrics, gauges: list[Gauge], runtime_dir: Path | None
) -> tuple[CollectorRegistry, MetricsPublisher | None]:
    """The worker's ``/metrics`` registry and, when it shares a runtime directory with other
    workers, the publisher of its figures (its collector then reads theirs, and publishes what
    it reports as this worker's own before answering).

    The process figures (``process_gauges``) are among the worker's figures, labelled and
    published like the others, so every scrape shows every worker's; with no runtime directory
    they are this worker's alone, still under its ``worker`` label."""
    registry = CollectorRegistry(auto_describe=False)
    worker = str(os.getpid())
    files = None if runtime_dir is None else MetricsFiles(runtime_dir, worker)
    collector = _WorkerCollector(
        metrics,
        [*gauges, *process_gauges()],
        worker=worker,
        peers=None if files is None else files.peers,
    )
    registry.register(collector)
    publisher = None if files is None else MetricsPublisher(files, collector.figures)
    if publisher is not None:
        collector.publish_to(publisher.publish)
    return registry, publisher


class _WorkerCollector(MetricsCollector):
    """A ``MetricsCollector`` that exports the worker figures named in ``COUNTERS`` as counters
    (``<name>_total``: the opt-outs dropped, the process's CPU seconds). They travel with the
    gauges, read at scrape time and published to the metrics files the same way, so every
    worker's value is in any scrape under its ``worker`` label; only their type differs: they
    never go down while their worker lives."""

    def collect(self) -> Iterator[Metric]:
        for family in super().collect():
            if family.name not in COUNTERS:
                yield family
                continue
            counter = CounterMetricFamily(family.name, family.documentation, labels=["worker"])
            for sample in family.samples:
                counter.add_metric([sample.labels["worker"]], sample.value)
            yield counter


def _gauges(source: SnapshotSource, write_behind: WriteBehind) -> list[Gauge]:
    def generation() -> float | None:
        snapshot = source.snapshot
        return None if snapshot is None else float(snapshot.generation)

    def change_seq() -> float | None:
        snapshot = source.snapshot
        return (
            None if snapshot is None or snapshot.change_seq is None else float(snapshot.change_seq)
        )

    def confirmed_age() -> float | None:
        age_ms = source.confirmed_age_ms
        return None if age_ms is None else age_ms / 1000

    return [
        ("uid2_operator_snapshot_generation", "Generation of the loaded snapshot.", generation),
        ("uid2_operator_snapshot_change_seq", "Store change sequence of the snapshot.", change_seq),
        (
            "uid2_operator_snapshot_confirmed_age_seconds",
            "Seconds since a poll last confirmed the snapshot is current.",
            confirmed_age,
        ),
        (
            "uid2_operator_store_reachable",
            "0 while the store cannot be reached, else 1 (also while a reload fails with the "
            "store reachable: the health check says why).",
            lambda: 1.0 if source.store_reachable else 0.0,
        ),
        (
            "uid2_operator_serving",
            "1 when API requests are answered (a snapshot is loaded and fresh enough).",
            lambda: 0.0 if source.current is None else 1.0,
        ),
        (
            "uid2_operator_pending_usage_rows",
            "Usage counters not yet written to the store.",
            lambda: float(write_behind.pending_usage_rows),
        ),
        (
            "uid2_operator_pending_optouts",
            "Logout opt-outs not yet written to the store.",
            lambda: float(write_behind.pending_optouts),
        ),
        (
            "uid2_operator_snapshot_loads",
            "Snapshots loaded by this worker.",
            lambda: float(source.loads),
        ),
        (
            OPTOUTS_DROPPED,
            "Logout opt-outs this worker dropped, never to be written, because its queue for the "
            "store was full (the store unreachable).",
            lambda: float(write_behind.optouts.dropped),
        ),
    ]


def create_worker_app(
    metrics_port: int | None = None, keyring_fallback: Keyring | None = None
) -> OperatorServer:
    """The worker factory ``uid2-operator serve`` runs in each worker: settings come from the
    environment the serving process prepared (UID2_DATA_DIR, UID2_DATABASE_URL, ...), the port
    of the worker's metrics listener (``--metrics-port``, resolved) from serve itself, and so
    does ``keyring_fallback``, the keyring serve holds, which the worker starts with
    if the keyring file cannot be used as it starts (``bootstrap.KeyringFile``): a worker
    restarted while the file is being replaced serves on, as the others do."""
    runtime_dir = os.environ.get(RUNTIME_DIR_VARIABLE)
    settings = Settings.from_env()
    return build_worker(
        settings,
        ServeSettings.from_env(),
        runtime_dir=Path(runtime_dir) if runtime_dir else None,
        metrics_port=metrics_port,
        keyring=follow_keyring(settings, fallback=keyring_fallback),
    )
