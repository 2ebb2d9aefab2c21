"""Operator throughput on one worker: hello-world floor, health check, generate, v3 map.

One run, one process tree. For each ASGI server it starts one server process on 127.0.0.1,
pinned to one core, and drives it from this process (pinned to another core) with a bounded
keep-alive load (``http_load``), warm-up first:

(a) a bare ASGI hello-world on that server,
(b) the operator's ``GET /ops/healthcheck``,
(c) ``POST /v2/token/generate``, every request its own envelope (fresh nonce, current timestamp),
(d) ``POST /v3/identity/map`` with 1,000 emails per request, binary envelope,

then, with no server running and pinned to the server's core, (e) the same v3 derivation called
in-process (no HTTP, no envelope) for mapped identities per second. It prints requests/s for each
and the ratios healthcheck/hello-world, generate/healthcheck and mapped identities/s over HTTP
against in-process, every ratio from figures of this same run.

Usage::

    .venv/bin/python bench/operator_throughput.py            # every server found, wrk if present
    .venv/bin/python bench/operator_throughput.py --servers uvicorn --duration 5 --tool asyncio

Nothing here decides pass or fail: the figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from asgi_targets import serve_like_app
from http_load import (
    WRK_INSTALL_HINT,
    LoadResult,
    Target,
    Tool,
    default_tool,
    http_request,
    run_load,
    wrk_path,
)
from operator_world import DEFAULT_BUCKETS, BenchWorld, build_world, world_environment
from uid2_operator.domain.credentials import effective_roles
from uid2_operator.services import data_plane
from uid2_operator.services.data_plane import StreamedReply
from uid2_operator.services.snapshot import Caller
from uid2_operator.wire.envelope import (
    DEFAULT_TIMESTAMP_WINDOW,
    OCTET_STREAM,
    frame_response,
    open_response,
    parse_request,
    seal_request,
    seal_response,
    unframe_response,
)

BENCH_DIR: Final = Path(__file__).resolve().parent
HEALTHCHECK: Final = "/ops/healthcheck"
GENERATE: Final = "/v2/token/generate"
MAP_V3: Final = "/v3/identity/map"
HOST: Final = "127.0.0.1"
# Upper bound on the bytes of pre-built requests held for one measurement.
MAX_REQUEST_BYTES: Final = 512 << 20
# How many times a measurement that ran out of requests is run again, with twice as many each time.
EXHAUSTED_RETRIES: Final = 2
TARGETS: Final = {
    "healthcheck/hello-world": 0.9,
    "generate/healthcheck": 0.5,
    "map HTTP/in-process": 0.5,
}
RATIO_SIDES: Final = {
    "healthcheck/hello-world": ("healthcheck", "hello"),
    "generate/healthcheck": ("generate", "healthcheck"),
}
"""The HTTP measurements each server-against-server ratio divides."""
SATURATED: Final = 0.9
"""The share of a measurement's time the server must spend on the CPU for its rate to be the
server's: below it, the load generator (or other work on the machine) set the rate, and a ratio
with that rate on one side says nothing of the server."""


# ----------------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class ServerKind:
    """How to start one ASGI server with one worker process."""

    name: str
    module: str
    describe: str
    args: Callable[[int, str, bool], list[str]]

    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def version(self) -> str:
        return metadata.version(self.module)


def _uvicorn_args(port: int, app: str, factory: bool) -> list[str]:
    return [
        "-m",
        "uvicorn",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--loop",
        "uvloop",
        "--http",  # serve's workers' protocol: uvicorn's httptools one, guarded
        "asgi_targets:serve_http",
        "--lifespan",
        "on",
        "--no-access-log",
        "--no-proxy-headers",  # as serve runs it
        "--log-level",
        "warning",
        *(["--factory"] if factory else []),
        app,
    ]


def _granian_args(extra: Sequence[str]) -> Callable[[int, str, bool], list[str]]:
    def args(port: int, app: str, factory: bool) -> list[str]:
        return [
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            "1",
            "--runtime-threads",
            "1",
            "--runtime-mode",
            "st",
            "--loop",
            "uvloop",
            "--http",
            "1",
            "--no-ws",
            "--no-access-log",
            "--log-level",
            "warning",
            *extra,
            *(["--factory"] if factory else []),
            app,
        ]

    return args


SERVERS: Final = {
    "uvicorn": ServerKind(
        "uvicorn",
        "uvicorn",
        "uvicorn, uvloop + httptools (as serve runs it), 1 worker",
        _uvicorn_args,
    ),
    "granian": ServerKind(
        "granian",
        "granian",
        "granian ASGI, 1 worker, single-threaded runtime, uvloop",
        _granian_args([]),
    ),
    "granian-rust-tasks": ServerKind(
        "granian-rust-tasks",
        "granian",
        "granian as above with --task-impl rust (experimental in granian)",
        _granian_args(["--task-impl", "rust"]),
    ),
}


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def _healthy(port: int, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=2)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
    except OSError:
        return False
    return status == 200


@dataclass(frozen=True)
class ServerCpu:
    """CPU time a server process spent (seconds, all its threads), from ``/proc``."""

    user_s: float
    system_s: float


def process_cpu(group: int) -> ServerCpu | None:
    """User and system CPU seconds so far of every live process in process group ``group``
    (the server and any worker it forked); None where ``/proc`` cannot tell."""
    user = system = 0
    found = False
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group:
            found = True
            user += int(fields[11])
            system += int(fields[12])
    if not found:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return ServerCpu(user / ticks, system / ticks)


@dataclass(frozen=True)
class CpuPerRequest:
    """The server process's CPU per answered request during one measurement, in µs."""

    user_us: float
    system_us: float

    @property
    def total_us(self) -> float:
        return self.user_us + self.system_us


