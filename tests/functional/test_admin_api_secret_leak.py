"""``POST /admin/api/keys/{key_id}/rotate-secret`` with ``grace_days: 0`` after a leak.

A secret replaced a day ago with 7 days of overlap is found leaked: rotating again with no grace
must stop it too, not only the secret current until then, and say so.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from admin_api_harness import AdminEnv, open_admin_env, sqlite_settings

from uid2_operator.domain.roles import AdminRole

DAY_MS = 86_400_000


@pytest.fixture
def env(tmp_path: Path) -> Iterator[AdminEnv]:
    with open_admin_env(sqlite_settings(tmp_path)) as opened:
        yield opened


def test_a_rotation_with_no_grace_leaves_only_the_newest_secret(env: AdminEnv) -> None:
    site = env.call(
        "POST", "/participants", json={"name": "P", "type": "publisher", "roles": ["GENERATOR"]}
    ).json()["site_id"]
    created = env.call("POST", "/keys", json={"site_id": site, "name": "k", "roles": ["GENERATOR"]})
    assert created.status_code == 201, created.text
    key_id, key = created.json()["key_id"], created.json()["key"]
    path = f"/keys/{key_id}/rotate-secret"
    first = env.call("POST", path, AdminRole.MAINTAINER, json={"grace_days": 7})
    assert first.status_code == 200, first.text
    env.clock.advance(DAY_MS)
    credentials = env.services.credentials
    assert len(credentials.resolve_client(key).secrets) == 2

    second = env.call("POST", path, AdminRole.MAINTAINER, json={"grace_days": 0})

    assert second.status_code == 200, second.text
    assert second.json()["previous_secret_retires_at_ms"] == env.clock.now_ms()
    newest = base64.b64decode(second.json()["secret"])
    assert credentials.resolve_client(key).secrets == (newest,)
