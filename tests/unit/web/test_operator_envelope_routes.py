"""Every enveloped route answers a bad v2 envelope as the reference does (operator-api §2.3).

The routes are the application's own table (``services.data_plane.enveloped_endpoints``, which
``OperatorApi`` mounts), checked against the routes operator-api §1.1 and §6 list, so a route added
or dropped shows here. Every enveloped route opens its envelope in the same pipeline step, after
the API key (§1.2), so each answers a bad envelope alike: 400 ``client_error`` with the §2.3
message, unencrypted, ``application/json``. Each is checked under both framings (§1.6): base64
text, and raw bytes under ``application/octet-stream`` (the framing the Python SDK uses for
``/v3/identity/map``), where a body is not base64-decoded, so step 2 of §2.3 does not apply.

What differs per route is checked per route, explicitly:

* an envelope without a payload (§2.2, m = 0) gets the route's own answer (§6): ``NO_PAYLOAD``;
* ``/v2/token/refresh`` takes no envelope (§6.2): a body that is not 388 characters is a bare
  refresh token, so the §2.3 bodies get its own failures, which depend on whether a valid API key
  came with them (§1.3, §15.4);
* ``/v2/token/client-generate`` takes its own plain JSON body (§8): the §2.3 bodies get its body
  failures (``json payload ...``, ``bad subscription_id``), whatever API key comes with them.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from operator_harness import (
    PEPPER,
    SITE_A,
    WRONG_SECRET,
    Credential,
    World,
    swap_snapshot_fixture,  # noqa: F401 (fixture)
    world_fixture,  # noqa: F401 (fixture)
)

from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import mint_api_key
from uid2_operator.services.data_plane import enveloped_endpoints
from uid2_operator.web.operator_api import app as operator_app
from uid2_operator.wire.envelope import open_response, unframe_response
from uid2_operator.wire.scope import IdentityScope

ENVELOPED_ROUTES = sorted(enveloped_endpoints(lambda _record: None))
"""The API-key routes as the application mounts them."""

REFERENCE_ENVELOPED_ROUTES = frozenset(
    {
        "/v2/token/generate",  # §6.1
        "/v2/token/validate",  # §6.3
        "/v2/token/logout",  # §6.5
        "/v2/identity/map",  # §6.6
        "/v3/identity/map",  # §6.7
        "/v2/identity/buckets",  # §6.8
        "/v2/optout/status",  # §6.9
        "/v2/key/latest",  # §6.10
        "/v2/key/sharing",  # §6.11
        "/v2/key/bidstream",  # §6.12
    }
)
REFERENCE_OWN_BODY_ROUTES = frozenset({"/v2/token/refresh", "/v2/token/client-generate"})
"""§6.2 and §6.4/§8: POST routes without a v2 envelope."""

OCTET = "application/octet-stream"
TEXT = "text/plain"
FRAMINGS = [TEXT, OCTET]


def _hint(host: str) -> str:
    return (
        f" See {host}/docs/getting-started/gs-encryption-decryption for details on the request "
        "envelope format."
    )


def _unencrypted(host: str) -> str:
    return (
        "Invalid body: The request body is unencrypted JSON. It must be an encrypted request "
        f"envelope. See {host}/docs/getting-started/gs-encryption-decryption"
        "#encryption-and-decryption-code-examples for encryption and decryption code examples."
    )


UID2_HOST = "https://unifiedid.com"
EUID_HOST = "https://euid.eu"
HINT = _hint(UID2_HOST)
MISSING = "Invalid body: Body is missing."
UNENCRYPTED = _unencrypted(UID2_HOST)
NOT_BASE64 = "Invalid body: Body is not valid base64." + HINT
TOO_SHORT = "Invalid body: Body too short. Check encryption method." + HINT
DECRYPTION = "Invalid body: Check encryption key (ClientSecret)." + HINT
TIMESTAMP = "Invalid timestamp: Request too old or client time drift."
NOT_JSON = "Invalid payload in body: Data is not valid json string."
REPLAYED = "Invalid nonce: Request already received."
MISSING_ONE = (
    "Required Parameter Missing: exactly one of [email, email_hash, phone, phone_hash] "
    "must be specified"
)
MISSING_ANY = (
    "Required Parameter Missing: one or more of [email, email_hash, phone, phone_hash] "
    "must be specified"
)
UNAUTHORIZED = b'{"status":"unauthorized"}'


def _version(received: int) -> str:
    return (
        f"Invalid body: Invalid request envelope format version: received {received}, "
        f"must be 1.{HINT}"
    )


def client_error(message: str) -> dict[str, str]:
    return {"status": "client_error", "message": message}


NO_PAYLOAD: dict[str, dict[str, Any] | None] = {
    "/v2/token/generate": client_error(MISSING_ONE),  # §6.1 -> §3.4
    "/v2/token/validate": client_error(MISSING_ONE),  # §6.3 -> §3.4
    # §6.5 appends the input to the message; here there is none, and input is never echoed.
    "/v2/token/logout": {"status": "invalid_token", "message": "Invalid Token presented"},
    "/v2/identity/map": client_error(MISSING_ONE),  # §6.6: no key present at all
    "/v3/identity/map": client_error(MISSING_ANY),  # §6.7: empty or missing payload
    "/v2/identity/buckets": client_error("missing parameter since_timestamp"),  # §6.8
    "/v2/optout/status": client_error("Invalid request body"),  # §6.9: payload missing
    "/v2/key/latest": None,  # §6.10: empty payload is fine (None: 200 success)
    "/v2/key/sharing": None,
    "/v2/key/bidstream": None,
}
"""Each enveloped route's answer to an envelope that opens but carries no payload."""

