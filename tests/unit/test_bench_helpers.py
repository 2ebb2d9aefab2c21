"""The benchmark harness's own helpers (``bench/``): what they measure is what they claim to.

The benchmark scripts import each other as top-level modules from ``bench/``, so that folder is
put on the import path here, as the scripts' own directory is when they run.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import math
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from uid2_operator.web.operator_api.server import OperatorServer
from uid2_operator.wire.envelope import open_response, seal_request

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import asgi_targets  # noqa: E402
import budget_targets  # noqa: E402
import credentials_reload  # noqa: E402
import generate_budget  # noqa: E402
import generate_cost  # noqa: E402
import operator_throughput  # noqa: E402
import replay_memory  # noqa: E402
import serve_memory  # noqa: E402
from http_load import LoadResult  # noqa: E402
from operator_world import BenchWorld, build_world  # noqa: E402

BUCKETS = 1 << 10


@pytest.fixture(scope="module")
def world() -> BenchWorld:
    return build_world(b"bench-helpers-seed", time.time_ns() // 1_000_000, BUCKETS)


def _call(
    app: Any, scope: dict[str, Any], body: bytes = b""
) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), answer


def _generate_scope(world: BenchWorld, body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": operator_throughput.GENERATE,
        "headers": [
            (b"authorization", f"Bearer {world.api_key}".encode()),
            (b"content-type", b"text/plain"),
            (b"content-length", b"%d" % len(body)),
        ],
    }


def _sealed_generate(world: BenchWorld, index: int) -> bytes:
    return base64.b64encode(
        seal_request(
            operator_throughput.generate_payload(index),
            secret=world.secret,
            now_ms=time.time_ns() // 1_000_000,
            nonce=os.urandom(8),
            random=os.urandom,
        )
    )


# ------------------------------------------------ the calibration sizes come from a real generate


def test_the_budget_calibration_sizes_are_those_of_a_real_generate(world: BenchWorld) -> None:
    sizes = generate_budget.generate_sizes(world)
    request = _sealed_generate(world, generate_budget.SAMPLE_INDEX)
    status, _, answer = _call(
        asgi_targets.serve_like_app(world.snapshot), _generate_scope(world, request), request
    )
    assert status == 200
    assert sizes.request_body == len(request)
    assert sizes.answer_body == len(answer)
    # a generate sends a short body and gets two tokens back
    assert sizes.request_body < 200
    assert sizes.answer_body > 1000


def test_the_sample_generate_must_succeed(world: BenchWorld) -> None:
    wrong = dataclasses.replace(world, secret=os.urandom(32))
    with pytest.raises(RuntimeError, match="answered 400"):
        generate_budget.generate_sizes(wrong)


def test_the_calibrated_application_answers_the_size_it_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(budget_targets.ANSWER_BYTES_VARIABLE, "1181")
    app = budget_targets.spin()
    scope = {"type": "http", "method": "POST", "path": "/spin/0", "headers": []}
    status, headers, answer = _call(app, scope, b"x" * 108)
    assert status == 200
    assert len(answer) == 1181
    assert headers[b"content-length"] == b"1181"


@pytest.mark.parametrize("value", [None, "", "lots"])
def test_the_calibrated_application_needs_its_answer_size(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv(budget_targets.ANSWER_BYTES_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(budget_targets.ANSWER_BYTES_VARIABLE, value)
    with pytest.raises(RuntimeError, match=budget_targets.ANSWER_BYTES_VARIABLE):
        budget_targets.spin()


# ------------------------------------------------- (f): the app called directly times only 2xx


def test_the_app_called_directly_times_successes(world: BenchWorld) -> None:
    # Every answer was a 2xx (anything else raises AppRefused). Which of the two is faster is
    # not asserted: a pause of a few ms in the 0.2 ms of health checks outweighs them all.
    health_us, generate_us = operator_throughput.measure_app_direct(world, 0.05, 20)
    assert 0 < health_us < math.inf
    assert 0 < generate_us < math.inf


def _other_key(world: BenchWorld) -> BenchWorld:
    other = build_world(b"another-seed", time.time_ns() // 1_000_000, BUCKETS)
    return dataclasses.replace(world, api_key=other.api_key)


def _other_secret(world: BenchWorld) -> BenchWorld:
    return dataclasses.replace(world, secret=os.urandom(32))


@pytest.mark.parametrize(("make", "status"), [(_other_key, 401), (_other_secret, 400)])
def test_the_app_called_directly_refuses_to_time_refusals(
    world: BenchWorld, make: Any, status: int
) -> None:
    with pytest.raises(operator_throughput.AppRefused, match=f"answered {status} after 0 2xx"):
        operator_throughput.measure_app_direct(make(world), 0.05, 20)


# --------------------------------------------- the benchmark's operator is a served worker's app


def test_the_benchmark_operator_runs_behind_the_worker_server(world: BenchWorld) -> None:
    app = asgi_targets.serve_like_app(world.snapshot)
    assert isinstance(app, OperatorServer)
    request = _sealed_generate(world, 1)
    status, _, _ = _call(app, _generate_scope(world, request), request)
    assert status == 200
    health = {"type": "http", "method": "GET", "path": "/ops/healthcheck", "headers": []}
    assert _call(app, health)[0] == 200
    metrics = {"type": "http", "method": "GET", "path": "/metrics", "headers": []}
    status, _, text = _call(app, metrics)
    assert status == 200
    # the observer saw the generate; the shared replay table is reported as a worker's is
    assert b'uid2_operator_requests_total{endpoint="/v2/token/generate"' in text
    assert b"uid2_operator_replay_table_slots" in text


def test_the_benchmark_operator_lifespan_starts_and_stops(world: BenchWorld) -> None:
    app = asgi_targets.serve_like_app(world.snapshot)
    incoming = [{"type": "lifespan.shutdown"}, {"type": "lifespan.startup"}]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop()

    async def send(message: Any) -> None:
        sent.append(message["type"])

    asyncio.run(app({"type": "lifespan"}, receive, send))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


# ------------------------------------------ replay table: the kept time goes with its own count


def test_the_second_process_rate_is_that_of_the_kept_run(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = iter([(3_000_000, 30), (1_000_000, 7), (2_000_000, 50)])

    def scripted(*args: Any, **kwargs: Any) -> tuple[int, int]:
        del args, kwargs
        return next(runs)

    monkeypatch.setattr(replay_memory, "beside_a_second_process", scripted)
    stream = replay_memory.make_stream(500, 1000, "steady", seed=1)
    timed = replay_memory.make_stream(1000, 1000, "steady", seed=2)
    figures = replay_memory.table_figures(stream, timed, slots=1024, repeat=3, rate=1000)
    assert figures["ns_per_request_beside_a_second_process"] == round(1_000_000 / 500)
    assert figures["second_process_inserts_per_s"] == round(7 / (1_000_000 / 1e9))


# ------------------------------------------------------ the JSON report keeps counts and flags


def test_the_json_report_keeps_the_counts_and_flags(capsys: pytest.CaptureFixture[str]) -> None:
    def result(completed: int, ok: int, *, exhausted: bool = False) -> LoadResult:
        return LoadResult(
            tool="wrk",
            completed=completed,
            ok=ok,
            socket_errors=1,
            elapsed_s=1.0,
            p50_ms=1.0,
            p99_ms=2.0,
            exhausted=exhausted,
        )

    figures = operator_throughput.ServerFigures(
        operator_throughput.SERVERS["uvicorn"],
        hello=result(100, 100),
        healthcheck=result(90, 90),
        generate=result(10, 8, exhausted=True),
    )
    report = operator_throughput.print_report([figures], None, _settings(), [])
    capsys.readouterr()
    counts = json.loads(json.dumps(report))["servers"]["uvicorn"]["counts"]
    assert counts["generate"] == {
        "completed": 10,
        "ok": 8,
        "not_ok": 2,
        "socket_errors": 1,
        "exhausted": True,
    }
    assert counts["hello"]["exhausted"] is False
    assert counts["map_v3"] is None


def _rate(rps: float) -> LoadResult:
    return LoadResult(
        tool="wrk",
        completed=int(rps),
        ok=int(rps),
        socket_errors=0,
        elapsed_s=1.0,
        p50_ms=1.0,
        p99_ms=2.0,
        exhausted=False,
    )


def _settings() -> Any:
    return operator_throughput.Settings(
        tool="wrk",
        duration_s=1.0,
        warmup_s=0.5,
        connections=1,
        map_connections=1,
        map_batch=1000,
        inprocess_s=0.0,
        rounds=1,
        server_cpu=None,
        client_cpu=None,
    )


def _measured(*, healthcheck_rps: int, generate_system_us: float) -> Any:
    """40,000 hello-worlds and 12,000 generates a second; the health check's rate as given."""
    cpu = operator_throughput.CpuPerRequest
    return operator_throughput.ServerFigures(
        operator_throughput.SERVERS["uvicorn"],
        hello=_rate(40_000),
        healthcheck=_rate(healthcheck_rps),
        generate=_rate(12_000),
        cpu={
            "hello": cpu(20.0, 4.0),
            "healthcheck": cpu(20.0, 5.0),
            "generate": cpu(60.0, generate_system_us),
        },
    )


