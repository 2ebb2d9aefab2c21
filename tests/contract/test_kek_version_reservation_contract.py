"""The store contract for key-encryption key version numbers given to keyring files (every
backend).

Several keyring files (one per data directory) share one store. A version added inactive seals
nothing, so the store's sealed items cannot tell the next file that its number is taken; the
store records the highest version ever given instead. It reads as 0 until recorded (a store from
an earlier version has no row), only rises, is kept in ``store_meta``, is written only by a write
unit, and leaves the change sequence alone.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from uid2_operator.errors import StoreError
from uid2_operator.storage import SqlStore
from uid2_operator.storage import schema as t


def _highest(store: SqlStore) -> int:
    with store.read() as rx:
        return rx.deployment.highest_kek_version()


def _row(store: SqlStore) -> int | None:
    with store.engine.connect() as conn:
        value = conn.execute(
            select(t.store_meta.c.value).where(t.store_meta.c.name == "kek_version_max")
        ).scalar_one_or_none()
    return None if value is None else int(value)


def test_nothing_reserved_reads_as_zero(store: SqlStore) -> None:
    assert _highest(store) == 0
    with store.transaction() as tx:
        assert tx.deployment.highest_kek_version() == 0
    assert _row(store) is None


def test_a_reservation_is_recorded_and_read_back(store: SqlStore) -> None:
    with store.transaction() as tx:
        assert tx.deployment.reserve_kek_version(2) == 2
        assert tx.deployment.highest_kek_version() == 2
    assert _highest(store) == 2
    assert _row(store) == 2


def test_the_reserved_version_only_rises(store: SqlStore) -> None:
    with store.transaction() as tx:
        tx.deployment.reserve_kek_version(3)
    with store.transaction() as tx:
        assert tx.deployment.reserve_kek_version(2) == 3
        assert tx.deployment.reserve_kek_version(3) == 3
    assert _highest(store) == 3
    with store.transaction() as tx:
        assert tx.deployment.reserve_kek_version(7) == 7
    assert (_highest(store), _row(store)) == (7, 7)


def test_reserving_does_not_move_the_change_sequence(store: SqlStore) -> None:
    """No snapshot reads it: reserving must not make every worker reload."""
    before = store.change_seq()
    with store.transaction() as tx:
        tx.deployment.reserve_kek_version(2)
    with store.transaction() as tx:
        tx.deployment.reserve_kek_version(5)
    assert store.change_seq() == before


def test_a_failed_unit_reserves_nothing(store: SqlStore) -> None:
    def reserve_then_fail() -> None:
        with store.transaction() as tx:
            tx.deployment.reserve_kek_version(4)
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError, match="roll back"):
        reserve_then_fail()
    assert (_highest(store), _row(store)) == (0, None)


def test_a_read_unit_refuses_to_reserve(store: SqlStore) -> None:
    with pytest.raises(StoreError, match="read-only"), store.read() as rx:
        rx.deployment.reserve_kek_version(2)
    assert _row(store) is None


@pytest.mark.parametrize("version", [0, -1, True, 2.0, "2"])
def test_a_version_that_is_not_a_positive_whole_number_is_refused(
    store: SqlStore, version: Any
) -> None:
    with pytest.raises(StoreError, match="positive whole number"), store.transaction() as tx:
        tx.deployment.reserve_kek_version(version)
    assert _row(store) is None
