"""A real operator server on 127.0.0.1 over a snapshot built here, and the credentials to call it.

The world (sdk-compat §3 fixture): participants A (one key with GENERATOR, MAPPER, ID_READER and
SHARER), B (SHARER, allowed by A's keyset), C (SHARER, not allowed), D (a DSP, ID_READER), E
(single-role keys G, M, S and a key with a rotated secret), O (OPTOUT), a disabled key X at A, a
key of a disabled participant; master, refresh, fallback and per-site keysets each holding an
expired, an active and a future key; 1024 salt buckets, a third of them rotated ten days ago; and
a few recorded opt-outs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import time
from array import array
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import anyio
import httpx
import pytest
import uvicorn

from uid2_operator.clock import FixedClock, SystemClock, system_random
from uid2_operator.domain.credentials import ApiKey, KeyState, issue_api_key
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import mint_api_key
from uid2_operator.domain.keysets import SharingMode, new_site_keyset, reserved_keysets
from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.domain.participants import Participant, ParticipantType, new_participant
from uid2_operator.domain.roles import ClientRole
from uid2_operator.domain.salts import SALT_SIZE, SaltTable
from uid2_operator.domain.sealing import ClientSecret
from uid2_operator.serve_settings import ServeSettings
from uid2_operator.services.snapshot import (
    ClientRecord,
    Lifetimes,
    LiveSecret,
    OperatorIdentity,
    Snapshot,
    build_snapshot,
)
from uid2_operator.settings import Settings
from uid2_operator.web.operator_api.app import create_operator_app
from uid2_operator.web.operator_api.server import OperatorServer, build_worker
from uid2_operator.wire.encoding import b64encode
from uid2_operator.wire.envelope import open_response, seal_request, unframe_response
from uid2_operator.wire.identity import hash_identity, normalize_email
from uid2_operator.wire.keys import EncryptionKey
from uid2_operator.wire.raw_uid import current_raw_uid
from uid2_operator.wire.scope import IdentityType
from uvicorn_thread import server_in_thread

PEPPER = bytes(range(1, 33))
DAY_S = 86_400
SITE_A, SITE_B, SITE_C, SITE_D, SITE_E, SITE_O = 1001, 1002, 1003, 1004, 1005, 1006
SITE_OFF = 1007
KEYSET_A, KEYSET_B, KEYSET_C, KEYSET_E = 11, 12, 13, 15
FIRST_LEVEL_SALT = "first-level-salt-for-tests"
BUCKET_COUNT = 1024
RECORDED_OPTOUT_EMAIL = "recorded.optout@example.com"
WRONG_SECRET = "wJ0hP19QU4hmpB64Y3fV2dAed8t/mupw3sjN5jNRFzg="
ALL_ROLES = frozenset(ClientRole)


class SnapshotHolder:
    """What the server asks for its snapshot; tests swap ``snapshot`` to change the world."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def __call__(self) -> Snapshot:
        return self.snapshot


@dataclass(frozen=True)
class Credential:
    key: str
    secret: str
    key_id: str
    site_id: int

    @property
    def secret_bytes(self) -> bytes:
        return base64.b64decode(self.secret)


