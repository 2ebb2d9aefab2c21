"""Identity input properties: any input gives a value or an identity error, and rules hold."""

from __future__ import annotations

import base64
import hashlib

from hypothesis import example, given, settings
from hypothesis import strategies as st

from uid2_operator.errors import IdentityInputError, InvalidIdentifier, MissingIdentity
from uid2_operator.wire.identity import (
    HashedIdentity,
    InputKind,
    hash_identity,
    identity_from_request,
    normalize_email,
    parse_identity_hash,
    validate_phone,
)

# Every code point, unpaired surrogates included (JSON strings can carry them).
ANY_TEXT = st.text(st.characters(exclude_categories=())) | st.text(
    st.sampled_from("a@.+ \ud800\udc00\ud83d\ude00"), max_size=12
)
EMAILISH = (
    st.text(alphabet=st.sampled_from("aAbZ .+@\t\u00e9\U0001f600gmilco"), max_size=24) | ANY_TEXT
)
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
KEYS = st.sampled_from(["email", "email_hash", "phone", "phone_hash", "token", "x"]) | st.text(
    max_size=6
)


def _reference_normalise(text: str) -> str | None:  # noqa: PLR0912 - mirrors the spec's cases
    """§3.1 as a character-by-character state machine, the way the specification states it."""
    local: list[str] = []
    gmail_local: list[str] = []
    domain: list[str] = []
    spaces: list[str] = []
    in_domain = False
    in_extension = False
    for given_char in text:
        char = chr(ord(given_char) + 32) if "A" <= given_char <= "Z" else given_char
        if not in_domain:
            if char == " ":
                continue
            if char == "@":
                in_domain = True
            elif char == ".":
                local.append(char)
            elif char == "+":
                local.append(char)
                in_extension = True
            else:
                local.append(char)
                if not in_extension:
                    gmail_local.append(char)
        elif char == "@":
            return None
        elif char == " ":
            spaces.append(char)
        else:
            domain.extend(spaces)
            spaces = []
            domain.append(char)
    if not domain:
        return None
    chosen = gmail_local if "".join(domain) == "gmail.com" else local
    if not chosen:
        return None
    return "".join(chosen) + "@" + "".join(domain)


@settings(deadline=None, max_examples=400)
@given(EMAILISH)
@example("a b.c+d e@gmail.com")
@example("x@ gmail.com ")
def test_normalize_email_matches_the_state_machine(text: str) -> None:
    expected = _reference_normalise(text)
    try:
        got: str | None = normalize_email(text)
    except InvalidIdentifier:
        got = None
    assert got == expected


@settings(deadline=None)
@given(EMAILISH)
def test_normalised_emails_are_fixed_points(text: str) -> None:
    try:
        once = normalize_email(text)
    except InvalidIdentifier:
        return
    assert normalize_email(once) == once


@settings(deadline=None)
@given(ANY_TEXT)
def test_email_input_gives_a_hash_or_an_identity_error(text: str) -> None:
    try:
        digest = InputKind.EMAIL.digest(text)
    except IdentityInputError:
        return
    assert len(digest) == 32


@settings(deadline=None)
@given(ANY_TEXT | st.from_regex(r"\+[0-9]{8,17}", fullmatch=True))
def test_phone_input_gives_the_input_or_an_identity_error(text: str) -> None:
    try:
        phone = validate_phone(text)
    except IdentityInputError:
        return
    assert phone == text
    assert 10 <= len(phone) - 1 <= 15
    assert InputKind.PHONE.digest(text) == hashlib.sha256(text.encode()).digest()


@settings(deadline=None)
@given(
    ANY_TEXT
    | st.text(alphabet="ABCDEFabcdef0123456789+/=-_ ", min_size=42, max_size=66)
    | st.text(min_size=44, max_size=44)
)
def test_identity_hash_input_gives_bytes_or_an_identity_error(text: str) -> None:
    try:
        digest = parse_identity_hash(text)
    except IdentityInputError:
        return
    assert len(text) in (44, 64)
    assert len(digest) in (31, 32, 33)


@settings(deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_identity_hashes_round_trip_through_both_encodings(digest: bytes) -> None:
    assert parse_identity_hash(base64.b64encode(digest).decode()) == digest
    assert parse_identity_hash(digest.hex()) == digest
    assert parse_identity_hash(digest.hex().upper()) == digest


@settings(deadline=None)
@given(ANY_TEXT)
def test_hash_identity_never_fails(text: str) -> None:
    assert len(hash_identity(text)) == 32


@settings(deadline=None)
@given(st.dictionaries(KEYS, JSON_VALUES, max_size=6), st.booleans())
def test_any_request_gives_an_identity_or_an_identity_error(
    payload: dict[str, object], phone_support: bool
) -> None:
    kinds = InputKind if phone_support else (InputKind.EMAIL, InputKind.EMAIL_HASH)
    given_kinds = [k for k in kinds if payload.get(k.value) is not None]
    try:
        identity = identity_from_request(payload, phone_support=phone_support)
    except MissingIdentity:
        assert len(given_kinds) != 1
        return
    except InvalidIdentifier:
        assert len(given_kinds) == 1
        return
    assert len(given_kinds) == 1
    assert isinstance(identity, HashedIdentity)
    assert identity.kind == given_kinds[0].identity_type
    assert identity.digest == given_kinds[0].digest(payload[given_kinds[0].value])


@settings(deadline=None)
@given(st.sampled_from(list(InputKind)), JSON_VALUES)
def test_each_kind_digests_any_json_value_or_rejects_it(kind: InputKind, value: object) -> None:
    try:
        digest = kind.digest(value)
    except InvalidIdentifier:
        return
    assert isinstance(value, str)
    assert len(digest) in (31, 32, 33)
