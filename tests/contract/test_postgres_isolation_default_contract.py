"""PostgreSQL whose default isolation is stricter than READ COMMITTED (``ALTER DATABASE ... SET
default_transaction_isolation``, or ``-cdefault_transaction_isolation`` in the URL's options):
writers, and the schema upgrade, still queue on the store-wide lock and then succeed, instead of
failing with "could not serialize access due to concurrent update" once the lock is theirs."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial

import psycopg
import pytest
from sqlalchemy.engine import make_url
from store_records import participant

from uid2_operator.storage import head_revision, open_store, upgrade
from uid2_operator.storage.engines import make_engine

pytestmark = pytest.mark.postgres


def _libpq_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class StrictDatabase:
    """A fresh schema reached through a URL whose sessions default to ``level``, each connection
    named by one ``application_name`` so that its lock waits can be watched."""

    def __init__(self, base_url: str, level: str) -> None:
        self.base_url = base_url
        self.level = level
        self.schema = f"isolation_{uuid.uuid4().hex[:16]}"
        self.application = self.schema
        escaped = level.replace(" ", "\\ ")  # libpq options: a space escaped by a backslash
        options = f"-csearch_path={self.schema} -cdefault_transaction_isolation={escaped}"
        url = make_url(base_url).update_query_dict(
            {"options": options, "application_name": self.application}
        )
        self.url = url.render_as_string(hide_password=False)

    def waiting_for_a_lock(self) -> int:
        with psycopg.connect(_libpq_dsn(self.base_url), autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = %s AND wait_event_type = 'Lock'",
                (self.application,),
            ).fetchone()
        return 0 if row is None else int(row[0])

    def wait_until_waiting(self, count: int) -> None:
        deadline = time.monotonic() + 10
        while self.waiting_for_a_lock() < count:
            assert time.monotonic() < deadline, f"{count} session(s) never waited for the lock"
            time.sleep(0.02)


@pytest.fixture(params=["repeatable read", "serializable"])
def strict(request: pytest.FixtureRequest, postgres_url: str) -> Iterator[StrictDatabase]:
    database = StrictDatabase(postgres_url, request.param)
    with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{database.schema}"')
    try:
        engine, _ = make_engine(database.url)
        try:
            with engine.connect() as conn:
                shown = conn.exec_driver_sql("SHOW default_transaction_isolation").scalar()
        finally:
            engine.dispose()
        assert shown == request.param
        yield database
    finally:
        with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{database.schema}" CASCADE')


def _in_thread(work: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    failures: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, failures


def test_a_writer_that_waited_for_the_lock_commits_under_a_stricter_default(
    strict: StrictDatabase,
) -> None:
    upgrade(strict.url)
    store = open_store(strict.url)
    try:

        def second_writer() -> None:
            with store.transaction() as tx:
                tx.participants.add(participant(2002))

        with store.transaction() as tx:  # holds the write lock while another writer queues
            tx.participants.add(participant(1001))
            thread, failures = _in_thread(second_writer)
            strict.wait_until_waiting(1)
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert failures == []
        with store.read() as rx:
            assert sorted(p.site_id for p in rx.participants.list_all()) == [1001, 2002]
            assert rx.change_seq() == 2
    finally:
        store.close()


def test_concurrent_writers_all_commit_under_a_stricter_default(strict: StrictDatabase) -> None:
    upgrade(strict.url)
    store = open_store(strict.url)
    try:
        start = threading.Barrier(4)

        def writer(site_id: int) -> None:
            start.wait()
            with store.transaction() as tx:
                tx.participants.add(participant(site_id))

        runs = [_in_thread(partial(writer, site_id)) for site_id in range(3001, 3005)]
        for thread, _ in runs:
            thread.join(timeout=30)
            assert not thread.is_alive()
        assert [f for _, failures in runs for f in failures] == []
        with store.read() as rx:
            assert sorted(p.site_id for p in rx.participants.list_all()) == [3001, 3002, 3003, 3004]
    finally:
        store.close()


def test_an_upgrade_that_waited_for_a_writer_completes_under_a_stricter_default(
    strict: StrictDatabase,
) -> None:
    upgrade(strict.url)
    store = open_store(strict.url)
    try:
        with store.transaction() as tx:  # a writer holds the write lock the upgrade needs
            tx.participants.add(participant(1001))
            thread, failures = _in_thread(lambda: upgrade(strict.url))
            strict.wait_until_waiting(1)
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert failures == []
        with store.read() as rx:
            assert [p.site_id for p in rx.participants.list_all()] == [1001]
    finally:
        store.close()


def test_concurrent_upgrades_of_an_empty_database_all_complete_under_a_stricter_default(
    strict: StrictDatabase,
) -> None:
    start = threading.Barrier(3)

    def upgrader() -> None:
        start.wait()
        assert upgrade(strict.url) == head_revision()

    runs = [_in_thread(upgrader) for _ in range(3)]
    for thread, _ in runs:
        thread.join(timeout=60)
        assert not thread.is_alive()
    assert [f for _, failures in runs for f in failures] == []
    store = open_store(strict.url)  # refuses a database not at head
    store.close()