@dataclass
class World:
    """The running server, its credentials, and a handle to swap its snapshot."""

    base_url: str
    credentials: dict[str, Credential]
    holder: SnapshotHolder
    logged_out: list[OptOutRecord] = field(default_factory=list)

    @property
    def snapshot(self) -> Snapshot:
        return self.holder.snapshot

    def __getitem__(self, name: str) -> Credential:
        return self.credentials[name]

    # ---------------------------------------------------------------- raw HTTP helpers

    def envelope(
        self,
        payload: Any,
        cred: Credential,
        *,
        now_ms: int | None = None,
        nonce: bytes | None = None,
        raw: bytes | None = None,
    ) -> bytes:
        body = (
            raw if raw is not None else (None if payload is None else json.dumps(payload).encode())
        )
        return seal_request(
            body,
            secret=cred.secret_bytes,
            now_ms=int(time.time() * 1000) if now_ms is None else now_ms,
            nonce=nonce or os.urandom(8),
            random=os.urandom,
        )

    def post(
        self,
        path: str,
        body: bytes | str,
        *,
        key: str | None = None,
        content_type: str = "text/plain",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        sent = {"content-type": content_type, **(headers or {})}
        if key is not None:
            sent["authorization"] = f"Bearer {key}"
        return httpx.post(self.base_url + path, content=body, headers=sent, timeout=30)

    def call(
        self,
        path: str,
        payload: Any,
        cred: Credential,
        *,
        binary: bool = False,
        nonce: bytes | None = None,
    ) -> tuple[httpx.Response, dict[str, Any] | None]:
        """Seal, post, and open a 200 answer (None for errors)."""
        nonce = nonce or os.urandom(8)
        sealed = self.envelope(payload, cred, nonce=nonce)
        body = sealed if binary else base64.b64encode(sealed)
        response = self.post(
            path,
            body,
            key=cred.key,
            content_type="application/octet-stream"
            if binary
            else "application/x-www-form-urlencoded",
        )
        if response.status_code != 200:
            return response, None
        blob = unframe_response(response.content, binary)
        return response, open_response(blob, secret=cred.secret_bytes, nonce=nonce)

    def raw_uid_for_email(self, email: str, now_ms: int | None = None) -> str:
        """The raw UID the fixture's salts give an email at ``now_ms`` (default: now), derived
        independently."""
        salts = self.snapshot.salts
        flh = salts.first_level_hash(hash_identity(normalize_email(email)))
        at = int(time.time() * 1000) if now_ms is None else now_ms
        bucket = salts.bucket(salts.index_of(flh), at)
        ident = self.snapshot.identity
        return b64encode(
            current_raw_uid(
                bucket,
                flh,
                scope=ident.scope,
                kind=IdentityType.EMAIL,
                environment=ident.identity_environment,
                identity_v3=ident.identity_v3,
            )
        )


# ---------------------------------------------------------------------------- the snapshot


def _secret(label: str) -> bytes:
    return hashlib.sha256(f"encryption-key-{label}".encode()).digest()


def _keys(keyset_id: int, first_id: int, now_s: int) -> list[EncryptionKey]:
    """An expired, an active and a future key, ids ascending with activation."""
    spans = [(-60 * DAY_S, -30 * DAY_S), (-DAY_S, 60 * DAY_S), (30 * DAY_S, 120 * DAY_S)]
    return [
        EncryptionKey(
            id=first_id + i,
            keyset_id=keyset_id,
            created=now_s + start - DAY_S,
            activates=now_s + start,
            expires=now_s + end,
            secret=_secret(f"{keyset_id}-{i}"),
        )
        for i, (start, end) in enumerate(spans)
    ]


def _salts(now_ms: int) -> SaltTable:
    """The table ``serve`` loads, in its column layout: every third bucket rotated ten days ago
    and still holding its previous salt; odd buckets may not rotate again for 20 days."""
    salts, previous = bytearray(), bytearray(BUCKET_COUNT * SALT_SIZE)
    has_previous = bytearray(BUCKET_COUNT // 8)
    last_updated, refresh_from = array("q"), array("q")
    for i in range(BUCKET_COUNT):
        salts += hashlib.sha256(f"salt-{i}".encode()).digest()
        rotated = i % 3 == 0
        if rotated:
            at = i * SALT_SIZE
            previous[at : at + SALT_SIZE] = hashlib.sha256(f"old-salt-{i}".encode()).digest()
            has_previous[i >> 3] |= 1 << (i & 7)
        last_updated.append(now_ms - (10 if rotated else 200) * DAY_S * 1000)
        refresh_from.append(now_ms + (20 * DAY_S * 1000 if i % 2 else -DAY_S * 1000))
    return SaltTable(
        first_level_salt=FIRST_LEVEL_SALT,
        id_prefix="a",
        id_secret="bucket-id-secret",
        salts=bytes(salts),
        previous=bytes(previous),
        has_previous=bytes(has_previous),
        last_updated=last_updated,
        refresh_from=refresh_from,
    )


def _participant(
    site_id: int, roles: frozenset[ClientRole], now_ms: int, *, enabled: bool = True
) -> Participant:
    return new_participant(
        site_id=site_id,
        name=f"site {site_id}",
        type=ParticipantType.PUBLISHER,
        allowed_roles=roles,
        contacts=["ops@example.com"],
        now_ms=now_ms,
        enabled=enabled,
    )


def build_world_snapshot(now_ms: int) -> tuple[Snapshot, dict[str, Credential]]:
    now_s = now_ms // 1000
    participants = {
        SITE_A: _participant(SITE_A, ALL_ROLES, now_ms),
        SITE_B: _participant(SITE_B, frozenset({ClientRole.SHARER}), now_ms),
        SITE_C: _participant(SITE_C, frozenset({ClientRole.SHARER}), now_ms),
        SITE_D: _participant(SITE_D, frozenset({ClientRole.ID_READER}), now_ms),
        SITE_E: _participant(SITE_E, ALL_ROLES, now_ms),
        SITE_O: _participant(SITE_O, frozenset({ClientRole.OPTOUT}), now_ms),
        SITE_OFF: _participant(SITE_OFF, ALL_ROLES, now_ms),
    }
    specs: list[tuple[str, int, frozenset[ClientRole]]] = [
        (
            "A",
            SITE_A,
            frozenset(
                {ClientRole.GENERATOR, ClientRole.MAPPER, ClientRole.ID_READER, ClientRole.SHARER}
            ),
        ),
        ("B", SITE_B, frozenset({ClientRole.SHARER})),
        ("C", SITE_C, frozenset({ClientRole.SHARER})),
        ("D", SITE_D, frozenset({ClientRole.ID_READER})),
        ("G", SITE_E, frozenset({ClientRole.GENERATOR})),
        ("M", SITE_E, frozenset({ClientRole.MAPPER})),
        ("S", SITE_E, frozenset({ClientRole.SHARER})),
        ("O", SITE_O, frozenset({ClientRole.OPTOUT})),
        ("X", SITE_A, ALL_ROLES - {ClientRole.OPTOUT}),
        ("R", SITE_E, frozenset({ClientRole.GENERATOR, ClientRole.MAPPER})),
        ("OFF", SITE_OFF, frozenset({ClientRole.GENERATOR})),
    ]
    credentials: dict[str, Credential] = {}
    clients: list[ClientRecord] = []
    for name, site, roles in specs:
        minted = mint_api_key(Environment.LOCAL, site, PEPPER, os.urandom)
        key: ApiKey = issue_api_key(
            minted,
            participants[site],
            name=f"key {name}",
            roles=roles,
            now_ms=now_ms,
            created_by="test",
        )
        secret = ClientSecret(os.urandom(32))
        secrets = [LiveSecret(2, secret)]
        participant = participants[site]
        if name == "X":
            key = replace(key, state=KeyState.DISABLED)
        if name == "R":
            # Rotated: the previous secret is still accepted for a day.
            old = ClientSecret(os.urandom(32))
            secrets.append(LiveSecret(1, old, retires_at_ms=now_ms + DAY_S * 1000))
            credentials["R-old"] = Credential(minted.text, old.text, minted.key_id, site)
        if name == "OFF":
            participant = replace(participant, enabled=False)
        clients.append(ClientRecord(key, participant, tuple(secrets)))
        credentials[name] = Credential(minted.text, secret.text, minted.key_id, site)

    keysets = [
        *reserved_keysets(now_ms),
        replace(
            new_site_keyset(KEYSET_A, SITE_A, now_ms),
            sharing=SharingMode.LIST,
            allowed_sites=frozenset({SITE_B, SITE_D}),
        ),
        replace(new_site_keyset(KEYSET_B, SITE_B, now_ms), sharing=SharingMode.OWNER_ONLY),
        new_site_keyset(KEYSET_C, SITE_C, now_ms),
        new_site_keyset(KEYSET_E, SITE_E, now_ms),
    ]
    keys = [
        *_keys(-1, 1, now_s),
        *_keys(-2, 4, now_s),
        *_keys(2, 7, now_s),
        *_keys(KEYSET_A, 20, now_s),
        *_keys(KEYSET_B, 30, now_s),
        *_keys(KEYSET_C, 40, now_s),
        *_keys(KEYSET_E, 50, now_s),
    ]
    salts = _salts(now_ms)
    flh = salts.first_level_hash(hash_identity(normalize_email(RECORDED_OPTOUT_EMAIL)))
    snapshot = build_snapshot(
        generation=1,
        built_at_ms=now_ms,
        identity=OperatorIdentity(),
        lifetimes=Lifetimes(),
        pepper=PEPPER,
        clients=clients,
        keysets=keysets,
        keys=keys,
        salts=salts,
        optouts=[OptOutRecord(flh, now_ms - 5 * DAY_S * 1000, "recorded-raw-uid")],
    )
    return snapshot, credentials


# ------------------------------------------------------------------- the app called directly


AsgiLog = list[tuple[str, MutableMapping[str, Any]]]


def sealed_post(
    cred: Credential,
    path: str,
    payload: object,
    *,
    now_ms: int,
    binary: bool = False,
    http_version: str = "1.1",
    nonce: bytes = b"nonce-01",
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> tuple[dict[str, Any], bytes]:
    """The ASGI scope and body of a POST of ``payload`` sealed by ``cred`` (base64 text, or raw
    bytes under ``application/octet-stream`` when ``binary``)."""
    sealed = seal_request(
        json.dumps(payload).encode(),
        secret=cred.secret_bytes,
        now_ms=now_ms,
        nonce=nonce,
        random=bytes,
    )
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "http_version": http_version,
        "headers": [
            (b"content-type", b"application/octet-stream" if binary else b"text/plain"),
            (b"authorization", f"Bearer {cred.key}".encode()),
            *headers,
        ],
    }
    return scope, sealed if binary else base64.b64encode(sealed)


async def asgi_exchange(
    app: Any, scope: dict[str, Any], body: bytes, log: AsgiLog, name: str
) -> None:
    """Call ``app`` once: ``body`` arrives whole, then the client stays (nothing more comes);
    every message ``app`` sends is appended to ``log`` as ``(name, message)``."""
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            await asyncio.Event().wait()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        log.append((name, dict(message)))

    await app(scope, receive, send)


# ---------------------------------------------------------------------------- the server


@pytest.fixture(scope="session", name="world")
def world_fixture() -> Iterator[World]:
    now_ms = SystemClock().now_ms()
    snapshot, credentials = build_world_snapshot(now_ms)
    holder = SnapshotHolder(snapshot)
    logged_out: list[OptOutRecord] = []
    app = create_operator_app(
        snapshot_provider=holder,
        clock=SystemClock(),
        random=system_random,
        record_optout=logged_out.append,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", ws="none", access_log=False)
    with server_in_thread(config, sock):
        yield World(f"http://127.0.0.1:{port}", credentials, holder, logged_out)


@pytest.fixture(name="swap_snapshot")
def swap_snapshot_fixture(world: World) -> Iterator[Any]:
    """Install a different snapshot for one test; the original comes back afterwards."""
    original = world.holder.snapshot

    def install(snapshot: Snapshot) -> None:
        world.holder.snapshot = snapshot

    yield install
    install(original)


class GenerateCaller:
    """The operator app over ``snapshot`` on ``clock``, called in-process through httpx with
    sealed ``/v2/token/generate`` requests; ``observed`` collects what the metrics observer is
    told, ``(path, key id, status)``."""

    def __init__(self, snapshot: Snapshot, clock: FixedClock) -> None:
        self.clock = clock
        self.observed: list[tuple[str, str | None, int]] = []
        self.app = create_operator_app(
            snapshot_provider=lambda: snapshot,
            clock=clock,
            observer=lambda path, key_id, status, _s: self.observed.append((path, key_id, status)),
        )

    def generate(self, key: str, secret: str) -> httpx.Response:
        sealed = seal_request(
            b'{"email":"someone@example.com","optout_check":1}',
            secret=base64.b64decode(secret),
            now_ms=self.clock.now_ms(),
            nonce=os.urandom(8),
            random=os.urandom,
        )

        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://op.test") as client:
                return await client.post(
                    "/v2/token/generate",
                    content=base64.b64encode(sealed),
                    headers={"authorization": f"Bearer {key}", "content-type": "text/plain"},
                )

        return anyio.run(send)


def salt_table_updated_at(
    count: int, updated_ms: int, kind: type[SaltTable] = SaltTable
) -> SaltTable:
    """``count`` buckets (of class ``kind``), each last updated at ``updated_ms``, with fixed
    salts and bucket-id parameters: a table whose buckets answer lists by the time given."""
    return kind(
        first_level_salt="first-level-salt",
        id_prefix="b",
        id_secret="bucket-id-secret",
        salts=hashlib.shake_256(b"salts").digest(SALT_SIZE * count),
        previous=b"",
        has_previous=bytes((count + 7) // 8),
        last_updated=array("q", [updated_ms]) * count,
        refresh_from=array("q", [updated_ms]) * count,
    )


class NoSnapshotStore:
    """Enough of a store for a worker that never loads a snapshot."""

    def change_seq(self) -> int:
        return 0

    def change_state(self) -> object:
        return 0

    def close(self) -> None:
        pass


def worker_without_snapshot(tmp_path: Path, metrics_port: int | None = None) -> OperatorServer:
    """The worker ``build_worker`` wires, over a store and a keyring that are never reached: no
    snapshot is loaded, so its health check answers 503."""
    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"))
    return build_worker(
        settings,
        ServeSettings.from_env({}),
        store=cast(Any, NoSnapshotStore()),
        keyring=cast(Any, object()),
        metrics_port=metrics_port,
    )
