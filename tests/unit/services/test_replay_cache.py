"""The compact replay cache: refusals while an envelope could still pass, slices packed into
sorted arrays and dropped whole, the cap, and agreement with a plain model of the rule."""

from __future__ import annotations

from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_operator.services import replay
from uid2_operator.services.replay import COLD_AFTER_MS, SLICE_MS, ReplayCache

T0 = 1_700_000_000_000
MAX_PAST_MS = 120_000


def _nonce(n: int) -> bytes:
    return n.to_bytes(8, "big")


def test_an_envelope_is_refused_again_until_its_timestamp_leaves_the_window() -> None:
    cache = ReplayCache(max_past_ms=MAX_PAST_MS)
    assert cache.first_use("k", _nonce(1), T0, T0)
    assert not cache.first_use("k", _nonce(1), T0, T0 + 5)
    assert not cache.first_use("k", _nonce(1), T0, T0 + MAX_PAST_MS)
    # Past the window the timestamp check refuses it; the cache neither refuses nor stores it.
    assert cache.first_use("k", _nonce(1), T0, T0 + MAX_PAST_MS + 1)
    assert len(cache) == 1
    # Its slice is dropped whole once every timestamp in it has left the window.
    assert cache.first_use("k", _nonce(2), T0 + MAX_PAST_MS + SLICE_MS, T0 + MAX_PAST_MS + SLICE_MS)
    assert len(cache) == 1


def test_the_same_nonce_of_another_key_is_not_a_replay() -> None:
    cache = ReplayCache(max_past_ms=MAX_PAST_MS)
    assert cache.first_use("k1", _nonce(7), T0, T0)
    assert cache.first_use("k2", _nonce(7), T0, T0)
    assert not cache.first_use("k2", _nonce(7), T0, T0)
    assert len(cache) == 2


def test_a_nonce_reused_under_a_timestamp_of_another_slice_is_not_refused() -> None:
    # Only the client (it holds the secret) can seal the same nonce under another timestamp.
    cache = ReplayCache(max_past_ms=MAX_PAST_MS)
    assert cache.first_use("k", _nonce(3), T0, T0)
    assert cache.first_use("k", _nonce(3), T0 + SLICE_MS, T0 + SLICE_MS)


