"""Migrations on every backend: empty database to head, idempotence, and head == schema.py
(columns, types, server defaults, SQLite AUTOINCREMENT, seeded rows); a database upgraded by a
newer version is refused as such."""

from __future__ import annotations

import re

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from migration_steps import downgrade_to
from sqlalchemy import inspect, text
from store_records import api_key, participant

from uid2_operator.domain.keysets import Keyset, SealedKey, SharingMode
from uid2_operator.domain.material_sealing import SealedMaterial
from uid2_operator.errors import SchemaOutOfDate
from uid2_operator.storage import current_revision, head_revision, open_store, upgrade
from uid2_operator.storage.engines import make_engine
from uid2_operator.storage.migrate import _config
from uid2_operator.storage.schema import CHANGE_SEQ, KEY_ID_SEQ, metadata

SEEDED_META = {CHANGE_SEQ: 0, KEY_ID_SEQ: 0}
"""The ``store_meta`` rows the migrations insert (the code reads them without inserting)."""

AUTOINCREMENT_TABLES = sorted(
    name
    for name, table in metadata.tables.items()
    if table.dialect_options["sqlite"]["autoincrement"]
)
"""Tables whose ids must never be reused: SQLite needs AUTOINCREMENT for that."""

UNKNOWN_REVISION = "ffffffffffff"


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
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            assert compare_metadata(context, metadata) == []
            tables = set(inspect(conn).get_table_names())
        assert tables == set(metadata.tables) | {"alembic_version"}
    finally:
        engine.dispose()


def test_ids_that_are_never_reused_come_from_autoincrement(store_url: str) -> None:
    assert "client_secrets" in AUTOINCREMENT_TABLES
    engine, _ = make_engine(store_url)
    try:
        with engine.connect() as conn:
            for name in AUTOINCREMENT_TABLES:
                if engine.dialect.name == "sqlite":
                    ddl = conn.execute(
                        text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :n"),
                        {"n": name},
                    ).scalar_one()
                    assert re.search(r"\bPRIMARY KEY AUTOINCREMENT\b", ddl, re.IGNORECASE), name
                else:  # a sequence: PostgreSQL never hands out a value twice
                    (key,) = metadata.tables[name].primary_key.columns
                    column = next(
                        c for c in inspect(conn).get_columns(name) if c["name"] == key.name
                    )
                    assert column["autoincrement"] is True, name
    finally:
        engine.dispose()


def test_the_migrations_seed_the_store_meta_rows(empty_url: str) -> None:
    upgrade(empty_url)
    engine, _ = make_engine(empty_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT name, value FROM store_meta")).all()
    finally:
        engine.dispose()
    assert dict(rows) == SEEDED_META


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


def test_each_revision_downgrades_a_store_that_holds_credentials_and_keys(
    store_url: str,
) -> None:
    # Rows that other tables refer to: a downgrade that copied a table and dropped the
    # original (a batch operation on SQLite) would break those references and fail.
    store = open_store(store_url)
    try:
        with store.transaction() as tx:
            tx.participants.add(participant(1001))
            tx.api_keys.add(api_key("UID2-C-L-1001-abcDE1", 1001))
            tx.secrets.add("UID2-C-L-1001-abcDE1", kek_version=1, ciphertext=b"s", created_at_ms=1)
            tx.keysets.add(Keyset(4, 1001, "Site 1001", True, True, 1, SharingMode.BIDDERS))
            tx.encryption_keys.add(SealedKey(1, 4, 1, 1, 2, SealedMaterial(1, bytes(60))))
    finally:
        store.close()
    revisions = [script.revision for script in _scripts()]  # head first
    for below in [*revisions[1:], "base"]:
        downgrade_to(store_url, below)
    assert upgrade(store_url) == head_revision()


def _scripts() -> list[Script]:
    return list(ScriptDirectory.from_config(_config(None)).walk_revisions())


def test_a_store_refuses_a_database_that_is_not_at_head(empty_url: str) -> None:
    with pytest.raises(SchemaOutOfDate, match="revision none"):
        open_store(empty_url)
    unchecked = open_store(empty_url, check_schema=False)  # e.g. for tooling that inspects
    try:
        assert unchecked.backend in ("sqlite", "postgresql")
    finally:
        unchecked.close()


def _stamp(url: str, *revisions: str) -> None:
    engine, _ = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM alembic_version"))
            for revision in revisions:
                conn.execute(text("INSERT INTO alembic_version VALUES (:r)"), {"r": revision})
    finally:
        engine.dispose()


def _stamped(url: str) -> list[str]:
    engine, _ = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars()
            return sorted(rows)
    finally:
        engine.dispose()


NEWER = r"upgraded by a newer version of uid2-operator, and this version cannot use it"


@pytest.mark.parametrize(
    "stamped",
    [(UNKNOWN_REVISION,), ("0003", "0004")],
    ids=["unknown revision", "several heads"],
)
def test_a_database_upgraded_by_a_newer_version_is_refused_as_such(
    store_url: str, stamped: tuple[str, ...]
) -> None:
    _stamp(store_url, *stamped)
    for attempt in (upgrade, open_store, current_revision):
        with pytest.raises(SchemaOutOfDate, match=NEWER) as caught:
            attempt(store_url)
        assert "run the database upgrade" not in caught.value.detail
    assert _stamped(store_url) == sorted(stamped)  # the upgrade left it as it was
