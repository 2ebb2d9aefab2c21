"""The compact salt table: generation, buckets on demand, rotation, chunks and sealing."""

from __future__ import annotations

import base64
from array import array
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from material_fixtures import T0, Drbg

from uid2_operator.domain.material_sealing import (
    FIRST_LEVEL_SALT_LABEL,
    SealedMaterial,
    seal_material,
)
from uid2_operator.domain.salts import (
    SALT_SIZE,
    SaltChunk,
    SaltTable,
    assemble,
    generate_salt_table,
    int64_bytes,
    int64_column,
    open_chunk,
    open_header_secrets,
    rotate,
    rotation_effective_at,
    seal_chunk,
    seal_header,
)
from uid2_operator.domain.sealing import Keyring
from uid2_operator.errors import InvalidInput, SaltError, SealedSecretUnreadable
from uid2_operator.wire.raw_uid import DAY_MS, PRODUCTION_BUCKET_COUNT, first_level_hash

DAY = DAY_MS
LATER = T0 + 400 * DAY
"""A time by which every rotation these tests make has taken effect."""


def table(count: int = 64, random: Drbg | None = None, **kwargs: str) -> SaltTable:
    return generate_salt_table(count, T0, random or Drbg(b"table"), **kwargs)


def columns(t: SaltTable, now: int = LATER) -> list[tuple[object, ...]]:
    return [
        (b.current_salt, b.previous_salt, b.last_updated_ms, b.refresh_from_ms)
        for b in (t.bucket(i, now) for i in range(t.bucket_count))
    ]


def rebuild(t: SaltTable, chunk_size: int, order: list[int] | None = None) -> SaltTable:
    numbers = order if order is not None else list(range(t.chunk_count(chunk_size)))
    return assemble(
        bucket_count=t.bucket_count,
        chunk_size=chunk_size,
        chunks=(t.chunk(n, chunk_size) for n in numbers),
        first_level_salt=t.first_level_salt,
        id_prefix=t.id_prefix,
        id_secret=t.id_secret,
        version=t.version,
    )


# ------------------------------------------------------------------------------ generation


def test_a_new_table_has_random_base64_salts_and_secrets() -> None:
    t = table(100, id_prefix="L")
    assert t.bucket_count == 100
    assert t.version == 1
    assert t.id_prefix == "L"
    salts = {t.salt(i, T0) for i in range(100)}
    assert len(salts) == 100
    assert all(len(s) == 44 and len(base64.b64decode(s)) == SALT_SIZE for s in salts)
    assert len(base64.b64decode(t.first_level_salt)) == 32
    assert len(base64.b64decode(t.id_secret)) == 32
    assert t.first_level_salt != t.id_secret


def test_a_new_table_is_updated_now_with_no_previous_salts() -> None:
    t = table(10)
    bucket = t.bucket(3, T0)
    assert bucket.index == 3
    assert bucket.previous_salt is None
    assert (bucket.last_updated_ms, bucket.refresh_from_ms) == (T0, T0)
    assert list(t.updated_since(T0, T0)) == [(i, T0) for i in range(10)]
    assert list(t.updated_since(T0 + 1, T0 + 1)) == []


def test_the_same_random_source_gives_the_same_table() -> None:
    assert columns(table(16, Drbg(b"a"))) == columns(table(16, Drbg(b"a")))
    assert columns(table(16, Drbg(b"a"))) != columns(table(16, Drbg(b"b")))


@pytest.mark.parametrize("count", [0, -1, PRODUCTION_BUCKET_COUNT + 1])
def test_the_bucket_count_is_bounded(count: int) -> None:
    with pytest.raises(InvalidInput, match="bucket count"):
        table(count)


@pytest.mark.parametrize("prefix", ["x" * 33, "é"])
def test_the_id_prefix_is_short_ascii(prefix: str) -> None:
    with pytest.raises(InvalidInput, match="prefix"):
        table(8, id_prefix=prefix)


