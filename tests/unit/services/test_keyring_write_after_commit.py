"""A keyring change replaces the keyring file only once the store has recorded it.

``add_version``, ``activate_version`` and ``drop_version`` write the new keyring beside the file
within their unit of work (a file that cannot be written refuses the change before anything
commits) and put it in place after the commit. A unit of work that fails at its commit (the
connection lost, the database restarted) therefore leaves the keyring file as it was and no
temporary file: otherwise the file would hold a version number the store never reserved (the
next ``add-version`` of another data directory hands it out again with another key) or lack a
version the store never recorded as dropped (another keyring file could still seal under it).

The rename after the commit comes after the store's write lock is released, so the keyring file
has a lock of its own, held from before a change reads the keyring until its new one is in
place: two changes at once (two commands on one data directory) run one after the other, and
neither puts back what the other changed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from store_wrapper import StoreWrapper
from uid2_operator.bootstrap import (
    ConfiguredKeyring,
    ensure_keyring,
    load_keyring,
    open_configured_store,
    upgrade_database,
)
from uid2_operator.clock import FixedClock
from uid2_operator.errors import InvalidInput, KeyringError, StoreError
from uid2_operator.services.context import SYSTEM
from uid2_operator.services.keyring_rotation import KeyringRotationService
from uid2_operator.settings import Settings
from uid2_operator.storage.interface import Store, Tx


class CommitFails(StoreWrapper):
    """The store, whose write transactions fail at their commit while ``failing`` is set."""

    failing = False

    def transaction(self) -> AbstractContextManager[Tx]:
        return self._failing_at_commit() if self.failing else self._inner.transaction()

    @contextmanager
    def _failing_at_commit(self) -> Iterator[Tx]:
        with self._inner.transaction() as tx:
            yield tx
            raise StoreError("The store is unavailable: server closed the connection")


def _recorded(store: Store) -> tuple[object, ...]:
    with store.read() as rx:
        return (
            rx.deployment.highest_kek_version(),
            rx.deployment.kek_check_values(),
            rx.deployment.dropped_kek_versions(),
            [e.action for e in rx.audit.list_events()],
            rx.change_seq(),
        )


@pytest.fixture(name="world")
def world_fixture(tmp_path: Path) -> Iterator[tuple[Settings, CommitFails, KeyringRotationService]]:
    settings = Settings.from_env({"UID2_DATA_DIR": str(tmp_path / "data")})
    ensure_keyring(settings)
    upgrade_database(settings)
    store = CommitFails(open_configured_store(settings))
    rotation = KeyringRotationService(store, ConfiguredKeyring(settings), FixedClock(), os.urandom)
    try:
        yield settings, store, rotation
    finally:
        store.close()


def _files(settings: Settings) -> tuple[bytes, list[str]]:
    """The keyring's bytes and what else the data directory holds (its lock file aside)."""
    names = sorted(p.name for p in settings.data_dir.iterdir() if p.name != LOCK)
    return settings.keyring_path.read_bytes(), names


LOCK = ".keyring.json.lock"


@pytest.mark.parametrize("activate", [True, False])
def test_add_version_failing_at_commit_leaves_the_keyring_file(
    world: tuple[Settings, CommitFails, KeyringRotationService], activate: bool
) -> None:
    settings, store, rotation = world
    files, recorded = _files(settings), _recorded(store)
    store.failing = True
    with pytest.raises(StoreError, match="server closed the connection"):
        rotation.add_version(SYSTEM, activate=activate)
    assert _files(settings) == files  # no version 2 in the file, no temporary file beside it
    assert _recorded(store) == recorded
    store.failing = False
    change = rotation.add_version(SYSTEM, activate=activate)
    assert change.version == 2
    assert load_keyring(settings).versions == (1, 2)