def per_request(before: ServerCpu | None, after: ServerCpu | None, ok: int) -> CpuPerRequest | None:
    if before is None or after is None or ok == 0:
        return None
    return CpuPerRequest(
        (after.user_s - before.user_s) / ok * 1e6, (after.system_s - before.system_s) / ok * 1e6
    )


@dataclass(frozen=True)
class RunningServer:
    target: Target
    pid: int


@contextlib.contextmanager
def running_server(
    kind: ServerKind, app: str, *, factory: bool, env: dict[str, str], cpu: int | None
) -> Iterator[RunningServer]:
    """Start ``app`` under ``kind`` on a free loopback port; stop its process group on exit."""
    port = _free_port()
    command = [sys.executable, *kind.args(port, app, factory)]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    full_env = {
        **os.environ,
        **env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")])),
    }
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"uid2-bench-{kind.name}-{port}.log"  # noqa: S108
    with log.open("w") as log_file:
        proc = subprocess.Popen(  # noqa: S603 (fixed argument list)
            command, env=full_env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while not _healthy(port, HEALTHCHECK):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind.name} did not start; see {log}:\n{log.read_text()}")
            time.sleep(0.1)
        # A new session: the server and every process it forks share the process group proc.pid.
        yield RunningServer(Target(HOST, port), proc.pid)
        log.unlink(missing_ok=True)  # kept only when something went wrong
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


# ---------------------------------------------------------------------------------- requests


@dataclass
class Envelopes:
    """Builds enveloped requests for one credential, each with its own nonce and timestamp."""

    world: BenchWorld
    target: Target

    def seal(self, payload: bytes) -> tuple[bytes, bytes]:
        nonce = os.urandom(8)
        sealed = seal_request(
            payload,
            secret=self.world.secret,
            now_ms=time.time_ns() // 1_000_000,
            nonce=nonce,
            random=os.urandom,
        )
        return sealed, nonce

    def request(self, path: str, payload: bytes, *, binary: bool) -> bytes:
        sealed, _ = self.seal(payload)
        body = sealed if binary else _b64(sealed)
        content_type = OCTET_STREAM if binary else "text/plain"
        return http_request(
            "POST",
            path,
            self.target,
            headers=[
                ("Authorization", f"Bearer {self.world.api_key}"),
                ("Content-Type", content_type),
            ],
            body=body,
        )


def _b64(data: bytes) -> bytes:
    import base64  # noqa: PLC0415

    return base64.b64encode(data)


def generate_payload(index: int) -> bytes:
    return json.dumps({"email": f"user{index}@example.com"}).encode()


