"""Properties of the token and refresh-envelope codecs: total parsers and exact round trips."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_operator.errors import RefreshEnvelopeError, ResponseEnvelopeError, TokenError
from uid2_operator.wire.encoding import b64decode, b64encode, b64url_encode, pack_i32
from uid2_operator.wire.keys import EncryptionKey
from uid2_operator.wire.refresh import (
    ENVELOPE_LENGTH,
    decrypt_refresh_response,
    encrypt_refresh_response,
    unwrap_refresh_envelope,
    wrap_refresh_token,
)
from uid2_operator.wire.scope import IdentityScope, IdentityType, identity_type_byte
from uid2_operator.wire.tokens import (
    AdvertisingToken,
    RefreshToken,
    TokenVersion,
    decode_advertising_token,
    decode_refresh_token,
    encode_advertising_token,
    encode_refresh_token,
)

SECRET = b"K" * 32


def any_key(key_id: int) -> EncryptionKey:
    """A lookup that knows every id, so arbitrary input reaches the decryption steps."""
    return EncryptionKey(id=key_id, keyset_id=-1, created=0, activates=0, expires=1, secret=SECRET)


def seq(seed: int) -> Callable[[int], bytes]:
    counter = [0]

    def random(size: int) -> bytes:
        out = b""
        while len(out) < size:
            out += hashlib.sha256(f"{seed}:{counter[0]}".encode()).digest()
            counter[0] += 1
        return out[:size]

    return random


i32 = st.integers(-(2**31), 2**31 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
scopes = st.sampled_from(IdentityScope)
kinds = st.sampled_from(IdentityType)
headers = st.sampled_from([0x03, 0x07, 0x13, 0x17, 0x00, 0x02, 0x0B, 0xFF])
versions = st.sampled_from([0x70, 0x80, 0x02, 0x00])

# Arbitrary text, and arbitrary bytes behind a plausible header in either alphabet.
token_texts = st.one_of(
    st.text(max_size=300),
    st.builds(
        lambda b0, ver, body, url: (b64url_encode if url else b64encode)(bytes([b0, ver]) + body),
        headers,
        versions,
        st.binary(max_size=300),
        st.booleans(),
    ),
)


@settings(deadline=None, max_examples=400)
@given(text=token_texts)
def test_advertising_decoder_is_total(text: str) -> None:
    try:
        token = decode_advertising_token(text, master_key=any_key, site_key=any_key)
    except TokenError:
        return
    assert isinstance(token, AdvertisingToken)


@settings(deadline=None, max_examples=400)
@given(text=token_texts, known=st.booleans())
def test_refresh_decoder_is_total(text: str, known: bool) -> None:
    try:
        token = decode_refresh_token(text, key_lookup=any_key if known else lambda _: None)
    except TokenError:
        return
    assert isinstance(token, RefreshToken)


envelope_texts = st.one_of(
    st.text(max_size=400),
    st.builds(b64encode, st.binary(max_size=300)),
    st.builds(
        lambda kid, body: b64encode(b"\x00" + pack_i32(kid) + body), i32, st.binary(max_size=300)
    ),
)


@settings(deadline=None, max_examples=400)
@given(text=envelope_texts, known=st.booleans())
def test_envelope_opener_is_total(text: str, known: bool) -> None:
    try:
        opened = unwrap_refresh_envelope(text, any_key if known else lambda _: None)
    except RefreshEnvelopeError:
        return
    assert len(opened.response_key) == 32


@settings(deadline=None, max_examples=300)
@given(text=envelope_texts)
def test_response_decrypter_is_total(text: str) -> None:
    try:
        decrypt_refresh_response(SECRET, text)
    except ResponseEnvelopeError:
        return


@st.composite
def advertising_tokens(draw: st.DrawFn) -> AdvertisingToken:
    scope, kind = draw(scopes), draw(kinds)
    if draw(st.booleans()):
        raw_uid = draw(st.binary(min_size=32, max_size=32))
    else:
        # Version and environment bits of v4 raw UIDs are free; scope/type must match.
        extra = draw(st.sampled_from([0x00, 0x20, 0x60, 0xA0, 0x01, 0x02]))
        meta = (identity_type_byte(scope, kind) & 0x1C) | extra
        raw_uid = bytes([meta]) + draw(st.binary(min_size=32, max_size=32))
    return AdvertisingToken(
        version=draw(st.sampled_from([TokenVersion.V3, TokenVersion.V4])),
        scope=scope,
        identity_type=kind,
        master_key_id=draw(i32),
        site_key_id=draw(i32),
        expires_ms=draw(i64),
        created_ms=draw(i64),
        site_id=draw(i32),
        privacy_bits=draw(i32),
        established_ms=draw(i64),
        refreshed_ms=draw(i64),
        raw_uid=raw_uid,
        operator_site_id=draw(i32),
        operator_type=draw(st.integers(0, 255)),
        operator_version=draw(i32),
        operator_key_id=draw(i32),
        publisher_id=draw(i64),
        client_key_id=draw(i32),
    )


secrets = st.binary(min_size=32, max_size=32)


@settings(deadline=None, max_examples=200)
@given(token=advertising_tokens(), master=secrets, site=secrets, seed=st.integers())
def test_advertising_round_trip(
    token: AdvertisingToken, master: bytes, site: bytes, seed: int
) -> None:
    mk = EncryptionKey(
        id=token.master_key_id, keyset_id=-1, created=0, activates=0, expires=1, secret=master
    )
    sk = EncryptionKey(
        id=token.site_key_id, keyset_id=9, created=0, activates=0, expires=1, secret=site
    )
    text = encode_advertising_token(token, master_key=mk, site_key=sk, random=seq(seed))
    decoded = decode_advertising_token(text, master_key={mk.id: mk}.get, site_key={sk.id: sk}.get)
    expected = token
    if len(token.raw_uid) == 32:
        expected = replace(token, scope=IdentityScope.UID2, identity_type=IdentityType.EMAIL)
    assert decoded == expected
    if token.version is TokenVersion.V4:
        assert len(text) == (219 if len(token.raw_uid) == 33 else 218)
    else:
        assert len(text) == 220  # 163 or 164 bytes, padded standard base64


@st.composite
def refresh_tokens(draw: st.DrawFn) -> RefreshToken:
    return RefreshToken(
        scope=draw(scopes),
        identity_type=draw(kinds),
        key_id=draw(i32),
        expires_ms=draw(i64),
        created_ms=draw(i64),
        site_id=draw(i32),
        privacy_bits=draw(i32),
        established_ms=draw(i64),
        first_level_hash=draw(st.binary(min_size=32, max_size=32)),
        operator_site_id=draw(i32),
        operator_type=draw(st.integers(0, 255)),
        operator_version=draw(i32),
        operator_key_id=draw(i32),
        publisher_id=draw(i64),
        client_key_id=draw(i32),
    )


@settings(deadline=None, max_examples=200)
@given(
    token=refresh_tokens(),
    secret=secrets,
    response_key=secrets,
    envelope_scope=scopes,
    seed=st.integers(),
)
def test_refresh_token_and_envelope_round_trip(
    token: RefreshToken,
    secret: bytes,
    response_key: bytes,
    envelope_scope: IdentityScope,
    seed: int,
) -> None:
    key = EncryptionKey(
        id=token.key_id, keyset_id=-2, created=0, activates=0, expires=1, secret=secret
    )
    random = seq(seed)
    inner = encode_refresh_token(token, key=key, random=random)
    assert len(inner) == 168
    assert decode_refresh_token(inner, key_lookup={key.id: key}.get) == token

    envelope = wrap_refresh_token(inner, response_key, key, envelope_scope, random)
    assert len(envelope) == ENVELOPE_LENGTH
    assert unwrap_refresh_envelope(envelope, {key.id: key}.get) == (response_key, inner)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(deadline=None, max_examples=200)
@given(payload=st.dictionaries(st.text(), json_values, max_size=5), key=secrets, seed=st.integers())
def test_refresh_response_round_trip(payload: dict[str, Any], key: bytes, seed: int) -> None:
    text = encrypt_refresh_response(key, payload, seq(seed))
    assert decrypt_refresh_response(key, text) == payload


MUTATION_MASTER = EncryptionKey(
    id=5, keyset_id=-1, created=0, activates=0, expires=1, secret=b"m" * 32
)
MUTATION_SITE = EncryptionKey(
    id=6, keyset_id=9, created=0, activates=0, expires=1, secret=b"s" * 32
)
MUTATION_TOKEN = AdvertisingToken(
    scope=IdentityScope.UID2,
    identity_type=IdentityType.PHONE,
    master_key_id=5,
    site_key_id=6,
    expires_ms=2,
    created_ms=1,
    site_id=77,
    privacy_bits=1,
    established_ms=1,
    refreshed_ms=1,
    raw_uid=b"\x04" + bytes(32),
)
MUTATION_BYTES = bytes(
    b64decode(
        encode_advertising_token(
            replace(MUTATION_TOKEN, version=TokenVersion.V3),
            master_key=MUTATION_MASTER,
            site_key=MUTATION_SITE,
            random=seq(1),
        )
    )
)


@settings(deadline=None, max_examples=300)
@given(index=st.integers(0, len(MUTATION_BYTES) - 1), flip=st.integers(1, 255), url=st.booleans())
def test_a_flipped_byte_never_yields_a_different_token(index: int, flip: int, url: bool) -> None:
    data = bytearray(MUTATION_BYTES)
    data[index] ^= flip
    text = (b64url_encode if url else b64encode)(bytes(data))
    lookup = {5: MUTATION_MASTER, 6: MUTATION_SITE}.get
    try:
        token = decode_advertising_token(text, master_key=lookup, site_key=lookup)
    except TokenError:
        return
    # Only the unauthenticated header (identity and version bits) can change without detection,
    # and never the sealed fields.
    assert index < 2
    assert replace(token, version=TokenVersion.V3) == replace(
        MUTATION_TOKEN, version=TokenVersion.V3
    )
