"""The PostgreSQL schema upgrade (``init``, ``db upgrade``) waits for a lock only as long as every
other writer does: held by a stalled writer or by another upgrade, it fails as unavailable
(StoreUnavailable, "lock timeout") instead of waiting for as long as the lock is held."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url
from store_records import participant

from uid2_operator.errors import StoreUnavailable
from uid2_operator.storage import engines, head_revision, open_store, upgrade

pytestmark = pytest.mark.postgres

WAIT_MS = 200
"""The lock wait these tests allow, instead of the 10 s a deployment gets."""


def _libpq_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def upgraded_url(postgres_url: str) -> Iterator[str]:
    schema = f"upgrade_wait_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
    rendered = url.render_as_string(hide_password=False)
    try:
        upgrade(rendered)
        yield rendered
    finally:
        with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class Upgrade:
    """``upgrade(url)`` in a thread: one that never gives up fails the test, not hangs it."""

    def __init__(self, url: str) -> None:
        self.failures: list[BaseException] = []
        self.elapsed = 0.0
        self._thread = threading.Thread(target=self._run, args=(url,))

    def _run(self, url: str) -> None:
        started = time.monotonic()
        try:
            upgrade(url)
        except BaseException as exc:
            self.failures.append(exc)
        self.elapsed = time.monotonic() - started

    def start(self) -> Upgrade:
        self._thread.start()
        return self

    def gave_up_within(self, seconds: float) -> bool:
        self._thread.join(timeout=seconds)
        return not self._thread.is_alive()

    def finish(self) -> None:
        self._thread.join(timeout=30)


def _assert_refused_as_unavailable(attempt: Upgrade) -> None:
    assert len(attempt.failures) == 1
    refusal = attempt.failures[0]
    assert isinstance(refusal, StoreUnavailable)
    assert "unavailable: canceling statement due to lock timeout" in str(refusal)
    assert attempt.elapsed >= WAIT_MS / 1000


def test_an_upgrade_gives_up_on_the_write_lock_a_writer_holds(
    upgraded_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engines, "WRITE_LOCK_WAIT_MS", WAIT_MS)
    store = open_store(upgraded_url)
    try:
        with store.transaction() as tx:  # a writer that stalls holding the store-wide lock
            tx.participants.add(participant(1001))
            attempt = Upgrade(upgraded_url).start()
            gave_up = attempt.gave_up_within(5)
        attempt.finish()
        assert gave_up, "the upgrade waited for as long as the writer held the lock"
        _assert_refused_as_unavailable(attempt)
        with store.read() as rx:  # the writer was not disturbed
            assert [p.site_id for p in rx.participants.list_all()] == [1001]
    finally:
        store.close()
    monkeypatch.undo()
    assert upgrade(upgraded_url) == head_revision()  # and the lock, once free, is taken


def test_an_upgrade_gives_up_on_the_lock_another_upgrade_holds(
    upgraded_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engines, "WRITE_LOCK_WAIT_MS", WAIT_MS)
    with psycopg.connect(_libpq_dsn(upgraded_url)) as other:  # an upgrade that stalls
        other.execute("SELECT pg_advisory_xact_lock(%s)", (engines._MIGRATION_LOCK_ID,))
        attempt = Upgrade(upgraded_url).start()
        gave_up = attempt.gave_up_within(5)
        other.rollback()
    attempt.finish()
    assert gave_up, "the upgrade waited for as long as another upgrade held its lock"
    _assert_refused_as_unavailable(attempt)
