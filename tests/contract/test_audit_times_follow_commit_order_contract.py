"""A write's time is the time it took the store's write lock, not the time it began to wait for
it (every backend): its audit events and the times in its records are read once its transaction
is open, so the audit trail's ``at_ms`` never goes back along ``seq``.

Each case starts a use case in a thread while another writer holds the write lock, with the
clock at ``T_ASKED``. Once the use case asks the store for its transaction, the holder records a
change of its own at ``T_HELD``, and releases the lock with the clock at ``T_LOCKED``: what the
use case records must carry ``T_LOCKED``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from store_records import participant

from uid2_operator.clock import FixedClock
from uid2_operator.domain.audit import Outcome
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.domain.sealing import Keyring
from uid2_operator.services.admin import AdminService
from uid2_operator.services.audit_trail import record_event
from uid2_operator.services.context import SYSTEM
from uid2_operator.services.credentials import CredentialService
from uid2_operator.services.keyring_rotation import KeyringRotationService, StagedKeyring
from uid2_operator.services.material import MaterialConfig, MaterialService
from uid2_operator.services.sharing import SharingService
from uid2_operator.services.write_behind import WriteBehind, save_optouts, saved_path
from uid2_operator.storage import SqlStore
from uid2_operator.storage.interface import Tx

T_SETUP = 1_700_000_000_000
T_ASKED = T_SETUP + 60_000
T_HELD = T_ASKED + 500
T_LOCKED = T_ASKED + 1_000
WAIT_S = 10.0
KEYRING = Keyring({1: bytes(range(64, 96))}, 1, bytes(range(1, 33)))
CONFIG = MaterialConfig(bucket_count=128, chunk_size=32)


class WatchedStore:
    """The store under test, telling when a use case asks it for a write transaction."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self.asked = threading.Event()

    def transaction(self) -> AbstractContextManager[Tx]:
        self.asked.set()
        return self._store.transaction()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@dataclass
class MemoryKeyring:
    keyring: Keyring
    writable: bool = True
    source: str = "memory"

    def load(self) -> Keyring:
        return self.keyring

    def stage(self, keyring: Keyring) -> StagedKeyring:
        """Staged, put in place by ``publish`` (once the change committed)."""
        return StagedKeyring(lambda: self.save(keyring), lambda: None)

    def locked(self) -> AbstractContextManager[None]:
        return nullcontext()

    def save(self, keyring: Keyring) -> None:
        self.keyring = keyring


@dataclass
class World:
    store: SqlStore
    watched: WatchedStore
    clock: FixedClock
    saved_dir: Path

    def __post_init__(self) -> None:
        store: Any = self.watched
        self.credentials = CredentialService(
            store, KEYRING, Environment.LOCAL, self.clock, os.urandom
        )
        self.admin = AdminService(store, KEYRING, Environment.LOCAL, self.clock, os.urandom)
        self.material = MaterialService(store, KEYRING, CONFIG, self.clock, os.urandom)
        self.sharing = SharingService(
            store, KEYRING, Environment.LOCAL, self.clock, os.urandom, material=self.material
        )
        self.rotation = KeyringRotationService(
            store, MemoryKeyring(KEYRING), self.clock, os.urandom
        )
        self.write_behind = WriteBehind(
            store, self.clock, flush_interval_s=60, saved_dir=self.saved_dir
        )

    def site(self) -> int:
        return self.credentials.create_participant(
            SYSTEM, name="Pub", type="publisher", roles=["GENERATOR"]
        ).site_id

    def key(self) -> str:
        return self.credentials.create_key(
            SYSTEM, site_id=self.site(), name="web", roles=["GENERATOR"]
        ).key_id


# A case sets up what its use case needs (the clock at T_SETUP) and returns the use case, to
# run while another writer holds the lock, and what to check of its result and records.
Case = Callable[[World], tuple[Callable[[], Any], Callable[[Any], None]]]


def create_participant(w: World) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    def check(view: Any) -> None:
        with w.store.read() as rx:
            made = rx.participants.get(view.site_id)
        assert made is not None
        assert (made.created_at_ms, made.updated_at_ms) == (T_LOCKED, T_LOCKED)

    return lambda: w.credentials.create_participant(SYSTEM, name="Late", type="dsp"), check


def rotate_key(w: World) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    old = w.key()

    def check(issued: Any) -> None:
        with w.store.read() as rx:
            successor, retired = rx.api_keys.get(issued.key_id), rx.api_keys.get(old)
        assert successor is not None
        assert retired is not None
        assert successor.created_at_ms == T_LOCKED
        assert (retired.retires_at_ms, retired.updated_at_ms) == (T_LOCKED, T_LOCKED)

    return lambda: w.credentials.rotate_key(SYSTEM, old, grace_days=0), check


