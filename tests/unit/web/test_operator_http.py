"""The operator's pipeline and endpoints over raw HTTP: exact statuses, messages and framing."""

from __future__ import annotations

import base64
import os
import time
from dataclasses import replace
from typing import Any

import httpx
import pytest
from operator_harness import (
    KEYSET_A,
    SITE_A,
    World,
    swap_snapshot_fixture,  # noqa: F401 (fixture)
    world_fixture,  # noqa: F401 (fixture)
)

from uid2_operator.wire.encoding import b64decode
from uid2_operator.wire.refresh import decrypt_refresh_response, unwrap_refresh_envelope

MISSING_ANY = (
    "Required Parameter Missing: one or more of [email, email_hash, phone, phone_hash] "
    "must be specified"
)
MISSING_ONE = (
    "Required Parameter Missing: exactly one of [email, email_hash, phone, phone_hash] "
    "must be specified"
)


def client_error(message: str) -> dict[str, str]:
    return {"status": "client_error", "message": message}


def _now_ms() -> int:
    return int(time.time() * 1000)


# ------------------------------------------------------------------------ envelope (§2.3)
# The refusals of bad envelopes, on every enveloped route: test_operator_envelope_routes.py.


@pytest.mark.parametrize("offset_ms", [-100_000, 100_000])
def test_timestamps_inside_the_window_are_accepted(world: World, offset_ms: int) -> None:
    cred = world["A"]
    sealed = world.envelope({"email": "a@example.com"}, cred, now_ms=_now_ms() + offset_ms)
    response = world.post("/v2/token/generate", base64.b64encode(sealed), key=cred.key)
    assert response.status_code == 200


def test_replayed_nonce_is_refused(world: World) -> None:
    cred = world["A"]
    body = base64.b64encode(world.envelope({"email": "a@example.com"}, cred))
    assert world.post("/v2/token/generate", body, key=cred.key).status_code == 200
    again = world.post("/v2/token/generate", body, key=cred.key)
    assert again.status_code == 400
    assert again.json() == client_error("Invalid nonce: Request already received.")


def test_same_nonce_from_another_key_is_not_a_replay(world: World) -> None:
    nonce = os.urandom(8)
    for name in ("A", "G"):
        cred = world[name]
        body = base64.b64encode(world.envelope({"email": "a@example.com"}, cred, nonce=nonce))
        assert world.post("/v2/token/generate", body, key=cred.key).status_code == 200


def test_octet_stream_requests_get_raw_responses(world: World) -> None:
    response, opened = world.call(
        "/v3/identity/map", {"email": ["a@example.com"]}, world["A"], binary=True
    )
    assert response.headers["content-type"] == "application/octet-stream"
    assert opened is not None
    assert opened["status"] == "success"


