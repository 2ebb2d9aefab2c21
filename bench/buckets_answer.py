"""The largest ``/v2/identity/buckets`` answer on a real ``uid2-operator serve --workers 1``.

    .venv/bin/python bench/buckets_answer.py [--buckets 1048576] [--seconds 5] [--http10]
        [--json out.json]

In a temporary data directory (``UID2_ENVIRONMENT=integ``, whose default is the reference's 2^20
buckets; ``--buckets`` sets ``UID2_SALT_BUCKETS``): ``init`` (every bucket is updated then), a
participant with MAPPER and a MAPPER key; then ``serve --workers 1`` on free loopback ports, in a
process group of its own. Once the health check answers:

1. baseline: for ``--seconds``, sequential ``GET /ops/healthcheck`` on one keep-alive connection
   while the worker is idle, each timed;
2. one sealed ``POST /v2/identity/buckets`` with ``since_timestamp`` 1970-01-01T00:00 (every
   bucket), sent from a thread (as HTTP/1.0 with ``--http10``: that answer cannot be chunked,
   so it comes with its length, counted first); the whole answer is read, then opened and its
   buckets counted (a count other than the table's ends the run with an error, after the
   figures). Meanwhile, on another connection, sequential health checks are sent and timed
   until the answer is read.

The worker's ``VmRSS`` is read before the buckets request, its ``VmHWM`` (peak) after it.

It prints the buckets answered, the answer's time (request sent to last byte read) and µs per
bucket, its size on the wire, the health check's p50/p99/max idle and during the answer, the ratio
p99 during / p99 idle, and the worker's RSS before, its peak after and the difference. Nothing is
asserted.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from serve_memory import (
    HOST,
    WORKER,
    _cli,
    _memory,
    children_by_role,
    serving_one_worker,
)
from uid2_operator.wire.envelope import open_response, seal_request, unframe_response

HEALTH: Final = "/ops/healthcheck"
BUCKETS: Final = "/v2/identity/buckets"
SINCE: Final = "1970-01-01T00:00"
TIMEOUT_S: Final = 900.0


def prepare(env: dict[str, str]) -> dict[str, Any]:
    """A new data directory (every bucket updated at init) and one MAPPER key (as issued)."""
    _cli(env, "init")
    site = _cli(
        env,
        "participant", "create", "--name", "bench mapper", "--type", "advertiser",
        "--roles", "MAPPER", "--contact", "ops@example.com",
    )["site_id"]  # fmt: skip
    issued: dict[str, Any] = _cli(
        env, "key", "create", "--site-id", str(site), "--name", "bench key", "--roles", "MAPPER"
    )
    return issued


def _health(conn: http.client.HTTPConnection) -> float:
    """One health check on ``conn``; seconds from sending it to its last byte read."""
    started = time.perf_counter()
    conn.request("GET", HEALTH)
    response = conn.getresponse()
    response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"{HEALTH} answered {response.status}")
    return elapsed


def percentile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile of ``values`` (None when there are none)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = -(-round(fraction * 1000) * len(ordered) // 1000)  # ceil, in integers
    return ordered[min(max(rank, 1), len(ordered)) - 1]


def latencies_ms(values: list[float]) -> dict[str, Any]:
    """Count, p50, p99 and max of ``values`` (seconds), in ms."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    return {
        "count": len(values),
        "p50_ms": ms(percentile(values, 0.50)),
        "p99_ms": ms(percentile(values, 0.99)),
        "max_ms": ms(max(values, default=None)),
    }


class HTTP10Connection(http.client.HTTPConnection):
    """A client connection that sends its requests as HTTP/1.0."""

    _http_vsn = 10
    _http_vsn_str = "HTTP/1.0"


class SealedCall:
    """One sealed request on its own connection, in a thread; ``read`` is set once the whole
    answer has been read, and the answer is opened (into ``opened``) only after that."""

    def __init__(
        self, port: int, key: str, secret: str, path: str, payload: Any, *, http10: bool = False
    ) -> None:
        kind = HTTP10Connection if http10 else http.client.HTTPConnection
        self._conn = kind(HOST, port, timeout=TIMEOUT_S)
        self._key = key
        self._secret = base64.b64decode(secret)
        self.path = path
        self._payload = json.dumps(payload).encode()
        self.read = threading.Event()
        self.answer_s = 0.0
        self.wire_bytes = 0
        self.plain_bytes = 0
        self.opened: dict[str, Any] = {}
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sealed call", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()
        self._conn.close()
        if self.error is not None:
            raise RuntimeError(f"{self.path} failed: {self.error!r}") from self.error

    def _run(self) -> None:
        try:
            self._call()
        except BaseException as error:  # handed to the main thread by join()
            self.error = error
        finally:
            self.read.set()

    def _call(self) -> None:
        nonce = os.urandom(8)
        sealed = seal_request(
            self._payload,
            secret=self._secret,
            now_ms=time.time_ns() // 1_000_000,
            nonce=nonce,
            random=os.urandom,
        )
        body = base64.b64encode(sealed)
        headers = {"Authorization": f"Bearer {self._key}", "Content-Type": "text/plain"}
        started = time.perf_counter()
        self._conn.request("POST", self.path, body=body, headers=headers)
        response = self._conn.getresponse()
        answer = response.read()
        self.answer_s = time.perf_counter() - started
        self.read.set()
        self.wire_bytes = len(answer)
        if response.status != 200:
            raise RuntimeError(f"answered {response.status}: {answer[:200]!r}")
        opened = open_response(unframe_response(answer, False), secret=self._secret, nonce=nonce)
        if opened.get("status") != "success" or "body" not in opened:
            raise RuntimeError(f"answered {str(opened)[:200]}")
        self.plain_bytes = len(json.dumps(opened, separators=(",", ":")))
        self.opened = opened


