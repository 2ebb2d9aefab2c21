"""The key rotation schedule plans from each keyset's unbroken coverage, not from its latest
expiry: keys that activate only after a gap (made by a run on a clock that was ahead) neither
stand in for a key active now nor put off the renewal of the keys in use.

A key is active from ``activates`` (included) to ``expires`` (excluded); every check of "some key
is active at t" below goes through ``wire.keys.active_key``, the request path's own selection.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from material_fixtures import T0, Drbg

from uid2_operator.domain.keysets import (
    DAY_S,
    HOUR_S,
    Coverage,
    KeyPolicy,
    Keyset,
    PlannedKey,
    coverage_span,
    key_coverage_ms,
    mint_keys,
    plan_rotation,
    reserved_keysets,
)
from uid2_operator.errors import NoActiveKey
from uid2_operator.wire.keys import (
    FALLBACK_PUBLISHER_KEYSET_ID,
    MASTER_KEYSET_ID,
    REFRESH_KEYSET_ID,
    EncryptionKey,
    active_key,
)

NOW_S = T0 // 1000
POLICY = KeyPolicy()  # 30-day keys, an hour's lead, renewed 7 days ahead
SITE_KEYSET = Keyset(10, 1001, "Site 1001", True, True, T0)
DISABLED_KEYSET = Keyset(11, 1002, "Site 1002", False, True, T0)
KEYSETS = (*reserved_keysets(T0), SITE_KEYSET, DISABLED_KEYSET)
ENABLED_IDS = (MASTER_KEYSET_ID, REFRESH_KEYSET_ID, FALLBACK_PUBLISHER_KEYSET_ID, 10)


def key(key_id: int, keyset_id: int, activates: int, expires: int) -> EncryptionKey:
    return EncryptionKey(key_id, keyset_id, activates, activates, expires, bytes([key_id]) * 32)


def is_active(keys: list[EncryptionKey], keyset_id: int, at_s: int) -> bool:
    try:
        active_key(keys, at_s * 1000, keyset_id=keyset_id)
    except NoActiveKey:
        return False
    return True


# ------------------------------------------------------------------------------ coverage


def test_coverage_runs_through_keys_that_follow_each_other_without_a_gap() -> None:
    keys = [
        key(1, 10, NOW_S - 20 * DAY_S, NOW_S + 10 * DAY_S),
        key(2, 10, NOW_S + 10 * DAY_S, NOW_S + 40 * DAY_S),  # activates as 1 expires
        key(3, 10, NOW_S + 41 * DAY_S, NOW_S + 71 * DAY_S),  # after a day's gap
        key(4, 10, NOW_S - 60 * DAY_S, NOW_S - 30 * DAY_S),  # long expired
    ]
    assert coverage_span(keys, NOW_S) == (NOW_S - 20 * DAY_S, NOW_S + 40 * DAY_S)
    assert coverage_span(keys, NOW_S + 40 * DAY_S) is None  # the gap
    assert coverage_span(keys, NOW_S + 50 * DAY_S) == (NOW_S + 41 * DAY_S, NOW_S + 71 * DAY_S)
    assert coverage_span([], NOW_S) is None


@settings(deadline=None, max_examples=200)
@given(
    spans=st.lists(st.tuples(st.integers(0, 60), st.integers(1, 30)), min_size=0, max_size=8),
    at=st.integers(0, 90),
)
def test_coverage_is_the_stretch_of_active_seconds_around_the_time(
    spans: list[tuple[int, int]], at: int
) -> None:
    keys = [key(n + 1, 10, start, start + length) for n, (start, length) in enumerate(spans)]
    span = coverage_span(keys, at)
    if not is_active(keys, 10, at):
        assert span is None
        return
    assert span is not None
    start, end = span
    assert all(is_active(keys, 10, t) for t in range(start, end))
    assert not is_active(keys, 10, end)
    assert not is_active(keys, 10, start - 1)


def test_key_coverage_is_where_every_enabled_keyset_has_an_active_key() -> None:
    keys = [
        key(1, MASTER_KEYSET_ID, NOW_S - DAY_S, NOW_S + 20 * DAY_S),
        key(2, REFRESH_KEYSET_ID, NOW_S - 2 * DAY_S, NOW_S + 25 * DAY_S),
        key(3, FALLBACK_PUBLISHER_KEYSET_ID, NOW_S - 3 * DAY_S, NOW_S + 9 * DAY_S),
        key(4, 10, NOW_S - 5 * DAY_S, NOW_S + 30 * DAY_S),
        # The disabled keyset has no key: it does not count.
    ]
    coverage = key_coverage_ms(KEYSETS, keys, T0)
    assert coverage == Coverage((NOW_S - DAY_S) * 1000, (NOW_S + 9 * DAY_S) * 1000)
    assert coverage.covers(T0)
    assert not coverage.covers(coverage.end_ms)
    assert _uncovered(keys) == []

    without_site_key = keys[:3]
    assert not key_coverage_ms(KEYSETS, without_site_key, T0).covers(T0)
    assert _uncovered(without_site_key) == [10]


def _uncovered(keys: list[EncryptionKey]) -> list[int]:
    """The enabled keysets of ``KEYSETS`` with no key active at ``T0``, by ``coverage_span``."""
    return [
        keyset.keyset_id
        for keyset in KEYSETS
        if keyset.enabled
        and coverage_span([k for k in keys if k.keyset_id == keyset.keyset_id], NOW_S) is None
    ]


# ------------------------------------------------------------------------------ planning


def test_a_keyset_whose_keys_all_activate_later_gets_a_key_active_now() -> None:
    """What ``init`` on a host a day ahead leaves: keys that activate tomorrow. Nothing serves
    tokens until then, so the next run on the right clock makes a key active at once."""
    ahead = key(1, 10, NOW_S + DAY_S, NOW_S + 31 * DAY_S)
    assert plan_rotation([SITE_KEYSET], [ahead], T0, POLICY) == [
        PlannedKey(10, NOW_S, NOW_S, NOW_S + 30 * DAY_S)
    ]


def test_a_key_after_a_gap_does_not_put_off_the_renewal_of_the_key_in_use() -> None:
    """A run forty days ahead made a key that activates in forty days: the key in use still
    gets its successor when it nears its expiry, an hour's lead ahead."""
    current = key(1, 10, NOW_S - 23 * DAY_S, NOW_S + 7 * DAY_S)
    far = key(2, 10, NOW_S + 40 * DAY_S, NOW_S + 70 * DAY_S)
    assert plan_rotation([SITE_KEYSET], [current, far], T0, POLICY) == [
        PlannedKey(10, NOW_S, NOW_S + HOUR_S, NOW_S + HOUR_S + 30 * DAY_S)
    ]
    # A successor that follows without a gap still counts, as before.
    pending = key(3, 10, NOW_S + HOUR_S, NOW_S + HOUR_S + 30 * DAY_S)
    assert plan_rotation([SITE_KEYSET], [current, far, pending], T0, POLICY) == []


