"""The store contract for the longest token lifetime a serve recorded (every backend).

``serve`` raises it at start-up and every key purge reads it: it must only ever rise, read as
None until something is recorded, and leave the change sequence alone.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from uid2_operator.errors import StoreError
from uid2_operator.storage import SqlStore
from uid2_operator.storage import schema as t

DAY_S = 86_400


def _recorded(store: SqlStore) -> int | None:
    with store.read() as rx:
        return rx.encryption_keys.longest_token_lifetime_s()


def test_nothing_recorded_reads_as_none(store: SqlStore) -> None:
    assert _recorded(store) is None
    with store.transaction() as tx:
        assert tx.encryption_keys.longest_token_lifetime_s() is None


def test_the_first_value_is_recorded(store: SqlStore) -> None:
    with store.transaction() as tx:
        assert tx.encryption_keys.raise_longest_token_lifetime(30 * DAY_S) == 30 * DAY_S
        assert tx.encryption_keys.longest_token_lifetime_s() == 30 * DAY_S
    assert _recorded(store) == 30 * DAY_S
    with store.engine.connect() as conn:
        row = conn.execute(
            select(t.store_meta.c.value).where(t.store_meta.c.name == "token_lifetime_max_s")
        ).scalar_one()
    assert row == 30 * DAY_S


def test_the_value_is_raised_and_never_lowered(store: SqlStore) -> None:
    with store.transaction() as tx:
        tx.encryption_keys.raise_longest_token_lifetime(30 * DAY_S)
    with store.transaction() as tx:
        assert tx.encryption_keys.raise_longest_token_lifetime(90 * DAY_S) == 90 * DAY_S
    assert _recorded(store) == 90 * DAY_S
    with store.transaction() as tx:
        assert tx.encryption_keys.raise_longest_token_lifetime(DAY_S) == 90 * DAY_S
        assert tx.encryption_keys.raise_longest_token_lifetime(90 * DAY_S) == 90 * DAY_S
    assert _recorded(store) == 90 * DAY_S
    with store.transaction() as tx:
        assert tx.encryption_keys.raise_longest_token_lifetime(90 * DAY_S + 1) == 90 * DAY_S + 1
    assert _recorded(store) == 90 * DAY_S + 1


def test_recording_does_not_move_the_change_sequence(store: SqlStore) -> None:
    """No snapshot reads it: raising it must not make every worker reload."""
    before = store.change_seq()
    with store.transaction() as tx:
        tx.encryption_keys.raise_longest_token_lifetime(30 * DAY_S)
    with store.transaction() as tx:
        tx.encryption_keys.raise_longest_token_lifetime(40 * DAY_S)
    assert store.change_seq() == before


def test_a_failed_unit_records_nothing(store: SqlStore) -> None:
    with store.transaction() as tx:
        tx.encryption_keys.raise_longest_token_lifetime(30 * DAY_S)

    def raise_then_fail() -> None:
        with store.transaction() as tx:
            tx.encryption_keys.raise_longest_token_lifetime(90 * DAY_S)
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError, match="roll back"):
        raise_then_fail()
    assert _recorded(store) == 30 * DAY_S


def test_a_read_unit_refuses_to_record(store: SqlStore) -> None:
    with pytest.raises(StoreError, match="read-only"), store.read() as rx:
        rx.encryption_keys.raise_longest_token_lifetime(30 * DAY_S)
    assert _recorded(store) is None


@pytest.mark.parametrize("seconds", [0, -1, True, 2.5])
def test_a_lifetime_that_is_not_a_positive_whole_number_is_refused(
    store: SqlStore, seconds: object
) -> None:
    with pytest.raises(StoreError, match="positive whole number"), store.transaction() as tx:
        tx.encryption_keys.raise_longest_token_lifetime(seconds)  # type: ignore[arg-type]
    assert _recorded(store) is None
