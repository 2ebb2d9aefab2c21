"""A loopback HTTP/1.1 load generator: keep-alive connections, pre-built requests, hard bounds.

The operator refuses a replayed envelope (same key, same nonce), so a load test of an enveloped
endpoint cannot repeat one request: every request must carry its own envelope. Both back ends
here therefore send a list of complete, pre-built HTTP/1.1 requests, each at most once (or, for
requests that may repeat, such as a health check, cycling through the list).

Two back ends:

* ``wrk`` (Debian package ``wrk``; ``apt-get install wrk``) with a Lua script that reads the
  requests from a file and hands each thread its share. It is a C event loop, so the client costs
  the server's core nothing and a little of its own.
* ``asyncio``: a protocol-level client on uvloop (when installed), for machines without wrk.
  Same bounds, same accounting, but it spends far more CPU per request than wrk.

Every run is bounded twice: by its duration and by the number of requests it holds. A run that
uses up its requests before its duration ends is flagged ``exhausted`` (wrk always reports its
full duration, so its rate would be understated): the caller is expected to build enough
requests for the time it asks for.

Only loopback targets are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, cast

Tool = Literal["wrk", "asyncio"]
WRK_INSTALL_HINT: Final = "wrk is not installed; install it with: apt-get install -y wrk"
_RESULT_TAG: Final = "UID2_BENCH_RESULT "
_LENGTH_DIGITS: Final = 10

# The wrk script: requests are read from a file of length-prefixed records (ten ASCII digits,
# then the raw bytes); thread ``t`` of ``n`` takes records t, t+n, t+2n, ...
_WRK_SCRIPT: Final = r"""
local requests_path = os.getenv("UID2_BENCH_REQUESTS")
local thread_count = tonumber(os.getenv("UID2_BENCH_THREADS"))
local cycle = os.getenv("UID2_BENCH_CYCLE") == "1"
local created = 0
local threads = {}

function setup(thread)
  thread:set("thread_index", created)
  created = created + 1
  table.insert(threads, thread)
end

local records = {}
local count = 0
local position = 0
exhausted = 0

function init(args)
  local file = assert(io.open(requests_path, "rb"))
  local data = file:read("*a")
  file:close()
  local offset = 1
  local seen = 0
  while offset <= #data do
    local length = tonumber(string.sub(data, offset, offset + 9))
    offset = offset + 10
    if seen % thread_count == thread_index then
      count = count + 1
      records[count] = string.sub(data, offset, offset + length - 1)
    end
    seen = seen + 1
    offset = offset + length
  end
end

function request()
  position = position + 1
  if position > count then
    if cycle then
      position = 1
    else
      exhausted = 1
      wrk.thread:stop()
      return records[count]
    end
  end
  return records[position]
end

function done(summary, latency, requests)
  local used_up = 0
  for _, thread in ipairs(threads) do
    used_up = used_up + (thread:get("exhausted") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    "UID2_BENCH_RESULT {\"duration_us\":%d,\"requests\":%d,\"connect\":%d,\"read\":%d," ..
    "\"write\":%d,\"status\":%d,\"timeout\":%d,\"p50_us\":%d,\"p99_us\":%d,\"exhausted\":%d}\n",
    summary.duration, summary.requests, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50.0), latency:percentile(99.0), used_up))
end
"""


@dataclass(frozen=True)
class Target:
    """Where the load goes: a loopback address and port."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not ipaddress.ip_address(self.host).is_loopback:
            raise ValueError(f"refusing to send load to a non-loopback address: {self.host}")


@dataclass(frozen=True)
class LoadResult:
    """What one bounded run did. ``ok`` (and so ``rps``) counts the answers the back end takes
    for successes: with ``asyncio``, 2xx only; with ``wrk``, every status below 400 (wrk counts
    only 4xx and 5xx as errors, and reports no status breakdown). The applications measured here
    never answer 1xx or 3xx, so both count the same answers. ``statuses`` is filled by
    ``asyncio`` only."""

    tool: str
    completed: int
    ok: int
    socket_errors: int
    elapsed_s: float
    p50_ms: float | None
    p99_ms: float | None
    exhausted: bool
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def counts(self) -> dict[str, Any]:
        """The run's counts and flags, for a JSON report."""
        counts: dict[str, Any] = {
            "completed": self.completed,
            "ok": self.ok,
            "not_ok": self.completed - self.ok,
            "socket_errors": self.socket_errors,
            "exhausted": self.exhausted,
        }
        if self.statuses:
            counts["statuses"] = {str(k): v for k, v in sorted(self.statuses.items())}
        return counts

    def summary(self) -> str:
        latency = (
            f", p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms"
            if self.p50_ms is not None and self.p99_ms is not None
            else ""
        )
        flags = []
        if self.completed != self.ok:
            flags.append(f"{self.completed - self.ok} not ok")
        if self.socket_errors:
            flags.append(f"{self.socket_errors} socket errors")
        if self.exhausted:
            flags.append("ran out of requests: rate understated")
        flag_text = f" [{'; '.join(flags)}]" if flags else ""
        return (
            f"{self.rps:,.0f} req/s ({self.ok:,} ok in {self.elapsed_s:.2f} s, "
            f"{self.tool}{latency}){flag_text}"
        )


