"""Keys, reserved keysets, the active-key rule and the privacy bits (operator-api §5.6-5.7)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_operator.errors import NoActiveKey
from uid2_operator.wire import keys as k
from uid2_operator.wire.keys import EncryptionKey, PrivacyBit, active_key

SECRET = bytes(range(32))


def key(key_id: int, activates: int, expires: int, keyset_id: int = -1) -> EncryptionKey:
    return EncryptionKey(
        id=key_id,
        keyset_id=keyset_id,
        created=activates - 100,
        activates=activates,
        expires=expires,
        secret=SECRET,
    )


def test_repr_does_not_show_the_secret() -> None:
    text = repr(EncryptionKey(id=7, keyset_id=-2, created=1, activates=2, expires=3, secret=SECRET))
    assert "id=7" in text
    assert "keyset_id=-2" in text
    assert "secret" not in text
    assert SECRET.hex() not in text
    assert repr(SECRET) not in text


@pytest.mark.parametrize("size", [0, 16, 31, 33])
def test_secret_must_be_32_bytes(size: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        EncryptionKey(id=1, keyset_id=-1, created=0, activates=0, expires=1, secret=bytes(size))


def test_activity_bounds_are_compared_in_milliseconds() -> None:
    k1 = key(1, activates=1000, expires=2000)
    assert not k1.is_active(999_999)
    assert k1.is_active(1_000_000)
    assert k1.is_active(1_999_999)
    assert not k1.is_active(2_000_000)
    assert not k1.is_expired(1_999_999)
    assert k1.is_expired(2_000_000)


def test_reserved_ids() -> None:
    assert (k.MASTER_KEYSET_ID, k.REFRESH_KEYSET_ID, k.FALLBACK_PUBLISHER_KEYSET_ID) == (-1, -2, 2)
    assert (k.MASTER_SITE_ID, k.REFRESH_SITE_ID, k.FALLBACK_PUBLISHER_SITE_ID) == (-1, -2, 2)
    assert k.MAX_RESERVED_SITE_ID == 2
    assert k.MASTER_KEYSET_ID_IN_KEY_JSON == 9999999


def test_privacy_bits() -> None:
    assert [int(b) for b in PrivacyBit] == [1, 2, 4, 8]
    assert k.SERVER_GENERATED_PRIVACY_BITS == 1
    assert k.CLIENT_GENERATED_PRIVACY_BITS == 3


# ------------------------------------------------------------------------------------ active_key


def test_single_active_key_is_chosen() -> None:
    k1 = key(1, 100, 200)
    assert active_key([k1], 150_000) is k1


def test_key_not_yet_active_is_skipped_for_the_one_before() -> None:
    old, future = key(1, 100, 10_000), key(2, 500, 10_000)
    assert active_key([future, old], 499_999) is old
    assert active_key([future, old], 500_000) is future


def test_only_future_keys_means_no_active_key() -> None:
    with pytest.raises(NoActiveKey):
        active_key([key(1, 500, 600), key(2, 700, 800)], 499_999)


def test_expired_key_is_not_chosen() -> None:
    with pytest.raises(NoActiveKey):
        active_key([key(1, 100, 200)], 200_000)


def test_several_overlapping_keys_pick_the_latest_activated() -> None:
    keys = [key(3, 300, 1000), key(1, 100, 1000), key(2, 200, 1000)]
    assert active_key(keys, 350_000).id == 3
    assert active_key(keys, 250_000).id == 2
    assert active_key(keys, 150_000).id == 1


def test_walks_back_past_expired_keys() -> None:
    # Newest started key (3) already expired, so was 2; key 1 is older but still valid.
    keys = [key(1, 100, 1000), key(2, 200, 300), key(3, 300, 400)]
    assert active_key(keys, 500_000).id == 1


def test_a_later_expiry_does_not_beat_a_later_activation() -> None:
    keys = [key(1, 100, 9000), key(2, 200, 1000)]
    assert active_key(keys, 500_000).id == 2


def test_no_keys_at_all() -> None:
    with pytest.raises(NoActiveKey):
        active_key([], 0)


def test_all_started_keys_expired() -> None:
    with pytest.raises(NoActiveKey):
        active_key([key(1, 100, 200), key(2, 150, 250)], 300_000)


def test_ties_in_activation_keep_the_callers_order() -> None:
    a, b = key(1, 100, 1000), key(2, 100, 1000)
    assert active_key([a, b], 150_000) is b
    assert active_key([b, a], 150_000) is a


def test_keyset_filter() -> None:
    master = key(1, 100, 1000, keyset_id=-1)
    refresh = key(2, 200, 1000, keyset_id=-2)
    assert active_key([master, refresh], 300_000, keyset_id=-1) is master
    assert active_key([master, refresh], 300_000, keyset_id=-2) is refresh
    assert active_key([master, refresh], 300_000) is refresh
    with pytest.raises(NoActiveKey):
        active_key([master, refresh], 300_000, keyset_id=5)


key_lists = st.lists(
    st.tuples(st.integers(0, 50), st.integers(1, 50)).map(lambda t: (t[0], t[0] + t[1])),
    max_size=8,
)


@settings(deadline=None, max_examples=300)
@given(spans=key_lists, now_s=st.integers(0, 110), sub_ms=st.integers(0, 999))
def test_active_key_property(spans: list[tuple[int, int]], now_s: int, sub_ms: int) -> None:
    keys = [key(i, a, e) for i, (a, e) in enumerate(spans)]
    now_ms = now_s * 1000 + sub_ms
    started = [x for x in sorted(keys, key=lambda x: x.activates) if x.activates <= now_s]
    try:
        chosen = active_key(keys, now_ms)
    except NoActiveKey:
        assert all(x.expires <= now_s for x in started)
        return
    assert chosen.is_active(now_ms)
    # Every key that sorts after the chosen one among the started keys has expired.
    later = started[started.index(chosen) + 1 :]
    assert all(x.is_expired(now_ms) for x in later)
