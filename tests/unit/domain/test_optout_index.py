"""The opt-out index: a layered map that changes by what changed, and equals a full rebuild.

The property test plays random sequences of opt-out batches against a model of the store (one
record per first-level hash, kept with ``latest`` as every writer does) and checks, after each
batch, that the index built from the previous one plus the batch's records answers exactly as
the index built from every record: for every identity and every raw UID ever seen.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_operator.domain import optout
from uid2_operator.domain.optout import (
    LayeredMap,
    OptOutIndex,
    OptOutRecord,
    builtin_identities,
    is_opted_out,
    latest,
)
from uid2_operator.wire.scope import IdentityType

BUILTINS = builtin_identities("first-level-salt")


def flh(n: int) -> bytes:
    return hashlib.sha256(b"flh%d" % n).digest()


def raw_uid(n: int, version: int) -> str:
    """A raw UID is derived from the FLH (and the salt it had): never shared by two FLHs."""
    return hashlib.sha256(b"uid%d/%d" % (n, version)).hexdigest()[:44]


# ------------------------------------------------------------------------ the layered map


def test_a_change_leaves_the_map_it_came_from_as_it_was() -> None:
    first = LayeredMap[bytes, int]().updated({b"a": 1, b"b": 2}, fold=False)
    second = first.updated({b"a": 3, b"c": 4, b"b": optout._GONE}, fold=False)
    assert dict(first) == {b"a": 1, b"b": 2}
    assert dict(second) == {b"a": 3, b"c": 4}
    assert len(first) == 2
    assert len(second) == 2
    assert b"b" not in second
    assert second.get(b"b") is None
    assert second.get(b"b", 7) == 7
    with pytest.raises(KeyError):
        second[b"b"]


def test_a_removal_hides_a_key_of_the_base_until_the_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optout, "FOLD_MINIMUM", 2)
    base = LayeredMap[str, int]().updated({"a": 1, "b": 2, "c": 3})
    assert base.layer_sizes == (3, 0)  # past the minimum: folded
    removed = base.updated({"a": optout._GONE})
    assert removed.layer_sizes == (3, 1)
    assert "a" not in removed
    assert list(removed) == ["b", "c"]
    assert len(removed) == 2
    again = removed.updated({"a": 5})
    assert again["a"] == 5
    assert len(again) == 3
    folded = removed.updated({"d": 4, "e": 5})
    assert folded.layer_sizes == (4, 0)
    assert dict(folded) == {"b": 2, "c": 3, "d": 4, "e": 5}


def test_a_change_copies_the_overlay_and_shares_the_base() -> None:
    big = LayeredMap[bytes, int]().updated({flh(n): n for n in range(20_000)})
    assert big.layer_sizes == (20_000, 0)
    changed = big.updated({flh(1): 99, flh(-1): 1})
    assert changed.layer_sizes == (20_000, 2)
    assert changed._base is big._base  # the frozen base is shared, not copied
    assert changed[flh(1)] == 99
    assert big[flh(1)] == 1
    assert len(changed) == 20_001


def test_the_overlay_is_folded_past_its_share_of_the_base_and_only_then() -> None:
    share = 20_000 // optout.FOLD_DIVISOR
    big = LayeredMap[bytes, int]().updated({flh(n): n for n in range(20_000)})
    under = big.updated({flh(-n): n for n in range(1, optout.FOLD_MINIMUM + 1)})
    assert under.layer_sizes == (20_000, optout.FOLD_MINIMUM)
    assert share < optout.FOLD_MINIMUM  # the minimum is what holds here
    over = under.updated({flh(-optout.FOLD_MINIMUM - 1): 1})
    assert over.layer_sizes == (20_000 + optout.FOLD_MINIMUM + 1, 0)
    held = under.updated({flh(-optout.FOLD_MINIMUM - 1): 1}, fold=False)
    assert held.layer_sizes == (20_000, optout.FOLD_MINIMUM + 1)
    assert dict(held) == dict(over)


# ------------------------------------------------------------------------ the index


def test_a_record_that_no_longer_holds_a_raw_uid_takes_it_out() -> None:
    index = OptOutIndex.of([OptOutRecord(flh(1), 10, raw_uid(1, 0))])
    later = index.replaced([OptOutRecord(flh(1), 20, raw_uid(1, 1))])
    assert dict(later.by_advertising_id) == {raw_uid(1, 1): 20}
    assert dict(index.by_advertising_id) == {raw_uid(1, 0): 10}
    cleared = later.replaced([OptOutRecord(flh(1), 30)])
    assert dict(cleared.by_advertising_id) == {}
    assert list(cleared) == [OptOutRecord(flh(1), 30)]


def test_merged_keeps_what_the_store_keeps() -> None:
    index = OptOutIndex.of([OptOutRecord(flh(1), 50, raw_uid(1, 0))])
    merged = index.merged([OptOutRecord(flh(1), 40, None), OptOutRecord(flh(2), 5, None)])
    assert merged.record(flh(1)) == OptOutRecord(flh(1), 50, raw_uid(1, 0))
    merged = merged.merged([OptOutRecord(flh(1), 60, raw_uid(1, 1))])
    assert sorted(merged, key=lambda r: r.timestamp_ms) == [
        OptOutRecord(flh(2), 5),
        OptOutRecord(flh(1), 60, raw_uid(1, 1), ((raw_uid(1, 0), 50),)),
    ]
    assert dict(merged.by_advertising_id) == {raw_uid(1, 0): 50, raw_uid(1, 1): 60}


# One opt-out written: (identity number, time, salt version or None for no raw UID).
writes = st.tuples(
    st.integers(0, 40), st.integers(0, 1000), st.one_of(st.none(), st.integers(0, 3))
)
batches = st.lists(st.lists(writes, max_size=12), min_size=1, max_size=12)


def _answers(index: OptOutIndex, ids: set[str]) -> tuple[object, ...]:
    every = [flh(n) for n in range(41)] + [b"\0" * 32, b"\xff" * 32]
    decisions = [
        (kind, h, is_opted_out(kind, h, index.by_flh, BUILTINS, at_refresh=refresh))
        for h in every
        for kind in IdentityType
        for refresh in (False, True)
    ]
    times = [index.by_flh.get(h) for h in every]
    statuses = [index.by_advertising_id.get(i) for i in sorted(ids)]
    return (
        decisions,
        times,
        statuses,
        dict(index.by_flh),
        dict(index.by_advertising_id),
        len(index),
        sorted(index, key=lambda r: r.first_level_hash),
    )


@settings(max_examples=150, deadline=None)
@given(batches=batches, fold_minimum=st.sampled_from([0, 3, 8192]))
def test_incremental_and_full_indexes_give_the_same_answers(
    batches: list[list[tuple[int, int, int | None]]], fold_minimum: int
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(optout, "FOLD_MINIMUM", fold_minimum)
        patch.setattr(optout, "FOLD_DIVISOR", 2)
        stored: dict[bytes, OptOutRecord] = {}
        seen: set[str] = set()
        incremental = OptOutIndex.empty()
        local = OptOutIndex.empty()
        for batch in batches:
            changed: dict[bytes, OptOutRecord] = {}
            made = []
            for n, at, version in batch:
                ad_id = None if version is None else raw_uid(n, version)
                record = OptOutRecord(flh(n), at, ad_id)
                made.append(record)
                stored[record.first_level_hash] = latest(stored.get(flh(n)), record)
                changed[record.first_level_hash] = stored[record.first_level_hash]
                seen.update(i for i in (ad_id,) if i is not None)
            incremental = incremental.replaced(changed.values())
            local = local.merged(made, fold=False)
            full = OptOutIndex.of(stored.values())
            assert _answers(incremental, seen) == _answers(full, seen)
            assert _answers(local, seen) == _answers(full, seen)
