"""A deadline on every round trip of an established PostgreSQL connection.

libpq bounds making a connection (``connect_timeout``), and TCP keep-alives with
``tcp_user_timeout`` bound a connection whose packets stop being acknowledged. Neither catches a
peer that acknowledges but never answers (a hung server or connection pooler, a proxy that stopped
forwarding): a read would wait for as long as that peer stays up. So each round trip of an
established connection gets a deadline: a statement (from the engine's ``before_cursor_execute``
to its ``after_cursor_execute`` or ``handle_error``), each fetch of a server-side cursor and its
close, a commit, a rollback (the pool's reset of a returned connection included), the queries the
engine runs on a connection it has just opened, and the ping on every checkout of a pooled
connection (which replaces the pool's own pre-ping).

A round trip still waiting at its deadline has its connection's socket shut down
(``shutdown(SHUT_RDWR)`` on a duplicate of libpq's descriptor, taken when the round trip starts;
never ``close``, so the descriptor libpq uses cannot be reused under it by another file). libpq
then fails at once as on a lost connection; the error says that the database gave no answer in
time, the engine treats it as a disconnect (the pool discards that connection and every one opened
before it), and ``unavailable_as_store_error`` turns it into ``StoreUnavailable``. A checkout whose
ping fails that way is retried by the pool on a new connection, as the pre-ping did for a
connection the server had closed.

One thread watches every deadline of the process, held in a heap: a round trip costs a ``dup`` and
a ``close`` of the descriptor and a heap push under a lock, a few microseconds.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Final, cast

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import Row, TupleRow
from sqlalchemy import Engine, event
from sqlalchemy.engine import Connection, Dialect, ExceptionContext
from sqlalchemy.exc import InvalidatePoolError, OperationalError

from uid2_operator.stop_signals import leave_to_main_thread
from uid2_operator.storage.engines import DEADLINE_OPTION

_ARMED: Final = 0
_ENDED: Final = 1
_REACHED: Final = 2


class Deadline:
    """One round trip's deadline: either ended by the round trip, or reached first, in which case
    the connection's socket is shut down."""

    __slots__ = ("_fd", "_state", "seconds")

    def __init__(self, fd: int, seconds: float) -> None:
        self._fd = fd  # a duplicate of the connection's socket, owned here
        self._state = _ARMED
        self.seconds = seconds

    def end(self) -> bool:
        """Disarms the deadline (again: a no-op); True when it had been reached."""
        return _WATCHDOG.end(self)

    @property
    def reached(self) -> bool:
        return self._state == _REACHED


class _Watchdog:
    """The one thread that shuts down the connections whose round trip passed its deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, Deadline]] = []
        self._armed = 0
        self._order = itertools.count()  # ties in the heap never compare two Deadlines
        self._thread: threading.Thread | None = None
        self._sleeps_until = math.inf  # when the thread wakes by itself (it holds the lock if not)
        os.register_at_fork(after_in_child=self._forget_after_fork)

    def arm(self, fd: int, seconds: float) -> Deadline | None:
        """A deadline ``seconds`` from now for the socket ``fd``; None when ``fd`` is no longer
        open (the round trip then fails on its own)."""
        try:
            duplicate = os.dup(fd)
        except OSError:
            return None
        deadline = Deadline(duplicate, seconds)
        due = time.monotonic() + seconds
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="store-round-trip-deadline", daemon=True
                )
                self._thread.start()
            heapq.heappush(self._heap, (due, next(self._order), deadline))
            self._armed += 1
            if due < self._sleeps_until:  # rare: the thread already wakes by then otherwise
                self._sleeps_until = due
                self._wake.notify()
        return deadline

    def end(self, deadline: Deadline) -> bool:
        with self._lock:
            if deadline._state != _ARMED:
                return deadline._state == _REACHED
            deadline._state = _ENDED
            self._armed -= 1
            self._drop_ended()
        os.close(deadline._fd)
        return False

    def _drop_ended(self) -> None:
        """Removes ended deadlines from the heap (the lock held): those on top at once, all of
        them once they are more than half of it, so that it stays as small as the round trips
        under way whatever order they end in."""
        heap = self._heap
        while heap and heap[0][2]._state != _ARMED:
            heapq.heappop(heap)
        if len(heap) > 2 * self._armed + 64:
            heap[:] = [entry for entry in heap if entry[2]._state == _ARMED]
            heapq.heapify(heap)

    def _run(self) -> None:
        leave_to_main_thread()
        while True:
            with self._lock:
                reached = self._next_reached()
            _shut_down(reached._fd)

    def _next_reached(self) -> Deadline:
        """Waits (the lock held) until a deadline is reached, and marks it so."""
        while True:
            self._drop_ended()
            if not self._heap:
                self._sleeps_until = math.inf
                self._wake.wait()
                continue
            due = self._heap[0][0]
            wait_s = due - time.monotonic()
            if wait_s > 0:
                self._sleeps_until = due
                self._wake.wait(wait_s)
                continue
            _, _, deadline = heapq.heappop(self._heap)
            deadline._state = _REACHED
            self._armed -= 1
            return deadline

    def _forget_after_fork(self) -> None:
        """In a child process: the parent's thread is not there, and its lock may have been held
        when the process forked. The deadlines of the parent's round trips are dropped (and
        their descriptors closed): the child does not use the parent's connections."""
        for _, _, deadline in self._heap:
            if deadline._state == _ARMED:
                deadline._state = _ENDED
                with contextlib.suppress(OSError):
                    os.close(deadline._fd)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap = []
        self._armed = 0
        self._thread = None
        self._sleeps_until = math.inf


