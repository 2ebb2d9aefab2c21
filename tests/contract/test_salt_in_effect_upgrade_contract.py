"""Schema revision 0006 on every backend: the salt buckets an at-once rotation of an earlier
version stored (a previous salt, ``last_updated`` before ``refresh_from``) get ``last_updated`` as
``refresh_from``, so that this version reads them as changed then; every other column and row is
left as it was."""

from __future__ import annotations

from array import array

from alembic import command
from sqlalchemy import column, insert, select, table

from uid2_operator.domain.salts import int64_bytes, int64_column
from uid2_operator.storage import current_revision, head_revision, upgrade
from uid2_operator.storage.engines import make_engine
from uid2_operator.storage.migrate import _config

DAY = 86_400_000
MIDNIGHT = 19_677 * DAY
RAN_AT = MIDNIGHT - 14 * 3_600_000
CREATED = MIDNIGHT - 5 * DAY

CHUNKS = table(
    "salt_chunks",
    column("chunk"),
    column("first_bucket"),
    column("bucket_count"),
    column("kek_version"),
    column("salts"),
    column("has_previous"),
    column("last_updated"),
    column("refresh_from"),
)

# Chunk 0: never rotated, rotated at once, rotated for a midnight by the version before,
# rotated at once again (8 buckets; bits 1-3 flag a previous salt). Chunk 1: nothing to move.
ROWS = {
    0: (b"\x0e", [CREATED, RAN_AT, MIDNIGHT, RAN_AT + 1] + [CREATED] * 4,
        [CREATED, MIDNIGHT, MIDNIGHT, MIDNIGHT] + [CREATED] * 4),
    1: (b"\x00", [CREATED] * 8, [CREATED] * 8),
}  # fmt: skip


def test_the_upgrade_moves_the_at_once_rotations_and_nothing_else(empty_url: str) -> None:
    engine, flavour = make_engine(empty_url)
    try:
        with engine.connect() as conn:
            flavour.begin_migration(conn)
            command.upgrade(_config(conn), "0005")
            conn.commit()
        assert current_revision(empty_url) == "0005"
        with engine.connect() as conn:
            for number, (present, updated, refresh) in ROWS.items():
                conn.execute(
                    insert(CHUNKS).values(
                        chunk=number,
                        first_bucket=8 * number,
                        bucket_count=8,
                        kek_version=1,
                        salts=bytes([number]) * 16,
                        has_previous=present,
                        last_updated=int64_bytes(array("q", updated)),
                        refresh_from=int64_bytes(array("q", refresh)),
                    )
                )
            conn.commit()
        assert upgrade(empty_url) == head_revision()
        with engine.connect() as conn:
            rows = conn.execute(select(CHUNKS).order_by(CHUNKS.c.chunk)).all()
    finally:
        engine.dispose()
    assert [row.chunk for row in rows] == [0, 1]
    for row in rows:
        present, updated, refresh = ROWS[row.chunk]
        assert (bytes(row.salts), bytes(row.has_previous)) == (bytes([row.chunk]) * 16, present)
        assert list(int64_column(bytes(row.last_updated))) == updated
        moved = list(int64_column(bytes(row.refresh_from)))
        if row.chunk == 0:
            assert moved == [CREATED, RAN_AT, MIDNIGHT, RAN_AT + 1] + [CREATED] * 4
        else:
            assert moved == refresh


def test_the_downgrade_gives_buckets_rotated_since_their_change_time_in_both_columns(
    empty_url: str,
) -> None:
    # As revision 0006's code stores them: never rotated; rotated for MIDNIGHT (the salt in
    # effect since CREATED); rotated for a midnight by the version before; at once, upgraded.
    present = b"\x0e"
    updated = [CREATED, CREATED, MIDNIGHT, RAN_AT] + [CREATED] * 4
    refresh = [CREATED, MIDNIGHT, MIDNIGHT, RAN_AT] + [CREATED] * 4
    assert upgrade(empty_url) == head_revision()
    engine, flavour = make_engine(empty_url)
    try:
        with engine.connect() as conn:
            conn.execute(
                insert(CHUNKS).values(
                    chunk=0,
                    first_bucket=0,
                    bucket_count=8,
                    kek_version=1,
                    salts=b"s" * 16,
                    has_previous=present,
                    last_updated=int64_bytes(array("q", updated)),
                    refresh_from=int64_bytes(array("q", refresh)),
                )
            )
            conn.commit()
        with engine.connect() as conn:
            flavour.begin_migration(conn)
            command.downgrade(_config(conn), "0005")
            conn.commit()
        assert current_revision(empty_url) == "0005"
        with engine.connect() as conn:
            row = conn.execute(select(CHUNKS)).one()
    finally:
        engine.dispose()
    # Revision 0005's code reads the second bucket as pending until MIDNIGHT, then changed then.
    assert (
        list(int64_column(bytes(row.last_updated)))
        == [CREATED, MIDNIGHT, MIDNIGHT, RAN_AT] + [CREATED] * 4
    )
    assert list(int64_column(bytes(row.refresh_from))) == refresh
    assert (bytes(row.salts), bytes(row.has_previous)) == (b"s" * 16, present)
