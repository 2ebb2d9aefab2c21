"""The endpoints keep the promise ``r`` makes: no raw UID changes before the time a mapper got.

A mapper maps an email at 09:00 and is told ``r`` = the next UTC midnight ``M``. The operator
rotates every salt bucket at 10:00 and serves the rotated table (as a reload would). Until ``M``
every endpoint that derives the email's raw UID (v3 and v2 map, generate, refresh, validate,
logout) gives the one mapped at 09:00, and ``/v2/identity/buckets`` lists no change; from ``M``
on they give the new raw UID, the v3 map the old one as previous, and the buckets list the
change as made at ``M``. Pure: hand-built snapshots, a fixed random source, times passed in.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from uid2_operator.domain.keysets import new_site_keyset, reserved_keysets
from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.domain.roles import ClientRole
from uid2_operator.domain.salts import SaltTable, generate_salt_table, rotate
from uid2_operator.services import data_plane
from uid2_operator.services.data_plane import Caller, JsonObject
from uid2_operator.services.snapshot import Lifetimes, OperatorIdentity, Snapshot, build_snapshot
from uid2_operator.wire.keys import MASTER_KEYSET_ID, EncryptionKey
from uid2_operator.wire.raw_uid import DAY_MS, bucket_id
from uid2_operator.wire.tokens import decode_advertising_token

HOUR = 3_600_000
DAY0 = 19_676 * DAY_MS  # 2023-11-15T00:00:00Z
CREATED = DAY0 - 3 * DAY_MS
MAPPED_AT = DAY0 + 9 * HOUR
ROTATED_AT = DAY0 + 10 * HOUR
MIDNIGHT = DAY0 + DAY_MS
SITE = 1001
SITE_KEYSET = 11
EMAIL = "someone@example.com"
CALLER = Caller("key", SITE, frozenset(ClientRole))


class _Random:
    """A reproducible byte source: SHA-256 in counter mode over a label."""

    def __init__(self, label: bytes) -> None:
        self._label = label
        self._n = 0

    def __call__(self, size: int) -> bytes:
        self._n += 1
        return hashlib.shake_256(self._label + self._n.to_bytes(8, "big")).digest(size)


def _key(key_id: int, keyset_id: int) -> EncryptionKey:
    secret = hashlib.sha256(b"key %d" % key_id).digest()
    start, end = CREATED // 1000, (MIDNIGHT + 10 * DAY_MS) // 1000
    return EncryptionKey(key_id, keyset_id, start, start, end, secret)


def _snapshot(salts: SaltTable, generation: int, *, v3: bool = False) -> Snapshot:
    return build_snapshot(
        generation=generation,
        built_at_ms=CREATED,
        identity=OperatorIdentity(identity_v3=v3),
        lifetimes=Lifetimes(),
        pepper=bytes(32),
        clients=[],
        keysets=[*reserved_keysets(CREATED), new_site_keyset(SITE_KEYSET, SITE, CREATED)],
        keys=[_key(1, -1), _key(2, -2), _key(3, SITE_KEYSET)],
        salts=salts,
    )


def _world(*, v3: bool = False) -> tuple[Snapshot, Snapshot]:
    """The snapshot served before the 10:00 rotation and the one served after it."""
    random = _Random(b"salts")
    table = generate_salt_table(16, CREATED, random)
    rotation = rotate(table, 1.0, ROTATED_AT, random)
    assert rotation.effective_at_ms == MIDNIGHT
    return _snapshot(table, 1, v3=v3), _snapshot(rotation.table, 2, v3=v3)


def _body(reply: data_plane.StreamedReply) -> Any:
    return json.loads(b"".join(reply.pieces()))["body"]


def _map_v3(snapshot: Snapshot, now_ms: int) -> dict[str, Any]:
    body = _body(data_plane.map_v3(snapshot, {"email": [EMAIL]}, now_ms))
    [entry] = body["email"]
    assert isinstance(entry, dict)
    return entry


def _map_v2(snapshot: Snapshot, now_ms: int) -> str:
    body = _body(data_plane.map_v2(snapshot, {"email": [EMAIL]}, now_ms))
    [entry] = body["mapped"]
    uid: str = entry["advertising_id"]
    return uid


def _token_uid(snapshot: Snapshot, token: str) -> str:
    decoded = decode_advertising_token(
        token,
        master_key=snapshot.lookup_in(MASTER_KEYSET_ID),
        site_key=snapshot.site_key_lookup,
    )
    return base64.b64encode(decoded.raw_uid).decode()


def _generated(snapshot: Snapshot, now_ms: int) -> JsonObject:
    reply = data_plane.generate(snapshot, CALLER, {"email": EMAIL}, now_ms, _Random(b"gen"))
    assert reply.status == "success"
    body: JsonObject = reply.body
    return body


def _refreshed_uid(snapshot: Snapshot, refresh_token: str, now_ms: int) -> str:
    refreshed = data_plane.refresh(
        snapshot,
        refresh_token.encode(),
        authenticated=True,
        now_ms=now_ms,
        random=_Random(b"refresh"),
    )
    assert refreshed.reply.status == "success"
    return _token_uid(snapshot, refreshed.reply.body["advertising_token"])


def _logged_out_uid(snapshot: Snapshot, now_ms: int) -> str | None:
    records: list[OptOutRecord] = []
    data_plane.logout(snapshot, CALLER, {"email": EMAIL}, now_ms, records.append)
    [record] = records
    return record.advertising_id


def _buckets(snapshot: Snapshot, since: str, now_ms: int) -> list[dict[str, str]]:
    reply = data_plane.buckets(snapshot, {"since_timestamp": since}, now_ms)
    answer = json.loads(b"".join(reply.pieces()))
    assert answer["status"] == "success"
    listed: list[dict[str, str]] = answer["body"]
    return listed


@pytest.mark.parametrize("v3", [False, True])
def test_every_raw_uid_stays_until_the_time_the_mapper_was_given(v3: bool) -> None:
    before, after = _world(v3=v3)
    mapped = _map_v3(before, MAPPED_AT)
    assert mapped["p"] is None
    assert mapped["r"] == MIDNIGHT // 1000
    uid = mapped["u"]
    token = _generated(before, MAPPED_AT)
    for now in (ROTATED_AT + HOUR, MIDNIGHT - 1):
        assert _map_v3(after, now) == {"u": uid, "p": None, "r": MIDNIGHT // 1000}, now
        assert _map_v2(after, now) == uid
        generated = _generated(after, now)
        assert _token_uid(after, generated["advertising_token"]) == uid
        assert _refreshed_uid(after, token["refresh_token"], now) == uid
        check = {"email": EMAIL, "token": token["advertising_token"]}
        assert data_plane.validate(after, CALLER, check, now).body is True
        assert _logged_out_uid(after, now) == uid


@pytest.mark.parametrize("v3", [False, True])
def test_from_midnight_the_new_raw_uid_with_the_old_one_as_previous(v3: bool) -> None:
    before, after = _world(v3=v3)
    uid = _map_v3(before, MAPPED_AT)["u"]
    token = _generated(before, MAPPED_AT)
    for now, r in ((MIDNIGHT, MIDNIGHT), (MIDNIGHT + HOUR, MIDNIGHT + DAY_MS)):
        entry = _map_v3(after, now)
        assert entry["u"] != uid
        assert entry["p"] == uid
        assert entry["r"] == r // 1000
        assert _map_v2(after, now) == entry["u"]
        assert _token_uid(after, _generated(after, now)["advertising_token"]) == entry["u"]
        assert _refreshed_uid(after, token["refresh_token"], now) == entry["u"]
        check = {"email": EMAIL, "token": token["advertising_token"]}
        assert data_plane.validate(after, CALLER, check, now).body is False
        assert _logged_out_uid(after, now) == entry["u"]


def test_buckets_list_a_change_only_once_it_is_in_effect() -> None:
    _, after = _world()
    salts = after.salts
    since = "2023-11-15T09:00:00"
    assert _buckets(after, since, ROTATED_AT) == []
    assert _buckets(after, since, MIDNIGHT - 1) == []
    listed = _buckets(after, since, MIDNIGHT)
    expected = [
        {
            "bucket_id": bucket_id(i, id_prefix=salts.id_prefix, id_secret=salts.id_secret),
            "last_updated": "2023-11-16T00:00:00.000",
        }
        for i in range(salts.bucket_count)
    ]
    assert listed == expected
    assert _buckets(after, "2023-11-16T00:00:00.001", MIDNIGHT + HOUR) == []


def test_a_sync_while_a_second_rotation_waits_still_lists_the_first_change() -> None:
    # Rotated at 10:00 for MIDNIGHT, rotated again the next morning for the midnight after. A
    # client whose last sync came before MIDNIGHT syncs at noon: it must learn of the change
    # made at MIDNIGHT (its raw UIDs are stale since then), while the second change waits.
    _, after = _world()
    second = rotate(after.salts, 1.0, MIDNIGHT + 10 * HOUR, _Random(b"second"))
    again = _snapshot(second.table, 3)
    noon = MIDNIGHT + 12 * HOUR
    salts = second.table
    expected = [
        {
            "bucket_id": bucket_id(i, id_prefix=salts.id_prefix, id_secret=salts.id_secret),
            "last_updated": "2023-11-16T00:00:00.000",
        }
        for i in range(salts.bucket_count)
    ]
    assert _buckets(again, "2023-11-15T11:00:00", noon) == expected
    # What it maps then is what it was told at MIDNIGHT, to be mapped again at the next one.
    at_midnight = _map_v3(after, MIDNIGHT)
    assert _map_v3(again, noon) == {
        "u": at_midnight["u"],
        "p": None,
        "r": (MIDNIGHT + DAY_MS) // 1000,
    }


def test_a_rotation_just_before_midnight_changes_the_raw_uid_once_at_the_midnight_after() -> None:
    random = _Random(b"late")
    table = generate_salt_table(16, CREATED, random)
    last_ms = MIDNIGHT - 1  # 23:59:59.999
    effective = MIDNIGHT + DAY_MS  # that midnight is too close: the one after it
    before = _snapshot(table, 1)
    after = _snapshot(rotate(table, 1.0, last_ms, random).table, 2)
    uid = _map_v3(before, last_ms - 1)["u"]
    for now in (last_ms, MIDNIGHT, MIDNIGHT + HOUR, effective - 1):
        assert _map_v3(after, now) == {"u": uid, "p": None, "r": effective // 1000}, now
    new = _map_v3(after, effective)
    assert (new["p"], new["r"]) == (uid, effective // 1000)
    assert new["u"] != uid
    for now in (effective + 1, effective + DAY_MS - 1):
        assert _map_v3(after, now) == {"u": new["u"], "p": uid, "r": (effective + DAY_MS) // 1000}


MAPPED = [f"mapped-{n}@example.com" for n in range(64)]


def _map_all(snapshot: Snapshot, now_ms: int) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = _body(data_plane.map_v3(snapshot, {"email": MAPPED}, now_ms))[
        "email"
    ]
    assert len(entries) == len(MAPPED)
    return entries


def test_a_rotation_two_seconds_before_midnight_changes_nothing_at_that_midnight() -> None:
    """Rotated at 23:59:58, the table reaches the workers after midnight (writing it and their
    reload take seconds), so for a while workers serve the old table past midnight. Whichever
    table answers, from then through the next hour every raw UID and ``r`` of the v3 map is the
    same, and the buckets list no change: the rotation takes effect at the midnight after."""
    random = _Random(b"two seconds")
    table = generate_salt_table(16, CREATED, random)
    rotated_at = MIDNIGHT - 2000
    rotation = rotate(table, 1.0, rotated_at, random)
    effective = MIDNIGHT + DAY_MS
    assert rotation.effective_at_ms == effective
    before, after = _snapshot(table, 1), _snapshot(rotation.table, 2)
    mapped = _map_all(before, rotated_at - 1)
    assert {entry["r"] for entry in mapped} == {MIDNIGHT // 1000}
    kept = [{"u": entry["u"], "p": None, "r": effective // 1000} for entry in mapped]
    assert _map_all(after, rotated_at) == kept
    for now in (MIDNIGHT, MIDNIGHT + 1, MIDNIGHT + 8000, MIDNIGHT + HOUR):
        assert _map_all(before, now) == kept, now  # a worker still on the old table
        assert _map_all(after, now) == kept, now  # one that has loaded the rotated table
    # A client that synced the buckets in the window hears of the change when it takes effect.
    for since in ("2023-11-15T23:00:00", "2023-11-16T00:00:05"):
        for now in (MIDNIGHT, MIDNIGHT + HOUR, effective - 1):
            assert _buckets(after, since, now) == [], (since, now)
        listed = _buckets(after, since, effective)
        assert len(listed) == 16
        assert {bucket["last_updated"] for bucket in listed} == {"2023-11-17T00:00:00.000"}
    changed = _map_all(after, effective)
    pairs = zip(mapped, changed, strict=True)
    assert all(new["u"] != old["u"] and new["p"] == old["u"] for old, new in pairs)