def test_a_ratio_is_not_judged_when_a_side_left_the_server_idle(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 20,000 health checks a second at 25 us each: the server was on the CPU half the time, so
    # the load generator (or other work) set that rate, and generate/healthcheck is inflated.
    figures = _measured(healthcheck_rps=20_000, generate_system_us=15.0)
    report = operator_throughput.print_report([figures], None, _settings(), [])
    out = capsys.readouterr().out
    busy = report["servers"]["uvicorn"]["server_busy"]
    assert busy == pytest.approx({"hello": 0.96, "healthcheck": 0.5, "generate": 0.9})
    assert (
        "generate/healthcheck         0.60  (target >= 0.5: not judged: server on the CPU " in out
    )
    assert "only healthcheck 50% of the time" in out
    assert "meets" not in out.split("generate/healthcheck")[1].splitlines()[0]


def test_saturated_sides_are_judged(capsys: pytest.CaptureFixture[str]) -> None:
    figures = _measured(healthcheck_rps=38_000, generate_system_us=20.0)
    operator_throughput.print_report([figures], None, _settings(), [])
    out = capsys.readouterr().out
    assert "healthcheck/hello-world      0.95  (target >= 0.9: meets)" in out
    assert "generate/healthcheck         0.32  (target >= 0.5: below)" in out


def test_the_map_ratio_divides_by_the_derivation_measured_beside_it() -> None:
    figures = operator_throughput.ServerFigures(
        operator_throughput.SERVERS["uvicorn"], map_v3=_rate(100), map_in_process=[90_000, 110_000]
    )
    late = dataclasses.replace(_in_process(), map_identities_per_s=50_000.0)
    ratios = operator_throughput.ratios(figures, late, 1000)
    assert ratios["map HTTP/in-process"] == pytest.approx(1.0)  # 100,000 / mean(90k, 110k)
    alone = operator_throughput.ServerFigures(
        operator_throughput.SERVERS["uvicorn"], map_v3=_rate(100)
    )
    assert operator_throughput.ratios(alone, late, 1000)["map HTTP/in-process"] == 2.0


def _in_process() -> Any:
    return operator_throughput.InProcess(
        map_identities_per_s=1.0,
        map_with_envelope_identities_per_s=1.0,
        generate_us=1.0,
        generate_with_envelope_us=1.0,
        app_healthcheck_us=1.0,
        app_generate_us=1.0,
    )


# ---------------------------------------------------- serve's children are labelled by role


def test_children_are_labelled_worker_or_helper() -> None:
    context = multiprocessing.get_context("spawn")  # as serve starts its workers
    child = context.Process(target=time.sleep, args=(30,), daemon=True)
    child.start()
    try:
        # start() returns once the child is forked, not once it has run the new program: until
        # then its command line is this process's own.
        deadline = time.monotonic() + 30
        while "spawn_main" not in serve_memory.command_line(child.pid or 0):
            assert time.monotonic() < deadline, serve_memory.command_line(child.pid or 0)
            time.sleep(0.01)
        children = serve_memory.children_by_role(os.getpid())
    finally:
        child.terminate()
        child.join(10)
    workers = {c["pid"]: c["command"] for c in children[serve_memory.WORKER]}
    assert "spawn_main" in workers[child.pid]
    # starting a spawned process started multiprocessing's resource tracker: not a worker
    helpers = children[serve_memory.HELPER]
    assert any("resource_tracker" in h["command"] for h in helpers), helpers


def test_the_inlined_generate_makes_an_answer_of_the_real_size() -> None:
    """Case (d) of ``generate_cost`` claims the library calls of (b) and (c) on inputs of the
    same sizes: its answer opens under the client's secret with the request's nonce, to the
    success JSON with the same fields, and is exactly as long as the real framed answer."""
    keys = (generate_cost._key(4, 11), generate_cost._key(1, -1), generate_cost._key(2, -2))
    salt = base64.b64encode(os.urandom(33)).decode()
    secret = os.urandom(32)
    generate = generate_cost.generate_case(keys, salt)
    envelope, _ = generate_cost.envelope_cases(secret, generate())
    real, _ = envelope()
    inlined = generate_cost.inlined_case(keys, salt, secret)()
    assert len(inlined) == len(real)
    answer = open_response(base64.b64decode(inlined), secret=secret, nonce=(7).to_bytes(8, "big"))
    expected = json.loads(generate())
    assert answer["status"] == "success"
    assert sorted(answer["body"]) == sorted(expected["body"])
    for name in ("advertising_token", "refresh_token", "refresh_response_key"):
        assert len(answer["body"][name]) == len(expected["body"][name])


def test_the_reload_benchmark_times_loads_that_refuse_the_revoked_key() -> None:
    """Both loads it times hold every key it wrote and refuse the one it revoked (checked inside
    ``run``): the incremental figure is that of a load that saw the revocation."""
    result = credentials_reload.run(120, 10, 1)
    assert result["keys"] == 120
    assert set(result) == {"keys", "full_cpu_s", "incremental_cpu_s", "ratio"}
