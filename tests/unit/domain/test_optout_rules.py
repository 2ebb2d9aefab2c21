"""Opt-out records, the built-in test identities (operator-api §7.3) and the FLH rules."""

from __future__ import annotations

import base64
import hashlib

import pytest
from material_fixtures import T0

from uid2_operator.domain.optout import (
    ALWAYS_OPTED_OUT_FLH,
    NEVER_OPTED_OUT_FLH,
    OptOutRecord,
    builtin_identities,
    identity_first_level_hash,
    is_opted_out,
    latest,
)
from uid2_operator.errors import InvalidIdentifier, InvalidInput
from uid2_operator.wire.identity import InputKind, hash_identity
from uid2_operator.wire.raw_uid import first_level_hash
from uid2_operator.wire.scope import IdentityType

SALT = "first-level-salt"
EMAIL, PHONE = IdentityType.EMAIL, IdentityType.PHONE
BUILTINS = builtin_identities(SALT)
FLH_A = bytes(range(32))
FLH_B = bytes(range(1, 33))


def flh_of(text: str) -> bytes:
    return first_level_hash(hash_identity(text), SALT)


# ------------------------------------------------------------------------------ records


def test_a_record_holds_an_flh_a_time_and_maybe_a_raw_uid() -> None:
    record = OptOutRecord(FLH_A, T0, "AAAA")
    assert (record.first_level_hash, record.timestamp_ms, record.advertising_id) == (
        FLH_A,
        T0,
        "AAAA",
    )
    assert OptOutRecord(FLH_A, T0).advertising_id is None
    assert FLH_A.hex() not in repr(record)
    assert "AAAA" not in repr(record)


@pytest.mark.parametrize(
    ("flh", "ts", "ad_id", "message"),
    [
        (bytes(31), T0, None, "32 bytes"),
        (FLH_A, -1, None, "1970"),
        (FLH_A, T0, "", "advertising id"),
        (FLH_A, T0, "x" * 65, "advertising id"),
        (FLH_A, T0, "é", "advertising id"),
    ],
)
def test_malformed_records_are_refused(
    flh: bytes, ts: int, ad_id: str | None, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        OptOutRecord(flh, ts, ad_id)


def test_latest_keeps_the_later_time_the_newest_known_raw_uid_and_the_earlier_ones() -> None:
    first = OptOutRecord(FLH_A, T0, "old")
    assert latest(None, first) == first
    assert latest(first, OptOutRecord(FLH_A, T0 + 5, "new")) == OptOutRecord(
        FLH_A, T0 + 5, "new", (("old", T0),)
    )
    assert latest(first, OptOutRecord(FLH_A, T0 + 5)) == OptOutRecord(
        FLH_A, T0 + 5, "old", (("old", T0),)
    )
    assert latest(first, OptOutRecord(FLH_A, T0 - 5, "new")) == OptOutRecord(
        FLH_A, T0, "old", (("new", T0 - 5),)
    )
    assert latest(OptOutRecord(FLH_A, T0), OptOutRecord(FLH_A, T0 - 5, "new")) == OptOutRecord(
        FLH_A, T0, "new", (("new", T0 - 5),)
    )


# ------------------------------------------------------------------------------ inputs


@pytest.mark.parametrize(
    ("kind", "value", "normalised"),
    [
        (InputKind.EMAIL, "Jane.Doe+ads@gmail.com", "janedoe@gmail.com"),
        (InputKind.PHONE, "+12345678901", "+12345678901"),
    ],
)
def test_identity_first_level_hash_normalises_like_requests(
    kind: InputKind, value: str, normalised: str
) -> None:
    assert identity_first_level_hash(kind, value, SALT) == flh_of(normalised)


def test_identity_first_level_hash_accepts_hashes_in_base64_and_hex() -> None:
    digest = hashlib.sha256(b"someone@example.com").digest()
    expected = first_level_hash(digest, SALT)
    assert identity_first_level_hash(InputKind.EMAIL_HASH, digest.hex(), SALT) == expected
    text = base64.b64encode(digest).decode()
    assert identity_first_level_hash(InputKind.PHONE_HASH, text, SALT) == expected


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (InputKind.EMAIL, "not-an-email"),
        (InputKind.PHONE, "12345"),
        (InputKind.EMAIL_HASH, "abc"),
        (InputKind.PHONE, 12345678901),
    ],
)
def test_invalid_identities_are_refused(kind: InputKind, value: object) -> None:
    with pytest.raises(InvalidIdentifier):
        identity_first_level_hash(kind, value, SALT)


