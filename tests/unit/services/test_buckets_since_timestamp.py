"""``since_timestamp`` of ``/v2/identity/buckets`` is read as the reference reads it: Java's
``LocalDateTime.parse(text, ISO_LOCAL_DATE_TIME)`` taken as UTC.

The expected instants are what that call gives (JDK 17) for the same texts: a ``t`` in lower
case, a point with no digits after it, years 0, negative and beyond 9999 are accepted there, so
a client that sends them is answered, not refused.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

import pytest

from uid2_operator.domain.keysets import reserved_keysets
from uid2_operator.domain.salts import SaltTable
from uid2_operator.errors import InvalidRequest
from uid2_operator.services import data_plane
from uid2_operator.services.snapshot import Lifetimes, OperatorIdentity, Snapshot, build_snapshot

NOW = 1_700_000_000_000
REFUSED = "invalid date, must conform to ISO 8601"


class _Recording(SaltTable):
    """A table that notes the ``since_ms`` it is asked for."""

    asked: list[int]

    def updated_since(self, since_ms: int, now_ms: int) -> Iterator[tuple[int, int]]:
        self.asked.append(since_ms)
        return super().updated_since(since_ms, now_ms)


def _snapshot() -> tuple[Snapshot, _Recording]:
    salts = _Recording(
        first_level_salt="first-level-salt",
        id_prefix="p",
        id_secret="bucket-id-secret",
        salts=bytes(32),
        previous=b"",
        has_previous=bytes(1),
        last_updated=array("q", [NOW - 1]),
        refresh_from=array("q", [NOW - 1]),
    )
    salts.asked = []
    snapshot = build_snapshot(
        generation=1,
        built_at_ms=NOW,
        identity=OperatorIdentity(),
        lifetimes=Lifetimes(),
        pepper=bytes(32),
        clients=[],
        keysets=reserved_keysets(NOW),
        keys=[],
        salts=salts,
    )
    return snapshot, salts


def _since_ms(text: str) -> tuple[int, bytes]:
    snapshot, salts = _snapshot()
    reply = data_plane.buckets(snapshot, {"since_timestamp": text}, NOW)
    assert isinstance(reply, data_plane.StreamedReply)
    answer = b"".join(reply.pieces())
    (since,) = salts.asked
    return since, answer


@pytest.mark.parametrize(
    ("text", "epoch_ms"),
    [
        ("2020-01-01T00:00:00", 1_577_836_800_000),
        ("2020-01-01T00:00", 1_577_836_800_000),
        ("2020-01-01t00:00:00", 1_577_836_800_000),
        ("2020-01-01T00:00:00.", 1_577_836_800_000),
        ("2020-01-01T00:00:00.1239", 1_577_836_800_123),
        ("2020-01-01T00:00:00.123456789", 1_577_836_800_123),
        ("2020-02-29T00:00", 1_582_934_400_000),
        ("1969-12-31T23:59:59.999", -1),
        ("0000-01-01T00:00", -62_167_219_200_000),
        ("0000-02-29T00:00", -62_162_121_600_000),
        ("-0001-01-01T00:00", -62_198_755_200_000),
        ("-0001-01-01T00:00:00.5", -62_198_755_199_500),
        ("-00001-01-01T00:00", -62_198_755_200_000),
        ("-0004-02-29T00:00", -62_288_352_000_000),
        ("-0400-02-29T00:00", -74_784_902_400_000),
        ("-2020-01-01T00:00", -125_912_275_200_000),
        ("-10000-01-01T00:00", -377_736_739_200_000),
        ("+00001-01-01T00:00", -62_135_596_800_000),
        ("+10000-01-01T00:00", 253_402_300_800_000),
        ("+99999-01-01T00:00", 3_093_496_444_800_000),
    ],
)
def test_what_the_reference_accepts_is_read_as_the_same_instant(text: str, epoch_ms: int) -> None:
    since, _ = _since_ms(text)
    assert since == epoch_ms


def test_years_far_from_the_table_list_every_bucket_or_none() -> None:
    everything = _since_ms("-999999999-01-01T00:00")[1]
    nothing = _since_ms("+999999999-12-31T23:59:59.999999999")[1]
    assert everything.count(b"bucket_id") == 1
    assert nothing == b'{"status":"success","body":[]}'


@pytest.mark.parametrize(
    "text",
    [
        "+2020-01-01T00:00",  # a sign needs more than four digits, or a minus
        "10000-01-01T00:00",  # more than four digits need a sign
        "-0000-01-01T00:00",  # no negative zero
        "+1000000000-01-01T00:00",  # beyond the last year
        "2020-02-30T00:00",
        "2021-02-29T00:00",
        "-0100-02-29T00:00",  # a century that is not a leap year
        "2020-00-01T00:00",
        "2020-01-00T00:00",
        "2020-01-01T24:00",
        "2020-01-01T00:60",
        "2020-01-01T00:00:60",
        "2020-01-01T00:00.5",  # a fraction only after seconds
        "2020-01-01T00:00:00.1234567891",  # ten digits
        "2020-1-01T00:00",
        " 2020-01-01T00:00",
        "2020-01-01 00:00",
        "2020-01-01T00:00Z",
        "2020-01-01",
        "\u0662\u0660\u0662\u0660-01-01T00:00",  # digits of another script
    ],
)
def test_what_the_reference_refuses_is_refused(text: str) -> None:
    snapshot, _ = _snapshot()
    with pytest.raises(InvalidRequest) as refused:
        data_plane.buckets(snapshot, {"since_timestamp": text}, NOW)
    assert refused.value.detail == REFUSED
