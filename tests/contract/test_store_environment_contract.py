"""The store contract for the environment a store was initialised for (every backend).

Several data directories share one database; the database itself records the environment
(``local``, ``integ`` or ``prod``) its first ``init`` set it up for, so that every data
directory on it can be held to it. It reads as None until recorded, is recorded once and never
changed afterwards, is kept in ``store_meta`` as a stable integer code, and leaves the change
sequence alone.
"""

from __future__ import annotations

import pytest
from sqlalchemy import insert, select, update

from uid2_operator.domain.environments import Environment
from uid2_operator.errors import StoreError
from uid2_operator.storage import SqlStore
from uid2_operator.storage import schema as t


def _recorded(store: SqlStore) -> Environment | None:
    with store.read() as rx:
        return rx.deployment.environment()


def _row(store: SqlStore) -> int | None:
    with store.engine.connect() as conn:
        value = conn.execute(
            select(t.store_meta.c.value).where(t.store_meta.c.name == "environment")
        ).scalar_one_or_none()
    return None if value is None else int(value)


def test_nothing_recorded_reads_as_none(store: SqlStore) -> None:
    assert _recorded(store) is None
    with store.transaction() as tx:
        assert tx.deployment.environment() is None
    assert _row(store) is None


@pytest.mark.parametrize(
    ("environment", "code"),
    [(Environment.LOCAL, 1), (Environment.INTEG, 2), (Environment.PROD, 3)],
)
def test_the_first_environment_is_recorded_as_its_code(
    store: SqlStore, environment: Environment, code: int
) -> None:
    with store.transaction() as tx:
        assert tx.deployment.record_environment(environment) is environment
        assert tx.deployment.environment() is environment
    assert _recorded(store) is environment
    assert _row(store) == code


def test_a_recorded_environment_never_changes(store: SqlStore) -> None:
    with store.transaction() as tx:
        tx.deployment.record_environment(Environment.INTEG)
    for other in (Environment.LOCAL, Environment.PROD, Environment.INTEG):
        with store.transaction() as tx:
            assert tx.deployment.record_environment(other) is Environment.INTEG
    assert _recorded(store) is Environment.INTEG
    assert _row(store) == 2


def test_recording_does_not_move_the_change_sequence(store: SqlStore) -> None:
    """No snapshot reads it: recording it must not make every worker reload."""
    before = store.change_seq()
    with store.transaction() as tx:
        tx.deployment.record_environment(Environment.PROD)
    with store.transaction() as tx:
        tx.deployment.record_environment(Environment.PROD)
    assert store.change_seq() == before


def test_a_failed_unit_records_nothing(store: SqlStore) -> None:
    def record_then_fail() -> None:
        with store.transaction() as tx:
            tx.deployment.record_environment(Environment.INTEG)
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError, match="roll back"):
        record_then_fail()
    assert _recorded(store) is None
    with store.transaction() as tx:
        assert tx.deployment.record_environment(Environment.LOCAL) is Environment.LOCAL


def test_a_read_unit_refuses_to_record(store: SqlStore) -> None:
    with pytest.raises(StoreError, match="read-only"), store.read() as rx:
        rx.deployment.record_environment(Environment.INTEG)
    assert _recorded(store) is None


def test_an_unknown_code_is_refused_rather_than_guessed(store: SqlStore) -> None:
    """Only a newer version could have written one: nothing here may read it as some
    environment it happens to know."""
    with store.engine.begin() as conn:
        conn.execute(insert(t.store_meta).values(name="environment", value=9))
    with pytest.raises(StoreError, match=r"environment this version does not know \(9\)"):
        _recorded(store)
    with store.engine.begin() as conn:
        conn.execute(
            update(t.store_meta).where(t.store_meta.c.name == "environment").values(value=3)
        )
    assert _recorded(store) is Environment.PROD
