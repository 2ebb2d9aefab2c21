"""The admin API records the address of the socket a request came on, not what the request says
of itself: serve's server applies no X-Forwarded-For (uvicorn would, by default, from any
loopback peer), so a caller can neither forge the address in the audit trail nor write text of
its choosing there, a leaked API key included."""

from __future__ import annotations

from pathlib import Path

import httpx
from cli_harness import database_for
from serve_harness import prepare, served

FORGED = ("203.0.113.9", "10.0.0.1, 198.51.100.7", "UID2-C-L-3-abcDEF.not-a-real-secret-at-all")


def test_a_forwarded_for_header_does_not_reach_the_audit_trail(tmp_path: Path) -> None:
    with database_for("sqlite", tmp_path) as database:
        prepared = prepare(database)
        auth = {"authorization": f"Bearer {prepared.admin_token}"}
        with served(database, workers=1) as server:
            for number, forged in enumerate(FORGED):
                created = httpx.post(
                    server.admin_url + "/participants",
                    json={"name": f"Forwarded {number}", "type": "dsp"},
                    headers={**auth, "x-forwarded-for": forged, "x-forwarded-proto": "https"},
                    timeout=30,
                )
                assert created.status_code == 201, created.text
            audit = httpx.get(
                server.admin_url + "/audit",
                params={"action": "participant.create"},
                headers=auth,
                timeout=30,
            )
    events = audit.json()["events"]
    assert len(events) >= len(FORGED)
    assert [e["source"] for e in events[-len(FORGED) :]] == ["127.0.0.1"] * len(FORGED)
    assert not any("UID2-C-" in (e["source"] or "") for e in events)
