"""Adopting audit rows an earlier version appended past the recorded head, on every backend.

Such a version appends without moving the head, and from then on every append of this one is
refused (``AuditChainAhead``). ``adopt_rows_past_head`` checks those rows link to the recorded
head and to each other, moves the head over them and records an ``audit.adopt`` event after
them, all in one unit of work: a refusal or a failure anywhere leaves the store as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import delete, select, update
from store_records import T0, Draft, participant

from store_wrapper import StoreWrapper
from uid2_operator.domain.audit import ChainHead, event_hash, verify_chain
from uid2_operator.errors import (
    AuditChainAhead,
    AuditChainBroken,
    InvalidInput,
    InvalidTransition,
    NotFound,
    StoreUnavailable,
)
from uid2_operator.services.audit_trail import ADOPT_ACTION, adopt_rows_past_head
from uid2_operator.services.context import Actor
from uid2_operator.storage import SqlStore
from uid2_operator.storage import schema as t
from uid2_operator.storage.interface import Tx

HEAD_NAMES = (t.AUDIT_HEAD_SEQ, *t.AUDIT_HEAD_HASH)
ACTOR = Actor("cli:test", request_id="adopt-1", source="cli")
AT = T0 + 5_000


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


def _rows_past_the_head(store: SqlStore) -> ChainHead:
    """Seqs 1 and 2 by this version, 3 and 4 as an earlier version appends them: without moving
    the recorded head, which stays at seq 2. Returns that head."""
    _append(store, "t1")
    kept_head = _append(store, "t2")
    kept = _head_rows(store)
    _append(store, "t3")
    _append(store, "t4")
    _set_head_rows(store, kept)
    return kept_head


def _store_state(store: SqlStore) -> tuple[int, list[tuple[int, bytes]], dict[str, int], list[int]]:
    """What a refusal must not move: change_seq, every row, the recorded head, participants."""
    with store.read() as rx:
        rows = [(e.seq, e.hash) for e in rx.audit.list_events()]
        sites = [p.site_id for p in rx.participants.list_all()]
    return store.change_seq(), rows, _head_rows(store), sites


def _create_participant(store: SqlStore, site_id: int) -> None:
    with store.transaction() as tx:
        tx.participants.add(participant(site_id))
        tx.audit.append(Draft(target_id=str(site_id)), event_hash)


def test_adopting_moves_the_head_and_chains_its_own_event_after_the_rows(store: SqlStore) -> None:
    _rows_past_the_head(store)
    with pytest.raises(AuditChainAhead):
        _create_participant(store, 1001)
    change_seq = store.change_seq()
    with store.read() as rx:
        adopted_rows = rx.audit.list_events(since_seq=2)

    adopted = adopt_rows_past_head(store, ACTOR, through_seq=4, at_ms=AT)

    with store.read() as rx:
        events = rx.audit.list_events()
        head = rx.audit.head()
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[2:4] == adopted_rows  # the adopted rows are left exactly as they were
    event = events[-1]
    assert (event.action, event.target_type, event.target_id) == (ADOPT_ACTION, "audit_trail", "4")
    assert (event.actor, event.request_id, event.source, event.at_ms) == (
        "cli:test",
        "adopt-1",
        "cli",
        AT,
    )
    assert event.before == {"head_seq": 2}
    assert event.after == {"first_seq": 3, "last_seq": 4, "count": 2}
    assert event.prev_hash == events[3].hash  # built on the adopted head
    assert head == ChainHead(5, event.hash)
    assert verify_chain(events, recorded_head=head).ok
    assert store.change_seq() == change_seq + 1
    assert (adopted.from_seq, adopted.through_seq, adopted.count, adopted.head) == (
        3,
        4,
        2,
        ChainHead(5, event.hash),
    )
    assert adopted.to_json() == {
        "adopted_from_seq": 3,
        "adopted_through_seq": 4,
        "adopted": 2,
        "head_seq": 5,
        "head_hash": event.hash.hex(),
    }

    _create_participant(store, 1001)  # audited changes work again
    with store.read() as rx:
        assert [p.site_id for p in rx.participants.list_all()] == [1001]
        assert verify_chain(rx.audit.list_events(), recorded_head=rx.audit.head()).ok
        assert rx.audit.head().seq == 6  # type: ignore[union-attr]


def test_rows_appended_again_after_an_adoption_can_be_adopted_in_turn(store: SqlStore) -> None:
    _rows_past_the_head(store)
    adopt_rows_past_head(store, ACTOR, through_seq=4, at_ms=AT)
    kept = _head_rows(store)
    _append(store, "t6")
    _set_head_rows(store, kept)

    adopted = adopt_rows_past_head(store, ACTOR, through_seq=6, at_ms=AT)

    assert (adopted.from_seq, adopted.through_seq, adopted.count, adopted.head.seq) == (6, 6, 1, 7)
    with store.read() as rx:
        assert verify_chain(rx.audit.list_events(), recorded_head=rx.audit.head()).ok


def _edit_row_3(store: SqlStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            update(t.audit_events).where(t.audit_events.c.seq == 3).values(actor="cli:mallory")
        )


def _rewrite_row_3(store: SqlStore) -> None:
    """Content and hash rewritten together: the row is consistent, the next link is not."""
    with store.read() as rx:
        (row,) = rx.audit.list_events(since_seq=2, limit=1)
    edited = replace(row, actor="cli:mallory")
    with store.engine.begin() as conn:
        conn.execute(
            update(t.audit_events)
            .where(t.audit_events.c.seq == 3)
            .values(actor=edited.actor, hash=event_hash(edited.prev_hash, 3, edited))
        )


def _delete_row_3(store: SqlStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(delete(t.audit_events).where(t.audit_events.c.seq == 3))


def _change_the_recorded_head_hash(store: SqlStore) -> None:
    """The first row past the head must link to the head as recorded, not to the row below."""
    _set_head_rows(store, {t.AUDIT_HEAD_HASH[0]: 12345})


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_edit_row_3, "at seq 3: hash does not match the event's content"),
        (_rewrite_row_3, "at seq 4: prev_hash does not match the previous event's hash"),
        (_delete_row_3, "at seq 3: expected seq 3, found 4"),
        (
            _change_the_recorded_head_hash,
            "at seq 3: prev_hash does not match the previous event's hash",
        ),
    ],
    ids=["edited row", "rewritten row", "deleted row", "other head hash"],
)
def test_rows_that_do_not_link_are_refused_naming_the_first_broken_seq(
    store: SqlStore, tamper: Callable[[SqlStore], None], message: str
) -> None:
    _rows_past_the_head(store)
    tamper(store)
    before = _store_state(store)

    with pytest.raises(AuditChainBroken) as caught:
        adopt_rows_past_head(store, ACTOR, through_seq=4, at_ms=AT)

    assert caught.value.code == "audit_chain_broken"
    assert caught.value.detail == (
        f"The audit rows past the recorded head (seq 2) do not link {message}; nothing was adopted"
    )
    assert _store_state(store) == before


@pytest.mark.parametrize("through", [3, 5, 2, 1])
def test_through_must_name_the_last_row(store: SqlStore, through: int) -> None:
    _rows_past_the_head(store)
    before = _store_state(store)

    with pytest.raises(InvalidInput) as caught:
        adopt_rows_past_head(store, ACTOR, through_seq=through, at_ms=AT)

    assert caught.value.detail == (
        f"Seq {through} is not the audit chain's last row: rows run past the recorded head "
        "(seq 2) to seq 4; adopt through seq 4, once every process of the earlier version is "
        "stopped"
    )
    assert _store_state(store) == before


def test_a_chain_that_ends_at_its_head_has_nothing_to_adopt(store: SqlStore) -> None:
    _append(store, "t1")
    _append(store, "t2")
    before = _store_state(store)

    with pytest.raises(InvalidTransition) as caught:
        adopt_rows_past_head(store, ACTOR, through_seq=2, at_ms=AT)

    assert caught.value.detail == (
        "Nothing to adopt: no audit rows exist past the recorded head (seq 2)"
    )
    assert _store_state(store) == before


def test_a_store_without_a_recorded_head_is_sent_to_db_upgrade(store: SqlStore) -> None:
    _append(store, "t1")
    with store.engine.begin() as conn:
        conn.execute(delete(t.store_meta).where(t.store_meta.c.name.in_(HEAD_NAMES)))
    before = _store_state(store)

    with pytest.raises(InvalidTransition, match=r"`uid2-operator db upgrade`"):
        adopt_rows_past_head(store, ACTOR, through_seq=1, at_ms=AT)

    assert _store_state(store) == before


class _AppendFails:
    """The audit repository of one unit, whose append writes its row, then fails."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def append(self, event: Any, hasher: Any) -> Any:
        self._inner.append(event, hasher)
        raise StoreUnavailable("database is unreachable")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _TxWithFailingAppend:
    def __init__(self, inner: Tx) -> None:
        self._inner = inner
        self.audit = _AppendFails(inner.audit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _FailingAppendStore(StoreWrapper):
    @contextmanager
    def _unit(self) -> Iterator[Any]:
        with self._inner.transaction() as tx:
            yield _TxWithFailingAppend(tx)

    def transaction(self) -> Any:
        return self._unit()


def test_a_failure_after_the_head_moved_rolls_the_move_back(store: SqlStore) -> None:
    """The move and the adoption's own event commit together or not at all."""
    _rows_past_the_head(store)
    before = _store_state(store)

    with pytest.raises(StoreUnavailable):
        adopt_rows_past_head(_FailingAppendStore(store), ACTOR, through_seq=4, at_ms=AT)

    assert _store_state(store) == before
    with pytest.raises(AuditChainAhead):  # still refused, as before the attempt
        _create_participant(store, 1001)


def test_move_head_refuses_a_head_that_is_no_stored_row(store: SqlStore) -> None:
    kept = _rows_past_the_head(store)
    before = _store_state(store)
    with store.read() as rx:
        last = rx.audit.list_events()[-1]

    for head in (ChainHead(4, kept.hash), ChainHead(9, last.hash)):
        with pytest.raises(NotFound), store.transaction() as tx:
            tx.audit.move_head(head)
    assert _store_state(store) == before


def test_move_head_refuses_to_move_back(store: SqlStore) -> None:
    first = _append(store, "t1")
    _append(store, "t2")
    before = _store_state(store)

    with pytest.raises(InvalidTransition, match=r"from seq 2 to 1"), store.transaction() as tx:
        tx.audit.move_head(first)

    assert _store_state(store) == before


def test_move_head_refuses_a_store_without_a_recorded_head(store: SqlStore) -> None:
    head = _append(store, "t1")
    with store.engine.begin() as conn:
        conn.execute(delete(t.store_meta).where(t.store_meta.c.name.in_(HEAD_NAMES)))
    before = _store_state(store)

    with pytest.raises(InvalidTransition, match=r"db upgrade"), store.transaction() as tx:
        tx.audit.move_head(head)

    assert _store_state(store) == before
