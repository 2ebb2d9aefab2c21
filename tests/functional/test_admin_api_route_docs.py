"""The admin API's documented route table is the one the app serves, and its paths are exact.

``docs/admin-api.md`` lists every route with its action; the test reads that table and compares it
with ``app.state.operations``, so a route added without its documentation (or documentation left
behind by a removed route) fails here. A path with a trailing slash is an unknown route: the
documented 404 ``not_found``, never a redirect to the other spelling.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import anyio
import httpx
import pytest
from starlette.applications import Starlette

from uid2_operator.web.admin_api import create_admin_app
from uid2_operator.web.admin_api.routing import Operation

DOC = Path(__file__).resolve().parents[2] / "docs" / "admin-api.md"
ROW = re.compile(r"\| `(GET|POST|PUT|PATCH|DELETE) (/[^`?]*)(?:\?[^`]*)?` \| ([^|]*) \|")


class _NoServices:
    store = None
    credentials = None
    admin = None


def _app() -> Starlette:
    return create_admin_app(cast(Any, _NoServices()))


def _documented_routes() -> list[tuple[str, str, str]]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("\n## Routes\n", 1)[1].split("\n## ", 1)[0]
    return [(method, path, action.strip()) for method, path, action in ROW.findall(section)]


def _served_routes() -> list[tuple[str, str, str]]:
    operations: tuple[Operation, ...] = _app().state.operations
    return [(op.method, op.path, "(public)" if op.public else str(op.access)) for op in operations]


def test_the_documented_route_table_is_the_served_one() -> None:
    documented = _documented_routes()
    assert len(documented) == len(set(documented)), "a route is documented twice"
    assert sorted(documented) == sorted(_served_routes())


def _get(app: Starlette, method: str, path: str) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as c:
            return await c.request(method, path, follow_redirects=False)

    return anyio.run(send)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/api/keys/"),
        ("GET", "/admin/api/health/"),
        ("POST", "/admin/api/participants/"),
        ("GET", "/admin/api/keypairs/"),
    ],
)
def test_a_trailing_slash_is_a_404_not_a_redirect(method: str, path: str) -> None:
    response = _get(_app(), method, path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert "location" not in response.headers
