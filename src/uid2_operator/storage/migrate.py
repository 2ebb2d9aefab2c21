"""Applying the shipped Alembic migrations programmatically.

Nothing migrates on import or on ``open_store``: a deployment upgrades its schema on purpose
(``init`` / ``db upgrade``), and a store opened against an older schema refuses to start
(SchemaOutOfDate) rather than half-work. A database at a revision this code does not ship was
upgraded by a newer version: reading its revision refuses it (SchemaOutOfDate, saying so), since
neither upgrading nor opening it can work.

Alembic (with the template and highlighting libraries it brings, about 11 MB of resident
memory) is imported by the functions that use it, not by this module: a serve worker, which
opens its store without the schema check, never loads it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import InternalError, OperationalError, ProgrammingError

from uid2_operator.errors import SchemaOutOfDate, StoreError
from uid2_operator.storage.engines import driver_reason, make_engine, unavailable_as_store_error

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config  # noqa: PLC0415 (see the module's docstring)

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision this code ships."""
    from alembic.script import ScriptDirectory  # noqa: PLC0415 (see the module's docstring)

    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:  # pragma: no cover - only a broken package ships no revision
        raise StoreError("No schema revision is shipped")
    return head


def known_revisions() -> frozenset[str]:
    """Every revision this code ships."""
    from alembic.script import ScriptDirectory  # noqa: PLC0415 (see the module's docstring)

    return frozenset(
        script.revision for script in ScriptDirectory.from_config(_config()).walk_revisions()
    )


def _revision_in(conn: Connection) -> str | None:
    """The revision recorded in the database on ``conn``; refuses one this code does not ship.

    A single linear history is shipped, so a database recording several revisions, or one not
    shipped, can only come from a newer version of uid2-operator.
    """
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415 (module docstring)

    found = MigrationContext.configure(conn).get_current_heads()
    unknown = sorted(set(found) - known_revisions())
    if unknown or len(found) > 1:
        where = (
            f"is at schema revision {unknown[0]}, which this version of uid2-operator does not know"
            if len(found) == 1
            else f"records schema revisions {', '.join(sorted(found))} at once, which this "
            "version of uid2-operator never does"
        )
        raise SchemaOutOfDate(
            f"The database {where} (its newest is {head_revision()}): the database was upgraded "
            "by a newer version of uid2-operator, and this version cannot use it; run that "
            "version (or a later one)"
        )
    return found[0] if found else None


def upgrade(url: str | URL, *, earlier: bool = True) -> str:
    """Brings the database at ``url`` to the head revision and returns it; a no-op when there.
    With ``earlier`` off, only a database with no schema yet is brought there: one an earlier
    version set up is refused (SchemaOutOfDate) and left untouched, as ``init`` needs.

    The whole upgrade runs in one transaction (both backends have transactional DDL), holding a
    lock that makes a concurrent upgrade wait and then find nothing to do (at most as long as a
    writer waits for the write lock; past that it fails with StoreUnavailable). A database already
    upgraded by a newer version is refused (SchemaOutOfDate) and left untouched.

    In the same transaction, an audit chain written by an earlier version (which recorded no chain
    head) gets its last row recorded as the head when every link up to it verifies, so that
    ``audit verify`` finds it intact; a broken chain gets none and stays reported.
    """
    from alembic import command  # noqa: PLC0415 (see the module's docstring)

    # sql.py imports this module (for the revision checks): imported here, not at the top.
    from uid2_operator.storage.sql import record_audit_head_on_upgrade  # noqa: PLC0415

    engine, flavour = make_engine(url)
    try:
        with unavailable_as_store_error(engine):
            try:
                with engine.connect() as conn:
                    flavour.begin_migration(conn)
                    found = _revision_in(conn)
                    if not earlier and found not in (None, head_revision()):
                        raise SchemaOutOfDate(
                            f"The database is at schema revision {found}, set up by an earlier "
                            "version of uid2-operator, and init does not upgrade it: stop every "
                            "process of the earlier version on this database, then run "
                            "`uid2-operator db upgrade`"
                        )
                    command.upgrade(_config(conn), "head")
                    record_audit_head_on_upgrade(conn, flavour)
                    conn.commit()
            except (ProgrammingError, InternalError, OperationalError) as exc:
                if exc.statement is None or (
                    isinstance(exc, OperationalError) and not _refused_by_sqlite(exc.orig)
                ):
                    # Refused before any statement (the URL's), or a database that cannot be
                    # reached or locked: ``unavailable_as_store_error`` says so.
                    raise
                # A statement the database refused: a role without the privilege to create
                # tables, a read-only server or transaction. Its first line says which
                # (driver_reason), rather than an internal error naming only the class.
                reason = type(exc).__name__ if exc.orig is None else driver_reason(exc.orig)
                raise StoreError(f"The database refused the schema upgrade: {reason}") from exc
    finally:
        engine.dispose()
    return head_revision()


def _refused_by_sqlite(error: BaseException | None) -> bool:
    """Whether SQLite refused a statement itself (``SQLITE_ERROR``: a table that already exists,
    say), rather than failing to run it (busy, locked, read-only, input/output, full)."""
    return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_ERROR


def current_revision(url: str | URL) -> str | None:
    """The revision the database at ``url`` is at, or None for a database never migrated;
    SchemaOutOfDate for a revision this code does not ship (see ``revision_of``)."""
    engine, _ = make_engine(url)
    try:
        return revision_of(engine)
    finally:
        engine.dispose()


def revision_of(engine: Engine) -> str | None:
    """The revision of the database behind ``engine`` (None: never migrated); SchemaOutOfDate
    when it is one this code does not ship (the database was upgraded by a newer version)."""
    with unavailable_as_store_error(engine), engine.connect() as conn:
        return _revision_in(conn)
