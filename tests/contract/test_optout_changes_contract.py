"""Reading the opt-outs written since a cursor (``OptOutReader.since``), on every backend, and
the migration that gave existing records their cursor."""

from __future__ import annotations

from alembic import command
from sqlalchemy import column, insert, table, update

from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.errors import StoreError
from uid2_operator.storage import SqlStore, current_revision, head_revision, open_store, upgrade
from uid2_operator.storage import schema as t
from uid2_operator.storage.engines import make_engine
from uid2_operator.storage.migrate import _config

T0 = 1_700_000_000_000


def record(n: int, at: int = T0, ad_id: str | None = None) -> OptOutRecord:
    return OptOutRecord(bytes([n]) * 32, at, ad_id)


def put(store: SqlStore, *records: OptOutRecord) -> int:
    with store.transaction() as tx:
        for r in records:
            tx.optouts.put(r)
    return store.change_seq()


def test_since_nothing_reads_every_record_and_a_cursor_covering_them(store: SqlStore) -> None:
    with store.read() as rx:
        empty = rx.optouts.since(0)
    assert (empty.records, empty.cursor) == ((), 0)
    seq = put(store, record(1), record(2, ad_id="A" * 44))
    with store.read() as rx:
        changes = rx.optouts.since(0)
    assert sorted(changes.records, key=lambda r: r.first_level_hash) == [
        record(1),
        record(2, ad_id="A" * 44),
    ]
    assert changes.cursor == seq  # the sequence the writing commit brought the store to


def test_the_cursor_of_a_full_read_is_the_highest_sequence_whatever_the_row_order(
    store: SqlStore,
) -> None:
    # Rewriting the first record gives the row written first the highest sequence; a full read
    # returns rows in no promised order, and its cursor must still cover all of them.
    put(store, record(1))
    put(store, record(2))
    seq = put(store, record(1, T0 + 5))
    with store.read() as rx:
        changes = rx.optouts.since(0)
    assert len(changes.records) == 2
    assert changes.cursor == seq


def test_since_a_cursor_reads_only_what_later_commits_wrote(store: SqlStore) -> None:
    first = put(store, record(1), record(2))
    second = put(store, record(3))
    with store.transaction() as tx:  # a change that is not an opt-out moves the sequence only
        tx.keysets.list_all()
        tx.salts.put_chunks([])
    third = put(store, record(4), record(5))
    with store.read() as rx:
        assert rx.optouts.since(first).records == (record(3), record(4), record(5))
        assert rx.optouts.since(first).cursor == third
        assert rx.optouts.since(second).records == (record(4), record(5))
        latest = rx.optouts.since(third)
    assert (latest.records, latest.cursor) == ((), third)


def test_an_upsert_moves_the_record_past_the_cursor(store: SqlStore) -> None:
    cursor = put(store, record(1), record(2))
    newer = record(1, T0 + 5, "B" * 44)
    seq = put(store, newer)
    with store.read() as rx:
        changes = rx.optouts.since(cursor)
        assert rx.optouts.count() == 2
    assert (changes.records, changes.cursor) == ((newer,), seq)


def test_a_rolled_back_write_leaves_no_record_and_no_gap(store: SqlStore) -> None:
    cursor = put(store, record(1))
    try:
        with store.transaction() as tx:
            tx.optouts.put(record(2))
            raise StoreError("changed my mind")
    except StoreError:
        pass
    seq = put(store, record(3))
    assert seq == cursor + 1
    with store.read() as rx:
        assert rx.optouts.since(cursor).records == (record(3),)


def test_a_read_sees_the_records_of_its_own_state_and_the_next_read_the_rest(
    store: SqlStore,
) -> None:
    cursor = put(store, record(1))
    with store.read() as rx:
        before = rx.change_seq()
        rx.participants.list_all()  # the read unit has started reading its state
        committed_meanwhile = put(store, record(2))
        changes = rx.optouts.since(cursor)
        assert rx.change_seq() == before
    assert changes.records == ()
    assert changes.cursor == cursor
    with store.read() as rx:
        after = rx.optouts.since(changes.cursor)
    assert (after.records, after.cursor) == ((record(2),), committed_meanwhile)


# The opt-out table as revision 0003 left it (no change_seq column).
OPTOUTS_0003 = table(
    "optouts", column("first_level_hash"), column("advertising_id"), column("timestamp_ms")
)


def _at_0003_with(url: str, change_seq: int, rows: int) -> None:
    """Migrate to revision 0003 and write ``rows`` opt-outs there, at ``change_seq``."""
    engine, flavour = make_engine(url)
    try:
        with engine.connect() as conn:
            flavour.begin_migration(conn)
            command.upgrade(_config(conn), "0003")
            conn.commit()
        assert current_revision(url) == "0003"
        with engine.connect() as conn:
            conn.execute(
                update(t.store_meta)
                .where(t.store_meta.c.name == t.CHANGE_SEQ)
                .values(value=change_seq)
            )
            for n in range(1, rows + 1):
                conn.execute(
                    insert(OPTOUTS_0003).values(
                        first_level_hash=bytes([n]) * 32, advertising_id=None, timestamp_ms=T0 + n
                    )
                )
            conn.commit()
    finally:
        engine.dispose()


def test_the_upgrade_from_0003_stamps_existing_records_for_a_reader_from_nothing(
    empty_url: str,
) -> None:
    _at_0003_with(empty_url, change_seq=7, rows=3)
    assert upgrade(empty_url) == head_revision()
    store = open_store(empty_url)
    try:
        with store.read() as rx:
            stamped = rx.optouts.since(0)
            assert rx.optouts.since(7).records == ()
            assert rx.optouts.since(6).cursor == 7
        assert sorted(stamped.records, key=lambda r: r.timestamp_ms) == [
            record(n, T0 + n) for n in (1, 2, 3)
        ]
        assert stamped.cursor == 7
        seq = put(store, record(1, T0 + 9))
        assert seq == 8
        with store.read() as rx:
            assert rx.optouts.since(stamped.cursor).records == (record(1, T0 + 9),)
    finally:
        store.close()


def test_the_upgrade_stamps_records_of_a_store_never_changed_with_1(empty_url: str) -> None:
    _at_0003_with(empty_url, change_seq=0, rows=1)
    upgrade(empty_url)
    store = open_store(empty_url)
    try:
        assert store.change_seq() == 0
        with store.read() as rx:
            changes = rx.optouts.since(0)
        assert (changes.records, changes.cursor) == ((record(1, T0 + 1),), 1)
    finally:
        store.close()
