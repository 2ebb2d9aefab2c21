"""Listing participants and keys a page at a time, on SQLite and PostgreSQL.

``GET /participants`` and ``GET /keys`` take ``limit`` and ``after``: the pages, followed by
their ``next``, give exactly the whole listing, in its order, each item once, the last page with
``next`` null; without ``limit`` the answer is the whole listing, as before, with ``next`` null.
``after`` continues from a key whatever happened to it since (a revoked key is still in the
listing); an unknown key is a 404, and bounds are checked (422). The usage counters of a paged
key are those of the whole listing. The CLI's ``--limit``/``--after`` give the same pages.
"""

from __future__ import annotations

from typing import Any

import pytest
from admin_api_harness import AdminEnv, admin_env_fixture

from uid2_operator.services.credentials import MAX_LIST_LIMIT

env = admin_env_fixture()


def _pages(env: AdminEnv, path: str, field: str, limit: int, **params: Any) -> list[list[Any]]:
    pages: list[list[Any]] = []
    after: Any = None
    while True:
        query = {**params, "limit": limit, **({} if after is None else {"after": after})}
        answer = env.call("GET", path, params=query)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {field, "next"}
        pages.append(body[field])
        after = body["next"]
        if after is None:
            return pages
        assert len(body[field]) == limit
        assert after == body[field][-1]["key_id" if field == "keys" else "site_id"]


def _world(env: AdminEnv) -> list[int]:
    sites = [env.create_participant(("GENERATOR", "MAPPER"), f"P{n}") for n in range(3)]
    for site in sites:
        for n in range(3):
            body = {"site_id": site, "name": f"k{n}", "roles": ["GENERATOR"]}
            assert env.call("POST", "/keys", json=body).status_code == 201
    return sites


def test_key_pages_give_the_whole_listing_once_in_order(env: AdminEnv) -> None:
    sites = _world(env)
    whole = env.call("GET", "/keys").json()
    assert whole["next"] is None
    assert len(whole["keys"]) == 9
    for limit in (1, 2, 4, 9, 10):
        pages = _pages(env, "/keys", "keys", limit)
        assert [k for page in pages for k in page] == whole["keys"], limit
        assert len(pages) == -(-9 // limit)  # ``next`` is null on a full last page too
    one_site = env.call("GET", "/keys", params={"site_id": sites[1]}).json()["keys"]
    pages = _pages(env, "/keys", "keys", 2, site_id=sites[1])
    assert [k for page in pages for k in page] == one_site
    assert {k["site_id"] for k in one_site} == {sites[1]}


def test_a_page_goes_on_after_a_revoked_key_and_keeps_usage(env: AdminEnv) -> None:
    _world(env)
    first = env.call("GET", "/keys", params={"limit": 3}).json()
    cursor = first["next"]
    revoked = env.call("POST", f"/keys/{cursor}/revoke", json={"reason": "gone"})
    assert revoked.status_code == 200
    env.services.store.record_usage([(first["keys"][0]["key_id"], "/v2/token/generate", 4, 1)])
    rest = env.call("GET", "/keys", params={"after": cursor}).json()
    whole = env.call("GET", "/keys").json()["keys"]
    assert rest["keys"] == whole[3:]
    assert rest["next"] is None  # no limit: everything after the cursor
    paged = env.call("GET", "/keys", params={"limit": 1}).json()["keys"][0]
    assert paged == whole[0]
    assert paged["usage"] == {"/v2/token/generate": 4}


def test_a_key_of_another_participant_is_no_place_in_a_sites_listing(env: AdminEnv) -> None:
    sites = _world(env)
    keys = env.call("GET", "/keys").json()["keys"]
    middle = next(k for k in keys if k["site_id"] == sites[1])
    for site in (sites[0], sites[2]):  # before and after its site in the whole listing
        answer = env.call("GET", "/keys", params={"site_id": site, "after": middle["key_id"]})
        assert answer.status_code == 422, answer.text
        assert f"participant {sites[1]}" in answer.json()["error"]["message"]
    same = env.call("GET", "/keys", params={"site_id": sites[1], "after": middle["key_id"]})
    assert same.status_code == 200


def test_participant_pages_give_the_whole_listing_once_in_order(env: AdminEnv) -> None:
    _world(env)
    whole = env.call("GET", "/participants").json()
    assert whole["next"] is None
    for limit in (1, 2, 3, 4):
        pages = _pages(env, "/participants", "participants", limit)
        assert [p for page in pages for p in page] == whole["participants"], limit
    last = whole["participants"][-1]["site_id"]
    beyond = env.call("GET", "/participants", params={"after": last}).json()
    assert beyond == {"participants": [], "next": None}


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/keys", {"limit": 0}, 422),
        ("/keys", {"limit": MAX_LIST_LIMIT + 1}, 422),
        ("/keys", {"after": "not a key"}, 422),
        ("/keys", {"after": "UID2-C-L-999-abcdef"}, 404),
        ("/participants", {"limit": 0}, 422),
        ("/participants", {"limit": MAX_LIST_LIMIT + 1}, 422),
        ("/participants", {"after": -1}, 422),
        ("/participants", {"after": "x"}, 422),
    ],
)
def test_page_bounds_are_checked(
    env: AdminEnv, path: str, params: dict[str, Any], status: int
) -> None:
    """Out of bounds, or no place in the listing asked for: refused, never an empty page."""
    _world(env)
    answer = env.call("GET", path, params=params)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == ("invalid_input" if status == 422 else "not_found")
    if status == 422:
        assert ("limit" if "limit" in params else "after") in error["message"]
