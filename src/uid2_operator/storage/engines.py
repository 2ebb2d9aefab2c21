"""Database URLs, engines, and the few places where SQLite and PostgreSQL differ.

Every dialect difference the store depends on lives in a ``Flavour``: how a connection is set up,
how a write transaction takes the store-wide write lock, how a read transaction gets one
consistent snapshot, and how a counter is upserted.

Why the write lock is store-wide: the audit chain assigns ``seq`` and ``prev_hash`` from the last
row, and use cases read-decide-write records; both are only race-free if writers run one at a
time. Control-plane writes are rare and short, so one lock costs nothing measurable.

A SQLite engine also keeps to the one file it first opened (``SqliteFile``): a file deleted or
replaced under a running process makes that engine's store unavailable instead of letting it go
on writing into a file nobody else sees.

A PostgreSQL engine gives every round trip of its connections a deadline
(``POSTGRES_ROUND_TRIP_DEADLINE_S``, ``round_trip_deadline``): a server that stops answering
fails a use with StoreUnavailable instead of leaving it waiting.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, Protocol

from sqlalchemy import Connection, Engine, create_engine, event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.schema import Table

from uid2_operator.errors import StoreAccessRefused, StoreUnavailable, UnsupportedDatabaseUrl
from uid2_operator.storage.schema import CHANGE_SEQ, store_meta

WRITE_LOCK_WAIT_MS = 10_000
"""How long a writer waits for the store-wide write lock before giving up (StoreUnavailable),
on either backend: a writer that stalls holding it (a paused machine, a lost connection) costs
the others a refusal they can retry, not a wait without end."""
SQLITE_BUSY_TIMEOUT_MS = WRITE_LOCK_WAIT_MS

DRIVER_REASON_CHARS = 200
"""How much of the first line of a driver's error text a StoreUnavailable message keeps."""

_BEGIN_OPTION = "uid2_sqlite_begin"
_UNDECODABLE_TEXT: Final = re.compile(r"(Could not decode to UTF-8 column '[^']*') with text ")
"""Python's SQLite reader on a stored text that is not UTF-8: its message goes on to quote it."""
_REFUSED_BY_STATE: Final[dict[str, tuple[type[StoreUnavailable], str]]] = {
    # A write in a read-only transaction: a hot standby (after a fail-over), or a database whose
    # sessions default to read-only; unavailable for writes until then.
    "25006": (StoreUnavailable, "refuses writes: {}"),
    # The server ended the session on a timeout its settings set (idle in transaction,
    # transaction), which psycopg raises as an InternalError: as a terminated connection, the
    # next one works.
    "25P03": (StoreUnavailable, "is unavailable: {}"),
    "25P04": (StoreUnavailable, "is unavailable: {}"),
    # The role may not touch a table (a revoked grant, a role set up for another schema):
    # nothing a retry or the caller's input changes.
    "42501": (StoreAccessRefused, "refuses access: {} (check the database role's privileges)"),
}
"""PostgreSQL SQLSTATEs that make the store unavailable to a use, whatever the statement, and
how the error says so (the driver's reason in place of ``{}``)."""
DEADLINE_OPTION: Final = "uid2_round_trip_deadline_s"
"""Execution option of a PostgreSQL ``Connection``: the deadline, in seconds, of each of its
statements, in place of the engine's (the schema upgrade runs statements that may take longer
than any use case's; ``round_trip_deadline``)."""
_MIGRATION_LOCK_ID = 0x75696432  # any constant shared by every upgrader of one database


