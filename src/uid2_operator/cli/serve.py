"""``uid2-operator serve``: the operator API in N worker processes and the admin API beside them.

Process layout (docs/operator.md has the operator's view):

- the **serving process** (this command) checks the data directory (running ``init`` first with
  ``--init-if-new``), makes sure the encryption material exists, records in the store the
  longest lifetime it gives tokens (every key purge honours it), serves the admin API on
  ``--admin-port`` from a thread, and runs the material upkeep from another thread
  (``_UpkeepThread``): the key rotation schedule every ``UID2_KEY_ROTATION_INTERVAL_S`` (which
  also purges keys expired longer than the retention; run at once when an enabled keyset has no
  active key at the time of day, or the time of day jumped) followed by the deletion of the
  client secrets no request can use again (their overlap window over, or their key revoked,
  retired or expired), and, whenever the store changed, the
  creation of a default keyset for any participant that has none yet. Its own loop only says
  where serve listens, restarts dead workers and waits for the stop signal, so a slow store (a
  writer waits up to 10 s for the write lock) or a long rotation delays none of these;
- **N worker processes** (``--workers``) each serve the operator API on ``--port`` from their own
  snapshot (``web.operator_api.server.create_worker_app``), and with ``--metrics-port`` the
  Prometheus ``/metrics`` on that port instead of the operator port. On Linux every worker
  listens on its own ``SO_REUSEPORT`` socket per port, so the kernel spreads connections evenly
  across workers; elsewhere they share one listening socket per port. A worker that dies is
  restarted. A worker whose serving process is gone (killed without stopping it) stops by
  itself, as on SIGTERM.

SIGINT or SIGTERM tells the upkeep to stop after the step it is in, stops the workers (each
ends its requests, waiting at most ``_GRACEFUL_SHUTDOWN_S`` for them, then flushes its pending
usage and opt-outs) and then the admin API, and closes the store once the
upkeep has stopped, or ``_UPKEEP_JOIN_S`` after the signal when a store call still holds it
(a warning names the step; its thread is a daemon, so it never keeps the process alive).

The data directory belongs to one serve at a time (``cli.serve_lock``): a second one on it stops
before it binds a port, and the one after a crash takes over the runtime directory the crashed
one left (its replay table serves on; the directory is removed).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import multiprocessing
import os
import resource
import shlex
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing import resource_tracker
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any, Final

import click
import uvicorn
from click.core import ParameterSource

from uid2_operator.bootstrap import (
    KeyringFile,
    Services,
    bootstrap_token_missing,
    check_environment,
    check_store_environment,
    check_store_recordable,
    database_is_new,
    open_services,
    record_store_environment,
    shown_database_url,
    store_environment,
    sweep_keyring_debris,
)
from uid2_operator.cli.database import Initialised, initialise
from uid2_operator.cli.output import OutputLost, echo, note, os_reason, show_once_warning
from uid2_operator.cli.params import AsciiIntRange
from uid2_operator.cli.runtime import (
    json_option,
    load_settings,
    require_data_directory,
    wants_json,
)
from uid2_operator.cli.serve_lock import RUNTIME_PREFIX, ServeLock, runtime_parent, take_over
from uid2_operator.clock import SystemClock
from uid2_operator.domain.keysets import Coverage, key_coverage_ms
from uid2_operator.domain.sealing import Keyring, KeyringSource
from uid2_operator.error_text import described
from uid2_operator.errors import SchemaOutOfDate, StoreUnavailable, UID2Error
from uid2_operator.serve_settings import (
    RUNTIME_DIR_VARIABLE,
    ServeSettings,
    longest_token_lifetime_s,
)
from uid2_operator.services import replay_table, write_behind
from uid2_operator.services.material import MaterialService
from uid2_operator.settings import DB_FILE, EnvironmentSource, Settings
from uid2_operator.stop_signals import (
    STOP_SIGNALS,
    StopRequest,
    handle_stop_signals,
    interruptions_quiet,
    leave_to_main_thread,
    restore_handlers,
)
from uid2_operator.storage.interface import Store
from uid2_operator.web.admin_api.app import create_admin_app
from uid2_operator.web.admin_api.bodies import MAX_BODY_BYTES
from uid2_operator.web.http_connection import HttpLimits, http_protocol
from uid2_operator.web.operator_api.app import BODY_LIMIT
from uid2_operator.web.operator_api.metrics_files import remove_worker_files
from uid2_operator.web.operator_api.server import METRICS, create_worker_app

log = logging.getLogger(__name__)

_REUSE_PORT: Final = hasattr(socket, "SO_REUSEPORT")
_RESTART_PAUSE_S: Final = 1.0
_STOP_TIMEOUT_S: Final = 15.0
"""How long a worker has from its SIGTERM to stop before it is killed: its connections end (within
``_GRACEFUL_SHUTDOWN_S``), then its last flush takes up to ``write_behind.STOP_BUDGET_S`` (6 s)
and saves what it could not write; the rest (``_STOP_MARGIN_S``) is headroom for a slow
machine."""
_STOP_MARGIN_S: Final = 4.0
"""What a stopping worker keeps for the end of its last flush (waiting for a commit under way,
saving the opt-outs not written: ``write_behind.COMMIT_WAIT_S`` and a file) and for exiting."""
_GRACEFUL_SHUTDOWN_S: Final = int(_STOP_TIMEOUT_S - write_behind.STOP_BUDGET_S - _STOP_MARGIN_S)
"""How long (whole seconds, as uvicorn takes it) a stopping server waits for the requests under
way before its application's shutdown begins (``uvicorn.Config(timeout_graceful_shutdown=...)``);
the requests still running then are cancelled. Without a bound uvicorn waits for every open
request, so one client slow to read its answer would hold a worker until it is killed, its last
flush never started."""
_QUICK_EXIT_S: Final = 10.0
_QUICK_EXIT_LIMIT: Final = 3
_PARENT_CHECK_S: Final = 0.25
_ANNOUNCE_WARNING_S: Final = 30
_UPKEEP_EVERY_S: Final = 0.2
_UPKEEP_JOIN_S: Final = 15.0
"""How long serve, once stopping, waits for the upkeep to finish the step it is in before it
closes the store anyway: above the 10 s a store write waits for its lock."""
_CLOCK_JUMP_S: Final = 60.0
"""How much further (or less far) the time of day may move than the monotonic clock between two
turns of the upkeep before the key rotation runs at once (``_Upkeep``)."""

_ANY_V4: Final = "0.0.0.0"  # noqa: S104 (what an empty host means: every interface)
_PROBE_TARGETS: Final = {
    "0.0.0.0": ("127.0.0.1",),  # noqa: S104 (what serve bound, not what it binds)
    "::": ("::1", "127.0.0.1"),  # the IPv6 wildcard takes IPv4 too; ::1 may be switched off
}
"""Where serve looks for a worker accepting, per --host it cannot connect to as given."""


def _needs_init(settings: Settings) -> bool:
    """True for a data directory (or database) that was never initialised, or whose ``init`` did
    not finish: ``init`` records the environment file just before it issues the bootstrap admin
    token, so a directory without it may lack the token too, and one with it lacks the token
    when issuing it failed (a store locked or full at that moment): no admin token at all
    (running init again creates only what is missing, and issues the token while none exists).

    A database an earlier version initialised (an older schema revision) is not new: serve
    then refuses it like every command, naming ``uid2-operator db upgrade``, rather than
    migrating it under whatever processes of that version still use it (docs/storage.md,
    upgrading)."""
    if settings.keyring_json is None and _missing_or_empty(settings.keyring_path):
        return True
    if _missing_or_empty(settings.environment_path):  # empty: an init stopped while writing it
        return True
    if settings.database_url is None and not (settings.data_dir / DB_FILE).exists():
        return True
    if database_is_new(settings):
        return True
    try:
        return bootstrap_token_missing(settings)
    except SchemaOutOfDate:
        return False  # an earlier version's database: serve refuses it, as every command does


def _missing_or_empty(path: Path) -> bool:
    """True when ``path`` does not exist or is an empty file (as an interrupted ``init`` of an
    earlier version could leave the keyring or environment file)."""
    try:
        return path.stat().st_size == 0
    except OSError:  # absent, or a path that cannot be one (init names the problem)
        return True


def _next_steps(settings: Settings, admin_url: str) -> str:
    """The commands to run next. Another terminal may be in another directory: a data directory
    other than the default (``data``, where the README's commands run) is named whole, and a
    database given by URL is named too (its password hidden), else they would set up a store of
    their own."""
    data = "" if str(settings.data_dir) == "data" else f" --data-dir {_shown_path(settings)}"
    database = shown_database_url(settings)
    if database is not None:
        data += f" --database-url {shlex.quote(database)}"
    cli = f"uid2-operator{data}"
    same_database = (
        []
        if database is None
        else [
            "  (on this serve's database: a password in its URL is shown as ***; put it back,",
            "  or set UID2_DATABASE_URL instead, as for serve)",
        ]
    )
    return "\n".join(
        [
            "Next steps (in another terminal; with `.venv/bin/` in front if the venv is not on",
            "your PATH):",
            *same_database,
            "  1. create a participant (prints its site id):",
            f'       {cli} participant create --name "Example publisher" --type publisher \\',
            "           --roles GENERATOR,MAPPER,ID_READER,SHARER",
            "  2. create an API key for it (prints the key and its secret once):",
            f'       {cli} key create --site-id <site id> --name "first key" \\',
            "           --roles GENERATOR,MAPPER,ID_READER,SHARER",
            f"  The admin API ({admin_url}) does the same with the admin token above.",
        ]
    )


def _shown_path(settings: Settings) -> str:
    """The data directory, absolute, quoted for a shell when it needs to be."""
    return shlex.quote(str(settings.data_dir.resolve()))


# --------------------------------------------------------------------------------- sockets


def _bind(
    host: str, port: int, *, reuse_port: bool, listen: bool, reuse_address: bool = True
) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if reuse_address:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    if listen:
        sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _reserve_operator_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A socket holding the operator port for this process tree, and the port (for ``0``).

    A bind with ``SO_REUSEADDR`` alone first proves the port is free (a second ``serve``
    sharing it through ``SO_REUSEPORT`` would silently split the traffic): it fails on a socket
    listening there and on one another serve holds the port with, and succeeds over the
    connections a serve stopped just before left in TIME_WAIT. Then, on Linux, a bound but not
    listening socket with ``SO_REUSEPORT`` and without ``SO_REUSEADDR`` keeps the port while
    the workers bind their own: the kernel lets the workers' ``SO_REUSEPORT`` sockets (of the
    same user) join it, and refuses it to any bind without ``SO_REUSEPORT`` (another serve's
    probe among them) even while no worker listens, at start and while one is restarted. With
    ``SO_REUSEADDR`` it would not: two sockets with it may share a port while neither listens.
    The metrics port (``--metrics-port``) is held the same way (``_reserve_metrics_port``).

    Connections another program (listening without ``SO_REUSEPORT``) left in TIME_WAIT on the
    port keep that socket from binding for up to a minute; the port is then held with
    ``SO_REUSEADDR`` too, with a warning: firmly only while a worker listens.
    """
    probe = _bind(host, port, reuse_port=False, listen=not _REUSE_PORT)
    if not _REUSE_PORT:
        return probe, probe.getsockname()[1]
    chosen = int(probe.getsockname()[1])
    probe.close()
    try:
        held = _bind(host, chosen, reuse_port=True, listen=False, reuse_address=False)
    except click.ClickException:
        log.warning(
            "port %d held less firmly: connections another program left on it are still in "
            "TIME_WAIT, so while no worker listens another serve may join it",
            chosen,
        )
        held = _bind(host, chosen, reuse_port=True, listen=False)
    return held, chosen


def _reserve_metrics_port(host: str, port: int, operator_port: int) -> tuple[socket.socket, int]:
    """``_reserve_operator_port`` for the metrics port, which never is the operator port: a
    worker tells its two listeners apart by their port (``OperatorServer``). Equal ports given
    are refused before (``_check_ports``); a free port the kernel picks (``0``) on another
    interface than the operator port's may be that port's number, and is then picked again
    while the first pick is held, so that it cannot come back."""
    held, chosen = _reserve_operator_port(host, port)
    if chosen != operator_port:
        return held, chosen
    try:
        return _reserve_operator_port(host, 0)
    finally:
        held.close()


@dataclass(frozen=True, slots=True)
class _MetricsListener:
    """Where the workers answer ``/metrics`` (``--metrics-host``, the resolved
    ``--metrics-port``), and the listening socket they share where the platform has no
    ``SO_REUSEPORT`` (else each binds its own)."""

    host: str
    port: int
    shared: socket.socket | None


# --------------------------------------------------------------------------------- workers


def _worker_main(  # noqa: PLR0917 (a process target: called with its arguments in order)
    host: str,
    port: int,
    shared: socket.socket | None,
    log_level: str,
    parent: int,
    metrics: _MetricsListener | None = None,
    sigint_ignored: bool = False,
    keyring_fallback: str | None = None,
) -> None:
    """A worker process: one uvicorn server over the worker app, on its own socket (and with
    ``metrics``, on its own socket of the metrics port too), that stops when its serving process
    (``parent``) is gone. A spawned process starts with no logging set up, so it sets up the
    serving process's own (the level of ``--log-level``). Its connections, on either port, are
    guarded by the limits and timeouts of the serve settings (``web.http_connection``). A port
    it cannot bind (another program took it while serve held it less firmly:
    ``_reserve_operator_port``) is one ERROR line and exit status 1.

    It starts with the stop signals blocked, as serve's thread that started it had them
    (``_Workers._start_one``), and lets them through at once; SIGINT stays ignored for its whole
    life when ``sigint_ignored`` (serve itself started with it ignored, as a script's background
    job does: a Ctrl-C in that script's terminal must not stop it). ``keyring_fallback``: the
    keyring serve holds, to start with while the keyring file cannot be used
    (``create_worker_app``)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    _configure_logging(log_level)
    if _serve_gone(parent):  # killed while this worker started: it must not take the port
        raise SystemExit(0)
    limits = HttpLimits.of(ServeSettings.from_env(), BODY_LIMIT)
    # Read into a ``Keyring`` at once: the factory below is a ``partial``, whose repr shows its
    # arguments, and a keyring's repr names its versions only, never a key byte.
    fallback = None if keyring_fallback is None else Keyring.from_json(keyring_fallback)
    config = uvicorn.Config(
        functools.partial(
            create_worker_app,
            metrics_port=None if metrics is None else metrics.port,
            keyring_fallback=fallback,
        ),
        factory=True,
        host=host,
        port=port,
        # Named, not left to uvicorn's "auto": a missing uvloop or httptools must fail loudly
        # rather than quietly fall back to the slower pure-Python loop and parser.
        loop="uvloop",
        http=http_protocol(limits),
        lifespan="on",
        log_level=log_level,
        access_log=False,
        server_header=False,
        # The peer is the socket's: X-Forwarded-For and X-Forwarded-Proto are a client's own
        # words (uvicorn would otherwise apply them from any loopback peer).
        proxy_headers=False,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
    )
    # The metrics socket first: once the operator port accepts (what serve waits for before it
    # says where it listens), so does the metrics port.
    try:
        extra = [] if metrics is None else [_listening(metrics.host, metrics.port, metrics.shared)]
        sockets = [_listening(host, port, shared), *extra]
    except click.ClickException as exc:
        # One line, no traceback; serve restarts the worker, and gives up when that keeps
        # failing (``_Workers.keep_alive``).
        log.error("worker %d: %s", os.getpid(), exc.message)
        raise SystemExit(1) from None
    if _serve_gone(parent):  # killed while this worker bound its sockets
        for sock in sockets:
            sock.close()
        raise SystemExit(0)
    server = WorkerServer(config, sigint_ignored=sigint_ignored)
    watch = threading.Thread(
        target=_exit_with_parent, args=(server, parent), name="parent-watch", daemon=True
    )
    watch.start()
    server.run(sockets=sockets)


class WorkerServer(uvicorn.Server):
    """A worker's uvicorn server, which always finishes the stop it has begun.

    uvicorn treats a second SIGINT during a stop as "force exit": it stops waiting for the
    requests under way and skips the application's shutdown, where a worker writes its last
    usage and logout opt-outs, or saves to the data directory those it cannot write. A Ctrl-C
    pressed twice (the terminal signals every process of the group) or after a SIGTERM would
    then lose opt-outs already answered ``{"optout":"OK"}``, silently. Here every further signal
    only asks for the stop already under way; serve bounds how long it waits for its workers
    (``_STOP_TIMEOUT_S``) and says so when it has to kill one."""

    def __init__(self, config: uvicorn.Config, *, sigint_ignored: bool = False) -> None:
        super().__init__(config)
        self._sigint_ignored = sigint_ignored

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's, leaving SIGINT ignored when serve started with it ignored."""
        with super().capture_signals():
            if self._sigint_ignored:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            yield

    def handle_exit(self, sig: int, frame: Any) -> None:
        del frame
        self._captured_signals.append(sig)
        self.should_exit = True


def _listening(host: str, port: int, shared: socket.socket | None) -> socket.socket:
    """The worker's listening socket on ``port``: the one serve shares, else its own."""
    return shared if shared is not None else _bind(host, port, reuse_port=True, listen=True)


def _no_core_dumps() -> None:
    """Serve and its workers (which inherit the limits) hold the keyring's keys, the pepper and
    every client secret in memory: a crash must not write them to a core file. They also take
    the most open files they may (the hard limit): each connection holds a descriptor until its
    timeouts end it, and a soft limit of 1,024 would let one client lock everyone out."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:  # a hard limit the platform refuses as soft (macOS)
        log.warning("open files limit left at %d: %s", soft, exc)


_UVICORN_ERRORS: Final = "uvicorn.error"
_ASGI_EXCEPTION: Final = "Exception in ASGI application"
"""How uvicorn's protocol begins the line it logs for whatever a request's application raised
(``RequestResponseCycle.run_asgi``, at ERROR with its traceback)."""
_GRACE_RAN_OUT: Final = "graceful shutdown exceeded"
"""What the message uvicorn cancels a request's task with, once its stop's grace period has run
out, says (``Server.shutdown``: ``task.cancel(msg=...)``)."""


class _CancelledAtStop(logging.Filter):
    """One WARNING line, with no traceback, for each request cancelled because a stopping
    server's grace period (``grace_s``, serve's ``_GRACEFUL_SHUTDOWN_S``) ran out before it
    ended, instead of uvicorn's ``Exception in ASGI application`` at ERROR with the
    ``CancelledError``'s traceback: the stop is doing what it should, and a traceback per request
    would bury the lines that matter. Only the record changes: uvicorn has already caught the
    cancellation (its request task ends there) and does with the connection what it always does.
    Any other error a request's application raised, another cancellation among them, keeps
    uvicorn's line."""

    def __init__(self, grace_s: int) -> None:
        super().__init__()
        self._grace_s = grace_s

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not (
            isinstance(error, asyncio.CancelledError)
            and _GRACE_RAN_OUT in str(error)
            and isinstance(record.msg, str)
            and record.msg.startswith(_ASGI_EXCEPTION)
        ):
            return True
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        record.msg = "request cancelled: still running when the stop's grace period (%d s) ran out"
        record.args = (self._grace_s,)
        record.exc_info = record.exc_text = record.stack_info = None
        # The logger let the record through at ERROR; a WARNING it would not log is dropped.
        return logging.getLogger(record.name).isEnabledFor(logging.WARNING)