def _shut_down(fd: int) -> None:
    """Shuts the socket ``fd`` duplicates down both ways (libpq's read or write fails at once),
    then closes ``fd``."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.close(fd)
        return
    with sock, contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


_WATCHDOG: Final = _Watchdog()


def no_answer(seconds: float) -> psycopg.OperationalError:
    """The driver error a round trip that reached its deadline ends with."""
    return psycopg.OperationalError(f"no answer from the database within {seconds:g} s")


class DeadlineConnection(psycopg.Connection[TupleRow]):
    """A psycopg connection whose commits, rollbacks and server-side cursors keep to its round
    trip deadline, and which holds the deadlines of its statement and of its setup."""

    round_trip_deadline_s: float = 30.0
    fresh: bool = True
    """Not yet taken from the pool: it needs no ping (the pre-ping skips such connections too)."""
    _statement: Deadline | None = None
    _setup: Deadline | None = None

    def deadline(self, seconds: float | None = None) -> Deadline | None:
        """Arms a deadline for the round trip about to start (None: the connection is lost)."""
        try:
            fd = self.fileno()
        except psycopg.Error:
            return None
        return _WATCHDOG.arm(fd, self.round_trip_deadline_s if seconds is None else seconds)

    @contextlib.contextmanager
    def round_trip(self) -> Iterator[None]:
        """Runs one round trip under the deadline; its failure once the deadline is reached
        says so."""
        deadline = self.deadline()
        if deadline is None:
            yield
            return
        try:
            yield
        except psycopg.Error as exc:
            if deadline.end():
                raise no_answer(deadline.seconds) from exc
            raise
        finally:
            deadline.end()

    def statement_started(self, seconds: float) -> None:
        if self._statement is not None:  # a statement whose end went unseen
            self._statement.end()
        self._statement = self.deadline(seconds)

    def statement_ended(self) -> float | None:
        """Disarms the statement's deadline; the deadline (seconds) if it was reached."""
        statement, self._statement = self._statement, None
        if statement is not None and statement.end():
            return statement.seconds
        return None

    def setup_reached(self) -> float | None:
        """The deadline (seconds) of the connection's setup if it was reached."""
        setup = self._setup
        return setup.seconds if setup is not None and setup.reached else None

    def setup_started(self) -> None:
        self._setup = self.deadline()

    def setup_ended(self) -> None:
        setup, self._setup = self._setup, None
        if setup is not None:
            setup.end()

    def commit(self) -> None:
        if self.info.transaction_status == TransactionStatus.IDLE:
            super().commit()  # no transaction: nothing is sent
            return
        with self.round_trip():
            super().commit()

    def rollback(self) -> None:
        if self.info.transaction_status == TransactionStatus.IDLE:
            super().rollback()  # no transaction (the pool's reset, mostly): nothing is sent
            return
        with self.round_trip():
            super().rollback()

    def close(self) -> None:
        self.statement_ended()
        self.setup_ended()
        super().close()


def _round_trip(conn: psycopg.Connection[Any]) -> contextlib.AbstractContextManager[None]:
    if isinstance(conn, DeadlineConnection):
        return conn.round_trip()
    return contextlib.nullcontext()