def test_octet_stream_with_base64_text_falls_back_to_text(world: World) -> None:
    cred = world["A"]
    nonce = os.urandom(8)
    body = base64.b64encode(world.envelope({"email": ["a@example.com"]}, cred, nonce=nonce))
    response = world.post(
        "/v3/identity/map", body, key=cred.key, content_type="application/octet-stream"
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain"


def test_text_requests_get_base64_responses(world: World) -> None:
    response, opened = world.call("/v2/key/bidstream", None, world["D"])
    assert response.headers["content-type"] == "text/plain"
    assert opened is not None
    assert opened["status"] == "success"


# ------------------------------------------------------------------------ transport


def test_oversize_body_is_413_before_authentication(world: World) -> None:
    response = world.post("/v2/token/generate", b"A" * ((1 << 20) + 1))
    assert response.status_code == 413
    assert response.text == "Request Entity Too Large"


def test_oversize_body_without_content_length_is_413(world: World) -> None:
    def chunks() -> Any:
        for _ in range(20):
            yield b"A" * 65536

    response = httpx.post(
        world.base_url + "/v3/identity/map",
        content=chunks(),
        headers={"authorization": f"Bearer {world['A'].key}"},
        timeout=30,
    )
    assert response.status_code == 413


def test_body_of_exactly_the_limit_is_read(world: World) -> None:
    response = world.post("/v2/token/generate", b"A" * (1 << 20), key=world["A"].key)
    assert response.status_code == 400


def test_healthcheck_unknown_path_and_wrong_method(world: World) -> None:
    health = httpx.get(world.base_url + "/ops/healthcheck")
    assert (health.status_code, health.text) == (200, "OK")
    wrong = httpx.post(world.base_url + "/ops/healthcheck")
    assert (wrong.status_code, wrong.headers.get("allow")) == (405, "GET, HEAD")
    assert httpx.post(world.base_url + "/v1/token/generate").status_code == 404
    for method in ("GET", "PUT", "DELETE", "HEAD"):
        # A 405 names the methods the path takes (RFC 9110 §15.5.6), as the reference's does.
        wrong = httpx.request(method, world.base_url + "/v2/token/generate")
        assert (wrong.status_code, wrong.headers.get("allow")) == (405, "POST"), method


def test_cors_preflight_and_simple_requests(world: World) -> None:
    origin = {"origin": "https://publisher.example", "access-control-request-method": "POST"}
    generate = httpx.options(world.base_url + "/v2/token/generate", headers=origin)
    assert generate.status_code == 204
    assert generate.headers["access-control-allow-origin"] == "https://publisher.example"
    assert "Authorization" not in generate.headers["access-control-allow-headers"]
    assert "X-UID2-Client-Version" in generate.headers["access-control-allow-headers"]
    assert "access-control-allow-credentials" not in generate.headers
    validate = httpx.options(world.base_url + "/v2/token/validate", headers=origin)
    assert "Authorization" in validate.headers["access-control-allow-headers"]
    failed = world.post("/v2/token/generate", b"", headers={"origin": "https://publisher.example"})
    assert failed.headers["access-control-allow-origin"] == "https://publisher.example"


# ------------------------------------------------------------------------ authentication


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Basic abc", "Bearer bad-api-key", "Bearer UID2-C-L-1001-abcdef.x"],
)
def test_authentication_failures_are_bare_401(world: World, authorization: str | None) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    body = base64.b64encode(world.envelope({"email": "a@example.com"}, world["A"]))
    response = world.post("/v2/token/generate", body, headers=headers)
    assert response.status_code == 401
    assert response.content == b'{"status":"unauthorized"}'


def test_bearer_prefix_is_case_insensitive(world: World) -> None:
    cred = world["A"]
    body = base64.b64encode(world.envelope({"email": "a@example.com"}, cred))
    response = world.post(
        "/v2/token/generate", body, headers={"authorization": f"bEaReR {cred.key}"}
    )
    assert response.status_code == 200


def test_role_and_state_failures_look_the_same(world: World) -> None:
    bodies = set()
    for name in ("M", "X", "OFF"):
        cred = world[name]
        body = base64.b64encode(world.envelope({"email": "a@example.com"}, cred))
        response = world.post("/v2/token/generate", body, key=cred.key)
        assert response.status_code == 401
        bodies.add(response.content)
    assert bodies == {b'{"status":"unauthorized"}'}


def test_amzn_trace_id_is_echoed_on_authenticated_routes(world: World) -> None:
    cred = world["D"]
    body = base64.b64encode(world.envelope(None, cred))
    response = world.post(
        "/v2/key/bidstream", body, key=cred.key, headers={"x-amzn-trace-id": "Root=1-abc"}
    )
    assert response.headers["x-amzn-trace-id"] == "Root=1-abc"