_CANCELLED_AT_STOP: Final = _CancelledAtStop(_GRACEFUL_SHUTDOWN_S)


def _configure_logging(log_level: str) -> None:
    """The log format and level of serve and of each of its workers (standard error), and the
    line a request cancelled at the stop gets (``_CancelledAtStop``). The filter stays on
    ``uvicorn.error`` when uvicorn configures its own loggers (its ``dictConfig`` replaces
    handlers, not filters)."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger(_UVICORN_ERRORS).addFilter(_CANCELLED_AT_STOP)  # once: the same filter


def _serve_gone(parent: int) -> bool:
    """Whether the serving process ``parent`` is gone (said in a WARNING line). The kernel gives
    an orphan another parent, so the worker's parent pid no longer being serve's means serve is
    gone. A worker checks before it binds its sockets and once they are bound: a worker of a
    serve killed while it started stops there, before it takes the port from the next serve."""
    if os.getppid() == parent:
        return False
    log.warning("worker %d: serve (pid %d) is gone; stopping", os.getpid(), parent)
    return True


def _exit_with_parent(server: uvicorn.Server, parent: int) -> None:
    """Stop ``server`` gracefully once the serving process ``parent`` is gone.

    A serve killed without stopping (SIGKILL, the OOM killer) cannot stop its workers; left
    alone they would keep serving the port, so that a new serve could not bind it (checked
    every ``_PARENT_CHECK_S``; a worker whose serve died before it bound its sockets stopped
    there: ``_serve_gone``). ``should_exit`` is what uvicorn's SIGTERM handler sets: the worker
    stops as on SIGTERM, writes what is pending and removes its metrics file."""
    while not _serve_gone(parent):
        time.sleep(_PARENT_CHECK_S)
    server.should_exit = True


_IGNORED_AT_START: Final = frozenset({signal.SIGINT, signal.SIGHUP})
"""The signals a worker starts with ignored (``_Workers._start_one``)."""


@contextlib.contextmanager
def _ignored_while_starting(signals: frozenset[signal.Signals]) -> Iterator[None]:
    """``signals`` ignored for the block, for a process started in it to inherit them ignored;
    blocked meanwhile in this thread (every helper thread blocks them: ``stop_signals``), so
    that one arriving waits and reaches serve's handler afterwards rather than being dropped.
    One already waiting keeps its handler (the process then starts without it ignored: serve
    is stopping). Only in the main thread, whose handlers they are."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    waiting = signal.sigpending()  # ignoring one would drop it
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in signals if s not in waiting}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


