"""The store contract for keysets, encryption keys, the salt table and opt-outs (every backend)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import delete, select
from store_records import T0

from uid2_operator.domain.keysets import Keyset, SealedKey, SharingMode
from uid2_operator.domain.material_sealing import SealedMaterial
from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.domain.salts import SaltHeader, SealedSaltChunk
from uid2_operator.errors import AlreadyExists, NotFound, StoreError
from uid2_operator.storage import SqlStore
from uid2_operator.storage import schema as t
from uid2_operator.storage.interface import Tx

S0 = T0 // 1000


def keyset(keyset_id: int = 4, site_id: int = 1001, **changes: object) -> Keyset:
    values: dict[str, object] = {
        "keyset_id": keyset_id,
        "site_id": site_id,
        "name": f"Site {site_id}",
        "enabled": True,
        "is_default": True,
        "created_at_ms": T0,
    }
    values.update(changes)
    return Keyset(**values)  # type: ignore[arg-type]


def sealed_key(key_id: int, keyset_id: int = 4, activates: int = S0) -> SealedKey:
    return SealedKey(
        id=key_id,
        keyset_id=keyset_id,
        created=S0,
        activates=activates,
        expires=activates + 86_400,
        secret=SealedMaterial(1, bytes([key_id % 256]) * 60),
    )


def header(version: int = 1, **changes: object) -> SaltHeader:
    values: dict[str, object] = {
        "bucket_count": 40,
        "chunk_size": 16,
        "id_prefix": "L",
        "version": version,
        "created_at_ms": T0,
        "updated_at_ms": T0 + version,
        "first_level_salt": SealedMaterial(1, b"fls" * 20),
        "id_secret": SealedMaterial(2, b"ids" * 20),
    }
    values.update(changes)
    return SaltHeader(**values)  # type: ignore[arg-type]


def chunk(number: int, size: int = 16, fill: int = 1) -> SealedSaltChunk:
    return SealedSaltChunk(
        number=number,
        first_bucket=number * 16,
        bucket_count=size,
        salts=SealedMaterial(1, bytes([fill]) * (size * 32 + 28)),
        has_previous=bytes([fill]) * ((size + 7) // 8),
        last_updated=bytes([fill, 2]) * (size * 4),
        refresh_from=bytes([fill, 3]) * (size * 4),
    )


def _fail(store: SqlStore, work: Callable[[Tx], None]) -> None:
    """Run ``work`` in a unit of work that then fails."""

    def run() -> None:
        with store.transaction() as tx:
            work(tx)
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError, match="roll back"):
        run()


def _with_keyset(store: SqlStore, *keysets: Keyset) -> None:
    with store.transaction() as tx:
        for record in keysets or (keyset(),):
            tx.keysets.add(record)


# ------------------------------------------------------------------------------- keysets


def test_keysets_round_trip_every_field(store: SqlStore) -> None:
    records = [
        keyset(-1, -1, name="Master"),
        keyset(2, 2, sharing=SharingMode.BIDDERS),
        keyset(4, 1001, sharing=SharingMode.LIST, allowed_sites=frozenset({7, 3})),
        keyset(5, 1001, name="Ünïcode ✓", enabled=False, is_default=False),
    ]
    before = store.change_seq()
    with store.transaction() as tx:
        for record in reversed(records):
            tx.keysets.add(record)
    assert store.change_seq() == before + 1
    with store.read() as rx:
        assert rx.keysets.list_all() == records
        assert rx.keysets.get(4) == records[2]
        assert rx.keysets.get(99) is None


def test_keyset_add_refuses_a_taken_id_and_update_an_unknown_one(store: SqlStore) -> None:
    _with_keyset(store)
    with pytest.raises(AlreadyExists, match="Keyset 4"), store.transaction() as tx:
        tx.keysets.add(keyset(4, 2002))
    with pytest.raises(NotFound, match="keyset 9"), store.transaction() as tx:
        tx.keysets.update(keyset(9))


def test_keyset_update_writes_the_mutable_fields_only(store: SqlStore) -> None:
    _with_keyset(store)
    changed = keyset(
        4,
        2002,
        name="renamed",
        enabled=False,
        is_default=False,
        created_at_ms=T0 + 99,
        sharing=SharingMode.LIST,
        allowed_sites=frozenset({11}),
    )
    with store.transaction() as tx:
        tx.keysets.update(changed)
    with store.read() as rx:
        assert rx.keysets.get(4) == keyset(
            4,
            1001,
            name="renamed",
            enabled=False,
            is_default=False,
            sharing=SharingMode.LIST,
            allowed_sites=frozenset({11}),
        )


# ------------------------------------------------------------------------------- keys


def test_encryption_keys_round_trip(store: SqlStore) -> None:
    _with_keyset(store, keyset(-1, -1), keyset(4))
    keys = [sealed_key(1, -1), sealed_key(2, 4, S0 + 60), sealed_key(3, 4, S0 + 120)]
    with store.transaction() as tx:
        for record in reversed(keys):
            tx.encryption_keys.add(record)
    with store.read() as rx:
        assert rx.encryption_keys.list_all() == keys
        assert rx.encryption_keys.list_for_keyset(4) == keys[1:]
        assert rx.encryption_keys.list_for_keyset(5) == []
        assert rx.encryption_keys.get(2) == keys[1]
        assert rx.encryption_keys.get(4) is None


def test_encryption_key_add_refuses_a_taken_id_or_unknown_keyset(store: SqlStore) -> None:
    _with_keyset(store)
    with store.transaction() as tx:
        tx.encryption_keys.add(sealed_key(1))
    with pytest.raises(AlreadyExists, match="Encryption key 1"), store.transaction() as tx:
        tx.encryption_keys.add(sealed_key(1))
    with pytest.raises(NotFound, match="keyset 8"), store.transaction() as tx:
        tx.encryption_keys.add(sealed_key(2, 8))


def test_key_ids_come_from_a_sequence_that_only_moves_forward(store: SqlStore) -> None:
    _with_keyset(store)
    with store.transaction() as tx:
        assert tx.encryption_keys.allocate_ids(3) == [1, 2, 3]
        assert tx.encryption_keys.allocate_ids(1) == [4]
    with store.transaction() as tx:
        assert tx.encryption_keys.allocate_ids(2) == [5, 6]
        tx.encryption_keys.add(sealed_key(5))

    def allocate_then_fail(tx: Tx) -> None:
        assert tx.encryption_keys.allocate_ids(1) == [7]

    _fail(store, allocate_then_fail)
    with store.transaction() as tx:  # nothing of the rolled-back unit was stored or published
        assert tx.encryption_keys.allocate_ids(1) == [7]


def test_key_ids_stay_above_every_stored_key(store: SqlStore) -> None:
    _with_keyset(store)
    with store.transaction() as tx:
        tx.encryption_keys.add(sealed_key(40))
        assert tx.encryption_keys.allocate_ids(2) == [41, 42]


def test_the_key_id_sequence_is_recreated_when_missing(store: SqlStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(delete(t.store_meta).where(t.store_meta.c.name == t.KEY_ID_SEQ))
    with store.transaction() as tx:
        assert tx.encryption_keys.allocate_ids(2) == [1, 2]
    with store.transaction() as tx:
        assert tx.encryption_keys.allocate_ids(1) == [3]


def test_allocating_nothing_changes_nothing(store: SqlStore) -> None:
    before = store.change_seq()
    with store.transaction() as tx:
        assert tx.encryption_keys.allocate_ids(0) == []
    assert store.change_seq() == before
    with pytest.raises(StoreError, match="negative"), store.transaction() as tx:
        tx.encryption_keys.allocate_ids(-1)


def test_keys_are_deleted_by_id_with_their_sealed_secrets(store: SqlStore) -> None:
    _with_keyset(store, keyset(-1, -1), keyset(4), keyset(5, 1002, enabled=False))
    keys = [sealed_key(1, -1), sealed_key(2, 4), sealed_key(3, 5), sealed_key(4, 4)]
    with store.transaction() as tx:
        for record in keys:
            tx.encryption_keys.add(record)
    seq = store.change_seq()
    with store.transaction() as tx:
        tx.encryption_keys.delete(iter([3, 2, 3]))  # any iterable; a repeated id is one key
    assert store.change_seq() == seq + 1
    with store.read() as rx:
        assert rx.encryption_keys.list_all() == [keys[0], keys[3]]
        assert rx.encryption_keys.get(2) is None
        assert rx.encryption_keys.list_for_keyset(5) == []
        assert rx.encryption_keys.count_by_kek_version() == {1: 2}
        assert [k.keyset_id for k in rx.keysets.list_all()] == [-1, 4, 5]  # keysets stay
    with store.engine.connect() as conn:  # the sealed secrets went with the rows
        ciphertexts = conn.execute(select(t.encryption_keys.c.ciphertext)).scalars().all()
    assert sorted(ciphertexts) == sorted(k.secret.ciphertext for k in (keys[0], keys[3]))


def test_deleting_no_key_changes_nothing(store: SqlStore) -> None:
    _with_keyset(store)
    with store.transaction() as tx:
        tx.encryption_keys.add(sealed_key(1))
    seq = store.change_seq()
    with store.transaction() as tx:
        tx.encryption_keys.delete([])
    assert store.change_seq() == seq
    with store.read() as rx:
        assert [k.id for k in rx.encryption_keys.list_all()] == [1]


def test_deleting_a_missing_key_is_refused_and_deletes_nothing(store: SqlStore) -> None:
    _with_keyset(store)
    with store.transaction() as tx:
        tx.encryption_keys.add(sealed_key(1))
        tx.encryption_keys.add(sealed_key(2))
    seq = store.change_seq()
    with pytest.raises(NotFound, match=r"No encryption key 7, 9$"), store.transaction() as tx:
        tx.encryption_keys.delete([1, 9, 7, 2])
    assert store.change_seq() == seq
    with store.read() as rx:
        assert [k.id for k in rx.encryption_keys.list_all()] == [1, 2]


def test_many_keys_are_deleted_at_once(store: SqlStore) -> None:
    _with_keyset(store)
    count = 1_100  # more than one statement's worth of ids
    with store.transaction() as tx:
        ids = tx.encryption_keys.allocate_ids(count)
        for key_id in ids:
            tx.encryption_keys.add(sealed_key(key_id))
    with store.transaction() as tx:
        tx.encryption_keys.delete(ids[1:])
    with store.read() as rx:
        assert [k.id for k in rx.encryption_keys.list_all()] == [1]


def test_deleted_key_ids_are_never_handed_out_again(store: SqlStore) -> None:
    _with_keyset(store)
    with store.transaction() as tx:
        ids = tx.encryption_keys.allocate_ids(3)
        for key_id in ids:
            tx.encryption_keys.add(sealed_key(key_id))
    with store.transaction() as tx:
        tx.encryption_keys.delete(ids)  # the table is empty again
    with store.transaction() as tx:
        assert tx.encryption_keys.allocate_ids(2) == [4, 5]
    # A key added with an id of its own, the highest there is, then deleted: still never reused.
    with store.transaction() as tx:
        tx.encryption_keys.add(sealed_key(40))
    with store.transaction() as tx:
        tx.encryption_keys.delete([40])
    with store.transaction() as tx:
        assert tx.encryption_keys.allocate_ids(1) == [41]
    # The same with the sequence row gone (a schema made from the metadata).
    with store.engine.begin() as conn:
        conn.execute(delete(t.store_meta).where(t.store_meta.c.name == t.KEY_ID_SEQ))
    with store.transaction() as tx:
        tx.encryption_keys.add(sealed_key(60))
    with store.transaction() as tx:
        tx.encryption_keys.delete([60])
    with store.transaction() as tx:
        assert tx.encryption_keys.allocate_ids(1) == [61]


# ------------------------------------------------------------------------------- salts


def test_the_salt_header_is_created_then_replaced(store: SqlStore) -> None:
    with store.read() as rx:
        assert rx.salts.header() is None
    with store.transaction() as tx:
        tx.salts.put_header(header(1))
    before = store.change_seq()
    with store.transaction() as tx:
        assert tx.salts.header() == header(1)
        tx.salts.put_header(header(2, id_prefix="P"))
    assert store.change_seq() == before + 1
    with store.read() as rx:
        assert rx.salts.header() == header(2, id_prefix="P")


def test_salt_chunks_round_trip_in_order_and_are_replaced_by_number(store: SqlStore) -> None:
    with store.read() as rx:
        assert list(rx.salts.iter_chunks()) == []
        assert rx.salts.get_chunk(0) is None
    with store.transaction() as tx:
        tx.salts.put_chunks([chunk(2, 8), chunk(0), chunk(1)])
    with store.transaction() as tx:
        tx.salts.put_chunks(iter([chunk(1, fill=9)]))
    with store.read() as rx:
        assert list(rx.salts.iter_chunks()) == [chunk(0), chunk(1, fill=9), chunk(2, 8)]
        assert rx.salts.get_chunk(2) == chunk(2, 8)
        assert rx.salts.get_chunk(3) is None


def test_production_sized_chunks_stream_back(store: SqlStore) -> None:
    big = [
        SealedSaltChunk(
            number=n,
            first_bucket=n * 16384,
            bucket_count=16384,
            salts=SealedMaterial(1, bytes([n]) * (16384 * 64 + 28)),
            has_previous=b"\xff" * 2048,
            last_updated=bytes([n]) * (16384 * 8),
            refresh_from=bytes([n + 1]) * (16384 * 8),
        )
        for n in range(6)
    ]
    with store.transaction() as tx:
        tx.salts.put_chunks(big)
    with store.read() as rx:
        seen = [
            (c.number, len(c.salts.ciphertext), c.refresh_from[:1]) for c in rx.salts.iter_chunks()
        ]
    assert seen == [(n, 16384 * 64 + 28, bytes([n + 1])) for n in range(6)]


# ------------------------------------------------------------------------------- opt-outs


def test_optouts_round_trip_and_replace(store: SqlStore) -> None:
    a = OptOutRecord(bytes(range(32)), T0, "A" * 44)
    b = OptOutRecord(bytes(range(1, 33)), T0 + 1)
    zero = OptOutRecord(bytes(32), T0 + 2, "B" * 44)
    with store.read() as rx:
        assert rx.optouts.count() == 0
        assert rx.optouts.get(a.first_level_hash) is None
    with store.transaction() as tx:
        for record in (b, a, zero):
            tx.optouts.put(record)
    replaced = OptOutRecord(a.first_level_hash, T0 + 50, None)
    before = store.change_seq()
    with store.transaction() as tx:
        tx.optouts.put(replaced)
    assert store.change_seq() == before + 1
    with store.read() as rx:
        assert rx.optouts.list_all() == [zero, replaced, b]
        assert rx.optouts.get(b.first_level_hash) == b
        assert rx.optouts.count() == 3


# ------------------------------------------------------------------------------- units of work


def test_a_read_unit_refuses_material_writes(store: SqlStore) -> None:
    writes = [
        lambda rx: rx.keysets.add(keyset()),
        lambda rx: rx.keysets.update(keyset()),
        lambda rx: rx.encryption_keys.add(sealed_key(1)),
        lambda rx: rx.encryption_keys.allocate_ids(1),
        lambda rx: rx.encryption_keys.delete([1]),
        lambda rx: rx.salts.put_header(header()),
        lambda rx: rx.salts.put_chunks([chunk(0)]),
        lambda rx: rx.optouts.put(OptOutRecord(bytes(32), T0)),
    ]
    for write in writes:
        with pytest.raises(StoreError, match="read-only"), store.read() as rx:
            write(rx)


def test_a_unit_sees_the_change_seq_it_reads(store: SqlStore) -> None:
    with store.read() as rx:
        assert rx.change_seq() == store.change_seq()
    _with_keyset(store)
    with store.transaction() as tx:
        seen = tx.change_seq()
        tx.optouts.put(OptOutRecord(bytes(32), T0))
    assert store.change_seq() == seen + 1


def test_a_failed_unit_leaves_no_material_behind(store: SqlStore) -> None:
    before = store.change_seq()

    def write_everything(tx: Tx) -> None:
        tx.keysets.add(keyset())
        tx.salts.put_header(header())
        tx.salts.put_chunks([chunk(0)])
        tx.optouts.put(OptOutRecord(bytes(32), T0))

    _fail(store, write_everything)
    assert store.change_seq() == before
    with store.read() as rx:
        assert rx.keysets.list_all() == []
        assert rx.salts.header() is None
        assert list(rx.salts.iter_chunks()) == []
        assert rx.optouts.count() == 0