def map_emails(count: int) -> list[str]:
    return [f"mapped.user{i}@example.com" for i in range(count)]


def probe(envelopes: Envelopes, path: str, payload: bytes, *, binary: bool) -> str | None:
    """None when ``path`` answers a sealed success; otherwise why it cannot be measured."""
    sealed, nonce = envelopes.seal(payload)
    body = sealed if binary else _b64(sealed)
    conn = http.client.HTTPConnection(envelopes.target.host, envelopes.target.port, timeout=30)
    try:
        conn.request(
            "POST",
            path,
            body=body,
            headers={
                "Authorization": f"Bearer {envelopes.world.api_key}",
                "Content-Type": OCTET_STREAM if binary else "text/plain",
            },
        )
        response = conn.getresponse()
        content = response.read()
    finally:
        conn.close()
    if response.status != 200:
        return f"{path} answered {response.status}: {content[:200]!r}"
    try:
        answer = open_response(
            unframe_response(content, binary), secret=envelopes.world.secret, nonce=nonce
        )
    except Exception as exc:  # any failure to open means the endpoint is not ready to measure
        return f"{path} answered 200 but the response did not open: {exc!r}"
    if answer.get("status") != "success":
        return f"{path} answered status {answer.get('status')!r}"
    return None


# ------------------------------------------------------------------------------- measurement


@dataclass
class Settings:
    tool: Tool
    duration_s: float
    warmup_s: float
    connections: int
    map_connections: int
    map_batch: int
    inprocess_s: float
    rounds: int
    server_cpu: int | None
    client_cpu: int | None