@dataclass
class _Workers:
    """The worker processes: started, restarted when they exit, stopped.

    A worker that exited without stopping cleanly leaves its metrics file in the runtime
    directory, and every other worker would keep reporting its figures as current; so the file of
    a worker is removed here when it is restarted or stopped. The runtime directory is the one
    named in the environment the workers inherit (``RUNTIME_DIR_VARIABLE``), read at ``start``.
    """

    host: str
    port: int
    count: int
    shared: socket.socket | None
    log_level: str
    metrics: _MetricsListener | None = None
    keyring: KeyringSource | None = None
    """Serve's own keyring: a worker starts with the keyring it holds at that moment when the
    keyring file cannot be used then (a worker restarted while the file is being replaced)."""

    def __post_init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self.processes: list[SpawnProcess] = []
        self._started: dict[int, float] = {}
        self._quick_exits = 0
        self._runtime_dir: Path | None = None
        self._sigint_ignored = False

    def _start_one(self) -> SpawnProcess:
        """Start a worker. It starts with SIGINT and SIGHUP ignored, inherited from this process
        for the moment of the start: a Ctrl-C, or the hang-up of a closed terminal, reaches the
        whole terminal's process group, and a worker still importing would end in a
        ``KeyboardInterrupt`` traceback, or at once; serve stops its workers itself. Each one's
        server takes SIGINT up again once it runs; SIGHUP stays ignored (serve stops on it, and
        stops its workers with SIGTERM, so they write what they hold).

        Both are blocked in this (main) thread meanwhile, and every helper thread blocks them
        (``stop_signals``): one that reaches serve during the start then waits, blocked signals
        being kept whatever their disposition, and reaches serve's handler once it is back,
        rather than being dropped as ignored. One already waiting keeps the handler (the worker
        then starts without it ignored: serve is stopping)."""
        process = self._context.Process(
            target=_worker_main,
            args=(
                self.host,
                self.port,
                self.shared,
                self.log_level,
                os.getpid(),
                self.metrics,
                self._sigint_ignored,
                self._keyring_fallback(),
            ),
            name="uid2-operator-worker",
            daemon=False,
        )
        with _ignored_while_starting(_IGNORED_AT_START):
            process.start()
        self._started[id(process)] = time.monotonic()
        return process

    def start(self) -> None:
        shared_dir = os.environ.get(RUNTIME_DIR_VARIABLE)
        self._runtime_dir = Path(shared_dir) if shared_dir else None
        # Ignored by serve itself (started so): its workers keep it ignored (``_worker_main``).
        self._sigint_ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        # multiprocessing starts its resource tracker with the first worker, and unblocks SIGINT
        # and SIGTERM as it does, in the middle of ``_start_one``'s window where SIGINT is
        # ignored: a Ctrl-C then would be dropped. Started here, before any such window, with
        # SIGHUP ignored as the workers have it (the tracker ignores SIGINT and SIGTERM itself):
        # a closed terminal must not end it while serve stops.
        with _ignored_while_starting(frozenset({signal.SIGHUP})):
            resource_tracker.ensure_running()
        self.processes = [self._start_one() for _ in range(self.count)]

    def _keyring_fallback(self) -> str | None:
        """The keyring serve follows from its file, as JSON for the worker (passed over the pipe
        the worker starts from, never written anywhere); None for a keyring every worker reads
        from the environment it inherits (UID2_KEYRING)."""
        if not isinstance(self.keyring, KeyringFile):
            return None
        return self.keyring.current().to_json()

    def _forget(self, process: SpawnProcess) -> None:
        """Remove what an exited worker published for the others (its metrics file)."""
        if self._runtime_dir is not None and process.pid is not None:
            remove_worker_files(self._runtime_dir, process.pid)

    def keep_alive(self, stop: StopRequest | None = None) -> None:
        """Restart workers that exited; give up when they keep dying right after starting (a
        configuration problem, such as an unreadable keyring, that restarts cannot fix). Nothing
        once ``stop`` was asked for: a stop signal sent to the whole group (a Ctrl-C in the
        terminal) stops the workers too, and they are not to be restarted, nor counted."""
        for index, process in enumerate(self.processes):
            if stop is not None and stop.requested:
                return
            if process.is_alive():
                continue
            lived = time.monotonic() - self._started.pop(id(process), 0.0)
            self._quick_exits = self._quick_exits + 1 if lived < _QUICK_EXIT_S else 0
            if self._quick_exits >= _QUICK_EXIT_LIMIT:
                raise click.ClickException(
                    f"workers keep exiting at startup (last exit status {process.exitcode}); "
                    "see the messages above"
                )
            log.warning("worker %s exited with %s; restarting", process.pid, process.exitcode)
            self._forget(process)
            time.sleep(_RESTART_PAUSE_S)
            if stop is not None and stop.requested:
                return
            self.processes[index] = self._start_one()

    def stop(self) -> None:
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning(
                    "worker %s still running %.0f s after SIGTERM; killed (what it had not "
                    "written is lost)",
                    process.pid,
                    _STOP_TIMEOUT_S,
                )
                process.kill()
                process.join()
            self._forget(process)


