"""KEK check values: what the store records per key-encryption key version, so a keyring holding
another key under a version number the store knows is refused before it seals or opens anything.

The value is pinned (stores record it: it must never change between versions of this code), fits
a signed 64-bit integer, tells keys apart, and is never shown: not in a refusal, not in a repr.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from domain_randomness import PEPPER, Drbg
from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_operator.domain.sealing import (
    KEK_CHECK_LABEL,
    PEPPER_CHECK,
    PEPPER_CHECK_LABEL,
    Keyring,
    add_kek_version,
    compare_kek_check_values,
    kek_check_value,
    pepper_check_value,
)
from uid2_operator.errors import KeyringError

KEY_A = bytes(range(32))
KEY_B = b"\xff" * 32


PINNED_PEPPER_CHECK = 0x7546A0CB2CF6CED3
"""The check value of a pepper of zero bytes: recorded values outlive this code."""


def _ring(keks: dict[int, bytes], active: int | None = None) -> Keyring:
    return Keyring(keks, max(keks) if active is None else active, PEPPER)


def test_the_check_value_is_pinned() -> None:
    """Recorded values outlive this code: a changed label or reading would refuse every keyring."""
    assert KEK_CHECK_LABEL == b"uid2-operator kek check value"
    assert kek_check_value(KEY_A) == 0x4CC16BCA843C048C
    assert kek_check_value(bytes(32)) == 0x65DE38DB622029D7
    # The digest of KEY_B starts 9af9...: the top bit is masked off, so it fits a signed BIGINT.
    assert kek_check_value(KEY_B) == 0x1AF97245C9D6818C


@given(st.binary(min_size=32, max_size=32))
@settings(deadline=None)
def test_the_check_value_is_63_bits_of_hmac_sha256_under_the_key(kek: bytes) -> None:
    digest = hmac.new(kek, b"uid2-operator kek check value", hashlib.sha256).digest()
    value = kek_check_value(kek)
    assert 0 <= value < 1 << 63
    assert value == int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def test_a_keyring_gives_the_check_value_of_its_pepper_and_every_version_it_holds() -> None:
    ring = _ring({3: KEY_B, 1: KEY_A}, active=1)
    assert ring.kek_check_values() == {
        PEPPER_CHECK: pepper_check_value(PEPPER),
        1: kek_check_value(KEY_A),
        3: kek_check_value(KEY_B),
    }
    assert list(ring.kek_check_values()) == [PEPPER_CHECK, 1, 3]


def test_the_pepper_check_value_is_pinned_and_differs_from_a_kek_s() -> None:
    assert PEPPER_CHECK == 0
    assert PEPPER_CHECK_LABEL == b"uid2-operator pepper check value"
    assert pepper_check_value(bytes(32)) == PINNED_PEPPER_CHECK
    assert pepper_check_value(bytes(32)) != kek_check_value(bytes(32))


def test_another_pepper_is_refused_naming_no_secret() -> None:
    ring = _ring({1: KEY_A})
    recorded = {**ring.kek_check_values(), PEPPER_CHECK: pepper_check_value(bytes(32))}
    with pytest.raises(KeyringError) as refused:
        compare_kek_check_values(ring, recorded)
    assert refused.value.code == "keyring_invalid"
    assert refused.value.detail == (
        "This keyring's pepper is not the one the database's API keys and admin tokens are "
        "hashed with: copy the keyring file of another instance of this database here (over "
        "this one), then run the command again"
    )


def test_a_version_added_gets_its_own_check_value() -> None:
    ring = add_kek_version(_ring({1: KEY_A}), Drbg(), activate=False)
    values = ring.kek_check_values()
    assert values[1] == kek_check_value(KEY_A)
    assert values[2] == kek_check_value(ring.kek(2))
    assert values[2] != values[1]


def test_nothing_recorded_means_the_pepper_and_every_held_version_are_to_record() -> None:
    ring = _ring({1: KEY_A, 2: KEY_B})
    assert compare_kek_check_values(ring, {}) == ring.kek_check_values()


def test_matching_values_leave_only_the_unrecorded_versions() -> None:
    ring = _ring({1: KEY_A, 2: KEY_B})
    pepper = pepper_check_value(PEPPER)
    assert compare_kek_check_values(ring, {PEPPER_CHECK: pepper, 1: kek_check_value(KEY_A)}) == {
        2: kek_check_value(KEY_B)
    }
    assert compare_kek_check_values(ring, {1: kek_check_value(KEY_A)}) == {
        PEPPER_CHECK: pepper,  # a store of an earlier version: recorded on first use
        2: kek_check_value(KEY_B),
    }
    assert compare_kek_check_values(ring, ring.kek_check_values()) == {}


def test_versions_the_keyring_lacks_are_not_this_comparisons_business() -> None:
    """Items sealed under them show as sealed under a missing version; that is checked elsewhere."""
    ring = _ring({2: KEY_B})
    recorded = {
        PEPPER_CHECK: pepper_check_value(PEPPER),
        1: kek_check_value(KEY_A),
        2: kek_check_value(KEY_B),
        7: 12345,
    }
    assert compare_kek_check_values(ring, recorded) == {}


def test_another_key_under_a_recorded_version_is_refused_naming_it() -> None:
    ring = _ring({1: KEY_A, 2: KEY_B})
    recorded = {1: kek_check_value(KEY_A), 2: kek_check_value(KEY_A)}
    with pytest.raises(KeyringError) as refused:
        compare_kek_check_values(ring, recorded)
    assert refused.value.code == "keyring_invalid"
    assert refused.value.detail == (
        "This keyring's key-encryption key version 2 is another key than the database's "
        "version 2: copy the keyring file of the instance that added version 2 here (over this "
        "one), then run the command again"
    )


def test_several_versions_that_differ_are_all_named() -> None:
    ring = _ring({1: KEY_A, 2: KEY_B, 3: bytes(32)})
    recorded = {1: 1, 2: kek_check_value(KEY_B), 3: 3}
    with pytest.raises(KeyringError) as refused:
        compare_kek_check_values(ring, recorded)
    assert refused.value.detail == (
        "This keyring's key-encryption key versions 1, 3 are other keys than the database's "
        "versions 1, 3: copy the keyring file of the instance that added them here (over this "
        "one), then run the command again"
    )


def test_neither_key_bytes_nor_check_values_are_shown() -> None:
    ring = _ring({1: KEY_A})
    recorded = {1: kek_check_value(KEY_B)}
    with pytest.raises(KeyringError) as refused:
        compare_kek_check_values(ring, recorded)
    shown = [str(refused.value), refused.value.detail, repr(refused.value), repr(ring), str(ring)]
    secrets = [str(kek_check_value(KEY_A)), str(kek_check_value(KEY_B))]
    secrets += [f"{kek_check_value(KEY_A):x}", f"{kek_check_value(KEY_B):x}", KEY_A.hex()]
    for text in shown:
        for secret in secrets:
            assert secret not in text.lower()