def measure(port: int, call: SealedCall, worker: int, seconds: float) -> dict[str, Any]:
    """Health checks idle for ``seconds``, then during ``call``'s answer; the worker's memory."""
    idle: list[float] = []
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT_S)
    try:
        _health(conn)  # the connection opened, not timed
        ends = time.perf_counter() + seconds
        while time.perf_counter() < ends:
            idle.append(_health(conn))
    finally:
        conn.close()

    before = _memory(worker)
    during: list[float] = []
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT_S)
    try:
        _health(conn)  # the connection opened before the answer starts, not timed
        call.start()
        while not call.read.is_set():
            during.append(_health(conn))
    finally:
        conn.close()
    call.join()  # not on an error above: stopping serve then ends the answer's thread too
    after = _memory(worker)

    idle_ms, during_ms = latencies_ms(idle), latencies_ms(during)
    ratio = (
        None
        if idle_ms["p99_ms"] in (None, 0) or during_ms["p99_ms"] is None
        else round(during_ms["p99_ms"] / idle_ms["p99_ms"], 1)
    )
    return {
        "answer_s": round(call.answer_s, 2),
        "answer_wire_bytes": call.wire_bytes,
        "answer_wire_mb": round(call.wire_bytes / (1024 * 1024), 1),
        "answer_json_mb": round(call.plain_bytes / (1024 * 1024), 1),
        "health_idle": idle_ms,
        "health_during": during_ms,
        "health_p99_during_over_idle": ratio,
        "worker_rss_before_mb": before["VmRSS"],
        "worker_peak_before_mb": before["VmHWM"],
        "worker_peak_after_mb": after["VmHWM"],
        "worker_peak_increase_mb": round(after["VmHWM"] - before["VmRSS"], 1),
    }


@contextlib.contextmanager
def serving_prepared(extra_env: dict[str, str]) -> Iterator[tuple[int, dict[str, Any], int]]:
    """A temporary integ data directory (``prepare``d, with ``extra_env``) served by
    ``serve --workers 1``: its port, the issued key (with ``prepare_s`` and ``ready_s`` added,
    the seconds set-up and start-up took) and the worker's pid; removed however the run ends."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "UID2_DATA_DIR": tmp, "UID2_ENVIRONMENT": "integ", **extra_env}
        started = time.perf_counter()
        issued = prepare(env)
        issued["prepare_s"] = round(time.perf_counter() - started, 1)
        with serving_one_worker(env) as (parent, port, ready_s):
            issued["ready_s"] = round(ready_s, 1)
            workers = children_by_role(parent.pid)[WORKER]
            if len(workers) != 1:
                raise RuntimeError(f"serve has {len(workers)} workers, not 1: {workers}")
            yield port, issued, workers[0]["pid"]


def us_per(measured: dict[str, Any], answered: int) -> float | None:
    """The answer's time per item answered, in µs (None when none was)."""
    return round(measured["answer_s"] * 1e6 / answered, 2) if answered else None


def report(figures: dict[str, Any], json_path: Path | None) -> None:
    """``figures`` printed, and written to ``json_path`` when given."""
    print_figures(figures)
    if json_path is not None:
        json_path.write_text(json.dumps(figures, indent=2) + "\n")


def print_figures(figures: dict[str, Any]) -> None:
    """One line a figure; the health check's latencies one line per moment."""
    for name, value in figures.items():
        text = "  ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else value
        print(f"{name:30}{text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buckets", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--http10", action="store_true", help="send the buckets request as HTTP/1.0"
    )
    parser.add_argument("--json", dest="json_path", type=Path, default=None)
    args = parser.parse_args()
    count = args.buckets or 1 << 20

    extra = {} if args.buckets is None else {"UID2_SALT_BUCKETS": str(args.buckets)}
    with serving_prepared(extra) as (port, issued, worker):
        call = SealedCall(
            port,
            issued["key"],
            issued["secret"],
            BUCKETS,
            {"since_timestamp": SINCE},
            http10=args.http10,
        )
        measured = measure(port, call, worker, args.seconds)
    answered = len(call.opened.get("body") or [])

    figures: dict[str, Any] = {
        "buckets": count,
        "http_version": "1.0" if args.http10 else "1.1",
        "prepare_s": issued["prepare_s"],
        "ready_s": issued["ready_s"],
        "buckets_answered": answered,
        **measured,
        "answer_us_per_bucket": us_per(measured, answered),
    }
    report(figures, args.json_path)
    if figures["buckets_answered"] != count:
        raise SystemExit(f"{figures['buckets_answered']} buckets answered, not {count}")


if __name__ == "__main__":
    main()
