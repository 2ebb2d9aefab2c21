"""``PUT /participants/{site_id}/sharing`` sent before the upkeep made the participant's keyset.

That request creates the keyset and its first key (audited as the admin's doing), so its answer
says ``"changed": true`` even when the choice sent is the default one; the same request again
changes nothing and says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from admin_api_harness import AdminEnv, open_admin_env, sqlite_settings

from uid2_operator.domain.roles import AdminRole

pytestmark = pytest.mark.functional


@pytest.fixture
def env(tmp_path: Path) -> Iterator[AdminEnv]:
    with open_admin_env(sqlite_settings(tmp_path)) as opened:
        yield opened


def _site_without_keyset(env: AdminEnv) -> int:
    body = {"name": "Fresh", "type": "publisher", "roles": ["SHARER"]}
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