Body = Callable[[World, Credential], bytes]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _fixed(data: bytes) -> Body:
    return lambda _world, _cred: data


def _b64(data: bytes) -> Body:
    return _fixed(base64.b64encode(data))


def _sealed(
    *,
    offset_ms: int = 0,
    at_ms: int | None = None,
    raw: bytes | None = None,
    secret: str | None = None,
) -> Body:
    """A raw envelope sealed now (plus ``offset_ms``) or at ``at_ms``, with no payload or
    ``raw``, under the caller's secret or ``secret``."""

    def build(world: World, cred: Credential) -> bytes:
        if secret is not None:
            cred = replace(cred, secret=secret)
        now_ms = _now_ms() + offset_ms if at_ms is None else at_ms
        return world.envelope(None, cred, now_ms=now_ms, raw=raw)

    return build


def _text(body: Body) -> Body:
    return lambda world, cred: base64.b64encode(body(world, cred))


def _tampered(world: World, cred: Credential) -> bytes:
    sealed = bytearray(world.envelope({"email": "a@example.com"}, cred))
    sealed[-1] ^= 1
    return bytes(sealed)


def _broken_line(world: World, cred: Credential) -> bytes:
    text = base64.b64encode(_sealed()(world, cred))
    return text[:40] + b"\n" + text[40:]


JSON_SHORT = b'{"email":"a@b.com"}'
JSON_LONG = b'{"email":"someone.with.a.long.address@example.com"}'
assert len(JSON_SHORT) < 45 <= len(JSON_LONG)
NOT_JSON_PAYLOADS = [b"not json", b"[1,2]", b'"text"', b"\xff\xfe", b"{", b"NaN"]
MISSING_VALUES = [
    b'{"email":}',
    b'{"email": x}',
    b'{"email":-}',
    b'{"email":[1,]}',
    b'{"a":{"b":}}',
]
"""Objects with a value missing inside: refused as not JSON, like any other."""
MALFORMED_LONG = b'{"email": x, "padding": "' + b"p" * 48 + b'"}'
assert len(MALFORMED_LONG) >= 61

SEALED_CASES: list[tuple[str, Body, str]] = [
    ("wrong-secret", _sealed(secret=WRONG_SECRET), DECRYPTION),
    ("tampered", _tampered, DECRYPTION),
    ("too-old", _sealed(offset_ms=-120_000), TIMESTAMP),
    ("ten-minutes-old", _sealed(offset_ms=-600_000), TIMESTAMP),
    ("ahead", _sealed(offset_ms=125_000), TIMESTAMP),
    ("epoch", _sealed(at_ms=0), TIMESTAMP),
    ("int64-max", _sealed(at_ms=(1 << 63) - 1), TIMESTAMP),
    ("int64-min", _sealed(at_ms=-(1 << 63)), TIMESTAMP),
    *(
        (f"payload-not-json-{i}", _sealed(raw=raw), NOT_JSON)
        for i, raw in enumerate(NOT_JSON_PAYLOADS)
    ),
    *(
        (f"payload-missing-value-{i}", _sealed(raw=raw), NOT_JSON)
        for i, raw in enumerate(MISSING_VALUES)
    ),
]
"""Envelopes that are well formed (sent raw or as base64 text, as the framing wants)."""

