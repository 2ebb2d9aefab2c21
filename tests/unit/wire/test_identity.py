"""Identity input (operator-api §3): reference-operator golden vectors and request rules."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from uid2_operator.errors import IdentityInputError, InvalidIdentifier, MissingIdentity
from uid2_operator.wire.identity import (
    MISSING_IDENTITY_EMAIL_ONLY,
    MISSING_IDENTITY_WITH_PHONE,
    HashedIdentity,
    InputKind,
    hash_identity,
    identity_from_request,
    input_kinds,
    java_utf8,
    normalize_email,
    parse_identity_hash,
    scalar_text,
    validate_phone,
)
from uid2_operator.wire.scope import IdentityType

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[2] / "vectors" / "identity_normalisation.json").read_text("utf-8")
)
EMAILS: list[dict[str, Any]] = VECTORS["email"]
PHONES: list[dict[str, Any]] = VECTORS["phone"]
HASHES: list[dict[str, Any]] = VECTORS["identity_hash"]

USER_HASH = base64.b64decode("tMmiiTI7IaAcPpQPFQ65uMVCWH8av9jw4cwf/F5HVRQ=")
PHONE_HASH = base64.b64decode("EObwtHBUqDNZR33LNSMdtt5cafsYFuGmuY4ZLenlue4=")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ------------------------------------------------------------------------------ golden vectors


def test_vector_file_covers_valid_and_invalid_cases() -> None:
    assert sum(e["normalised"] is None for e in EMAILS) >= 15
    assert sum(e["normalised"] is not None for e in EMAILS) >= 60
    assert {p["valid"] for p in PHONES} == {True, False}
    assert sum(h["digest"] is None for h in HASHES) >= 10


@pytest.mark.parametrize("case", EMAILS, ids=lambda c: repr(c["input"]))
def test_email_normalisation_matches_the_reference(case: dict[str, Any]) -> None:
    if case["normalised"] is None:
        with pytest.raises(InvalidIdentifier):
            normalize_email(case["input"])
        with pytest.raises(InvalidIdentifier):
            InputKind.EMAIL.digest(case["input"])
        return
    normalised = normalize_email(case["input"])
    assert normalised == case["normalised"]
    assert _b64(hash_identity(normalised)) == case["hash"]
    assert _b64(InputKind.EMAIL.digest(case["input"])) == case["hash"]


@pytest.mark.parametrize("case", PHONES, ids=lambda c: repr(c["input"]))
def test_phone_validation_matches_the_reference(case: dict[str, Any]) -> None:
    if not case["valid"]:
        with pytest.raises(InvalidIdentifier):
            validate_phone(case["input"])
        return
    assert validate_phone(case["input"]) == case["input"]
    assert _b64(InputKind.PHONE.digest(case["input"])) == case["hash"]


@pytest.mark.parametrize("case", HASHES, ids=lambda c: repr(c["input"]))
def test_pre_hashed_input_matches_the_reference(case: dict[str, Any]) -> None:
    for kind in (InputKind.EMAIL_HASH, InputKind.PHONE_HASH):
        if case["digest"] is None:
            with pytest.raises(InvalidIdentifier):
                kind.digest(case["input"])
        else:
            assert _b64(kind.digest(case["input"])) == case["digest"]


@pytest.mark.parametrize("case", VECTORS["hash_vectors"], ids=lambda c: c["identity"])
def test_hash_vectors(case: dict[str, str]) -> None:
    assert _b64(hash_identity(case["identity"])) == case["hash"]


# ------------------------------------------------------------------------------- email rules


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("TEst.TEST@Test.com ", "test.test@test.com"),
        ("TEst.TEst+123@GMail.Com", "testtest@gmail.com"),
        ("+test@test.com", "+test@test.com"),
        ("te st@x.com", "test@x.com"),
        ("a b.c+d e@gmail.com", "abc@gmail.com"),
        (" test@exa mple.com  ", "test@exa mple.com"),
        ("\ttest@x.com", "\ttest@x.com"),
        ("Ünï@X.com", "Ünï@x.com"),
        (".a.@gmail.com", "a@gmail.com"),
        ("a+b+c@googlemail.com", "a+b+c@googlemail.com"),
        ("a@ b.com", "a@ b.com"),
        ("a.b@gmail.com.", "a.b@gmail.com."),
    ],
)
def test_documented_normalisations(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    "raw", ["a@ba@z.com", "+@gmail.com", ".+@gmail.com", "@b.com", "a@", "", " ", "a@   ", "a"]
)
def test_documented_invalid_emails(raw: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        normalize_email(raw)
    assert caught.value.detail == "Invalid Identifier"


def test_only_ascii_letters_are_lowercased() -> None:
    assert normalize_email("ÀÉ\u212aZ@ÀB.COM") == "ÀÉ\u212az@Àb.com"


def test_gmail_rules_apply_only_to_exactly_gmail_com() -> None:
    assert normalize_email("a.b+c@GMAIL.COM") == "ab@gmail.com"
    assert normalize_email("a.b+c@mail.gmail.com") == "a.b+c@mail.gmail.com"
    assert normalize_email("a.b+c@gmail.com ") == "ab@gmail.com"


# ------------------------------------------------------------------------------- hashing


def test_hash_identity_is_sha256_of_utf8() -> None:
    assert hash_identity("user@example.com") == USER_HASH
    assert hash_identity("Ünï@x.com") == hashlib.sha256("Ünï@x.com".encode()).digest()


def test_unpaired_surrogates_hash_as_question_marks() -> None:
    assert java_utf8("a\ud800b") == b"a?b"
    assert java_utf8("\udc00") == b"?"
    assert hash_identity("\ud800@x.com") == hashlib.sha256(b"?@x.com").digest()


def test_split_surrogate_pair_hashes_like_the_joined_character() -> None:
    assert java_utf8("\ud83d\ude00") == "\U0001f600".encode()
    assert java_utf8("\ud83d\ud83d\ude00") == b"?" + "\U0001f600".encode()
    # A JSON body may carry the two halves apart; normalisation drops the space between them,
    # and the hash is then the joined character's, as the reference's String.getBytes gives.
    joined = hashlib.sha256("\U0001f600@x.com".encode()).digest()
    assert hash_identity("\ud83d\ude00@x.com") == joined
    assert InputKind.EMAIL.digest("\ud83d \ude00@x.com") == joined


def test_hex_and_base64_forms_give_the_same_hash() -> None:
    assert parse_identity_hash(USER_HASH.hex()) == USER_HASH
    assert parse_identity_hash(USER_HASH.hex().upper()) == USER_HASH
    assert parse_identity_hash(_b64(USER_HASH)) == USER_HASH


def test_unpadded_44_characters_decode_to_33_bytes() -> None:
    assert len(parse_identity_hash("A" * 44)) == 33


@pytest.mark.parametrize(
    "text", ["abc", "", "A" * 43, "A" * 45, "A" * 41 + "===", "g" * 64, " " + "a" * 63, "a" * 65]
)
def test_invalid_hashes(text: str) -> None:
    with pytest.raises(InvalidIdentifier):
        parse_identity_hash(text)


# ------------------------------------------------------------------------------- input kinds


def test_input_kinds_map_to_identity_types() -> None:
    assert [k.identity_type for k in InputKind] == [
        IdentityType.EMAIL,
        IdentityType.EMAIL,
        IdentityType.PHONE,
        IdentityType.PHONE,
    ]
    assert [k.value for k in InputKind] == ["email", "email_hash", "phone", "phone_hash"]
    assert [k.is_hashed for k in InputKind] == [False, True, False, True]


def test_input_kinds_with_and_without_phone_support() -> None:
    assert input_kinds(phone_support=True) == tuple(InputKind)
    assert input_kinds(phone_support=False) == (InputKind.EMAIL, InputKind.EMAIL_HASH)


@pytest.mark.parametrize("kind", list(InputKind))
@pytest.mark.parametrize("value", [None, 1, 1.5, True, [], {}, b"user@example.com"])
def test_non_string_values_are_invalid(kind: InputKind, value: object) -> None:
    with pytest.raises(InvalidIdentifier):
        kind.digest(value)


def test_hashed_identity_keeps_the_digest_out_of_repr() -> None:
    identity = InputKind.EMAIL.hashed("user@example.com")
    assert identity == HashedIdentity(IdentityType.EMAIL, USER_HASH)
    assert USER_HASH.hex() not in repr(identity)
    assert _b64(USER_HASH) not in repr(identity)
    assert "EMAIL" in repr(identity)


# ------------------------------------------------------------------------- token requests (§3.4)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"email": "User@Example.com"}, HashedIdentity(IdentityType.EMAIL, USER_HASH)),
        ({"email_hash": _b64(USER_HASH)}, HashedIdentity(IdentityType.EMAIL, USER_HASH)),
        ({"email_hash": USER_HASH.hex()}, HashedIdentity(IdentityType.EMAIL, USER_HASH)),
        ({"phone": "+12345678901"}, HashedIdentity(IdentityType.PHONE, PHONE_HASH)),
        ({"phone_hash": _b64(PHONE_HASH)}, HashedIdentity(IdentityType.PHONE, PHONE_HASH)),
        (
            {"email": "user@example.com", "phone": None, "token": "x", "policy": 1},
            HashedIdentity(IdentityType.EMAIL, USER_HASH),
        ),
    ],
)
def test_request_with_exactly_one_identity(payload: dict[str, object], expected: object) -> None:
    assert identity_from_request(payload, phone_support=True) == expected


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"token": "abc"},
        {"email": None, "email_hash": None},
        {"email": "a@b.com", "email_hash": _b64(USER_HASH)},
        {"email": "a@b.com", "phone": "+12345678901"},
        {"phone": "+12345678901", "phone_hash": _b64(PHONE_HASH)},
        {"email": "not an email", "phone": 5},
        {"email_hash": 5, "phone_hash": []},
    ],
)
def test_none_or_several_identities_is_missing(payload: dict[str, object]) -> None:
    with pytest.raises(MissingIdentity) as caught:
        identity_from_request(payload, phone_support=True)
    assert caught.value.detail == MISSING_IDENTITY_WITH_PHONE
    assert caught.value.detail == (
        "Required Parameter Missing: exactly one of [email, email_hash, phone, phone_hash] "
        "must be specified"
    )


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"phone": "+12345678901"},
        {"phone_hash": _b64(PHONE_HASH), "phone": "+12345678901"},
        {"email": "a@b.com", "email_hash": _b64(USER_HASH)},
    ],
)
def test_without_phone_support_the_message_names_email_only(payload: dict[str, object]) -> None:
    with pytest.raises(MissingIdentity) as caught:
        identity_from_request(payload, phone_support=False)
    assert caught.value.detail == MISSING_IDENTITY_EMAIL_ONLY
    assert caught.value.detail == (
        "Required Parameter Missing: exactly one of email or email_hash must be specified"
    )


def test_without_phone_support_phone_fields_are_ignored() -> None:
    payload = {"email": "user@example.com", "phone": "+12345678901", "phone_hash": "bad"}
    assert identity_from_request(payload, phone_support=False) == HashedIdentity(
        IdentityType.EMAIL, USER_HASH
    )
    with pytest.raises(MissingIdentity):
        identity_from_request(payload, phone_support=True)


@pytest.mark.parametrize(
    "payload",
    [
        {"email": "invalid"},
        {"email": ""},
        {"email_hash": "abc"},
        {"phone": "555-555-5555"},
        {"phone_hash": "xyz"},
        {"email": 12345},
        {"email": {"a@b": 1}},
        {"email": ["a@b.com"]},
        {"email_hash": True},
        {"phone": 12345678901},
    ],
)
def test_one_invalid_identity_is_invalid_identifier(payload: dict[str, object]) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        identity_from_request(payload, phone_support=True)
    assert caught.value.detail == "Invalid Identifier"
    assert isinstance(caught.value, IdentityInputError)


@pytest.mark.parametrize(
    ("value", "text"),
    [("a@b.c", "a@b.c"), (True, "true"), (False, "false"), (12, "12"), (1.5, "1.5")],
)
def test_scalars_are_read_as_text(value: object, text: str) -> None:
    assert scalar_text(value) == text


@pytest.mark.parametrize("value", [None, [], ["a@b.c"], {}, b"a@b.c"])
def test_null_and_containers_have_no_text(value: object) -> None:
    assert scalar_text(value) is None


def test_a_request_hash_given_as_a_number_is_its_digits() -> None:
    digits = "1234567890" * 6 + "1234"
    by_number = identity_from_request({"phone_hash": int(digits)}, phone_support=True)
    assert by_number == identity_from_request({"phone_hash": digits}, phone_support=True)
    assert by_number.kind is IdentityType.PHONE
    for value in (1.5, True, [digits], {"a": digits}):
        with pytest.raises(InvalidIdentifier):
            identity_from_request({"email_hash": value}, phone_support=False)