def _combine(slices: Sequence[LoadResult]) -> LoadResult:
    """Several runs of one load as one: summed counts and time, median p50, worst p99."""
    p50s = sorted(r.p50_ms for r in slices if r.p50_ms is not None)
    p99s = [r.p99_ms for r in slices if r.p99_ms is not None]
    return LoadResult(
        tool=slices[0].tool,
        completed=sum(r.completed for r in slices),
        ok=sum(r.ok for r in slices),
        socket_errors=sum(r.socket_errors for r in slices),
        elapsed_s=sum(r.elapsed_s for r in slices),
        p50_ms=p50s[len(p50s) // 2] if p50s else None,
        p99_ms=max(p99s) if p99s else None,
        exhausted=any(r.exhausted for r in slices),
    )


def measure_interleaved(
    settings: Settings,
    targets: Sequence[Target],
    cpu: tuple[dict[str, CpuPerRequest], Sequence[tuple[int, int, str]]] | None = None,
) -> list[LoadResult]:
    """Repeatable GETs on several servers, in alternating slices so drift hits all alike.

    Each target gets its warm-up, then ``settings.rounds`` slices of ``duration / rounds``
    seconds, taken in turn (A B A B ...); each result sums its slices. ``cpu``: where to record,
    and for each server to count (index of its target, its process group, under which name):
    that server's CPU per answer counted ok (``LoadResult``) over its measured slices only, its
    warm-up and the others' slices left out.
    """
    requests = [[http_request("GET", HEALTHCHECK, t)] for t in targets]
    counted = {index: (group, name) for index, group, name in (cpu[1] if cpu else ())}
    spent = {index: ServerCpu(0.0, 0.0) for index in counted}

    def run(index: int, duration: float) -> LoadResult:
        return run_load(
            settings.tool,
            requests[index],
            targets[index],
            connections=settings.connections,
            duration_s=duration,
            cycle=True,
        )

    for index in range(len(targets)):
        run(index, settings.warmup_s)
    slices: list[list[LoadResult]] = [[] for _ in targets]
    for _ in range(settings.rounds):
        for index in range(len(targets)):
            group = counted[index][0] if index in counted else None
            before = process_cpu(group) if group is not None else None
            slices[index].append(run(index, settings.duration_s / settings.rounds))
            after = process_cpu(group) if group is not None else None
            if before is not None and after is not None:
                spent[index] = ServerCpu(
                    spent[index].user_s + after.user_s - before.user_s,
                    spent[index].system_s + after.system_s - before.system_s,
                )
    results = [_combine(s) for s in slices]
    if cpu is not None:
        for index, (_group, name) in counted.items():
            used = per_request(ServerCpu(0.0, 0.0), spent[index], results[index].ok)
            if used is not None:
                cpu[0][name] = used
    return results


def measure_enveloped(
    settings: Settings,
    build: Callable[[int], bytes],
    target: Target,
    *,
    connections: int,
    first_guess_rps: float,
    request_size: int,
    cpu: tuple[int, dict[str, CpuPerRequest], str] | None = None,
) -> LoadResult:
    """Warm-up (which also estimates the rate), then a run with enough fresh envelopes.

    Requests are built right before each run so their timestamps are current; a run that uses
    up its requests is repeated with twice as many, at most ``EXHAUSTED_RETRIES`` times (bounded
    by ``MAX_REQUEST_BYTES``).
    """
    cap = max(connections * 4, MAX_REQUEST_BYTES // max(request_size, 1))
    rate = first_guess_rps
    result: LoadResult | None = None
    for duration, keep in ((settings.warmup_s, False), (settings.duration_s, True)):
        count = min(cap, int(rate * duration * 1.5) + connections * 4)
        for _attempt in range(1 + EXHAUSTED_RETRIES):
            requests = [build(i) for i in range(count)]
            before = process_cpu(cpu[0]) if cpu is not None else None
            result = run_load(
                settings.tool, requests, target, connections=connections, duration_s=duration
            )
            if keep and cpu is not None:
                used = per_request(before, process_cpu(cpu[0]), result.ok)
                if used is not None:
                    cpu[1][cpu[2]] = used
            if not result.exhausted or count >= cap:
                break
            count = min(cap, count * 2)
        assert result is not None
        rate = max(result.rps, 1.0)
        if keep:
            return result
    raise AssertionError("unreachable")


@dataclass
class ServerFigures:
    kind: ServerKind
    hello: LoadResult | None = None
    healthcheck: LoadResult | None = None
    generate: LoadResult | None = None
    map_v3: LoadResult | None = None
    skipped: list[str] = field(default_factory=list)
    cpu: dict[str, CpuPerRequest] = field(default_factory=dict)
    """The operator process's CPU per answered request, by measurement."""
    map_in_process: list[float] = field(default_factory=list)
    """In-process v3 map derivations, identities/s, measured right before and right after the
    HTTP map (``map_in_process_beside``): the map ratio's baseline, taken beside what it
    divides, not after every server has stopped."""


def run_server(
    kind: ServerKind, settings: Settings, world: BenchWorld, world_env: dict[str, str]
) -> ServerFigures:
    figures = ServerFigures(kind)
    print(f"\n== {kind.describe} ({kind.module} {kind.version()})", flush=True)
    with (
        running_server(
            kind, "asgi_targets:hello", factory=False, env={}, cpu=settings.server_cpu
        ) as hello_server,
        running_server(
            kind, "asgi_targets:operator_app", factory=True, env=world_env, cpu=settings.server_cpu
        ) as operator_server,
    ):
        t = operator_server.target
        group = operator_server.pid
        # The operator's CPU is counted over its own measured slices only.
        figures.hello, figures.healthcheck = measure_interleaved(
            settings,
            [hello_server.target, t],
            cpu=(figures.cpu, [(0, hello_server.pid, "hello"), (1, group, "healthcheck")]),
        )
        print(f"  (a) hello-world         {figures.hello.summary()}", flush=True)
        print(f"  (b) /ops/healthcheck    {figures.healthcheck.summary()}", flush=True)
        envelopes = Envelopes(world, t)
        floor = figures.healthcheck.rps

        why = probe(envelopes, GENERATE, generate_payload(0), binary=False)
        if why is None:
            sample = envelopes.request(GENERATE, generate_payload(0), binary=False)
            figures.generate = measure_enveloped(
                settings,
                lambda i: envelopes.request(GENERATE, generate_payload(i), binary=False),
                t,
                connections=settings.connections,
                first_guess_rps=floor,
                request_size=len(sample),
                cpu=(group, figures.cpu, "generate"),
            )
            print(f"  (c) /v2/token/generate  {figures.generate.summary()}", flush=True)
        else:
            figures.skipped.append(f"(c) skipped: {why}")
            print(f"  (c) skipped: {why}", flush=True)

        map_payload = json.dumps({"email": map_emails(settings.map_batch)}).encode()
        why = probe(envelopes, MAP_V3, map_payload, binary=True)
        if why is None:
            sample = envelopes.request(MAP_V3, map_payload, binary=True)
            figures.map_in_process.append(map_in_process_beside(world, settings))
            figures.map_v3 = measure_enveloped(
                settings,
                lambda _i: envelopes.request(MAP_V3, map_payload, binary=True),
                t,
                connections=settings.map_connections,
                first_guess_rps=floor / settings.map_batch * 20,
                request_size=len(sample),
                cpu=(group, figures.cpu, "map_v3"),
            )
            figures.map_in_process.append(map_in_process_beside(world, settings))
            print(
                f"  (d) /v3/identity/map    {figures.map_v3.summary()}"
                f" = {figures.map_v3.rps * settings.map_batch:,.0f} identities/s",
                flush=True,
            )
            before, after = figures.map_in_process
            print(
                f"      in-process, pinned like the server, just before and after (d):"
                f" {before:,.0f} and {after:,.0f} identities/s",
                flush=True,
            )
        else:
            figures.skipped.append(f"(d) skipped: {why}")
            print(f"  (d) skipped: {why}", flush=True)
    return figures


# -------------------------------------------------------------------------------- in-process


@dataclass(frozen=True)
class InProcess:
    map_identities_per_s: float
    map_with_envelope_identities_per_s: float
    generate_us: float
    generate_with_envelope_us: float
    app_healthcheck_us: float
    app_generate_us: float


class AppRefused(RuntimeError):
    """The application called directly did not answer a request with a 2xx: its time would be
    that of a refusal, not of the work the measurement names."""


def measure_app_direct(
    world: BenchWorld, budget_s: float, max_requests: int
) -> tuple[float, float]:
    """Microseconds per request of the operator's ASGI app called directly, with no server.

    Health check and generate (fresh envelopes, so replay protection and everything else on the
    request path run): what is left of a request's cost over HTTP is the server's. Only 2xx
    answers are counted, and any other answer stops the measurement (``AppRefused``): a refused
    key or secret is answered far faster than a generate.
    """
    app = serve_like_app(world.snapshot)
    envelopes = [
        _b64(
            seal_request(
                generate_payload(i),
                secret=world.secret,
                now_ms=time.time_ns() // 1_000_000,
                nonce=os.urandom(8),
                random=os.urandom,
            )
        )
        for i in range(max_requests)
    ]
    auth = (b"authorization", f"Bearer {world.api_key}".encode())
    status: list[int] = []

    async def sink(message: Any) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    async def drive(path: str, method: str, bodies: Sequence[bytes]) -> float:
        count = 0
        start = time.perf_counter()
        deadline = start + budget_s
        for body in bodies:
            messages = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive(messages: list[dict[str, Any]] = messages) -> dict[str, Any]:
                return messages.pop()

            headers = [
                auth,
                (b"content-type", b"text/plain"),
                (b"content-length", b"%d" % len(body)),
            ]
            scope = {"type": "http", "path": path, "method": method, "headers": headers}
            status.clear()
            await app(scope, receive, sink)
            if len(status) != 1 or not 200 <= status[0] < 300:
                answered = status[0] if status else "no answer"
                raise AppRefused(
                    f"(f) {method} {path} called directly answered {answered} after {count} 2xx"
                    " answers: refusing to report the time of a refusal as the endpoint's"
                )
            count += 1
            if time.perf_counter() >= deadline:
                break
        return (time.perf_counter() - start) / count * 1e6

    health = asyncio.run(drive(HEALTHCHECK, "GET", [b""] * max_requests))
    generate = asyncio.run(drive(GENERATE, "POST", envelopes))
    return health, generate


def _timed(fn: Callable[[], object], budget_s: float, max_iterations: int) -> float:
    """Seconds per call of ``fn``: three calls of warm-up, then up to budget_s or max_iterations."""
    for _ in range(3):
        fn()
    count = 0
    start = time.perf_counter()
    deadline = start + budget_s
    while count < max_iterations:
        fn()
        count += 1
        if time.perf_counter() >= deadline:
            break
    return (time.perf_counter() - start) / count


def _map_derivation(world: BenchWorld, settings: Settings) -> Callable[[], object]:
    """One in-process v3 map of ``settings.map_batch`` emails, its answer's JSON made as the
    identities are derived (what the HTTP map does between opening and sealing)."""
    snapshot = world.snapshot
    now_ms = time.time_ns() // 1_000_000
    map_payload = {"email": map_emails(settings.map_batch)}

    def derive() -> object:
        return b"".join(data_plane.map_v3(snapshot, map_payload, now_ms).pieces())

    return derive


def map_in_process_beside(world: BenchWorld, settings: Settings) -> float:
    """Identities/s of the in-process map derivation, pinned to the server's CPU (the server is
    idle meanwhile) for half of ``settings.inprocess_s``; then back on the client's CPU."""
    _pin(settings.server_cpu)
    try:
        per_map = _timed(_map_derivation(world, settings), settings.inprocess_s / 2, 100_000)
    finally:
        _pin(settings.client_cpu)
    return settings.map_batch / per_map


def measure_in_process(world: BenchWorld, settings: Settings) -> InProcess:
    """The endpoints' work without HTTP: the derivation alone, and with envelope open/seal."""
    snapshot = world.snapshot
    now_ms = time.time_ns() // 1_000_000
    record = snapshot.clients[next(iter(snapshot.clients))]
    caller = Caller(
        key_id=record.key.key_id,
        site_id=record.key.site_id,
        roles=effective_roles(record.key, record.participant),
    )
    emails = map_emails(settings.map_batch)
    map_payload = {"email": emails}
    map_body = json.dumps(map_payload).encode()
    scope = snapshot.identity.scope
    budget = settings.inprocess_s
    derive = _map_derivation(world, settings)

    def pipeline(
        body: bytes, binary: bool, handler: Callable[[dict[str, Any] | None], Any]
    ) -> object:
        envelope = parse_request(
            body,
            octet_stream=binary,
            secret=world.secret,
            now_ms=now_ms,
            window=DEFAULT_TIMESTAMP_WINDOW,
            scope=scope,
        )
        reply = handler(envelope.payload)
        answer = b"".join(reply.pieces()) if isinstance(reply, StreamedReply) else reply.to_json()
        sealed = seal_response(
            answer,
            secret=world.secret,
            nonce=envelope.nonce,
            now_ms=now_ms,
            random=os.urandom,
        )
        return frame_response(sealed, envelope.binary)

    sealed_map = seal_request(
        map_body, secret=world.secret, now_ms=now_ms, nonce=os.urandom(8), random=os.urandom
    )
    gen_body = generate_payload(1)
    sealed_gen = _b64(
        seal_request(
            gen_body, secret=world.secret, now_ms=now_ms, nonce=os.urandom(8), random=os.urandom
        )
    )
    gen_payload = json.loads(gen_body)

    def generate() -> object:
        return data_plane.generate(snapshot, caller, gen_payload, now_ms, os.urandom)

    per_map = _timed(derive, budget, 100_000)
    per_map_env = _timed(
        lambda: pipeline(sealed_map, True, lambda p: data_plane.map_v3(snapshot, p, now_ms)),
        budget,
        100_000,
    )
    per_gen = _timed(generate, budget, 1_000_000)
    per_gen_env = _timed(
        lambda: pipeline(
            sealed_gen,
            False,
            lambda p: data_plane.generate(snapshot, caller, p, now_ms, os.urandom),
        ),
        budget,
        1_000_000,
    )
    app_health_us, app_generate_us = measure_app_direct(world, budget, 50_000)
    return InProcess(
        map_identities_per_s=settings.map_batch / per_map,
        map_with_envelope_identities_per_s=settings.map_batch / per_map_env,
        generate_us=per_gen * 1e6,
        generate_with_envelope_us=per_gen_env * 1e6,
        app_healthcheck_us=app_health_us,
        app_generate_us=app_generate_us,
    )


# ------------------------------------------------------------------------------------ report


def machine_description() -> list[str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"machine: {os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}",
        f"python: {platform.python_version()}; load average before the run: {load}",
    ]


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def ratios(figures: ServerFigures, inproc: InProcess | None, batch: int) -> dict[str, float | None]:
    def rps(result: LoadResult | None) -> float | None:
        return None if result is None else result.rps

    http_identities = None if figures.map_v3 is None else figures.map_v3.rps * batch
    baseline = None if inproc is None else inproc.map_identities_per_s
    if figures.map_in_process:  # measured beside the HTTP map: the like-for-like baseline
        baseline = sum(figures.map_in_process) / len(figures.map_in_process)
    return {
        "healthcheck/hello-world": _ratio(rps(figures.healthcheck), rps(figures.hello)),
        "generate/healthcheck": _ratio(rps(figures.generate), rps(figures.healthcheck)),
        "map HTTP/in-process": _ratio(http_identities, baseline),
    }


def busy_shares(figures: ServerFigures) -> dict[str, float]:
    """For each measurement whose server CPU was counted: the share of its time the server spent
    on the CPU (its CPU per answer times the answers per second)."""
    results = {
        "hello": figures.hello,
        "healthcheck": figures.healthcheck,
        "generate": figures.generate,
        "map_v3": figures.map_v3,
    }
    shares = {}
    for name, used in figures.cpu.items():
        result = results.get(name)
        if result is not None and result.rps > 0:
            shares[name] = used.total_us * result.rps / 1e6
    return shares


def print_report(
    all_figures: list[ServerFigures],
    inproc: InProcess | None,
    settings: Settings,
    machine: list[str],
) -> dict[str, Any]:
    print("\n== summary (requests/s, one worker; ratios from this run)")
    report: dict[str, Any] = {"machine": machine, "servers": {}}
    if inproc is not None:
        print(
            f"  (e) in-process v3 map derivation: {inproc.map_identities_per_s:,.0f} identities/s"
            f" (with envelope open + seal: {inproc.map_with_envelope_identities_per_s:,.0f});"
            f" generate {inproc.generate_us:.1f} us/call"
            f" (with envelope open + seal: {inproc.generate_with_envelope_us:.1f} us)"
        )
        print(
            f"  (f) operator ASGI app called directly, no server: healthcheck"
            f" {inproc.app_healthcheck_us:.1f} us/request, generate"
            f" {inproc.app_generate_us:.1f} us/request"
        )
        report["in_process"] = inproc.__dict__
    header = f"  {'server':<20}{'hello':>10}{'health':>10}{'generate':>10}{'map/s':>8}{'ids/s':>10}"
    print(header)
    for figures in all_figures:

        def cell(result: LoadResult | None, width: int) -> str:
            return f"{'-' if result is None else f'{result.rps:,.0f}':>{width}}"

        ids = "-" if figures.map_v3 is None else f"{figures.map_v3.rps * settings.map_batch:,.0f}"
        print(
            f"  {figures.kind.name:<20}{cell(figures.hello, 10)}{cell(figures.healthcheck, 10)}"
            f"{cell(figures.generate, 10)}{cell(figures.map_v3, 8)}{ids:>10}"
        )
        server_ratios = ratios(figures, inproc, settings.map_batch)
        busy = busy_shares(figures)
        for name, value in server_ratios.items():
            target = TARGETS[name]
            idle = [
                f"{side} {busy[side]:.0%}"
                for side in RATIO_SIDES.get(name, ())
                if side in busy and busy[side] < SATURATED
            ]
            if value is None:
                verdict = "not measured"
                shown = "-"
            elif idle:
                verdict = (
                    f"not judged: server on the CPU only {', '.join(idle)} of the time; the"
                    " load generator or other work on the machine set that rate"
                )
                shown = f"{value:.2f}"
            else:
                verdict = "meets" if value >= target else "below"
                shown = f"{value:.2f}"
            print(f"      {name:<26} {shown:>6}  (target >= {target}: {verdict})")
        if busy:
            shown = ", ".join(f"{name} {share:.0%}" for name, share in busy.items())
            print(f"      server busy (CPU time / measured time): {shown}")
        if figures.cpu:
            shown = ", ".join(
                f"{name} {c.total_us:.1f} ({c.user_us:.1f} user + {c.system_us:.1f} sys)"
                for name, c in figures.cpu.items()
            )
            print(f"      operator process CPU per answered request, us: {shown}")
        for note in figures.skipped:
            print(f"      {note}")
        report["servers"][figures.kind.name] = {
            "describe": figures.kind.describe,
            "version": figures.kind.version(),
            "rps": {
                name: None if result is None else result.rps
                for name, result in (
                    ("hello", figures.hello),
                    ("healthcheck", figures.healthcheck),
                    ("generate", figures.generate),
                    ("map_v3", figures.map_v3),
                )
            },
            "latency_ms": {
                name: None if result is None else [result.p50_ms, result.p99_ms]
                for name, result in (
                    ("hello", figures.hello),
                    ("healthcheck", figures.healthcheck),
                    ("generate", figures.generate),
                    ("map_v3", figures.map_v3),
                )
            },
            "counts": {
                name: None if result is None else result.counts()
                for name, result in (
                    ("hello", figures.hello),
                    ("healthcheck", figures.healthcheck),
                    ("generate", figures.generate),
                    ("map_v3", figures.map_v3),
                )
            },
            "map_in_process_beside": figures.map_in_process,
            "server_busy": busy,
            "ratios": server_ratios,
            "server_cpu_us_per_request": {
                name: {"user": c.user_us, "system": c.system_us} for name, c in figures.cpu.items()
            },
            "skipped": figures.skipped,
        }
    return report


# -------------------------------------------------------------------------------------- main


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated, from {', '.join(SERVERS)} (unavailable ones are skipped)",
    )
    parser.add_argument("--tool", choices=["wrk", "asyncio"], default=default_tool())
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each")
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="hello-world and health check alternate in this many slices of each measurement",
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--map-connections", type=int, default=4)
    parser.add_argument("--map-batch", type=int, default=1000)
    parser.add_argument("--buckets", type=int, default=DEFAULT_BUCKETS)
    parser.add_argument("--in-process-seconds", type=float, default=3.0)
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)

    if args.tool == "wrk" and wrk_path() is None:
        print(WRK_INSTALL_HINT, file=sys.stderr)
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cpus) >= 2
    settings = Settings(
        tool=args.tool,
        duration_s=min(args.duration, 60.0),
        warmup_s=min(args.warmup, 30.0),
        connections=args.connections,
        map_connections=args.map_connections,
        map_batch=args.map_batch,
        inprocess_s=min(args.in_process_seconds, 30.0),
        rounds=max(1, min(args.rounds, 20)),
        server_cpu=cpus[0] if pin else None,
        client_cpu=cpus[1] if pin else None,
    )
    machine = machine_description()
    for line in machine:
        print(line)
    print(
        f"load: {settings.tool}, {settings.connections} connections"
        f" ({settings.map_connections} for map), {settings.warmup_s:g} s warm-up +"
        f" {settings.duration_s:g} s per measurement; "
        + (
            f"server pinned to CPU {settings.server_cpu}, client to CPU {settings.client_cpu}"
            if pin
            else "not pinned"
        )
    )
    kinds = []
    for name in filter(None, args.servers.split(",")):
        kind = SERVERS.get(name)
        if kind is None:
            parser.error(f"unknown server {name!r}")
        if not kind.available():
            print(f"skipping {name}: the {kind.module} package is not installed")
            continue
        kinds.append(kind)

    run_started = time.perf_counter()
    seed = os.urandom(16)
    now_ms = time.time_ns() // 1_000_000
    started = time.perf_counter()
    world = build_world(seed, now_ms, args.buckets)
    print(f"world: {args.buckets:,} salt buckets, built in {time.perf_counter() - started:.2f} s")
    world_env = world_environment(seed, now_ms, args.buckets)

    all_figures = []
    _pin(settings.client_cpu)
    try:
        for kind in kinds:
            all_figures.append(run_server(kind, settings, world, world_env))
    finally:
        _pin(settings.server_cpu)
    print("\n== in-process (no HTTP), pinned like the server", flush=True)
    inproc = measure_in_process(world, settings)
    os.sched_setaffinity(0, set(cpus))
    report = print_report(all_figures, inproc, settings, machine)
    print(f"\nwhole run: {time.perf_counter() - run_started:.0f} s")
    if args.json is not None:
        report["settings"] = {
            k: v for k, v in settings.__dict__.items() if isinstance(v, (int, float, str))
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