TEXT_CASES: list[tuple[str, Body, str]] = [
    ("missing", _fixed(b""), MISSING),
    ("unencrypted-json", _fixed(JSON_SHORT), UNENCRYPTED),
    ("unencrypted-json-long", _fixed(JSON_LONG), UNENCRYPTED),
    ("not-base64", _fixed(b"not base64 !!"), NOT_BASE64),
    ("raw-envelope-bytes", _sealed(), NOT_BASE64),
    ("base64-with-a-line-break", _broken_line, NOT_BASE64),
    ("too-short", _b64(b"\x01" + bytes(20)), TOO_SHORT),
    ("too-short-json", _b64(b'{"a":1}'), UNENCRYPTED),
    ("version-0", _b64(bytes(61)), _version(0)),
    ("version-2", _b64(b"\x02" + bytes(60)), _version(2)),
    ("version-255", _b64(b"\xff" + bytes(60)), _version(255)),
    ("version-json", _b64(JSON_LONG), UNENCRYPTED),
    ("malformed-unencrypted-json", _fixed(MISSING_VALUES[0]), NOT_BASE64),
    ("malformed-unencrypted-json-long", _fixed(MALFORMED_LONG), NOT_BASE64),
    ("sealed-under-no-key", _b64(b"\x01" + bytes(60)), DECRYPTION),
    *((name, _text(body), message) for name, body, message in SEALED_CASES),
]
OCTET_CASES: list[tuple[str, Body, str]] = [
    ("missing", _fixed(b""), MISSING),
    ("unencrypted-json", _fixed(JSON_SHORT), UNENCRYPTED),
    ("unencrypted-json-long", _fixed(JSON_LONG), UNENCRYPTED),
    # Not base64-decoded in this framing: 13 bytes are too short for an envelope.
    ("not-base64", _fixed(b"not base64 !!"), TOO_SHORT),
    ("too-short", _fixed(b"\x01" + bytes(20)), TOO_SHORT),
    ("version-0", _fixed(bytes(61)), _version(0)),
    ("version-2", _fixed(b"\x02" + bytes(60)), _version(2)),
    ("version-255", _fixed(b"\xff" + bytes(60)), _version(255)),
    ("sealed-under-no-key", _fixed(b"\x01" + bytes(60)), DECRYPTION),
    ("malformed-unencrypted-json", _fixed(MISSING_VALUES[0]), TOO_SHORT),
    ("malformed-unencrypted-json-long", _fixed(MALFORMED_LONG), _version(ord("{"))),
    # Base64 text under octet-stream is read as text once the raw reading fails (§1.6); when
    # the text's envelope fails too, its failure is the answer.
    ("base64-text-too-old", _text(_sealed(offset_ms=-120_000)), TIMESTAMP),
    ("base64-text-wrong-secret", _text(_sealed(secret=WRONG_SECRET)), DECRYPTION),
    *SEALED_CASES,
]

CASES = [
    pytest.param((framing, body, message), id=f"{'octet' if framing == OCTET else 'text'}-{name}")
    for framing, cases in ((TEXT, TEXT_CASES), (OCTET, OCTET_CASES))
    for name, body, message in cases
]


def _caller(world: World, route: str) -> Credential:
    """A credential whose roles unlock ``route`` (A holds every role but OPTOUT, O holds it)."""
    for name in ("A", "O"):
        cred = world[name]
        if route in world.snapshot.clients[cred.key_id].allowed_paths:
            return cred
    raise AssertionError(f"no credential of the world may call {route}")


def _outsider(world: World, route: str) -> Credential:
    """A valid, enabled credential whose roles do not unlock ``route``."""
    for name in ("O", "A"):
        cred = world[name]
        if route not in world.snapshot.clients[cred.key_id].allowed_paths:
            return cred
    raise AssertionError(f"every credential of the world may call {route}")


@pytest.fixture(scope="module", name="http")
def http_fixture(world: World) -> Iterator[httpx.Client]:
    """One connection pool for the module's many small requests."""
    with httpx.Client(base_url=world.base_url, timeout=30) as client:
        yield client