class DeadlineServerCursor(psycopg.ServerCursor[Row]):
    """A server-side cursor (``stream_results``) whose fetches and close each keep to the
    connection's round trip deadline (its DECLARE is a statement, watched as any other)."""

    __slots__ = ()

    @contextlib.contextmanager
    def _fetching(self) -> Iterator[None]:
        try:
            with _round_trip(self.connection):
                yield
        except psycopg.Error:
            if self.connection.closed:
                # Nothing left to close on the server: closed here, so that it is not reported
                # as dropped while open.
                psycopg.Cursor.close(self)
            raise

    def fetchone(self) -> Row | None:
        with self._fetching():
            return super().fetchone()

    def fetchmany(self, size: int = 0) -> list[Row]:
        with self._fetching():
            return super().fetchmany(size)

    def fetchall(self) -> list[Row]:
        with self._fetching():
            return super().fetchall()

    def __next__(self) -> Row:
        with self._fetching():
            return super().__next__()

    def scroll(self, value: int, mode: str = "relative") -> None:
        with self._fetching():
            super().scroll(value, mode)

    def close(self) -> None:
        with self._fetching():
            super().close()


def enforce_round_trip_deadline(engine: Engine, seconds: float) -> None:
    """Gives every round trip of ``engine``'s connections (a psycopg engine, created without
    ``pool_pre_ping``) a deadline of ``seconds``, and pings a pooled connection under it on
    every checkout."""
    dialect: Dialect = engine.dialect

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> DeadlineConnection:
        conn = DeadlineConnection.connect(*cargs, **cparams)
        conn.round_trip_deadline_s = seconds
        conn.server_cursor_factory = DeadlineServerCursor
        conn.setup_started()  # ended once the engine's own connect hooks have run
        return conn

    @event.listens_for(engine, "connect")  # after the engine's own (registered before this)
    def _connected(dbapi_conn: DeadlineConnection, _record: Any) -> None:
        dbapi_conn.setup_ended()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn: DeadlineConnection, _record: Any, _proxy: Any) -> None:
        if dbapi_conn.fresh:
            dbapi_conn.fresh = False
            return
        try:
            with dbapi_conn.round_trip():
                dialect.do_ping(cast(Any, dbapi_conn))
        except psycopg.Error as exc:
            if not dbapi_conn.closed:
                raise  # the connection works: the error is not the pool's to absorb
            # The pool discards this connection and every one opened before it, then checks
            # out a new one (the pre-ping's answer to a server that closed its connections).
            raise InvalidatePoolError(f"ping failed: {exc}") from exc

    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_conn: DeadlineConnection | None, _record: Any) -> None:
        if dbapi_conn is not None:
            dbapi_conn.statement_ended()

    @event.listens_for(engine, "before_cursor_execute")
    def _statement_started(conn: Connection, cursor: Any, *_args: Any, **_kwargs: Any) -> None:
        limit = conn.get_execution_options().get(DEADLINE_OPTION, seconds)
        cast(DeadlineConnection, cursor.connection).statement_started(limit)

    @event.listens_for(engine, "after_cursor_execute")
    def _statement_ended(_conn: Connection, cursor: Any, *_args: Any, **_kwargs: Any) -> None:
        cast(DeadlineConnection, cursor.connection).statement_ended()

    @event.listens_for(engine, "handle_error")
    def _statement_failed(ctx: ExceptionContext) -> BaseException | None:
        dbapi_conn = _connection_of(ctx)
        if dbapi_conn is None:
            return None
        reached = dbapi_conn.statement_ended()
        if reached is None:
            reached = dbapi_conn.setup_reached()  # a query the engine runs on a new connection
        if reached is None:
            return None
        ctx.is_disconnect = True  # the connection is shut down: the pool must not reuse it
        return OperationalError(
            ctx.statement,
            ctx.parameters,
            no_answer(reached),
            hide_parameters=engine.hide_parameters,
            connection_invalidated=True,
        )


def _connection_of(ctx: ExceptionContext) -> DeadlineConnection | None:
    """The connection whose statement (or fetch) failed; None when it failed before it had one."""
    # ``ctx.cursor`` is left unset by some SQLAlchemy versions: the execution context has it.
    cursor = getattr(ctx, "cursor", None)
    if cursor is None and ctx.execution_context is not None:
        cursor = getattr(ctx.execution_context, "cursor", None)
    conn = getattr(cursor, "connection", None)
    return conn if isinstance(conn, DeadlineConnection) else None