def test_amzn_trace_id_is_echoed_on_every_answer_behind_the_key_check(world: World) -> None:
    # As the reference's key check, which copies it before it looks at the key: refusals keep
    # the caller's trace id too, and refresh (whose key is optional) echoes it.
    trace = {"x-amzn-trace-id": "Root=1-def"}
    cred = world["A"]
    _, generated = world.call("/v2/token/generate", {"email": "t@example.com"}, cred)
    assert generated is not None
    refresh_token = generated["body"]["refresh_token"]
    sealed = base64.b64encode(world.envelope({"email": "t@example.com"}, cred))
    answers = {
        "generate 200": world.post("/v2/token/generate", sealed, key=cred.key, headers=trace),
        "bad key 401": world.post("/v2/token/generate", sealed, key="bad", headers=trace),
        "wrong role 401": world.post(
            "/v2/token/generate", sealed, key=world["M"].key, headers=trace
        ),
        "bad envelope 400": world.post("/v2/token/generate", b"xx", key=cred.key, headers=trace),
        "refresh 200": world.post("/v2/token/refresh", refresh_token, headers=trace),
        "refresh garbage 400": world.post("/v2/token/refresh", b"xx", headers=trace),
    }
    for name, response in answers.items():
        assert response.headers.get("x-amzn-trace-id") == "Root=1-def", name
    assert [r.status_code for r in answers.values()] == [200, 401, 401, 400, 200, 400]
    # Refused before any route runs: nothing echoed.
    wrong_method = httpx.get(world.base_url + "/v2/token/generate", headers=trace)
    assert wrong_method.status_code == 405
    assert "x-amzn-trace-id" not in wrong_method.headers


# ------------------------------------------------------------------------ generate / validate


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, MISSING_ONE),
        ({"email": "a@example.com", "phone": "+12345678901"}, MISSING_ONE),
        ({"email": "not an email"}, "Invalid Identifier"),
        ({"phone": "555-555-5555"}, "Invalid Identifier"),
        ({"email_hash": "abc"}, "Invalid Identifier"),
        ({"email": 12}, "Invalid Identifier"),
        ({"email": ["a@example.com"]}, "Invalid Identifier"),
    ],
)
def test_generate_input_errors(world: World, payload: dict[str, Any], message: str) -> None:
    response, _ = world.call("/v2/token/generate", payload, world["A"])
    assert response.status_code == 400
    assert response.json() == client_error(message)


def test_generate_without_payload_is_missing_identity(world: World) -> None:
    response, _ = world.call("/v2/token/generate", None, world["A"])
    assert response.json() == client_error(MISSING_ONE)


def test_generate_ignores_legacy_policy_fields(world: World) -> None:
    _, opened = world.call(
        "/v2/token/generate", {"email": "a@example.com", "policy": 0, "optout_check": 0}, world["A"]
    )
    assert opened is not None
    assert opened["status"] == "success"
    _, optout = world.call(
        "/v2/token/generate", {"email": "optout@example.com", "optout_check": 0}, world["A"]
    )
    assert optout == {"status": "optout"}


def test_a_hash_sent_as_a_json_number_is_read_as_its_digits(world: World) -> None:
    """The reference reads identity fields as text: 64 decimal digits are 64 hex digits. The
    identity maps read numbers so too; generate and validate agree with them."""
    digits = "1" * 64
    _, by_text = world.call("/v2/token/generate", {"email_hash": digits}, world["A"])
    _, by_number = world.call("/v2/token/generate", {"email_hash": int(digits)}, world["A"])
    assert by_text is not None
    assert by_number is not None
    assert by_number["status"] == "success"
    token = by_number["body"]["advertising_token"]
    _, same = world.call(
        "/v2/token/validate", {"email_hash": int(digits), "token": token}, world["A"]
    )
    assert same == {"body": True, "status": "success"}
    _, mapped = world.call("/v2/identity/map", {"email_hash": [int(digits)]}, world["A"])
    assert mapped is not None
    _, mapped_text = world.call("/v2/identity/map", {"email_hash": [digits]}, world["A"])
    assert mapped_text is not None
    assert mapped["body"] == mapped_text["body"]
    assert mapped["body"]["mapped"][0]["identifier"] == digits
    for value in (True, {"email_hash": digits}, [digits]):
        refused, _ = world.call("/v2/token/generate", {"email_hash": value}, world["A"])
        assert refused.status_code == 400
        assert refused.json() == client_error("Invalid Identifier")


