"""A rotated salt bucket records when its salt in effect took effect, not only when the next one
will: ``last_updated`` keeps the earlier time and ``refresh_from`` the scheduled change
(``domain.salts``). The columns are the same; what they mean for a bucket with a previous salt
and ``last_updated < refresh_from`` is not. Revision 0005's code reads such a bucket as changed
at ``last_updated``; this version reads it as a change still to come at ``refresh_from``.

So the buckets that an at-once rotation of an earlier version stored that way get their
``refresh_from`` moved to their ``last_updated``, and read as they did (they may rotate again from
then on, rather than from the midnight after that rotation); and an earlier version, which would
give a scheduled change's salt before its time, refuses the upgraded database. A downgrade gives
the buckets rotated since the scheduled change's time in both columns, the way revision 0005's
code stores a rotation.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

from uid2_operator.domain.salts import legacy_refresh_from, scheduled_last_updated

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
    _rewrite("refresh_from", legacy_refresh_from)


def downgrade() -> None:
    """Buckets rotated since read, to revision 0005's code, as changed when their earlier salt
    took effect: they get the time of their scheduled change in both columns, as that code
    stored a rotation (``scheduled_last_updated``), and read as pending until then."""
    _rewrite("last_updated", scheduled_last_updated)


def _rewrite(name: str, rewritten: Callable[[bytes, bytes, bytes], bytes | None]) -> None:
    """Column ``name`` of every chunk, as ``rewritten`` gives it from the chunk's bitmap and two
    time columns; one chunk (~1.3 MB of columns at most) in memory at a time."""
    conn = op.get_bind()
    numbers = conn.execute(sa.select(_chunks.c.chunk).order_by(_chunks.c.chunk)).scalars().all()
    for number in numbers:
        row = conn.execute(
            sa.select(_chunks.c.has_previous, _chunks.c.last_updated, _chunks.c.refresh_from).where(
                _chunks.c.chunk == number
            )
        ).one()
        column = rewritten(
            bytes(row.has_previous), bytes(row.last_updated), bytes(row.refresh_from)
        )
        if column is not None:
            conn.execute(sa.update(_chunks).where(_chunks.c.chunk == number).values({name: column}))
