"""A salt rotation takes effect at the first UTC midnight more than an hour away.

The v3 identity map tells a mapper when to map again (``r``): the bucket's ``refresh_from`` while
it is ahead, else the next UTC midnight. A rotation at any time of day therefore keeps every salt
until a midnight ``E``, the first one more than ``SALT_ROTATION_LEAD_MS`` away (time to write the
table and for every worker to load it), and only then gives the rotated buckets their new salts,
the old ones as previous, stamped ``E``. Every read takes the time it is made at.
"""

from __future__ import annotations

from array import array

from hypothesis import given, settings
from hypothesis import strategies as st
from material_fixtures import Drbg

from uid2_operator.domain.salts import (
    SALT_ROTATION_LEAD_MS,
    SALT_SIZE,
    SaltTable,
    generate_salt_table,
    int64_bytes,
    int64_column,
    legacy_refresh_from,
    rotate,
    rotation_effective_at,
    scheduled_last_updated,
)
from uid2_operator.wire.encoding import b64encode
from uid2_operator.wire.raw_uid import DAY_MS, SaltBucket

HOUR = 3_600_000
DAY0 = 19_676 * DAY_MS  # 2023-11-15T00:00:00Z
CREATED = DAY0 - 3 * DAY_MS
ROTATED_AT = DAY0 + 10 * HOUR
MIDNIGHT = DAY0 + DAY_MS  # when a rotation at ROTATED_AT takes effect
COUNT = 64


def _rotated(fraction: float = 0.5, at: int = ROTATED_AT) -> tuple[SaltTable, SaltTable, list[int]]:
    before = generate_salt_table(COUNT, CREATED, Drbg(b"table"))
    rotation = rotate(before, fraction, at, Drbg(b"rotation"))
    return before, rotation.table, list(rotation.rotated)


def test_no_salt_changes_before_the_next_midnight() -> None:
    before, after, rotated = _rotated()
    assert rotated
    for now in (ROTATED_AT, ROTATED_AT + HOUR, MIDNIGHT - 1):
        for i in range(COUNT):
            assert after.salt(i, now) == before.salt(i, now), (i, now)
            assert after.previous_salt(i, now) is None


def test_at_midnight_the_rotated_buckets_change_once_with_the_old_salt_as_previous() -> None:
    before, after, rotated = _rotated()
    for i in range(COUNT):
        old = before.salt(i, ROTATED_AT)
        for now in (MIDNIGHT, MIDNIGHT + HOUR, MIDNIGHT + DAY_MS + 5):
            if i in rotated:
                assert after.salt(i, now) != old
                assert after.salt(i, now) == after.salt(i, MIDNIGHT)
                assert after.previous_salt(i, now) == old
            else:
                assert (after.salt(i, now), after.previous_salt(i, now)) == (old, None)


