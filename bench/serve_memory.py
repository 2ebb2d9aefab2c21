"""Memory of a real ``uid2-operator serve --workers 1`` worker with 2^20 salt buckets, warmed up.

    .venv/bin/python bench/serve_memory.py [--buckets 1048576] [--requests 5000] [--json out.json]

In a temporary data directory (``UID2_ENVIRONMENT=integ``, whose default is the reference's 2^20
buckets; ``--buckets`` sets ``UID2_SALT_BUCKETS``): ``init``, ``salts rotate --fraction 1`` (every
bucket then holds a previous salt too: the largest steady-state table), a publisher with a
GENERATOR + MAPPER key; then ``serve --workers 1`` on free loopback ports. Once the health check
answers, it warms the worker up with ``--requests`` token generates (each its own envelope) and
v3 maps of 1,000 emails (one per 50 generates), then reads, for the worker process and for the
parent (which runs the admin API and supervises), the resident set size (``VmRSS``), its peak
(``VmHWM``), and the proportional and unique set sizes (``Pss``, ``Private_*`` of
``/proc/PID/smaps_rollup``; the worker is spawned, so it shares little with the parent).

The parent's children are reported by role, each with its pid and command line: ``workers``
are the spawned processes that serve requests (multiprocessing's ``spawn_main``); every other
child, such as multiprocessing's resource tracker, is a ``helper``.

Nothing is asserted; the target is a worker under 200 MB.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from uid2_operator.wire.envelope import open_response, seal_request, unframe_response

VENV_BIN: Final = Path(sys.executable).parent
CLI: Final = str(VENV_BIN / "uid2-operator")
HOST: Final = "127.0.0.1"
MB: Final = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def _cli(env: dict[str, str], *args: str) -> Any:
    done = subprocess.run(  # noqa: S603 (fixed argument list)
        [CLI, "--json", *args], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout) if done.stdout.strip() else None


def _status(port: int, path: str) -> int:
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=2)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
    except OSError:
        return 0
    return status


def _memory(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM (status) and Pss, private pages (smaps_rollup) of ``pid``, in MB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024 / MB
    private = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == "Pss":
                out["Pss"] = int(value.split()[0]) * 1024 / MB
            elif name in ("Private_Clean", "Private_Dirty"):
                private += int(value.split()[0]) * 1024
    out["USS"] = private / MB
    return {k: round(v, 1) for k, v in out.items()}


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(p) for p in path.read_text().split()]
    except OSError:
        return []


WORKER: Final = "worker"
HELPER: Final = "helper"
_SPAWNED_CHILD: Final = "from multiprocessing.spawn import spawn_main"


def command_line(pid: int) -> str:
    """The command line of ``pid``, its arguments joined by spaces ("" once it has exited)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)


def role(command: str) -> str:
    """``WORKER`` for a process that multiprocessing spawned to run a target (how serve starts
    its workers), ``HELPER`` for any other child (the resource tracker, for one)."""
    return WORKER if _SPAWNED_CHILD in command else HELPER


def children_by_role(pid: int) -> dict[str, list[dict[str, Any]]]:
    """The children of ``pid`` as ``{role: [{"pid", "command"}, ...]}``, every role present."""
    found: dict[str, list[dict[str, Any]]] = {WORKER: [], HELPER: []}
    for child in _children(pid):
        command = command_line(child)
        found[role(command)].append({"pid": child, "command": command})
    return found


class Caller:
    """Sends enveloped requests with one API key over one keep-alive connection."""

    def __init__(self, port: int, key: str, secret: str) -> None:
        self._conn = http.client.HTTPConnection(HOST, port, timeout=60)
        self._key = key
        self._secret = base64.b64decode(secret)

    def call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        nonce = os.urandom(8)
        sealed = seal_request(
            json.dumps(payload).encode(),
            secret=self._secret,
            now_ms=time.time_ns() // 1_000_000,
            nonce=nonce,
            random=os.urandom,
        )
        self._conn.request(
            "POST",
            path,
            body=base64.b64encode(sealed),
            headers={"Authorization": f"Bearer {self._key}", "Content-Type": "text/plain"},
        )
        response = self._conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}: {body[:200]!r}")
        return open_response(unframe_response(body, False), secret=self._secret, nonce=nonce)

    def close(self) -> None:
        self._conn.close()


def prepare(env: dict[str, str]) -> tuple[dict[str, Any], int]:
    """A new data directory with a rotated salt table and one publisher key: the key as issued,
    and the number of buckets the table holds (what the rotation reports)."""
    _cli(env, "init")
    bucket_count = int(_cli(env, "salts", "rotate", "--fraction", "1")["bucket_count"])
    site = _cli(
        env,
        "participant", "create", "--name", "bench publisher", "--type", "publisher",
        "--roles", "GENERATOR,MAPPER", "--contact", "ops@example.com",
    )["site_id"]  # fmt: skip
    issued: dict[str, Any] = _cli(
        env, "key", "create", "--site-id", str(site), "--name", "bench key",
        "--roles", "GENERATOR,MAPPER",
    )  # fmt: skip
    return issued, bucket_count