def _token_for(world: World, identity: dict[str, str], name: str = "A") -> str:
    _, opened = world.call("/v2/token/generate", identity, world[name])
    assert opened is not None
    return str(opened["body"]["advertising_token"])


def test_validate(world: World) -> None:
    cred = world["A"]
    token = _token_for(world, {"email": "validate@example.com"})
    match = world.call(
        "/v2/token/validate", {"email": "validate@example.com", "token": token}, cred
    )[1]
    assert match == {"body": True, "status": "success"}
    by_hash = world.call(
        "/v2/token/validate",
        {"email_hash": "ntI244ZRTXwAwpki6/M5cyBYW7h/Wq576lnN3l9+W/c=", "token": token},
        cred,
    )[1]
    assert by_hash == {"body": True, "status": "success"}
    mismatch = world.call(
        "/v2/token/validate", {"email": "someone.else@example.com", "token": token}, cred
    )[1]
    assert mismatch == {"body": False, "status": "success"}
    bad, _ = world.call(
        "/v2/token/validate", {"email": "validate@example.com", "token": "garbage"}, cred
    )
    assert bad.json() == client_error("Invalid token")
    other_site = _token_for(world, {"email": "validate@example.com"}, name="G")
    foreign, _ = world.call(
        "/v2/token/validate", {"email": "validate@example.com", "token": other_site}, cred
    )
    assert foreign.json() == client_error("Unauthorised to validate token")


# ------------------------------------------------------------------------ refresh


def _identity(world: World, email: str = "refresh.me@example.com") -> dict[str, Any]:
    _, opened = world.call("/v2/token/generate", {"email": email}, world["A"])
    assert opened is not None
    return dict(opened["body"])


def test_refresh_envelope_response_is_encrypted_with_the_previous_key(world: World) -> None:
    identity = _identity(world)
    response = world.post("/v2/token/refresh", identity["refresh_token"])
    assert response.status_code == 200
    opened = decrypt_refresh_response(b64decode(identity["refresh_response_key"]), response.text)
    assert opened["status"] == "success"
    assert len(opened["body"]["refresh_token"]) == 388


def test_refresh_binary_request_gets_raw_bytes(world: World) -> None:
    identity = _identity(world)
    response = world.post(
        "/v2/token/refresh", identity["refresh_token"], content_type="application/octet-stream"
    )
    assert response.headers["content-type"] == "application/octet-stream"
    text = base64.b64encode(response.content).decode()
    key = b64decode(identity["refresh_response_key"])
    assert decrypt_refresh_response(key, text)["status"] == "success"


@pytest.mark.parametrize(
    ("authenticated", "expected"),
    [
        (True, {"status": "invalid_token", "message": "Invalid Token presented"}),
        (False, {"status": "error", "message": "Error refreshing token"}),
    ],
)
def test_refresh_error_verbosity_depends_on_the_caller(
    world: World, authenticated: bool, expected: dict[str, str]
) -> None:
    key = world["M"].key if authenticated else None
    response = world.post("/v2/token/refresh", "abc", key=key)
    assert response.status_code == 400
    assert response.json() == expected


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: "!" + t[1:], "Invalid body: Body is not valid base64."),
        (
            lambda t: "AAAAAAAA" + t[8:],
            "Invalid key: Generator of this token (Key ID: 0) does not exist.",
        ),
        (
            lambda t: t[:200] + ("A" if t[200] != "A" else "B") + t[201:],
            "Invalid data: Check encryption method and encryption key.",
        ),
    ],
    ids=["base64", "key", "data"],
)
def test_refresh_envelope_failures(world: World, mutate: Any, message: str) -> None:
    token = _identity(world)["refresh_token"]
    response = world.post("/v2/token/refresh", mutate(token))
    assert response.status_code == 400
    assert response.json() == client_error(message)


