"""Logouts confirmed while the store cannot take writes survive a stop of ``serve``.

A real ``serve`` with two workers over SQLite: another connection holds the store's write lock
(``BEGIN EXCLUSIVE``) while logouts are answered ``{"optout": "OK"}``, and serve is stopped with
SIGTERM before the lock is released. Each worker's last flush gives up within its budget and
saves the opt-outs it could not write to the data directory; the next serve writes them, each
once, and removes the files. Nothing logged on the way carries an identity, nor a traceback: a
request cancelled by the graceful-shutdown bound is one WARNING line, not uvicorn's "Exception in
ASGI application" with the cancellation's traceback.

A file of saved opt-outs that appears while serve runs (left by a worker stopped on its own, or
by a worker of an earlier serve) is written by the workers already running, without a restart:
each looks for such files every few seconds.

Slow clients do not make a stopping worker overrun the time serve gives it (it is killed 15 s
after its SIGTERM, and what it had not saved would be lost): one still sending a request body
when the stop comes (one byte a second) is answered 503 at once rather than waited for; one that
never reads its answers is given up on after the server's graceful-shutdown bound, its request
cancelled, and the last flush still has its whole budget.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import pytest
from cli_harness import database_for, settings_of
from serve_harness import (
    Credential,
    Prepared,
    SealedRequest,
    Served,
    alive,
    cli,
    create_key,
    poll,
    prepare,
    served,
)

from uid2_operator.bootstrap import open_services
from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.services.write_behind import PENDING_OPTOUTS_DIR, read_saved, save_optouts
from uid2_operator.storage import open_store
from uid2_operator.wire.identity import hash_identity, normalize_email

pytestmark = pytest.mark.functional
# The package names its command ``serve``, so the module is imported by its name.
serve_command = importlib.import_module("uid2_operator.cli.serve")

LOGOUT = "/v2/token/logout"
GENERATE = "/v2/token/generate"
LOGOUTS = 30
FLUSH_EVERY = {"UID2_FLUSH_INTERVAL_S": "0.3"}
TRICKLED_BODY_BYTES = 100
UNREAD_MAPS = 10
MAPPED_EMAILS = 10_000
"""Each map answer is about 1 MB: ten of them are more than the kernel buffers of a connection
whose client reads nothing."""


class SlowClient(Protocol):
    def close(self) -> None: ...


def _connect(base_url: str) -> socket.socket:
    url = urlsplit(base_url)
    return socket.create_connection((url.hostname or "", url.port or 0), timeout=30)


def _post_head(path: str, cred: Credential, length: int) -> bytes:
    return (
        b"POST " + path.encode() + b" HTTP/1.1\r\nhost: operator\r\n"
        b"authorization: Bearer " + cred.key.encode() + b"\r\n"
        b"content-type: text/plain\r\n"
        b"content-length: %d\r\n\r\n" % length
    )


class TricklingClient:
    """A logout whose body (``TRICKLED_BODY_BYTES`` declared) is sent one byte a second, never
    whole: whatever the server answers is kept in ``answer``, until it closes the connection."""

    def __init__(self, server: Served, prepared: Prepared, optout_key: Credential) -> None:
        del prepared
        self.sock = _connect(server.base_url)
        self.sock.sendall(_post_head(LOGOUT, optout_key, TRICKLED_BODY_BYTES))
        self.answer = bytearray()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._trickle, name="trickle", daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        self.sock.settimeout(1.0)
        sent = 0
        while not self._done.is_set():
            try:
                if sent < TRICKLED_BODY_BYTES - 1 and not self.answer:
                    self.sock.sendall(b"x")
                    sent += 1
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            self.answer += chunk

    def close(self) -> None:
        self._done.set()
        self._thread.join(timeout=10)
        self.sock.close()


class UnreadAnswers:
    """Identity maps posted one after the other on one connection whose answers (about 1 MB
    each) are never read: the worker's writes, then the answer it is about to start, wait for a
    reader that never comes."""

    def __init__(self, server: Served, prepared: Prepared, optout_key: Credential) -> None:
        del optout_key
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        url = urlsplit(server.base_url)
        self.sock.connect((url.hostname or "", url.port or 0))
        self.sock.settimeout(3.0)
        emails = [f"mapped-{n}@example.com" for n in range(MAPPED_EMAILS)]
        for _ in range(UNREAD_MAPS):
            request = SealedRequest.of({"email": emails}, prepared.key)
            try:
                self.sock.sendall(
                    _post_head("/v3/identity/map", prepared.key, len(request.body)) + request.body
                )
            except TimeoutError:  # the worker reads no more: its answers are stuck
                break
            time.sleep(0.3)

    def close(self) -> None:
        self.sock.close()


def _stopped_with_optouts_pending(
    tmp_path: Path,
    slow: Callable[[Served, Prepared, Credential], SlowClient] | None = None,
    *,
    hang_up: bool = False,
) -> tuple[float, str, SlowClient | None]:
    """Logouts confirmed while the store's write lock is held, then SIGTERM (with a ``slow``
    client connected, if any), or with ``hang_up`` SIGHUP to serve's whole process group (its
    terminal closed); the opt-outs saved must all be written by the next serve, each once. How
    long the stop took, what serve printed, and the slow client."""
    with database_for("sqlite", tmp_path) as database:
        prepared = prepare(database)
        site = cli(database, "participant", "create", "--name", "Opt-out service",
                   "--type", "data_provider", "--roles", "OPTOUT")["site_id"]  # fmt: skip
        optout_key: Credential = create_key(database, int(site), "logout", roles="OPTOUT")
        emails = [f"leaving-{n}@example.com" for n in range(LOGOUTS)]
        pending = database.data_dir / PENDING_OPTOUTS_DIR
        client: SlowClient | None = None

        with served(database, workers=2, env=FLUSH_EVERY, own_group=hang_up) as server:
            lock = sqlite3.connect(database.sqlite_path, timeout=30, isolation_level=None)
            lock.execute("BEGIN EXCLUSIVE")
            try:
                for email in emails:
                    reply, body = server.call(LOGOUT, {"email": email}, optout_key)
                    assert reply.status_code == 200, reply.text
                    assert body == {"status": "success", "body": {"optout": "OK"}}
                if slow is not None:
                    client = slow(server, prepared, optout_key)
                time.sleep(1.0)  # the workers' flushes now wait for the lock
                took = _hang_up(server) if hang_up else _stop(server)
            finally:
                if client is not None:
                    client.close()
                lock.execute("ROLLBACK")
                lock.close()
        output = "\n".join(server.lines)

        saved = sorted(pending.glob("*.json"))
        assert saved, output
        assert sum(len(read_saved(path)) for path in saved) == LOGOUTS, output
        assert output.count("opt-outs not written to the store before stopping were saved to")
        assert "after SIGTERM; killed" not in output
        assert "Traceback" not in output  # not even for a request cancelled at the stop
        assert "Exception in ASGI application" not in output
        assert not [email for email in emails if email in output]

        with served(database, workers=2, env=FLUSH_EVERY) as server:
            assert poll(lambda: not list(pending.iterdir()), timeout_s=30), server.lines

            def refused() -> bool:
                answers = [server.call(GENERATE, {"email": e}, prepared.key)[1] for e in emails]
                return all(a is not None and a["status"] == "optout" for a in answers)

            assert poll(refused, timeout_s=30)

    store = open_store(f"sqlite:///{database.sqlite_path}")
    try:
        with store.read() as tx:
            events = tx.audit.list_events(action="optout.add")
            optouts = tx.optouts.count()
    finally:
        store.close()
    written = [e.target_id for e in events if e.actor == "operator"]
    assert len(written) == len(set(written)) == LOGOUTS  # each confirmed opt-out, once
    assert optouts >= LOGOUTS
    return took, output, client


def _stop(server: Served) -> float:
    """SIGTERM to serve; how long it took to exit."""
    stopping = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=60)
    return time.monotonic() - stopping


def _hang_up(server: Served) -> float:
    """SIGHUP to serve and its workers at once, as a closed terminal sends it; how long serve
    took to exit, which it must do as on SIGTERM (exit status 0)."""
    stopping = time.monotonic()
    os.killpg(os.getpgid(server.process.pid), signal.SIGHUP)
    assert server.process.wait(timeout=60) == 0
    return time.monotonic() - stopping


def test_logouts_confirmed_while_the_store_is_locked_are_written_after_a_restart(
    tmp_path: Path,
) -> None:
    took, output, _ = _stopped_with_optouts_pending(tmp_path)
    assert took < 10, output  # no worker waited to be killed
    assert "Traceback" not in output


def test_a_closed_terminal_stops_serve_without_losing_confirmed_optouts(tmp_path: Path) -> None:
    took, output, _ = _stopped_with_optouts_pending(tmp_path, hang_up=True)
    assert took < 10, output
    assert output.rstrip().endswith("stopped")


def test_a_client_trickling_a_body_neither_holds_up_the_stop_nor_loses_confirmed_optouts(
    tmp_path: Path,
) -> None:
    took, output, client = _stopped_with_optouts_pending(tmp_path, TricklingClient)
    assert took < 10, output  # well before a worker is killed (15 s after its SIGTERM)
    assert "Traceback" not in output
    assert isinstance(client, TricklingClient)
    assert client.answer.startswith(b"HTTP/1.1 503 "), client.answer
    assert b"connection: close" in client.answer.lower()


def test_a_client_that_never_reads_its_answers_does_not_make_a_worker_lose_optouts(
    tmp_path: Path,
) -> None:
    took, output, _ = _stopped_with_optouts_pending(tmp_path, UnreadAnswers)
    # Its request is cancelled once the graceful-shutdown bound has passed; the last flush
    # then has its budget, and the opt-outs it cannot write are saved, before the kill.
    assert "timeout graceful shutdown exceeded" in output, output
    assert took < 15, output
    # The cancelled request is one WARNING line, without a traceback (checked above).
    cancelled = (
        "request cancelled: still running when the stop's grace period "
        f"({serve_command._GRACEFUL_SHUTDOWN_S} s) ran out"
    )
    lines = [line for line in output.splitlines() if cancelled in line]
    assert lines, output
    assert all(line.startswith("WARNING") for line in lines), lines


def test_a_file_saved_while_serve_runs_is_written_by_the_running_workers(tmp_path: Path) -> None:
    with database_for("sqlite", tmp_path) as database:
        prepared = prepare(database)
        emails = [f"left-behind-{n}@example.com" for n in range(LOGOUTS)]
        services = open_services(settings_of(database))
        try:
            salts = services.material.load_material().salts
        finally:
            services.close()
        now_ms = time.time_ns() // 1_000_000
        records = [
            OptOutRecord(salts.first_level_hash(hash_identity(normalize_email(email))), now_ms)
            for email in emails
        ]
        pending = database.data_dir / PENDING_OPTOUTS_DIR

        with served(database, workers=2, env=FLUSH_EVERY) as server:
            workers = server.workers(2, timeout_s=30)  # started, their first look made

            def answers() -> list[str]:
                replies = [server.call(GENERATE, {"email": e}, prepared.key)[1] for e in emails]
                return [a["status"] if a is not None else "no answer" for a in replies]

            assert answers() == ["success"] * LOGOUTS
            save_optouts(pending / "4242-1700000000000.json", records)  # as a stop saves them
            assert poll(lambda: answers() == ["optout"] * LOGOUTS, timeout_s=15), server.lines
            assert poll(lambda: not list(pending.iterdir()), timeout_s=15), server.lines
            assert all(alive(pid) for pid in workers), server.lines
            output = "\n".join(server.lines)
            assert "restarting" not in output
            assert output.count("opt-outs saved at an earlier stop written to the store") == 1

    store = open_store(f"sqlite:///{database.sqlite_path}")
    try:
        with store.read() as tx:
            events = tx.audit.list_events(action="optout.add")
    finally:
        store.close()
    written = [e.target_id for e in events if e.actor == "operator"]
    assert len(written) == len(set(written)) == LOGOUTS  # each saved opt-out, once
