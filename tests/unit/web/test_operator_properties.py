"""No input makes the operator answer 5xx, and every 4xx has a shape the reference documents for
its route: random bodies, headers and sealed JSON to every route."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from operator_harness import (
    World,
    world_fixture,  # noqa: F401 (fixture)
)

from uid2_operator.domain.authorization import KEYLESS_ENDPOINTS, OPERATOR_ENDPOINTS
from uid2_operator.services.data_plane import enveloped_endpoints
from uid2_operator.web.operator_api import app as operator_app


def _app_routes() -> tuple[list[str], list[str]]:
    """The routes as the app defines them, not as listed here: the enveloped endpoints it
    mounts, and the paths it answers itself (its module-level path constants)."""
    enveloped = sorted(enveloped_endpoints(lambda _record: None))
    own = sorted(
        value
        for name, value in vars(operator_app).items()
        if name.isupper() and isinstance(value, str) and value.startswith("/")
    )
    return enveloped, own


ENVELOPED_ROUTES, OWN_ROUTES = _app_routes()
ROUTES = sorted({*ENVELOPED_ROUTES, *OWN_ROUTES})


def test_the_route_list_is_the_apps_route_table() -> None:
    assert "/v2/token/client-generate" in ROUTES
    assert set(ROUTES) == {*OPERATOR_ENDPOINTS, *KEYLESS_ENDPOINTS}
    assert set(ENVELOPED_ROUTES) == set(OPERATOR_ENDPOINTS)


@pytest.mark.parametrize("route", ROUTES)
def test_every_listed_route_is_served(world: World, route: str) -> None:
    method = "GET" if route == operator_app.HEALTHCHECK else "POST"
    response = httpx.request(method, world.base_url + route, content=b"{}")
    assert response.status_code != 404, route
    assert_documented_4xx(route, response)
    wrong_method = httpx.request("PUT", world.base_url + route, content=b"{}")
    assert wrong_method.status_code == 405, route
    assert_documented_4xx(route, wrong_method)
    unknown = httpx.post(world.base_url + route + "/nope", content=b"{}")
    assert unknown.status_code == 404
    assert_documented_4xx(route, unknown)


PLAIN_REASONS = {404: "Not Found", 405: "Method Not Allowed", 413: "Request Entity Too Large"}
"""Failures of the HTTP layer: the reason phrase as plain text (operator-api §1.2)."""

ENVELOPED_ERRORS: dict[int, frozenset[str]] = {400: frozenset({"client_error"})}
"""What an enveloped route's 4xx JSON with a message may say (§1.4, §2.3); a failed API key
is the bare ``{"status":"unauthorized"}`` instead (§1.3)."""
_KEY_ROUTE_ERRORS = {**ENVELOPED_ERRORS, 401: frozenset({"invalid_client"})}  # §1.4, §6.10
ROUTE_ERRORS: dict[str, dict[int, frozenset[str]]] = {
    "/v2/token/logout": {400: frozenset({"client_error", "invalid_token"})},  # §6.5
    "/v2/identity/map": {**ENVELOPED_ERRORS, 401: frozenset({"unauthorized"})},  # §6.14
    "/v2/key/latest": _KEY_ROUTE_ERRORS,
    "/v2/key/sharing": _KEY_ROUTE_ERRORS,
    "/v2/key/bidstream": _KEY_ROUTE_ERRORS,
    operator_app.REFRESH: {  # §6.2
        400: frozenset({"client_error", "invalid_token", "expired_token", "error"})
    },
    operator_app.CLIENT_GENERATE: {  # §8
        400: frozenset({"client_error"}),
        401: frozenset({"unauthorized"}),
        403: frozenset({"invalid_http_origin", "invalid_app_name"}),
    },
    operator_app.HEALTHCHECK: {},  # §6.13: plain text only
}
"""Routes whose 4xx JSON (with a message) differs from ``ENVELOPED_ERRORS``, by HTTP status."""


def assert_documented_4xx(route: str, response: httpx.Response) -> None:
    """A 4xx answer of ``route`` has one of the shapes the reference documents for it: the
    plain-text reason phrase of the HTTP layer, the bare ``unauthorized`` of an API-key route, or
    JSON holding exactly ``status`` and ``message`` with a status the route may answer."""
    status = response.status_code
    if not 400 <= status < 500:
        return
    detail = (route, status, response.headers.get("content-type"), response.text)
    if status in PLAIN_REASONS:
        assert response.headers["content-type"].startswith("text/plain"), detail
        assert response.text == PLAIN_REASONS[status], detail
        return
    assert response.headers["content-type"] == "application/json", detail
    body = json.loads(response.content)
    if route in ENVELOPED_ROUTES and status == 401 and body == {"status": "unauthorized"}:
        return
    assert isinstance(body, dict), detail
    assert set(body) == {"status", "message"}, detail
    assert isinstance(body["message"], str), detail
    assert body["status"] in ROUTE_ERRORS.get(route, ENVELOPED_ERRORS).get(status, ()), detail


def test_every_route_without_an_envelope_has_its_error_shapes_listed() -> None:
    assert set(ROUTE_ERRORS) <= set(ROUTES)
    assert set(OWN_ROUTES) - set(ENVELOPED_ROUTES) <= set(ROUTE_ERRORS)


SETTINGS = settings(
    deadline=None, max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80
).map(str.strip)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["email", "email_hash", "phone", "phone_hash", "token", "since_timestamp", "advertising_ids",
     "policy", "optout_check", "tcf_consent_string"]
) | st.text(max_size=12)  # fmt: skip
payloads = st.dictionaries(field_names, json_values, max_size=5)


@SETTINGS
@given(
    route=st.sampled_from(ROUTES),
    method=st.sampled_from(["POST", "GET", "PUT", "OPTIONS", "DELETE"]),
    body=st.binary(max_size=600) | st.text(max_size=600).map(str.encode),
    content_type=st.sampled_from(["application/octet-stream", "text/plain", "application/json"])
    | header_values,
    authorization=st.none() | header_values | st.just("Bearer ").map(lambda p: p + "x"),
    with_key=st.booleans(),
)
def test_random_requests_never_get_a_5xx(  # noqa: PLR0917 (one argument per strategy)
    world: World,
    route: str,
    method: str,
    body: bytes,
    content_type: str,
    authorization: str | None,
    with_key: bool,
) -> None:
    headers = {"content-type": content_type}
    if with_key:
        headers["authorization"] = f"Bearer {world['A'].key}"
    elif authorization is not None:
        headers["authorization"] = authorization
    response = httpx.request(method, world.base_url + route, content=body, headers=headers)
    assert response.status_code < 500, (route, response.status_code, response.text)
    assert_documented_4xx(route, response)


@SETTINGS
@given(
    route=st.sampled_from(ENVELOPED_ROUTES),
    payload=payloads,
    binary=st.booleans(),
)
def test_random_sealed_payloads_never_get_a_5xx(
    world: World, route: str, payload: dict[str, Any], binary: bool
) -> None:
    name = "O" if route == "/v2/token/logout" else "A"
    response, opened = world.call(route, payload, world[name], binary=binary)
    assert response.status_code < 500, (route, response.status_code, response.text)
    if response.status_code == 200:
        assert opened is not None
        assert opened["status"] in {"success", "optout"}
    else:
        assert 400 <= response.status_code < 500, (route, response.status_code, response.text)
        assert_documented_4xx(route, response)


def _cut(text: str, at: int, length: int) -> str:
    at %= len(text) + 1
    return text[:at] + text[at + length :]


mangled_payloads = st.builds(
    _cut, payloads.map(json.dumps), st.integers(min_value=0), st.integers(0, 4)
).filter(lambda t: t[:1] == "{" and t[-1:] == "}") | st.text(max_size=60).map(
    lambda t: "{" + t + "}"
)
"""Payloads shaped like a JSON object (``{`` ... ``}``) that mostly are not one: JSON payloads
with a few characters cut out (a value, a quote, a bracket), and arbitrary text in braces."""


@SETTINGS
@given(route=st.sampled_from(ENVELOPED_ROUTES), text=mangled_payloads, binary=st.booleans())
def test_sealed_payloads_that_are_almost_json_never_get_a_5xx(
    world: World, route: str, text: str, binary: bool
) -> None:
    cred = world["O" if route == "/v2/token/logout" else "A"]
    sealed = world.envelope(None, cred, raw=text.encode("utf-8", "surrogatepass"))
    response = world.post(
        route,
        sealed if binary else base64.b64encode(sealed),
        key=cred.key,
        content_type="application/octet-stream" if binary else "text/plain",
    )
    assert response.status_code < 500, (route, text, response.status_code, response.text)
    assert_documented_4xx(route, response)


@SETTINGS
@given(
    text=st.text(max_size=400) | st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode())
)
def test_random_refresh_bodies_get_4xx(world: World, text: str) -> None:
    response = world.post("/v2/token/refresh", text.encode("utf-8", "surrogatepass"))
    assert 400 <= response.status_code < 500
    assert json.loads(response.content)["status"] in {"client_error", "error"}
    assert_documented_4xx(operator_app.REFRESH, response)
