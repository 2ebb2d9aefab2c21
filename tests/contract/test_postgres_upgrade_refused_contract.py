"""A schema upgrade the database refuses says why (``db upgrade``, ``init``).

A role without the privilege to create tables, or a server or session that is read-only, refuses
the upgrade's first statement: the error is a ``StoreError`` giving the database's reason (its
first line only), not an internal error naming an exception class, and nothing is left behind.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url

from uid2_operator.errors import StoreError, StoreUnavailable
from uid2_operator.storage import current_revision, upgrade

pytestmark = pytest.mark.postgres


def _libpq_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def read_only_url(postgres_url: str) -> Iterator[str]:
    """An empty schema, reached by sessions whose transactions are read-only."""
    schema = f"read_only_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    options = f"-csearch_path={schema} -cdefault_transaction_read_only=on"
    url = make_url(postgres_url).update_query_dict({"options": options})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq_dsn(postgres_url), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_a_read_only_database_refuses_the_upgrade_saying_why(read_only_url: str) -> None:
    with pytest.raises(StoreError) as refused:
        upgrade(read_only_url)
    assert not isinstance(refused.value, StoreUnavailable)
    assert str(refused.value) == (
        "The database refused the schema upgrade: cannot execute CREATE TABLE in a read-only "
        "transaction"
    )
    assert current_revision(read_only_url) is None  # nothing was created