# ------------------------------------------------------------------------------ built-ins


def test_the_builtin_identities_follow_the_first_level_salt() -> None:
    assert BUILTINS.always == {
        (EMAIL, flh_of("optout@example.com")),
        (PHONE, flh_of("+00000000000")),
    }
    assert BUILTINS.at_refresh == {
        (EMAIL, flh_of("refresh-optout@example.com")),
        (PHONE, flh_of("+00000000002")),
    }
    assert BUILTINS.never == {
        (EMAIL, flh_of("validate@example.com")),
        (PHONE, flh_of("+12345678901")),
    }
    assert builtin_identities("another-salt").always.isdisjoint(BUILTINS.always)
    assert "optout" not in repr(BUILTINS)


@pytest.mark.parametrize(
    ("kind", "text", "generate", "refresh"),
    [
        (EMAIL, "optout@example.com", True, True),
        (PHONE, "+00000000000", True, True),
        (EMAIL, "refresh-optout@example.com", False, True),
        (PHONE, "+00000000002", False, True),
        (EMAIL, "validate@example.com", False, False),
        (PHONE, "+12345678901", False, False),
        (EMAIL, "someone@example.com", False, False),
    ],
)
def test_builtin_identity_decisions(
    kind: IdentityType, text: str, generate: bool, refresh: bool
) -> None:
    flh = flh_of(text)
    assert is_opted_out(kind, flh, {}, BUILTINS) is generate
    assert is_opted_out(kind, flh, {}, BUILTINS, at_refresh=True) is refresh


def test_builtins_are_compared_on_type_and_flh() -> None:
    phone_flh_as_email = flh_of("+00000000000")
    assert is_opted_out(EMAIL, phone_flh_as_email, {}, BUILTINS) is False


def test_a_recorded_flh_is_opted_out_whatever_its_time() -> None:
    records = {FLH_A: T0}
    assert is_opted_out(EMAIL, FLH_A, records, BUILTINS)
    assert is_opted_out(PHONE, FLH_A, records, BUILTINS, at_refresh=True)
    assert not is_opted_out(EMAIL, FLH_B, records, BUILTINS)


def test_the_all_zero_flh_is_always_and_the_all_ff_flh_never_opted_out() -> None:
    assert is_opted_out(EMAIL, ALWAYS_OPTED_OUT_FLH, {}, BUILTINS)
    assert not is_opted_out(EMAIL, NEVER_OPTED_OUT_FLH, {NEVER_OPTED_OUT_FLH: T0}, BUILTINS)
    assert not is_opted_out(
        PHONE, NEVER_OPTED_OUT_FLH, {NEVER_OPTED_OUT_FLH: T0}, BUILTINS, at_refresh=True
    )


def test_never_identities_win_over_a_record() -> None:
    flh = flh_of("validate@example.com")
    assert not is_opted_out(EMAIL, flh, {flh: T0}, BUILTINS, at_refresh=True)


@pytest.mark.parametrize(
    ("kind", "text"), [(EMAIL, "refresh-optout@example.com"), (PHONE, "+00000000002")]
)
def test_refresh_optout_identities_are_opted_out_only_at_refresh_even_when_recorded(
    kind: IdentityType, text: str
) -> None:
    flh = flh_of(text)
    records = {flh: T0}  # a logout or `optout add` of the test identity
    assert not is_opted_out(kind, flh, records, BUILTINS)
    assert is_opted_out(kind, flh, records, BUILTINS, at_refresh=True)
