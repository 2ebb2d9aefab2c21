"""Key-encryption key version numbers end at ``MAX_KEK_VERSION``: every keyring that can be built
or written can be read back, and adding a version past the highest is refused before anything
is drawn, reserved, recorded or written.

The keyring file's parser reads nine digits at most; a keyring built, or a version added, above
that would be written and then refused by every command that reads the file (and by a running
``serve`` following it).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_operator.clock import FixedClock
from uid2_operator.domain.sealing import (
    MAX_KEK_VERSION,
    Keyring,
    add_kek_version,
    next_kek_version,
)
from uid2_operator.errors import KeyringError
from uid2_operator.services.context import Actor
from uid2_operator.services.keyring_rotation import KeyringRotationService, StagedKeyring
from uid2_operator.storage import SqlStore, open_store, upgrade

ACTOR = Actor("cli:tester", request_id="req-1", source="cli")
PEPPER = bytes(range(1, 33))
KEK_A = bytes(range(64, 96))
KEK_B = bytes(range(96, 128))
TOP = Keyring({MAX_KEK_VERSION: KEK_A}, MAX_KEK_VERSION, PEPPER)
NONE_LEFT = (
    f"No key-encryption key version can be added: the next would be {MAX_KEK_VERSION + 1}, "
    f"above the highest a keyring can hold ({MAX_KEK_VERSION})"
)


def _json(version: str, active: int) -> str:
    """Keyring JSON holding ``KEK_A`` under the version spelled ``version``."""
    return json.dumps(
        {
            "keks": {version: base64.b64encode(KEK_A).decode()},
            "active_kek_version": active,
            "pepper": base64.b64encode(PEPPER).decode(),
        }
    )


class CountingRandom:
    """``os.urandom`` that counts how many draws were made."""

    def __init__(self) -> None:
        self.draws = 0

    def __call__(self, size: int) -> bytes:
        self.draws += 1
        return os.urandom(size)


# ------------------------------------------------------------------------------- the keyring


def test_the_highest_version_is_nine_digits() -> None:
    assert MAX_KEK_VERSION == 999_999_999


def test_the_highest_version_is_read_back_and_the_next_is_refused() -> None:
    read = Keyring.from_json(_json(str(MAX_KEK_VERSION), MAX_KEK_VERSION))
    assert read == TOP
    assert Keyring.from_json(TOP.to_json()) == TOP
    for text in (str(MAX_KEK_VERSION + 1), "9" * 10, "1" + "0" * 5000):
        with pytest.raises(KeyringError, match=f"positive integers up to {MAX_KEK_VERSION}$"):
            Keyring.from_json(_json(text, 1))


@pytest.mark.parametrize("version", [MAX_KEK_VERSION + 1, 2**31, 10**30])
def test_a_keyring_above_the_highest_version_cannot_be_built(version: int) -> None:
    with pytest.raises(KeyringError, match=f"positive integers up to {MAX_KEK_VERSION}$"):
        Keyring({version: KEK_A}, version, PEPPER)
    with pytest.raises(KeyringError, match=f"positive integers up to {MAX_KEK_VERSION}$"):
        Keyring({1: KEK_A, version: KEK_B}, 1, PEPPER)


@pytest.mark.parametrize("activate", [True, False])
def test_no_version_is_added_past_the_highest_and_no_key_is_drawn(activate: bool) -> None:
    random = CountingRandom()
    with pytest.raises(KeyringError) as refused:
        add_kek_version(TOP, random, activate=activate)
    assert str(refused.value) == NONE_LEFT
    below = Keyring({1: KEK_A}, 1, PEPPER)
    with pytest.raises(KeyringError, match="above the highest a keyring can hold"):
        add_kek_version(below, random, version=MAX_KEK_VERSION + 1, activate=activate)
    assert random.draws == 0


def test_the_last_version_is_added_and_read_back() -> None:
    below = Keyring({MAX_KEK_VERSION - 1: KEK_A}, MAX_KEK_VERSION - 1, PEPPER)
    added = add_kek_version(below, os.urandom)
    assert (added.versions, added.active_version) == (
        (MAX_KEK_VERSION - 1, MAX_KEK_VERSION),
        MAX_KEK_VERSION,
    )
    assert Keyring.from_json(added.to_json()) == added


def test_next_kek_version_stops_at_the_highest() -> None:
    assert next_kek_version(1) == 2
    assert next_kek_version(MAX_KEK_VERSION - 1) == MAX_KEK_VERSION
    with pytest.raises(KeyringError) as refused:
        next_kek_version(MAX_KEK_VERSION)
    assert str(refused.value) == NONE_LEFT


@settings(deadline=None)
@given(
    versions=st.sets(
        st.integers(min_value=1, max_value=8)
        | st.integers(min_value=MAX_KEK_VERSION - 8, max_value=MAX_KEK_VERSION),
        min_size=1,
        max_size=4,
    ),
    above=st.none() | st.integers(min_value=1, max_value=12),
    activate=st.booleans(),
)
def test_every_keyring_a_version_is_added_to_is_read_back(
    versions: set[int], above: int | None, activate: bool
) -> None:
    keyring = Keyring(dict.fromkeys(versions, KEK_A), min(versions), PEPPER)
    version = None if above is None else max(versions) + above
    try:
        added = add_kek_version(keyring, os.urandom, version=version, activate=activate)
    except KeyringError:
        assert (version or max(versions) + 1) > MAX_KEK_VERSION
        return
    assert max(added.versions) <= MAX_KEK_VERSION
    assert Keyring.from_json(added.to_json()) == added


# ------------------------------------------------------------------------------- the use case


class MemoryKeyring:
    """A writable keyring file held in memory, counting its writes."""

    source = "/srv/uid2/keyring.json"
    writable = True

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self.saves = 0

    def load(self) -> Keyring:
        return self.keyring

    def stage(self, keyring: Keyring) -> StagedKeyring:
        """Staged, put in place by ``publish`` (once the change committed)."""
        return StagedKeyring(lambda: self.save(keyring), lambda: None)

    def locked(self) -> AbstractContextManager[None]:
        return nullcontext()

    def save(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self.saves += 1


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bound-template") / "uid2.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def store(tmp_path: Path, migrated: Path) -> Iterator[SqlStore]:
    path = tmp_path / "uid2.db"
    shutil.copyfile(migrated, path)
    opened = open_store(f"sqlite:///{path}")
    try:
        yield opened
    finally:
        opened.close()


def _stored(store: SqlStore) -> tuple[object, ...]:
    with store.read() as rx:
        return (
            store.change_seq(),
            len(rx.audit.list_events()),
            rx.deployment.highest_kek_version(),
            dict(rx.deployment.kek_check_values()),
        )


@pytest.mark.parametrize("activate", [True, False])
def test_add_version_past_the_highest_is_refused_changing_nothing(
    store: SqlStore, activate: bool
) -> None:
    holder = MemoryKeyring(TOP)
    random = CountingRandom()
    rotation = KeyringRotationService(store, holder, FixedClock(), random)
    before = _stored(store)
    with pytest.raises(KeyringError) as refused:
        rotation.add_version(ACTOR, activate=activate)
    assert str(refused.value) == NONE_LEFT
    assert (holder.keyring, holder.saves, random.draws) == (TOP, 0, 0)
    assert _stored(store) == before


def test_add_version_is_refused_when_the_store_reserved_the_highest(store: SqlStore) -> None:
    """Another keyring file on the store was given the last number: this one gets none."""
    with store.transaction() as tx:
        tx.deployment.reserve_kek_version(MAX_KEK_VERSION)
    one = Keyring({1: KEK_A}, 1, PEPPER)
    holder = MemoryKeyring(one)
    rotation = KeyringRotationService(store, holder, FixedClock(), os.urandom)
    before = _stored(store)
    with pytest.raises(KeyringError) as refused:
        rotation.add_version(ACTOR)
    assert str(refused.value) == NONE_LEFT
    assert (holder.keyring, holder.saves) == (one, 0)
    assert _stored(store) == before


def test_add_version_gives_out_the_last_number_in_a_file_that_reads_back(store: SqlStore) -> None:
    below = Keyring({MAX_KEK_VERSION - 1: KEK_A}, MAX_KEK_VERSION - 1, PEPPER)
    holder = MemoryKeyring(below)
    rotation = KeyringRotationService(store, holder, FixedClock(), os.urandom)
    assert rotation.add_version(ACTOR).version == MAX_KEK_VERSION
    assert Keyring.from_json(holder.keyring.to_json()) == holder.keyring
    with pytest.raises(KeyringError, match="No key-encryption key version can be added"):
        rotation.add_version(ACTOR, activate=False)
    assert holder.saves == 1
