"""Strict base64 framing, compact JSON and integer packing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_operator.wire import encoding


@pytest.mark.parametrize(
    ("text", "expected"),
    [("AA==", b"\x00"), ("AA", b"\x00"), ("AAA=", b"\x00\x00"), ("AAA", b"\x00\x00"), ("", b"")],
)
def test_padding_may_be_left_out(text: str, expected: bytes) -> None:
    assert encoding.b64decode(text) == expected


@pytest.mark.parametrize(
    "text", ["==", "AA=", "A", "AAAAA", "AA===", "A A=", "AA\n", "-_==", "é", "AB=C"]
)
def test_malformed_base64_is_refused(text: str) -> None:
    with pytest.raises(encoding.Base64Error):
        encoding.b64decode(text)


def test_urlsafe_refuses_the_standard_alphabet() -> None:
    assert encoding.b64url_decode("_-CI_-6ZmQ") == bytes.fromhex("ffe088ffee9999")
    assert encoding.b64url_encode(bytes.fromhex("ffe088ffee9999")) == "_-CI_-6ZmQ"
    with pytest.raises(encoding.Base64Error):
        encoding.b64url_decode("/+CI/+6ZmQ")
    for text in ("ab/d", "ab+d", "_-CI/-6ZmQ", "_-CI_+6ZmQ"):  # either character alone
        with pytest.raises(encoding.Base64Error, match="standard alphabet"):
            encoding.b64url_decode(text)


def test_bytes_input_is_accepted() -> None:
    assert encoding.b64decode(b"AQI=") == b"\x01\x02"


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=64))
def test_round_trips(data: bytes) -> None:
    assert encoding.b64decode(encoding.b64encode(data)) == data
    assert encoding.b64url_decode(encoding.b64url_encode(data)) == data


def test_json_is_compact_and_unescaped() -> None:
    assert encoding.dumps({"a": "ü/x", "b": [1, 2]}) == '{"a":"ü/x","b":[1,2]}'.encode()


def test_lone_surrogates_become_replacement_characters() -> None:
    written = encoding.dumps({"identifier": json.loads('"a\\ud800b"')})
    assert json.loads(written) == {"identifier": "a\ufffdb"}
    # A low half alone as well (U+DC00-U+DFFF), and one of each in the wrong order.
    written = encoding.dumps({"a": json.loads('"x\\udc00y\\udfff"'), "b": "\udc00\ud800"})
    assert written == '{"a":"x\ufffdy\ufffd","b":"\ufffd\ufffd"}'.encode()


def test_integers_are_big_endian_signed() -> None:
    assert encoding.pack_i32(-2) == b"\xff\xff\xff\xfe"
    assert encoding.unpack_i32(b"\x00" + encoding.pack_i32(-2), 1) == -2
    assert encoding.pack_i64(1700000000000) == bytes.fromhex("0000018bcfe56800")
    assert encoding.unpack_i64(bytes.fromhex("0000018bcfe56800")) == 1700000000000