def test_refresh_envelope_keyed_with_a_non_refresh_key_is_unknown(world: World) -> None:
    token = _identity(world)["refresh_token"]
    raw = bytearray(base64.b64decode(token))
    raw[1:5] = (1).to_bytes(4, "big")  # a master key id
    response = world.post("/v2/token/refresh", base64.b64encode(bytes(raw)))
    assert response.json() == client_error(
        "Invalid key: Generator of this token (Key ID: 1) does not exist."
    )


def test_legacy_bare_refresh_token_gets_a_plain_answer(world: World) -> None:
    identity = _identity(world)
    snapshot = world.snapshot
    _, inner = unwrap_refresh_envelope(identity["refresh_token"], snapshot.lookup_in(-2))
    response = world.post("/v2/token/refresh", inner)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == "success"
    assert len(body["body"]["refresh_token"]) == 388


# ------------------------------------------------------------------------ logout / optout status


def test_logout_hands_its_optout_over_and_a_snapshot_holding_it_serves_it(
    world: World, swap_snapshot: Any
) -> None:
    """The application hands the opt-out to its recorder (a served worker's write-behind, which
    also applies it to the worker's snapshot at once: tests/functional/test_serve.py); here the
    recorder is a list, and the snapshot holding the record is swapped in by hand."""
    email = "leaving@example.com"
    identity = _identity(world, email)
    uid = world.raw_uid_for_email(email)
    _, opened = world.call("/v2/token/logout", {"email": email}, world["O"])
    assert opened == {"body": {"optout": "OK"}, "status": "success"}
    record = world.logged_out[-1]
    assert record.advertising_id == uid
    swap_snapshot(world.snapshot.with_optouts([record]))
    refreshed = world.post("/v2/token/refresh", identity["refresh_token"])
    key = b64decode(identity["refresh_response_key"])
    assert decrypt_refresh_response(key, refreshed.text) == {"status": "optout"}
    status = world.call("/v2/optout/status", {"advertising_ids": [uid, "other"]}, world["D"])[1]
    assert status is not None
    assert status["body"]["opted_out"] == [
        {"advertising_id": uid, "opted_out_since": record.timestamp_ms // 1000 * 1000}
    ]
    _, generated = world.call("/v2/token/generate", {"email": email}, world["A"])
    assert generated == {"status": "optout"}


def test_logout_needs_the_optout_role_and_valid_input(world: World) -> None:
    refused, _ = world.call("/v2/token/logout", {"email": "a@example.com"}, world["A"])
    assert refused.status_code == 401
    bad, _ = world.call("/v2/token/logout", {"email": "nope"}, world["O"])
    assert bad.status_code == 400
    assert bad.json() == {"status": "invalid_token", "message": "Invalid Token presented"}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (None, "Invalid request body"),
        ({}, "Required Parameter Missing: advertising_ids"),
        ({"advertising_ids": ["x"] * 5001}, "Request payload is too large"),
        ({"advertising_ids": "x"}, "request body contains invalid argument(s)"),
    ],
)
def test_optout_status_errors(world: World, payload: Any, message: str) -> None:
    response, _ = world.call("/v2/optout/status", payload, world["A"])
    assert response.json() == client_error(message)


