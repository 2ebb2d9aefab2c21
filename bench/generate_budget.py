"""How much CPU may a generate request spend in the application and still reach half the health
check's rate on one worker of this server?

The throughput benchmark (``operator_throughput.py``) reports generate/healthcheck. This one
measures the *budget* that ratio leaves, on the same server software, load generator, pinning and
request and answer sizes: a calibrated application (``budget_targets.spin``) answers a POST of a
generate request's size with an answer of a generate answer's size after burning exactly N µs of
its own CPU, for several N, each measured in alternating slices against the same process's
``GET`` (the health check's floor). Both sizes are measured at start-up from one real generate on
the benchmark world (one envelope sealed as the load seals them, the operator app called
in-process) and printed. Then the real operator's health check and generate, in the
same run. It prints, for each N, requests/s, the ratio to the floor and the server process's CPU
per request (user + system, from ``/proc``), the largest N that still reaches 0.5 (interpolated),
and where the operator's generate falls on that curve.

Usage::

    .venv/bin/python bench/generate_budget.py [--spins 0,10,20,30,40,60,90] [--duration 4]

Nothing here decides pass or fail: the figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from asgi_targets import serve_like_app
from budget_targets import ANSWER_BYTES_VARIABLE
from http_load import (
    WRK_INSTALL_HINT,
    LoadResult,
    Target,
    default_tool,
    http_request,
    run_load,
    wrk_path,
)
from operator_throughput import (
    GENERATE,
    HEALTHCHECK,
    SERVERS,
    CpuPerRequest,
    Envelopes,
    Settings,
    _combine,
    generate_payload,
    machine_description,
    measure_enveloped,
    measure_interleaved,
    per_request,
    probe,
    process_cpu,
    running_server,
)
from operator_world import BenchWorld, build_world, world_environment
from uid2_operator.wire.envelope import open_response, seal_request, unframe_response

TARGET: Final = 0.5
SAMPLE_INDEX: Final = 10_000
"""The sample generate's email is ``generate_payload(SAMPLE_INDEX)``: the load's emails are
numbered from 0 up, most of a measured run's with as many digits as this one."""


@dataclass(frozen=True)
class GenerateSizes:
    """The body sizes of a real generate on the benchmark world, in bytes."""

    request_body: int
    answer_body: int


def generate_sizes(world: BenchWorld) -> GenerateSizes:
    """The sizes of one real generate on ``world``: a request sealed and base64-encoded as the
    load sends them, handed to the operator application as a served worker wires it, called
    in-process; its answer must be a 200 whose envelope opens to a success."""
    nonce = os.urandom(8)
    body = base64.b64encode(
        seal_request(
            generate_payload(SAMPLE_INDEX),
            secret=world.secret,
            now_ms=time.time_ns() // 1_000_000,
            nonce=nonce,
            random=os.urandom,
        )
    )
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {
        "type": "http",
        "method": "POST",
        "path": GENERATE,
        "headers": [
            (b"authorization", f"Bearer {world.api_key}".encode()),
            (b"content-type", b"text/plain"),
            (b"content-length", b"%d" % len(body)),
        ],
    }
    asyncio.run(serve_like_app(world.snapshot)(scope, receive, send))
    status = next((m["status"] for m in sent if m["type"] == "http.response.start"), None)
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    if status != 200:
        raise RuntimeError(f"the sample generate answered {status}: {answer[:200]!r}")
    opened = open_response(unframe_response(answer, False), secret=world.secret, nonce=nonce)
    if opened.get("status") != "success":
        raise RuntimeError(f"the sample generate answered status {opened.get('status')!r}")
    return GenerateSizes(request_body=len(body), answer_body=len(answer))


@dataclass(frozen=True)
class Point:
    spin_us: int
    floor: LoadResult
    post: LoadResult
    floor_cpu: CpuPerRequest | None
    post_cpu: CpuPerRequest | None

    @property
    def ratio(self) -> float:
        return self.post.rps / self.floor.rps if self.floor.rps else 0.0


def _slice(
    settings: Settings, request: bytes, target: Target, group: int, duration: float
) -> tuple[LoadResult, CpuPerRequest | None]:
    before = process_cpu(group)
    result = run_load(
        settings.tool,
        [request],
        target,
        connections=settings.connections,
        duration_s=duration,
        cycle=True,
    )
    return result, per_request(before, process_cpu(group), result.ok)