def test_activate_version_failing_at_commit_leaves_the_keyring_file(
    world: tuple[Settings, CommitFails, KeyringRotationService],
) -> None:
    settings, store, rotation = world
    rotation.add_version(SYSTEM, activate=False)
    files, recorded = _files(settings), _recorded(store)
    store.failing = True
    with pytest.raises(StoreError, match="server closed the connection"):
        rotation.activate_version(2, SYSTEM)
    assert _files(settings) == files
    assert load_keyring(settings).active_version == 1
    assert _recorded(store) == recorded
    store.failing = False
    rotation.activate_version(2, SYSTEM)
    assert load_keyring(settings).active_version == 2


def test_drop_version_failing_at_commit_leaves_the_keyring_file(
    world: tuple[Settings, CommitFails, KeyringRotationService],
) -> None:
    settings, store, rotation = world
    rotation.add_version(SYSTEM)
    rotation.reseal(SYSTEM)
    files, recorded = _files(settings), _recorded(store)
    store.failing = True
    with pytest.raises(StoreError, match="server closed the connection"):
        rotation.drop_version(1, SYSTEM)
    assert _files(settings) == files  # version 1 still there: the store did not record its drop
    assert load_keyring(settings).versions == (1, 2)
    assert _recorded(store) == recorded
    store.failing = False
    rotation.drop_version(1, SYSTEM)
    assert load_keyring(settings).versions == (2,)
    with store.read() as rx:
        assert 1 in rx.deployment.dropped_kek_versions()


