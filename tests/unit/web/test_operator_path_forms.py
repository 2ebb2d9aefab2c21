"""A path is matched as the reference's router matches it.

The reference's router reads runs of ``/`` as one, resolves ``.`` and ``..`` segments and does not
tell ``/v2/token/generate/`` from ``/v2/token/generate``: an official SDK given a base URL that
ends in ``/`` sends ``//v2/token/generate`` and works there. So does the API
(``OperatorApi.route_path``), and so does the worker in front of it (tested with the worker's own
answers in ``test_operator_server``), so that the health check under another form of its path is
the degraded one when the worker has a problem, not the API's 200. Any other path is itself (404).
Metrics count such a request under its route.
"""

from __future__ import annotations

import base64

import anyio
import httpx
import pytest
from operator_harness import (
    SnapshotHolder,
    World,
    build_world_snapshot,
    world_fixture,  # noqa: F401 (fixture)
)

from uid2_operator.clock import FixedClock
from uid2_operator.domain.authorization import OPERATOR_ENDPOINTS
from uid2_operator.web.operator_api.app import OperatorApi, create_operator_app


def test_every_api_route_answers_with_a_final_slash(world: World) -> None:
    cred = world["A"]
    for path in ("/v2/token/generate/", "/v3/identity/map/", "/v2/key/sharing/"):
        payload = {"email": "slash@example.com"} if "generate" in path else {}
        if "map" in path:
            payload = {"email": ["slash@example.com"]}
        response, body = world.call(path, payload, cred)
        assert response.status_code == 200, (path, response.text)
        assert body is not None
        assert body["status"] == "success"


def test_the_health_check_answers_with_a_final_slash(world: World) -> None:
    assert world_get(world, "/ops/healthcheck/") == (200, "OK")


@pytest.mark.parametrize(
    "path",
    [
        "//v2/token/generate",  # an SDK's base URL with a final "/"
        "/v2//token/generate",
        "/v2/token/generate//",
        "/v2/./token/generate",
        "/v2/x/../token/generate",
        "/../v2/token/generate",
        "/v2/token/generate/.",
    ],
)
def test_other_forms_of_a_route_path_reach_the_route(world: World, path: str) -> None:
    response, body = world.call(path, {"email": "slash@example.com"}, world["A"])
    assert response.status_code == 200, (path, response.text)
    assert body is not None
    assert body["status"] == "success"


def test_other_forms_of_the_health_check_path_reach_it(world: World) -> None:
    for path in ("//ops/healthcheck", "/ops//healthcheck/", "/x/../ops/healthcheck"):
        assert world_get(world, path) == (200, "OK"), path


@pytest.mark.parametrize(
    "path",
    [
        "/v2/token/generat/",
        "/nothing/",
        "/",
        "//",
        "/v2/token/generate/..",
        "/v2/token/generate/x",
        "/v2/token/generate.",
        "/ops/healthcheck/x",
    ],
)
def test_other_paths_are_not_found(world: World, path: str) -> None:
    sealed = base64.b64encode(world.envelope({"email": "a@example.com"}, world["A"]))
    response = world.post(path, sealed, key=world["A"].key)
    assert response.status_code == 404
    assert response.text == "Not Found"


def test_a_route_with_a_final_slash_keeps_its_method_rule(world: World) -> None:
    assert world_get(world, "/v2/token/generate/")[0] == 405


def test_route_path_names_only_the_apis_own_paths() -> None:
    api = OperatorApi()
    for route in [*OPERATOR_ENDPOINTS, "/v2/token/refresh", "/ops/healthcheck"]:
        assert api.route_path(route + "/") == route
        assert api.route_path(route) == route
        assert api.route_path("/" + route) == route
        assert api.route_path(route.replace("/", "//") + "//") == route
        assert api.route_path("/./x/.." + route + "/.") == route
    assert api.route_path("/metrics/") == "/metrics/"
    assert api.route_path("//metrics") == "//metrics"
    assert api.route_path("/") == "/"
    assert api.route_path("") == ""
    assert api.route_path("/v2/token/generate/..") == "/v2/token/generate/.."


def test_a_request_with_a_final_slash_is_counted_under_its_route() -> None:
    clock = FixedClock()
    snapshot, _creds = build_world_snapshot(clock.now_ms())
    observed: list[tuple[str, int]] = []
    app = create_operator_app(
        snapshot_provider=SnapshotHolder(snapshot),
        clock=clock,
        observer=lambda path, _key_id, status, _s: observed.append((path, status)),
    )

    async def send() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://op.test") as client:
            await client.get("/ops/healthcheck/")
            await client.post("/v2/token/generate/", content=b"")  # no key: 401
            await client.get("/v2/token/generate/")
            await client.get("/elsewhere/")
            await client.post("http://op.test//v2/token/generate", content=b"")
            await client.options(
                "/v2/token/validate/",
                headers={"Origin": "https://a.example", "Access-Control-Request-Method": "POST"},
            )

    anyio.run(send)
    assert observed == [
        ("/ops/healthcheck", 200),
        ("/v2/token/generate", 401),
        ("/v2/token/generate", 405),
        ("/elsewhere/", 404),
        ("/v2/token/generate", 401),
        ("/v2/token/validate", 204),
    ]


def world_get(world: World, path: str) -> tuple[int, str]:
    response = httpx.get(world.base_url + path, timeout=30)
    return response.status_code, response.text
