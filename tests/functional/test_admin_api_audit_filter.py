"""An opt-out's audit event can be found through the admin API by its target id.

That id is the base64 of the opt-out's first-level hash: 44 characters ending in '=', the shape
of a client secret. The filter only compares it, so it is not refused as credential text.
"""

from __future__ import annotations

import sqlite3
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


def test_a_repaired_row_lists_again_once_its_listing_failed(env: AdminEnv, tmp_path: Path) -> None:
    # A row that does not read back fails the listing (500 audit_row_unreadable); that failure
    # must not leave its statement, and with it the pooled SQLite connection's read transaction,
    # open: the next listings would see the row as it was, and fail on after its repair.
    assert env.call("POST", "/participants", json={"name": "P", "type": "publisher"}).is_success
    database = sqlite3.connect(next(tmp_path.rglob("uid2.db")), isolation_level=None)
    try:
        (original,) = database.execute("SELECT after FROM audit_events WHERE seq = 1").fetchone()
        database.execute("UPDATE audit_events SET after = '{x' WHERE seq = 1")
        failed = env.call("GET", "/audit")
        assert failed.status_code == 500
        assert failed.json()["error"]["code"] == "audit_row_unreadable"
        database.execute("UPDATE audit_events SET after = ? WHERE seq = 1", (original,))
    finally:
        database.close()
    assert [env.call("GET", "/audit").status_code for _ in range(4)] == [200] * 4