# --------------------------------------------------------------------------------- upkeep


def _open_serving(settings: Settings, serve_settings: ServeSettings) -> Services:
    """The services of the serving process, with the material ready: what is missing created
    (idempotently, keys included), and the longest lifetime this serve gives tokens recorded in
    the store (raised, never lowered), so that every key purge, whichever process runs it,
    keeps the keys those tokens need. Before any worker issues a token. What a keyring write
    cut short by a crash left beside the keyring file goes first (``sweep_keyring_debris``).
    A store an earlier version initialised gets the environment recorded too (from the data
    directory's ``environment`` file, or UID2_ENVIRONMENT; never one only defaulted), last, once
    the rest succeeded: a serve refused at start records none."""
    sweep_keyring_debris(settings)
    services = open_services(  # the keyring followed from its file, as open_services does
        settings,
        expired_key_retention_s=serve_settings.key_retention_s(settings.environment),
    )
    try:
        recording = settings.environment_source is not EnvironmentSource.DEFAULT
        if recording:
            check_store_recordable(settings, services.store)  # before any write
        services.material.initialise()
        services.material.record_token_lifetime(
            longest_token_lifetime_s(serve_settings.token_lifetimes(settings.environment))
        )
        if recording:
            record_store_environment(settings, services.store)
    except BaseException:
        services.close()
        raise
    return services