# ------------------------------------------------------------------------ maps


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (None, MISSING_ANY),
        ({}, MISSING_ANY),
        ({"email": ["a@example.com"], "optout_check": 1}, "Incorrect request format"),
        ({"email": ["a@example.com"], "link_id": "x"}, "Incorrect request format"),
        ({"email": "a@example.com"}, "Incorrect request format"),
        ({"email": [None]}, "Incorrect request format"),
        ({"email": [{"a": 1}]}, "Incorrect request format"),
        ({"phone": [["+12345678901"]]}, "Incorrect request format"),
    ],
)
def test_v3_map_strict_schema(world: World, payload: Any, message: str) -> None:
    response, _ = world.call("/v3/identity/map", payload, world["A"])
    assert response.status_code == 400
    assert response.json() == client_error(message)


def test_v3_map_alignment_coercion_and_nulls(world: World) -> None:
    _, opened = world.call(
        "/v3/identity/map",
        {"email": ["a@example.com", 12, "optout@example.com", "abc"], "email_hash": None},
        world["A"],
    )
    assert opened is not None
    body = opened["body"]
    assert set(body) == {"email", "email_hash", "phone", "phone_hash"}
    first = body["email"][0]
    assert set(first) == {"u", "p", "r"}
    assert isinstance(first["r"], int)
    assert first["r"] > time.time()
    assert body["email"][1:] == [
        {"e": "invalid identifier"},
        {"e": "optout"},
        {"e": "invalid identifier"},
    ]
    assert body["email_hash"] == body["phone"] == body["phone_hash"] == []


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (None, MISSING_ONE),
        ({}, MISSING_ONE),
        ({"email": ["a@example.com"], "phone": ["+12345678901"]}, MISSING_ONE),
        ({"email": "a@example.com"}, "email must be an array"),
        ({"email": [None]}, "request body contains invalid argument(s)"),
        ({"email_hash": ["x", None]}, "request body contains invalid argument(s)"),
        (
            {"phone": ["+12345678901", ["+12345678901"]]},
            "request body contains invalid argument(s)",
        ),
        # Read in the reference's order: a second non-empty array ends the reading, so a field
        # after it is never looked at.
        ({"email": ["a@example.com"], "email_hash": ["x"], "phone": "y"}, MISSING_ONE),
        ({"email": "a@example.com", "email_hash": ["x"], "phone": ["y"]}, "email must be an array"),
        ({"email": [], "email_hash": "x"}, "email_hash must be an array"),
    ],
)
def test_v2_map_errors(world: World, payload: Any, message: str) -> None:
    response, _ = world.call("/v2/identity/map", payload, world["A"])
    assert response.status_code == 400
    assert response.json() == client_error(message)


def test_v2_map_tolerates_legacy_fields_and_empty_arrays(world: World) -> None:
    _, opened = world.call(
        "/v2/identity/map",
        {"email": ["abc", "user2@example.com"], "phone": [], "policy": 1, "optout_check": 1},
        world["A"],
    )
    assert opened is not None
    assert opened["body"]["unmapped"] == [{"identifier": "abc", "reason": "invalid identifier"}]
    assert opened["body"]["mapped"][0]["identifier"] == "user2@example.com"
    _, empty = world.call("/v2/identity/map", {"email": []}, world["A"])
    assert empty == {"body": {"mapped": []}, "status": "success"}


def test_v2_map_answers_a_null_phone_as_an_invalid_identifier(world: World) -> None:
    """As the reference answers it; the rest of the batch is mapped."""
    _, opened = world.call("/v2/identity/map", {"phone": ["+12345678901", None]}, world["A"])
    assert opened is not None
    assert opened["status"] == "success"
    assert [m["identifier"] for m in opened["body"]["mapped"]] == ["+12345678901"]
    assert opened["body"]["unmapped"] == [{"identifier": None, "reason": "invalid identifier"}]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, "missing parameter since_timestamp"),
        ({"since_timestamp": 1654000000}, "invalid date, must conform to ISO 8601"),
        ({"since_timestamp": "2024-13-01T00:00:00"}, "invalid date, must conform to ISO 8601"),
        ({"since_timestamp": "2024-01-01T00:00:00Z"}, "invalid date, must conform to ISO 8601"),
        ({"since_timestamp": "2024-01-01"}, "invalid date, must conform to ISO 8601"),
    ],
)
def test_buckets_errors(world: World, payload: Any, message: str) -> None:
    response, _ = world.call("/v2/identity/buckets", payload, world["A"])
    assert response.json() == client_error(message)