def _post(
    http: httpx.Client, route: str, body: bytes, framing: str, key: str | None
) -> httpx.Response:
    headers = {"content-type": framing}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return http.post(route, content=body, headers=headers)


# ------------------------------------------------------------------------------ the route list


def test_the_enveloped_routes_are_the_references() -> None:
    assert set(ENVELOPED_ROUTES) == REFERENCE_ENVELOPED_ROUTES
    own = {operator_app.REFRESH, operator_app.CLIENT_GENERATE}
    assert own == REFERENCE_OWN_BODY_ROUTES
    assert not own & set(ENVELOPED_ROUTES)


def test_every_enveloped_route_has_its_no_payload_answer_listed() -> None:
    assert set(NO_PAYLOAD) == set(ENVELOPED_ROUTES)


# ------------------------------------------------------------------------- bad envelopes (§2.3)


@pytest.mark.parametrize("route", ENVELOPED_ROUTES)
@pytest.mark.parametrize("case", CASES)
def test_a_bad_envelope_gets_the_reference_answer_on_every_route(
    http: httpx.Client, world: World, route: str, case: tuple[str, Body, str]
) -> None:
    framing, body, message = case
    cred = _caller(world, route)
    response = _post(http, route, body(world, cred), framing, cred.key)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == client_error(message)


@pytest.mark.parametrize("route", ENVELOPED_ROUTES)
def test_the_hints_name_the_euid_documentation_in_euid_scope(
    http: httpx.Client, world: World, swap_snapshot: Any, route: str
) -> None:
    snapshot = world.snapshot
    swap_snapshot(replace(snapshot, identity=replace(snapshot.identity, scope=IdentityScope.EUID)))
    cred = _caller(world, route)
    hint = _hint(EUID_HOST)
    expected = [
        (JSON_SHORT, _unencrypted(EUID_HOST)),
        (b"not base64 !!", "Invalid body: Body is not valid base64." + hint),
        (
            base64.b64encode(b"\x01" + bytes(20)),
            "Invalid body: Body too short. Check encryption method." + hint,
        ),
        (
            base64.b64encode(b"\x02" + bytes(60)),
            "Invalid body: Invalid request envelope format version: received 2, must be 1." + hint,
        ),
        (
            base64.b64encode(b"\x01" + bytes(60)),
            "Invalid body: Check encryption key (ClientSecret)." + hint,
        ),
    ]
    for body, message in expected:
        response = _post(http, route, body, TEXT, cred.key)
        assert (response.status_code, response.json()) == (400, client_error(message))


@pytest.mark.parametrize("route", ENVELOPED_ROUTES)
@pytest.mark.parametrize("framing", FRAMINGS)
def test_a_replayed_envelope_is_refused_on_every_route(
    http: httpx.Client, world: World, route: str, framing: str
) -> None:
    """This operator's replay guard (the reference keeps none, §2.3) runs on every route."""
    cred = _caller(world, route)
    sealed = world.envelope(None, cred)
    body = sealed if framing == OCTET else base64.b64encode(sealed)
    first = _post(http, route, body, framing, cred.key)
    assert first.status_code in {200, 400}
    assert first.status_code == 200 or first.json()["message"] != REPLAYED
    again = _post(http, route, body, framing, cred.key)
    assert again.status_code == 400
    assert again.json() == client_error(REPLAYED)


# ------------------------------------------------------------------ the API key comes first (§1.2)


def _authorizations(world: World, route: str) -> Iterator[tuple[str, str | None]]:
    unknown = mint_api_key(Environment.LOCAL, SITE_A, PEPPER, os.urandom).text
    yield "no key", None
    yield "malformed key", "UID2-C-L-1001-abcdef.x"
    yield "unknown key", unknown
    yield "key without the route's role", _outsider(world, route).key


@pytest.mark.parametrize("route", ENVELOPED_ROUTES)
@pytest.mark.parametrize("body", [b"", b"not base64 !!", JSON_SHORT], ids=["empty", "junk", "json"])
def test_an_api_key_failure_wins_over_a_bad_envelope(
    http: httpx.Client, world: World, route: str, body: bytes
) -> None:
    for label, key in _authorizations(world, route):
        response = _post(http, route, body, TEXT, key)
        assert (response.status_code, response.content) == (401, UNAUTHORIZED), label
        assert response.headers["content-type"] == "application/json"


# -------------------------------------------------------- envelopes that open (§2.2, §2.3 step 6)


