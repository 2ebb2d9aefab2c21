"""Every bound a common setting enforces is stated in its refusal and in the settings table of
docs/operator.md: a value refused for being out of range says what range."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from uid2_operator.settings import (
    MAX_ROTATION_AGE_DAYS,
    MAX_SALT_BUCKETS,
    MAX_SALT_BUCKETS_DIGITS,
    Settings,
    SettingsError,
)

OPERATOR_DOC = Path(__file__).resolve().parents[2] / "docs" / "operator.md"
AGE = "UID2_KEY_ROTATION_AGE_DAYS"
BUCKETS = "UID2_SALT_BUCKETS"


def _settings(**variables: str) -> Settings:
    return Settings.from_env(variables, data_dir="/nonexistent/data")


def _doc_row(variable: str) -> str:
    text = OPERATOR_DOC.read_text(encoding="utf-8")
    (row,) = re.findall(rf"^\| `{variable}` \|.*$", text, flags=re.MULTILINE)
    return row


def test_the_rotation_age_limit_is_36500_days() -> None:
    assert MAX_ROTATION_AGE_DAYS == 36500
    assert _settings(**{AGE: "36500"}).rotation_age_days == 36500
    assert _settings(**{AGE: "1"}).rotation_age_days == 1
    assert _settings(**{AGE: "000030"}).rotation_age_days == 30  # leading zeros, as before


@pytest.mark.parametrize(
    "bad", ["0", "36501", "99999999", "-1", "x", "1.5", "", "9" * 5000, "0" * 5000 + "36501"]
)
def test_a_rotation_age_out_of_range_is_refused_with_the_range(bad: str) -> None:
    with pytest.raises(SettingsError) as refused:
        _settings(**{AGE: bad})
    assert str(refused.value) == f"{AGE} must be a whole number of days from 1 to 36500"


def test_the_docs_state_the_rotation_age_range() -> None:
    assert f"from 1 to {MAX_ROTATION_AGE_DAYS}" in _doc_row(AGE)


@pytest.mark.parametrize("bad", ["123456789", "000001024", "1" * 40])
def test_salt_buckets_written_too_long_are_refused_with_the_range(bad: str) -> None:
    with pytest.raises(SettingsError) as refused:
        _settings(**{BUCKETS: bad})
    assert str(refused.value) == (
        f"{BUCKETS} must be a power of two from 1 to {MAX_SALT_BUCKETS}, in at most "
        f"{MAX_SALT_BUCKETS_DIGITS} digits (got {bad!r})"
    )


def test_salt_buckets_within_the_digits_are_read_as_before() -> None:
    assert _settings(**{BUCKETS: "00001024"}).salt_buckets == 1024
    with pytest.raises(SettingsError, match=f"power of two from 1 to {MAX_SALT_BUCKETS}"):
        _settings(**{BUCKETS: "99999999"})


def test_the_docs_state_the_salt_bucket_bounds() -> None:
    row = _doc_row(BUCKETS)
    assert "a power of two from 1 to 2^20" in row
    assert f"in at most {MAX_SALT_BUCKETS_DIGITS} digits" in row
