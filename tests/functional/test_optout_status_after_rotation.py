"""``/v2/optout/status`` keeps answering for the raw UID a person had when they first opted out,
after they opt out again under a new one (their salt bucket rotated in between).

On each backend: ``init``, ``optout add`` records the person with raw UID U1, ``salts rotate
--fraction 1`` rotates every bucket and the salt times are moved two days back (the rotation
has taken effect, as in ``sdk_world``). A real ``serve`` then takes a logout for the same
e-mail address, which records the raw UID the person has now, U2. No token or mapping is issued
after an opt-out, so U1 is the raw UID DSPs and advertisers still hold: the status must list it,
since its first opt-out, right after the logout, once the write is read back from the store,
and after a restart (a full load); U2 is listed since the logout.
"""

from __future__ import annotations

from typing import Any

import pytest
from cli_harness import Database, settings_of
from sdk_world import _COMMON_ENV, age_salts, run_cli
from serve_harness import Credential, Served, poll, served

from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.storage import open_store

pytestmark = pytest.mark.functional

VICTIM = "victim@example.com"
STATUS = "/v2/optout/status"
LOGOUT = "/v2/token/logout"
SERVE_ENV = {**_COMMON_ENV, "UID2_POLL_INTERVAL_S": "0.2", "UID2_FLUSH_INTERVAL_S": "0.3"}


def _status(server: Served, cred: Credential, ids: list[str]) -> list[dict[str, Any]]:
    reply, opened = server.call(STATUS, {"advertising_ids": ids}, cred)
    assert opened is not None, (reply.status_code, reply.text)
    assert opened["status"] == "success", opened
    opted: list[dict[str, Any]] = opened["body"]["opted_out"]
    return opted


def _since(ad_id: str, at_ms: int) -> dict[str, Any]:
    return {"advertising_id": ad_id, "opted_out_since": at_ms // 1000 * 1000}


def _stored(database: Database) -> tuple[list[OptOutRecord], int]:
    store = open_store(settings_of(database).store_url)
    try:
        with store.read() as rx:
            return rx.optouts.list_all(), rx.change_seq()
    finally:
        store.close()


def _snapshot_change_seq(server: Served) -> int:
    for line in server.metrics().splitlines():
        if line.startswith("uid2_operator_snapshot_change_seq{"):
            return int(float(line.rsplit(" ", 1)[1]))
    return -1


def test_the_raw_uid_of_an_opt_out_before_a_rotation_stays_reported(database: Database) -> None:
    env = dict(_COMMON_ENV)
    run_cli(database, env, "init")
    first = run_cli(database, env, "optout", "add", "--email", VICTIM)
    u1, t1 = first["advertising_id"], first["timestamp_ms"]
    run_cli(database, env, "salts", "rotate", "--fraction", "1")
    age_salts(database, 2)
    site = run_cli(database, env, "participant", "create", "--name", "Mapper",
                   "--type", "publisher", "--roles", "MAPPER,OPTOUT")["site_id"]  # fmt: skip
    issued = run_cli(database, env, "key", "create", "--site-id", str(site), "--name", "k",
                     "--roles", "MAPPER,OPTOUT")  # fmt: skip
    cred = Credential(issued["key_id"], issued["key"], issued["secret"], int(site))

    with served(database, env=SERVE_ENV) as server:
        assert _status(server, cred, [u1]) == [_since(u1, t1)]
        reply, opened = server.call(LOGOUT, {"email": VICTIM}, cred)
        assert opened is not None, (reply.status_code, reply.text)
        assert opened["body"] == {"optout": "OK"}
        assert _status(server, cred, [u1]) == [_since(u1, t1)]  # the worker's own opt-out

        # The logout is written, and the worker reloads the store's record.
        def written() -> OptOutRecord | None:
            records, _ = _stored(database)
            (record,) = records
            return record if record.timestamp_ms > t1 else None

        record = poll(written)
        assert record is not None, server.lines
        _, change_seq = _stored(database)
        assert poll(lambda: _snapshot_change_seq(server) >= change_seq), server.lines
        u2, t2 = record.advertising_id, record.timestamp_ms
        assert u2 is not None
        assert u2 != u1  # the rotation gave the person a new raw UID
        assert record.advertising_id_times() == {u1: t1, u2: t2}
        assert _status(server, cred, [u1, u2]) == [_since(u1, t1), _since(u2, t2)]

    with served(database, env=SERVE_ENV) as server:  # a full load of the store's records
        assert _status(server, cred, [u2, u1]) == [_since(u2, t2), _since(u1, t1)]
