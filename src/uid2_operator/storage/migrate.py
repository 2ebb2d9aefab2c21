"""Applying the shipped Alembic migrations programmatically.

Nothing migrates on import or on ``open_store``: a deployment upgrades its schema on purpose
(``init`` / ``db upgrade``), and a store opened against an older schema refuses to start
(SchemaOutOfDate) rather than half-work.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL

from uid2_operator.errors import StoreError
from uid2_operator.storage.engines import make_engine, unavailable_as_store_error

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision this code ships."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:  # pragma: no cover - only a broken package ships no revision
        raise StoreError("No schema revision is shipped")
    return head


def upgrade(url: str | URL) -> str:
    """Brings the database at ``url`` to the head revision and returns it; a no-op when there.

    The whole upgrade runs in one transaction (both backends have transactional DDL), holding a
    lock that makes a concurrent upgrade wait and then find nothing to do.
    """
    engine, flavour = make_engine(url)
    try:
        with unavailable_as_store_error(engine), engine.connect() as conn:
            flavour.begin_migration(conn)
            command.upgrade(_config(conn), "head")
            conn.commit()
    finally:
        engine.dispose()
    return head_revision()


def current_revision(url: str | URL) -> str | None:
    """The revision the database at ``url`` is at, or None for a database never migrated."""
    engine, _ = make_engine(url)
    try:
        return revision_of(engine)
    finally:
        engine.dispose()


def revision_of(engine: Engine) -> str | None:
    with unavailable_as_store_error(engine), engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
