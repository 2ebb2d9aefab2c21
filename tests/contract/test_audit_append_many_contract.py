"""Appending many audit events at once (``AuditRepository.append_many``), on every backend: the
chain it stores is the one that appending the same events one by one stores, whatever state the
chain is in, and it verifies afterwards."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import pytest
from sqlalchemy import delete
from store_records import T0, Draft

from uid2_operator.domain.audit import (
    EMPTY_HEAD,
    AuditDraft,
    AuditEvent,
    ChainHead,
    Outcome,
    event_hash,
    verify_chain,
)
from uid2_operator.storage import SqlStore
from uid2_operator.storage import schema as t

DRAFTS: tuple[Draft, ...] = (
    Draft(target_id="a", after={"roles": ["GENERATOR"], "n": 1}),
    Draft(target_id="b", before={"roles": ["MAPPER"]}, after={"name": "Zoë ✓"}, site_id=None),
    Draft(target_id="c", outcome=Outcome.DENIED, after={"code": "forbidden"}, request_id="r-1"),
    Draft(target_id="d", at_ms=T0 + 5, source=None, actor="operator"),
    *(Draft(target_id=f"e{i}", after={"i": i}) for i in range(20)),
)

ChainState = Callable[[SqlStore], None]


def _appended(store: SqlStore, count: int) -> None:
    with store.transaction() as tx:
        for i in range(count):
            tx.audit.append(Draft(target_id=f"before-{i}"), event_hash)


def _empty(store: SqlStore) -> None:
    pass


def _three_events(store: SqlStore) -> None:
    _appended(store, 3)


def _deleted_tail(store: SqlStore) -> None:
    """The recorded head is past the last row: the next events build on the head (a gap)."""
    _appended(store, 4)
    with store.engine.begin() as conn:
        conn.execute(delete(t.audit_events).where(t.audit_events.c.seq >= 3))


def _no_recorded_head(store: SqlStore) -> None:
    """A broken chain written before heads were recorded (the upgrade records none for it): the
    next events build on its last row."""
    _appended(store, 3)
    names = (t.AUDIT_HEAD_SEQ, *t.AUDIT_HEAD_HASH)
    with store.engine.begin() as conn:
        conn.execute(delete(t.store_meta).where(t.store_meta.c.name.in_(names)))
        conn.execute(delete(t.audit_events).where(t.audit_events.c.seq == 2))


CHAIN_STATES = [
    pytest.param(_empty, id="empty chain"),
    pytest.param(_three_events, id="non-empty chain"),
    pytest.param(_deleted_tail, id="deleted tail"),
    pytest.param(_no_recorded_head, id="no recorded head"),
]


class _Undo(Exception):
    """Rolls a unit of work back, carrying out what it saw."""

    def __init__(self, seen: tuple[list[AuditEvent], list[AuditEvent], ChainHead | None]) -> None:
        super().__init__("rolled back on purpose")
        self.seen = seen


def _one_by_one(
    store: SqlStore, drafts: Sequence[Draft]
) -> tuple[list[AuditEvent], list[AuditEvent], ChainHead | None]:
    """What ``append`` once per draft returns and stores (events and recorded head), seen from
    inside a unit of work that is then rolled back, so the store is left as it was."""
    try:
        with store.transaction() as tx:
            placed = [tx.audit.append(draft, event_hash) for draft in drafts]
            raise _Undo((placed, tx.audit.list_events(), tx.audit.head()))
    except _Undo as undo:
        return undo.seen


def _stored(store: SqlStore) -> tuple[list[AuditEvent], ChainHead | None]:
    with store.read() as rx:
        return rx.audit.list_events(), rx.audit.head()


@pytest.mark.parametrize("state", CHAIN_STATES)
def test_append_many_stores_the_chain_appending_one_by_one_stores(
    store: SqlStore, state: ChainState
) -> None:
    state(store)
    stored_before, _ = _stored(store)
    expected_placed, expected_events, expected_head = _one_by_one(store, DRAFTS)
    assert _stored(store)[0] == stored_before  # the one-by-one run left nothing behind

    with store.transaction() as tx:
        placed = tx.audit.append_many(DRAFTS, event_hash)

    events, head = _stored(store)
    assert placed == expected_placed
    assert [(e.seq, e.prev_hash, e.hash) for e in placed] == [
        (e.seq, e.prev_hash, e.hash) for e in expected_placed
    ]
    assert events == expected_events == [*stored_before, *placed]
    assert head == expected_head == ChainHead(placed[-1].seq, placed[-1].hash)
    assert [e.seq for e in placed] == list(range(placed[0].seq, placed[0].seq + len(DRAFTS)))
    assert [e.target_id for e in placed] == [d.target_id for d in DRAFTS]


@pytest.mark.parametrize("state", [CHAIN_STATES[0], CHAIN_STATES[1]])
def test_a_chain_appended_many_at_once_verifies(store: SqlStore, state: ChainState) -> None:
    state(store)
    with store.transaction() as tx:
        tx.audit.append_many(DRAFTS[:10], event_hash)
    with store.transaction() as tx:
        tx.audit.append(Draft(target_id="single"), event_hash)
        tx.audit.append_many(DRAFTS[10:], event_hash)
    events, head = _stored(store)
    verdict = verify_chain(events, recorded_head=EMPTY_HEAD if head is None else head)
    assert verdict.ok, verdict.problem
    assert head is not None
    assert verdict.head_seq == head.seq == len(events)


def test_append_many_is_what_the_hasher_makes_of_each_link(store: SqlStore) -> None:
    """The hasher sees each event as stored, with the seq and prev_hash of its place."""
    _three_events(store)
    seen: list[tuple[bytes, int, AuditEvent]] = []

    def recording_hash(prev_hash: bytes, seq: int, event: AuditEvent) -> bytes:
        seen.append((prev_hash, seq, event))
        return event_hash(prev_hash, seq, event)

    with store.transaction() as tx:
        placed = tx.audit.append_many(DRAFTS[:3], recording_hash)
    assert [(prev, seq) for prev, seq, _ in seen] == [(e.prev_hash, e.seq) for e in placed]
    assert [event for _, _, event in seen] == [replace(e, hash=b"") for e in placed]


@pytest.mark.parametrize("state", [CHAIN_STATES[0], CHAIN_STATES[1]])
def test_append_many_of_nothing_writes_nothing(store: SqlStore, state: ChainState) -> None:
    state(store)
    before = _stored(store)
    seq_before = store.change_seq()
    with store.transaction() as tx:
        assert tx.audit.append_many([], event_hash) == []
    assert _stored(store) == before
    assert store.change_seq() == seq_before


def test_refused_events_alone_move_no_change_seq(store: SqlStore) -> None:
    refused = [
        AuditDraft(
            at_ms=T0,
            actor="admin:x",
            action="key.create",
            target_type="api_key",
            target_id=f"k{i}",
            site_id=None,
            before=None,
            after={"code": "forbidden"},
            request_id=None,
            source=None,
            outcome=outcome,
        )
        for i, outcome in enumerate((Outcome.DENIED, Outcome.FAILED))
    ]
    seq = store.change_seq()
    with store.transaction() as tx:
        tx.audit.append_many(refused, event_hash)
    assert store.change_seq() == seq
    with store.transaction() as tx:
        tx.audit.append_many([*refused, Draft(target_id="done")], event_hash)
    assert store.change_seq() == seq + 1
    assert len(_stored(store)[0]) == 5


def test_a_rolled_back_append_many_leaves_the_chain_and_head_alone(store: SqlStore) -> None:
    _three_events(store)
    before = _stored(store)

    def failing_use_case() -> None:
        with store.transaction() as tx:
            tx.audit.append_many(DRAFTS, event_hash)
            raise RuntimeError("the use case failed after writing its audit rows")

    with pytest.raises(RuntimeError):
        failing_use_case()
    assert _stored(store) == before
    with store.transaction() as tx:
        assert tx.audit.append_many(DRAFTS[:1], event_hash)[0].seq == 4
