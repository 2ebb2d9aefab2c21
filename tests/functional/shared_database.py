"""Several data directories on one database: a second directory beside the first, and the
environment the database itself records (its ``store_meta`` row)."""

from __future__ import annotations

import shutil

from cli_harness import Database, settings_of
from sqlalchemy import delete, inspect, select

from uid2_operator.domain.environments import Environment
from uid2_operator.storage import open_store
from uid2_operator.storage import schema as t
from uid2_operator.storage.engines import sqlite_path

CODES = {1: Environment.LOCAL, 2: Environment.INTEG, 3: Environment.PROD}
"""The ``store_meta`` row's codes (``storage.schema.ENVIRONMENT_CODES``), spelt out: stable."""


def second_data_directory(database: Database, name: str = "second") -> Database:
    """Another data directory on the same database, its keyring copied from the first (what
    docs/credentials.md says to do), and nothing else."""
    shared_url = database.url or f"sqlite:///{database.sqlite_path}"
    other = Database(database.backend, database.data_dir.with_name(name), shared_url)
    other.data_dir.mkdir(mode=0o700)
    keyring = other.data_dir / "keyring.json"
    shutil.copyfile(database.data_dir / "keyring.json", keyring)
    keyring.chmod(0o600)
    return other


def database_environment(database: Database) -> Environment | None:
    """The environment the database records, read from its ``store_meta`` row (None for a
    database not created yet)."""
    url = settings_of(database).store_url
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None
    store = open_store(url, check_schema=False)
    try:
        with store.engine.connect() as conn:
            if not inspect(conn).has_table("store_meta"):
                return None
            code = conn.execute(
                select(t.store_meta.c.value).where(t.store_meta.c.name == "environment")
            ).scalar_one_or_none()
    finally:
        store.close()
    return None if code is None else CODES[int(code)]


def forget_environment(database: Database) -> None:
    """What a database initialised by an earlier version looks like: no environment row."""
    store = open_store(settings_of(database).store_url)
    try:
        with store.engine.begin() as conn:
            conn.execute(delete(t.store_meta).where(t.store_meta.c.name == "environment"))
    finally:
        store.close()
    assert database_environment(database) is None
