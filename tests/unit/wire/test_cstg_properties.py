"""CSTG properties: any body or field gives a value or a CSTG error; valid requests round-trip."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_operator.errors import CstgError
from uid2_operator.wire.cstg import (
    CstgRequest,
    build_request,
    open_request,
    open_response,
    parse_request,
    private_key_from_random,
    public_key_der,
    seal_response,
)
from uid2_operator.wire.encoding import b64encode

NOW = 1_700_000_000_000

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
fields = st.sampled_from(
    ["payload", "iv", "public_key", "timestamp", "subscription_id", "app_name"]
)
bodies = st.dictionaries(fields | st.text(max_size=6), json_values | st.text(), max_size=7)
b64ish = st.text(alphabet="ABCDEFGHabcdefgh0123456789+/=", max_size=120)


class Drbg:
    def __init__(self, seed: bytes) -> None:
        self.seed, self.n = seed, 0

    def __call__(self, size: int) -> bytes:
        out = b""
        while len(out) < size:
            out += hashlib.sha256(self.seed + self.n.to_bytes(8, "big")).digest()
            self.n += 1
        return out[:size]


SERVER = private_key_from_random(Drbg(b"server"))
SERVER_DER = public_key_der(SERVER.public_key())


def _parse_or_error(body: bytes | str) -> CstgRequest | None:
    try:
        return parse_request(body)
    except CstgError:
        return None


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_any_bytes_parse_or_fail_typed(body: bytes | str) -> None:
    result = _parse_or_error(body)
    assert result is None or isinstance(result, CstgRequest)


@settings(deadline=None, max_examples=200)
@given(bodies)
def test_any_json_object_parses_or_fails_typed(body: dict[str, Any]) -> None:
    result = _parse_or_error(json.dumps(body))
    if result is not None:
        assert result.payload == body.get("payload")
        assert result.timestamp == (body.get("timestamp") or 0)


@settings(deadline=None, max_examples=150)
@given(
    payload=st.none() | b64ish,
    iv=st.none() | b64ish,
    public_key=st.none() | b64ish | st.just(b64encode(SERVER_DER)),
    timestamp=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    app_name=st.none() | st.text(max_size=20),
    phone=st.booleans(),
)
def test_any_fields_open_or_fail_typed(
    *,
    payload: str | None,
    iv: str | None,
    public_key: str | None,
    timestamp: int,
    app_name: str | None,
    phone: bool,
) -> None:
    req = CstgRequest(payload, iv, public_key, timestamp, "sub", app_name)
    try:
        open_request(req, SERVER, now_ms=NOW, phone_support=phone)
    except CstgError:
        return
    raise AssertionError("random fields must not decrypt")


@settings(deadline=None, max_examples=100)
@given(
    digest=st.binary(min_size=32, max_size=32),
    phone=st.booleans(),
    skew=st.integers(min_value=-30 * 60 * 1000, max_value=30 * 60 * 1000),
    app_name=st.none() | st.text(max_size=30),
    seed=st.binary(min_size=1, max_size=8),
    hex_form=st.booleans(),
)
def test_client_request_round_trips(
    *,
    digest: bytes,
    phone: bool,
    skew: int,
    app_name: str | None,
    seed: bytes,
    hex_form: bool,
) -> None:
    field = "phone_hash" if phone else "email_hash"
    value = digest.hex() if hex_form else b64encode(digest)
    built = build_request(
        SERVER_DER,
        {field: value},
        timestamp=NOW + skew,
        subscription_id="4WvryDGbR5",
        random=Drbg(seed),
        app_name=app_name,
    )
    parsed = parse_request(json.dumps(built.body))
    assert parsed.app_name == app_name
    opened = open_request(parsed, SERVER, now_ms=NOW, phone_support=True)
    assert opened.identity.digest == digest
    assert opened.kind.value == field
    assert opened.timestamp == NOW + skew
    assert opened.secret == built.secret
    answer = {"status": "success", "body": {"n": len(value)}}
    assert open_response(built.secret, seal_response(opened.secret, answer, Drbg(seed))) == answer