_OFFSETS = st.integers(min_value=-500 * DAY_S, max_value=500 * DAY_S)


@settings(deadline=None, max_examples=150)
@given(
    keys=st.lists(
        st.tuples(
            st.sampled_from(ENABLED_IDS),
            _OFFSETS,
            st.integers(min_value=1, max_value=60 * DAY_S),
        ),
        max_size=14,
    ),
    clock=_OFFSETS,
)
def test_after_a_run_every_enabled_keyset_is_covered_through_the_renewal_window(
    keys: list[tuple[int, int, int]], clock: int
) -> None:
    """Whatever keys earlier runs left (on clocks ahead, behind, or right) and whatever the
    clock of this run says: once it has run at t, every enabled keyset has a key active at t and
    at every second up to t + ``renew_before_s``. A gap can only open where a key expires, so
    the check looks at t and at every expiry in between."""
    stored = [
        key(n + 1, keyset_id, NOW_S + start, NOW_S + start + life)
        for n, (keyset_id, start, life) in enumerate(keys)
    ]
    t = NOW_S + clock
    plans = plan_rotation(KEYSETS, stored, t * 1000, POLICY)
    assert len({p.keyset_id for p in plans}) == len(plans)
    assert DISABLED_KEYSET.keyset_id not in {p.keyset_id for p in plans}
    first_id = len(stored) + 1
    after = stored + mint_keys(plans, list(range(first_id, first_id + len(plans))), Drbg())
    horizon = t + POLICY.renew_before_s
    for keyset_id in ENABLED_IDS:
        expiries = {k.expires for k in after if k.keyset_id == keyset_id and t < k.expires}
        for probe in sorted({t, *(e for e in expiries if e <= horizon)}):
            assert is_active(after, keyset_id, probe), (keyset_id, probe - t, plans)
    # And nothing is made that the keyset did not need: a keyset covered past the window
    # before the run gets no key.
    for plan in plans:
        before = [k for k in stored if k.keyset_id == plan.keyset_id]
        span = coverage_span(before, t)
        assert span is None or span[1] - t <= POLICY.renew_before_s
        assert plan.created == t
        if span is None:
            assert plan.activates == t
        else:
            assert t < plan.activates <= span[1]
