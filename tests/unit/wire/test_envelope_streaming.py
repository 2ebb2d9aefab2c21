"""A response sealed and framed as it is written equals the one sealed and framed whole.

``aead.seal_in_parts``, ``stream_response`` and ``Base64Stream`` take their input in parts; for any
split of the same bytes, under the same IV, the parts they give join into exactly what
``seal_response`` / ``frame_response`` / ``b64encode_ascii`` give for the whole, and what a
client opens.
"""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_operator.wire import aead
from uid2_operator.wire.encoding import (
    Base64Stream,
    b64decode,
    b64encode_ascii,
    dumps,
    json_string,
    json_utf8,
    pack_i64,
)
from uid2_operator.wire.envelope import (
    OCTET_STREAM,
    TEXT_PLAIN,
    frame_response,
    framed_response_size,
    open_response,
    seal_response,
    stream_response,
    unframe_response,
)

SECRET = bytes(range(32))
NONCE = b"\x01\x02\x03\x04\x05\x06\x07\x08"
NOW = 1_700_000_000_000

ivs = st.binary(min_size=aead.IV_SIZE, max_size=aead.IV_SIZE)
secrets_ = st.binary(min_size=32, max_size=32)
nonces = st.binary(min_size=8, max_size=8)
times = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def draw_iv(iv: bytes) -> aead.RandomBytes:
    def random(n: int) -> bytes:
        assert n == aead.IV_SIZE
        return iv

    return random


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at random places (empty parts included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


@st.composite
def split_bytes(draw: st.DrawFn, max_size: int = 600) -> tuple[bytes, list[bytes]]:
    data = draw(st.binary(max_size=max_size))
    return data, draw(split(data))


# ------------------------------------------------------------------------------ base64


@settings(deadline=None, max_examples=300)
@given(split_bytes())
def test_base64_of_parts_joins_into_the_base64_of_the_whole(
    case: tuple[bytes, list[bytes]],
) -> None:
    data, parts = case
    stream = Base64Stream()
    out = [stream.update(part) for part in parts]
    out.append(stream.finish())
    assert b"".join(out) == b64encode_ascii(data)
    assert b64decode(b"".join(out)) == data
    # Every part but the last is whole 4-character groups: nothing is padded before the end.
    assert all(len(text) % 4 == 0 and b"=" not in text for text in out[:-1])


def test_a_base64_stream_starts_over_after_finishing() -> None:
    stream = Base64Stream()
    assert stream.update(b"ab") == b""
    assert stream.finish() == b"YWI="
    assert stream.update(b"abcd") + stream.finish() == b"YWJjZA=="


# ------------------------------------------------------------------------------ JSON text


@settings(deadline=None, max_examples=300)
@given(st.text())
def test_a_json_string_piece_is_written_as_dumps_writes_it(text: str) -> None:
    assert json_utf8(json_string(text)) == dumps(text)
    assert json_utf8("[" + json_string(text) + "]") == dumps([text])


def test_a_lone_surrogate_in_a_piece_becomes_a_replacement_character() -> None:
    piece = '{"a":' + json_string("x\ud800y") + "}"
    assert json_utf8(piece) == dumps({"a": "x\ud800y"}) == '{"a":"x\ufffdy"}'.encode()


# ------------------------------------------------------------------------------ the seal


@settings(deadline=None, max_examples=200)
@given(split_bytes(), ivs, secrets_, nonces, times)
def test_a_response_sealed_in_parts_equals_the_one_sealed_whole(
    case: tuple[bytes, list[bytes]], iv: bytes, secret: bytes, nonce: bytes, now_ms: int
) -> None:
    body, parts = case
    header = pack_i64(now_ms) + nonce
    sealer = aead.seal_in_parts(secret, iv)
    out = [sealer.update(header + part if i == 0 else part) for i, part in enumerate(parts)]
    if not parts:
        out.append(sealer.update(header))
    out.append(sealer.finish())
    whole = seal_response(body, secret=secret, nonce=nonce, now_ms=now_ms, random=draw_iv(iv))
    assert b"".join(out) == whole
    # Bytes come out as they go in: the tag alone waits for the end.
    assert len(out[-1]) == aead.TAG_SIZE
    assert out[0][: aead.IV_SIZE] == iv


def test_a_sealer_made_with_a_bad_nonce_or_iv_refuses() -> None:
    with pytest.raises(ValueError, match="nonce"):
        stream_response(
            [b"{}"], secret=SECRET, nonce=b"short", now_ms=NOW, random=draw_iv(bytes(12)),
            binary=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match="IV"):
        stream_response(
            [b"{}"], secret=SECRET, nonce=NONCE, now_ms=NOW, random=lambda n: bytes(n - 1),
            binary=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match="IV"):
        aead.seal_in_parts(SECRET, bytes(11))


# ------------------------------------------------------------------------------ stream_response


json_pieces = st.lists(st.binary(max_size=300), max_size=6)


@settings(deadline=None, max_examples=200)
@given(json_pieces, ivs, st.booleans())
def test_a_streamed_response_is_the_one_shot_body_one_part_per_piece(
    pieces: list[bytes], iv: bytes, binary: bool
) -> None:
    parts, content_type = stream_response(
        pieces, secret=SECRET, nonce=NONCE, now_ms=NOW, random=draw_iv(iv), binary=binary
    )
    out = list(parts)
    sealed = seal_response(
        b"".join(pieces), secret=SECRET, nonce=NONCE, now_ms=NOW, random=draw_iv(iv)
    )
    assert (b"".join(out), content_type) == frame_response(sealed, binary)
    assert content_type == (OCTET_STREAM if binary else TEXT_PLAIN)
    assert len(out) == max(1, len(pieces))


@st.composite
def json_in_pieces(draw: st.DrawFn) -> tuple[dict[str, Any], list[bytes]]:
    value = draw(
        st.dictionaries(
            st.text(max_size=8), st.lists(st.text(max_size=30), max_size=20), max_size=5
        )
    )
    return value, draw(split(dumps(value)))


@settings(deadline=None, max_examples=150)
@given(json_in_pieces(), st.booleans())
def test_a_streamed_response_opens_as_the_client_opens_any(
    case: tuple[dict[str, Any], list[bytes]], binary: bool
) -> None:
    value, pieces = case
    parts, _ = stream_response(
        pieces, secret=SECRET, nonce=NONCE, now_ms=NOW, random=draw_iv(bytes(12)), binary=binary
    )
    body = b"".join(parts)
    assert open_response(unframe_response(body, binary), secret=SECRET, nonce=NONCE) == value


@pytest.mark.parametrize("binary", [False, True])
def test_pieces_are_read_only_as_parts_are_taken(binary: bool) -> None:
    read: list[int] = []

    def pieces() -> Any:
        for n in range(3):
            read.append(n)
            yield json.dumps({"n": n}).encode()

    parts, _ = stream_response(
        pieces(), secret=SECRET, nonce=NONCE, now_ms=NOW, random=draw_iv(bytes(12)), binary=binary
    )
    assert read == []
    next(parts)
    assert read == [0, 1]  # the first part is sent once it is known not to be the last
    assert len(list(parts)) == 2
    assert read == [0, 1, 2]


@settings(deadline=None)
@given(body=st.binary(max_size=300), binary=st.booleans(), now_ms=st.integers(0, 2**62))
def test_the_framed_size_is_known_from_the_json_size_alone(
    body: bytes, binary: bool, now_ms: int
) -> None:
    sealed = seal_response(
        body, secret=SECRET, nonce=NONCE, now_ms=now_ms, random=lambda n: b"\x07" * n
    )
    framed, _ = frame_response(sealed, binary)
    assert framed_response_size(len(body), binary) == len(framed)