def test_derivations_use_the_tables_first_level_salt() -> None:
    t = table(PRODUCTION_BUCKET_COUNT // 1024)
    digest = bytes(range(32))
    flh = t.first_level_hash(digest)
    assert flh == first_level_hash(digest, t.first_level_salt)
    assert t.index_of(flh) == ((flh[0] << 12) | (flh[1] << 4) | (flh[2] & 0x0F)) % 1024


@pytest.mark.parametrize("index", [-1, 64])
def test_buckets_outside_the_table_are_refused(index: int) -> None:
    t = table(64)
    for read in (t.salt, t.previous_salt, t.bucket):
        with pytest.raises(SaltError, match="No such salt bucket"):
            read(index, T0)
    for stored in (t.last_updated_ms, t.refresh_from_ms):
        with pytest.raises(SaltError, match="No such salt bucket"):
            stored(index)


def test_the_repr_shows_no_salt() -> None:
    t = table(8)
    assert repr(t) == str(t) == "SaltTable(buckets=8, version=1)"
    assert t.first_level_salt not in repr(t)


# ------------------------------------------------------------------------------ construction


def _parts(count: int = 8) -> dict[str, object]:
    return {
        "first_level_salt": "f",
        "id_prefix": "",
        "id_secret": "s",
        "salts": bytes(count * SALT_SIZE),
        "previous": b"",
        "has_previous": bytes((count + 7) // 8),
        "last_updated": array("q", [0] * count),
        "refresh_from": array("q", [0] * count),
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"salts": bytes(7 * SALT_SIZE)}, "disagree in length"),
        ({"refresh_from": array("q", [0] * 7)}, "disagree in length"),
        ({"has_previous": bytes(2)}, "bitmap"),
        ({"previous": bytes(SALT_SIZE)}, "Previous salts disagree"),
        ({"has_previous": b"\x01"}, "flagged but absent"),
    ],
)
def test_inconsistent_columns_are_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(SaltError, match=message):
        SaltTable(**(_parts() | change))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ rotation


def test_rotation_moves_the_old_salt_to_previous_and_stamps_the_bucket() -> None:
    # The new salts take effect at ``effective``, a UTC midnight more than an hour on: read from
    # then on, a rotated bucket has the new salt and the old one as previous, both stamped so.
    t = table(1000)
    now = T0 + 5 * DAY + 123
    result = rotate(t, 0.1, now, Drbg(b"rotate"))
    assert len(result.rotated) == 100
    assert list(result.rotated) == sorted(set(result.rotated))
    effective = rotation_effective_at(now)
    assert result.effective_at_ms == effective
    new = result.table
    assert new.version == t.version + 1
    for i in range(1000):
        if i in result.rotated:
            assert new.previous_salt(i, effective) == t.salt(i, now)
            assert new.salt(i, effective) != t.salt(i, now)
            assert new.bucket(i, effective).last_updated_ms == effective
            # Stored: when the salt in effect until then took effect, and when the change comes.
            assert (new.last_updated_ms(i), new.refresh_from_ms(i)) == (T0, effective)
        else:
            assert (new.salt(i, effective), new.previous_salt(i, effective)) == (
                t.salt(i, now),
                None,
            )
            assert new.last_updated_ms(i) == T0
    assert {i for i, _ in new.updated_since(now, effective)} == set(result.rotated)
    assert columns(rotate(t, 0.1, now, Drbg(b"rotate")).table) == columns(new)


def test_rotation_leaves_the_original_table_untouched() -> None:
    t = table(64)
    before = columns(t)
    rotate(t, 1.0, T0, Drbg())
    assert columns(t) == before


def test_a_bucket_rotates_at_most_once_a_day() -> None:
    t = table(50)
    first = rotate(t, 1.0, T0, Drbg(b"1"))
    assert len(first.rotated) == 50
    same_day = rotate(first.table, 1.0, T0 + 1000, Drbg(b"2"))
    assert same_day.rotated == ()
    assert same_day.table.version == first.table.version + 1
    assert columns(same_day.table) == columns(first.table)
    first_effective = rotation_effective_at(T0)
    next_day = rotate(first.table, 0.5, first_effective, Drbg(b"3"))
    assert len(next_day.rotated) == 25
    for i in next_day.rotated:
        assert next_day.table.previous_salt(i, first_effective + DAY) == first.table.salt(
            i, first_effective
        )


def test_rotation_picks_only_among_eligible_buckets() -> None:
    first = rotate(table(40), 0.5, T0, Drbg(b"1"))
    later = rotate(first.table, 1.0, T0 + 1, Drbg(b"2"))
    assert set(later.rotated) == set(range(40)) - set(first.rotated)