def disable_key(w: World) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    kid = w.key()

    def check(view: Any) -> None:
        with w.store.read() as rx:
            key = rx.api_keys.get(kid)
        assert key is not None
        assert key.updated_at_ms == T_LOCKED

    return lambda: w.credentials.disable_key(SYSTEM, kid), check


def rotate_secret(w: World) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    kid = w.key()

    day_ms = 86_400_000

    def check(issued: Any) -> None:
        # The grace counts from when the lock was taken (a grace of 0 would delete the old one).
        assert issued.previous_secret_retires_at_ms == T_LOCKED + day_ms
        with w.store.read() as rx:
            secrets = rx.secrets.list_for_key(kid)
        times = sorted((s.created_at_ms, s.retires_at_ms or 0) for s in secrets)
        assert times == [(T_SETUP, T_LOCKED + day_ms), (T_LOCKED, 0)]

    return lambda: w.credentials.rotate_secret(SYSTEM, kid, grace_days=1), check


def create_admin_token(w: World) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    def check(issued: Any) -> None:
        with w.store.read() as rx:
            token = rx.admin_tokens.get(issued.token_id)
        assert token is not None
        assert token.created_at_ms == T_LOCKED

    return lambda: w.admin.create_admin_token(SYSTEM, name="ops", roles=["SUPER_USER"]), check


def record_refusal(w: World) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    def check(event: Any) -> None:
        assert event.at_ms == T_LOCKED

    return (
        lambda: w.admin.record_refusal(
            SYSTEM,
            outcome=Outcome.DENIED,
            action="key.revoke",
            target_type="api_key",
            target_id="abcdef",
        ),
        check,
    )


def add_keyring_version(w: World) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    def check(change: Any) -> None:
        assert change.at_ms == T_LOCKED

    return lambda: w.rotation.add_version(SYSTEM), check


def add_optout(w: World) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    w.material.initialise(SYSTEM)

    def check(result: Any) -> None:
        assert result.timestamp_ms == T_LOCKED

    return lambda: w.material.add_optout("email", "late@example.com", SYSTEM), check


def create_keypair(w: World) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    site = w.site()

    def check(view: Any) -> None:
        with w.store.read() as rx:
            keypair = rx.keypairs.get(view.subscription_id)
        assert keypair is not None
        assert keypair.created_at_ms == T_LOCKED

    return lambda: w.sharing.create_keypair(SYSTEM, site_id=site), check


def flush_optouts(w: World) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    w.write_behind.record_optout(OptOutRecord(bytes([7]) * 32, T_SETUP))

    def check(_: Any) -> None:
        assert len(w.write_behind.optouts) == 0  # written

    return w.write_behind.flush, check


def write_saved_optouts(w: World) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    save_optouts(saved_path(w.saved_dir, T_SETUP), [OptOutRecord(bytes([9]) * 32, T_SETUP)])

    def check(_: Any) -> None:
        assert list(w.saved_dir.iterdir()) == []  # written, then removed

    return w.write_behind.write_saved, check


CASES: list[Case] = [
    create_participant,
    rotate_key,
    disable_key,
    rotate_secret,
    create_admin_token,
    record_refusal,
    add_keyring_version,
    add_optout,
    create_keypair,
    flush_optouts,
    write_saved_optouts,
]


@pytest.fixture
def world(store: SqlStore, tmp_path: Path) -> World:
    return World(store, WatchedStore(store), FixedClock(at_ms=T_SETUP), tmp_path / "pending")


@pytest.mark.parametrize("case", CASES, ids=[case.__name__ for case in CASES])
def test_a_write_that_waited_for_the_lock_is_stamped_when_it_took_it(
    world: World, case: Case
) -> None:
    store, clock = world.store, world.clock
    use_case, check = case(world)
    clock.at_ms = T_ASKED
    world.watched.asked.clear()
    outcome: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(use_case())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    with store.transaction() as tx:  # another writer holds the write lock
        thread.start()
        assert world.watched.asked.wait(WAIT_S), errors
        clock.advance(T_HELD - T_ASKED)
        tx.participants.add(participant(4000, created_at_ms=T_HELD, updated_at_ms=T_HELD))
        held = record_event(
            tx,
            SYSTEM,
            at_ms=clock.now_ms(),
            action="participant.create",
            target_type="participant",
            target_id="4000",
            site_id=4000,
        )
        clock.advance(T_LOCKED - T_HELD)
    thread.join(WAIT_S)
    assert not thread.is_alive()
    assert errors == []
    check(outcome[0])

    with store.read() as rx:
        events = sorted(rx.audit.list_events(), key=lambda e: e.seq)
    recorded = [(e.action, e.at_ms) for e in events if e.seq > held.seq]
    assert recorded
    assert {at for _, at in recorded} == {T_LOCKED}, recorded
    times = [e.at_ms for e in events]
    assert times == sorted(times)