@pytest.mark.parametrize("route", ENVELOPED_ROUTES)
@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("offset_ms", [0, -100_000, 100_000])
def test_an_envelope_without_payload_gets_the_routes_own_answer(
    http: httpx.Client, world: World, route: str, framing: str, offset_ms: int
) -> None:
    """Also the timestamp window's inside, on both sides (§2.3)."""
    cred = _caller(world, route)
    nonce = os.urandom(8)
    sealed = world.envelope(None, cred, now_ms=_now_ms() + offset_ms, nonce=nonce)
    body = sealed if framing == OCTET else base64.b64encode(sealed)
    response = _post(http, route, body, framing, cred.key)
    expected = NO_PAYLOAD[route]
    if expected is None:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == framing
        opened = open_response(
            unframe_response(response.content, framing == OCTET),
            secret=cred.secret_bytes,
            nonce=nonce,
        )
        assert opened["status"] == "success"
    else:
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json() == expected


# ------------------------------------------------------------------ routes without an envelope

OWN_BODY_CASES = [
    pytest.param(_fixed(b""), id="missing"),
    pytest.param(_fixed(JSON_SHORT), id="unencrypted-json"),
    pytest.param(_fixed(b"not base64 !!"), id="not-base64"),
    pytest.param(_b64(b"\x01" + bytes(20)), id="too-short"),
    pytest.param(_b64(b"\x02" + bytes(60)), id="version"),
    pytest.param(_b64(b"\x01" + bytes(60)), id="sealed-under-no-key"),
    pytest.param(_text(_sealed(offset_ms=-120_000)), id="too-old"),
    pytest.param(_text(_sealed(raw=b"not json")), id="payload-not-json"),
    pytest.param(_text(_sealed()), id="sealed-envelope"),
    pytest.param(_sealed(), id="raw-envelope-bytes"),
]


@pytest.mark.parametrize("body", OWN_BODY_CASES)
@pytest.mark.parametrize(
    ("authenticated", "expected"),
    [
        (True, {"status": "invalid_token", "message": "Invalid Token presented"}),
        (False, {"status": "error", "message": "Error refreshing token"}),
    ],
    ids=["with-key", "without-key"],
)
def test_refresh_answers_envelope_bodies_as_bare_refresh_tokens(
    http: httpx.Client, world: World, body: Body, authenticated: bool, expected: dict[str, str]
) -> None:
    """§6.2: no body of these is 388 characters, so each is a legacy bare refresh token that
    does not decode; the answer's status depends on the caller (§1.3, §15.4)."""
    cred = world["A"]
    data = body(world, cred)
    assert len(data) != 388
    for framing in FRAMINGS:
        key = cred.key if authenticated else None
        response = _post(http, operator_app.REFRESH, data, framing, key)
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json() == expected


CSTG_JSON_INVALID = client_error("json payload is not valid")
CSTG_CASES = [
    pytest.param(_fixed(b""), client_error("json payload expected but not found"), id="missing"),
    pytest.param(_fixed(b"null"), client_error("json payload expected but not found"), id="null"),
    pytest.param(_fixed(JSON_SHORT), client_error("bad subscription_id"), id="unencrypted-json"),
    pytest.param(_fixed(b"not base64 !!"), CSTG_JSON_INVALID, id="not-base64"),
    pytest.param(_b64(b"\x01" + bytes(20)), CSTG_JSON_INVALID, id="too-short"),
    pytest.param(_b64(b"\x02" + bytes(60)), CSTG_JSON_INVALID, id="version"),
    pytest.param(_text(_sealed()), CSTG_JSON_INVALID, id="sealed-envelope"),
    pytest.param(_sealed(), CSTG_JSON_INVALID, id="raw-envelope-bytes"),
]


@pytest.mark.parametrize(("body", "expected"), CSTG_CASES)
def test_client_generate_answers_envelope_bodies_with_its_own_body_failures(
    http: httpx.Client, world: World, body: Body, expected: dict[str, str]
) -> None:
    """§8: the body is plain JSON whatever the Content-Type, and no API key is looked at."""
    cred = world["A"]
    data = body(world, cred)
    for framing in FRAMINGS:
        for key in (None, cred.key):
            response = _post(http, operator_app.CLIENT_GENERATE, data, framing, key)
            assert response.status_code == 400, response.text
            assert response.headers["content-type"] == "application/json"
            assert response.json() == expected