def test_buckets_format(world: World) -> None:
    _, opened = world.call(
        "/v2/identity/buckets", {"since_timestamp": "2021-01-01T00:00"}, world["A"]
    )
    assert opened is not None
    entry = opened["body"][0]
    assert set(entry) == {"bucket_id", "last_updated"}
    assert len(entry["last_updated"]) == len("2024-08-19T22:52:03.109")


# ------------------------------------------------------------------------ keys


def test_key_sharing_body(world: World) -> None:
    _, opened = world.call("/v2/key/sharing", None, world["A"])
    assert opened is not None
    body = opened["body"]
    assert body["caller_site_id"] == SITE_A
    assert body["master_keyset_id"] == 9999999
    assert body["default_keyset_id"] == KEYSET_A
    assert body["token_expiry_seconds"] == "2592000"
    assert body["max_sharing_lifetime_seconds"] == 2592010
    assert body["identity_scope"] == "UID2"
    assert body["allow_clock_skew_seconds"] == 1800
    keysets = {k.get("keyset_id") for k in body["keys"]}
    assert keysets == {9999999, KEYSET_A, None}
    assert all(isinstance(k["created"], int) and k["created"] < 10**11 for k in body["keys"])
    ids = {k["id"] for k in body["keys"]}
    assert not ids & {4, 5, 6}  # refresh keys are never published
    activations = [k["activates"] for k in body["keys"]]
    assert activations == sorted(activations)


def test_key_sharing_for_bidder_has_no_sharing_cap(world: World) -> None:
    _, opened = world.call("/v2/key/sharing", None, world["D"])
    assert opened is not None
    assert "max_sharing_lifetime_seconds" not in opened["body"]
    assert "default_keyset_id" not in opened["body"]


def test_key_bidstream_body(world: World) -> None:
    _, opened = world.call("/v2/key/bidstream", None, world["D"])
    assert opened is not None
    body = opened["body"]
    assert body["max_bidstream_lifetime_seconds"] == 259210
    assert all(set(k) == {"id", "created", "activates", "expires", "secret"} for k in body["keys"])
    ids = {k["id"] for k in body["keys"]}
    assert {1, 2, 3, 20, 21, 22, 7, 40} <= ids  # master, A (listed), fallback, C (bidders)
    assert not ids & {30, 31, 32}  # B is owner-only


def test_key_latest_is_sorted_by_id_with_site_ids(world: World) -> None:
    _, opened = world.call("/v2/key/latest", None, world["D"])
    assert opened is not None
    keys = opened["body"]
    assert [k["id"] for k in keys] == sorted(k["id"] for k in keys)
    assert {k["site_id"] for k in keys if k["id"] in (1, 2, 3)} == {-1}


def test_snapshot_is_taken_per_request(world: World, swap_snapshot: Any) -> None:
    swap_snapshot(replace(world.snapshot, clients={}))
    response, _ = world.call("/v2/key/bidstream", None, world["D"])
    assert response.status_code == 401


def test_no_snapshot_means_503_for_every_api_call(world: World, swap_snapshot: Any) -> None:
    """The API refuses while there is no snapshot (a served worker's health check says why:
    tests/functional/test_snapshot_staleness.py)."""
    world.holder.snapshot = None  # type: ignore[assignment]
    refresh = world.post("/v2/token/refresh", "abc")
    response, _ = world.call("/v2/token/generate", {"email": "a@example.com"}, world["G"])
    for answer in (refresh, response):
        assert answer.status_code == 503
        assert answer.headers["content-type"] == "text/plain; charset=utf-8"
        assert answer.content == b"Service Unavailable"