def read_key_coverage(store: Store, now_ms: int) -> Coverage:
    """``domain.keysets.key_coverage_ms`` over the store's keysets and keys at ``now_ms``: one
    read, the keys' times only (no secret is opened)."""
    with store.read() as tx:
        keysets = tx.keysets.list_all()
        keys = tx.encryption_keys.list_all()
    return key_coverage_ms(keysets, keys, now_ms)


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Upkeep:
    """Material upkeep in the serving process (see the module docstring).

    Three steps, each failing on its own: the keysets of new participants, whenever the store
    changed (retried at every poll until it succeeds); with ``key_coverage``, a look at when
    every enabled keyset has an active key (``domain.keysets.Coverage``), whenever the store
    changed and after every rotation; and the key rotation schedule, every
    ``key_rotation_interval_s`` whatever the other steps do. The schedule counts on the
    monotonic clock, which a host suspended or a VM paused stops while the time of day goes on
    (and which an NTP step or a date set by hand does not move), so the rotation also runs at
    once, at most once per poll interval, when the time of day lies outside the coverage last
    read (a keyset has no active key: every token request would fail until the next scheduled
    run), or when between two turns the time of day moved more than ``_CLOCK_JUMP_S`` further
    (or less far) than the monotonic clock. ``wall_ms`` reads the time of day (epoch ms; the
    system's by default).

    A failing step is logged when it starts failing and again only when its message changes,
    and once more when it recovers, not at every poll. Once ``stopping`` is set, ``tick``
    starts no further step (serve is about to close the store). ``step`` names the step
    running, for the warning of a serve that stops while it still runs."""

    _NEW_PARTICIPANTS: Final = "new-participant keysets"
    _COVERAGE: Final = "key coverage check"
    _ROTATION: Final = "scheduled key rotation"
    _PURGE: Final = "retired client secret deletion"

    def __init__(
        self,
        services: Services,
        material: MaterialService,
        serve: ServeSettings,
        *,
        key_coverage: Callable[[int], Coverage] | None = None,
        wall_ms: Callable[[], int] | None = None,
    ):
        self._services = services
        self._material = material
        self._serve = serve
        self._key_coverage = key_coverage
        self._wall_ms = SystemClock().now_ms if wall_ms is None else wall_ms
        self._seen_state: object = None
        """The store's state (``Store.change_state``) when ``initialise`` last ran (None:
        never)."""
        self._next_rotation = time.monotonic() + serve.key_rotation_interval_s
        self._next_poll = 0.0
        self._coverage: Coverage | None = None
        """When every enabled keyset has an active key, as last read (None: not known)."""
        self._coverage_state: object = None
        """The store's state (``Store.change_state``: its change sequence and that sequence's mark)
        ``_coverage`` was read at (None: read it at the next poll). The mark tells a store
        restored and written back to the same sequence from the one read."""
        self._last_turn: tuple[float, int] | None = None
        """The monotonic clock (s) and the time of day (ms) at the last turn."""
        self._rotate_now: str | None = None
        """Why the rotation must run at once (None: it need not)."""
        self._next_urgent = 0.0
        self._failing: dict[str, str] = {}
        """The message each failing step last logged, by step."""
        self.stopping = threading.Event()
        self.step: str | None = None

    def tick(self) -> None:
        now = time.monotonic()
        wall = self._wall_ms()
        self._watch_clocks(now, wall)
        if now >= self._next_poll and not self.stopping.is_set():
            self._next_poll = now + self._serve.poll_interval_s
            self._run_step(self._NEW_PARTICIPANTS, self._initialise)
            if self._key_coverage is not None and not self.stopping.is_set():
                self._coverage_step(self._key_coverage)
        coverage = self._coverage
        if self._rotate_now is None and coverage is not None and not coverage.covers(wall):
            self._rotate_now = f"an enabled keyset has no active encryption key at {_utc(wall)}"
        urgent = self._rotate_now is not None and now >= self._next_urgent
        if (now >= self._next_rotation or urgent) and not self.stopping.is_set():
            self._rotation_step(now)

    def _run_step(self, name: str, step: Callable[[], object]) -> bool:
        """Run one upkeep step under ``name`` (what a stop cut short names): its failure is
        logged as that step's, its success after failures as its recovery. Whether it succeeded."""
        self.step = name
        try:
            step()
        except Exception as exc:
            self._failed(name, exc)
            return False
        else:
            self._recovered(name)
            return True
        finally:
            self.step = None

    def _coverage_step(self, reader: Callable[[int], Coverage]) -> None:
        """Read the coverage again when the store changed since it was read (or it is due)."""

        def read() -> None:
            state = self._services.store.change_state()
            if state != self._coverage_state:
                self._coverage = reader(self._wall_ms())
                self._coverage_state = state

        self._run_step(self._COVERAGE, read)

    def _rotation_step(self, now: float) -> None:
        self._next_rotation = now + self._serve.key_rotation_interval_s
        if self._rotate_now is not None:
            self._next_urgent = now + self._serve.poll_interval_s
            if self._ROTATION not in self._failing:
                log.warning("key rotation run at once: %s", self._rotate_now)
        # The rotation logs its own outcome at INFO (``encryption keys rotated ...``).
        if self._run_step(self._ROTATION, self._material.rotate_keys):
            self._rotate_now = None
            # The coverage read before is stale now, whether the run changed anything or not:
            # the next poll reads it again, and until then it asks for no run.
            self._coverage, self._coverage_state = None, None
        if not self.stopping.is_set():
            # Logs its own count at INFO when it deleted any.
            self._run_step(self._PURGE, self._services.credentials.purge_retired_secrets)

    def _watch_clocks(self, now: float, wall: int) -> None:
        """Ask for a rotation at once when the time of day moved more than ``_CLOCK_JUMP_S``
        further, or less far, than the monotonic clock since the last turn."""
        last, self._last_turn = self._last_turn, (now, wall)
        if last is None:
            return
        drift_s = (wall - last[1]) / 1000 - (now - last[0])
        if abs(drift_s) > _CLOCK_JUMP_S:
            self._rotate_now = (
                f"the time of day moved {drift_s:+.0f} s against the monotonic clock since "
                "the last look (a host suspended, a VM paused, the date set)"
            )
            self._coverage_state = None  # read it again at the next poll, at the new time

    def _initialise(self) -> None:
        state = self._services.store.change_state()
        if state != self._seen_state:
            # New participants get their default keyset (and its first key) here. What counts
            # as seen is the state read before: a change committed while initialise ran (a
            # participant created elsewhere) moves it past that, so the next poll looks again;
            # initialise's own commit costs one more pass that finds nothing to do.
            self._material.initialise()
            self._seen_state = state

    def _failed(self, step: str, exc: Exception) -> None:
        """Log a step's failure when it starts or its message changes (a store out of reach
        at WARNING, a refusal of the project's at ERROR with its message, anything unexpected at
        ERROR by its class and the frames it came through: never its text nor a traceback, which
        for a database driver's error repeat the statement's parameters). The workers serve on
        either way: only the upkeep waits for the cause to go."""
        message = exc.detail if isinstance(exc, UID2Error) else described(exc)
        if self._failing.get(step) == message:
            return
        self._failing[step] = message
        if isinstance(exc, StoreUnavailable):
            log.warning("material upkeep (%s) skipped: %s", step, message)
        else:
            log.error("material upkeep (%s) failed: %s", step, message)

    def _recovered(self, step: str) -> None:
        if self._failing.pop(step, None) is not None:
            log.warning("material upkeep (%s) works again", step)


