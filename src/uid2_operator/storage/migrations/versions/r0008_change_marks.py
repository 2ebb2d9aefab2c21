"""Each committed change sequence gets a random mark, kept for the last ``MARKS_KEPT`` commits,
so that a reader can tell the store it read at sequence S from another that reached S by other
commits: one restored from an earlier backup and written since, whose sequence is behind, equal
to or past the reader's. The store's current sequence gets a mark here; every commit of this
version that moves the sequence writes the next one.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "change_marks",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("mark", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_change_marks")),
    )
    current = (
        op.get_bind()
        .execute(sa.text("SELECT value FROM store_meta WHERE name = 'change_seq'"))
        .scalar_one_or_none()
    )
    if current is not None:
        op.execute(
            sa.text("INSERT INTO change_marks (seq, mark) VALUES (:seq, :mark)").bindparams(
                seq=int(current), mark=os.urandom(16)
            )
        )


def downgrade() -> None:
    op.drop_table("change_marks")
