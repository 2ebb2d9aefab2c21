"""Database URLs, SQLite connection settings, and how an unreachable database is reported."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from store_records import participant

from uid2_operator.errors import StoreError, StoreUnavailable, UnsupportedDatabaseUrl
from uid2_operator.storage import SqlStore, engines, open_store, upgrade
from uid2_operator.storage.engines import normalise_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///data/uid2.db", "sqlite+pysqlite:///data/uid2.db"),
        ("sqlite:////abs/uid2.db", "sqlite+pysqlite:////abs/uid2.db"),
        ("sqlite+pysqlite:///uid2.db", "sqlite+pysqlite:///uid2.db"),
        ("postgresql://u@db:5432/uid2", "postgresql+psycopg://u@db:5432/uid2"),
        ("postgres://u@db/uid2", "postgresql+psycopg://u@db/uid2"),
        (
            "postgresql+psycopg://u@db/uid2?sslmode=require",
            "postgresql+psycopg://u@db/uid2?sslmode=require",
        ),
    ],
)
def test_supported_urls_are_normalised(url: str, expected: str) -> None:
    assert normalise_url(url).render_as_string(hide_password=False) == expected


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite:///file:uid2?mode=memory",
        "sqlite:///file::memory:",  # a URI without options: not a file path either
        "sqlite+aiosqlite:///uid2.db",  # another SQLite driver: not rewritten to this one
        "sqlite+pysqlcipher:///uid2.db",
        "postgresql+psycopg2://u:hunter2@db/uid2",
        "mysql://u@db/uid2",
        "not a url",
        "postgresql://u:hunter2@localhost:abc/uid2",
        "postgresql://u:hunter2@[::1/uid2",
    ],
)
def test_unsupported_urls_are_refused_without_showing_a_password(url: str) -> None:
    with pytest.raises(UnsupportedDatabaseUrl) as caught:
        normalise_url(url)
    assert "hunter2" not in str(caught.value)


def test_a_password_holding_an_unencoded_at_sign_is_refused_showing_none_of_it() -> None:
    # Parsed, the password ends at its first '@' and the rest of it becomes the host: the URL
    # shown with its password hidden, and the driver's "cannot resolve host" error, showed it.
    url = "postgresql://ops:Xy7@Ab9cD3eF@127.0.0.1:5432/uid2"
    with pytest.raises(UnsupportedDatabaseUrl) as caught:
        normalise_url(url)
    message = str(caught.value)
    assert "write an '@' in the user name or password as %40" in message
    assert "Xy7" not in message
    assert "Ab9cD3eF" not in message
    encoded = normalise_url("postgresql://ops:Xy7%40Ab9cD3eF@127.0.0.1:5432/uid2")
    assert (encoded.password, encoded.host) == ("Xy7@Ab9cD3eF", "127.0.0.1")


@pytest.mark.parametrize(
    "query", ["uri=true&cache=shared", "mode=memory&uri=true", "uri=true", "timeout=5"]
)
def test_a_sqlite_url_with_options_is_refused_and_nothing_is_created(
    tmp_path: Path, query: str
) -> None:
    # pysqlite would read "uri=true" as making the path, query included, a URI of its own:
    # the file one engine opens would not be the file another opens (or not a file at all).
    url = f"sqlite:///{tmp_path / 'uid2.db'}?{query}"
    with pytest.raises(UnsupportedDatabaseUrl) as caught:
        upgrade(url)
    assert "SQLite takes no options in its URL" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("directory", ["d#1", "d #2"])
def test_a_sqlite_path_with_uri_characters_opens_that_file_and_creates_nothing_else(
    tmp_path: Path, directory: str
) -> None:
    # Commands other than the upgrade open the file read-write only, as a ``file:`` URI; a
    # '#' or '?' left unquoted there would cut the path (and the read-write mode) short.
    (tmp_path / directory).mkdir()
    url = f"sqlite:///{tmp_path / directory / 'uid2.db'}"
    upgrade(url)
    store = open_store(url)
    try:
        assert store.change_seq() == 0
    finally:
        store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [directory]
    with pytest.raises(StoreError, match="does not exist"):
        open_store(f"sqlite:///{tmp_path / directory / 'other.db'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [directory]


def test_concurrent_upgrades_of_a_new_sqlite_file_wait_for_each_other(tmp_path: Path) -> None:
    # As the schema upgrade promises: a second upgrade waits for the first (the write lock is
    # taken as the migration begins), then finds nothing to do.
    url = f"sqlite:///{tmp_path / 'uid2.db'}"
    start = threading.Barrier(3)
    failures: list[BaseException] = []

    def run() -> None:
        start.wait()
        try:
            upgrade(url)
        except BaseException as exc:  # every failure is the finding
            failures.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    store = open_store(url)
    try:
        assert store.change_seq() == 0
    finally:
        store.close()


def test_opening_a_file_another_connection_is_writing_waits_to_switch_it_to_wal(
    tmp_path: Path,
) -> None:
    # Switching a file to WAL takes a lock SQLite does not wait for, busy_timeout or not: an
    # opener that meets another's write (as concurrent first openers of a new file do) got
    # "database is locked" at once; it now waits for that write to end.
    path = tmp_path / "uid2.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE t (x)")  # a rollback-journal file, as a new one starts
    writer.execute("BEGIN IMMEDIATE")
    done = threading.Timer(0.3, lambda: writer.execute("COMMIT"))
    done.start()
    engine, _ = engines.make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == (
                engines.SQLITE_BUSY_TIMEOUT_MS
            )
    finally:
        engine.dispose()
        done.join()
        writer.close()


class _BusyCursor:
    """Refuses ``PRAGMA journal_mode=WAL`` with ``error`` the first ``times`` times."""

    def __init__(self, times: int, error: sqlite3.OperationalError) -> None:
        self.left = times
        self.error = error
        self.calls = 0

    def execute(self, sql: str) -> None:
        assert sql == "PRAGMA journal_mode=WAL"
        self.calls += 1
        if self.left:
            self.left -= 1
            raise self.error


def _sqlite_error(code: int) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError("database is locked")
    error.sqlite_errorcode = code  # type: ignore[attr-defined]
    return error


def test_the_switch_to_wal_is_retried_with_growing_pauses_until_the_lock_wait_ends() -> None:
    now = [0.0]
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds

    cursor = _BusyCursor(3, _sqlite_error(sqlite3.SQLITE_BUSY))
    engines.enter_wal_mode(cursor, wait_ms=1_000, clock=lambda: now[0], sleep=sleep)
    assert cursor.calls == 4
    assert pauses == [0.002, 0.004, 0.008]

    # Never more than 50 ms apart, and given up once the wait is over: the lock's error then.
    now[0], pauses[:] = 0.0, []
    cursor = _BusyCursor(1_000, _sqlite_error(sqlite3.SQLITE_BUSY))
    with pytest.raises(sqlite3.OperationalError) as caught:
        engines.enter_wal_mode(cursor, wait_ms=1_000, clock=lambda: now[0], sleep=sleep)
    assert caught.value is cursor.error
    assert max(pauses) == 0.05
    assert 1.0 <= now[0] < 1.05
    assert cursor.calls == len(pauses) + 1


def test_an_error_other_than_busy_is_not_retried() -> None:
    cursor = _BusyCursor(1, _sqlite_error(sqlite3.SQLITE_IOERR))
    with pytest.raises(sqlite3.OperationalError):
        engines.enter_wal_mode(cursor, clock=lambda: 0.0, sleep=lambda _s: None)
    assert cursor.calls == 1


@pytest.mark.postgres
def test_an_option_the_driver_refuses_is_named_by_the_schema_upgrade_too(
    postgres_url: str,
) -> None:
    url = make_url(postgres_url).update_query_dict({"bogusparam": "1", "password": "hunter2"})
    with pytest.raises(UnsupportedDatabaseUrl, match="refuses its connection options") as e:
        upgrade(url.render_as_string(hide_password=False))
    assert "hunter2" not in str(e.value)


def test_a_driver_reason_is_cut_just_past_its_length_and_names_a_silent_error() -> None:
    limit = engines.DRIVER_REASON_CHARS
    assert engines.driver_reason(OSError("x" * limit)) == "x" * limit
    assert engines.driver_reason(OSError("x" * (limit + 1))) == "x" * (limit - 3) + "..."
    assert engines.driver_reason(OSError()) == "OSError"
    assert engines.driver_reason(OSError("\n  \n")) == "OSError"


def test_a_sqlite_file_is_shown_alike_however_its_engine_opens_it(tmp_path: Path) -> None:
    # Messages name one store one way: the schema upgrade opens the file with the driver's name,
    # other commands read-write only (a ``file:`` URI).
    path = tmp_path / "a b%.db"
    plain = f"sqlite:///{path}"
    shown = set()
    for must_exist in (False, True):
        path.touch()
        engine, _ = engines.make_engine(plain, must_exist=must_exist)
        shown.add(engines.shown_url(engine.url))
        engine.dispose()
    shown.add(engines.shown_url(normalise_url(plain)))
    assert shown == {plain}


def test_a_url_that_is_not_utf8_text_is_refused_as_such() -> None:
    with pytest.raises(UnsupportedDatabaseUrl, match="must be valid UTF-8 text"):
        normalise_url("postgresql://\udcff@127.0.0.1/uid2")


@pytest.mark.parametrize("option", ["password", "sslpassword", "PassWord"])
def test_a_password_given_as_a_query_option_is_hidden_too(option: str) -> None:
    url = normalise_url(f"postgresql://u:hunter1@db/uid2?{option}=hunter2&sslmode=require")
    shown = engines.shown_url(url)
    assert "hunter1" not in shown
    assert "hunter2" not in shown
    assert f"{option}=***" in shown
    assert "sslmode=require" in shown
    with pytest.raises(UnsupportedDatabaseUrl) as refused:
        normalise_url(f"mysql://u@db/uid2?{option}=hunter2")
    assert "hunter2" not in str(refused.value)


@pytest.mark.postgres
def test_an_option_the_driver_refuses_names_the_url_not_the_driver_error(
    postgres_url: str,
) -> None:
    url = make_url(postgres_url).update_query_dict({"bogusparam": "1", "password": "hunter2"})
    store = open_store(url, check_schema=False)
    try:
        with pytest.raises(UnsupportedDatabaseUrl, match="refuses its connection options") as e:
            store.change_seq()
        assert "hunter2" not in str(e.value)
        assert "bogusparam=1" in str(e.value)
    finally:
        store.close()


@pytest.mark.postgres
def test_a_statement_the_database_refuses_is_not_blamed_on_the_url(postgres_url: str) -> None:
    # A schema path where no table is: the statement is refused, not the connection options.
    url = make_url(postgres_url).update_query_dict({"options": "-csearch_path=uid2_nowhere"})
    store = open_store(url, check_schema=False)
    try:
        with pytest.raises(ProgrammingError, match="does not exist"):
            store.change_seq()
    finally:
        store.close()


def test_sqlite_connections_use_wal_foreign_keys_and_a_busy_timeout(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'uid2.db'}"
    upgrade(url)
    store = open_store(url)
    try:
        with store.engine.connect() as conn:
            pragma = conn.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA foreign_keys").scalar() == 1
            assert pragma("PRAGMA busy_timeout").scalar() == engines.SQLITE_BUSY_TIMEOUT_MS
            assert pragma("PRAGMA synchronous").scalar() == 1  # NORMAL: durable in WAL mode
    finally:
        store.close()


def test_a_sqlite_writer_that_cannot_get_the_lock_reports_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engines, "SQLITE_BUSY_TIMEOUT_MS", 50)
    url = f"sqlite:///{tmp_path / 'uid2.db'}"
    upgrade(url)
    store = open_store(url)
    outcome: list[BaseException] = []

    def second_writer() -> None:
        try:
            with store.transaction() as tx:
                tx.participants.add(participant(2002))
        except BaseException as exc:
            outcome.append(exc)

    try:
        with store.transaction() as tx:  # holds the write lock while another writer tries
            tx.participants.add(participant(1001))
            thread = threading.Thread(target=second_writer)
            thread.start()
            thread.join()
        assert len(outcome) == 1
        assert isinstance(outcome[0], StoreUnavailable)
        assert "locked" in str(outcome[0])
        with store.read() as rx:
            assert [p.site_id for p in rx.participants.list_all()] == [1001]
    finally:
        store.close()


def test_an_unreachable_postgresql_is_reported_without_its_password() -> None:
    url = "postgresql://postgres:hunter2@127.0.0.1:1/uid2"
    with pytest.raises(StoreUnavailable) as caught:
        open_store(url)
    assert "***" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    with pytest.raises(StoreUnavailable):
        upgrade(url)


def test_a_writer_waits_for_the_write_lock_only_so_long_on_either_backend(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that holds the store-wide lock (stalled, say) costs the others a refusal they can
    retry, not a wait for as long as it holds it: PostgreSQL's lock_timeout, SQLite's busy
    timeout."""
    monkeypatch.setattr(engines, "WRITE_LOCK_WAIT_MS", 200)
    monkeypatch.setattr(engines, "SQLITE_BUSY_TIMEOUT_MS", 200)
    store.engine.dispose()  # SQLite reads its busy timeout when it connects
    outcome: list[BaseException] = []

    def second_writer() -> None:
        try:
            with store.transaction() as tx:
                tx.participants.add(participant(2002))
        except BaseException as exc:
            outcome.append(exc)

    with store.transaction() as tx:  # holds the write lock while another writer tries
        tx.participants.add(participant(1001))
        thread = threading.Thread(target=second_writer)
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], StoreUnavailable)
    with store.read() as rx:
        assert 2002 not in [p.site_id for p in rx.participants.list_all()]


