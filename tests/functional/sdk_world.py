"""The sdk-compat §3 world, built the way an administrator builds it, on a real ``serve`` process.

Before the server starts, the installed ``uid2-operator`` command runs ``init`` (1024 salt
buckets), records one opt-out (``optout add``) and rotates a share of the salt buckets (``salts
rotate``). A rotation takes effect at a UTC midnight at most a day and an hour away, so the
world then moves every stored salt time two days back (``age_salts``): the table reads as one made
and rotated two days ago, whose rotated buckets carry a previous salt and a later
``last_updated`` (that midnight).
Then ``uid2-operator serve`` starts, and its admin API creates the participants and keys:

- A: a publisher allowed every role; key ``A`` holds GENERATOR, MAPPER, ID_READER and SHARER, and
  its keyset is shared with B and with every DSP; a disabled key ``X`` (every role but OPTOUT);
- B: a publisher with a SHARER key, its keyset made owner-only; C: an advertiser with a SHARER
  key (its keyset owner-only from the start), not allowed by A;
- D: a DSP with an ID_READER key;
- E: a publisher allowed every role, with single-role keys ``G``, ``M`` and ``S``, and ``R``
  (GENERATOR and MAPPER) whose secret was rotated (``R-old`` is the previous secret, still valid);
- OFF: a participant with a GENERATOR key, then disabled.

Opted-out identities are the operator's built-in test identities plus the one recorded above.
The world is ready once every participant has its keyset and the operator's snapshot has caught
up with the store. ``raw_uid_for_email`` derives raw UIDs independently, from the salt table read
back from the store and ``wire.raw_uid``.
"""

from __future__ import annotations

import json
import subprocess
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
from cli_harness import Database, database_for
from serve_harness import UID2_OPERATOR, Credential, Served, clean_env, served

from uid2_operator.bootstrap import open_services
from uid2_operator.domain.salts import SaltTable, int64_bytes, int64_column
from uid2_operator.services.snapshot import OperatorIdentity
from uid2_operator.services.snapshot_loader import operator_identity
from uid2_operator.settings import DB_FILE, KEYRING_FILE, Settings
from uid2_operator.storage import open_store
from uid2_operator.wire.encoding import b64encode
from uid2_operator.wire.identity import hash_identity, normalize_email
from uid2_operator.wire.raw_uid import DAY_MS, current_raw_uid
from uid2_operator.wire.scope import IdentityType

BUCKET_COUNT = 1024
ROTATED_FRACTION = "0.3"
RECORDED_OPTOUT_EMAIL = "recorded.optout@example.com"
WRONG_SECRET = "wJ0hP19QU4hmpB64Y3fV2dAed8t/mupw3sjN5jNRFzg="
POLL_S = "0.2"
SALTS_AGED_DAYS = 2
WAIT_S = 20.0
_ALL = ["GENERATOR", "MAPPER", "ID_READER", "SHARER", "OPTOUT"]
T = TypeVar("T")

# (participant, type, roles it may grant) and (key, participant, roles)
PARTICIPANTS: list[tuple[str, str, list[str]]] = [
    ("A", "publisher", _ALL),
    ("B", "publisher", ["SHARER"]),
    ("C", "advertiser", ["SHARER"]),
    ("D", "dsp", ["ID_READER"]),
    ("E", "publisher", _ALL),
    ("OFF", "publisher", ["GENERATOR"]),
]
KEYS: list[tuple[str, str, list[str]]] = [
    ("A", "A", ["GENERATOR", "MAPPER", "ID_READER", "SHARER"]),
    ("X", "A", ["GENERATOR", "MAPPER", "ID_READER", "SHARER"]),
    ("B", "B", ["SHARER"]),
    ("C", "C", ["SHARER"]),
    ("D", "D", ["ID_READER"]),
    ("G", "E", ["GENERATOR"]),
    ("M", "E", ["MAPPER"]),
    ("S", "E", ["SHARER"]),
    ("R", "E", ["GENERATOR", "MAPPER"]),
    ("OFF", "OFF", ["GENERATOR"]),
]


