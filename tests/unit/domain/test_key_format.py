from __future__ import annotations

import hashlib
import hmac
import re
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_operator.domain import key_format
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import (
    BASE62,
    CredentialKind,
    ParsedCredential,
    checksum,
    hash_matches,
    keyed_hash,
    mint,
    mint_admin_token,
    mint_api_key,
    parse,
    random_base62,
    verify,
)
from uid2_operator.errors import (
    CredentialRejected,
    InvalidInput,
    MalformedCredential,
    WrongEnvironment,
)

PEPPER = bytes(range(1, 33))
REFERENCE_PATTERN = re.compile(r"(UID2|EUID)-[CO]-[LTIP]-(\d+)-.{6}\..{38}")
C, A = CredentialKind.CLIENT, CredentialKind.ADMIN
LOCAL, INTEG, PROD = Environment.LOCAL, Environment.INTEG, Environment.PROD


def _with_checksum(body: str) -> str:
    return body + checksum(body)


def test_minted_api_key_has_the_documented_shape(random: Callable[[int], bytes]) -> None:
    minted = mint_api_key(LOCAL, 1001, PEPPER, random)
    assert re.fullmatch(r"UID2-C-L-1001-[A-Za-z0-9]{6}\.[A-Za-z0-9]{38}", minted.text)
    match = REFERENCE_PATTERN.fullmatch(minted.text)
    assert match is not None
    assert match.group(2) == "1001"
    assert minted.key_id == minted.text.split(".")[0]
    assert minted.key_hash == keyed_hash(PEPPER, minted.text)
    assert (minted.kind, minted.environment, minted.site_id) == (C, LOCAL, 1001)


def test_admin_token_shape(random: Callable[[int], bytes]) -> None:
    minted = mint_admin_token(PROD, PEPPER, random)
    assert re.fullmatch(r"UID2-A-P-0-[A-Za-z0-9]{6}\.[A-Za-z0-9]{38}", minted.text)
    assert parse(minted.text, A, PROD).key_id == minted.key_id


def test_keyed_hash_is_hmac_sha256_of_the_full_text() -> None:
    expected = hmac.new(PEPPER, b"UID2-C-L-3-abcdef.x", "sha256").digest()
    assert keyed_hash(PEPPER, "UID2-C-L-3-abcdef.x") == expected
    assert keyed_hash(bytes(32), "UID2-C-L-3-abcdef.x") != expected


def test_checksum_is_crc32_mod_62_pow_5_fixed_width() -> None:
    value = zlib.crc32(b"hello") % 62**5
    text = checksum("hello")
    assert len(text) == 5
    decoded = 0
    for ch in text:
        decoded = decoded * 62 + BASE62.index(ch)
    assert decoded == value
    assert checksum("") == "00000"  # CRC32 of nothing is 0: still five characters


def test_random_base62_rejects_biased_bytes() -> None:
    stream = iter([bytes([255, 248, 0, 61, 62, 247])] + [bytes([1] * 16)] * 4)
    assert random_base62(4, lambda n: next(stream)) == "0z0z"


def test_public_id_and_tail_are_independent_random_draws(
    random: Callable[[int], bytes],
) -> None:
    a, b = (mint_api_key(LOCAL, 1001, PEPPER, random) for _ in range(2))
    assert a.key_id != b.key_id
    assert a.text.split(".")[1][:-5] not in a.key_id


@pytest.mark.parametrize(("kind", "site_id"), [(C, 2), (C, 0), (C, -1), (C, 2**31), (A, 5)])
def test_mint_refuses_site_ids_that_cannot_hold_the_credential(
    random: Callable[[int], bytes], kind: CredentialKind, site_id: int
) -> None:
    with pytest.raises(InvalidInput):
        mint(kind, LOCAL, site_id, PEPPER, random)


