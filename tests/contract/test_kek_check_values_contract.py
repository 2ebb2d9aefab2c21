"""The store contract for the check values of key-encryption key versions (every backend).

Several keyring files (one per data directory) share one store. The store records, per version,
the check value of the key first used under that number (``store_meta`` rows ``kek_check_<N>``),
so a keyring file holding another key under that number is refused. Reads as empty until
recorded (a store from an earlier version has no rows); a recorded value is never overwritten;
written only by a write unit; leaves the change sequence alone. No migration added the rows:
``store_meta`` is names and values, and the schema stays at the revision this code ships.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import insert, select

from uid2_operator.errors import StoreError
from uid2_operator.storage import SqlStore, head_revision
from uid2_operator.storage import schema as t
from uid2_operator.storage.migrate import revision_of

BIGGEST = (1 << 63) - 1


def _recorded(store: SqlStore) -> dict[int, int]:
    with store.read() as rx:
        return dict(rx.deployment.kek_check_values())


def _rows(store: SqlStore) -> dict[str, int]:
    """Every ``kek_check_*`` row and the pepper's, read from the table itself."""
    m = t.store_meta.c
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(m.name, m.value).where(
                m.name.like("kek\\_check\\_%", "\\") | (m.name == "pepper_check")
            )
        )
        return {name: int(value) for name, value in rows}


def test_nothing_recorded_reads_as_empty(store: SqlStore) -> None:
    assert _recorded(store) == {}
    with store.transaction() as tx:
        assert dict(tx.deployment.kek_check_values()) == {}
    assert _rows(store) == {}


def test_values_are_recorded_as_store_meta_rows_and_read_back(store: SqlStore) -> None:
    with store.transaction() as tx:
        after = tx.deployment.record_kek_check_values({2: 22, 1: BIGGEST})
        assert dict(after) == {1: BIGGEST, 2: 22}
        assert list(after) == [1, 2]
        assert dict(tx.deployment.kek_check_values()) == {1: BIGGEST, 2: 22}
    assert _recorded(store) == {1: BIGGEST, 2: 22}
    assert list(_recorded(store)) == [1, 2]
    assert _rows(store) == {"kek_check_1": BIGGEST, "kek_check_2": 22}
    assert t.kek_check_name(12) == "kek_check_12"


def test_a_recorded_value_is_never_overwritten(store: SqlStore) -> None:
    with store.transaction() as tx:
        tx.deployment.record_kek_check_values({1: 11})
    with store.transaction() as tx:
        after = tx.deployment.record_kek_check_values({1: 99, 3: 33})
        assert dict(after) == {1: 11, 3: 33}
    with store.transaction() as tx:
        assert dict(tx.deployment.record_kek_check_values({})) == {1: 11, 3: 33}
    assert _rows(store) == {"kek_check_1": 11, "kek_check_3": 33}


def test_recording_does_not_move_the_change_sequence(store: SqlStore) -> None:
    """No snapshot reads it: recording must not make every worker reload."""
    before = store.change_seq()
    with store.transaction() as tx:
        tx.deployment.record_kek_check_values({1: 11})
    with store.transaction() as tx:
        tx.deployment.record_kek_check_values({1: 11, 2: 22})
    assert store.change_seq() == before


def test_a_failed_unit_records_nothing(store: SqlStore) -> None:
    def record_then_fail() -> None:
        with store.transaction() as tx:
            tx.deployment.record_kek_check_values({1: 11})
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError, match="roll back"):
        record_then_fail()
    assert (_recorded(store), _rows(store)) == ({}, {})


def test_a_read_unit_refuses_to_record(store: SqlStore) -> None:
    with pytest.raises(StoreError, match="read-only"), store.read() as rx:
        rx.deployment.record_kek_check_values({1: 11})
    assert _rows(store) == {}


@pytest.mark.parametrize("version", [-1, True, 2.0, "2", 1 << 63])
def test_a_version_that_is_not_a_whole_number_from_0_is_refused(
    store: SqlStore, version: Any
) -> None:
    with pytest.raises(StoreError, match="whole number from 0"), store.transaction() as tx:
        tx.deployment.record_kek_check_values({3: 33, version: 22})
    assert _rows(store) == {}


def test_the_pepper_check_value_is_recorded_under_0_in_a_row_of_its_own(store: SqlStore) -> None:
    with store.transaction() as tx:
        assert tx.deployment.record_kek_check_values({0: 7, 1: 11}) == {0: 7, 1: 11}
        assert tx.deployment.record_kek_check_values({0: 8}) == {0: 7, 1: 11}  # never overwritten
    assert _recorded(store) == {0: 7, 1: 11}
    assert _rows(store) == {"pepper_check": 7, "kek_check_1": 11}


@pytest.mark.parametrize("value", [-1, 1 << 63, True, 1.0, "1", None])
def test_a_value_outside_63_bits_is_refused(store: SqlStore, value: Any) -> None:
    with pytest.raises(StoreError, match="from 0 to 2\\*\\*63 - 1"), store.transaction() as tx:
        tx.deployment.record_kek_check_values({1: 11, 2: value})
    assert _rows(store) == {}


def test_other_rows_are_not_read_as_check_values(store: SqlStore) -> None:
    """Only ``kek_check_<version>`` rows count: not the reservation row, nor a name with the
    prefix and no version after it, nor one a LIKE wildcard would match."""
    with store.transaction() as tx:
        tx.deployment.reserve_kek_version(5)
        tx.deployment.record_kek_check_values({5: 55})
    with store.engine.begin() as conn:
        for name in ("kek_check_", "kek_check_x", "kek_check_07", "kekXcheckX8", "kek_checks_9"):
            conn.execute(insert(t.store_meta).values(name=name, value=1))
    assert _recorded(store) == {5: 55}


def test_no_migration_is_needed(store: SqlStore) -> None:
    """The rows live in ``store_meta`` (name, value): the schema is the one this code ships."""
    with store.transaction() as tx:
        tx.deployment.record_kek_check_values({1: 11})
    assert revision_of(store.engine) == head_revision()
