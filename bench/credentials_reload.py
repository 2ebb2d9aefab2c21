"""CPU of a worker's snapshot reload after one revocation: a load from nothing against one from
the previous load (which reads only the credentials written since).

    .venv/bin/python bench/credentials_reload.py [--keys 5000 50000] [--per-site 10] [--json F]

For each size N, in one process, on a fresh SQLite data directory (``uid2-operator init``, then
the encryption material with 2^16 salt buckets):

1. N API keys, ``--per-site`` to a participant, each with one client secret sealed under the
   data directory's keyring, are written straight into the tables in a few large transactions
   (one ``create_key`` per key would take minutes at 50,000), stamped with the change sequence
   of their commit as the store's writes stamp them;
2. ``load_snapshot`` loads everything once: the snapshot a worker holds;
3. one key is revoked through the credential service, as the CLI and the admin API do it, which
   moves the change sequence;
4. timed (process CPU, best of ``--repeat``): the reload a worker would make if it kept nothing
   (``load_snapshot`` with no previous load: every key and secret read, opened and built again)
   and the one it makes (``load_snapshot`` from the previous load: the revoked key read and its
   record rebuilt). Both build the whole snapshot, material and client-side state included.

It prints both, their ratio, and checks that both snapshots refuse the revoked key. Nothing else
is asserted: the figures depend on the machine, the ratio much less.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update

from uid2_operator.bootstrap import follow_keyring, load_keyring, open_services
from uid2_operator.clock import SystemClock
from uid2_operator.domain.sealing import new_client_secret, seal_secret
from uid2_operator.serve_settings import ServeSettings
from uid2_operator.services.context import Actor
from uid2_operator.services.material import MaterialConfig, MaterialService
from uid2_operator.services.snapshot_loader import Loaded, load_snapshot, operator_identity
from uid2_operator.settings import Settings
from uid2_operator.storage import schema as t
from uid2_operator.storage.sql import SqlStore

ACTOR = Actor(id="cli:bench", request_id="bench", source="cli")
BATCH = 5_000
FIRST_SITE = 100


def fill(engine: Any, keyring: Any, count: int, per_site: int, now_ms: int) -> list[str]:
    """``count`` keys with a secret each, ``per_site`` to a participant; their ids."""
    key_ids: list[str] = []
    with engine.connect() as conn:
        for start in range(0, count, BATCH):
            seq = conn.execute(
                select(t.store_meta.c.value).where(t.store_meta.c.name == t.CHANGE_SEQ)
            ).scalar_one()
            stamp = {"change_seq": seq + 1}
            numbers = range(start, min(start + BATCH, count))
            sites = sorted({FIRST_SITE + n // per_site for n in numbers})
            conn.execute(
                insert(t.participants),
                [
                    {
                        "site_id": site,
                        "name": f"Site {site}",
                        "type": "publisher",
                        "allowed_roles": "GENERATOR,MAPPER",
                        "enabled": True,
                        "contacts": "[]",
                        "created_at_ms": now_ms,
                        "updated_at_ms": now_ms,
                        **stamp,
                    }
                    for site in sites
                    if (site - FIRST_SITE) * per_site >= start
                ],
            )
            keys, secrets = [], []
            for n in numbers:
                key_id = f"UID2-C-L-{FIRST_SITE + n // per_site}-k{n:05d}"
                key_ids.append(key_id)
                keys.append(
                    {
                        "key_id": key_id,
                        "site_id": FIRST_SITE + n // per_site,
                        "name": f"key {n}",
                        "roles": "GENERATOR,MAPPER",
                        "state": "active",
                        "key_hash": os.urandom(32),
                        "created_at_ms": now_ms,
                        "created_by": "cli:bench",
                        "updated_at_ms": now_ms,
                        **stamp,
                    }
                )
                sealed = seal_secret(keyring, key_id, new_client_secret(os.urandom), os.urandom, 0)
                secrets.append(
                    {
                        "key_id": key_id,
                        "kek_version": sealed.kek_version,
                        "ciphertext": sealed.ciphertext,
                        "created_at_ms": now_ms,
                        **stamp,
                    }
                )
            conn.execute(insert(t.api_keys), keys)
            conn.execute(insert(t.client_secrets), secrets)
            conn.execute(
                update(t.store_meta)
                .where(t.store_meta.c.name == t.CHANGE_SEQ)
                .values(value=seq + 1)
            )
            # As every commit does: a reload goes on from a load only while the store still
            # holds the mark that load read (a store restored from a backup does not).
            conn.execute(insert(t.change_marks).values(seq=seq + 1, mark=os.urandom(t.MARK_BYTES)))
            conn.commit()
    return key_ids


def cpu_seconds(work: Callable[[], Loaded], repeat: int) -> tuple[float, Loaded]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.process_time()
        result = work()
        best = min(best, time.process_time() - started)
    assert result is not None
    return best, result


def run(count: int, per_site: int, repeat: int) -> dict[str, Any]:
    clock = SystemClock()
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder) / "data"
        subprocess.run(  # noqa: S603 (our own command)
            [sys.executable, "-m", "uid2_operator", "--data-dir", str(data_dir), "init"],
            check=True,
            capture_output=True,
        )
        settings = Settings.from_env(data_dir=str(data_dir), database_url=None, environment=None)
        services = open_services(settings)
        try:
            store = services.store
            assert isinstance(store, SqlStore)
            keyring = follow_keyring(settings)
            material = MaterialService(
                store, keyring, MaterialConfig(bucket_count=1 << 16), clock, os.urandom
            )
            material.initialise(ACTOR)
            key_ids = fill(store.engine, load_keyring(settings), count, per_site, clock.now_ms())
            identity = operator_identity(settings.environment, settings.identity_scope)
            lifetimes = ServeSettings.from_env({}).token_lifetimes(settings.environment)

            def load(previous: Loaded | None) -> Loaded:
                return load_snapshot(
                    store,
                    keyring,
                    material,
                    identity=identity,
                    lifetimes=lifetimes,
                    generation=1,
                    now_ms=clock.now_ms(),
                    previous=previous,
                )

            held = load(None)
            # without a mark the load "from the previous one" would quietly read everything
            assert held.mark is not None, "the store holds no mark for its change sequence"
            revoked = key_ids[len(key_ids) // 2]
            services.credentials.revoke_key(ACTOR, revoked, reason="bench")
            full_s, full = cpu_seconds(lambda: load(None), repeat)
            incremental_s, incremental = cpu_seconds(lambda: load(held), repeat)
            for loaded in (full, incremental):
                assert loaded.snapshot.clients[revoked].usable_before_ms == 0
                assert len(loaded.snapshot.clients) == count
        finally:
            services.close()
    return {
        "keys": count,
        "full_cpu_s": round(full_s, 4),
        "incremental_cpu_s": round(incremental_s, 4),
        "ratio": round(full_s / incremental_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, nargs="+", default=[5_000, 50_000])
    parser.add_argument("--per-site", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    for count in args.keys:
        result = run(count, args.per_site, args.repeat)
        results.append(result)
        print(
            f"N={count:>7,} keys: reload from nothing {result['full_cpu_s'] * 1000:8.1f} ms CPU | "
            f"from the previous load {result['incremental_cpu_s'] * 1000:7.1f} ms CPU | "
            f"x{result['ratio']}",
            flush=True,
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