def test_mint_refuses_bool_site_id(random: Callable[[int], bytes]) -> None:
    with pytest.raises(InvalidInput):
        mint(A, LOCAL, False, PEPPER, random)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "UID2-C-L-1001-fCXrMM",
        "UID2-C-L-1001-fCXrMM.short",
        "EUIX-C-L-1001-fCXrMM." + "a" * 38,  # neither brand
        "uid2-C-L-1001-fCXrMM." + "a" * 38,
        "UID2-C-L-01001-fCXrMM." + "a" * 38,  # non-canonical site id
        "UID2-C-L-1001-fCX+MM." + "a" * 38,
        " UID2-C-L-1001-fCXrMM." + "a" * 38,
        "UID2-C-L-\u0661\u0662\u0663-fCXrMM." + "a" * 38,  # non-ASCII digits
        "UID2-C-L-" + "9" * 200 + "-fCXrMM." + "a" * 38,
    ],
)
def test_parse_refuses_wrong_shapes(text: str) -> None:
    with pytest.raises(MalformedCredential) as info:
        parse(text, C, LOCAL)
    assert info.value.detail == "The API key is malformed"


def test_parse_refuses_a_bad_checksum_without_echoing_the_text(
    random: Callable[[int], bytes],
) -> None:
    text = mint_api_key(LOCAL, 1001, PEPPER, random).text
    typo = text[:-1] + ("a" if text[-1] != "a" else "b")
    with pytest.raises(MalformedCredential, match="checksum") as info:
        parse(typo, C, LOCAL)
    assert typo not in str(info.value)
    assert typo.split(".")[1] not in repr(info.value)


@pytest.mark.parametrize(
    ("minted_in", "served_in"), [(INTEG, PROD), (PROD, INTEG), (LOCAL, PROD), (PROD, LOCAL)]
)
def test_parse_refuses_a_key_of_another_environment_naming_it(
    random: Callable[[int], bytes], minted_in: Environment, served_in: Environment
) -> None:
    text = mint_api_key(minted_in, 1001, PEPPER, random).text
    with pytest.raises(WrongEnvironment) as info:
        parse(text, C, served_in)
    assert info.value.detail == (
        f"This API key belongs to the {minted_in.value} environment; "
        f"this is the {served_in.value} environment"
    )


def test_wrong_environment_message_for_admin_tokens(random: Callable[[int], bytes]) -> None:
    text = mint_admin_token(INTEG, PEPPER, random).text
    with pytest.raises(WrongEnvironment, match="This admin token belongs to the integ environment"):
        parse(text, A, PROD)


def test_parse_refuses_the_other_kind(random: Callable[[int], bytes]) -> None:
    with pytest.raises(MalformedCredential, match="not an admin token"):
        parse(mint_api_key(LOCAL, 1001, PEPPER, random).text, A, LOCAL)
    with pytest.raises(MalformedCredential, match="not an API key"):
        parse(mint_admin_token(LOCAL, PEPPER, random).text, C, LOCAL)


def test_parse_refuses_an_unknown_environment_letter() -> None:
    text = _with_checksum("UID2-C-T-1001-fCXrMM." + "a" * 33)
    with pytest.raises(MalformedCredential, match="unknown environment"):
        parse(text, C, LOCAL)


@pytest.mark.parametrize(
    ("body", "kind"),
    [("UID2-C-L-2-fCXrMM.", C), ("UID2-C-L-2147483648-fCXrMM.", C), ("UID2-A-L-7-fCXrMM.", A)],
)
def test_parse_refuses_site_ids_that_cannot_hold_the_kind(body: str, kind: CredentialKind) -> None:
    with pytest.raises(MalformedCredential, match="cannot hold"):
        parse(_with_checksum(body + "a" * 33), kind, LOCAL)


def test_parsed_credential_fields(random: Callable[[int], bytes]) -> None:
    minted = mint_api_key(PROD, 2**31 - 1, PEPPER, random)
    parsed = parse(minted.text, C, PROD)
    assert parsed == ParsedCredential(C, PROD, 2**31 - 1, minted.key_id, minted.text)