def normalise_url(url: str | URL) -> URL:
    """Accepts ``sqlite:///<path>`` and ``postgresql[+psycopg]://...`` (``postgres://`` too).

    PostgreSQL is always driven by psycopg 3, whatever driver the URL names by default. An
    in-memory SQLite database is refused: each pooled connection would get its own empty one;
    so is a SQLite URL with a query (the driver's options), which the engines set themselves.
    """
    if isinstance(url, str):
        try:
            url.encode("utf-8")
        except UnicodeEncodeError:
            raise UnsupportedDatabaseUrl(
                "Unsupported database URL: it must be valid UTF-8 text"
            ) from None
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number, say
        raise UnsupportedDatabaseUrl("Unsupported database URL: cannot parse it") from exc
    if parsed.host is not None and "@" in parsed.host:
        # The password ended at its first '@' as parsed, and the rest of it became the host,
        # which the URL shown (password hidden) and the driver's own errors would then print.
        raise UnsupportedDatabaseUrl(
            "Unsupported database URL: what follows its last '@' is not the host alone; write an "
            "'@' in the user name or password as %40"
        )
    shown = _hidden(parsed)
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        if parsed.database in (None, "", ":memory:") or parsed.database.startswith("file:"):
            raise UnsupportedDatabaseUrl(
                f"Unsupported database URL {shown}: SQLite needs a file path, sqlite:///<path>"
            )
        if parsed.query:
            # pysqlite reads ``uri=true`` as making the path, query included, a URI of its
            # own: one engine would open another file than the next (or memory, not a file).
            raise UnsupportedDatabaseUrl(
                f"Unsupported database URL {shown}: SQLite takes no options in its URL, "
                "sqlite:///<path>"
            )
        return parsed.set(drivername="sqlite+pysqlite")
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    raise UnsupportedDatabaseUrl(
        f"Unsupported database URL {shown}: use sqlite:///<path> or postgresql+psycopg://..."
    )


class Flavour(Protocol):
    name: str

    def begin_write(self, conn: Connection) -> None:
        """Starts a write transaction on a fresh connection and takes the store-wide lock."""
        ...

    def begin_migration(self, conn: Connection) -> None:
        """Starts the transaction a schema upgrade runs in, serialising concurrent upgrades."""
        ...

    def begin_read(self, conn: Connection) -> Connection:
        """Starts a read-only transaction over one consistent snapshot."""
        ...

    def upsert_insert(self, table: Table) -> Any:
        """An INSERT construct of this dialect, supporting ``on_conflict_do_update``."""
        ...

    def greatest(self, a: ColumnElement[Any], b: ColumnElement[Any]) -> ColumnElement[Any]:
        """The larger of two non-null values."""
        ...


