"""Opt-outs keep the raw UIDs of a person's earlier opt-outs, each with the time it was first
opted out, so that ``/v2/optout/status`` still answers for a raw UID after the same person opted
out again under a new one (their salt bucket rotated in between).

The column is NULL for a record with none, as every existing record is: what a record held before
the upgrade (its newest raw UID) is all it held.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("optouts") as batch:
        batch.add_column(sa.Column("earlier_advertising_ids", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("optouts") as batch:
        batch.drop_column("earlier_advertising_ids")