def test_no_key_material_in_repr_or_str(random: Callable[[int], bytes]) -> None:
    minted = mint_api_key(LOCAL, 1001, PEPPER, random)
    parsed = parse(minted.text, C, LOCAL)
    tail = minted.text.split(".")[1]
    for obj in (minted, parsed):
        for shown in (repr(obj), str(obj)):
            assert minted.key_id in shown
            assert tail not in shown
            assert minted.key_hash.hex() not in shown
            assert repr(minted.key_hash) not in shown


# ------------------------------------------------------------------ verification


class _Record:
    def __init__(self, key_hash: bytes) -> None:
        self.key_hash = key_hash


def _verify(text: str, lookup: Callable[[str], _Record | None], env: Environment = LOCAL) -> Any:
    return verify(
        text,
        kind=C,
        environment=env,
        pepper=PEPPER,
        lookup=lookup,
        stored_hash=lambda r: r.key_hash,
    )


def test_verify_accepts_the_right_key(random: Callable[[int], bytes]) -> None:
    minted = mint_api_key(LOCAL, 1001, PEPPER, random)
    record = _Record(minted.key_hash)
    looked_up: list[str] = []

    def lookup(key_id: str) -> _Record:
        looked_up.append(key_id)
        return record

    assert _verify(minted.text, lookup) is record
    assert looked_up == [minted.key_id]  # one O(1) lookup by key id


