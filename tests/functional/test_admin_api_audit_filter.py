"""An opt-out's audit event can be found through the admin API by its target id.

That id is the base64 of the opt-out's first-level hash: 44 characters ending in '=', the shape
of a client secret. The filter only compares it, so it is not refused as credential text.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from admin_api_harness import AdminEnv, open_admin_env, sqlite_settings

from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.services.write_behind import write_optouts
from uid2_operator.wire.encoding import b64encode

pytestmark = pytest.mark.functional


@pytest.fixture
def env(tmp_path: Path) -> Iterator[AdminEnv]:
    with open_admin_env(sqlite_settings(tmp_path)) as opened:
        yield opened


def test_an_optout_event_is_found_by_its_target_id(env: AdminEnv) -> None:
    flh = bytes(range(100, 132))
    write_optouts(env.services.store, [OptOutRecord(flh, 1_700_000_000_000, "AA==")], lambda: 1)
    target = b64encode(flh)
    found = env.call("GET", "/audit", params={"target_id": target})
    assert found.status_code == 200, found.text
    assert [e["action"] for e in found.json()["events"]] == ["optout.add"]
    assert found.json()["events"][0]["target_id"] == target