def test_a_tiny_fraction_still_rotates_one_bucket() -> None:
    assert len(rotate(table(10), 0.0001, T0, Drbg()).rotated) == 1


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5])
def test_the_fraction_must_be_a_share(fraction: float) -> None:
    with pytest.raises(InvalidInput, match="fraction"):
        rotate(table(8), fraction, T0, Drbg())


@settings(deadline=None, max_examples=30)
@given(
    count=st.integers(min_value=1, max_value=300),
    fraction=st.floats(min_value=0.001, max_value=1.0),
    seed=st.binary(min_size=1, max_size=8),
)
def test_rotation_picks_distinct_in_range_buckets(count: int, fraction: float, seed: bytes) -> None:
    result = rotate(table(count), fraction, T0, Drbg(seed))
    assert len(result.rotated) == min(count, max(1, round(fraction * count)))
    assert len(set(result.rotated)) == len(result.rotated)
    assert all(0 <= i < count for i in result.rotated)


def test_rotation_is_roughly_uniform() -> None:
    hits = [0] * 16
    random = Drbg(b"uniform")
    for _ in range(400):
        for i in rotate(table(16), 0.25, T0, random).rotated:
            hits[i] += 1
    assert sum(hits) == 1600
    assert min(hits) > 60
    assert max(hits) < 140