def test_verify_refuses_a_bad_checksum_before_any_lookup_or_hash(
    random: Callable[[int], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    minted = mint_api_key(LOCAL, 1001, PEPPER, random)
    typo = minted.text[:-6] + ("x" if minted.text[-6] != "x" else "y") + minted.text[-5:]
    calls: list[object] = []
    monkeypatch.setattr(key_format, "keyed_hash", lambda *a: calls.append(a) or b"")

    with pytest.raises(MalformedCredential):
        _verify(typo, lambda key_id: calls.append(key_id) or None)
    assert calls == []


def test_verify_refuses_another_environment_before_any_lookup(
    random: Callable[[int], bytes],
) -> None:
    minted = mint_api_key(INTEG, 1001, PEPPER, random)
    calls: list[str] = []
    with pytest.raises(WrongEnvironment, match="integ"):
        _verify(minted.text, lambda key_id: calls.append(key_id) or None, env=PROD)
    assert calls == []


def test_verify_compares_with_compare_digest(
    random: Callable[[int], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    minted = mint_api_key(LOCAL, 1001, PEPPER, random)
    wrong = _Record(bytes(32))
    compared: list[tuple[bytes, bytes]] = []

    def always_equal(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return True

    monkeypatch.setattr(key_format.hmac, "compare_digest", always_equal)
    # If the decision did not rest on compare_digest, the wrong stored hash would be refused.
    assert _verify(minted.text, lambda key_id: wrong) is wrong
    assert compared == [(minted.key_hash, bytes(32))]


def test_unknown_key_id_still_computes_one_hmac_and_one_compare(
    random: Callable[[int], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    minted = mint_api_key(LOCAL, 1001, PEPPER, random)
    macs: list[bytes] = []
    compares: list[bytes] = []
    real_new, real_compare = hmac.new, hmac.compare_digest

    def counting_new(key: bytes, msg: bytes, digestmod: Any) -> hmac.HMAC:
        macs.append(msg)
        return real_new(key, msg, digestmod)

    def counting_compare(a: bytes, b: bytes) -> bool:
        compares.append(b)
        return real_compare(a, b)

    monkeypatch.setattr(key_format.hmac, "new", counting_new)
    monkeypatch.setattr(key_format.hmac, "compare_digest", counting_compare)
    with pytest.raises(CredentialRejected) as unknown:
        _verify(minted.text, lambda key_id: None)
    assert macs == [minted.text.encode()]
    assert len(compares) == 1

    macs.clear()
    compares.clear()
    with pytest.raises(CredentialRejected) as mismatch:
        _verify(minted.text, lambda key_id: _Record(bytes(range(32))))
    assert len(macs) == 1
    assert len(compares) == 1
    assert unknown.value.detail == mismatch.value.detail  # a miss and a wrong tail look the same


def test_hash_matches_never_accepts_a_missing_hash_even_if_it_equals_the_dummy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(key_format, "keyed_hash", lambda pepper, text: bytes(32))
    assert hash_matches(PEPPER, "anything", None) is False
    assert hash_matches(PEPPER, "anything", bytes(32)) is True


# ------------------------------------------------------------------ properties


def _stream(seed: bytes) -> Callable[[int], bytes]:
    counter = iter(range(1 << 30))
    return lambda n: hashlib.shake_256(seed + next(counter).to_bytes(4, "big")).digest(n)


_near_format = st.builds(
    lambda env, site, mid, tail: f"UID2-{env}-{site}-{mid}.{tail}",
    st.sampled_from(["C-L", "C-I", "C-P", "A-L", "C-T", "O-P", "c-l"]),
    st.one_of(st.integers(-5, 2**32).map(str), st.text(max_size=4)),
    st.text(alphabet=BASE62 + "+/=", min_size=5, max_size=7),
    st.text(alphabet=BASE62 + "+/=.", min_size=36, max_size=40),
)


@settings(deadline=None, max_examples=300)
@given(
    text=st.one_of(st.text(max_size=80), _near_format),
    kind=st.sampled_from(CredentialKind),
    env=st.sampled_from(Environment),
)
def test_any_text_parses_or_raises_a_credential_error(
    text: str, kind: CredentialKind, env: Environment
) -> None:
    try:
        parsed = parse(text, kind, env)
    except (MalformedCredential, WrongEnvironment):
        return
    assert parsed.text == text
    assert parsed.environment is env


@settings(deadline=None, max_examples=200)
@given(
    site_id=st.integers(3, 2**31 - 1),
    env=st.sampled_from(Environment),
    seed=st.binary(max_size=8),
)
def test_mint_parse_round_trip(site_id: int, env: Environment, seed: bytes) -> None:
    minted = mint_api_key(env, site_id, PEPPER, _stream(seed))
    parsed = parse(minted.text, C, env)
    assert (parsed.site_id, parsed.key_id, parsed.text) == (site_id, minted.key_id, minted.text)
    others = [e for e in Environment if e is not env]
    for other in others:
        with pytest.raises(WrongEnvironment):
            parse(minted.text, C, other)


@pytest.mark.parametrize("brand", ["UID2", "EUID"])
def test_an_api_key_carries_its_scopes_brand_and_verifies(
    random: Callable[[int], bytes], brand: str
) -> None:
    """An EUID deployment's keys read ``EUID-C-...`` (still the reference's pattern), parse and
    verify as the UID2 scope's do; the brand is part of the key id a key is found by."""
    minted = mint_api_key(LOCAL, 1001, PEPPER, random, brand=brand)
    assert minted.key_id.startswith(f"{brand}-C-L-1001-")
    assert REFERENCE_PATTERN.fullmatch(minted.text) is not None
    assert parse(minted.text, C, LOCAL).key_id == minted.key_id
    found = verify(
        minted.text,
        kind=C,
        environment=LOCAL,
        pepper=PEPPER,
        lookup={minted.key_id: minted.key_hash}.get,
        stored_hash=lambda stored: stored,
    )
    assert found == minted.key_hash
    other = ("EUID" if brand == "UID2" else "UID2") + minted.text[4:]
    with pytest.raises(MalformedCredential):  # the other brand: the checksum covers it
        parse(other, C, LOCAL)


def test_mint_refuses_an_unknown_brand(random: Callable[[int], bytes]) -> None:
    with pytest.raises(InvalidInput):
        mint_api_key(LOCAL, 1001, PEPPER, random, brand="XUID")