class _UpkeepThread:
    """Runs ``upkeep.tick`` every ``_UPKEEP_EVERY_S`` on a thread of its own until stopped, so
    that a store call that waits (for the write lock, for a connection) or a long rotation holds
    up nothing in serve's loop.

    The thread never ends on an error: ``_Upkeep`` logs its steps' failures itself, and what
    escapes ``tick`` all the same (a bug) is logged by its class and the frames it came through
    (``error_text.described``, never its text), again only when that changes, and the next turn
    runs as usual. ``stop`` sets ``upkeep.stopping`` (no further step starts) and ``join`` waits
    for the thread until ``_UPKEEP_JOIN_S`` after that; a step still running then is named in a
    warning and left to finish or fail on its own. The thread is a daemon: a store call that
    never returns never keeps the process alive."""

    def __init__(self, upkeep: _Upkeep) -> None:
        self._upkeep = upkeep
        self._escaped: str | None = None
        self._deadline: float | None = None
        self._thread = threading.Thread(target=self._run, name="material-upkeep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        leave_to_main_thread()
        while not self._upkeep.stopping.wait(_UPKEEP_EVERY_S):
            try:
                self._upkeep.tick()
            except Exception as exc:
                message = described(exc)
                if message != self._escaped:
                    self._escaped = message
                    log.error("material upkeep failed: %s", message)
            else:
                self._escaped = None

    def stop(self) -> float:
        """Tell the upkeep to stop after the step it is in; the time (``time.monotonic``) until
        which ``join`` waits for it, ``_UPKEEP_JOIN_S`` after the first call."""
        if self._deadline is None:
            self._deadline = time.monotonic() + _UPKEEP_JOIN_S
        self._upkeep.stopping.set()
        return self._deadline

    def join(self) -> None:
        """Wait for the thread until the time ``stop`` gives (calling it if nobody did); a
        warning names the step it is still in then, and serve goes on stopping."""
        deadline = self.stop()
        if not self._thread.is_alive():
            return  # ended, or never started
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            step = self._upkeep.step
            log.warning(
                "material upkeep%s still running %g s after serve began to stop; closing the "
                "store without waiting for it",
                f" ({step})" if step is not None else "",
                _UPKEEP_JOIN_S,
            )


_ADMIN_STOP_MARGIN_S: Final = 2.0
"""Beyond ``_GRACEFUL_SHUTDOWN_S``: for the admin API's own shutdown once its requests ended."""


@dataclass(frozen=True)
class _AdminApi:
    """The admin API's server, the thread it runs on, and what ended that thread early."""

    server: uvicorn.Server
    thread: threading.Thread
    failed: list[BaseException]

    def check(self) -> None:
        """Stop serve (ClickException) once the admin API has stopped by itself: its server
        failed (no file descriptor left for its event loop, say)."""
        if self.failed:
            raise click.ClickException(f"the admin API stopped: {os_reason(self.failed[0])}")

    def stop(self) -> None:
        """Stop accepting, let the requests under way end (at most ``_GRACEFUL_SHUTDOWN_S``)
        and the app shut down, and wait for that: the store is closed only after."""
        self.server.should_exit = True
        self.thread.join(_GRACEFUL_SHUTDOWN_S + _ADMIN_STOP_MARGIN_S)


def _run_admin(
    services: Services, sock: socket.socket, log_level: str, limits: HttpLimits
) -> _AdminApi:
    config = uvicorn.Config(
        create_admin_app(services),
        http=http_protocol(limits),
        lifespan="on",  # the admin app logs what its refusal limiter still holds at shutdown
        log_level=log_level,
        access_log=False,
        server_header=False,
        # The peer is the socket's: X-Forwarded-For and X-Forwarded-Proto are a client's own
        # words (uvicorn would otherwise apply them from any loopback peer).
        proxy_headers=False,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
    )
    server = uvicorn.Server(config)
    failed: list[BaseException] = []

    def run() -> None:  # its thread pool's threads inherit the blocked stop signals
        leave_to_main_thread()
        try:
            server.run(sockets=[sock])
        except Exception as exc:  # reported by serve (``_AdminApi.check``), not as a traceback
            sock.close()
            failed.append(exc)

    thread = threading.Thread(target=run, name="admin-api", daemon=True)
    thread.start()
    return _AdminApi(server, thread, failed)


def _share_runtime_dir(data_dir: Path, lock: ServeLock | None = None) -> Path:
    """Create a directory private to this serve (mode 0700) and name it to the workers it will
    start: state that must be the same on every worker, or outlive one worker, lives there. It
    is in memory (``/dev/shm``) where the machine has it, and removed when serve stops. ``lock``
    (the data directory's, None in tests) holds it while serve runs and records it before
    anything is put in it, so that the next serve takes it over should this one die, and no
    other serve while this one runs (``serve_lock``).

    It starts with the replay table (``services.replay_table``), sized by
    ``UID2_REPLAY_TABLE_ENTRIES`` and made for the request window, so that every worker, the
    first one and any restarted later, opens the same table: the one a serve that died without
    stopping left in the runtime directory ``lock`` names (taken over, and that directory
    removed: ``serve_lock.take_over``), else the one the previous serve kept in ``data_dir``
    when it stopped cleanly (``_retire_runtime_dir``), each when it has the same size and
    window, else a new one. Creating it reserves its memory: a ``/dev/shm`` too small for it
    stops serve here, with the directory removed."""
    parent = runtime_parent()
    runtime_dir = Path(tempfile.mkdtemp(prefix=RUNTIME_PREFIX, dir=parent))
    if lock is not None:
        try:
            lock.hold(runtime_dir)
        except OSError as exc:
            shutil.rmtree(runtime_dir, ignore_errors=True)
            raise click.ClickException(
                f"cannot lock the runtime directory {runtime_dir}: {exc.strerror or exc}"
            ) from None
    _record(lock, [*lock.left_behind, runtime_dir] if lock is not None else [])
    serve_settings = ServeSettings.from_env()
    table = runtime_dir / replay_table.TABLE_FILE
    max_past_ms = serve_settings.request_window.max_past_ms
    slots = serve_settings.replay_table_entries
    kept = data_dir / replay_table.KEPT_FILE
    for unfinished in replay_table.sweep_unfinished_keeps(kept):
        log.warning("removed %s, a replay table a killed serve did not finish keeping", unfinished)
    try:
        if _take_over(lock, table, parent, max_past_ms=max_past_ms, slots=slots):
            _discard_kept(kept)
        else:
            not_restored = replay_table.restore(kept, table, max_past_ms=max_past_ms, slots=slots)
            if not_restored is None:
                log.info("replay table restored from the previous serve")
            else:
                log.info("new replay table (%s)", not_restored)
                replay_table.ReplayTable.create(table, max_past_ms=max_past_ms, slots=slots)
    except OSError as exc:
        shutil.rmtree(runtime_dir, ignore_errors=True)
        size = replay_table.table_size(serve_settings.replay_table_entries, replay_table.PROBE)
        raise click.ClickException(
            f"cannot create the replay table ({size // (1 << 20)} MiB, UID2_REPLAY_TABLE_ENTRIES)"
            f" in {runtime_dir.parent}: {exc.strerror or exc}"
        ) from None
    _record(lock, [runtime_dir])
    os.environ[RUNTIME_DIR_VARIABLE] = str(runtime_dir)
    return runtime_dir


def _discard_kept(kept: Path) -> None:
    """Remove the replay table a clean stop kept, once a newer one was taken over. A failure
    only leaves that older table for a later restore (it holds older requests, no wrong ones):
    logged, never a reason to give up the table just taken over."""
    try:
        kept.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot remove %s, older than the table taken over: %s", kept, exc.strerror)


def _take_over(
    lock: ServeLock | None, table: Path, parent: Path, *, max_past_ms: int, slots: int
) -> bool:
    """Take over what a serve that died left (``serve_lock.take_over``); True when its replay
    table is now at ``table``."""
    if lock is None or not lock.left_behind:
        return False
    result = take_over(lock.left_behind, table, parent=parent, max_past_ms=max_past_ms, slots=slots)
    for reason in result.left_alone:
        log.warning("runtime directory recorded in %s: %s", lock.path, reason)
    if result.removed:
        log.warning(
            "the previous serve stopped without cleaning up: %s its replay table; removed %s",
            "took over" if result.adopted is not None else "did not take over",
            ", ".join(str(path) for path in result.removed),
        )
    return result.adopted is not None


def _retire_runtime_dir(runtime_dir: Path, data_dir: Path, lock: ServeLock | None = None) -> None:
    """After every worker has stopped: keep the replay table in ``data_dir`` for the next serve
    (a failure to is logged, not raised: it only shortens replay protection across the
    restart), then remove the runtime directory, and with it its name from ``lock``'s record."""
    try:
        replay_table.keep(runtime_dir / replay_table.TABLE_FILE, data_dir / replay_table.KEPT_FILE)
    except OSError as exc:
        log.warning("replay table not kept for the next serve: %s", exc.strerror or exc)
    shutil.rmtree(runtime_dir, ignore_errors=True)
    if not runtime_dir.exists():
        _record(lock, [])


def _record(lock: ServeLock | None, runtime_dirs: list[Path | str]) -> None:
    """Record ``runtime_dirs`` in ``lock`` (when there is one); a failure only costs the
    takeover after a crash, so it is logged, not raised."""
    if lock is None:
        return
    try:
        lock.record(runtime_dirs)
    except OSError as exc:
        log.warning("cannot write %s: %s", lock.path, exc.strerror or exc)


def _export_settings(settings: Settings) -> None:
    """What worker processes read back through ``Settings.from_env``."""
    os.environ["UID2_DATA_DIR"] = str(settings.data_dir.resolve())
    os.environ["UID2_ENVIRONMENT"] = settings.environment.value
    if settings.database_url is not None:
        os.environ["UID2_DATABASE_URL"] = settings.database_url


def _any_if_empty(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """An empty host (the socket API's every interface, as ``0.0.0.0``) named ``0.0.0.0``: the
    URLs serve prints and the warnings it logs name an address."""
    del ctx, param
    return value or _ANY_V4


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    callback=_any_if_empty,
    help="Interface the operator API listens on.",
)
@click.option("--port", default=8080, show_default=True, type=AsciiIntRange(0, 65535))
@click.option(
    "--admin-host",
    default="127.0.0.1",
    show_default=True,
    callback=_any_if_empty,
    help="Interface the admin API listens on; whatever --host is, it stays on this machine "
    "unless given here (plain HTTP with administrators' tokens: never a public interface).",
)
@click.option("--admin-port", default=8081, show_default=True, type=AsciiIntRange(0, 65535))
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    callback=_any_if_empty,
    help="Interface /metrics listens on with --metrics-port; it stays on this machine unless "
    "given here (give your monitoring network's, never a public interface).",
)
@click.option(
    "--metrics-port",
    default=None,
    type=AsciiIntRange(0, 65535),
    help="Answer the Prometheus /metrics on this port (0: a free one), and on it nothing else; "
    "the operator port then answers /metrics 404. Without it /metrics is on the operator port.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=AsciiIntRange(1, 256),
    help="Operator API processes; each holds its own snapshot.",
)
@click.option("--init-if-new", is_flag=True, help="Run init first when the data directory is new.")
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@json_option
@click.pass_context
def serve(  # noqa: PLR0917 (start-up in order; click passes options positionally)
    ctx: click.Context,
    host: str,
    port: int,
    admin_host: str,
    admin_port: int,
    metrics_host: str,
    metrics_port: int | None,
    workers: int,
    init_if_new: bool,
    log_level: str,
    as_json: bool,
) -> None:
    """Serve the operator API (--port) and the admin API (--admin-port); the Prometheus
    /metrics on the operator port, or with --metrics-port on that port alone.

    With --json, once a worker accepts connections, one line on standard output holds a JSON
    document: operator_url, admin_url, metrics_url (the operator URL's /metrics, or the metrics
    port's), workers, pid, data_dir, environment, and init (what --init-if-new did, as ``init
    --json`` prints it, bootstrap admin token included; null when it did not run). Nothing else
    is written to standard output, except when serve stops (fails, or is stopped by SIGINT or
    SIGTERM) after --init-if-new issued the token and before that line: then one line
    ``{"init": ...}`` carries it, before any error.

    An empty --host, --admin-host or --metrics-host is every interface, as 0.0.0.0. An
    --admin-host other machines can reach is logged as a warning at start; a --metrics-host is
    not (a monitoring network is seldom loopback), but keep it off public interfaces all the same.

    Until serve runs its workers (and so handles SIGINT, SIGTERM and SIGHUP as the stop signal),
    SIGTERM and SIGHUP interrupt it as SIGINT does, rather than ending the process at once."""
    _check_ports(ctx, port, admin_port, metrics_port)
    _check_admin_port(ctx, host, port, admin_host, admin_port)
    _configure_logging(log_level)
    _no_core_dumps()
    listen = _Listen(
        host, port, admin_host, admin_port, workers, log_level, metrics_host, metrics_port
    )
    announcer = _Announcer(as_json=wants_json(as_json))
    stop = StopRequest()
    previous = handle_stop_signals(stop.interrupt)
    try:
        with interruptions_quiet():
            _serve(ctx, listen, init_if_new, announcer, stop)
    except Exception as exc:
        if not stop.interrupted:
            raise
        # What the interruption landed in failed another way on its way out: still the stop.
        raise KeyboardInterrupt from exc
    finally:
        restore_handlers(previous, stop)
    note("stopped")