def _mean_cpu(parts: Sequence[tuple[LoadResult, CpuPerRequest | None]]) -> CpuPerRequest | None:
    """CPU per request over several slices, weighted by their answers."""
    ok = sum(r.ok for r, c in parts if c is not None)
    if ok == 0:
        return None
    user = sum(c.user_us * r.ok for r, c in parts if c is not None) / ok
    system = sum(c.system_us * r.ok for r, c in parts if c is not None) / ok
    return CpuPerRequest(user, system)


def measure_point(
    settings: Settings, target: Target, group: int, spin_us: int, request_body: int
) -> Point:
    """The floor and ``POST /spin/<spin_us>`` with a body of ``request_body`` bytes, in
    alternating slices (warm-up first)."""
    floor_request = http_request("GET", HEALTHCHECK, target)
    post_request = http_request(
        "POST",
        f"/spin/{spin_us}",
        target,
        headers=[("Content-Type", "text/plain")],
        body=b"x" * request_body,
    )
    each = settings.duration_s / settings.rounds
    _slice(settings, floor_request, target, group, settings.warmup_s)
    _slice(settings, post_request, target, group, settings.warmup_s)
    floors: list[tuple[LoadResult, CpuPerRequest | None]] = []
    posts: list[tuple[LoadResult, CpuPerRequest | None]] = []
    for _ in range(settings.rounds):
        floors.append(_slice(settings, floor_request, target, group, each))
        posts.append(_slice(settings, post_request, target, group, each))
    return Point(
        spin_us,
        _combine([r for r, _ in floors]),
        _combine([r for r, _ in posts]),
        _mean_cpu(floors),
        _mean_cpu(posts),
    )


def largest_spin_reaching(points: Sequence[Point], target: float) -> float | None:
    """The spin (µs) at which the ratio falls to ``target``, interpolated between the two
    measured points around it; None when no point reaches it or every point does."""
    ordered = sorted(points, key=lambda p: p.spin_us)
    for low, high in itertools.pairwise(ordered):
        if low.ratio >= target > high.ratio:
            share = (low.ratio - target) / (low.ratio - high.ratio)
            return low.spin_us + share * (high.spin_us - low.spin_us)
    return None


