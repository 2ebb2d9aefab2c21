"""The per-request issuing path: packed token encoders, one-draw issuance, the response JSON.

``issue_identity`` packs its tokens straight from its arguments; these tests hold it to the
bytes of the value-based encoders (``encode_refresh_token_with_iv``,
``encode_advertising_token_with_ivs``, ``wrap_refresh_token_with_iv``) and to their refusals,
and ``success_identity_json`` to ``success_body``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_operator.wire import aead
from uid2_operator.wire.encoding import b64encode
from uid2_operator.wire.envelope import success_body
from uid2_operator.wire.keys import EncryptionKey
from uid2_operator.wire.refresh import (
    IdentityResponseBody,
    issue_identity,
    success_identity_json,
    wrap_refresh_token_with_iv,
)
from uid2_operator.wire.scope import IdentityScope, IdentityType, identity_type_byte
from uid2_operator.wire.tokens import (
    AdvertisingToken,
    RefreshToken,
    TokenVersion,
    encode_advertising_token_with_ivs,
    encode_refresh_token_with_iv,
    seal_advertising_token,
    seal_refresh_token,
)

NOW = 1_700_000_000_123


def make_key(key_id: int, keyset_id: int, secret: bytes) -> EncryptionKey:
    return EncryptionKey(key_id, keyset_id, created=0, activates=0, expires=2**40, secret=secret)


MASTER = make_key(11, -1, b"M" * 32)
SITE = make_key(22, 7, b"S" * 32)
REFRESH = make_key(33, -2, b"R" * 32)
FLH = bytes(range(1, 33))
I32 = st.integers(-(2**31), 2**31 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
BLOCK = bytes(range(80))


def draws(*blocks: bytes) -> Callable[[int], bytes]:
    """A random source that hands out ``blocks`` in order, whatever size is asked for."""
    it: Iterator[bytes] = iter(blocks)
    return lambda _size: next(it)


def split(block: bytes) -> list[bytes]:
    return [block[:32], block[32:44], block[44:56], block[56:68], block[68:80]]


def issue(**overrides: Any) -> IdentityResponseBody:
    arguments: dict[str, Any] = {
        "now_ms": NOW,
        "identity_lifetime_s": 3600,
        "refresh_lifetime_s": 86_400,
        "refresh_after_s": 900,
        "master_key": MASTER,
        "site_key": SITE,
        "refresh_key": REFRESH,
        "site_id": 1234,
        "privacy_bits": 1,
        "established_ms": NOW - 5000,
        "raw_uid": bytes(32),
        "first_level_hash": FLH,
        "scope": IdentityScope.UID2,
        "identity_type": IdentityType.EMAIL,
        "random": draws(BLOCK),
        "draw_once": True,
    }
    arguments.update(overrides)
    return issue_identity(**arguments)


# ------------------------------------------------------------------------------ same bytes


@settings(deadline=None, max_examples=60)
@given(
    scope=st.sampled_from(IdentityScope),
    kind=st.sampled_from(IdentityType),
    raw_size=st.sampled_from([32, 33]),
    now_ms=st.integers(0, 2**50),
    site_id=I32,
    privacy_bits=I32,
    established_ms=st.integers(-(2**50), 2**50),
    block=st.binary(min_size=80, max_size=80),
)
def test_issuance_matches_the_value_encoders(
    *,
    scope: IdentityScope,
    kind: IdentityType,
    raw_size: int,
    now_ms: int,
    site_id: int,
    privacy_bits: int,
    established_ms: int,
    block: bytes,
) -> None:
    identity = identity_type_byte(scope, kind)
    raw_uid = bytes([identity & 0x1C]) + bytes(32) if raw_size == 33 else bytes(range(32))
    common: dict[str, Any] = {
        "now_ms": now_ms,
        "site_id": site_id,
        "privacy_bits": privacy_bits,
        "established_ms": established_ms,
        "raw_uid": raw_uid,
        "scope": scope,
        "identity_type": kind,
    }
    once = issue(**common, random=draws(block), draw_once=True)
    five = issue(**common, random=draws(*split(block)), draw_once=False)
    assert once == five

    response_key, refresh_iv, site_iv, master_iv, envelope_iv = split(block)
    refresh = RefreshToken(
        scope=scope,
        identity_type=kind,
        key_id=REFRESH.id,
        expires_ms=now_ms + 86_400_000,
        created_ms=now_ms,
        site_id=site_id,
        privacy_bits=privacy_bits,
        established_ms=established_ms,
        first_level_hash=FLH,
    )
    inner = encode_refresh_token_with_iv(refresh, key=REFRESH, iv=refresh_iv)
    advertising = AdvertisingToken(
        scope=scope,
        identity_type=kind,
        master_key_id=MASTER.id,
        site_key_id=SITE.id,
        expires_ms=now_ms + 3_600_000,
        created_ms=now_ms,
        site_id=site_id,
        privacy_bits=privacy_bits,
        established_ms=established_ms,
        refreshed_ms=now_ms,
        raw_uid=raw_uid,
    )
    assert once == {
        "advertising_token": encode_advertising_token_with_ivs(
            advertising, master_key=MASTER, site_key=SITE, master_iv=master_iv, site_iv=site_iv
        ),
        "refresh_token": wrap_refresh_token_with_iv(
            inner, response_key, REFRESH, scope, envelope_iv
        ),
        "identity_expires": now_ms + 3_600_000,
        "refresh_expires": now_ms + 86_400_000,
        "refresh_from": now_ms + 900_000,
        "refresh_response_key": b64encode(response_key),
    }
    assert success_identity_json(once) == success_body(once)


def test_one_draw_asks_for_eighty_bytes() -> None:
    asked: list[int] = []

    def random(size: int) -> bytes:
        asked.append(size)
        return BLOCK[:size]

    issue(random=random, draw_once=True)
    assert asked == [80]
    issue(random=random, draw_once=False)
    assert asked == [80, 32, 12, 12, 12, 12]


# ------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"raw_uid": bytes(31)}, "32 or 33"),
        ({"first_level_hash": bytes(31)}, "first-level hash must be 32 bytes"),
        ({"raw_uid": b"\x04" + bytes(32)}, "scope/type"),
        ({"site_id": 2**31}, "site_id does not fit"),
        ({"established_ms": 2**63}, "established_ms does not fit"),
        (
            {"random": draws(bytes(31), *[bytes(12)] * 4), "draw_once": False},
            "response key must be 32 bytes",
        ),
        ({"random": draws(BLOCK[:79])}, "IV must be 12 bytes"),
        ({"random": draws(bytes(32), bytes(11), *[bytes(12)] * 3), "draw_once": False}, "IV"),
    ],
)
def test_issuance_refuses_like_the_token_values(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        issue(**overrides)


def test_a_refresh_key_id_outside_int32_is_refused() -> None:
    wide = make_key(2**31, -2, bytes(32))
    with pytest.raises(ValueError, match="key_id does not fit"):
        issue(refresh_key=wide)


def test_packed_encoders_refuse_what_their_fields_cannot_carry() -> None:
    fields: dict[str, Any] = {
        "expires_ms": NOW,
        "created_ms": NOW,
        "site_id": 1,
        "privacy_bits": 1,
        "established_ms": NOW,
    }
    with pytest.raises(ValueError, match="IV must be 12 bytes"):
        seal_refresh_token(
            identity_byte=3, key=REFRESH, iv=bytes(11), first_level_hash=FLH, **fields
        )
    with pytest.raises(ValueError, match="does not fit"):
        seal_refresh_token(
            identity_byte=256, key=REFRESH, iv=bytes(12), first_level_hash=FLH, **fields
        )
    advertising: dict[str, Any] = {
        **fields,
        "identity_byte": 3,
        "version": TokenVersion.V4,
        "master_key": MASTER,
        "site_key": SITE,
        "refreshed_ms": NOW,
        "raw_uid": bytes(32),
    }
    with pytest.raises(ValueError, match="IV must be 12 bytes"):
        seal_advertising_token(**advertising, master_iv=bytes(12), site_iv=bytes(13))
    with pytest.raises(ValueError, match="does not fit"):
        seal_advertising_token(
            **{**advertising, "operator_type": -1}, master_iv=bytes(12), site_iv=bytes(12)
        )


def test_envelope_refuses_a_wrong_iv_and_a_key_id_outside_int32() -> None:
    inner = encode_refresh_token_with_iv(
        RefreshToken(
            scope=IdentityScope.UID2,
            identity_type=IdentityType.EMAIL,
            key_id=REFRESH.id,
            expires_ms=NOW,
            created_ms=NOW,
            site_id=1,
            privacy_bits=1,
            established_ms=NOW,
            first_level_hash=FLH,
        ),
        key=REFRESH,
        iv=bytes(12),
    )
    with pytest.raises(ValueError, match="IV must be 12 bytes"):
        wrap_refresh_token_with_iv(inner, bytes(32), REFRESH, IdentityScope.UID2, bytes(11))
    wide = make_key(-(2**31) - 1, -2, bytes(32))
    with pytest.raises(ValueError, match="envelope field does not fit"):
        wrap_refresh_token_with_iv(inner, bytes(32), wide, IdentityScope.UID2, bytes(12))


def test_token_fields_must_be_integers() -> None:
    with pytest.raises(ValueError, match="integers"):
        RefreshToken(
            scope=IdentityScope.UID2,
            identity_type=IdentityType.EMAIL,
            key_id=1,
            expires_ms=1.5,  # type: ignore[arg-type]
            created_ms=NOW,
            site_id=1,
            privacy_bits=1,
            established_ms=NOW,
            first_level_hash=FLH,
        )


# ------------------------------------------------------------------------------ response JSON

TEXT = st.one_of(st.text(max_size=12), st.sampled_from(["", "a/b+c==", 'q"uote', "back\\", "\x1f"]))
NUMBER = st.one_of(
    I64, st.booleans(), st.floats(allow_nan=False), st.sampled_from([TokenVersion.V4])
)


@settings(deadline=None, max_examples=300)
@given(ad=TEXT, refresh=TEXT, key=TEXT, a=NUMBER, b=NUMBER, c=NUMBER)
def test_identity_json_is_success_body(
    *, ad: str, refresh: str, key: str, a: int, b: int, c: int
) -> None:
    body: IdentityResponseBody = {
        "advertising_token": ad,
        "refresh_token": refresh,
        "identity_expires": a,
        "refresh_expires": b,
        "refresh_from": c,
        "refresh_response_key": key,
    }
    assert success_identity_json(body) == success_body(body)


def test_identity_json_of_a_non_text_value_falls_back_to_the_encoder() -> None:
    body = json.loads(success_identity_json(issue()))["body"]
    body["refresh_token"] = None
    assert success_identity_json(body) == success_body(body)


# ------------------------------------------------------------------------------ cipher cache


def test_ciphers_are_shared_per_key_and_any_bytes_like_key_works() -> None:
    assert aead.cipher(b"K" * 32) is aead.cipher(b"K" * 32)
    iv = bytes(12)
    sealed = aead.cipher(bytearray(b"K" * 32)).encrypt(iv, b"x", None)
    assert aead.open_(b"K" * 32, iv + sealed) == b"x"
    with pytest.raises(ValueError, match="AESGCM key must be"):
        aead.cipher(bytes(31))
