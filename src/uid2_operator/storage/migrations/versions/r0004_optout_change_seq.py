"""Opt-outs record the change sequence of the commit that last wrote them, so that a reload can
read only the records written since the sequence it last read at.

Existing records get the sequence the store is at (at least 1): a reader that has read nothing
(sequence 0) reads them all, and a reader that loads after the upgrade is already past them.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

_STAMP_EXISTING = (
    "UPDATE optouts SET change_seq = "
    "(SELECT CASE WHEN value < 1 THEN 1 ELSE value END FROM store_meta WHERE name = 'change_seq')"
)


def upgrade() -> None:
    with op.batch_alter_table("optouts") as batch:
        batch.add_column(sa.Column("change_seq", sa.BigInteger(), nullable=True))
    op.execute(_STAMP_EXISTING)
    with op.batch_alter_table("optouts") as batch:
        batch.alter_column("change_seq", existing_type=sa.BigInteger(), nullable=False)
    op.create_index(op.f("ix_optouts_change_seq"), "optouts", ["change_seq"])


def downgrade() -> None:
    op.drop_index(op.f("ix_optouts_change_seq"), table_name="optouts")
    with op.batch_alter_table("optouts") as batch:
        batch.drop_column("change_seq")
