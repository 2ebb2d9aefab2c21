"""Participants, API keys and client secrets record the change sequence of the commit that last
wrote them, as opt-outs do since revision 0004, so that a snapshot reload reads only the
credentials written since the sequence it last read at instead of every key and secret again.

Existing rows get the sequence the store is at (at least 1): a reader that has read nothing
(sequence 0) reads them all, and one that loads after the upgrade is already past them. The
column is added with a default of 0 (SQLite adds such a column in place, without copying the
tables the keys and secrets refer to); every write of this version sets it.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

_TABLES = ("participants", "api_keys", "client_secrets")

_STAMP_EXISTING = (
    "UPDATE {table} SET change_seq = "
    "(SELECT CASE WHEN value < 1 THEN 1 ELSE value END FROM store_meta WHERE name = 'change_seq')"
)


def upgrade() -> None:
    for table in _TABLES:
        op.add_column(
            table, sa.Column("change_seq", sa.BigInteger(), nullable=False, server_default="0")
        )
        op.execute(_STAMP_EXISTING.format(table=table))
        op.create_index(op.f(f"ix_{table}_change_seq"), table, ["change_seq"])


def downgrade() -> None:
    for table in reversed(_TABLES):
        op.drop_index(op.f(f"ix_{table}_change_seq"), table_name=table)
        # In place on SQLite too (ALTER TABLE DROP COLUMN, SQLite 3.35 and later): a copy of the
        # table, as a batch operation makes, would drop a table other rows refer to.
        op.drop_column(table, "change_seq")