def test_cold_slices_are_packed_and_still_refuse_replays() -> None:
    cache = ReplayCache(max_past_ms=MAX_PAST_MS)
    stamp = (T0 // SLICE_MS) * SLICE_MS
    for n in range(1000):
        assert cache.first_use(f"k{n % 7}", _nonce(n), stamp + n % SLICE_MS, stamp)
    later = stamp + SLICE_MS + COLD_AFTER_MS + SLICE_MS
    assert cache.first_use("k0", _nonce(10**6), later, later)  # the clock moves on: packing
    packed = cache._slices[stamp // SLICE_MS]
    assert (len(packed.packed), len(packed.recent)) == (1000, 0)
    assert list(packed.packed) == sorted(packed.packed)
    for n in range(1000):
        assert not cache.first_use(f"k{n % 7}", _nonce(n), stamp + n % SLICE_MS, later)
    assert cache.first_use("k1", _nonce(0), stamp, later)  # k0's nonce under another key
    assert len(cache) == 1002


def test_late_arrivals_in_a_cold_slice_are_merged_into_its_array() -> None:
    cache = ReplayCache(max_past_ms=MAX_PAST_MS)
    stamp = (T0 // SLICE_MS) * SLICE_MS
    assert cache.first_use("k", _nonce(0), stamp, stamp)
    now = stamp + 4 * SLICE_MS + COLD_AFTER_MS
    late = 600
    for n in range(1, late + 1):
        assert cache.first_use("k", _nonce(n), stamp + 1, now)
    where = cache._slices[stamp // SLICE_MS]
    assert len(where.recent) < late
    assert len(where) == late + 1
    assert sorted(where.packed) == list(where.packed)
    assert set(where.packed).isdisjoint(where.recent)
    for n in range(late + 1):
        assert not cache.first_use("k", _nonce(n), stamp + 1, now)


def test_slices_ahead_of_the_clock_are_merged_like_late_ones() -> None:
    cache = ReplayCache(max_past_ms=MAX_PAST_MS)
    ahead = T0 + 10 * SLICE_MS
    for n in range(600):
        assert cache.first_use("k", _nonce(n), ahead, T0)
    where = cache._slices[ahead // SLICE_MS]
    assert len(where.packed) > 0
    assert len(where) == 600
    for n in range(600):
        assert not cache.first_use("k", _nonce(n), ahead, T0)
    # The slices around the clock's own are left as sets (no merge on the hot path).
    for n in range(600):
        assert cache.first_use("k", _nonce(n), T0, T0)
    assert len(cache._slices[T0 // SLICE_MS].packed) == 0


def test_the_cap_drops_the_oldest_slice_whole() -> None:
    cache = ReplayCache(max_past_ms=MAX_PAST_MS, max_entries=4)
    now = T0 + 4 * SLICE_MS
    for n in range(4):  # slices 0, 0, 1, 1
        assert cache.first_use("k", _nonce(n), T0 + (n // 2) * SLICE_MS, now)
    assert len(cache) == 4
    # A new entry in an existing slice: the oldest slice goes (two entries).
    assert cache.first_use("k", _nonce(9), T0 + SLICE_MS, now)
    assert len(cache) == 3
    assert cache.first_use("k", _nonce(0), T0, now)  # forgotten
    assert not cache.first_use("k", _nonce(2), T0 + SLICE_MS, now)
    # A new slice at the cap: the oldest slice (T0, one entry) goes.
    assert cache.first_use("k", _nonce(5), T0 + 2 * SLICE_MS, now)
    assert len(cache) == 4
    assert cache.first_use("k", _nonce(0), T0, now)
    # When the slice to insert into is itself the oldest, it is dropped and started again.
    full = ReplayCache(max_past_ms=MAX_PAST_MS, max_entries=2)
    assert full.first_use("k", _nonce(1), T0, T0)
    assert full.first_use("k", _nonce(2), T0, T0)
    assert full.first_use("k", _nonce(3), T0, T0)
    assert len(full) == 1


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        ReplayCache(max_past_ms=1, max_entries=0)
    cache = ReplayCache(max_past_ms=1)
    for nonce in (b"", b"1234567", b"123456789"):
        with pytest.raises(ValueError, match="8 bytes"):
            cache.first_use("k", nonce, T0, T0)


def test_the_key_masks_are_bounded_and_deterministic() -> None:
    cache = ReplayCache(max_past_ms=MAX_PAST_MS, mask_key=b"k" * 16)
    with mock.patch.object(replay, "_MAX_MASKS", 3):
        for n in range(5):
            assert cache.first_use(f"key{n}", _nonce(1), T0, T0)
        assert len(cache._masks.known) <= 3
        for n in range(5):  # masks recomputed after the clear are the same
            assert not cache.first_use(f"key{n}", _nonce(1), T0, T0)


def test_a_clock_step_back_keeps_what_was_remembered() -> None:
    cache = ReplayCache(max_past_ms=MAX_PAST_MS)
    later = T0 + 10 * SLICE_MS
    assert cache.first_use("k", _nonce(1), later, later)
    assert cache.first_use("k", _nonce(2), T0, T0)  # the clock went back
    assert not cache.first_use("k", _nonce(1), later, later + 1)
    assert not cache.first_use("k", _nonce(2), T0, later + 1)


_events = st.lists(
    st.tuples(
        st.integers(0, 2),  # key
        st.integers(0, 5),  # nonce
        st.integers(0, 3 * SLICE_MS),  # how far the clock moves before the request
        st.integers(-2_000, 6_000),  # timestamp - now (late up to max_past, or early)
    ),
    max_size=120,
)


@settings(deadline=None, max_examples=150)
@given(_events)
def test_agrees_with_a_plain_model(events: list[tuple[int, int, int, int]]) -> None:
    """Refused iff the same key and nonce were recorded with a timestamp in the same slice, and
    the request's own timestamp is still in the window; recorded only when accepted in it."""
    max_past = 5_000
    cache = ReplayCache(max_past_ms=max_past)
    seen: set[tuple[int, int, int]] = set()
    now = T0
    with mock.patch.object(replay, "_MIN_LOOSE", 1):
        for key, nonce, step, offset in events:
            now += step
            stamp = now + offset
            in_window = stamp + max_past >= now
            expected = not (in_window and (key, nonce, stamp // SLICE_MS) in seen)
            assert cache.first_use(f"key{key}", _nonce(nonce), stamp, now) is expected
            if expected and in_window:
                seen.add((key, nonce, stamp // SLICE_MS))
