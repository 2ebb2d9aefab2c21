"""Every backend finds free site ids itself, and leaves hidden audit target types out of a page
before it counts the page's limit."""

from __future__ import annotations

import pytest
from store_records import Draft, participant, simple_hash

from uid2_operator.domain.participants import MAX_SITE_ID, MIN_SITE_ID
from uid2_operator.storage import SqlStore


def _add(store: SqlStore, *site_ids: int) -> None:
    with store.transaction() as tx:
        for site_id in site_ids:
            tx.participants.add(participant(site_id))


def test_an_empty_store_has_no_highest_site_id_and_every_id_free(store: SqlStore) -> None:
    with store.read() as rx:
        assert rx.participants.highest_site_id() is None
        assert rx.participants.lowest_free_site_id(MIN_SITE_ID, MAX_SITE_ID) == MIN_SITE_ID


@pytest.mark.parametrize(
    ("taken", "low", "high", "free"),
    [
        ((4, 5), 3, 10, 3),
        ((3, 4, 6), 3, 10, 5),
        ((3, 4, 5, 6), 3, 10, 7),
        ((3, 4, 5, 6), 3, 6, None),
        ((3, 5), 5, 6, 6),
        ((3, MAX_SITE_ID), 3, MAX_SITE_ID, 4),
        ((MAX_SITE_ID - 1, MAX_SITE_ID), MAX_SITE_ID - 1, MAX_SITE_ID, None),
        ((MAX_SITE_ID - 2, MAX_SITE_ID), MAX_SITE_ID - 2, MAX_SITE_ID, MAX_SITE_ID - 1),
        ((MAX_SITE_ID,), MAX_SITE_ID, MAX_SITE_ID, None),
    ],
)
def test_the_lowest_free_site_id(
    store: SqlStore, taken: tuple[int, ...], low: int, high: int, free: int | None
) -> None:
    _add(store, *taken)
    with store.read() as rx:
        assert rx.participants.highest_site_id() == max(taken)
        assert rx.participants.lowest_free_site_id(low, high) == free
    with store.transaction() as tx:  # a write unit asks the same
        assert tx.participants.lowest_free_site_id(low, high) == free


def test_hidden_target_types_are_left_out_before_the_limit(store: SqlStore) -> None:
    with store.transaction() as tx:
        for target_type in ("admin_token", "admin_token", "participant", "admin_token", "api_key"):
            tx.audit.append(Draft(target_type=target_type), simple_hash)

    def seqs(**filters: object) -> list[int]:
        with store.read() as rx:
            return [e.seq for e in rx.audit.list_events(**filters)]  # type: ignore[arg-type]

    hidden = frozenset({"admin_token"})
    assert seqs(exclude_target_types=hidden) == [3, 5]
    assert seqs(exclude_target_types=hidden, limit=1) == [3]
    assert seqs(exclude_target_types=hidden, since_seq=3, limit=1) == [5]
    assert seqs(exclude_target_types=hidden, target_type="admin_token") == []
    assert seqs(exclude_target_types={"admin_token", "api_key"}) == [3]
    assert seqs(exclude_target_types=()) == [1, 2, 3, 4, 5]
    assert seqs(limit=1) == [1]
