"""A port serve listens on stays its own while no worker listens on it: before its first worker
listens, and while a worker that died is restarted. A second serve (on a data directory and a
database of its own) given that port, the operator port or the metrics port, stops as on any
port taken (``cannot listen on <host>:<port>: Address already in use``, exit status 1) rather
than listening beside the first one and taking half its connections.

The moments are held still with SIGSTOP: the first serve's worker stopped before it listens, or
the first serve itself stopped with its worker killed, so that it cannot restart it. What listens
is read from the kernel's socket table (``/proc/net/tcp``).

A serve stopped after serving connections (which leaves them in TIME_WAIT on its port) starts
again at once on that port, and holds it as firmly. A worker that cannot bind its port (another
program took it while serve held it less firmly, over connections that program left in
TIME_WAIT) says so in one line, with no traceback, and serve gives up as on any worker that keeps
exiting at start.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from serve_harness import UID2_OPERATOR, alive, clean_env, poll

pytestmark = [
    pytest.mark.functional,
    pytest.mark.skipif(sys.platform != "linux", reason="reads the kernel's socket table"),
]

ENV = {"UID2_SALT_BUCKETS": "1024"}
DEADLINE_S = 60.0
LISTEN = "0A"
TIME_WAIT = "06"


@dataclass
class Running:
    """A ``serve --json`` process, its JSON line once read, and its standard error so far."""

    process: subprocess.Popen[str]
    errors: list[str] = field(default_factory=list)
    document: dict[str, Any] = field(default_factory=dict)

    def announced(self) -> dict[str, Any]:
        """The JSON line serve prints once a worker accepts connections."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "\n".join(self.errors)
        self.document = json.loads(line)
        return self.document

    def workers(self) -> set[int]:
        """The worker processes serve started (its children running ``spawn_main``)."""
        found: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes()
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if ppid == self.process.pid and b"spawn_main" in cmdline:
                found.add(int(entry.name))
        return found

    def the_worker(self) -> int:
        """Its one worker, once it runs."""
        workers = poll(self.workers, DEADLINE_S)
        assert len(workers) == 1, ("\n".join(self.errors), workers)
        return workers.pop()

    def answers(self) -> bool:
        url = urlsplit(self.document["operator_url"])
        try:
            return _status(url.hostname or "", url.port or 0, {}) == 200
        except OSError:
            return False