def _check_ports(ctx: click.Context, port: int, admin_port: int, metrics_port: int | None) -> None:
    """Refuse, as a usage error, a metrics port that is the operator or the admin port (``0``,
    a free port, is never one of them), and --metrics-host without --metrics-port: /metrics
    would stay on the operator port, where the operator meant to take it off."""
    if metrics_port is None:
        if ctx.get_parameter_source("metrics_host") is ParameterSource.COMMANDLINE:
            raise click.UsageError("--metrics-host needs --metrics-port", ctx=ctx)
        return
    for option, taken in (("--port", port), ("--admin-port", admin_port)):
        if metrics_port != 0 and metrics_port == taken:
            raise click.BadParameter(
                f"{metrics_port} is also {option}; the metrics port must be a port of its own",
                ctx=ctx,
                param_hint="'--metrics-port'",
            )


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _check_admin_port(
    ctx: click.Context, host: str, port: int, admin_host: str, admin_port: int
) -> None:
    """Refuse, as a usage error, an admin port that is the operator port on the same interface
    (the same address however written, or either one every interface): one of the two could
    never listen. ``0``, a free port, is never the other's; the same number on two distinct
    addresses is allowed, and a host that does not resolve is left for its bind to refuse."""
    if admin_port == 0 or admin_port != port:
        return
    operator, admin = _bound_address(host), _bound_address(admin_host)
    if operator is not None and admin is not None and _same_interface(operator, admin):
        raise click.BadParameter(
            f"{admin_port} is also --port; the admin API must listen on a port of its own",
            ctx=ctx,
            param_hint="'--admin-port'",
        )