def test_a_pending_bucket_reads_as_the_bucket_it_was_until_midnight() -> None:
    before, after, rotated = _rotated()
    i = rotated[0]
    old = before.salt(i, ROTATED_AT)
    assert after.bucket(i, MIDNIGHT - 1) == SaltBucket(
        index=i,
        last_updated_ms=CREATED,
        current_salt=old,
        refresh_from_ms=MIDNIGHT,
        previous_salt=None,
    )
    assert after.bucket(i, MIDNIGHT) == SaltBucket(
        index=i,
        last_updated_ms=MIDNIGHT,
        current_salt=after.salt(i, MIDNIGHT),
        refresh_from_ms=MIDNIGHT,
        previous_salt=old,
    )
    # The stored columns say when the salt in effect took effect and when the change takes effect.
    assert (after.last_updated_ms(i), after.refresh_from_ms(i)) == (CREATED, MIDNIGHT)
    chunk = after.chunk(i // 16, 16)
    for now in (MIDNIGHT - 1, MIDNIGHT):
        assert chunk.bucket(i, now) == after.bucket(i, now)


def test_a_change_is_listed_as_updated_only_once_it_is_in_effect() -> None:
    _, after, rotated = _rotated()
    since = ROTATED_AT - HOUR
    assert list(after.updated_since(since, ROTATED_AT)) == []
    assert list(after.updated_since(since, MIDNIGHT - 1)) == []
    listed = [(i, MIDNIGHT) for i in rotated]
    assert list(after.updated_since(since, MIDNIGHT)) == listed
    assert list(after.updated_since(MIDNIGHT, MIDNIGHT + HOUR)) == listed
    assert list(after.updated_since(MIDNIGHT + 1, MIDNIGHT + HOUR)) == []


def test_a_rotation_a_millisecond_before_midnight_changes_the_salt_once_at_the_midnight_after() -> (
    None
):
    last_ms = MIDNIGHT - 1  # 23:59:59.999
    effective = MIDNIGHT + DAY_MS  # that midnight is too close: the one after it
    before, after, rotated = _rotated(1.0, last_ms)
    assert rotate(before, 1.0, last_ms, Drbg(b"r")).effective_at_ms == effective
    assert rotation_effective_at(last_ms) == effective
    assert rotated
    for i in rotated:
        old = before.salt(i, last_ms)
        new = after.salt(i, effective)
        kept = [after.salt(i, t) for t in (last_ms, MIDNIGHT, MIDNIGHT + HOUR, effective - 1)]
        assert kept == [old] * 4
        assert after.previous_salt(i, MIDNIGHT) is None
        assert new != old
        assert after.previous_salt(i, effective) == old
        assert [after.salt(i, t) for t in (effective + 1, effective + DAY_MS - 1)] == [new, new]
    # Not rotated again before the change took effect (not even past the midnight it skipped),
    # and not twice on the same day after it.
    assert rotate(after, 1.0, last_ms, Drbg(b"again")).rotated == ()
    assert rotate(after, 1.0, MIDNIGHT, Drbg(b"again")).rotated == ()
    assert rotate(after, 1.0, effective, Drbg(b"again")).effective_at_ms == effective + DAY_MS


def test_a_rotation_takes_effect_at_a_midnight_only_if_made_more_than_the_lead_before_it() -> None:
    assert SALT_ROTATION_LEAD_MS == HOUR
    table = generate_salt_table(COUNT, CREATED, Drbg(b"table"))

    def effective(at: int) -> int:
        return rotate(table, 1.0, at, Drbg(b"rotation")).effective_at_ms

    assert effective(ROTATED_AT) == MIDNIGHT
    assert effective(MIDNIGHT - SALT_ROTATION_LEAD_MS - 1) == MIDNIGHT  # 22:59:59.999
    assert effective(MIDNIGHT - SALT_ROTATION_LEAD_MS) == MIDNIGHT + DAY_MS  # 23:00:00.000
    assert effective(MIDNIGHT - 2000) == MIDNIGHT + DAY_MS
    assert effective(MIDNIGHT) == MIDNIGHT + DAY_MS


@settings(deadline=None, max_examples=200)
@given(
    day=st.integers(min_value=0, max_value=20_000),
    into_day=st.one_of(
        st.integers(min_value=0, max_value=DAY_MS - 1),
        st.integers(min_value=DAY_MS - 2 * HOUR, max_value=DAY_MS - 1),
    ),
)
def test_a_rotation_takes_effect_at_the_first_midnight_more_than_the_lead_away(
    day: int, into_day: int
) -> None:
    now = day * DAY_MS + into_day
    effective = rotate(
        generate_salt_table(8, now, Drbg(b"t")), 1.0, now, Drbg(b"r")
    ).effective_at_ms
    assert effective == rotation_effective_at(now)
    assert effective % DAY_MS == 0
    assert now + SALT_ROTATION_LEAD_MS < effective <= now + SALT_ROTATION_LEAD_MS + DAY_MS


def test_a_rotated_bucket_is_eligible_again_from_its_midnight() -> None:
    _, after, rotated = _rotated(0.25)
    not_rotated = set(range(COUNT)) - set(rotated)
    assert set(rotate(after, 1.0, MIDNIGHT - 1, Drbg(b"x")).rotated) == not_rotated
    assert set(rotate(after, 1.0, MIDNIGHT, Drbg(b"x")).rotated) == set(range(COUNT))


def _hand_built(*, salt: bytes, previous: bytes, last_updated: int, refresh_from: int) -> SaltTable:
    """One bucket with a previous salt, as stored (the columns ``assemble`` reads back)."""
    return SaltTable(
        first_level_salt="f",
        id_prefix="",
        id_secret="s",
        salts=salt,
        previous=previous,
        has_previous=b"\x01",
        last_updated=array("q", [last_updated]),
        refresh_from=array("q", [refresh_from]),
    )


def test_a_table_rotated_at_once_by_an_earlier_version_reads_as_it_did_once_upgraded() -> None:
    # Rotations that changed the salt at once stored last_updated = the time they ran (past) and
    # refresh_from = the next midnight. Schema revision 0006 moves refresh_from to last_updated
    # (``legacy_refresh_from``): the bucket then reads as it always did, new salt since then.
    old, new = b"o" * SALT_SIZE, b"n" * SALT_SIZE
    refresh_from = legacy_refresh_from(
        b"\x01", int64_bytes(array("q", [ROTATED_AT])), int64_bytes(array("q", [MIDNIGHT]))
    )
    assert refresh_from is not None
    assert list(int64_column(refresh_from)) == [ROTATED_AT]
    stored = _hand_built(salt=new, previous=old, last_updated=ROTATED_AT, refresh_from=ROTATED_AT)
    for now in (ROTATED_AT, MIDNIGHT - 1, MIDNIGHT + DAY_MS):
        assert stored.bucket(0, now) == SaltBucket(
            index=0,
            last_updated_ms=ROTATED_AT,
            current_salt=b64encode(new),
            refresh_from_ms=ROTATED_AT,
            previous_salt=b64encode(old),
        )
    assert list(stored.updated_since(ROTATED_AT, ROTATED_AT)) == [(0, ROTATED_AT)]


def test_the_upgrade_moves_only_buckets_rotated_at_once() -> None:
    times = array("q", [CREATED, MIDNIGHT, ROTATED_AT, ROTATED_AT])
    refresh = array("q", [CREATED, MIDNIGHT, MIDNIGHT, MIDNIGHT])
    # Never rotated; rotated for a midnight by the version before; rotated at once; the same
    # times without a previous salt (not a rotation: left alone).
    moved = legacy_refresh_from(b"\x07", int64_bytes(times), int64_bytes(refresh))
    assert moved is not None
    assert list(int64_column(moved)) == [CREATED, MIDNIGHT, ROTATED_AT, MIDNIGHT]
    unchanged = array("q", [CREATED, MIDNIGHT, ROTATED_AT, MIDNIGHT])
    assert legacy_refresh_from(b"\x07", int64_bytes(times), int64_bytes(unchanged)) is None


def test_a_downgrade_stores_a_rotation_as_the_version_before_did() -> None:
    _, after, rotated = _rotated()
    i = rotated[0]
    chunk = after.chunk(0, COUNT)
    column = scheduled_last_updated(chunk.has_previous, chunk.last_updated, chunk.refresh_from)
    assert column is not None
    times = list(int64_column(column))
    assert times[i] == MIDNIGHT
    assert [times[j] for j in range(COUNT) if j not in rotated] == [CREATED] * (
        COUNT - len(rotated)
    )
    # Read back, the bucket is pending until MIDNIGHT as before, its earlier change untold.
    downgraded = _hand_built(
        salt=b"n" * SALT_SIZE,
        previous=b"o" * SALT_SIZE,
        last_updated=MIDNIGHT,
        refresh_from=MIDNIGHT,
    )
    assert downgraded.bucket(0, MIDNIGHT - 1).last_updated_ms == 0
    assert downgraded.bucket(0, MIDNIGHT).last_updated_ms == MIDNIGHT
    assert scheduled_last_updated(chunk.has_previous, column, chunk.refresh_from) is None


def test_a_bucket_rotated_for_a_midnight_by_the_version_before_reads_as_it_did() -> None:
    # That version stored the change's time in both columns, and not when the salt in effect
    # took effect: pending, the bucket reports it as "long ago" (0), as it did.
    in_effect, scheduled = b"e" * SALT_SIZE, b"s" * SALT_SIZE
    t = _hand_built(
        salt=scheduled, previous=in_effect, last_updated=MIDNIGHT, refresh_from=MIDNIGHT
    )
    assert t.bucket(0, MIDNIGHT - 1) == SaltBucket(
        index=0,
        last_updated_ms=0,
        current_salt=b64encode(in_effect),
        refresh_from_ms=MIDNIGHT,
        previous_salt=None,
    )
    assert list(t.updated_since(0, MIDNIGHT - 1)) == []
    assert t.bucket(0, MIDNIGHT).last_updated_ms == MIDNIGHT
    assert list(t.updated_since(MIDNIGHT, MIDNIGHT)) == [(0, MIDNIGHT)]
    assert rotate(t, 1.0, MIDNIGHT - 1, Drbg(b"p")).rotated == ()
    again = rotate(t, 1.0, MIDNIGHT + HOUR, Drbg(b"p")).table
    assert again.bucket(0, MIDNIGHT + 2 * HOUR).last_updated_ms == MIDNIGHT
    assert again.previous_salt(0, MIDNIGHT + DAY_MS) == b64encode(scheduled)


def test_a_bucket_rotated_again_is_listed_with_its_earlier_change_until_the_next() -> None:
    # Rotated at ROTATED_AT for MIDNIGHT, then again the next morning for the midnight after:
    # a sync between the second rotation and its midnight still learns of the first change.
    before, first, rotated = _rotated(1.0)
    next_midnight = MIDNIGHT + DAY_MS
    second = rotate(first, 1.0, MIDNIGHT + 10 * HOUR, Drbg(b"again"))
    assert second.effective_at_ms == next_midnight
    assert set(second.rotated) == set(rotated) == set(range(COUNT))
    after = second.table
    since = ROTATED_AT + HOUR  # a client's last sync, before the first change took effect
    listed = list(after.updated_since(since, MIDNIGHT + 12 * HOUR))
    assert listed == [(i, MIDNIGHT) for i in range(COUNT)]
    for i in range(COUNT):
        pending = after.bucket(i, next_midnight - 1)
        assert pending.last_updated_ms == MIDNIGHT
        assert pending.current_salt == first.salt(i, MIDNIGHT) != before.salt(i, ROTATED_AT)
        assert pending.previous_salt is None
        changed = after.bucket(i, next_midnight)
        assert changed.last_updated_ms == next_midnight
        assert changed.previous_salt == first.salt(i, MIDNIGHT)
        assert changed.current_salt not in (first.salt(i, MIDNIGHT), before.salt(i, ROTATED_AT))
    assert list(after.updated_since(MIDNIGHT + 1, next_midnight)) == [
        (i, next_midnight) for i in range(COUNT)
    ]


def test_a_table_stamped_by_a_clock_ahead_reads_as_stored() -> None:
    # Created by a host whose clock runs ahead: no previous salt to fall back on, so the bucket
    # reads as stored rather than failing.
    t = generate_salt_table(4, ROTATED_AT, Drbg(b"ahead"))
    bucket = t.bucket(1, ROTATED_AT - 5)
    assert bucket.current_salt == t.salt(1, ROTATED_AT) == t.salt(1, ROTATED_AT - 5)
    assert bucket.last_updated_ms == ROTATED_AT
