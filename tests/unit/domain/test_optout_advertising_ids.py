"""Every raw UID a first-level hash was opted out with stays answered by ``/v2/optout/status``.

A person who opts out again after their salt bucket rotated has a new raw UID; the one they had
at their first opt-out is still what DSPs and advertisers hold. The record keeps it (``latest``)
and the index answers every raw UID of every record with the time of its first opt-out, while
lookups by hash answer the latest time. The property test plays random opt-outs against a model
that knows nothing of records: the index built in full, built by the records that changed, and
built by a worker's own opt-outs must all give each raw UID its earliest opt-out time.
"""

from __future__ import annotations

import hashlib
from itertools import permutations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_operator.domain import optout
from uid2_operator.domain.optout import (
    MAX_EARLIER_ADVERTISING_IDS,
    OptOutIndex,
    OptOutRecord,
    latest,
    merged_record,
)
from uid2_operator.errors import InvalidInput

T0 = 1_700_000_000_000


def flh(n: int) -> bytes:
    return hashlib.sha256(b"person%d" % n).digest()


def raw_uid(n: int, salt: int) -> str:
    """The raw UID of person ``n`` under salt ``salt`` (never shared by two persons)."""
    return hashlib.sha256(b"uid%d/%d" % (n, salt)).hexdigest()[:44]


U1, U2, U3 = raw_uid(1, 0), raw_uid(1, 1), raw_uid(1, 2)
FIRST, SECOND = sorted([U1, U3])


def _stored(*records: OptOutRecord) -> OptOutRecord:
    """What a store holds once these are written, in this order (``latest`` each time)."""
    kept: OptOutRecord | None = None
    for record in records:
        kept = latest(kept, record)
    assert kept is not None
    return kept


# ------------------------------------------------------------------------------ the record


def test_an_opt_out_after_a_rotation_keeps_the_earlier_raw_uid_with_its_time() -> None:
    kept = _stored(OptOutRecord(flh(1), T0, U1), OptOutRecord(flh(1), T0 + 50, U2))
    assert (kept.timestamp_ms, kept.advertising_id) == (T0 + 50, U2)
    assert kept.earlier_advertising_ids == ((U1, T0),)
    assert kept.advertising_id_times() == {U1: T0, U2: T0 + 50}


def test_a_raw_uid_opted_out_again_keeps_its_first_time() -> None:
    kept = _stored(
        OptOutRecord(flh(1), T0, U1),
        OptOutRecord(flh(1), T0 + 10, U1),
        OptOutRecord(flh(1), T0 + 20, U2),
        OptOutRecord(flh(1), T0 + 30, U2),
        OptOutRecord(flh(1), T0 + 40),  # no raw UID known: the newest one stays
    )
    assert (kept.timestamp_ms, kept.advertising_id) == (T0 + 40, U2)
    assert kept.advertising_id_times() == {U1: T0, U2: T0 + 20}
    assert kept.earlier_advertising_ids == tuple(sorted({U1: T0, U2: T0 + 20}.items()))


def test_the_same_opt_outs_in_any_order_are_kept_alike() -> None:
    made = [
        OptOutRecord(flh(1), T0, U1),
        OptOutRecord(flh(1), T0 + 10, U2),
        OptOutRecord(flh(1), T0 + 20, U3),
        OptOutRecord(flh(1), T0 + 5, U1),
        OptOutRecord(flh(1), T0 + 15),
    ]
    kept = {_stored(*order) for order in permutations(made)}
    earlier = tuple(sorted({U1: T0, U2: T0 + 10}.items()))
    assert kept == {OptOutRecord(flh(1), T0 + 20, U3, earlier)}


def test_the_earlier_raw_uids_are_hidden_from_repr() -> None:
    kept = _stored(OptOutRecord(flh(1), T0, U1), OptOutRecord(flh(1), T0 + 50, U2))
    assert U1 not in repr(kept)
    assert U2 not in repr(kept)


