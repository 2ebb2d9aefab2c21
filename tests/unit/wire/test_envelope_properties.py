"""Envelope properties: any input gives a value or an envelope error; valid input round-trips."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_operator.errors import (
    EnvelopeError,
    InvalidPayload,
    ResponseEnvelopeError,
    StaleTimestamp,
)
from uid2_operator.wire import aead
from uid2_operator.wire.encoding import dumps
from uid2_operator.wire.envelope import (
    DEFAULT_TIMESTAMP_WINDOW,
    RequestEnvelope,
    TimestampWindow,
    frame_response,
    open_response,
    parse_request,
    seal_request,
    seal_response,
    unframe_response,
)
from uid2_operator.wire.scope import IdentityScope

SECRET = bytes(range(32))
NOW = 1_700_000_000_000
I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)

secrets_ = st.binary(min_size=32, max_size=32)
nonces = st.binary(min_size=8, max_size=8)
ivs = st.binary(min_size=12, max_size=12)
scopes = st.sampled_from(IdentityScope)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=5)


def draw_iv(iv: bytes) -> aead.RandomBytes:
    return lambda n: iv[:n]


def parse_or_error(body: bytes, octet_stream: bool, scope: IdentityScope) -> object:
    try:
        return parse_request(
            body,
            octet_stream=octet_stream,
            secret=SECRET,
            now_ms=NOW,
            window=DEFAULT_TIMESTAMP_WINDOW,
            scope=scope,
        )
    except EnvelopeError as exc:
        return exc


@settings(deadline=None, max_examples=300)
@given(body=st.binary(max_size=200), octet_stream=st.booleans(), scope=scopes)
def test_arbitrary_bytes_give_an_envelope_or_an_envelope_error(
    body: bytes, octet_stream: bool, scope: IdentityScope
) -> None:
    result = parse_or_error(body, octet_stream, scope)
    assert isinstance(result, RequestEnvelope) or (
        isinstance(result, EnvelopeError) and result.detail
    )


@settings(deadline=None, max_examples=150)
@given(text=st.text(max_size=200), octet_stream=st.booleans(), scope=scopes)
def test_arbitrary_text_gives_an_envelope_or_an_envelope_error(
    text: str, octet_stream: bool, scope: IdentityScope
) -> None:
    result = parse_or_error(text.encode("utf-8"), octet_stream, scope)
    assert isinstance(result, RequestEnvelope) or (
        isinstance(result, EnvelopeError) and result.detail
    )


@settings(deadline=None, max_examples=200)
@given(value=json_values, octet_stream=st.booleans(), encode=st.booleans())
def test_json_bodies_give_an_envelope_error(value: Any, octet_stream: bool, encode: bool) -> None:
    body = json.dumps(value).encode()
    if encode:
        body = base64.b64encode(body)
    assert isinstance(parse_or_error(body, octet_stream, IdentityScope.UID2), EnvelopeError)


@settings(deadline=None, max_examples=200)
@given(
    version=st.integers(min_value=0, max_value=255),
    rest=st.binary(min_size=40, max_size=120),
    octet_stream=st.booleans(),
)
def test_envelope_shaped_garbage_gives_an_envelope_error(
    version: int, rest: bytes, octet_stream: bool
) -> None:
    raw = bytes([version]) + rest
    body = raw if octet_stream else base64.b64encode(raw)
    assert isinstance(parse_or_error(body, octet_stream, IdentityScope.EUID), EnvelopeError)


@settings(deadline=None, max_examples=200)
@given(
    inner=st.binary(max_size=80),
    ts_offset=st.integers(min_value=-130_000, max_value=130_000),
    iv=ivs,
    octet_stream=st.booleans(),
)
def test_authentic_envelopes_with_arbitrary_payload_bytes(
    inner: bytes, ts_offset: int, iv: bytes, octet_stream: bool
) -> None:
    nonce = bytes(8)
    raw = seal_request(
        inner, secret=SECRET, now_ms=NOW + ts_offset, nonce=nonce, random=draw_iv(iv)
    )
    body = raw if octet_stream else base64.b64encode(raw)
    result = parse_or_error(body, octet_stream, IdentityScope.UID2)
    if isinstance(result, RequestEnvelope):
        assert result.timestamp_ms == NOW + ts_offset
        assert result.payload is None or isinstance(result.payload, dict)
    else:
        assert isinstance(result, StaleTimestamp | InvalidPayload)


object_shaped = st.text(max_size=40).map(lambda t: ("{" + t + "}").encode())
"""Payloads that start with ``{`` and end with ``}``: read by the JSON scanner alone."""


@settings(deadline=None, max_examples=300)
@given(inner=object_shaped | json_objects.map(lambda v: json.dumps(v).encode()[:-1] + b",}"))
def test_object_shaped_payloads_give_an_object_or_invalid_payload(inner: bytes) -> None:
    raw = seal_request(inner, secret=SECRET, now_ms=NOW, nonce=bytes(8), random=draw_iv(bytes(12)))
    result = parse_or_error(raw, True, IdentityScope.UID2)
    expected = _as_object(inner)
    if isinstance(result, RequestEnvelope):
        assert result.payload == expected
    else:
        assert isinstance(result, InvalidPayload)
        assert expected is None
    blob = seal_response(
        inner, secret=SECRET, nonce=bytes(8), now_ms=NOW, random=draw_iv(bytes(12))
    )
    try:
        assert open_response(blob, secret=SECRET, nonce=bytes(8)) == expected
    except ResponseEnvelopeError:
        assert expected is None


@settings(deadline=None, max_examples=200)
@given(
    payload=json_objects,
    nonce=nonces,
    secret=secrets_,
    iv=ivs,
    now_ms=st.integers(min_value=0, max_value=2**62),
    age_ms=st.integers(min_value=-119_000, max_value=119_999),
    binary=st.booleans(),
    scope=scopes,
)
def test_seal_request_then_parse_request_round_trips(
    *,
    payload: dict[str, Any],
    nonce: bytes,
    secret: bytes,
    iv: bytes,
    now_ms: int,
    age_ms: int,
    binary: bool,
    scope: IdentityScope,
) -> None:
    raw = seal_request(
        dumps(payload), secret=secret, now_ms=now_ms - age_ms, nonce=nonce, random=draw_iv(iv)
    )
    body = raw if binary else base64.b64encode(raw)
    env = parse_request(
        body,
        octet_stream=binary,
        secret=secret,
        now_ms=now_ms,
        window=DEFAULT_TIMESTAMP_WINDOW,
        scope=scope,
    )
    assert env == RequestEnvelope(
        timestamp_ms=now_ms - age_ms, nonce=nonce, payload=payload, binary=binary
    )


def java_minutes(delta_ms: int) -> int:
    """``Duration.ofMillis(delta).toMinutes()``: seconds floored, then minutes toward zero."""
    seconds = delta_ms // 1000
    minutes = abs(seconds) // 60
    return minutes if seconds >= 0 else -minutes


@settings(deadline=None, max_examples=500)
@given(
    now_ms=st.integers(min_value=0, max_value=2**62),
    delta_ms=st.integers(min_value=-250_000, max_value=250_000) | I64,
)
def test_default_window_matches_the_reference_minute_check(now_ms: int, delta_ms: int) -> None:
    expected = abs(java_minutes(delta_ms)) <= 1
    assert DEFAULT_TIMESTAMP_WINDOW.accepts(now_ms - delta_ms, now_ms) is expected


@settings(deadline=None, max_examples=200)
@given(
    past=st.integers(min_value=0, max_value=10**6),
    future=st.integers(min_value=0, max_value=10**6),
    delta_ms=st.integers(min_value=-(2 * 10**6), max_value=2 * 10**6),
)
def test_window_accepts_exactly_its_closed_interval(past: int, future: int, delta_ms: int) -> None:
    window = TimestampWindow(max_past_ms=past, max_future_ms=future)
    assert window.accepts(NOW - delta_ms, NOW) is (-future <= delta_ms <= past)


@settings(deadline=None, max_examples=200)
@given(
    body=json_objects,
    nonce=nonces,
    secret=secrets_,
    iv=ivs,
    now_ms=I64,
    binary=st.booleans(),
)
def test_seal_response_then_open_response_round_trips(
    *, body: dict[str, Any], nonce: bytes, secret: bytes, iv: bytes, now_ms: int, binary: bool
) -> None:
    sealed = seal_response(
        dumps(body), secret=secret, nonce=nonce, now_ms=now_ms, random=draw_iv(iv)
    )
    framed, _ = frame_response(sealed, binary)
    assert open_response(unframe_response(framed, binary), secret=secret, nonce=nonce) == body


@settings(deadline=None, max_examples=300)
@given(blob=st.binary(max_size=120), binary=st.booleans(), nonce=nonces)
def test_arbitrary_response_bytes_give_a_dict_or_a_response_error(
    blob: bytes, binary: bool, nonce: bytes
) -> None:
    result: object
    try:
        result = open_response(unframe_response(blob, binary), secret=SECRET, nonce=nonce)
    except ResponseEnvelopeError as exc:
        result = exc
    assert isinstance(result, dict) or (isinstance(result, ResponseEnvelopeError) and result.detail)


def _reject(name: str) -> Any:
    raise ValueError(name)


def _as_object(data: bytes) -> dict[str, Any] | None:
    """An independent reading of a response payload: strict UTF-8, JSON without NaN/Infinity."""
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_reject)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


@settings(deadline=None, max_examples=300)
@given(
    tail=st.binary(max_size=60) | json_values.map(lambda v: json.dumps(v).encode()),
    nonce=nonces,
    echoed=st.booleans(),
    iv=ivs,
)
def test_authentic_responses_with_arbitrary_payload(
    tail: bytes, nonce: bytes, echoed: bool, iv: bytes
) -> None:
    sent_nonce = nonce if echoed else bytes(b ^ 0xFF for b in nonce)
    blob = seal_response(tail, secret=SECRET, nonce=sent_nonce, now_ms=NOW, random=draw_iv(iv))
    expected = _as_object(tail) if echoed else None
    try:
        result = open_response(blob, secret=SECRET, nonce=nonce)
    except ResponseEnvelopeError:
        assert expected is None
    else:
        assert result == expected
