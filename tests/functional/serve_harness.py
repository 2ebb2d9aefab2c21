"""A real ``uid2-operator serve`` process tree over a data directory prepared with the real CLI.

``prepare`` runs ``init``, ``participant create`` and ``key create`` as subprocesses of the
installed ``uid2-operator`` command; ``Served`` starts ``serve`` on ephemeral ports, reads the
URLs it prints (the operator API's, the admin API's, and where it answers ``/metrics``: the
operator port, or the metrics port with ``--metrics-port``), waits until every worker answers,
and stops it with SIGTERM (the graceful path: workers flush usage and opt-outs). ``call`` seals
an envelope and posts it on a fresh connection, so with several workers the kernel spreads the
calls over all of them.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from cli_harness import Database

from uid2_operator.serve_settings import RUNTIME_DIR_VARIABLE
from uid2_operator.wire.envelope import open_response, seal_request, unframe_response

UID2_OPERATOR = str(Path(sys.executable).with_name("uid2-operator"))
ALL_ROLES = "GENERATOR,MAPPER,ID_READER,SHARER"
_AMBIENT_PREFIXES = ("UID2_", "EUID_")
"""Settings of the machine running the tests (a developer's shell, say) never reach the processes
under test (the operator's, and the SDK's own tests'); only the tests' own (``UID2_TEST_*``)
pass."""
_TEST_PREFIX = "UID2_TEST_"
_STARTUP_TIMEOUT_S = 60.0


_T = TypeVar("_T")


def poll(check: Callable[[], _T], timeout_s: float = 15.0) -> _T:
    """``check()`` every 0.1 s until it returns something truthy (the serve catching up: its
    poller, its schedule); its last value once ``timeout_s`` has passed, for the caller to
    assert on."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def runtime_dir_of(pid: int | str) -> Path:
    """The runtime directory serve named to worker ``pid`` (read from its environment)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (named,) = [v for v in environ if v.startswith(f"{RUNTIME_DIR_VARIABLE}=".encode())]
    return Path(named.split(b"=", 1)[1].decode())


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_AMBIENT_PREFIXES) or k.startswith(_TEST_PREFIX)
    }
    env.update(extra or {})
    return env


def cli(database: Database, *args: str, env: dict[str, str] | None = None) -> Any:
    """Run ``uid2-operator --json <args>`` and return its JSON document (fails on non-zero)."""
    result = subprocess.run(  # noqa: S603 (our own command)
        [UID2_OPERATOR, *database.cli_args(), "--json", *args],
        capture_output=True,
        text=True,
        env=clean_env(env),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


@dataclass(frozen=True)
class Credential:
    key_id: str
    key: str
    secret: str
    site_id: int

    @property
    def secret_bytes(self) -> bytes:
        return base64.b64decode(self.secret)


def create_key(
    database: Database,
    site_id: int,
    name: str,
    roles: str = ALL_ROLES,
    env: dict[str, str] | None = None,
) -> Credential:
    issued = cli(database, "key", "create", "--site-id", str(site_id), "--name", name,
                 "--roles", roles, env=env)  # fmt: skip
    return Credential(issued["key_id"], issued["key"], issued["secret"], site_id)


@dataclass(frozen=True)
class Prepared:
    database: Database
    admin_token: str
    site_id: int
    key: Credential


def prepare(
    database: Database, *, name: str = "Example publisher", env: dict[str, str] | None = None
) -> Prepared:
    """``init``, one publisher participant holding every client role, and one all-roles key
    (the CLI run with ``env`` added to its environment)."""
    initialised = cli(database, "init", env=env)
    participant = cli(database, "participant", "create", "--name", name, "--type", "publisher",
                      "--roles", ALL_ROLES, env=env)  # fmt: skip
    site_id = int(participant["site_id"])
    key = create_key(database, site_id, "all roles", env=env)
    return Prepared(database, initialised["admin_token"], site_id, key)


@dataclass(frozen=True)
class Reply:
    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


REPLAY_ERROR = {"status": "client_error", "message": "Invalid nonce: Request already received."}
"""What the operator answers to an envelope it has seen before."""


@dataclass(frozen=True)
class SealedRequest:
    """An enveloped request as sent (base64 text) and the nonce its answer is sealed with."""

    body: bytes
    nonce: bytes

    @classmethod
    def of(cls, payload: Any, cred: Credential) -> SealedRequest:
        nonce = os.urandom(8)
        sealed = seal_request(
            None if payload is None else json.dumps(payload).encode(),
            secret=cred.secret_bytes,
            now_ms=time.time_ns() // 1_000_000,
            nonce=nonce,
            random=os.urandom,
        )
        return cls(base64.b64encode(sealed), nonce)

    def opened(self, reply: Reply, cred: Credential) -> dict[str, Any] | None:
        """The answer to this request opened, for a 200 (None otherwise)."""
        if reply.status_code != 200:
            return None
        blob = unframe_response(reply.content, False)
        return open_response(blob, secret=cred.secret_bytes, nonce=self.nonce)


@dataclass
class Served:
    """A running ``serve`` tree: its URLs and everything it printed."""

    process: subprocess.Popen[str]
    base_url: str = ""
    admin_url: str = ""
    metrics_url: str = ""
    """Where serve answers ``/metrics`` (the whole URL, path included)."""
    lines: list[str] = field(default_factory=list)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """One request on a new connection (``http.client``: a fresh ``httpx`` client per request
        costs tens of milliseconds; a new connection is what spreads requests over the workers)."""
        return _request(self.base_url, method, path, body, headers)

    def metrics_port_request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """``request``, on the port ``metrics_url`` names."""
        return _request(self.metrics_url, method, path, body, headers)

    def post(self, path: str, body: bytes, key: str | None, content_type: str) -> Reply:
        headers = {"content-type": content_type}
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        return self.request("POST", path, body, headers)

    def call(
        self, path: str, payload: Any, cred: Credential
    ) -> tuple[Reply, dict[str, Any] | None]:
        """Seal ``payload``, post it (base64 text) and open a 200 answer (None otherwise)."""
        request = SealedRequest.of(payload, cred)
        response = self.post(path, request.body, cred.key, "text/plain")
        return response, request.opened(response, cred)

    def answered(self, path: str, request: SealedRequest, cred: Credential) -> dict[str, Any]:
        """Post ``request``: it must be answered 200 with a ``success`` envelope, returned."""
        reply = self.post(path, request.body, cred.key, "text/plain")
        assert reply.status_code == 200, reply.text
        opened = request.opened(reply, cred)
        assert opened is not None
        assert opened["status"] == "success", opened
        return opened

    def replayed(self, path: str, request: SealedRequest, cred: Credential, times: int) -> None:
        """Post the very same ``request`` ``times`` times, on fresh connections: every one must
        be refused as a replay."""
        replies = [self.post(path, request.body, cred.key, "text/plain") for _ in range(times)]
        got = [
            (
                reply.status_code,
                json.loads(reply.content) if reply.status_code == 400 else reply.text,
            )
            for reply in replies
        ]
        assert got == [(400, REPLAY_ERROR)] * times

    def admin(self, method: str, path: str, token: str, body: Any = None) -> httpx.Response:
        return httpx.request(
            method,
            self.admin_url + path,
            json=body,
            headers={"authorization": f"Bearer {token}"},
            timeout=30,
        )

    def metrics(self) -> str:
        """One scrape, where serve answers ``/metrics``."""
        return self.metrics_port_request("GET", urlsplit(self.metrics_url).path).text

    def workers(
        self, count: int, *, timeout_s: float, excluding: frozenset[str] = frozenset()
    ) -> set[str]:
        """The ids (process ids) of ``count`` live workers, none of them in ``excluding``: waits,
        the serve running all along, until fresh connections have reached that many."""
        seen: set[str] = set()
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.process.poll() is None, "\n".join(self.lines)
            assert time.monotonic() < deadline, (seen, "\n".join(self.lines))
            try:
                seen |= worker_ids(self.metrics())
            except OSError:  # between a worker's death and its successor's start
                time.sleep(0.05)
                continue
            seen = {w for w in seen if w not in excluding and alive(w)}
            if len(seen) >= count:
                return seen


def _request(
    base_url: str, method: str, path: str, body: bytes | None, headers: dict[str, str] | None
) -> Reply:
    url = urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, response.read())
    finally:
        connection.close()


def _reader(process: subprocess.Popen[str], lines: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip("\n"))


@contextmanager
def served(
    database: Database,
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
    log_level: str | None = None,
    own_group: bool = False,
) -> Iterator[Served]:
    """Start ``serve`` on ephemeral ports and wait until every worker answers its health check.

    ``log_level`` is passed as ``--log-level`` (serve's own default, ``warning``, when None).
    ``own_group``: serve and its workers in a process group (a session) of their own, as a
    terminal's are, so that a signal can be sent to the whole group."""
    levels = () if log_level is None else ("--log-level", log_level)
    process = subprocess.Popen(  # noqa: S603 (our own command)
        [UID2_OPERATOR, *database.cli_args(), "serve", "--port", "0", "--admin-port", "0",
         "--workers", str(workers), *levels, *extra_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_env(env),
        start_new_session=own_group,
    )  # fmt: skip
    server = Served(process)
    reader = threading.Thread(target=_reader, args=(process, server.lines), daemon=True)
    reader.start()
    try:
        _wait_ready(server, workers)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def _wait_ready(server: Served, workers: int) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while not (server.base_url and server.admin_url):
        assert server.process.poll() is None, "\n".join(server.lines)
        assert time.monotonic() < deadline, "\n".join(server.lines)
        for line in list(server.lines):
            found = re.match(r"operator API: (http://[^ ]+) .*, metrics: (\S+)\)$", line)
            if found:
                base_url, metrics = found.groups()
                # A path: on the operator port; else the metrics port's URL.
                server.metrics_url = base_url + metrics if metrics.startswith("/") else metrics
                server.base_url = base_url
            found = re.match(r"admin API: (http://\S+)", line)
            if found:
                server.admin_url = found.group(1)
        time.sleep(0.05)
    ready: set[str] = set()
    while len(ready) < workers:
        assert server.process.poll() is None, "\n".join(server.lines)
        assert time.monotonic() < deadline, (ready, "\n".join(server.lines))
        try:
            if server.request("GET", "/ops/healthcheck").status_code == 200:
                ready |= worker_ids(server.metrics())
        except OSError:
            pass
        time.sleep(0.05)


def alive(pid: int | str) -> bool:
    """True while ``pid`` runs (a zombie has exited: nobody may be there to reap an orphan)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def worker_ids(metrics_text: str) -> set[str]:
    """The worker that answered a scrape. A scrape lists every worker's series, each under its
    own ``worker`` label; only the answering worker labels ``uid2_operator_metrics_workers``."""
    return set(re.findall(r'uid2_operator_metrics_workers\{worker="(\d+)"\}', metrics_text))


# ------------------------------------------------------------- serve --json, and its sockets


@dataclass
class JsonRun:
    """A ``serve --json`` run: its JSON line, its process, and (once stopped) the rest of its
    standard output and all its standard error."""

    document: dict[str, Any]
    process: subprocess.Popen[str]
    rest: str = ""
    errors: str = ""


@contextmanager
def serving_json(data_dir: Path, *args: str) -> Iterator[JsonRun]:
    """``serve --json --init-if-new`` on ephemeral ports, stopped (SIGTERM) afterwards."""
    process = subprocess.Popen(  # noqa: S603 (our own command)
        [UID2_OPERATOR, "--data-dir", str(data_dir), "serve", "--json", "--init-if-new",
         "--port", "0", "--admin-port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env({"UID2_SALT_BUCKETS": "1024"}),
    )  # fmt: skip
    run: JsonRun | None = None
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        run = JsonRun(json.loads(line) if line else {}, process)
        assert line, "serve printed no JSON line"
        yield run
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            rest, errors = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            rest, errors = process.communicate()
        if run is not None:
            run.rest, run.errors = rest, errors


def listening_addresses(port: int) -> set[str]:
    """The local IPv4 addresses a socket listens on at ``port`` (``/proc/net/tcp``)."""
    found: set[str] = set()
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = row.split()[1], row.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            octets = bytes.fromhex(address)[::-1]  # little-endian on the machines this runs on
            found.add(".".join(str(o) for o in octets))
    return found
