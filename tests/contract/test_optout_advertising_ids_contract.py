"""The raw UIDs of a person's earlier opt-outs, on every backend: stored with their record, read
back by every read (``get``, ``get_many``, ``list_all``, ``since``), kept by the write-behind's
writes, answered by an index built in full or from what changed, and kept by the upgrade that
added them for the records stored before it."""

from __future__ import annotations

import hashlib

from alembic import command
from sqlalchemy import column, insert, table

from uid2_operator.domain.optout import (
    MAX_EARLIER_ADVERTISING_IDS,
    OptOutIndex,
    OptOutRecord,
    latest,
)
from uid2_operator.services.write_behind import write_optouts
from uid2_operator.storage import SqlStore, current_revision, head_revision, open_store, upgrade
from uid2_operator.storage.engines import make_engine
from uid2_operator.storage.migrate import _config

T0 = 1_700_000_000_000
NOW = T0 + 60_000


def flh(n: int) -> bytes:
    return hashlib.sha256(f"person-{n}".encode()).digest()


def raw_uid(n: int, salt: int) -> str:
    return hashlib.sha256(f"uid-{n}/{salt}".encode()).hexdigest()[:44]


def _rotated(n: int, salts: int) -> OptOutRecord:
    """Person ``n`` opted out under each of ``salts`` salts in turn, a second apart."""
    kept: OptOutRecord | None = None
    for salt in range(salts):
        kept = latest(kept, OptOutRecord(flh(n), T0 + 1000 * salt, raw_uid(n, salt)))
    assert kept is not None
    return kept


def test_earlier_raw_uids_round_trip_through_every_read(store: SqlStore) -> None:
    many = _rotated(1, MAX_EARLIER_ADVERTISING_IDS + 1)  # the longest a record gets
    two = _rotated(2, 2)
    plain = OptOutRecord(flh(3), T0, raw_uid(3, 0))
    assert len(many.earlier_advertising_ids) == MAX_EARLIER_ADVERTISING_IDS
    with store.transaction() as tx:
        tx.optouts.put_many([many, two, plain])
    with store.read() as rx:
        assert rx.optouts.get(flh(1)) == many
        assert rx.optouts.get_many([flh(1), flh(2), flh(3)]) == {
            flh(1): many,
            flh(2): two,
            flh(3): plain,
        }
        assert sorted(rx.optouts.list_all(), key=lambda r: r.timestamp_ms) == [plain, two, many]
        assert set(rx.optouts.since(0).records) == {many, two, plain}


def test_an_upsert_replaces_the_earlier_raw_uids(store: SqlStore) -> None:
    with store.transaction() as tx:
        tx.optouts.put(_rotated(1, 3))
    cursor = store.change_seq()
    replaced = OptOutRecord(flh(1), NOW, raw_uid(1, 9))
    with store.transaction() as tx:
        tx.optouts.put(replaced)
    with store.read() as rx:
        assert rx.optouts.get(flh(1)) == replaced
        assert rx.optouts.since(cursor).records == (replaced,)


def test_an_opt_out_after_a_rotation_keeps_the_raw_uid_of_the_first(store: SqlStore) -> None:
    first = OptOutRecord(flh(1), T0, raw_uid(1, 0))
    write_optouts(store, [first, OptOutRecord(flh(2), T0, raw_uid(2, 0))], lambda: NOW)
    with store.read() as rx:
        loaded = rx.optouts.since(0)
    index = OptOutIndex.of(loaded.records)

    again = OptOutRecord(flh(1), T0 + 500, raw_uid(1, 1))
    write_optouts(store, [again, OptOutRecord(flh(1), T0 + 700, raw_uid(1, 1))], lambda: NOW)
    with store.read() as rx:
        stored = rx.optouts.get(flh(1))
        changes = rx.optouts.since(loaded.cursor)
        everything = rx.optouts.since(0)
    assert stored is not None
    assert (stored.timestamp_ms, stored.advertising_id) == (T0 + 700, raw_uid(1, 1))
    assert stored.advertising_id_times() == {raw_uid(1, 0): T0, raw_uid(1, 1): T0 + 500}
    assert changes.records == (stored,)

    expected = {raw_uid(1, 0): T0, raw_uid(1, 1): T0 + 500, raw_uid(2, 0): T0}
    for answered in (index.replaced(changes.records), OptOutIndex.of(everything.records)):
        assert dict(answered.by_advertising_id) == expected
        assert dict(answered.by_flh) == {flh(1): T0 + 700, flh(2): T0}


# The opt-out table as revision 0004 left it (no earlier raw UIDs).
OPTOUTS_0004 = table(
    "optouts",
    column("first_level_hash"),
    column("advertising_id"),
    column("timestamp_ms"),
    column("change_seq"),
)


def test_the_upgrade_keeps_the_records_stored_before_it(empty_url: str) -> None:
    engine, flavour = make_engine(empty_url)
    try:
        with engine.connect() as conn:
            flavour.begin_migration(conn)
            command.upgrade(_config(conn), "0004")
            conn.commit()
        assert current_revision(empty_url) == "0004"
        with engine.connect() as conn:
            conn.execute(
                insert(OPTOUTS_0004).values(
                    first_level_hash=flh(1),
                    advertising_id=raw_uid(1, 0),
                    timestamp_ms=T0,
                    change_seq=1,
                )
            )
            conn.commit()
    finally:
        engine.dispose()
    assert upgrade(empty_url) == head_revision()
    store = open_store(empty_url)
    try:
        with store.read() as rx:
            assert rx.optouts.list_all() == [OptOutRecord(flh(1), T0, raw_uid(1, 0))]
        write_optouts(store, [OptOutRecord(flh(1), T0 + 500, raw_uid(1, 1))], lambda: NOW)
        with store.read() as rx:
            stored = rx.optouts.get(flh(1))
        assert stored is not None
        assert stored.advertising_id_times() == {raw_uid(1, 0): T0, raw_uid(1, 1): T0 + 500}
    finally:
        store.close()