class SqliteFlavour:
    """SQLite in WAL mode: readers never block the writer; ``BEGIN IMMEDIATE`` serialises writers.

    The stdlib driver's own transaction handling is switched off (``isolation_level=None``) so that
    the store decides exactly when and how a transaction begins.
    """

    name = "sqlite"

    def begin_write(self, conn: Connection) -> None:
        conn.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        conn.begin()

    def begin_migration(self, conn: Connection) -> None:
        self.begin_write(conn)  # BEGIN IMMEDIATE works on an empty file too

    def begin_read(self, conn: Connection) -> Connection:
        conn.begin()
        return conn

    def upsert_insert(self, table: Table) -> Any:
        return sqlite.insert(table)

    def greatest(self, a: ColumnElement[Any], b: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.max(a, b)  # the two-argument scalar max()

    @staticmethod
    def configure(engine: Engine) -> None:
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                enter_wal_mode(cursor)
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute("PRAGMA synchronous=NORMAL")  # durable enough in WAL mode
            finally:
                cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")


_WAL_RETRY_FIRST_PAUSE_S = 0.002
_WAL_RETRY_LAST_PAUSE_S = 0.05


def enter_wal_mode(
    cursor: Any,
    *,
    wait_ms: int = SQLITE_BUSY_TIMEOUT_MS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Puts the SQLite file behind ``cursor`` in WAL mode, waiting for a concurrent opener.

    Switching a file to WAL (the first openers of a new file do) needs a lock SQLite does not
    wait for while another connection writes the file: ``busy_timeout`` notwithstanding, a
    process opening a new file as another switches it gets "database is locked" at once. The
    switch is retried here, a few milliseconds apart, for as long as a writer waits for the
    write lock; once one opener has switched the file, the others find it in WAL mode already.
    """
    deadline = clock() + wait_ms / 1000
    pause = _WAL_RETRY_FIRST_PAUSE_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY or clock() >= deadline:
                raise
            sleep(pause)
            pause = min(pause * 2, _WAL_RETRY_LAST_PAUSE_S)
        else:
            return


class PostgresFlavour:
    """PostgreSQL: writers lock the ``change_seq`` row FOR UPDATE first thing; readers use a
    REPEATABLE READ, READ ONLY transaction so that several SELECTs see one snapshot.

    Write and upgrade transactions run at READ COMMITTED whatever the database's default
    (``default_transaction_isolation``): once the lock is theirs, each statement must see what
    the writer before them committed while they waited. Under REPEATABLE READ or SERIALIZABLE
    the snapshot is taken before the wait, and the locked row, changed since, fails them with
    "could not serialize access" instead.
    """

    name = "postgresql"

    def begin_write(self, conn: Connection) -> None:
        self._begin_read_committed(conn)
        conn.execute(
            select(store_meta.c.value).where(store_meta.c.name == CHANGE_SEQ).with_for_update()
        )

    def begin_migration(self, conn: Connection) -> None:
        # The same bounded wait as a writer's, both for this lock and for the write lock the
        # upgrade's data step takes later in this transaction.
        conn.execution_options(**{DEADLINE_OPTION: MIGRATION_ROUND_TRIP_DEADLINE_S})
        self._begin_read_committed(conn)
        conn.execute(select(func.pg_advisory_xact_lock(_MIGRATION_LOCK_ID)))

    @staticmethod
    def _begin_read_committed(conn: Connection) -> None:
        conn.execution_options(isolation_level="READ COMMITTED")  # reset when back in the pool
        conn.begin()
        # For this transaction only: waiting longer for a lock (a row, a table, an advisory
        # lock) than this fails (LockNotAvailable, an OperationalError, so StoreUnavailable)
        # instead of queueing for as long as it is held.
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(WRITE_LOCK_WAIT_MS)}")

    def begin_read(self, conn: Connection) -> Connection:
        conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        conn.begin()
        return conn

    def upsert_insert(self, table: Table) -> Any:
        return postgresql.insert(table)

    def greatest(self, a: ColumnElement[Any], b: ColumnElement[Any]) -> ColumnElement[Any]:
        return func.greatest(a, b)


def sqlite_path(url: str | URL) -> Path | None:
    """The absolute path of the SQLite file ``url`` names (None for PostgreSQL)."""
    parsed = normalise_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database is None:
        return None
    return Path(os.path.abspath(parsed.database))


_FileIdentity = tuple[int, int]
"""``(st_dev, st_ino)``: which file a path names."""


class SqliteFile:
    """The one SQLite file an engine uses, known by its identity, not by its path.

    An open SQLite connection holds its file open: once the path names another file (a backup
    moved over it) or none (the file deleted), the connection goes on reading and committing
    into the old one, which nothing else will ever read, while every other process, and every
    connection opened later, uses whatever the path names now. So the engine remembers the file
    its first connection opened, and refuses (StoreUnavailable) both a new connection that would
    open another file and, at every checkout from the pool (one ``os.stat``), a pooled
    connection whose path no longer names that file; such a connection is discarded (closed)
    before it is used. Nothing is written to the old file any more, and no new file is created
    where it was (a missing file is only ever created by a first connection, which the schema
    upgrade makes). A process refused this way stays refused until it is restarted: which of the
    two files holds the truth is for the operator to decide, not for the first connection that
    happens to open the new one.

    A transaction that already holds a connection when the file goes finishes on it: the check
    is made when a connection is taken from the pool, not at every statement.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._identity: _FileIdentity | None = None
        self._lock = threading.Lock()

    def watch(self, engine: Engine) -> None:
        """Checks every connection ``engine`` opens and every checkout from its pool."""
        event.listen(engine, "do_connect", self._connect)
        event.listen(engine, "checkout", self._checkout)

    def _named(self) -> _FileIdentity | None:
        """The identity of the file the path names now; None when it names none."""
        try:
            status = os.stat(self._path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreUnavailable(
                f"The store at sqlite:///{self._path} is unavailable: the SQLite file cannot be "
                f"checked: {exc.strerror or type(exc).__name__}"
            ) from None
        return (status.st_dev, status.st_ino)

    def _gone(self) -> StoreUnavailable:
        return StoreUnavailable(
            f"The store at sqlite:///{self._path} is unavailable: the SQLite file {self._path} "
            "was removed or replaced while in use; nothing more is written to the file this "
            "process opened (stop it, put the right file in place, and start it again)"
        )

    def _connect(self, dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> Any:
        before = self._named()
        if self._identity is not None and before != self._identity:
            raise self._gone()  # and no connection made, which could create an empty file
        dbapi_conn = dialect.connect(*cargs, **cparams)
        try:
            opened = self._named()
            with self._lock:
                if self._identity is None and before in (None, opened):
                    self._identity = opened  # the first file opened (or created) here
                if opened is None or opened != self._identity:
                    raise self._gone()
        except BaseException:
            dbapi_conn.close()
            raise
        return dbapi_conn

    def _checkout(self, _dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        # Raising here makes the pool close the connection rather than hand it out again.
        if self._named() != self._identity:
            raise self._gone()


POSTGRES_CONNECT_DEFAULTS: Final[dict[str, int]] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
"""libpq options every PostgreSQL connection gets unless its URL sets them: a connection to a
database the network no longer reaches fails within about half a minute (TCP keep-alive probes
on an idle connection, ``tcp_user_timeout`` in milliseconds on one waiting for an answer), where
the kernel's defaults would leave a read waiting for a quarter of an hour or more."""

POSTGRES_ROUND_TRIP_DEADLINE_S = 30.0
"""How long one round trip of an established PostgreSQL connection may wait for its answer (a
statement, a commit or rollback, a fetch of a streamed result, the ping on checkout from the
pool) before its connection is shut down and the use fails with StoreUnavailable: a server or
connection pooler that acknowledges packets but never answers, which neither keep-alives nor
``tcp_user_timeout`` detect, fails a use as fast as a lost network does. See
``round_trip_deadline``. Read when an engine is made."""

MIGRATION_ROUND_TRIP_DEADLINE_S = 1800.0
"""The same for each statement of the schema upgrade (``begin_migration``): a revision may rewrite
a whole table (r0004 stamps every opt-out), which takes minutes on a large store."""


def make_engine(url: str | URL, *, must_exist: bool = False) -> tuple[Engine, Flavour]:
    """An engine for ``url`` (normalised first) and the flavour that goes with it.

    ``must_exist``: a SQLite file is opened read-write but never created (SQLite's ``mode=rw``),
    so a connection to a missing file fails (StoreUnavailable through
    ``unavailable_as_store_error``) instead of leaving an empty file with the umask's mode. Only
    the schema upgrade, which creates the file owner-only first, opens without it.

    A SQLite engine keeps to the file its first connection opened (``SqliteFile``), whether or
    not it may create it.
    """
    parsed = normalise_url(url)
    if parsed.drivername.startswith("sqlite"):
        path = sqlite_path(parsed)
        if must_exist and path is not None:
            # The driver opens "file:<path>?mode=rw" (a URI filename), other query options kept.
            parsed = parsed.set(database=f"file:{urllib.parse.quote(str(path))}")
            parsed = parsed.update_query_dict({"mode": "rw", "uri": "true"})
        engine = create_engine(parsed, connect_args={"check_same_thread": False})
        if path is not None:
            SqliteFile(path).watch(engine)
        SqliteFlavour.configure(engine)
        return engine, SqliteFlavour()
    defaults = {k: v for k, v in POSTGRES_CONNECT_DEFAULTS.items() if k not in parsed.query}
    # No pool_pre_ping: the deadline's own ping on checkout replaces it (the pre-ping's could
    # wait for ever on a server that never answers).
    engine = create_engine(parsed, connect_args=defaults)
    # Imported here: it imports psycopg, about 25 MB of every process that serves SQLite.
    from uid2_operator.storage.round_trip_deadline import enforce_round_trip_deadline  # noqa: PLC0415

    enforce_round_trip_deadline(engine, POSTGRES_ROUND_TRIP_DEADLINE_S)
    event.listen(engine, "checkout", _server_default_access)
    return engine, PostgresFlavour()


def _server_default_access(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """A pooled connection's transactions begin with the server's default access mode.

    A read unit makes its transaction read-only (``postgresql_readonly``); when its connection
    goes back to the pool, SQLAlchemy undoes that by setting psycopg's ``read_only`` to False,
    and psycopg then begins every later transaction of the connection ``READ WRITE`` explicitly,
    overriding a server or session that defaults to read-only (``default_transaction_read_only``,
    a hot standby): a write would then be refused or not depending on which connection it got.
    None leaves the access mode to the server again."""
    dbapi_conn.read_only = None


# libpq options a URL may carry in its query that are secrets (``?password=...``).
_SECRET_QUERY_KEYS = frozenset({"password", "sslpassword"})


def _hidden(url: URL) -> str:
    """``url`` rendered with its password hidden, in the authority and in the query."""
    secret = {key: "***" for key in url.query if key.lower() in _SECRET_QUERY_KEYS}
    shown = url.update_query_dict(secret).render_as_string(hide_password=True)
    return shown.replace("=%2A%2A%2A", "=***") if secret else shown


def shown_url(url: URL) -> str:
    """``url`` as messages show it: the password hidden (also as a ``password`` query
    option), and a SQLite file as ``sqlite:///`` and the path it names, however the engine
    opens it (with the driver's name, or read-write only: ``make_engine``'s ``must_exist``)."""
    if url.drivername.startswith("sqlite"):
        database = url.database or ""
        if database.startswith("file:"):
            database = urllib.parse.unquote(database.removeprefix("file:"))
        return f"sqlite:///{database}"
    return _hidden(url)


@contextmanager
def unavailable_as_store_error(engine: Engine) -> Iterator[None]:
    """Maps "cannot reach, or cannot lock, the database" to StoreUnavailable (password hidden),
    a connection pool with no free connection for ``pool_timeout`` included."""
    try:
        yield
    except ProgrammingError as exc:
        _raise_refusal_by_state(engine, exc)
        if exc.statement is not None:
            raise  # a statement the database refused: not the URL's doing
        # Refused before any statement: the driver does not accept the URL's options
        # (``?bogus=1``). Its message may quote the connection string, so it is not repeated.
        shown = shown_url(engine.url)
        raise UnsupportedDatabaseUrl(
            f"Unsupported database URL {shown}: the PostgreSQL driver refuses its connection "
            "options (check the query parameters)"
        ) from exc
    except (OperationalError, InterfaceError, PoolTimeout) as exc:
        shown = shown_url(engine.url)
        cause = exc.orig if isinstance(exc, OperationalError | InterfaceError) else exc
        reason = type(exc).__name__ if cause is None else driver_reason(cause)
        raise StoreUnavailable(f"The store at {shown} is unavailable: {reason}") from exc
    except DatabaseError as exc:
        _raise_refusal_by_state(engine, exc)
        if type(exc) is not DatabaseError:
            raise  # a refused statement (integrity, data): the caller's to answer
        # The driver's plain DatabaseError: SQLite's "file is not a database" and "database
        # disk image is malformed" (a damaged or foreign file where the database should be).
        shown = shown_url(engine.url)
        reason = type(exc).__name__ if exc.orig is None else driver_reason(exc.orig)
        raise StoreUnavailable(f"The store at {shown} is unavailable: {reason}") from exc


def _raise_refusal_by_state(engine: Engine, exc: DatabaseError) -> None:
    """Raise the store error of ``_REFUSED_BY_STATE`` for the SQLSTATE of ``exc``, if it has one
    there; else return."""
    refused = exc.orig
    found = _REFUSED_BY_STATE.get(getattr(refused, "sqlstate", None) or "")
    if refused is None or found is None:
        return
    error, says = found
    raise error(
        f"The store at {shown_url(engine.url)} " + says.format(driver_reason(refused))
    ) from exc


def driver_reason(error: BaseException) -> str:
    """The first line of a driver's error text, cut to ``DRIVER_REASON_CHARS``: what an operator
    acts on ("Connection refused", "database is locked", "could not translate host name ...").

    The lines after it never reach a message, nor the logs that repeat it (the snapshot poller,
    the upkeep): psycopg adds a server error's DETAIL, HINT and CONTEXT lines, which may quote
    the values of the statement (a key, a hash), and the connection hints of libpq. An error
    with no text is named by its class."""
    lines = str(error).strip().splitlines()
    first = lines[0].strip() if lines else ""
    undecodable = _UNDECODABLE_TEXT.match(first)
    if undecodable is not None:
        # SQLite's reader quotes the stored value, which no message or log line may carry.
        first = f"{undecodable.group(1)} (a value not UTF-8, written outside uid2-operator)"
    if len(first) > DRIVER_REASON_CHARS:
        first = first[: DRIVER_REASON_CHARS - 3] + "..."
    return first or type(error).__name__
