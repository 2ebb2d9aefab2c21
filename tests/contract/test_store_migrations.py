"""Migrations on every backend: empty database to head, idempotence, and head == schema.py."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from store_records import participant

from uid2_operator.errors import SchemaOutOfDate
from uid2_operator.storage import current_revision, head_revision, open_store, upgrade
from uid2_operator.storage.engines import make_engine
from uid2_operator.storage.migrate import _config
from uid2_operator.storage.schema import metadata


def test_upgrade_brings_an_empty_database_to_head_and_is_idempotent(empty_url: str) -> None:
    assert current_revision(empty_url) is None
    assert upgrade(empty_url) == head_revision()
    assert current_revision(empty_url) == head_revision()

    store = open_store(empty_url)
    try:
        assert store.change_seq() == 0
        with store.transaction() as tx:
            tx.participants.add(participant(1001))
        assert upgrade(empty_url) == head_revision()  # a second upgrade changes nothing
        assert store.change_seq() == 1
        with store.read() as rx:
            assert [p.site_id for p in rx.participants.list_all()] == [1001]
    finally:
        store.close()


def test_the_head_schema_is_exactly_the_metadata(store_url: str) -> None:
    engine, _ = make_engine(store_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
            tables = set(inspect(conn).get_table_names())
        assert tables == set(metadata.tables) | {"alembic_version"}
    finally:
        engine.dispose()


def test_the_first_revision_downgrades_to_an_empty_database(store_url: str) -> None:
    engine, flavour = make_engine(store_url)
    try:
        with engine.connect() as conn:
            flavour.begin_migration(conn)
            command.downgrade(_config(conn), "base")
            conn.commit()
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    assert current_revision(store_url) is None
    assert upgrade(store_url) == head_revision()


def test_a_store_refuses_a_database_that_is_not_at_head(empty_url: str) -> None:
    with pytest.raises(SchemaOutOfDate, match="revision none"):
        open_store(empty_url)
    unchecked = open_store(empty_url, check_schema=False)  # e.g. for tooling that inspects
    try:
        assert unchecked.backend in ("sqlite", "postgresql")
    finally:
        unchecked.close()