def test_a_file_that_cannot_be_written_refuses_before_the_commit(
    world: tuple[Settings, CommitFails, KeyringRotationService],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, store, rotation = world
    files, recorded = _files(settings), _recorded(store)

    def full(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(KeyringError, match="cannot be written: No space left on device"):
        rotation.add_version(SYSTEM)
    monkeypatch.undo()
    assert _files(settings) == files
    assert _recorded(store) == recorded


ROUNDS = 12


def test_two_changes_at_once_keep_every_version_either_added(tmp_path: Path) -> None:
    settings = Settings.from_env({"UID2_DATA_DIR": str(tmp_path / "data")})
    ensure_keyring(settings)
    upgrade_database(settings)
    failures: list[BaseException] = []

    def adder() -> None:
        store = open_configured_store(settings)
        rotation = KeyringRotationService(
            store, ConfiguredKeyring(settings), FixedClock(), os.urandom
        )
        try:
            for _ in range(ROUNDS):
                rotation.add_version(SYSTEM, activate=False)
        except BaseException as exc:  # reported by the test below
            failures.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=adder) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    store = open_configured_store(settings)
    try:
        with store.read() as rx:
            reserved = rx.deployment.highest_kek_version()
            recorded = set(rx.deployment.kek_check_values())
    finally:
        store.close()
    held = load_keyring(settings).versions
    assert reserved == 1 + 2 * ROUNDS
    assert held == tuple(range(1, reserved + 1))  # none added by one and dropped by the other
    assert recorded - {0} == set(held)  # (0: the pepper's check value)
    assert (tmp_path / "data" / LOCK).exists()


def test_a_keyring_directory_without_room_for_the_lock_still_serves_changes_that_write_nothing(
    world: tuple[Settings, CommitFails, KeyringRotationService],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A provisioned keyring on a read-only mount: no lock file can be made beside it, and no
    change could write the keyring there either; one that changes nothing still answers."""
    settings, _store, rotation = world
    real_open = os.open

    def read_only(path: object, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(LOCK):
            raise OSError(30, "Read-only file system")
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    real_access = os.access

    def not_writable(path: object, mode: int, *args: Any, **kwargs: Any) -> bool:
        if mode & os.W_OK and str(path) == str(settings.data_dir.resolve()):
            return False
        return real_access(path, mode, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", read_only)
    monkeypatch.setattr(os, "access", not_writable)
    assert rotation.activate_version(1, SYSTEM).changed is False  # already active
    with pytest.raises(InvalidInput, match="active key-encryption key version"):
        rotation.drop_version(1, SYSTEM)
    assert not (settings.data_dir / LOCK).exists()


def test_a_lock_file_that_exists_and_cannot_be_opened_refuses_the_change(
    world: tuple[Settings, CommitFails, KeyringRotationService],
) -> None:
    """Another user's lock file, or a link where it should be: the directory can be written,
    so a change let through unlocked could race another one. Refused, changing nothing."""
    settings, store, rotation = world
    (settings.data_dir / LOCK).symlink_to(settings.data_dir / "elsewhere")
    files, recorded = _files(settings), _recorded(store)
    with pytest.raises(KeyringError, match="cannot be locked"):
        rotation.add_version(SYSTEM)
    assert (_files(settings), _recorded(store)) == (files, recorded)


def test_a_lock_file_left_on_a_mount_made_read_only_since_is_locked_read_only(
    world: tuple[Settings, CommitFails, KeyringRotationService],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lock file stays once made; a keyring directory mounted read-only afterwards opens it
    only for reading, which is all ``flock`` needs: changes that write nothing still answer."""
    settings, _store, rotation = world
    rotation.add_version(SYSTEM, activate=False)  # leaves the lock file
    assert (settings.data_dir / LOCK).exists()
    real_open = os.open
    opened_read_only: list[str] = []

    def read_only_mount(path: object, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(LOCK):
            if flags & (os.O_RDWR | os.O_WRONLY):
                raise OSError(30, "Read-only file system")
            opened_read_only.append(str(path))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", read_only_mount)
    assert rotation.activate_version(1, SYSTEM).changed is False
    with pytest.raises(InvalidInput, match="active key-encryption key version"):
        rotation.drop_version(1, SYSTEM)
    assert len(opened_read_only) == 2  # locked, read only, each time


@pytest.mark.parametrize(
    ("errno_", "reason"),
    [(16, "Device or resource busy"), (1, "Operation not permitted")],
    ids=["mounted-in-place", "immutable"],
)
@pytest.mark.parametrize("change", ["add", "activate", "drop"])
def test_a_file_that_cannot_be_replaced_refuses_before_the_commit(
    world: tuple[Settings, CommitFails, KeyringRotationService],
    monkeypatch: pytest.MonkeyPatch,
    errno_: int,
    reason: str,
    change: str,
) -> None:
    # A keyring file mounted in place (a container's secret: EBUSY) or immutable (EPERM) can be
    # read and written beside, but not replaced: found only after the commit, the store would
    # record a change the file never took, and the audit trail a success.
    settings, store, rotation = world
    if change != "add":
        rotation.add_version(SYSTEM, activate=change == "drop")
        if change == "drop":
            rotation.reseal(SYSTEM)
    files, recorded = _files(settings), _recorded(store)
    keyring_path = settings.keyring_path.resolve()
    replace = os.replace

    def pinned(source: Any, target: Any, **kwargs: Any) -> None:
        if Path(target) == keyring_path:
            raise OSError(errno_, reason)
        replace(source, target, **kwargs)

    attempts = {
        "add": lambda: rotation.add_version(SYSTEM),
        "activate": lambda: rotation.activate_version(2, SYSTEM),
        "drop": lambda: rotation.drop_version(1, SYSTEM),
    }
    monkeypatch.setattr(os, "replace", pinned)
    with pytest.raises(KeyringError, match=f"cannot be replaced: {reason}; the keyring is"):
        attempts[change]()
    monkeypatch.undo()
    assert _files(settings) == files  # the keyring as it was, nothing left beside it
    assert _recorded(store) == recorded  # nothing recorded, no success in the audit trail


def test_the_proof_that_the_file_can_be_replaced_keeps_its_bytes(
    world: tuple[Settings, CommitFails, KeyringRotationService],
) -> None:
    # Written by hand with CRLF line ends, say: the copy put in its place is the same bytes.
    settings, store, rotation = world
    path = settings.keyring_path
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    files = _files(settings)
    store.failing = True
    with pytest.raises(StoreError, match="server closed the connection"):
        rotation.add_version(SYSTEM)
    assert _files(settings) == files
