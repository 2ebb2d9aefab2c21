"""Identity hashing cross-checked against the official Python SDK (uid2-client 2.9.0).

Publishers hash emails and phones with the SDK and send ``email_hash`` / ``phone_hash``; the
operator hashes raw ``email`` / ``phone`` itself. Both must land on the same identity hash, except
where the SDK and the reference operator are known to disagree (every such case is marked in the
shared vector table, and there our output must be the operator's, not the SDK's).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from uid2_client import input_util

from uid2_operator.errors import InvalidIdentifier
from uid2_operator.wire.identity import InputKind, hash_identity, normalize_email, validate_phone

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[2] / "vectors" / "identity_normalisation.json").read_text("utf-8")
)
EMAILS: list[dict[str, Any]] = VECTORS["email"]
PHONES: list[dict[str, Any]] = VECTORS["phone"]


def _ours_email(text: str) -> tuple[str, str] | None:
    try:
        normalised = normalize_email(text)
    except InvalidIdentifier:
        return None
    return normalised, base64.b64encode(hash_identity(normalised)).decode()


def _sdk_email(text: str) -> tuple[str, str] | None:
    normalised = input_util.normalize_email_string(text)
    if normalised is None:
        return None
    return normalised, input_util.normalize_and_hash_email(text)


def _ours_phone(text: str) -> str | None:
    try:
        validate_phone(text)
    except InvalidIdentifier:
        return None
    return base64.b64encode(InputKind.PHONE.digest(text)).decode()


def _sdk_phone(text: str) -> str | None:
    if not input_util.is_phone_number_normalized(text):
        return None
    return str(input_util.normalize_and_hash_phone(text))


def test_the_table_is_broad() -> None:
    agreeing = [e for e in EMAILS if "sdk_disagrees" not in e]
    assert len(agreeing) >= 80
    assert any("gmail.com" in e["input"] and "+" in e["input"] for e in agreeing)
    assert any(not e["input"].isascii() for e in agreeing)
    assert any(e["input"] != e["input"].strip() for e in agreeing)
    assert any(e["input"] != e["input"].lower() for e in agreeing)


@pytest.mark.parametrize(
    "case", [e for e in EMAILS if "sdk_disagrees" not in e], ids=lambda c: repr(c["input"])
)
def test_email_hash_agrees_with_the_sdk(case: dict[str, Any]) -> None:
    ours = _ours_email(case["input"])
    assert ours == _sdk_email(case["input"])
    expected = None if case["normalised"] is None else (case["normalised"], case["hash"])
    assert ours == expected


@pytest.mark.parametrize(
    "case",
    [e for e in EMAILS if e.get("sdk_disagrees") == "space inside the local part"],
    ids=lambda c: repr(c["input"]),
)
def test_local_part_spaces_follow_the_operator_not_the_sdk(case: dict[str, Any]) -> None:
    ours = _ours_email(case["input"])
    sdk = _sdk_email(case["input"])
    assert ours == (case["normalised"], case["hash"])
    assert sdk is not None
    assert sdk != ours
    assert " " in sdk[0].partition("@")[0]
    assert " " not in case["normalised"].partition("@")[0]


@pytest.mark.parametrize(
    "case",
    [e for e in EMAILS if e.get("sdk_disagrees") == "unpaired surrogate"],
    ids=lambda c: repr(c["input"]),
)
def test_unpaired_surrogates_hash_where_the_sdk_cannot(case: dict[str, Any]) -> None:
    assert _ours_email(case["input"]) == (case["normalised"], case["hash"])
    with pytest.raises(UnicodeEncodeError):
        input_util.normalize_and_hash_email(case["input"])


def test_every_email_disagreement_is_a_known_kind() -> None:
    kinds = {e["sdk_disagrees"] for e in EMAILS if "sdk_disagrees" in e}
    assert kinds == {"space inside the local part", "unpaired surrogate"}


@pytest.mark.parametrize(
    "case", [p for p in PHONES if "sdk_disagrees" not in p], ids=lambda c: repr(c["input"])
)
def test_phone_hash_agrees_with_the_sdk(case: dict[str, Any]) -> None:
    ours = _ours_phone(case["input"])
    assert ours == _sdk_phone(case["input"])
    assert ours == case["hash"]


@pytest.mark.parametrize(
    "case", [p for p in PHONES if "sdk_disagrees" in p], ids=lambda c: repr(c["input"])
)
def test_non_ascii_digits_follow_the_operator_not_the_sdk(case: dict[str, Any]) -> None:
    assert case["sdk_disagrees"] == "non-ASCII digit"
    assert not case["valid"]
    assert _ours_phone(case["input"]) is None
    assert _sdk_phone(case["input"]) is not None
