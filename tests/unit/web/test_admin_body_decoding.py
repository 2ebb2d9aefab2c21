"""How the admin API decodes a request body: only a zero-length body is "no body" (``{}``); any
other must be a JSON object, so whitespace alone is malformed like any other text that is not
JSON."""

from __future__ import annotations

import pytest

from uid2_operator.errors import MalformedBody
from uid2_operator.web.admin_api.bodies import BodySpec, Field, Kind, decode_object

NOT_JSON = "The request body is not valid JSON"
UTF8 = "The request body is not valid JSON (it must be UTF-8)"
WHITESPACE = [
    pytest.param(raw, id=label)
    for label, raw in [
        ("tab", b"\t"),
        ("space", b" "),
        ("spaces and newline", b"  \n"),
        ("crlf", b"\r\n"),
        ("mixed", b"\n\t \r"),
        ("a thousand spaces", b" " * 1000),
    ]
]


def test_a_zero_length_body_is_no_body() -> None:
    assert decode_object(b"") == {}
    optional = BodySpec((Field("name", Kind.STRING, "a name"),))
    assert optional.parse(b"").optional_text("name") is None
    BodySpec().parse(b"")  # a route that takes no fields accepts no body


@pytest.mark.parametrize("raw", WHITESPACE)
def test_a_body_of_whitespace_only_is_not_json(raw: bytes) -> None:
    with pytest.raises(MalformedBody) as refused:
        decode_object(raw)
    assert str(refused.value) == NOT_JSON


@pytest.mark.parametrize("raw", WHITESPACE)
def test_a_blank_body_is_malformed_before_fields_are_checked(raw: bytes) -> None:
    spec = BodySpec((Field("name", Kind.STRING, "a name", required=True),))
    with pytest.raises(MalformedBody):
        spec.parse(raw)
    with pytest.raises(MalformedBody):
        BodySpec().parse(raw)


def test_an_object_among_whitespace_is_still_an_object() -> None:
    assert decode_object(b" \t{}\r\n") == {}
    assert decode_object(b'\n{"name": "n"} ') == {"name": "n"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(b'\xef\xbb\xbf{"name":"n"}', NOT_JSON, id="utf-8 with a byte-order mark"),
        pytest.param('{"name":"n"}'.encode("utf-16-le"), NOT_JSON, id="utf-16-le"),
        pytest.param('{"name":"n"}'.encode("utf-16-be"), NOT_JSON, id="utf-16-be"),
        pytest.param('{"name":"n"}'.encode("utf-16"), UTF8, id="utf-16 with a byte-order mark"),
        pytest.param('{"name":"n"}'.encode("utf-32-be"), NOT_JSON, id="utf-32-be"),
        pytest.param('{"name":"n"}'.encode("utf-32"), UTF8, id="utf-32 with a byte-order mark"),
        pytest.param(b'{"name":"\xff"}', UTF8, id="invalid utf-8"),
    ],
)
def test_a_body_that_is_not_utf_8_is_malformed(raw: bytes, message: str) -> None:
    with pytest.raises(MalformedBody) as refused:
        decode_object(raw)
    assert str(refused.value) == message


def test_a_utf_8_body_keeps_its_text() -> None:
    assert decode_object('{"name":"Zoë ✓"}'.encode()) == {"name": "Zoë ✓"}
