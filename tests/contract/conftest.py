"""Backends for the one store contract suite: every test runs on SQLite and on PostgreSQL.

SQLite: a fresh file per test. PostgreSQL (``UID2_TEST_POSTGRES_URL``, default a local trust-auth
server): a fresh schema per test, selected through ``search_path`` in the URL and dropped
afterwards. An unreachable PostgreSQL skips its cases, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from ci_mode import unavailable
from uid2_operator.storage import SqlStore, open_store, upgrade

POSTGRES_URL = os.environ.get("UID2_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


def _libpq_dsn(url: str) -> str:
    """The same URL without a SQLAlchemy driver suffix, for psycopg itself."""
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    try:
        with psycopg.connect(_libpq_dsn(POSTGRES_URL), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL at {make_url(POSTGRES_URL)!r} is unreachable: {exc}"
        unavailable(message)
    return POSTGRES_URL


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file, copied for every test (migrating costs more than copying)."""
    path = tmp_path_factory.mktemp("template") / "uid2.db"
    upgrade(f"sqlite:///{path}")
    return path


def _fresh_schema(base_url: str) -> tuple[str, str]:
    schema = f"contract_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_libpq_dsn(base_url), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
    return schema, url.render_as_string(hide_password=False)


def _drop_schema(base_url: str, schema: str) -> None:
    with psycopg.connect(_libpq_dsn(base_url), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def empty_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database (no tables) on the backend under test."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'uid2.db'}"
        return
    base = request.getfixturevalue("postgres_url")
    schema, url = _fresh_schema(base)
    try:
        yield url
    finally:
        _drop_schema(base, schema)


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database migrated to head on the backend under test."""
    if backend == "sqlite":
        path = tmp_path / "uid2.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    base = request.getfixturevalue("postgres_url")
    schema, url = _fresh_schema(base)
    try:
        upgrade(url)
        yield url
    finally:
        _drop_schema(base, schema)


@pytest.fixture
def store(store_url: str) -> Iterator[SqlStore]:
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()