_COMMON_ENV = {"UID2_SALT_BUCKETS": str(BUCKET_COUNT)}


def eventually(check: Callable[[], T | None], what: str) -> T:
    """Poll ``check`` until it returns a value (the operator catching up with the store)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        found = check()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def run_cli(database: Database, env: dict[str, str], *args: str) -> Any:
    """``uid2-operator --json <args>`` as a subprocess; its JSON document (fails on non-zero)."""
    result = subprocess.run(  # noqa: S603 (our own command)
        [UID2_OPERATOR, *database.cli_args(), "--json", *args],
        capture_output=True,
        text=True,
        env=clean_env(env),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


@dataclass
class SdkWorld:
    running: Served
    database: Database
    admin_token: str
    creds: dict[str, Credential]
    sites: dict[str, int]
    rotated_since: datetime  # buckets updated at or after this: exactly the rotated ones
    salts: SaltTable | None = None
    identity: OperatorIdentity = field(default_factory=OperatorIdentity)

    @property
    def base_url(self) -> str:
        return self.running.base_url

    def __getitem__(self, name: str) -> Credential:
        return self.creds[name]

    def admin(self, method: str, path: str, body: Any = None) -> httpx.Response:
        response = self.running.admin(method, path, self.admin_token, body)
        assert response.status_code < 300, (method, path, response.text)
        return response

    def raw_uid_for_email(self, email: str) -> str:
        """The current raw UID of an email, derived here from the stored salt table."""
        assert self.salts is not None
        flh = self.salts.first_level_hash(hash_identity(normalize_email(email)))
        return b64encode(
            current_raw_uid(
                self.salts.bucket(self.salts.index_of(flh), time.time_ns() // 1_000_000),
                flh,
                scope=self.identity.scope,
                kind=IdentityType.EMAIL,
                environment=self.identity.identity_environment,
                identity_v3=self.identity.identity_v3,
            )
        )


def _settings(database: Database) -> Settings:
    return Settings.from_env({}, data_dir=str(database.data_dir), database_url=database.url)


def _snapshot_change_seq(running: Served) -> int | None:
    for line in running.metrics().splitlines():
        if line.startswith("uid2_operator_snapshot_change_seq{"):
            return int(float(line.rsplit(" ", 1)[1]))
    return None


def wait_for_snapshot(world: SdkWorld) -> None:
    """Until the operator's snapshot holds every change committed so far."""
    store = open_store(_settings(world.database).store_url)
    try:
        target = store.change_seq()
    finally:
        store.close()
    eventually(
        lambda: True if (_snapshot_change_seq(world.running) or -1) >= target else None,
        f"the snapshot to reach change {target}",
    )


def age_salts(database: Database, days: int) -> None:
    """Move every stored salt time (``last_updated``, ``refresh_from``) ``days`` whole days back,
    before anything serves the table: it then reads as made (and rotated) ``days`` days earlier,
    a rotation scheduled for a midnight having taken effect at the midnight ``days`` days before.
    The times are stored in the clear beside the sealed salts, which stay as they are."""
    shift = days * DAY_MS

    def shifted(column: bytes) -> bytes:
        return int64_bytes(array("q", (ms - shift for ms in int64_column(column))))

    store = open_store(_settings(database).store_url)
    try:
        with store.transaction() as tx:
            chunks = list(tx.salts.iter_chunks())
            tx.salts.put_chunks(
                replace(
                    c, last_updated=shifted(c.last_updated), refresh_from=shifted(c.refresh_from)
                )
                for c in chunks
            )
    finally:
        store.close()


