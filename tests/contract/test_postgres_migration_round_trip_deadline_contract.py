"""The schema upgrade's statements keep to ``MIGRATION_ROUND_TRIP_DEADLINE_S``, not to the engine's
``POSTGRES_ROUND_TRIP_DEADLINE_S``: a revision that rewrites a whole table may take longer than any
use case's statement, and must not be cut off as a server that gave no answer.

The database here is one of this test's own, created and dropped here; both deadlines are
shortened (the engine's to 1 s, the upgrade's to 10 s) and a statement that takes 2 s stands in
for a long revision.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from uid2_operator.errors import StoreUnavailable
from uid2_operator.storage import engines
from uid2_operator.storage.engines import make_engine, unavailable_as_store_error

pytestmark = pytest.mark.postgres

ENGINE_DEADLINE_S = 1.0
MIGRATION_DEADLINE_S = 10.0
SLOW_S = 2.0  # how long SLOW_STATEMENT takes
SLOW_STATEMENT = "SELECT 'slept' FROM pg_sleep(2)"
HANG_S = 25


def _libpq_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def database_url(postgres_url: str) -> Iterator[str]:
    """An empty database of this test's own."""
    name = f"uid2_migration_deadline_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
            # Only this test's database, and so only its sessions.
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def engine_and_flavour(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Engine, engines.Flavour]]:
    monkeypatch.setattr(engines, "POSTGRES_ROUND_TRIP_DEADLINE_S", ENGINE_DEADLINE_S)
    monkeypatch.setattr(engines, "MIGRATION_ROUND_TRIP_DEADLINE_S", MIGRATION_DEADLINE_S)
    engine, flavour = make_engine(database_url)
    try:
        yield engine, flavour
    finally:
        engine.dispose()


@pytest.mark.timeout(HANG_S)
def test_an_upgrade_statement_longer_than_the_engine_deadline_completes(
    engine_and_flavour: tuple[Engine, engines.Flavour],
) -> None:
    engine, flavour = engine_and_flavour
    with unavailable_as_store_error(engine), engine.connect() as conn:
        flavour.begin_migration(conn)
        started = time.monotonic()
        assert conn.execute(text(SLOW_STATEMENT)).scalar_one() == "slept"
        assert time.monotonic() - started >= SLOW_S * 0.9  # longer than the engine's deadline
        conn.commit()


@pytest.mark.timeout(HANG_S)
def test_the_same_statement_outside_an_upgrade_gets_no_answer_within_the_engine_deadline(
    engine_and_flavour: tuple[Engine, engines.Flavour],
) -> None:
    engine, _ = engine_and_flavour
    with (
        pytest.raises(StoreUnavailable, match=r"no answer from the database within 1 s"),
        unavailable_as_store_error(engine),
        engine.connect() as conn,
    ):
        conn.execute(text(SLOW_STATEMENT))


@pytest.mark.timeout(HANG_S)
def test_the_upgrade_deadline_stays_with_its_connection(
    engine_and_flavour: tuple[Engine, engines.Flavour],
) -> None:
    """Once the upgrade's connection is back in the pool, the next use keeps to the engine's
    deadline again."""
    engine, flavour = engine_and_flavour
    with unavailable_as_store_error(engine), engine.connect() as conn:
        flavour.begin_migration(conn)
        conn.execute(text(SLOW_STATEMENT))
        conn.commit()
    with (
        pytest.raises(StoreUnavailable, match=r"no answer from the database within 1 s"),
        unavailable_as_store_error(engine),
        engine.connect() as conn,
    ):
        conn.execute(text(SLOW_STATEMENT))