def http_request(
    method: str,
    path: str,
    target: Target,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    """One complete HTTP/1.1 keep-alive request, ready to write to a socket."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {target.host}:{target.port}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def wrk_path() -> str | None:
    return shutil.which("wrk")


# ------------------------------------------------------------------------------------------ wrk


def run_wrk(
    requests: Sequence[bytes],
    target: Target,
    *,
    connections: int,
    duration_s: float,
    threads: int = 1,
    cycle: bool = False,
) -> LoadResult:
    """Drive ``wrk`` over ``requests`` (each sent once unless ``cycle``), for ``duration_s``."""
    binary = wrk_path()
    if binary is None:
        raise RuntimeError(WRK_INSTALL_HINT)
    if not requests:
        raise ValueError("no requests to send")
    threads = max(1, min(threads, connections))
    with tempfile.TemporaryDirectory(prefix="uid2-bench-") as tmp:
        script = Path(tmp) / "requests.lua"
        script.write_text(_WRK_SCRIPT)
        data = Path(tmp) / "requests.bin"
        with data.open("wb") as out:
            for raw in requests:
                out.write(f"{len(raw):0{_LENGTH_DIGITS}d}".encode("ascii"))
                out.write(raw)
        env = {
            **os.environ,
            "UID2_BENCH_REQUESTS": str(data),
            "UID2_BENCH_THREADS": str(threads),
            "UID2_BENCH_CYCLE": "1" if cycle else "0",
        }
        seconds = max(1, round(duration_s))
        command = [
            binary,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"http://{target.host}:{target.port}/",
        ]
        proc = subprocess.run(  # noqa: S603 (fixed argument list, loopback target)
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT_TAG):
            fields = json.loads(line[len(_RESULT_TAG) :])
            break
    else:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    completed = int(fields["requests"])
    bad_status = int(fields["status"])
    socket_errors = sum(int(fields[k]) for k in ("connect", "read", "write", "timeout"))
    return LoadResult(
        tool="wrk",
        completed=completed,
        ok=completed - bad_status,
        socket_errors=socket_errors,
        elapsed_s=int(fields["duration_us"]) / 1e6,
        p50_ms=int(fields["p50_us"]) / 1000,
        p99_ms=int(fields["p99_us"]) / 1000,
        exhausted=bool(fields["exhausted"]),
    )


# -------------------------------------------------------------------------------------- asyncio


class _Source:
    """Hands out requests in order until the list (or, when cycling, the time) runs out."""

    def __init__(self, requests: Sequence[bytes], cycle: bool, deadline: float) -> None:
        self.requests = requests
        self.cycle = cycle
        self.deadline = deadline
        self.position = 0
        self.exhausted = False

    def next(self) -> bytes | None:
        if time.perf_counter() >= self.deadline:
            return None
        if self.position >= len(self.requests):
            if not self.cycle:
                self.exhausted = True
                return None
            self.position = 0
        raw = self.requests[self.position]
        self.position += 1
        return raw


@dataclass
class _Stats:
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_ns: list[int] = field(default_factory=list)
    socket_errors: int = 0


class _Connection(asyncio.Protocol):
    """One keep-alive connection: write a request, read its whole answer, write the next."""

    def __init__(self, source: _Source, stats: _Stats, finished: asyncio.Future[None]) -> None:
        self._source = source
        self._stats = stats
        self._finished = finished
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._status = 0
        self._length: int | None = None
        self._chunked = False
        self._sent_at = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._stats.socket_errors += 1
        if not self._finished.done():
            self._finished.set_result(None)

    def _send_next(self) -> None:
        assert self._transport is not None
        raw = self._source.next()
        if raw is None:
            self._transport.close()
            return
        self._sent_at = time.perf_counter_ns()
        self._transport.write(raw)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._take_response():
            self._stats.latencies_ns.append(time.perf_counter_ns() - self._sent_at)
            self._stats.statuses[self._status] = self._stats.statuses.get(self._status, 0) + 1
            self._send_next()

    def _take_response(self) -> bool:
        buffer = self._buffer
        if self._length is None and not self._chunked:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return False
            head = bytes(buffer[:end]).lower()
            del buffer[: end + 4]
            self._status = int(head[9:12])
            marker = head.find(b"\r\ncontent-length:")
            if marker >= 0:
                stop = head.find(b"\r\n", marker + 2)
                self._length = int(head[marker + 17 : stop if stop >= 0 else None])
            elif b"\r\ntransfer-encoding: chunked" in head:
                self._chunked = True
            else:
                self._length = 0
        if self._chunked:
            return self._take_chunked()
        assert self._length is not None
        if len(buffer) < self._length:
            return False
        del buffer[: self._length]
        self._length = None
        return True

    def _take_chunked(self) -> bool:
        """Consume a whole chunked body (no trailers) once all of it has arrived."""
        buffer = self._buffer
        offset = 0
        while True:
            line_end = buffer.find(b"\r\n", offset)
            if line_end < 0:
                return False
            size = int(bytes(buffer[offset:line_end]).split(b";")[0], 16)
            offset = line_end + 2 + size + 2
            if len(buffer) < offset:
                return False
            if size == 0:
                del buffer[:offset]
                self._chunked = False
                return True


async def _drive(
    requests: Sequence[bytes], target: Target, connections: int, duration_s: float, cycle: bool
) -> tuple[_Stats, float, bool]:
    loop = asyncio.get_running_loop()
    stats = _Stats()
    start = time.perf_counter()
    source = _Source(requests, cycle, start + duration_s)
    finished: list[asyncio.Future[None]] = []
    for _ in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        finished.append(done)
        await loop.create_connection(
            lambda done=done: _Connection(source, stats, done),  # type: ignore[misc]
            target.host,
            target.port,
        )
    await asyncio.wait_for(asyncio.gather(*finished), timeout=duration_s + 30)
    return stats, time.perf_counter() - start, source.exhausted


def run_asyncio(
    requests: Sequence[bytes],
    target: Target,
    *,
    connections: int,
    duration_s: float,
    cycle: bool = False,
) -> LoadResult:
    """The same bounded run as ``run_wrk``, from this process (uvloop when available)."""
    if not requests:
        raise ValueError("no requests to send")
    factory: Callable[[], asyncio.AbstractEventLoop]
    try:
        import uvloop  # noqa: PLC0415 (optional accelerator)

        factory = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        stats, elapsed, exhausted = runner.run(
            _drive(requests, target, connections, duration_s, cycle)
        )
    latencies = sorted(stats.latencies_ns)
    completed = sum(stats.statuses.values())
    ok = sum(n for status, n in stats.statuses.items() if 200 <= status < 300)

    def percentile(q: float) -> float | None:
        if not latencies:
            return None
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1e6

    return LoadResult(
        tool="asyncio",
        completed=completed,
        ok=ok,
        socket_errors=stats.socket_errors,
        elapsed_s=elapsed,
        p50_ms=percentile(0.5),
        p99_ms=percentile(0.99),
        exhausted=exhausted,
        statuses=dict(stats.statuses),
    )


def run_load(
    tool: Tool,
    requests: Sequence[bytes],
    target: Target,
    *,
    connections: int,
    duration_s: float,
    cycle: bool = False,
) -> LoadResult:
    """Run one bounded load with the chosen back end (wrk inherits this process's CPU set)."""
    if tool == "wrk":
        return run_wrk(
            requests, target, connections=connections, duration_s=duration_s, cycle=cycle
        )
    return run_asyncio(
        requests, target, connections=connections, duration_s=duration_s, cycle=cycle
    )


def default_tool() -> Tool:
    return "wrk" if wrk_path() is not None else "asyncio"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Bounded keep-alive GET load against a loopback URL path."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/ops/healthcheck")
    parser.add_argument("--tool", choices=["wrk", "asyncio"], default=default_tool())
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args(argv)
    target = Target(args.host, args.port)
    if args.tool == "wrk" and wrk_path() is None:
        print(WRK_INSTALL_HINT, file=sys.stderr)
        return 2
    request = http_request("GET", args.path, target)
    result = run_load(
        args.tool,
        [request],
        target,
        connections=args.connections,
        duration_s=min(args.duration, 60.0),
        cycle=True,
    )
    print(result.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
