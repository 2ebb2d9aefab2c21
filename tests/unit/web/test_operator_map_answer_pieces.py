"""An identity map of many inputs is answered in pieces, the worker serving others meanwhile.

A v2 or v3 map of a whole 1 MiB body holds tens of thousands of inputs: derived and rendered
at once, it kept the worker from answering anything else, health checks included, for seconds.
The request is checked whole first (a bad element anywhere is refused before anything is
sent); the answer is then made a piece per ``MAP_ITEMS_PER_PIECE`` inputs and sent as it comes.
Joined, the pieces are the JSON the one-shot answer was, entry for entry the answers the same
identities get one at a time; up to one piece's worth, the answer is sent whole, as before.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from operator_harness import (
    RECORDED_OPTOUT_EMAIL,
    AsgiLog,
    Credential,
    asgi_exchange,
    build_world_snapshot,
    sealed_post,
)

from uid2_operator.clock import FixedClock
from uid2_operator.errors import InvalidRequest
from uid2_operator.services import data_plane
from uid2_operator.services.data_plane import MAP_ITEMS_PER_PIECE, StreamedReply
from uid2_operator.services.snapshot import Snapshot
from uid2_operator.web.operator_api.app import create_operator_app
from uid2_operator.wire.encoding import dumps
from uid2_operator.wire.envelope import open_response, unframe_response

NOW = 1_750_000_000_000
V2 = "/v2/identity/map"
V3 = "/v3/identity/map"
MANY = 2 * MAP_ITEMS_PER_PIECE + 10


def _emails(count: int) -> list[str]:
    """Mostly mappable e-mails, with an invalid one and an opted-out one every so often."""
    out = []
    for n in range(count):
        if n % 97 == 5:
            out.append(f"not an e-mail {n}")
        elif n % 89 == 7:
            out.append(RECORDED_OPTOUT_EMAIL)
        else:
            out.append(f"user{n}+tag@Example.com")
    return out


def _phones(count: int) -> list[str]:
    return [f"+1555{n:07d}" if n % 50 else "555" for n in range(count)]


def _joined(reply: object) -> bytes:
    assert isinstance(reply, StreamedReply)
    return b"".join(reply.pieces())


def _pieces(reply: object) -> list[bytes]:
    assert isinstance(reply, StreamedReply)
    return list(reply.pieces())


@pytest.fixture(name="snapshot", scope="module")
def snapshot_fixture() -> Snapshot:
    snapshot, _ = build_world_snapshot(NOW)
    return snapshot


# ------------------------------------------------------------------------------ the pieces


@pytest.mark.parametrize(
    ("emails", "phones", "pieces"),
    [
        (0, 0, 1),
        (1, 0, 1),
        (MAP_ITEMS_PER_PIECE, 0, 1),
        (MAP_ITEMS_PER_PIECE - 1, 1, 1),
        (MAP_ITEMS_PER_PIECE + 1, 0, 2),
        (600, 600, 2),  # the phone column is split between the two pieces
        (MANY, 0, 3),
        (0, MANY, 3),
    ],
)
def test_a_v3_answer_has_a_piece_per_map_items_per_piece_inputs_and_is_the_one_shot_json(
    snapshot: Snapshot, emails: int, phones: int, pieces: int
) -> None:
    payload = {"email": _emails(emails), "phone": _phones(phones)}
    parts = _pieces(data_plane.map_v3(snapshot, payload, NOW))
    assert len(parts) == pieces
    joined = b"".join(parts)
    answer = json.loads(joined)
    assert joined == dumps(answer)  # compact, in the encoder's own escapes and key order
    assert list(answer) == ["status", "body"]
    assert answer["status"] == "success"
    body = answer["body"]
    assert list(body) == ["email", "email_hash", "phone", "phone_hash"]
    assert body["email_hash"] == body["phone_hash"] == []
    # Entry for entry what each identity gets alone (an answer of one piece).
    for name, values in (("email", payload["email"]), ("phone", payload["phone"])):
        assert len(body[name]) == len(values)
        for index in range(0, len(values), 37):
            [alone] = json.loads(
                _joined(data_plane.map_v3(snapshot, {name: [values[index]]}, NOW))
            )["body"][name]
            assert body[name][index] == alone
    entries = body["email"] + body["phone"]
    assert {"e": "optout"} in entries or emails <= 7
    assert {"e": "invalid identifier"} in entries or emails + phones <= 5


@pytest.mark.parametrize(("count", "pieces"), [(1, 1), (MAP_ITEMS_PER_PIECE, 1), (MANY, 3)])
def test_a_v2_answer_has_a_piece_per_map_items_per_piece_inputs_and_is_the_one_shot_json(
    snapshot: Snapshot, count: int, pieces: int
) -> None:
    emails = _emails(count)
    parts = _pieces(data_plane.map_v2(snapshot, {"email": emails}, NOW))
    assert len(parts) == pieces
    joined = b"".join(parts)
    answer = json.loads(joined)
    assert joined == dumps(answer)
    assert answer["status"] == "success"
    mapped = answer["body"]["mapped"]
    unmapped = answer["body"].get("unmapped", [])
    # Every input once, mapped ones in input order, then the unmapped ones in input order.
    assert [m["identifier"] for m in mapped] + [u["identifier"] for u in unmapped] == [
        e for e in emails if e in {m["identifier"] for m in mapped}
    ] + [e for e in emails if e in {u["identifier"] for u in unmapped}]
    assert len(mapped) + len(unmapped) == count
    for index in range(0, count, 41):
        alone = json.loads(_joined(data_plane.map_v2(snapshot, {"email": [emails[index]]}, NOW)))
        assert (alone["body"]["mapped"] + alone["body"].get("unmapped", []))[0] in (
            mapped + unmapped
        )
    if count > 5:
        assert {u["reason"] for u in unmapped} == {"invalid identifier", "optout"}
    else:
        assert "unmapped" not in answer["body"]


def test_a_v2_answer_of_empty_arrays_is_an_empty_mapped_list(snapshot: Snapshot) -> None:
    joined = _joined(data_plane.map_v2(snapshot, {"email": [], "phone": []}, NOW))
    assert joined == b'{"status":"success","body":{"mapped":[]}}'


def test_a_v2_null_phone_is_unmapped_wherever_it_stands(snapshot: Snapshot) -> None:
    phones: list[str | None] = list(_phones(MANY))
    phones[MAP_ITEMS_PER_PIECE + 3] = None
    body = json.loads(_joined(data_plane.map_v2(snapshot, {"phone": phones}, NOW)))["body"]
    assert {"identifier": None, "reason": "invalid identifier"} in body["unmapped"]


# ------------------------------------------------------------- the request is checked whole


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"email": [*_emails(MANY), ["nested"]]}, "Incorrect request format"),
        ({"email": _emails(MANY), "phone": [*_phones(10), None]}, "Incorrect request format"),
        ({"email": _emails(MANY), "phone_hash": "not an array"}, "Incorrect request format"),
    ],
)
def test_a_v3_request_bad_past_its_first_piece_is_refused_before_any_piece(
    snapshot: Snapshot, payload: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        data_plane.map_v3(snapshot, payload, NOW)
    assert refused.value.detail == message


def test_a_v2_request_bad_past_its_first_piece_is_refused_before_any_piece(
    snapshot: Snapshot,
) -> None:
    with pytest.raises(InvalidRequest):
        data_plane.map_v2(snapshot, {"email": [*_emails(MANY), {"an": "object"}]}, NOW)


# ----------------------------------------------------------------------------- over ASGI


def _app(snapshot: Snapshot) -> Any:
    return create_operator_app(
        snapshot_provider=lambda: snapshot, clock=FixedClock(NOW), random=bytes
    )


def _request(cred: Credential, path: str, payload: object) -> tuple[dict[str, Any], bytes]:
    return sealed_post(cred, path, payload, now_ms=NOW)


def _world() -> tuple[Snapshot, Credential]:
    snapshot, credentials = build_world_snapshot(NOW)
    return snapshot, credentials["A"]


@pytest.mark.parametrize("path", [V2, V3])
def test_the_worker_answers_a_health_check_while_a_large_map_is_answered(path: str) -> None:
    snapshot, cred = _world()
    app = _app(snapshot)
    scope, body = _request(cred, path, {"email": _emails(MANY)})
    health = {"type": "http", "method": "GET", "path": "/ops/healthcheck", "headers": []}
    log: AsgiLog = []

    async def both() -> None:
        mapping = asyncio.create_task(asgi_exchange(app, scope, body, log, "map"))
        while not mapping.done() and not any(
            name == "map" and m["type"] == "http.response.body" for name, m in log
        ):
            await asyncio.sleep(0)
        await asyncio.gather(mapping, asgi_exchange(app, health, b"", log, "health"))

    asyncio.run(both())
    order = [(name, m["type"], m.get("more_body", False)) for name, m in log]
    assert order.index(("health", "http.response.body", False)) < order.index(
        ("map", "http.response.body", False)
    )
    start = next(m for name, m in log if name == "map")
    assert start["status"] == 200
    received = b"".join(m["body"] for name, m in log if name == "map" and "body" in m)
    opened = open_response(
        unframe_response(received, False), secret=cred.secret_bytes, nonce=b"nonce-01"
    )
    assert opened["status"] == "success"
    if path == V3:
        assert len(opened["body"]["email"]) == MANY
    else:
        assert len(opened["body"]["mapped"]) + len(opened["body"]["unmapped"]) == MANY


@pytest.mark.parametrize("path", [V2, V3])
def test_a_map_of_one_piece_is_sent_whole_with_its_length(path: str) -> None:
    snapshot, cred = _world()
    app = _app(snapshot)
    scope, body = _request(cred, path, {"email": _emails(MAP_ITEMS_PER_PIECE)})
    log: AsgiLog = []
    asyncio.run(asgi_exchange(app, scope, body, log, "map"))
    (_, start), (_, answer) = log
    assert start["status"] == 200
    assert dict(start["headers"])[b"content-length"] == b"%d" % len(answer["body"])
    assert answer.get("more_body", False) is False


@pytest.mark.parametrize("path", [V2, V3])
def test_a_large_map_bad_at_its_end_is_a_whole_400(path: str) -> None:
    snapshot, cred = _world()
    app = _app(snapshot)
    scope, body = _request(cred, path, {"email": [*_emails(MANY), {"an": "object"}]})
    log: AsgiLog = []
    asyncio.run(asgi_exchange(app, scope, body, log, "map"))
    (_, start), (_, answer) = log
    assert start["status"] == 400
    assert json.loads(answer["body"])["status"] == "client_error"
