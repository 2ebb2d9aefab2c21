"""KEK rotation through the command line on every backend: status, add-version, reseal and
drop-version, with the secrets unchanged at the end (API keys authenticate with the same secrets,
a token issued before decrypts, salts and raw UIDs are the same) and nothing secret anywhere it
must not be: no client secret or key text outside the output that disclosed it, and no
key-encryption key or pepper in any output, stored byte, audit row or log line.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cli_harness import BACKENDS, Cli, Database, database_for, libpq_dsn
from click.testing import Result

from uid2_operator.bootstrap import load_keyring, open_services
from uid2_operator.clock import SystemClock
from uid2_operator.domain.keysets import site_default_keyset
from uid2_operator.domain.sealing import Keyring
from uid2_operator.services.material import Material
from uid2_operator.settings import Settings
from uid2_operator.wire.keys import MASTER_KEYSET_ID, active_key
from uid2_operator.wire.raw_uid import raw_uid_v2
from uid2_operator.wire.scope import IdentityScope, IdentityType
from uid2_operator.wire.tokens import (
    AdvertisingToken,
    decode_advertising_token,
    encode_advertising_token,
)

pytestmark = pytest.mark.functional

BUCKETS = 1024
ENV = {"UID2_SALT_BUCKETS": str(BUCKETS)}
KINDS = ["client_secrets", "encryption_keys", "salt_table", "salt_chunks", "keypairs"]
FIRST_LEVEL_HASH = bytes(range(32))


@pytest.fixture(params=BACKENDS)
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cli]:
    with database_for(request.param, tmp_path) as db:
        yield Cli(db)


def run(cli: Cli, *args: str, status: int = 0) -> Result:
    result = cli(*args, env=ENV)
    assert result.exit_code == status, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.output
    return result


def ok(cli: Cli, *args: str) -> Any:
    return json.loads(run(cli, *args, "--json").stdout)


def _settings(db: Database) -> Settings:
    return Settings.from_env(ENV, data_dir=str(db.data_dir), database_url=db.url)


def _sealed(cli: Cli) -> dict[int, dict[str, int]]:
    return {v["version"]: v["sealed"] for v in ok(cli, "keyring", "status")["versions"]}


def _plaintexts(material: Material) -> tuple[object, ...]:
    salts = material.salts
    return (
        sorted((k.id, k.keyset_id, k.secret) for k in material.keys),
        salts.first_level_salt,
        salts.id_secret,
        [salts.chunk(n) for n in range(salts.chunk_count())],  # every salt column as stored
    )


def _token(material: Material, site_id: int, now_ms: int) -> str:
    keyset = site_default_keyset(material.keysets, site_id)
    assert keyset is not None
    master = active_key(material.keys, now_ms, keyset_id=MASTER_KEYSET_ID)
    site = active_key(material.keys, now_ms, keyset_id=keyset.keyset_id)
    token = AdvertisingToken(
        scope=IdentityScope.UID2,
        identity_type=IdentityType.EMAIL,
        master_key_id=master.id,
        site_key_id=site.id,
        expires_ms=now_ms + 3_600_000,
        created_ms=now_ms,
        site_id=site_id,
        privacy_bits=1,
        established_ms=now_ms,
        refreshed_ms=now_ms,
        raw_uid=_raw_uid(material, now_ms),
    )
    return encode_advertising_token(token, master_key=master, site_key=site, random=_random)


def _random(size: int) -> bytes:
    return bytes(range(size))


def _raw_uid(material: Material, now_ms: int) -> bytes:
    salts = material.salts
    return raw_uid_v2(FIRST_LEVEL_HASH, salts.salt(salts.index_of(FIRST_LEVEL_HASH), now_ms))


def _stored_bytes(db: Database) -> bytes:
    if db.backend == "sqlite":
        return b"".join(p.read_bytes() for p in Path(db.data_dir).glob("uid2.db*"))
    assert db.url is not None
    assert db.schema is not None
    found = bytearray()
    with psycopg.connect(libpq_dsn(db.url)) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (db.schema,),
        ).fetchall()
        assert len(tables) >= 7
        for (table,) in tables:
            query = f'SELECT * FROM "{db.schema}"."{table}"'  # noqa: S608 (catalogue names)
            for row in conn.execute(query).fetchall():
                for value in row:
                    found += (
                        bytes(value)
                        if isinstance(value, bytes | memoryview)
                        else str(value).encode()
                    )
                    found += b"\n"
    return bytes(found)


def _forms(raw: bytes) -> list[bytes]:
    return [raw, base64.b64encode(raw), raw.hex().encode(), raw.hex().upper().encode()]


def _disclosed_forms(document: dict[str, Any]) -> set[bytes]:
    """What one output disclosed on purpose: a key (and its tail), a secret (in every form)."""
    forms: set[bytes] = set()
    if "key" in document:
        forms |= {document["key"].encode(), document["key"].split(".", 1)[1].encode()}
    if "secret" in document:
        forms |= set(_forms(base64.b64decode(document["secret"])))
    return forms


def _needles(keyrings: list[Keyring], disclosed: list[dict[str, Any]]) -> dict[bytes, str]:
    """Every secret of the run, in every form it could leak in."""
    found: dict[bytes, str] = {}
    for ring in keyrings:
        for version in ring.versions:
            found |= dict.fromkeys(_forms(ring.kek(version)), f"key-encryption key {version}")
        found |= dict.fromkeys(_forms(ring.pepper), "pepper")
    for document in disclosed:
        found |= dict.fromkeys(_disclosed_forms(document), f"disclosed by {document['key_id']}")
    return found


def test_a_kek_rotation_keeps_every_secret_and_leaks_none(
    cli: Cli, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")
    db = cli.database
    one_time: dict[int, dict[str, Any]] = {}  # result index -> the document it disclosed

    def disclosing(*args: str) -> dict[str, Any]:
        document: dict[str, Any] = ok(cli, *args)
        one_time[len(cli.results) - 1] = document
        return document

    def create_key(name: str) -> dict[str, Any]:
        return disclosing("key", "create", "--site-id", str(site), "--name", name,
                          "--roles", "GENERATOR,MAPPER")  # fmt: skip

    assert ok(cli, "init")["keyring_created"] is True
    site = ok(cli, "participant", "create", "--name", "Pub", "--type", "publisher",
              "--roles", "GENERATOR,MAPPER")["site_id"]  # fmt: skip
    ok(cli, "keys", "rotate")  # gives the new participant its keyset
    keys = [create_key("web"), create_key("batch")]
    rotated = disclosing("key", "rotate-secret", keys[1]["key_id"], "--grace-days", "2")
    ok(cli, "keypair", "create", "--site-id", str(site), "--name", "pages")

    settings = _settings(db)
    v1 = load_keyring(settings)
    now_ms = SystemClock().now_ms()
    opened = open_services(settings)
    try:
        before = opened.material.load_material()
        token = _token(before, site, now_ms)
        with opened.store.read() as rx:
            encryption_keys = len(rx.encryption_keys.list_all())
    finally:
        opened.close()
    counts = {
        "client_secrets": 3,
        "encryption_keys": encryption_keys,
        "salt_table": 2,
        "salt_chunks": 1,
        "keypairs": 1,
    }
    status = ok(cli, "keyring", "status")
    assert status["source"] == str(settings.keyring_path.absolute())
    assert (status["active_version"], status["keyring_versions"]) == (1, [1])
    assert _sealed(cli) == {1: counts}

    # Step 1; a key created afterwards is sealed under the new version.
    added = ok(cli, "keyring", "add-version")
    assert (added["version"], added["keyring_versions"]) == (2, [1, 2])
    keys.append(create_key("after"))
    assert _sealed(cli) == {1: counts, 2: dict.fromkeys(KINDS, 0) | {"client_secrets": 1}}

    # Step 3 is refused until step 2 ran.
    refused = run(cli, "keyring", "drop-version", "1", status=2)
    assert "Run uid2-operator keyring reseal first" in refused.stderr
    assert load_keyring(settings).versions == (1, 2)

    resealed = ok(cli, "keyring", "reseal")
    assert (resealed["from_versions"], resealed["resealed"]) == ([1], counts)
    assert ok(cli, "keyring", "reseal")["total"] == 0
    moved = counts | {"client_secrets": 4}
    assert _sealed(cli) == {1: dict.fromkeys(KINDS, 0), 2: moved}

    dropped = ok(cli, "keyring", "drop-version", "1")
    assert dropped["keyring_versions"] == [2]
    assert _sealed(cli) == {2: moved}
    v2 = load_keyring(settings)
    assert (v2.versions, v2.pepper) == ((2,), v1.pepper)

    audit = ok(cli, "audit", "list", "--limit", "1000")
    events = audit["events"] if isinstance(audit, dict) else audit
    keyring_events = [
        (e["action"], e["before"], e["after"]) for e in events if e["target_type"] == "keyring"
    ]
    reseal_after = {"kek_version": 2, "from_versions": [1], "resealed": counts}
    assert keyring_events == [
        ("keyring.version.add", None, {"kek_version": 2}),
        ("keyring.reseal", None, reseal_after | {"total": sum(counts.values())}),
        ("keyring.version.drop", {"kek_version": 1}, None),
    ]
    assert ok(cli, "audit", "verify")["ok"] is True
    for args in (("keyring", "status"), ("audit", "list", "--limit", "1000")):
        run(cli, *args)

    # Everything opens with version 2 alone, to the same plaintexts.
    opened = open_services(settings)
    try:
        secrets = [opened.credentials.resolve_client(k["key"]).secrets for k in keys]
        after = opened.material.load_material()
    finally:
        opened.close()
    assert [sorted(s) for s in secrets] == [
        [base64.b64decode(keys[0]["secret"])],
        sorted(base64.b64decode(d["secret"]) for d in (keys[1], rotated)),
        [base64.b64decode(keys[2]["secret"])],
    ]
    assert _plaintexts(after) == _plaintexts(before)
    by_id = {k.id: k for k in after.keys}
    decoded = decode_advertising_token(token, master_key=by_id.get, site_key=by_id.get)
    assert decoded.raw_uid == _raw_uid(before, now_ms) == _raw_uid(after, now_ms)

    # Nothing secret where it must not be.
    needles = _needles([v1, v2], [*keys, rotated])
    stored = _stored_bytes(db)
    problems = [f"{what} stored" for needle, what in needles.items() if needle in stored]
    logs = caplog.text.encode() + b"\n".join(
        repr(record.args).encode() + record.getMessage().encode() for record in caplog.records
    )
    assert any(r.name.startswith("uid2_operator.services.keyring_rotation") for r in caplog.records)
    problems += [f"{what} in the logs" for needle, what in needles.items() if needle in logs]
    for index, (args, result) in enumerate(cli.results):
        allowed = _disclosed_forms(one_time.get(index, {}))
        for stream, text in (("stdout", result.stdout), ("stderr", result.stderr)):
            problems += [
                f"{what} in {stream} of {args[-4:]}"
                for needle, what in needles.items()
                if needle not in allowed and needle in text.encode()
            ]
    assert problems == []
    assert len(one_time) == 4
    for index, document in one_time.items():  # the search does find what was disclosed
        assert document["secret"].encode() in cli.results[index][1].stdout.encode()