@pytest.mark.parametrize(
    ("newest", "earlier", "message"),
    [
        (None, ((U1, T0),), "come with the newest"),
        (U2, ((U1, T0 + 1),), "time before the latest"),
        (U2, ((U1, -1),), "time before the latest"),
        (U2, (("", T0),), "raw UID"),
        (U2, (("x" * 65, T0),), "raw UID"),
        (U2, ((U1, T0 - 1.5),), "raw UID"),
        (U2, ((U1,),), "raw UID"),
        (U2, ((SECOND, T0), (FIRST, T0)), "sorted"),
        (U2, ((U1, T0), (U1, T0 - 1)), "sorted"),
        (U2, ((U2, T0),), "opted out before"),
    ],
)
def test_malformed_earlier_raw_uids_are_refused(
    newest: str | None, earlier: tuple[tuple[str, int], ...], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        OptOutRecord(flh(1), T0, newest, earlier)


def test_past_the_bound_the_raw_uids_first_opted_out_longest_ago_are_dropped() -> None:
    dropped = 2
    count = 1 + MAX_EARLIER_ADVERTISING_IDS + dropped  # the newest, the bound, and two more
    ids = [raw_uid(1, salt) for salt in range(count)]
    kept = _stored(*(OptOutRecord(flh(1), T0 + n, ad_id) for n, ad_id in enumerate(ids)))
    assert kept.advertising_id == ids[-1]
    assert kept.advertising_id_times() == {ids[n]: T0 + n for n in range(dropped, count)}
    assert len(kept.earlier_advertising_ids) == MAX_EARLIER_ADVERTISING_IDS
    too_many = tuple(sorted([(ids[0], T0), *kept.earlier_advertising_ids]))
    with pytest.raises(InvalidInput, match="at most"):
        OptOutRecord(flh(1), T0 + count, raw_uid(1, -1), too_many)


def test_the_newest_raw_uid_counts_apart_from_the_bound() -> None:
    times = {raw_uid(1, salt): T0 + salt for salt in range(MAX_EARLIER_ADVERTISING_IDS + 1)}
    newest = raw_uid(1, 0)  # first opted out before every other one, and opted out again last
    kept = merged_record(flh(1), T0 + 100, newest, times)
    assert kept.advertising_id_times() == times
    assert len(kept.earlier_advertising_ids) == MAX_EARLIER_ADVERTISING_IDS + 1


# ------------------------------------------------------------------------------ the index


def test_the_index_answers_every_raw_uid_with_its_first_opt_out_time() -> None:
    first = OptOutRecord(flh(1), T0, U1)
    index = OptOutIndex.of([first])
    kept = _stored(first, OptOutRecord(flh(1), T0 + 50, U2))
    for later in (index.replaced([kept]), OptOutIndex.of([kept]), index.merged([kept])):
        assert dict(later.by_advertising_id) == {U1: T0, U2: T0 + 50}
        assert dict(later.by_flh) == {flh(1): T0 + 50}
        assert later.record(flh(1)) == kept
        assert list(later) == [kept]
    assert dict(index.by_advertising_id) == {U1: T0}  # the index it came from is unchanged


def test_a_worker_s_own_opt_out_keeps_the_raw_uid_it_replaces() -> None:
    index = OptOutIndex.of([OptOutRecord(flh(1), T0, U1)])
    mine = index.merged([OptOutRecord(flh(1), T0 + 50, U2)], fold=False)
    assert dict(mine.by_advertising_id) == {U1: T0, U2: T0 + 50}


def test_a_record_that_dropped_a_raw_uid_past_the_bound_takes_it_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(optout, "MAX_EARLIER_ADVERTISING_IDS", 1)
    kept = _stored(OptOutRecord(flh(1), T0, U1), OptOutRecord(flh(1), T0 + 10, U2))
    index = OptOutIndex.of([kept])
    newer = _stored(kept, OptOutRecord(flh(1), T0 + 20, U3))
    assert newer.advertising_id_times() == {U2: T0 + 10, U3: T0 + 20}
    assert dict(index.replaced([newer]).by_advertising_id) == {U2: T0 + 10, U3: T0 + 20}
    assert dict(index.merged([OptOutRecord(flh(1), T0 + 20, U3)]).by_advertising_id) == {
        U2: T0 + 10,
        U3: T0 + 20,
    }


# One opt-out: (person, time, salt the raw UID came from, or None for no raw UID known).
opt_outs = st.tuples(
    st.integers(0, 12), st.integers(0, 1000), st.one_of(st.none(), st.integers(0, 4))
)
batches = st.lists(st.lists(opt_outs, max_size=10), min_size=1, max_size=10)


@settings(max_examples=150, deadline=None)
@given(
    batches=batches,
    fold_minimum=st.sampled_from([0, 3, 8192]),
    bound=st.sampled_from([1, 2, MAX_EARLIER_ADVERTISING_IDS]),
)
def test_every_raw_uid_answers_its_earliest_opt_out_however_the_index_was_built(
    batches: list[list[tuple[int, int, int | None]]], fold_minimum: int, bound: int
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(optout, "FOLD_MINIMUM", fold_minimum)
        patch.setattr(optout, "FOLD_DIVISOR", 2)
        patch.setattr(optout, "MAX_EARLIER_ADVERTISING_IDS", bound)
        stored: dict[bytes, OptOutRecord] = {}
        first_times: dict[str, int] = {}
        latest_times: dict[bytes, int] = {}
        incremental = OptOutIndex.empty()
        local = OptOutIndex.empty()
        for batch in batches:
            changed: dict[bytes, OptOutRecord] = {}
            made = []
            for n, at, salt in batch:
                ad_id = None if salt is None else raw_uid(n, salt)
                record = OptOutRecord(flh(n), at, ad_id)
                made.append(record)
                stored[flh(n)] = changed[flh(n)] = latest(stored.get(flh(n)), record)
                latest_times[flh(n)] = max(at, latest_times.get(flh(n), at))
                if ad_id is not None:
                    first_times[ad_id] = min(at, first_times.get(ad_id, at))
            incremental = incremental.replaced(changed.values())
            local = local.merged(made, fold=False)
            full = OptOutIndex.of(stored.values())
            for index in (incremental, local, full):
                assert dict(index.by_flh) == latest_times
                answered = dict(index.by_advertising_id)
                if bound == MAX_EARLIER_ADVERTISING_IDS:  # never reached here: nothing dropped
                    assert answered == first_times
                else:  # a raw UID dropped, then opted out again, answers from then on
                    assert all(first_times[i] <= at for i, at in answered.items())
                assert sorted(index, key=lambda r: r.first_level_hash) == sorted(
                    stored.values(), key=lambda r: r.first_level_hash
                )
                assert answered == dict(full.by_advertising_id)