def test_a_pool_without_a_free_connection_is_reported_as_unavailable() -> None:
    url = "postgresql://postgres:hunter2@127.0.0.1:1/uid2"
    engine, _ = engines.make_engine(url)
    try:
        with pytest.raises(StoreUnavailable) as caught, engines.unavailable_as_store_error(engine):
            raise PoolTimeout("QueuePool limit of size 5 overflow 10 reached")
    finally:
        engine.dispose()
    assert "QueuePool limit" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_an_unreachable_postgresql_is_reported_by_the_first_line_of_the_driver_error() -> None:
    """libpq's text for a refused connection goes on with a hint line: only the first line,
    the one that says what happened, reaches the message (and the logs that repeat it)."""
    with pytest.raises(StoreUnavailable) as caught:
        open_store("postgresql://postgres@127.0.0.1:1/uid2")
    detail = caught.value.detail
    assert detail.startswith("The store at postgresql+psycopg://postgres@127.0.0.1:1/uid2 is ")
    assert detail.endswith("Connection refused")
    assert "\n" not in detail


def _raising(message: str) -> str:
    """A statement the server refuses with ``message`` as an operational error (lock not
    available), with DETAIL, HINT and CONTEXT lines as psycopg reports them."""
    return (
        f"DO $$ BEGIN RAISE EXCEPTION '{message}' USING ERRCODE = '55P03', "
        "DETAIL = 'Key (first_level_hash)=(c2VjcmV0LXZhbHVl) is held', "
        "HINT = 'Retry once (c2VjcmV0LXZhbHVl) is released'; END $$"
    )


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("could not obtain lock on row", "could not obtain lock on row"),
        ("x" * 300, "x" * (engines.DRIVER_REASON_CHARS - 3) + "..."),
    ],
    ids=["short", "long"],
)
def test_a_driver_error_keeps_only_its_first_line_cut_to_length(
    postgres_url: str, message: str, reason: str
) -> None:
    engine, _ = engines.make_engine(postgres_url)
    try:
        with (
            pytest.raises(StoreUnavailable) as caught,
            engines.unavailable_as_store_error(engine),
            engine.connect() as conn,
        ):
            conn.exec_driver_sql(_raising(message))
    finally:
        engine.dispose()
    cause = caught.value.__cause__
    assert isinstance(cause, OperationalError)
    assert "\nDETAIL:" in str(cause.orig)  # the driver's text does go on
    shown = engines.shown_url(engine.url)
    assert caught.value.detail == f"The store at {shown} is unavailable: {reason}"
    assert "c2VjcmV0LXZhbHVl" not in str(caught.value)