def _cpu(cpu: CpuPerRequest | None) -> str:
    if cpu is None:
        return "n/a"
    return f"{cpu.total_us:6.1f} µs ({cpu.user_us:.1f} + {cpu.system_us:.1f})"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--spins", default="0,10,20,30,40,60,90", help="µs of CPU per POST")
    parser.add_argument("--tool", choices=["wrk", "asyncio"], default=default_tool())
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up before each")
    parser.add_argument("--rounds", type=int, default=2, help="alternating slices per measurement")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--buckets", type=int, default=1 << 16)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0915 (a linear report)
    args = _parser().parse_args(argv)
    if args.tool == "wrk" and wrk_path() is None:
        print(WRK_INSTALL_HINT, file=sys.stderr)
        return 2
    spins = sorted({int(s) for s in args.spins.split(",") if s.strip()})
    cpus = sorted(os.sched_getaffinity(0))
    pin = len(cpus) >= 2
    settings = Settings(
        tool=args.tool,
        duration_s=min(args.duration, 60.0),
        warmup_s=min(args.warmup, 30.0),
        connections=args.connections,
        map_connections=1,
        map_batch=1,
        inprocess_s=0.0,
        rounds=max(1, min(args.rounds, 20)),
        server_cpu=cpus[0] if pin else None,
        client_cpu=cpus[1] if pin else None,
    )
    for line in machine_description():
        print(line)
    started = time.perf_counter()
    seed = os.urandom(16)
    now_ms = time.time_ns() // 1_000_000
    world = build_world(seed, now_ms, args.buckets)
    sizes = generate_sizes(world)
    print(
        f"generate on the benchmark world (one request, in-process): request body"
        f" {sizes.request_body} bytes, answer body {sizes.answer_body} bytes"
    )
    print(
        f"load: {settings.tool}, {settings.connections} connections, POST body"
        f" {sizes.request_body} bytes, answer {sizes.answer_body} bytes; "
        + (f"server on CPU {cpus[0]}, client on CPU {cpus[1]}" if pin else "not pinned")
    )
    kind = SERVERS["uvicorn"]
    if pin:
        os.sched_setaffinity(0, {cpus[1]})
    points: list[Point] = []
    print("\n== calibrated POST against GET on the same process", flush=True)
    with running_server(
        kind,
        "budget_targets:spin",
        factory=True,
        env={ANSWER_BYTES_VARIABLE: str(sizes.answer_body)},
        cpu=settings.server_cpu,
    ) as server:
        for spin_us in spins:
            point = measure_point(settings, server.target, server.pid, spin_us, sizes.request_body)
            points.append(point)
            print(
                f"  spin {spin_us:3d} µs: GET {point.floor.rps:9,.0f}/s"
                f"  POST {point.post.rps:9,.0f}/s"
                f"  ratio {point.ratio:.2f}  CPU/request GET {_cpu(point.floor_cpu)}"
                f"  POST {_cpu(point.post_cpu)}",
                flush=True,
            )
    budget = largest_spin_reaching(points, TARGET)

    print("\n== the operator (one publisher key, generate over full envelopes)", flush=True)
    env = world_environment(seed, now_ms, args.buckets)
    operator: dict[str, Any] = {}
    with running_server(
        kind, "asgi_targets:operator_app", factory=True, env=env, cpu=settings.server_cpu
    ) as server:
        measured: dict[str, CpuPerRequest] = {}
        (health,) = measure_interleaved(
            settings, [server.target], cpu=(measured, [(0, server.pid, "healthcheck")])
        )
        health_cpu = measured.get("healthcheck")
        envelopes = Envelopes(world, server.target)
        why = probe(envelopes, GENERATE, generate_payload(0), binary=False)
        if why is not None:
            print(f"  generate skipped: {why}")
            generate = None
            generate_cpu = None
        else:
            sample = envelopes.request(GENERATE, generate_payload(0), binary=False)
            cpu: dict[str, CpuPerRequest] = {}
            generate = measure_enveloped(
                settings,
                lambda i: envelopes.request(GENERATE, generate_payload(i), binary=False),
                server.target,
                connections=settings.connections,
                first_guess_rps=health.rps,
                request_size=len(sample),
                cpu=(server.pid, cpu, "generate"),
            )
            generate_cpu = cpu.get("generate")
    print(f"  healthcheck {health.rps:9,.0f}/s  CPU/request {_cpu(health_cpu)}")
    if generate is not None:
        print(
            f"  generate    {generate.rps:9,.0f}/s  CPU/request {_cpu(generate_cpu)}"
            f"  ratio {generate.rps / health.rps:.2f}"
        )
        operator = {
            "healthcheck_rps": health.rps,
            "generate_rps": generate.rps,
            "ratio": generate.rps / health.rps,
            "healthcheck_cpu_us": health_cpu.total_us if health_cpu else None,
            "generate_cpu_us": generate_cpu.total_us if generate_cpu else None,
            "healthcheck_counts": health.counts(),
            "generate_counts": generate.counts(),
        }

    print("\n== summary")
    if budget is None:
        print(f"  no measured spin crosses {TARGET}: widen --spins")
    else:
        print(
            f"  a POST reaches {TARGET} of the floor up to about {budget:.0f} µs of application"
            " CPU per request"
        )
    if operator.get("generate_cpu_us") and points[0].post_cpu is not None:
        spent = float(operator["generate_cpu_us"] or 0.0) - points[0].post_cpu.total_us
        print(
            f"  the operator's generate costs the server {spent:.0f} µs of CPU per request more"
            f" than the calibrated POST with no spin"
        )
    print(f"  whole run: {time.perf_counter() - started:.0f} s")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "generate_request_body_bytes": sizes.request_body,
                    "generate_answer_body_bytes": sizes.answer_body,
                    "points": [
                        {
                            "spin_us": p.spin_us,
                            "get_rps": p.floor.rps,
                            "post_rps": p.post.rps,
                            "get_counts": p.floor.counts(),
                            "post_counts": p.post.counts(),
                            "ratio": p.ratio,
                            "get_cpu_us": p.floor_cpu.total_us if p.floor_cpu else None,
                            "post_cpu_us": p.post_cpu.total_us if p.post_cpu else None,
                        }
                        for p in points
                    ],
                    "budget_us": budget,
                    "operator": operator,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