@contextmanager
def _serving(data_dir: Path, *args: str) -> Iterator[Running]:
    """``serve --json --init-if-new`` with the admin API on a free port; stopped (SIGTERM)
    afterwards, it and its workers first woken should the test have stopped them."""
    process = subprocess.Popen(  # noqa: S603 (our own command)
        [UID2_OPERATOR, "--data-dir", str(data_dir), "serve", "--json", "--init-if-new",
         "--admin-port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(ENV),
    )  # fmt: skip
    running = Running(process)
    reader = threading.Thread(target=_lines, args=(process.stderr, running.errors), daemon=True)
    reader.start()
    try:
        yield running
    finally:
        for pid in (*running.workers(), process.pid):
            _signal(pid, signal.SIGCONT)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def _lines(stream: Any, into: list[str]) -> None:
    for line in stream:
        into.append(line.rstrip("\n"))


def _signal(pid: int, signum: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signum)


@dataclass(frozen=True)
class Second:
    """How a second serve ended: its status, what it announced (empty when it did not) and its
    standard error."""

    returncode: int
    announced: str
    errors: str


def _second_serve(data_dir: Path, *args: str) -> Second:
    """A second ``serve --json``, stopped (SIGTERM) as soon as it announces where it listens."""
    process = subprocess.Popen(  # noqa: S603 (our own command)
        [UID2_OPERATOR, "--data-dir", str(data_dir), "serve", "--json", "--init-if-new",
         "--admin-port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(ENV),
    )  # fmt: skip
    watchdog = threading.Timer(DEADLINE_S, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        announced = ""
        for line in process.stdout:  # until it announces, or stops (its init, its error)
            if "operator_url" in line:
                announced = line
                process.send_signal(signal.SIGTERM)
                break
        _, errors = process.communicate(timeout=DEADLINE_S)
    finally:
        watchdog.cancel()
    return Second(process.returncode, announced, errors)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sockets(port: int, state: str) -> int:
    """How many IPv4 sockets of ``port`` (their local port) are in ``state`` (/proc/net/tcp)."""
    count = 0
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, row_state = row.split()[1], row.split()[3]
        if row_state == state and int(local.split(":")[1], 16) == port:
            count += 1
    return count


def _kill(worker: int, port: int) -> None:
    """Kill ``worker`` (SIGKILL) and wait until its sockets are gone: a process shows as exited
    once its first thread has, its files are closed once every thread has."""
    os.kill(worker, signal.SIGKILL)
    assert poll(lambda: not alive(worker), DEADLINE_S)
    assert poll(lambda: _sockets(port, LISTEN) == 0, DEADLINE_S)


def _status(host: str, port: int, headers: dict[str, str]) -> int:
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request("GET", "/ops/healthcheck", headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _closed_by_server(port: int) -> bytes:
    """A health check asking the server to close; the answer is read to the server's end of the
    connection before this side closes, so the side that closed first, and so holds the
    connection in TIME_WAIT, is always the server's."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /ops/healthcheck HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _refused(second: Second, port: int) -> None:
    assert second.returncode == 1, (second.announced, second.errors)
    assert second.announced == ""
    assert f"Error: cannot listen on 127.0.0.1:{port}: Address already in use" in second.errors
    assert "Traceback" not in second.errors


PORTS = pytest.mark.parametrize("which", ["--port", "--metrics-port"])


def _args(which: str, port: int) -> tuple[str, ...]:
    """``port`` given as ``which``; the operator port a free one when it is the metrics port."""
    return (which, str(port)) if which == "--port" else ("--port", "0", which, str(port))


@PORTS
def test_a_second_serve_is_refused_the_port_before_the_first_ones_worker_listens(
    tmp_path: Path, which: str
) -> None:
    port = _free_port()
    with _serving(tmp_path / "first", *_args(which, port)) as first:
        worker = first.the_worker()
        os.kill(worker, signal.SIGSTOP)  # started, not listening yet
        assert _sockets(port, LISTEN) == 0, "\n".join(first.errors)
        second = _second_serve(tmp_path / "second", *_args(which, port))
        os.kill(worker, signal.SIGCONT)
        first.announced()
        assert first.process.poll() is None
    _refused(second, port)


@PORTS
def test_a_second_serve_is_refused_the_port_while_the_first_restarts_its_worker(
    tmp_path: Path, which: str
) -> None:
    port = _free_port()
    with _serving(tmp_path / "first", *_args(which, port)) as first:
        first.announced()
        worker = first.the_worker()
        os.kill(first.process.pid, signal.SIGSTOP)  # it cannot restart the worker meanwhile
        _kill(worker, port)
        second = _second_serve(tmp_path / "second", *_args(which, port))
        os.kill(first.process.pid, signal.SIGCONT)
        # The first one restarts its worker, on its port.
        assert poll(lambda: first.workers() - {worker}, DEADLINE_S), "\n".join(first.errors)
        assert poll(lambda: _sockets(port, LISTEN) == 1, DEADLINE_S), "\n".join(first.errors)
        assert poll(first.answers, DEADLINE_S)
    _refused(second, port)


def test_a_serve_stopped_after_serving_starts_again_at_once_and_holds_its_port(
    tmp_path: Path,
) -> None:
    with _serving(tmp_path / "data", "--port", "0") as before:
        port = urlsplit(before.announced()["operator_url"]).port
        assert port is not None
        for _ in range(3):  # answered and closed by the worker: TIME_WAIT on serve's side
            assert _closed_by_server(port).startswith(b"HTTP/1.1 200 ")
    assert before.process.returncode == 0, "\n".join(before.errors)
    assert _sockets(port, TIME_WAIT) > 0
    with _serving(tmp_path / "data", "--port", str(port)) as again:
        assert urlsplit(again.announced()["operator_url"]).port == port
        assert not [line for line in again.errors if "held less firmly" in line]
        worker = again.the_worker()
        os.kill(again.process.pid, signal.SIGSTOP)
        _kill(worker, port)
        assert _probe(port) == errno.EADDRINUSE  # what another serve would see
        os.kill(again.process.pid, signal.SIGCONT)
        assert poll(lambda: _sockets(port, LISTEN) == 1, DEADLINE_S), "\n".join(again.errors)


def _probe(port: int) -> int:
    """The error (0: none) of a bind with ``SO_REUSEADDR`` alone on ``port``, as the bind that
    checks a port is free in serve."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            other.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno or -1
    return 0


def _left_in_time_wait() -> int:
    """A port on which a program listening without ``SO_REUSEPORT`` (as most do) answered a
    connection and closed it first: that connection is left in TIME_WAIT, for a minute."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = int(listener.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            accepted.close()
            client.recv(1)  # the end of the connection the program closed
    assert _sockets(port, TIME_WAIT) > 0
    return port


def test_a_worker_that_cannot_bind_says_so_in_one_line_and_serve_gives_up(
    tmp_path: Path,
) -> None:
    port = _left_in_time_wait()
    other = socket.socket()
    try:
        with _serving(tmp_path / "data", "--port", str(port)) as running:
            running.announced()
            assert (
                f"WARNING uid2_operator.cli.serve: port {port} held less firmly: connections "
                "another program left on it are still in TIME_WAIT, so while no worker listens "
                "another serve may join it"
            ) in running.errors
            worker = running.the_worker()
            os.kill(running.process.pid, signal.SIGSTOP)
            _kill(worker, port)
            # Another program takes the port meanwhile.
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            other.bind(("127.0.0.1", port))
            other.listen()
            os.kill(running.process.pid, signal.SIGCONT)
            running.process.wait(timeout=DEADLINE_S)
    finally:
        other.close()
    errors = running.errors  # all of them: serve has stopped
    assert running.process.returncode == 1, "\n".join(errors)
    assert not [line for line in errors if "Traceback" in line], "\n".join(errors)
    refused = f": cannot listen on 127.0.0.1:{port}: Address already in use"
    lines = [line for line in errors if refused in line]
    assert lines, "\n".join(errors)
    for line in lines:
        assert line.startswith("ERROR uid2_operator.cli.serve: worker "), line
    gave_up = "Error: workers keep exiting at startup (last exit status 1)"
    assert errors[-1].startswith(gave_up), "\n".join(errors)
