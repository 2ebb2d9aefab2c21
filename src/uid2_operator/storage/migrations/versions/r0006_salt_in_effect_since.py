"""A rotated salt bucket records when its salt in effect took effect, not only when the next one
will: ``last_updated`` keeps the earlier time and ``refresh_from`` the scheduled change
(``domain.salts``). The columns are the same; what they mean for a bucket with a previous salt
and ``last_updated < refresh_from`` is not. Revision 0005's code reads such a bucket as changed
at ``last_updated``; this version reads it as a change still to come at ``refresh_from``.

So the buckets that an at-once rotation of an earlier version stored that way get their
``refresh_from`` moved to their ``last_updated``, and read as they did; and an earlier version,
which would give a scheduled change's salt before its time, refuses the upgraded database.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from uid2_operator.domain.salts import legacy_refresh_from

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

_chunks = sa.table(
    "salt_chunks",
    sa.column("chunk", sa.Integer()),
    sa.column("has_previous", sa.LargeBinary()),
    sa.column("last_updated", sa.LargeBinary()),
    sa.column("refresh_from", sa.LargeBinary()),
)


def upgrade() -> None:
    conn = op.get_bind()
    numbers = conn.execute(sa.select(_chunks.c.chunk).order_by(_chunks.c.chunk)).scalars().all()
    for number in numbers:  # one chunk (~1.3 MB of columns at most) in memory at a time
        row = conn.execute(
            sa.select(_chunks.c.has_previous, _chunks.c.last_updated, _chunks.c.refresh_from).where(
                _chunks.c.chunk == number
            )
        ).one()
        moved = legacy_refresh_from(
            bytes(row.has_previous), bytes(row.last_updated), bytes(row.refresh_from)
        )
        if moved is not None:
            conn.execute(
                sa.update(_chunks).where(_chunks.c.chunk == number).values(refresh_from=moved)
            )


def downgrade() -> None:
    """Nothing to undo in the schema. A bucket rotated since reads, to revision 0005's code, as
    changed when its earlier salt took effect, so downgrading is only safe before any rotation."""