CONNECTION_OPTIONS = [
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
]


def _connection_options(url: str) -> dict[str, str | None]:
    engine, _flavour = engines.make_engine(url)
    try:
        with engine.connect() as conn:
            given = conn.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
    finally:
        engine.dispose()
    return {name: given.get(name) for name in CONNECTION_OPTIONS}


@pytest.mark.postgres
def test_a_postgresql_connection_gives_up_on_a_database_the_network_no_longer_reaches(
    postgres_url: str,
) -> None:
    """TCP keep-alive and a user timeout on every connection: without them a read over a
    network that drops the database's packets waits for as long as the kernel's own timeouts
    (a quarter of an hour or more)."""
    assert _connection_options(postgres_url) == {
        "connect_timeout": "5",
        "keepalives": "1",
        "keepalives_idle": "10",
        "keepalives_interval": "5",
        "keepalives_count": "3",
        "tcp_user_timeout": "30000",
    }


@pytest.mark.postgres
def test_connection_options_the_url_sets_are_kept(postgres_url: str) -> None:
    url = make_url(postgres_url).update_query_dict(
        {"tcp_user_timeout": "1000", "keepalives_idle": "7", "connect_timeout": "2"}
    )
    options = _connection_options(url.render_as_string(hide_password=False))
    assert (options["tcp_user_timeout"], options["keepalives_idle"]) == ("1000", "7")
    assert options["connect_timeout"] == "2"
    assert options["keepalives_count"] == "3"
