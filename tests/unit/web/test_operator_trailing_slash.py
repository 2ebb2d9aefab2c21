"""A final ``/`` after one of the operator's paths is not significant, as in the reference.

The reference's router matches ``/v2/token/generate/`` to ``/v2/token/generate``; so does the
API (``OperatorApi.route_path``), and so does the worker in front of it (tested with the
worker's own answers in ``test_operator_server``), so that the health check with a final ``/``
is the degraded one when the worker has a problem, not the API's 200. Any other path keeps its
final ``/`` (404), and only one ``/`` is dropped. Metrics count such a request under its route.
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
    "path", ["/v2/token/generate//", "/v2/token/generat/", "/nothing/", "/", "/ops/healthcheck//"]
)
def test_other_paths_keep_their_final_slash(world: World, path: str) -> None:
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
    assert api.route_path("/metrics/") == "/metrics/"
    assert api.route_path("/") == "/"
    assert api.route_path("") == ""


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

    anyio.run(send)
    assert observed == [
        ("/ops/healthcheck", 200),
        ("/v2/token/generate", 401),
        ("/v2/token/generate", 405),
        ("/elsewhere/", 404),
    ]


def world_get(world: World, path: str) -> tuple[int, str]:
    response = httpx.get(world.base_url + path, timeout=30)
    return response.status_code, response.text