def _bound_address(host: str) -> _Address | None:
    """The address ``_bind`` listens on for ``host`` (its family, the first address the name
    resolves to); None when it does not resolve."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        found = socket.getaddrinfo(
            host or None, 0, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
        address = ipaddress.ip_address(str(found[0][4][0]).split("%", 1)[0])
    except (OSError, UnicodeError, ValueError, IndexError):
        return None
    # ``::ffff:127.0.0.1`` is 127.0.0.1 to the kernel: the two collide
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return address if mapped is None else mapped


def _same_interface(one: _Address, other: _Address) -> bool:
    """Whether sockets on ``one`` and ``other`` (same port) would collide."""
    if one == other:
        return True
    if one.version == other.version:
        return one.is_unspecified or other.is_unspecified
    # an IPv6 socket on every interface takes IPv4 too, unless the system says otherwise
    wildcard = one if one.version == 6 else other
    return wildcard.is_unspecified and _dual_stack()


def _dual_stack() -> bool:
    try:
        return Path("/proc/sys/net/ipv6/bindv6only").read_text().strip() == "0"
    except OSError:
        return True


def _serve(
    ctx: click.Context,
    listen: _Listen,
    init_if_new: bool,
    announcer: _Announcer,
    stop: StopRequest,
) -> None:
    """``serve`` from its settings to its stop (``stop``: what its signal handlers noted; a stop
    signal interrupts the start, and stops the serving once it runs). The data directory is
    checked first, before anything is bound or written: one recorded for another environment is
    refused, as ``init`` and every other command refuse it (``check_environment``), so is a
    database recorded for another environment (``check_store_environment``; with --init-if-new,
    a data directory that records no environment is left to ``init``, which adopts the
    database's), and without --init-if-new one without a keyring is reported as every other
    command reports it (``require_data_directory``; one that does not exist before the lock
    would make it, one without a keyring once the lock says no other serve is setting it up)."""
    settings = load_settings(check=False)
    check_environment(settings)
    if not init_if_new and not settings.data_dir.is_dir():
        require_data_directory(settings)
    environment = settings.environment
    if not (init_if_new and settings.environment_source is EnvironmentSource.DEFAULT):
        check_store_environment(settings)
    else:  # the environment init will adopt: the database's, when it records one
        environment = store_environment(settings) or environment
    serve_settings = ServeSettings.from_env()
    serve_settings.token_lifetimes(environment)  # refuse bad lifetimes before starting
    serve_settings.key_retention_s(environment)  # and a key retention below them
    # Before anything is bound or written: a second serve on this data directory stops here.
    lock = ctx.with_resource(ServeLock.take(settings.data_dir))
    if not init_if_new:
        require_data_directory(settings)
    try:
        if init_if_new and _needs_init(settings):
            initialise(None, announcer.initialise_done, stop)
            settings = load_settings()
        stop.check()  # an interruption lost on the way (``StopRequest.interrupt``)
        _run_serving(settings, serve_settings, lock, listen, announcer, stop=stop)
    except BaseException:
        # What stops serve is the error to report: a token that could not be printed on the
        # way out is said too, but in a line of its own, not instead of it.
        try:
            announcer.stopped()
        except OutputLost as lost:
            note(f"Error: {lost.format_message()}")
        raise
    announcer.stopped()


@dataclass(frozen=True, slots=True)
class _Listen:
    """Where ``serve`` listens, and how many workers it runs (its options); ``metrics_port``
    None: ``/metrics`` on the operator port."""

    host: str
    port: int
    admin_host: str
    admin_port: int
    workers: int
    log_level: str
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None


def _run_serving(
    settings: Settings,
    serve_settings: ServeSettings,
    lock: ServeLock,
    listen: _Listen,
    announcer: _Announcer,
    *,
    stop: StopRequest,
) -> None:
    """Open the services, bind, start the workers and serve until a stop signal (SIGINT, SIGTERM,
    SIGHUP); one that came while starting (its interruption lost) stops it at once."""
    services = _open_serving(settings, serve_settings)
    _export_settings(settings)
    reserve, operator_port = _reserve_operator_port(listen.host, listen.port)
    reserved = [reserve]
    metrics = None
    if listen.metrics_port is not None:
        held, metrics_port = _reserve_metrics_port(
            listen.metrics_host, listen.metrics_port, operator_port
        )
        reserved.append(held)
        metrics = _MetricsListener(listen.metrics_host, metrics_port, None if _REUSE_PORT else held)
    admin_sock, admin_url = _bind_admin(listen.admin_host, listen.admin_port)
    admin_limits = HttpLimits.of(serve_settings, MAX_BODY_BYTES)
    admin = _run_admin(services, admin_sock, listen.log_level, admin_limits)
    shared = None if _REUSE_PORT else reserve
    pool = _Workers(
        listen.host,
        operator_port,
        listen.workers,
        shared,
        listen.log_level,
        metrics,
        keyring=services.keyring,
    )
    previous = handle_stop_signals(stop.note)
    runtime_dir = _share_runtime_dir(settings.data_dir, lock)
    upkeep = _UpkeepThread(
        _Upkeep(
            services,
            services.material,
            serve_settings,
            key_coverage=functools.partial(read_key_coverage, services.store),
        )
    )
    announcer.where(
        settings, listen, operator_port, admin_url, None if metrics is None else metrics.port
    )
    try:
        # A stop before the workers start interrupts the start, as the docstring of ``serve``
        # says: one noted since the handler above took over, or one whose interruption was lost
        # while the services opened and the ports were bound (``StopRequest.interrupt``).
        stop.check()
        admin.check()
        pool.start()
        upkeep.start()
        while True:
            announcer.tick()
            if stop.sleep(0.2):
                break
            admin.check()
            pool.keep_alive(stop)
    finally:
        upkeep.stop()  # first: it finishes its step while the workers stop
        pool.stop()
        admin.stop()
        for held in reserved:
            held.close()
        restore_handlers(previous)
        upkeep.join()
        services.close()
        _retire_runtime_dir(runtime_dir, settings.data_dir, lock)


class _Announcer:
    """Says where serve listens, once a worker accepts connections on the operator port (and so
    on the metrics port: ``_worker_main``): the two lines of text, or with --json the one JSON
    line (``serve``'s docstring). Looked at on every turn of serve's loop, so waiting for the
    workers never holds up restarting them; a warning when none accepts for
    ``_ANNOUNCE_WARNING_S``. Should serve stop, however it stops, after ``init`` issued the
    bootstrap admin token but before the JSON line, the token still reaches standard output
    (``stopped``): it is shown only once."""

    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json
        self.initialised: Initialised | None = None
        self.done = False
        self._settings: Settings | None = None
        self._listen: _Listen | None = None
        self._port = 0
        self._admin_url = ""
        self._metrics_port: int | None = None
        self._since = 0.0
        self._warned = False

    def initialise_done(self, done: Initialised) -> None:
        """What ``--init-if-new`` did (``initialise``'s ``deliver``): kept for the JSON line, or
        printed at once in text mode."""
        self.initialised = done
        if not self.as_json:
            done.human()
        if done.token_issued:
            show_once_warning()

    def where(
        self,
        settings: Settings,
        listen: _Listen,
        port: int,
        admin_url: str,
        metrics_port: int | None = None,
    ) -> None:
        """Where serve listens: ``port`` (the operator port), ``metrics_port`` (None when
        ``/metrics`` is on the operator port), resolved."""
        self._settings, self._listen = settings, listen
        self._port, self._admin_url = port, admin_url
        self._metrics_port = metrics_port
        self._since = time.monotonic()

    def tick(self) -> None:
        if self.done or self._settings is None or self._listen is None:
            return
        if not _accepting(self._listen.host, self._port):
            if not self._warned and time.monotonic() - self._since > _ANNOUNCE_WARNING_S:
                self._warned = True
                log.warning(
                    "no worker accepts connections on port %d yet after %d s",
                    self._port,
                    _ANNOUNCE_WARNING_S,
                )
            return
        self.done = True
        metrics_host = _url_host(self._listen.metrics_host)
        _announce(
            self._settings,
            operator_url=f"http://{_url_host(self._listen.host)}:{self._port}",
            admin_url=self._admin_url,
            metrics_url=None
            if self._metrics_port is None
            else f"http://{metrics_host}:{self._metrics_port}{METRICS}",
            workers=self._listen.workers,
            initialised=self.initialised,
            as_json=self.as_json,
        )
        note("press Ctrl-C to stop")

    def stopped(self) -> None:
        """Serve is stopping (on an error, a signal, or once it served): print what would
        otherwise be lost. In text mode the token was printed when init returned."""
        done = self.initialised
        if self.as_json and not self.done and done is not None and done.token_issued:
            self.done = True
            echo(json.dumps({"init": done.document}, ensure_ascii=False))


def _accepting(host: str, port: int) -> bool:
    """True once something accepts connections on ``port`` of the interface serve bound."""
    targets = _PROBE_TARGETS.get(host, (host,))
    for target in targets:
        try:
            with socket.create_connection((target, port), timeout=0.5):
                return True
        except OSError:
            continue
    return False


def _bind_admin(host: str, port: int) -> tuple[socket.socket, str]:
    """The admin API's listening socket and URL; a warning when others can reach it."""
    sock = _bind(host, port, reuse_port=False, listen=True)
    if not _loopback(host):
        log.warning(
            "the admin API listens on %s: reachable from other machines, over plain HTTP; keep "
            "that interface private",
            host,
        )
    return sock, f"http://{_url_host(host)}:{sock.getsockname()[1]}/admin/api"


def _announce(
    settings: Settings,
    *,
    operator_url: str,
    admin_url: str,
    metrics_url: str | None,
    workers: int,
    initialised: Initialised | None,
    as_json: bool,
) -> None:
    """Say where serve listens, once every port is bound (``serve``'s docstring: --json).
    ``metrics_url`` is the metrics port's, None when ``/metrics`` is on the operator port: the
    operator line then names it by its path, as it always did."""
    if as_json:
        document = {
            "operator_url": operator_url,
            "admin_url": admin_url,
            "metrics_url": metrics_url or f"{operator_url}{METRICS}",
            "workers": workers,
            "pid": os.getpid(),
            "data_dir": str(settings.data_dir.resolve()),
            "environment": settings.environment.value,
            "init": None if initialised is None else initialised.document,
        }
        echo(json.dumps(document, ensure_ascii=False))
        return
    echo(
        f"operator API: {operator_url} ({workers} worker{'s' if workers != 1 else ''}; "
        f"health: /ops/healthcheck, metrics: {metrics_url or METRICS})"
    )
    echo(f"admin API: {admin_url}")
    if initialised is not None:
        echo(_next_steps(settings, admin_url))


def _loopback(host: str) -> bool:
    """True for a name or address that only this machine reaches."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