def warm_up(port: int, issued: dict[str, Any], requests: int) -> float:
    """``requests`` generates and a 1,000-email v3 map every 50; seconds taken."""
    caller = Caller(port, issued["key"], issued["secret"])
    emails = [f"mapped.user{i}@example.com" for i in range(1000)]
    started = time.perf_counter()
    try:
        for n in range(requests):
            answer = caller.call("/v2/token/generate", {"email": f"user{n}@example.com"})
            if answer["status"] != "success":
                raise RuntimeError(f"generate answered {answer['status']}")
            if n % 50 == 0:
                caller.call("/v3/identity/map", {"email": emails})
    finally:
        caller.close()
    return time.perf_counter() - started


@contextlib.contextmanager
def serving_one_worker(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], int, float]]:
    """``uid2-operator serve --workers 1`` on free loopback ports, in a process group of its own:
    yields serve's process, its operator port and how long it took to answer its health check;
    stopped on the way out (``stop``), however the block ends."""
    port, admin_port = _free_port(), _free_port()
    command = [CLI, "serve", "--workers", "1", "--port", str(port)]
    command += ["--admin-port", str(admin_port)]
    parent = subprocess.Popen(  # noqa: S603 (fixed argument list)
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        started = time.perf_counter()
        while _status(port, "/ops/healthcheck") != 200:
            if parent.poll() is not None or time.perf_counter() - started > 120:
                raise RuntimeError("serve did not become healthy")
            time.sleep(0.2)
        yield parent, port, time.perf_counter() - started
    finally:
        stop(parent)


def stop(parent: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM to serve (it stops its workers); once it has exited, or after ``timeout_s``,
    SIGKILL to whatever is left of its process group. serve is reaped only after that, so its
    pid, which names the group, cannot have been reused by then."""
    with contextlib.suppress(ProcessLookupError):
        parent.send_signal(signal.SIGTERM)
    ends = time.perf_counter() + timeout_s
    while time.perf_counter() < ends and _running(parent.pid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(parent.pid, signal.SIGKILL)
    parent.wait()


def _running(pid: int) -> bool:
    """Whether the child ``pid`` has not exited yet (it is left unreaped either way)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False


def print_figures(figures: dict[str, Any]) -> None:
    """One line a figure; each worker and helper under its role, pid and command line."""
    children = {f"{WORKER}s": WORKER, f"{HELPER}s": HELPER}
    for name, value in figures.items():
        if name not in children:
            print(f"{name:24}{value}")
    for name, group in children.items():
        for child in figures[name]:
            print(f"{group} {child['pid']}: {child['command']}")
            for moment in ("at_start", "after_warm_up"):
                if moment in child:
                    print(f"  {moment:22}{child[moment]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buckets", type=int, default=1 << 20)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--json", dest="json_path", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        # The bucket count is always set: one inherited from the environment would be measured
        # under another name.
        env = {**os.environ, "UID2_DATA_DIR": tmp, "UID2_ENVIRONMENT": "integ"}
        env["UID2_SALT_BUCKETS"] = str(args.buckets)
        started = time.perf_counter()
        issued, bucket_count = prepare(env)
        prepared_s = time.perf_counter() - started
        if bucket_count != args.buckets:
            raise RuntimeError(f"the salt table holds {bucket_count} buckets, not {args.buckets}")

        with serving_one_worker(env) as (parent, port, ready_s):
            children = children_by_role(parent.pid)
            if not children[WORKER]:
                raise RuntimeError(f"serve has no worker among its children: {children}")
            at_start = {c["pid"]: _memory(c["pid"]) for c in children[WORKER]}

            warm_s = warm_up(port, issued, args.requests)

            figures: dict[str, Any] = {
                "buckets": bucket_count,
                "prepare_s": round(prepared_s, 1),
                "ready_s": round(ready_s, 1),
                "warm_up_requests": args.requests + -(-args.requests // 50),
                "warm_up_s": round(warm_s, 1),
                "parent": _memory(parent.pid),
                "workers": [
                    {
                        **child,
                        "at_start": at_start[child["pid"]],
                        "after_warm_up": _memory(child["pid"]),
                    }
                    for child in children[WORKER]
                ],
                "helpers": [
                    {**child, "after_warm_up": _memory(child["pid"])} for child in children[HELPER]
                ],
            }
    print_figures(figures)
    if args.json_path is not None:
        args.json_path.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
