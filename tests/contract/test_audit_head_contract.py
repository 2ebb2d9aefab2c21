"""The recorded audit chain head, on every backend: written with each append, read back exactly,
and the base of the next append, so that a deleted tail stays visible."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, func, select
from store_records import Draft, simple_hash

from uid2_operator.domain.audit import ChainHead, event_hash, verify_chain
from uid2_operator.errors import AuditHeadMissing, AuditHeadUnreadable
from uid2_operator.storage import SqlStore, upgrade
from uid2_operator.storage import schema as t


def _append(store: SqlStore, target_id: str) -> ChainHead:
    with store.transaction() as tx:
        placed = tx.audit.append(Draft(target_id=target_id), event_hash)
    return ChainHead(placed.seq, placed.hash)


def _delete_events_from(store: SqlStore, seq: int) -> None:
    with store.engine.begin() as conn:
        conn.execute(delete(t.audit_events).where(t.audit_events.c.seq >= seq))


def test_a_new_store_records_no_head(store: SqlStore) -> None:
    with store.read() as rx:
        assert rx.audit.head() is None


def test_every_append_records_its_event_as_the_head(store: SqlStore) -> None:
    heads = [_append(store, f"t{i}") for i in range(3)]
    assert [h.seq for h in heads] == [1, 2, 3]
    with store.read() as rx:
        assert rx.audit.head() == heads[-1]
        assert verify_chain(rx.audit.list_events(), recorded_head=rx.audit.head()).ok


@pytest.mark.parametrize(
    "digest",
    [
        b"\xff" * 32,
        b"\x80" + bytes(31),
        bytes(range(0x70, 0x90)),
        b"\x7f" + b"\xff" * 7 + bytes(8) + b"\x80" + bytes(7) + b"\x01" * 8,
    ],
    ids=["all ones", "sign bit", "ascending", "mixed words"],
)
def test_the_head_hash_round_trips_every_bit(store: SqlStore, digest: bytes) -> None:
    """The hash is held as four signed 64-bit words: sign bits and zero words must survive."""
    with store.transaction() as tx:
        tx.audit.append(Draft(), lambda _prev, _seq, _event: digest)
    with store.read() as rx:
        assert rx.audit.head() == ChainHead(1, digest)
    with store.transaction() as tx:
        assert tx.audit.append(Draft(target_id="next"), simple_hash).prev_hash == digest


def test_a_rolled_back_append_leaves_the_head_alone(store: SqlStore) -> None:
    kept = _append(store, "kept")

    def failing_use_case() -> None:
        with store.transaction() as tx:
            tx.audit.append(Draft(target_id="lost"), event_hash)
            raise RuntimeError("the use case failed after writing its audit row")

    with pytest.raises(RuntimeError):
        failing_use_case()
    with store.read() as rx:
        assert rx.audit.head() == kept


def test_a_deleted_tail_stays_detectable_after_later_appends(store: SqlStore) -> None:
    heads = [_append(store, f"t{i}") for i in range(4)]
    _delete_events_from(store, 3)
    with store.read() as rx:
        assert rx.audit.head() == heads[-1]
        verdict = verify_chain(rx.audit.list_events(), recorded_head=rx.audit.head())
    assert (verdict.ok, verdict.first_bad_seq) == (False, 3)

    # The next append builds on the recorded head, not on the last surviving row: a gap remains.
    assert _append(store, "after").seq == 5
    with store.read() as rx:
        events = rx.audit.list_events()
        assert [e.seq for e in events] == [1, 2, 5]
        assert events[-1].prev_hash == heads[-1].hash
        verdict = verify_chain(events, recorded_head=rx.audit.head())
    assert (verdict.ok, verdict.first_bad_seq, verdict.problem) == (
        False,
        3,
        "expected seq 3, found 5",
    )


def _forget_head(store: SqlStore) -> tuple[str, ...]:
    names = (t.AUDIT_HEAD_SEQ, *t.AUDIT_HEAD_HASH)
    with store.engine.begin() as conn:
        conn.execute(delete(t.store_meta).where(t.store_meta.c.name.in_(names)))
    return names


def _state(store: SqlStore) -> tuple[int, list[int], ChainHead | None]:
    with store.read() as rx:
        return store.change_seq(), [e.seq for e in rx.audit.list_events()], rx.audit.head()


def test_a_chain_that_verifies_without_its_head_refuses_to_grow(
    store: SqlStore, store_url: str
) -> None:
    """Every append records the head and ``db upgrade`` records that of an intact chain an
    earlier version wrote, so an intact chain without one lost it outside uid2-operator, perhaps
    with its newest rows: an append would record a head over the cut and hide it."""
    kept = [_append(store, f"t{i}") for i in range(4)][1]
    _delete_events_from(store, 3)
    _forget_head(store)
    before = _state(store)

    with pytest.raises(AuditHeadMissing) as caught:
        _append(store, "next")

    assert caught.value.code == "audit_head_missing"
    assert caught.value.detail.startswith(
        "No audit chain head is recorded, yet the chain verifies through seq 2: the head was "
        "removed outside uid2-operator"
    )
    assert _state(store) == before

    upgrade(store_url)  # what the refusal says to run, once the chain was looked at
    with store.read() as rx:
        assert rx.audit.head() == kept
    assert _append(store, "next").seq == 3


def test_a_broken_chain_without_a_head_builds_on_its_last_row(store: SqlStore) -> None:
    """A chain an earlier version wrote and broke gets no head from the upgrade (one would not
    mend it): appends go on after its last row, recording a head, and the break stays visible."""
    heads = [_append(store, f"t{i}") for i in range(3)]
    names = _forget_head(store)
    with store.engine.begin() as conn:
        conn.execute(delete(t.audit_events).where(t.audit_events.c.seq == 2))
    placed = _append(store, "next")
    assert placed.seq == 4
    with store.read() as rx:
        assert rx.audit.head() == placed
        events = rx.audit.list_events()
        assert events[-1].prev_hash == heads[-1].hash
        verdict = verify_chain(events, recorded_head=rx.audit.head())
    assert (verdict.ok, verdict.first_bad_seq) == (False, 2)
    with store.engine.connect() as conn:
        count = conn.execute(
            select(func.count()).select_from(t.store_meta).where(t.store_meta.c.name.in_(names))
        ).scalar_one()
    assert count == len(names)


@pytest.mark.parametrize("removed", [t.AUDIT_HEAD_HASH[3], t.AUDIT_HEAD_SEQ])
def test_a_head_missing_a_part_refuses_appends_and_is_left_by_the_upgrade(
    store: SqlStore, store_url: str, removed: str
) -> None:
    """Read with the missing word as zero, the head would let the next event link to a wrong
    hash and then be rewritten whole: the break would move into the chain for good."""
    for i in range(2):
        _append(store, f"t{i}")
    with store.engine.begin() as conn:
        conn.execute(delete(t.store_meta).where(t.store_meta.c.name == removed))
    before = _state_without_head(store)

    with pytest.raises(AuditHeadUnreadable):
        _append(store, "next")
    upgrade(store_url)  # records no head over it: verification goes on reporting it

    assert _state_without_head(store) == before
    with store.engine.connect() as conn:
        names = conn.execute(
            select(t.store_meta.c.name).where(t.store_meta.c.name.like("audit_head%"))
        ).scalars()
        assert removed not in set(names)


def _state_without_head(store: SqlStore) -> tuple[int, list[int]]:
    with store.read() as rx:
        return store.change_seq(), [e.seq for e in rx.audit.list_events()]
