"""Upgrading a store an earlier version wrote, on every backend: a chain that kept no head gets
one recorded when its links verify (and only then), and rows an earlier version appends past the
recorded head stop this version's appends with a typed refusal instead of a seq clash."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import delete, insert, select, update
from store_records import Draft, participant

from uid2_operator.domain.audit import EMPTY_HEAD, ChainHead, event_hash, verify_chain
from uid2_operator.errors import AuditChainAhead
from uid2_operator.storage import SqlStore, upgrade
from uid2_operator.storage import schema as t

HEAD_NAMES = (t.AUDIT_HEAD_SEQ, *t.AUDIT_HEAD_HASH)


def _append(store: SqlStore, target_id: str) -> ChainHead:
    with store.transaction() as tx:
        placed = tx.audit.append(Draft(target_id=target_id), event_hash)
    return ChainHead(placed.seq, placed.hash)


def _head_rows(store: SqlStore) -> dict[str, int]:
    m = t.store_meta.c
    with store.engine.connect() as conn:
        rows = conn.execute(select(m.name, m.value).where(m.name.in_(HEAD_NAMES))).all()
    return {row.name: int(row.value) for row in rows}


def _set_head_rows(store: SqlStore, rows: dict[str, int]) -> None:
    m = t.store_meta.c
    with store.engine.begin() as conn:
        for name, value in rows.items():
            conn.execute(update(t.store_meta).where(m.name == name).values(value=value))


def _forget_head(store: SqlStore) -> None:
    """What a store written before heads were recorded looks like: rows, and no head."""
    with store.engine.begin() as conn:
        conn.execute(delete(t.store_meta).where(t.store_meta.c.name.in_(HEAD_NAMES)))


def _all_meta(store: SqlStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(t.store_meta.c.name, t.store_meta.c.value)).all()
    return {row.name: int(row.value) for row in rows}


def _verdict_with_recorded_head(store: SqlStore) -> tuple[bool, int | None, str | None]:
    with store.read() as rx:
        recorded = rx.audit.head()
        verdict = verify_chain(
            rx.audit.list_events(), recorded_head=EMPTY_HEAD if recorded is None else recorded
        )
    return verdict.ok, verdict.first_bad_seq, verdict.problem


def test_upgrade_records_the_head_of_an_intact_chain_that_has_none(
    store: SqlStore, store_url: str
) -> None:
    heads = [_append(store, f"t{i}") for i in range(3)]
    _forget_head(store)
    assert _verdict_with_recorded_head(store) == (
        False,
        1,
        "no chain head is recorded, yet the chain reaches seq 3",
    )

    upgrade(store_url)

    with store.read() as rx:
        assert rx.audit.head() == heads[-1]
    assert _verdict_with_recorded_head(store) == (True, None, None)
    assert _append(store, "after").seq == 4  # the next append builds on it
    assert _verdict_with_recorded_head(store) == (True, None, None)


def _edit_a_row(store: SqlStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            update(t.audit_events).where(t.audit_events.c.seq == 2).values(actor="cli:mallory")
        )


def _delete_a_row(store: SqlStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(delete(t.audit_events).where(t.audit_events.c.seq == 2))


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (_edit_a_row, "hash does not match the event's content"),
        (_delete_a_row, "expected seq 2, found 3"),
    ],
    ids=["edited row", "deleted row"],
)
def test_upgrade_records_no_head_for_a_broken_chain(
    store: SqlStore, store_url: str, tamper: Callable[[SqlStore], None], problem: str
) -> None:
    for i in range(4):
        _append(store, f"t{i}")
    _forget_head(store)
    tamper(store)

    upgrade(store_url)

    assert _head_rows(store) == {}
    assert _verdict_with_recorded_head(store) == (False, 2, problem)


def test_a_second_upgrade_changes_nothing_more(store: SqlStore, store_url: str) -> None:
    for i in range(2):
        _append(store, f"t{i}")
    _forget_head(store)
    upgrade(store_url)
    after_first = _all_meta(store)
    assert set(HEAD_NAMES) <= set(after_first)

    upgrade(store_url)

    assert _all_meta(store) == after_first


def test_upgrade_leaves_a_recorded_head_alone_even_with_rows_past_it(
    store: SqlStore, store_url: str
) -> None:
    """Rows past the recorded head (an earlier version appended them): the upgrade does not move
    the head over them, so verification goes on reporting them."""
    _append(store, "t0")
    kept = _head_rows(store)
    _append(store, "t1")
    _set_head_rows(store, kept)

    upgrade(store_url)

    assert _head_rows(store) == kept
    assert _verdict_with_recorded_head(store) == (
        False,
        2,
        "the chain goes on past the recorded head (seq 1) to seq 2",
    )


def test_upgrade_of_a_store_without_events_records_no_head(store: SqlStore, store_url: str) -> None:
    upgrade(store_url)
    assert _head_rows(store) == {}


def _store_state(store: SqlStore) -> tuple[int, list[int], dict[str, int], list[int]]:
    with store.read() as rx:
        seqs = [e.seq for e in rx.audit.list_events()]
        sites = [p.site_id for p in rx.participants.list_all()]
    return store.change_seq(), seqs, _head_rows(store), sites


def test_an_append_refuses_a_chain_that_goes_past_the_recorded_head(store: SqlStore) -> None:
    """An earlier version appended rows without moving the head: the next seq is taken. The
    append refuses with a typed error naming both seqs and changes nothing."""
    for i in range(2):
        _append(store, f"t{i}")
    kept = _head_rows(store)
    for i in range(2, 4):
        _append(store, f"t{i}")
    _set_head_rows(store, kept)  # rows 3 and 4 written without moving the head
    before = _store_state(store)

    def create_participant() -> None:
        with store.transaction() as tx:
            tx.participants.add(participant(1001))
            tx.audit.append(Draft(target_id="1001"), event_hash)

    with pytest.raises(AuditChainAhead) as caught:
        create_participant()

    assert caught.value.code == "audit_chain_ahead"
    assert caught.value.detail == (
        "Audit rows exist past the recorded head (seq 4 > 2); a process of an earlier version "
        "may be writing to this database; stop it, then run `uid2-operator audit verify`, and "
        "`uid2-operator audit adopt --through 4` to keep its rows"
    )
    assert _store_state(store) == before


def test_append_many_refuses_a_chain_that_goes_past_the_recorded_head(store: SqlStore) -> None:
    _append(store, "t0")
    kept = _head_rows(store)
    _append(store, "t1")
    _set_head_rows(store, kept)
    before = _store_state(store)

    def append_two() -> None:
        with store.transaction() as tx:
            tx.audit.append_many([Draft(target_id="a"), Draft(target_id="b")], event_hash)

    with pytest.raises(AuditChainAhead, match=r"seq 2 > 1"):
        append_two()

    assert _store_state(store) == before


def test_a_row_inserted_past_the_head_by_hand_is_refused_too(store: SqlStore) -> None:
    """Not a linked row at all (any row with a higher seq): the seq is taken all the same."""
    placed = _append(store, "t0")
    with store.engine.begin() as conn:
        row = conn.execute(select(t.audit_events).where(t.audit_events.c.seq == 1)).one()
        values = dict(row._mapping)
        values.update(seq=7, prev_hash=placed.hash)
        conn.execute(insert(t.audit_events).values(**values))

    with pytest.raises(AuditChainAhead, match=r"seq 7 > 1"):
        _append(store, "t1")