def test_touched_chunks() -> None:
    result = rotate(table(100), 0.05, T0, Drbg())
    assert result.touched_chunks(16) == sorted({i // 16 for i in result.rotated})
    with pytest.raises(InvalidInput, match="chunk size"):
        result.touched_chunks(12)


# ------------------------------------------------------------------------------ chunks


@pytest.mark.parametrize("chunk_size", [8, 16, 64, 1024])
def test_chunks_reassemble_into_the_same_table(chunk_size: int) -> None:
    rotated = rotate(table(100), 0.3, T0 + 7, Drbg()).table
    again = rebuild(rotated, chunk_size, list(reversed(range(rotated.chunk_count(chunk_size)))))
    assert columns(again) == columns(rotated)
    assert (again.first_level_salt, again.id_secret, again.version) == (
        rotated.first_level_salt,
        rotated.id_secret,
        rotated.version,
    )


def test_a_never_rotated_table_stores_no_previous_salts() -> None:
    t = table(20)
    assert all(t.chunk(n, 8).previous == b"" for n in range(t.chunk_count(8)))
    assert columns(rebuild(t, 8)) == columns(t)


def test_chunks_of_a_partly_rotated_table() -> None:
    first = rotate(table(32), 0.02, T0, Drbg(b"x"))
    [rotated] = first.rotated
    holding = rotated // 8
    for number in range(4):
        chunk = first.table.chunk(number, 8)
        assert bool(chunk.previous) is (number == holding)
    assert columns(rebuild(first.table, 8)) == columns(first.table)


def test_a_chunk_yields_a_bucket_without_loading_the_table() -> None:
    t = rotate(table(40), 0.5, T0 + 9, Drbg()).table
    chunk = t.chunk(2, 16)
    assert (chunk.first_bucket, chunk.bucket_count) == (32, 8)
    for index in range(32, 40):
        for now in (T0 + 9, LATER):  # before and after the rotation takes effect
            assert chunk.bucket(index, now) == t.bucket(index, now)
    for index in (31, 40):
        with pytest.raises(SaltError, match="not in this chunk"):
            chunk.bucket(index, LATER)


@pytest.mark.parametrize(("number", "size"), [(-1, 8), (8, 8), (0, 7), (0, 0)])
def test_chunks_outside_the_table_or_of_a_bad_size_are_refused(number: int, size: int) -> None:
    with pytest.raises((SaltError, InvalidInput)):
        table(64).chunk(number, size)


@pytest.mark.parametrize(
    "change",
    [
        {"salts": b""},
        {"salts": bytes(SALT_SIZE * 8 + 1)},
        {"previous": bytes(SALT_SIZE)},
        {"has_previous": b""},
        {"last_updated": bytes(8)},
        {"refresh_from": bytes(8)},
        {"has_previous": b"\x01"},
    ],
)
def test_inconsistent_chunks_are_refused(change: dict[str, bytes]) -> None:
    good = table(8).chunk(0, 8)
    with pytest.raises(SaltError, match="Salt chunk 0"):
        replace(good, **change)


def test_assembly_refuses_missing_duplicate_and_misplaced_chunks() -> None:
    t = table(40)

    def build(chunks: list[SaltChunk]) -> SaltTable:
        return assemble(
            bucket_count=40,
            chunk_size=16,
            chunks=chunks,
            first_level_salt="f",
            id_prefix="",
            id_secret="s",
            version=1,
        )

    c0, c1, c2 = (t.chunk(n, 16) for n in range(3))
    with pytest.raises(SaltError, match="2 of its 3 chunks"):
        build([c0, c2])
    with pytest.raises(SaltError, match="does not fit"):
        build([c0, c0, c1, c2])
    with pytest.raises(SaltError, match="does not fit"):
        build([c0, replace(c1, first_bucket=0), c2])
    with pytest.raises(SaltError, match="does not fit"):
        build([c0, c1, t.chunk(1, 16)])  # a full-size chunk where the short last one belongs


def test_int64_columns_are_little_endian_on_every_platform() -> None:
    values = array("q", [1, -2, 2**62])
    stored = int64_bytes(values, swap=False)
    assert stored[:8] == (1).to_bytes(8, "little")
    assert int64_column(stored, swap=False) == values
    swapped = int64_bytes(values, swap=True)
    assert swapped[:8] == (1).to_bytes(8, "big")
    assert int64_column(swapped, swap=True) == values
    with pytest.raises(SaltError, match="int64"):
        int64_column(bytes(9))


# ------------------------------------------------------------------------------ at rest


def test_sealed_chunks_open_to_the_same_chunk(keyring: Keyring, random: Drbg) -> None:
    t = rotate(table(32), 0.5, T0, Drbg()).table
    for number in range(2):
        chunk = t.chunk(number, 16)
        sealed = seal_chunk(keyring, chunk, random)
        assert chunk.salts[:SALT_SIZE] not in sealed.salts.ciphertext
        assert sealed.has_previous == chunk.has_previous
        assert open_chunk(keyring, sealed) == chunk


def test_a_sealed_chunk_is_bound_to_its_number(keyring: Keyring, random: Drbg) -> None:
    t = table(32)
    sealed = seal_chunk(keyring, t.chunk(0, 16), random)
    with pytest.raises(SealedSecretUnreadable):
        open_chunk(keyring, replace(sealed, number=1, first_bucket=16))


def test_a_sealed_chunk_must_hold_whole_columns(keyring: Keyring, random: Drbg) -> None:
    sealed = seal_chunk(keyring, table(32).chunk(0, 16), random)
    with pytest.raises(SaltError, match="wrong number of salts"):
        open_chunk(keyring, replace(sealed, bucket_count=15))


def test_the_header_seals_the_first_level_salt_and_id_secret(
    keyring: Keyring, random: Drbg
) -> None:
    t = table(16, id_prefix="P")
    header = seal_header(
        keyring, t, chunk_size=8, created_at_ms=T0, updated_at_ms=T0 + 1, random=random
    )
    assert (header.bucket_count, header.chunk_size, header.id_prefix, header.version) == (
        16,
        8,
        "P",
        1,
    )
    assert t.first_level_salt.encode() not in header.first_level_salt.ciphertext
    assert open_header_secrets(keyring, header) == (t.first_level_salt, t.id_secret)
    assert t.first_level_salt not in repr(header)
    with pytest.raises(InvalidInput, match="chunk size"):
        seal_header(keyring, t, chunk_size=3, created_at_ms=T0, updated_at_ms=T0, random=random)
    swapped = replace(header, first_level_salt=header.id_secret)
    with pytest.raises(SealedSecretUnreadable):
        open_header_secrets(keyring, swapped)


def test_header_secrets_must_be_text(keyring: Keyring, random: Drbg) -> None:
    t = table(16)
    header = seal_header(
        keyring, t, chunk_size=8, created_at_ms=T0, updated_at_ms=T0, random=random
    )
    binary: SealedMaterial = seal_material(keyring, FIRST_LEVEL_SALT_LABEL, 0, b"\xff\xfe", random)
    with pytest.raises(SaltError, match="not text"):
        open_header_secrets(keyring, replace(header, first_level_salt=binary))