def _populate(world: SdkWorld) -> None:
    for name, kind, roles in PARTICIPANTS:
        created = world.admin("POST", "/participants", {"name": name, "type": kind, "roles": roles})
        world.sites[name] = int(created.json()["site_id"])
    for name, owner, roles in KEYS:
        site = world.sites[owner]
        issued = world.admin(
            "POST", "/keys", {"site_id": site, "name": f"key {name}", "roles": roles}
        ).json()
        world.creds[name] = Credential(issued["key_id"], issued["key"], issued["secret"], site)
    # The serving process gives new participants their keysets (on its next store poll).

    def keyset_of(site: int) -> Callable[[], int | None]:
        def check() -> int | None:
            found = world.admin("GET", f"/participants/{site}/sharing").json().get("keyset_id")
            return None if found is None else int(found)

        return check

    for name, _kind, _roles in PARTICIPANTS:
        eventually(keyset_of(world.sites[name]), f"the keyset of {name}")
    world.admin(
        "PUT",
        f"/participants/{world.sites['A']}/sharing",
        {"mode": "list", "sites": [world.sites["B"]], "types": ["dsp"]},
    )
    world.admin("PUT", f"/participants/{world.sites['B']}/sharing", {"mode": "owner_only"})
    world.admin("POST", f"/keys/{world.creds['X'].key_id}/disable", {})
    world.admin("POST", f"/participants/{world.sites['OFF']}/disable", {})
    old = world.creds["R"]
    rotated = world.admin("POST", f"/keys/{old.key_id}/rotate-secret", {}).json()
    world.creds["R-old"] = old
    world.creds["R"] = Credential(old.key_id, old.key, rotated["secret"], old.site_id)


@contextmanager
def sdk_world(tmp_path: Path, *, env: dict[str, str] | None = None) -> Iterator[SdkWorld]:
    """Build the world (see the module docstring) and serve it; ``env`` adds serve settings."""
    common = _COMMON_ENV
    with database_for("sqlite", tmp_path) as database:
        initialised = run_cli(database, common, "init")
        run_cli(database, common, "optout", "add", "--email", RECORDED_OPTOUT_EMAIL)
        rotated = run_cli(database, common, "salts", "rotate", "--fraction", ROTATED_FRACTION)
        # The rotation takes effect at a UTC midnight within a day and an hour: move the clock
        # past it (the stored times back) so the served table has rotated buckets. Init wrote
        # every bucket before that midnight, so "since" the aged midnight selects exactly the
        # rotated buckets.
        age_salts(database, SALTS_AGED_DAYS)
        effective_ms = rotated["effective_at_ms"] - SALTS_AGED_DAYS * DAY_MS
        rotated_since = datetime.fromtimestamp(effective_ms / 1000, UTC)
        serve_env = {**common, "UID2_POLL_INTERVAL_S": POLL_S, **(env or {})}
        with served(database, env=serve_env) as running:
            world = SdkWorld(running, database, initialised["admin_token"], {}, {}, rotated_since)
            _populate(world)
            wait_for_snapshot(world)
            services = open_services(_settings(database))
            try:
                world.salts = services.material.load_material().salts
                world.identity = operator_identity(services.settings.environment)
            finally:
                services.close()
            yield world


@contextmanager
def served_again(world: SdkWorld, env: dict[str, str]) -> Iterator[SdkWorld]:
    """The same world (same store) served by a second process with other settings. A data
    directory belongs to one serve at a time, so this one gets its own beside the first, and
    reaches the first's SQLite file and keyring through ``--database-url`` and
    ``UID2_KEYRING_FILE``."""
    data = world.database.data_dir
    own = Database("sqlite", data.with_name(f"{data.name}-again"), f"sqlite:///{data / DB_FILE}")
    keyring = {"UID2_KEYRING_FILE": str(data / KEYRING_FILE)}
    serve_env = {**_COMMON_ENV, "UID2_POLL_INTERVAL_S": POLL_S, **keyring, **env}
    with served(own, env=serve_env) as running:
        again = replace(world, running=running)
        wait_for_snapshot(again)
        yield again
