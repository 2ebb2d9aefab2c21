"""``/v2/identity/buckets`` writes its answer in pieces whose bytes join into the whole answer.

A first sync lists every bucket of the table (2^20 in production). The answer is written
``BUCKETS_PER_PIECE`` buckets at a time; joined, the pieces are exactly the JSON of
``Reply("success", [{"bucket_id": ..., "last_updated": ...}, ...])``, built here independently
of the table's own listing. A request that is refused is refused by the call, before any piece.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from uid2_operator.domain.keysets import reserved_keysets
from uid2_operator.domain.salts import SaltTable
from uid2_operator.errors import InvalidRequest
from uid2_operator.services import data_plane
from uid2_operator.services.data_plane import BUCKETS_PER_PIECE, Reply, StreamedReply
from uid2_operator.services.snapshot import Lifetimes, OperatorIdentity, Snapshot, build_snapshot
from uid2_operator.wire.raw_uid import DAY_MS, bucket_id

DAY0 = 19_676 * DAY_MS  # 2023-11-15T00:00:00Z
SINCE = "2023-11-15T00:00"
OLD = DAY0 - 30 * DAY_MS  # before SINCE: never listed
NOW = DAY0 + 10 * DAY_MS
PIECE = BUCKETS_PER_PIECE


def _table(
    times: list[int], *, id_prefix: str = "p", kind: type[SaltTable] = SaltTable
) -> SaltTable:
    count = len(times)
    return kind(
        first_level_salt="first-level-salt",
        id_prefix=id_prefix,
        id_secret="bucket-id-secret",
        salts=bytes(32 * count),
        previous=b"",
        has_previous=bytes((count + 7) // 8),
        last_updated=array("q", times),
        refresh_from=array("q", times),
    )


def _snapshot(salts: SaltTable) -> Snapshot:
    return build_snapshot(
        generation=1,
        built_at_ms=DAY0,
        identity=OperatorIdentity(),
        lifetimes=Lifetimes(),
        pepper=bytes(32),
        clients=[],
        keysets=reserved_keysets(DAY0),
        keys=[],
        salts=salts,
    )


def _iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms // 1000, UTC) + timedelta(milliseconds=ms % 1000)
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds")


def _whole_answer(salts: SaltTable, since_ms: int, now_ms: int) -> bytes:
    """The answer as one JSON value, every bucket read on its own."""
    body = [
        {
            "bucket_id": bucket_id(i, id_prefix=salts.id_prefix, id_secret=salts.id_secret),
            "last_updated": _iso(salts.bucket(i, now_ms).last_updated_ms),
        }
        for i in range(salts.bucket_count)
        if since_ms <= salts.bucket(i, now_ms).last_updated_ms <= now_ms
    ]
    return Reply("success", body).to_json()


def _pieces(salts: SaltTable, since: str = SINCE, now_ms: int = NOW) -> list[bytes]:
    reply = data_plane.buckets(_snapshot(salts), {"since_timestamp": since}, now_ms)
    assert isinstance(reply, StreamedReply)
    return list(reply.pieces())


def _interleaved(listed: int) -> list[int]:
    """``listed`` buckets updated after SINCE, each followed by one updated long before."""
    times = [t for i in range(listed) for t in (DAY0 + (i % 3) * DAY_MS, OLD)]
    return times or [OLD]


@pytest.mark.parametrize("listed", [0, 1, PIECE - 1, PIECE, PIECE + 1, 3 * PIECE, 3 * PIECE + 17])
def test_the_pieces_join_into_the_whole_answer(listed: int) -> None:
    salts = _table(_interleaved(listed))
    pieces = _pieces(salts)
    assert b"".join(pieces) == _whole_answer(salts, DAY0, NOW)
    assert len(pieces) == max(1, -(-listed // PIECE))
    per_piece = [piece.count(b'"bucket_id":') for piece in pieces]
    assert per_piece == [PIECE] * (len(pieces) - 1) + [listed - PIECE * (len(pieces) - 1)]
    assert len(json.loads(b"".join(pieces))["body"]) == listed


def test_an_answer_of_no_bucket_is_one_piece() -> None:
    assert _pieces(_table([DAY0] * 5), "2023-11-16T00:00") == [b'{"status":"success","body":[]}']


def test_every_distinct_time_is_written_as_it_is_when_most_differ() -> None:
    # More distinct times than the answer remembers texts for, a bucket pending until later
    # (updated after now) left out, a few buckets sharing a time.
    times = [DAY0 + 7 * i + (i % 1000) * 1_000 for i in range(2 * PIECE + 1)]
    times[5] = NOW + 1
    times[6:10] = [DAY0] * 4
    salts = _table(times)
    pieces = _pieces(salts)
    assert b"".join(pieces) == _whole_answer(salts, DAY0, NOW)
    assert len(pieces) == 2


def test_a_bucket_id_prefix_is_escaped_as_the_json_encoder_escapes_it() -> None:
    salts = _table([DAY0] * 3, id_prefix='q"\\/\u00e9\u2028\x01')
    pieces = _pieces(salts)
    assert b"".join(pieces) == _whole_answer(salts, DAY0, NOW)
    assert json.loads(pieces[0])["body"][0]["bucket_id"].startswith('q"\\/\u00e9\u2028\x01')


def test_the_pieces_are_made_afresh_for_each_reading() -> None:
    reply = data_plane.buckets(
        _snapshot(_table(_interleaved(PIECE + 3))), {"since_timestamp": SINCE}, NOW
    )
    assert isinstance(reply, StreamedReply)
    assert b"".join(reply.pieces()) == b"".join(reply.pieces())  # made afresh on each call
    assert "pieces" not in repr(reply)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (None, "missing parameter since_timestamp"),
        ({}, "missing parameter since_timestamp"),
        ({"since_timestamp": 1654000000}, "invalid date, must conform to ISO 8601"),
        ({"since_timestamp": "2024-13-01T00:00:00"}, "invalid date, must conform to ISO 8601"),
    ],
)
def test_a_refused_request_is_refused_by_the_call_before_any_piece(
    payload: dict[str, object] | None, message: str
) -> None:
    class Unreadable(SaltTable):
        def updated_since(self, since_ms: int, now_ms: int) -> Iterator[tuple[int, int]]:
            raise AssertionError("read")

    snapshot = _snapshot(_table([DAY0], kind=Unreadable))
    with pytest.raises(InvalidRequest) as refused:
        data_plane.buckets(snapshot, payload, NOW)
    assert refused.value.detail == message


def test_the_table_lists_its_updated_buckets_one_at_a_time() -> None:
    salts = _table([DAY0, OLD, DAY0 + 1])
    listing = salts.updated_since(DAY0, NOW)
    assert iter(listing) is listing  # an iterator, not a list made up front
    assert next(listing) == (0, DAY0)
    assert list(listing) == [(2, DAY0 + 1)]
