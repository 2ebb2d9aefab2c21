"""Alembic environment: always runs on a connection handed over by ``storage.migrate``.

The caller owns the connection and its transaction (so a whole upgrade is one transaction on both
backends, and concurrent upgrades queue on the same lock); nothing here reads a URL or a file.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from uid2_operator.storage.schema import metadata

connection: Connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
