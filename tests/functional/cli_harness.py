"""Driving the CLI and the services against SQLite files and PostgreSQL schemas.

PostgreSQL comes from ``UID2_TEST_POSTGRES_URL`` (default a local trust-auth server); each test
gets a fresh schema, dropped afterwards. Unreachable: its cases skip, except under ``CI=true``.
Test modules build their fixtures from ``database_for`` and ``Cli``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import make_url

from ci_mode import unavailable
from uid2_operator.cli import main
from uid2_operator.settings import Settings
from uid2_operator.storage import open_store
from uid2_operator.storage.engines import make_engine

POSTGRES_URL = os.environ.get("UID2_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
ENTRY_POINT = Path(sys.executable).with_name("uid2-operator")
"""The installed program, as a newcomer runs it."""
# Settings the surrounding shell may carry; every run starts without them.
_AMBIENT = ("UID2_ENVIRONMENT", "UID2_KEYRING", "UID2_KEYRING_FILE", "UID2_DATABASE_URL")


def libpq_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def postgres_url() -> str:
    try:
        with psycopg.connect(libpq_dsn(POSTGRES_URL), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL is unreachable: {exc}"
        unavailable(message)
    return POSTGRES_URL


@dataclass(frozen=True)
class Database:
    """Where a test's store lives: a SQLite file under ``data_dir``, or a PostgreSQL schema."""

    backend: str
    data_dir: Path
    url: str | None  # --database-url; None for the embedded SQLite file
    schema: str | None = None

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "uid2.db"

    def cli_args(self) -> list[str]:
        args = ["--data-dir", str(self.data_dir)]
        if self.url is not None:
            args += ["--database-url", self.url]
        return args


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@contextmanager
def database_for(backend: str, tmp_path: Path) -> Iterator[Database]:
    """A fresh database on ``backend``: a SQLite file to be, or a new PostgreSQL schema."""
    data_dir = tmp_path / "data"
    if backend == "sqlite":
        yield Database("sqlite", data_dir, None)
        return
    base = postgres_url()
    schema = f"functional_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(libpq_dsn(base), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield Database("postgresql", data_dir, url.render_as_string(hide_password=False), schema)
    finally:
        with psycopg.connect(libpq_dsn(base), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class Cli:
    """Runs ``uid2-operator`` in-process against one database, recording every result."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.runner = CliRunner()
        self.results: list[tuple[list[str], Result]] = []

    def __call__(self, *args: str, env: dict[str, str | None] | None = None) -> Result:
        full = [*self.database.cli_args(), *args]
        environment: dict[str, str | None] = dict.fromkeys(_AMBIENT)
        environment.update(env or {})
        result = self.runner.invoke(main, full, env=environment, catch_exceptions=False)
        self.results.append((full, result))
        return result


def run_installed(
    data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed program in a process of its own on ``data_dir`` (UID2_DATA_DIR), with no
    other UID2_ setting of the surrounding shell, ``env`` added."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("UID2_")}
    environment["UID2_DATA_DIR"] = str(data_dir)
    environment.update(env or {})
    return subprocess.run(  # noqa: S603 (our own entry point, fixed arguments)
        [str(ENTRY_POINT), *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=False,
    )


def edit_outside(db: Database, statement: str, parameters: tuple[Any, ...]) -> None:
    """Run ``statement`` on the SQLite file below the column types, as an edit made outside
    uid2-operator writes it."""
    engine, _ = make_engine(f"sqlite:///{db.sqlite_path}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(statement, parameters)
    finally:
        engine.dispose()


def settings_of(db: Database) -> Settings:
    return Settings.from_env({}, data_dir=str(db.data_dir), database_url=db.url)


def state_of(db: Database) -> tuple[int, Any, int]:
    """change_seq, the snapshot, and the number of audit events: what a failure must not move."""
    store = open_store(settings_of(db).store_url)
    try:
        with store.read() as tx:
            events = len(tx.audit.list_events())
        return store.change_seq(), store.snapshot(0), events
    finally:
        store.close()
