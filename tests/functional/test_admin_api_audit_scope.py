"""What ``GET /audit`` lists, and to whom, on every backend.

* An event about an admin token carries the token's record (its name, roles, who made and revoked
  it): it is listed only to the roles that may list admin tokens, and pages of the others are
  still full (the store leaves those events out before it counts ``limit``).
* ``site_id`` finds every event about a participant (itself, its keys, its keyset); ``target_id``
  is compared with the target id alone, so keyset ids and site ids overlap and ``target_type``
  says which is meant. Unknown target types and out-of-range site ids are refused (422).
* A participant created without a site id gets one above the highest, or the lowest free one
  above the reserved ids once the highest allowed id is taken.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest
from admin_api_harness import AdminEnv, admin_env_fixture

from uid2_operator.domain.authorization import AUDIT_TARGET_TYPES
from uid2_operator.domain.participants import MAX_SITE_ID
from uid2_operator.domain.roles import AdminRole
from uid2_operator.errors import AlreadyExists
from uid2_operator.services.context import Actor

pytestmark = pytest.mark.functional

env = admin_env_fixture()
SUPER, MAINTAINER, READER = AdminRole.SUPER_USER, AdminRole.MAINTAINER, AdminRole.READ_ONLY


def _events(env: AdminEnv, role: AdminRole, **params: Any) -> list[dict[str, Any]]:
    response = env.call("GET", "/audit", role, params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


_UNNUMBERED = itertools.count(1)  # names for participants created without a site id


def _participant(env: AdminEnv, site_id: int | None = None) -> int:
    name = f"site {site_id}" if site_id is not None else f"next site {next(_UNNUMBERED)}"
    body: dict[str, Any] = {"name": name, "type": "publisher"}
    body["roles"] = ["GENERATOR", "SHARER"]
    if site_id is not None:
        body["site_id"] = site_id
    created = env.call("POST", "/participants", MAINTAINER, json=body)
    assert created.status_code == 201, created.text
    site: int = created.json()["site_id"]
    return site


def _two_sites_with_keysets(env: AdminEnv) -> dict[int, int]:
    """Sites 3 and 4, each with its keyset (ids that overlap site ids); site 4 gets a key.
    Returns site id -> keyset id."""
    keysets: dict[int, int] = {}
    for site in (3, 4):
        _participant(env, site)
        shared = env.call("PUT", f"/participants/{site}/sharing", json={"mode": "owner_only"})
        assert shared.status_code == 200, shared.text
        keysets[site] = shared.json()["keyset_id"]
    issued = env.call("POST", "/keys", json={"site_id": 4, "name": "web", "roles": ["GENERATOR"]})
    assert issued.status_code == 201, issued.text
    return keysets


def test_admin_token_events_are_listed_only_to_roles_that_may_list_admin_tokens(
    env: AdminEnv,
) -> None:
    made = env.call("POST", "/admin-tokens", json={"name": "ops", "roles": ["SUPER_USER"]})
    assert made.status_code == 201, made.text
    revoked = env.call("POST", f"/admin-tokens/{made.json()['token_id']}/revoke", json={})
    assert revoked.status_code == 200, revoked.text
    _participant(env)

    every = _events(env, SUPER)
    about_tokens = [e for e in every if e["target_type"] == "admin_token"]
    # The three tokens the harness issued, the one made here, and its revocation.
    assert [e["action"] for e in about_tokens].count("admin_token.create") == 4
    assert [e["action"] for e in about_tokens].count("admin_token.revoke") == 1
    assert _events(env, SUPER, action="admin_token.create")
    assert _events(env, SUPER, target_type="admin_token") == about_tokens

    for role in (READER, MAINTAINER):
        listed = _events(env, role)
        assert [e for e in listed if e["target_type"] == "admin_token"] == [], role
        assert listed == [e for e in every if e["target_type"] != "admin_token"], role
        assert _events(env, role, action="admin_token.create") == [], role
        assert _events(env, role, action="admin_token.revoke") == [], role
        assert _events(env, role, target_type="admin_token") == [], role
        assert _events(env, role, target_id=made.json()["token_id"]) == [], role
        assert "SUPER_USER" not in str(listed), role


def test_a_readers_page_is_full_of_the_events_it_may_see(env: AdminEnv) -> None:
    # The harness's three admin-token events come first on the chain.
    first = _participant(env)
    second = _participant(env)
    page = env.call("GET", "/audit", READER, params={"limit": 1}).json()["events"]
    assert [(e["action"], e["target_id"]) for e in page] == [("participant.create", str(first))]
    after = env.call("GET", "/audit", READER, params={"limit": 1, "since_seq": page[0]["seq"]})
    assert [e["target_id"] for e in after.json()["events"]] == [str(second)]


def test_site_id_finds_every_event_about_a_participant(env: AdminEnv) -> None:
    keysets = _two_sites_with_keysets(env)
    # The keyset of site 3 has id 4: the id of the other site.
    assert keysets[3] == 4

    about_four = _events(env, READER, site_id=4)
    assert {e["site_id"] for e in about_four} == {4}
    kinds = {(e["action"], e["target_type"]) for e in about_four}
    assert ("participant.create", "participant") in kinds
    assert ("keyset.sharing", "keyset") in kinds
    assert ("key.create", "api_key") in kinds
    sharing = [e for e in about_four if e["action"] == "keyset.sharing"]
    assert [e["target_id"] for e in sharing] == [str(keysets[4])]
    every_about_four = [e for e in _events(env, SUPER) if e["site_id"] == 4]
    assert about_four == every_about_four

    # target_id alone compares the id whatever its type: keyset 4 is site 3's.
    by_id = _events(env, READER, target_id="4")
    assert {(e["target_type"], e["site_id"]) for e in by_id} == {("participant", 4), ("keyset", 3)}


def test_target_type_narrows_the_events(env: AdminEnv) -> None:
    keysets = _two_sites_with_keysets(env)
    keyset_four = _events(env, READER, target_id="4", target_type="keyset")
    assert keyset_four
    assert {(e["target_type"], e["target_id"], e["site_id"]) for e in keyset_four} == {
        ("keyset", str(keysets[3]), 3)
    }
    participant_four = _events(env, READER, target_id="4", target_type="participant")
    assert [(e["action"], e["site_id"]) for e in participant_four] == [("participant.create", 4)]
    keys_of_four = _events(env, READER, site_id=4, target_type="api_key")
    assert [e["action"] for e in keys_of_four] == ["key.create"]
    assert _events(env, READER, site_id=3, target_type="api_key") == []


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"target_type": "site"}, ", ".join(AUDIT_TARGET_TYPES)),
        ({"target_type": "API_KEY"}, ", ".join(AUDIT_TARGET_TYPES)),
        ({"target_type": ""}, ", ".join(AUDIT_TARGET_TYPES)),
        ({"site_id": "abc"}, "'site_id' must be an integer"),
        ({"site_id": "4.0"}, "'site_id' must be an integer"),
        ({"site_id": str(2**31)}, "'site_id' must be an integer between"),
        ({"site_id": str(-(2**31) - 1)}, "'site_id' must be an integer between"),
    ],
)
def test_bad_audit_filters_are_refused(env: AdminEnv, params: dict[str, str], says: str) -> None:
    refused = env.call("GET", "/audit", READER, params=params)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "invalid_input"
    assert says in refused.json()["error"]["message"]


def test_every_target_type_and_a_reserved_site_are_accepted(env: AdminEnv) -> None:
    for kind in AUDIT_TARGET_TYPES:
        assert env.call("GET", "/audit", READER, params={"target_type": kind}).status_code == 200
    for site in (-(2**31), -1, 0, MAX_SITE_ID):
        assert env.call("GET", "/audit", READER, params={"site_id": site}).status_code == 200


def test_the_openapi_document_declares_the_audit_filters(env: AdminEnv) -> None:
    document = env.client.request("GET", "/admin/api/openapi.json").json()
    parameters = {p["name"]: p for p in document["paths"]["/admin/api/audit"]["get"]["parameters"]}
    assert parameters["target_type"]["schema"]["enum"] == list(AUDIT_TARGET_TYPES)
    assert parameters["site_id"]["schema"]["type"] == "integer"
    described = parameters["target_id"].get("description", "") + str(parameters["target_id"])
    assert "site_id" in described
    assert "key, token or site" not in described


def test_a_site_id_is_found_after_the_highest_allowed_one_is_taken(env: AdminEnv) -> None:
    assert _participant(env, MAX_SITE_ID) == MAX_SITE_ID
    assert _participant(env) == 3
    assert _participant(env) == 4
    assert _participant(env, 6) == 6
    assert _participant(env) == 5
    assert _participant(env) == 7
    listed = env.call("GET", "/participants").json()["participants"]
    assert [p["site_id"] for p in listed] == [3, 4, 5, 6, 7, MAX_SITE_ID]


def test_the_usual_next_site_id_is_one_above_the_highest(env: AdminEnv) -> None:
    assert _participant(env) == 3
    assert _participant(env, 100) == 100
    assert _participant(env) == 101


def _race(env: AdminEnv, names: list[str]) -> list[int | BaseException]:
    """Create a participant of each name, all at once (a barrier releases the threads
    together); each outcome, in the order of ``names``: the new site id, or what was raised."""
    barrier = threading.Barrier(len(names))
    outcomes: list[int | BaseException] = [RuntimeError("not run")] * len(names)
    actor = Actor("cli:racer", source="cli")

    def create(index: int) -> None:
        try:
            barrier.wait()
            view = env.services.credentials.create_participant(actor, name=names[index], type="dsp")
            outcomes[index] = view.site_id
        except BaseException as exc:  # returned, for the caller's assertions
            outcomes[index] = exc

    threads = [threading.Thread(target=create, args=(i,)) for i in range(len(names))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_concurrent_creates_after_the_highest_allowed_one_get_distinct_ids(env: AdminEnv) -> None:
    _participant(env, MAX_SITE_ID)
    _participant(env, 4)
    outcomes = _race(env, [f"racer {index}" for index in range(6)])
    made = [site for site in outcomes if isinstance(site, int)]
    assert sorted(made) == [3, 5, 6, 7, 8, 9], outcomes


def test_concurrent_creates_of_one_name_make_one_participant(env: AdminEnv) -> None:
    # The name check and the insert share the create's write transaction, which holds the
    # store-wide write lock: of creates racing with one name, exactly one gets through.
    outcomes = _race(env, ["Same Name" if index % 2 else "  same  NAME " for index in range(6)])
    made = [site for site in outcomes if isinstance(site, int)]
    refused = [str(exc) for exc in outcomes if isinstance(exc, AlreadyExists)]
    assert len(made) == 1, outcomes
    assert refused == [f"Participant {made[0]} already has this name"] * 5, outcomes
    listed = env.call("GET", "/participants", MAINTAINER).json()["participants"]
    assert [p["site_id"] for p in listed if p["name"].lower().split() == ["same", "name"]] == made
