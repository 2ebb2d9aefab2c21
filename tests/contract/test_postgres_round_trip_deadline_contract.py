"""A PostgreSQL server that stops answering fails a use of the store after the round trip deadline
(StoreUnavailable), whatever the use was waiting for, instead of waiting for as long as the server
stays silent; and the engine works again, on new connections, once the server answers.

The server that stops answering is a TCP proxy in front of the real one: it forwards both ways
until told to stall, then keeps every socket open, the kernel acknowledging what arrives, but
forwards nothing, which is what a hung server or connection pooler looks like from the client.
TCP keep-alives and ``tcp_user_timeout`` never fire on such a connection.

Each test runs on a database of its own, created and dropped here.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from uid2_operator.errors import StoreUnavailable
from uid2_operator.storage import SqlStore, engines, open_store, upgrade
from uid2_operator.storage.engines import unavailable_as_store_error

pytestmark = pytest.mark.postgres

DEADLINE_S = 1.0
CONNECT_TIMEOUT_S = 2  # libpq's least
# A failure must come this soon: the deadline, a new connection's connect_timeout, and slack for
# a loaded machine; far below the pytest timeout that fails a test which waits without end.
PROMPT_S = DEADLINE_S + CONNECT_TIMEOUT_S + 5.0
HANG_S = 25
NO_ANSWER = r"is unavailable: no answer from the database within 1 s"


def _libpq_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class StallingProxy:
    """Forwards TCP connections to ``target`` until ``stall()``; from then on until ``resume()``
    accepts connections and keeps them open, but forwards nothing either way.
    ``stall_established()`` stalls only the connections open at the time."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stalled = False
        self._closed = False
        self._flows: list[threading.Event] = []  # one a connection, set while it forwards
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def stall(self) -> None:
        with self._lock:
            self._stalled = True
        self.stall_established()

    def stall_established(self) -> None:
        with self._lock:
            for flow in self._flows:
                flow.clear()

    def resume(self) -> None:
        with self._lock:
            self._stalled = False
            for flow in self._flows:
                flow.set()

    def close(self) -> None:
        self._closed = True
        self.resume()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in [self._listener, *sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self._target)
            except OSError:
                return
            flow = threading.Event()
            with self._lock:
                self._sockets += [client, upstream]
                self._flows.append(flow)
                if not self._stalled:
                    flow.set()
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, flow), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, flow: threading.Event) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                flow.wait()  # stalled: hold it, and read no more
                if self._closed:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


@pytest.fixture
def database_url(postgres_url: str) -> Iterator[str]:
    """A database of this test's own, at the head revision, reached directly."""
    name = f"uid2_deadline_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
            # Only this test's database, and so only its sessions.
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def proxy(database_url: str) -> Iterator[StallingProxy]:
    parsed = make_url(database_url)
    stalling = StallingProxy((parsed.host or "127.0.0.1", parsed.port or 5432))
    try:
        yield stalling
    finally:
        stalling.close()


@pytest.fixture
def store(
    database_url: str, proxy: StallingProxy, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SqlStore]:
    """The store of ``database_url`` reached through ``proxy``, with a short deadline."""
    monkeypatch.setattr(engines, "POSTGRES_ROUND_TRIP_DEADLINE_S", DEADLINE_S)
    url = (
        make_url(database_url)
        .set(host="127.0.0.1", port=proxy.port)
        .update_query_dict({"connect_timeout": str(CONNECT_TIMEOUT_S)})
    )
    opened = open_store(url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.mark.timeout(HANG_S)
def test_a_statement_that_gets_no_answer_fails_after_the_deadline(
    store: SqlStore, proxy: StallingProxy
) -> None:
    seq = store.change_seq()
    started = 0.0
    with pytest.raises(StoreUnavailable, match=NO_ANSWER), store.read() as tx:  # noqa: PT012
        assert tx.change_seq() == seq
        proxy.stall()
        started = time.monotonic()
        tx.change_seq()
    waited = time.monotonic() - started
    assert DEADLINE_S * 0.9 <= waited < PROMPT_S


@pytest.mark.timeout(HANG_S)
def test_a_commit_that_gets_no_answer_fails_after_the_deadline(
    store: SqlStore, proxy: StallingProxy
) -> None:
    engine = store.engine
    started = 0.0
    with (  # noqa: PT012
        pytest.raises(StoreUnavailable, match=NO_ANSWER),
        unavailable_as_store_error(engine),
        engine.connect() as conn,
    ):
        conn.execute(text("SELECT 1"))
        proxy.stall()
        started = time.monotonic()
        conn.commit()
    assert time.monotonic() - started < PROMPT_S


@pytest.mark.timeout(HANG_S)
def test_a_streamed_result_that_stops_coming_fails_after_the_deadline(
    store: SqlStore, proxy: StallingProxy
) -> None:
    engine = store.engine
    started = 0.0
    with (  # noqa: PT012
        pytest.raises(StoreUnavailable, match=NO_ANSWER),
        unavailable_as_store_error(engine),
        engine.connect() as conn,
    ):
        rows = conn.execution_options(stream_results=True, yield_per=10).execute(
            text("SELECT generate_series(1, 100000)")
        )
        assert next(iter(rows)) == (1,)
        proxy.stall()
        started = time.monotonic()
        for _ in rows:
            pass
    assert time.monotonic() - started < PROMPT_S


@pytest.mark.timeout(HANG_S)
def test_checking_out_a_pooled_connection_that_gets_no_answer_fails_promptly(
    store: SqlStore, proxy: StallingProxy
) -> None:
    store.change_seq()  # leaves an established connection in the pool
    proxy.stall()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.change_seq()
    assert time.monotonic() - started < PROMPT_S


@pytest.mark.timeout(HANG_S)
def test_a_pooled_connection_that_gets_no_answer_is_replaced_on_checkout(
    store: SqlStore, proxy: StallingProxy
) -> None:
    seq = store.change_seq()  # leaves an established connection in the pool
    proxy.stall_established()  # that one: a new connection is answered
    started = time.monotonic()
    assert store.change_seq() == seq  # no error: the silent connection was replaced
    assert DEADLINE_S * 0.9 <= time.monotonic() - started < PROMPT_S


@pytest.mark.timeout(HANG_S)
def test_the_store_works_again_once_the_server_answers(
    store: SqlStore, proxy: StallingProxy
) -> None:
    seq = store.change_seq()
    with pytest.raises(StoreUnavailable), store.read() as tx:  # noqa: PT012
        proxy.stall()
        tx.change_seq()
    with pytest.raises(StoreUnavailable):
        store.change_seq()  # a new connection during the stall: connect_timeout
    proxy.resume()
    assert store.change_seq() == seq
    with store.transaction() as tx:
        tx.usage.record([])
    assert store.change_seq() == seq


@pytest.mark.timeout(HANG_S)
def test_a_pooled_connection_the_server_closed_is_replaced_on_checkout(
    store: SqlStore, database_url: str
) -> None:
    seq = store.change_seq()
    with store.engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    name = make_url(database_url).database
    with psycopg.connect(_libpq_dsn(database_url), autocommit=True) as admin:
        terminated = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE pid = %s AND datname = %s",
            (pid, name),
        ).fetchall()
        assert terminated == [(True,)]
        for _ in range(100):  # until the backend is gone
            still_there = admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
            if not still_there.fetchall():
                break
            time.sleep(0.05)
    assert store.change_seq() == seq  # no error: the dead connection was replaced
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
