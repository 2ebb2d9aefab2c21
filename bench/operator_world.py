"""A deterministic operator world for benchmarks: one snapshot and the credential that calls it.

The load generator and the server run in different processes, and a snapshot holds decrypted
secrets that must never be written to disk. So both sides rebuild the same world from the same
seed instead: every random byte below comes from a SHAKE-256 stream of the seed, so the parent
learns the API key and client secret the server's snapshot accepts without anything secret
crossing a process boundary.

The salt table is the one a served operator loads (``domain.salts.SaltTable``: raw 32-byte salts
in flat columns, no per-bucket Python objects), packed straight from the seed, so a world with the
reference's 2^20 buckets builds in well under a second.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from dataclasses import dataclass
from typing import Final

from uid2_operator.domain.credentials import issue_api_key
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import mint_api_key
from uid2_operator.domain.keysets import new_site_keyset, reserved_keysets
from uid2_operator.domain.participants import ParticipantType, new_participant
from uid2_operator.domain.roles import ClientRole
from uid2_operator.domain.salts import SALT_SIZE, SaltTable
from uid2_operator.domain.sealing import ClientSecret
from uid2_operator.services.snapshot import (
    ClientRecord,
    Lifetimes,
    LiveSecret,
    OperatorIdentity,
    Snapshot,
    build_snapshot,
)
from uid2_operator.wire.keys import EncryptionKey

SITE_ID: Final = 1001
SITE_KEYSET_ID: Final = 11
DEFAULT_BUCKETS: Final = 1 << 20
DAY_S: Final = 86_400

ENV_SEED: Final = "UID2_BENCH_SEED"
ENV_NOW_MS: Final = "UID2_BENCH_NOW_MS"
ENV_BUCKETS: Final = "UID2_BENCH_BUCKETS"


class SeededRandom:
    """A ``RandomBytes`` that replays the same stream for the same seed (benchmarks only)."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0

    def __call__(self, n: int) -> bytes:
        self._counter += 1
        label = self._seed + self._counter.to_bytes(8, "big")
        return hashlib.shake_256(label).digest(n)


@dataclass(frozen=True)
class BenchWorld:
    """The snapshot a server serves and what a client needs to call it."""

    snapshot: Snapshot
    api_key: str
    secret: bytes
    site_id: int


def _salt_column(seed: bytes, label: bytes, count: int) -> bytes:
    return hashlib.shake_256(seed + label).digest(count * SALT_SIZE)


def build_salts(seed: bytes, now_ms: int, count: int) -> SaltTable:
    """``count`` buckets; every third rotated ten days ago and still holding its previous salt."""
    has_previous = bytearray((count + 7) // 8)
    last_updated = array("q", [now_ms - 200 * DAY_S * 1000]) * count
    refresh_from = array("q", [now_ms + 20 * DAY_S * 1000]) * count
    for index in range(0, count, 3):
        has_previous[index >> 3] |= 1 << (index & 7)
        last_updated[index] = now_ms - 10 * DAY_S * 1000
    return SaltTable(
        first_level_salt="bench-first-level-salt",
        id_prefix="a",
        id_secret=hashlib.sha256(seed + b"bucket-id").hexdigest(),
        salts=_salt_column(seed, b"current", count),
        previous=_salt_column(seed, b"previous", count),
        has_previous=bytes(has_previous),
        last_updated=last_updated,
        refresh_from=refresh_from,
    )


def _keys(keyset_id: int, key_id: int, now_s: int, random: SeededRandom) -> EncryptionKey:
    return EncryptionKey(
        id=key_id,
        keyset_id=keyset_id,
        created=now_s - 2 * DAY_S,
        activates=now_s - DAY_S,
        expires=now_s + 60 * DAY_S,
        secret=random(32),
    )


def build_world(seed: bytes, now_ms: int, bucket_count: int = DEFAULT_BUCKETS) -> BenchWorld:
    """One publisher with a GENERATOR + MAPPER key; master, refresh, fallback and site keysets."""
    random = SeededRandom(seed)
    now_s = now_ms // 1000
    pepper = random(32)
    participant = new_participant(
        site_id=SITE_ID,
        name="bench publisher",
        type=ParticipantType.PUBLISHER,
        allowed_roles={ClientRole.GENERATOR, ClientRole.MAPPER},
        contacts=["ops@example.com"],
        now_ms=now_ms,
    )
    minted = mint_api_key(Environment.LOCAL, SITE_ID, pepper, random)
    key = issue_api_key(
        minted,
        participant,
        name="bench key",
        roles={ClientRole.GENERATOR, ClientRole.MAPPER},
        now_ms=now_ms,
        created_by="bench",
    )
    secret = ClientSecret(random(32))
    keysets = [*reserved_keysets(now_ms), new_site_keyset(SITE_KEYSET_ID, SITE_ID, now_ms)]
    keys = [
        _keys(-1, 1, now_s, random),
        _keys(-2, 2, now_s, random),
        _keys(2, 3, now_s, random),
        _keys(SITE_KEYSET_ID, 4, now_s, random),
    ]
    snapshot = build_snapshot(
        generation=1,
        built_at_ms=now_ms,
        identity=OperatorIdentity(),
        lifetimes=Lifetimes(),
        pepper=pepper,
        clients=[ClientRecord(key, participant, (LiveSecret(1, secret),))],
        keysets=keysets,
        keys=keys,
        salts=build_salts(seed, now_ms, bucket_count),
    )
    return BenchWorld(snapshot=snapshot, api_key=minted.text, secret=secret.raw, site_id=SITE_ID)


def world_environment(seed: bytes, now_ms: int, bucket_count: int) -> dict[str, str]:
    """What a server process needs in its environment to rebuild the same world."""
    return {
        ENV_SEED: seed.hex(),
        ENV_NOW_MS: str(now_ms),
        ENV_BUCKETS: str(bucket_count),
    }


def world_from_environment() -> BenchWorld:
    return build_world(
        bytes.fromhex(os.environ[ENV_SEED]),
        int(os.environ[ENV_NOW_MS]),
        int(os.environ.get(ENV_BUCKETS, str(DEFAULT_BUCKETS))),
    )
