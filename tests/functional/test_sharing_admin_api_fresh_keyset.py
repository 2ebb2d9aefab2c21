"""``GET`` and ``PUT /participants/{site_id}/sharing`` sent before the upkeep made the
participant's keyset.

The read answers 200 in the route's usual shape: no keyset id, and the choice the keyset will be
created with (``bidders`` for a participant holding GENERATOR, ``owner_only`` for any other); it
creates nothing. The write creates the keyset and its first key (audited as the admin's doing), so
its answer says ``"changed": true`` even when the choice sent is the default one; the same request
again changes nothing and says so.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from admin_api_harness import (
    PREFIX,
    AdminEnv,
    admin_env_fixture,
    open_admin_env,
    schema_errors,
    sqlite_settings,
)

from uid2_operator.domain.roles import AdminRole

pytestmark = pytest.mark.functional


@pytest.fixture
def env(tmp_path: Path) -> Iterator[AdminEnv]:
    with open_admin_env(sqlite_settings(tmp_path)) as opened:
        yield opened


any_env = admin_env_fixture()


_NUMBERS = itertools.count(1)  # participant names are unique


def _site_without_keyset(
    env: AdminEnv, kind: str = "publisher", roles: tuple[str, ...] = ("GENERATOR", "SHARER")
) -> int:
    body = {"name": f"Fresh {next(_NUMBERS)}", "type": kind, "roles": list(roles)}
    response = env.call("POST", "/participants", json=body)
    assert response.status_code == 201, response.text
    site: int = response.json()["site_id"]
    with env.services.store.read() as rx:
        assert all(k.site_id != site for k in rx.keysets.list_all())
    return site


def test_the_default_choice_sent_first_answers_changed(env: AdminEnv) -> None:
    site = _site_without_keyset(env)
    path = f"/participants/{site}/sharing"
    seq = env.change_seq()

    first = env.call("PUT", path, AdminRole.MAINTAINER, json={"mode": "bidders"})

    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["mode"], body["changed"], body["rotated_key_ids"]) == ("bidders", True, [])
    assert env.change_seq() > seq
    maintainer = f"admin:{env.token_ids[AdminRole.MAINTAINER]}"
    made = [
        e
        for e in env.audit_events()
        if e.site_id == site and e.action in ("keyset.create", "encryption_key.create")
    ]
    assert made
    assert {e.actor for e in made} == {maintainer}

    seq = env.change_seq()
    again = env.call("PUT", path, AdminRole.MAINTAINER, json={"mode": "bidders"})
    assert again.status_code == 200, again.text
    assert again.json()["changed"] is False
    assert env.change_seq() == seq


def test_the_read_answers_the_choice_the_keyset_will_be_created_with(any_env: AdminEnv) -> None:
    env = any_env
    sites = {
        _site_without_keyset(env): "bidders",
        _site_without_keyset(env, "advertiser", ("SHARER",)): "owner_only",
    }
    mark = env.mark()

    shown = {
        site: env.call("GET", f"/participants/{site}/sharing", AdminRole.READ_ONLY)
        for site in sites
    }

    document = env.client.request("GET", PREFIX + "/openapi.json").json()
    ref = {"$ref": "#/components/schemas/Sharing"}
    for site, mode in sites.items():
        assert shown[site].status_code == 200, shown[site].text
        assert shown[site].json() == {
            "site_id": site,
            "keyset_id": None,
            "mode": mode,
            "sites": [],
            "types": [],
            "changed": False,
            "rotated_key_ids": [],
        }
        assert schema_errors(document, ref, shown[site].json(), "Sharing") == []
    assert env.refusals_since(mark) == []  # a read: nothing written, nothing audited
    with env.services.store.read() as rx:
        assert all(k.site_id not in sites for k in rx.keysets.list_all())

    env.services.material.initialise()  # as the upkeep does: the keysets, with the choices shown
    for site in sites:
        after = env.call("GET", f"/participants/{site}/sharing", AdminRole.READ_ONLY).json()
        assert isinstance(after["keyset_id"], int)
        assert {**after, "keyset_id": None} == shown[site].json()
    unknown = env.call("GET", "/participants/4242/sharing", AdminRole.READ_ONLY)
    assert unknown.status_code == 404
