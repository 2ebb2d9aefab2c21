"""A keyring file whose active version another instance dropped seals nothing (every backend).

Two data directories share one database, each with its own keyring file, both at version 1. The
first adds version 2, re-seals everything under it and drops version 1: the store records the
drop. The second file, never replaced by the first's, still seals under version 1, which no
up-to-date instance can open: every write through it is refused (``keyring_invalid``) before
anything is sealed, changing nothing, and so is activating a dropped version. Once the first's
file is copied over, writes go on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_data_dir import DataDir

from uid2_operator.errors import StoreError
from uid2_operator.storage import open_store

DROPPED = (
    "This keyring's active key-encryption key version 1 was dropped from the keyring of another "
    "instance of this database: copy that instance's keyring file here (over this one), then "
    "run the command again"
)


def _state(url: str) -> tuple[object, ...]:
    store = open_store(url)
    try:
        with store.read() as rx:
            return (store.change_seq(), rx.deployment.dropped_kek_versions())
    finally:
        store.close()


@pytest.fixture
def stale(tmp_path: Path, store_url: str) -> tuple[DataDir, DataDir, int]:
    current = DataDir(tmp_path / "a", store_url)
    stale = DataDir(tmp_path / "b", store_url)
    current.ok("init")
    stale.path.mkdir(mode=0o700)
    shutil.copy2(current.keyring_path, stale.keyring_path)
    stale.ok("init")
    site = current.ok("participant", "create", "--name", "Pub", "--type", "publisher",
                      "--roles", "GENERATOR")["site_id"]  # fmt: skip
    assert current.ok("keyring", "add-version")["version"] == 2
    current.ok("keyring", "reseal")
    current.ok("keyring", "drop-version", "1")
    return current, stale, site


def test_a_write_through_a_file_whose_active_version_was_dropped_is_refused(
    stale: tuple[DataDir, DataDir, int], store_url: str
) -> None:
    current, behind, site = stale
    assert _state(store_url)[1] == frozenset({1})
    before = _state(store_url)
    for args in (
        ("key", "create", "--site-id", str(site), "--name", "k", "--roles", "GENERATOR"),
        ("keys", "rotate"),
        ("keyring", "reseal"),
    ):
        refused = behind.run(*args, status=1)
        assert refused.stderr == f"Error: {DROPPED}\n"
        assert json.loads(behind.run(*args, "--json", status=1).stdout)["error"] == {
            "code": "keyring_invalid",
            "message": DROPPED,
        }
    assert _state(store_url) == before

    shutil.copy2(current.keyring_path, behind.keyring_path)
    created = behind.ok(
        "key", "create", "--site-id", str(site), "--name", "k", "--roles", "GENERATOR"
    )
    assert created["key_id"]
    assert current.ok("key", "show", created["key_id"])["state"] == "active"


NOT_AGAIN = (
    "Key-encryption key version 1 was dropped from the keyring of another instance of this "
    "database: copy that instance's keyring file here (over this one); the version it has "
    "active is the one to use"
)


def test_a_dropped_version_is_not_activated_again(
    stale: tuple[DataDir, DataDir, int], store_url: str
) -> None:
    current, behind, _ = stale
    behind_ring = json.loads(behind.keyring_path.read_text(encoding="utf-8"))
    assert behind_ring["active_kek_version"] == 1
    before = _state(store_url)
    # The stale file, 1 active: not "already active, nothing changed".
    refused = behind.run("keyring", "activate-version", "1", status=1)
    assert refused.stderr == f"Error: {NOT_AGAIN}\n"
    assert json.loads(behind.keyring_path.read_text(encoding="utf-8")) == behind_ring
    # A file holding both, 2 active (the first's before its drop): 1 may not come back.
    both = json.loads(current.keyring_path.read_text(encoding="utf-8"))
    both["keks"] = {**behind_ring["keks"], **both["keks"]}
    behind.keyring_path.write_text(json.dumps(both), encoding="utf-8")
    refused = behind.run("keyring", "activate-version", "1", status=1)
    assert refused.stderr == f"Error: {NOT_AGAIN}\n"
    assert json.loads(behind.keyring_path.read_text(encoding="utf-8")) == both
    assert _state(store_url) == before


def test_status_says_the_active_version_was_dropped(stale: tuple[DataDir, DataDir, int]) -> None:
    current, behind, _ = stale
    assert behind.ok("keyring", "status")["active_version_dropped"] is True
    assert current.ok("keyring", "status")["active_version_dropped"] is False
    shown = behind.run("keyring", "status", status=0)
    assert (
        "Warning: the active version 1 was dropped from the keyring of another instance"
        in shown.stderr
    )
    assert shown.stdout.rstrip().endswith(
        "The active version 1 was dropped by another instance: copy its keyring file here (over "
        "this one) before anything else."
    )
    assert "keyring reseal" not in shown.stdout


def test_the_store_records_a_dropped_version_once_and_refuses_a_non_version(
    store_url: str,
) -> None:
    store = open_store(store_url)
    try:
        with store.transaction() as tx:
            tx.deployment.record_dropped_kek_version(3, 1_000)
            tx.deployment.record_dropped_kek_version(3, 2_000)  # again: a no-op
        for bad in (0, -1, True):
            refused = pytest.raises(StoreError, match="positive whole number")
            with refused, store.transaction() as tx:
                tx.deployment.record_dropped_kek_version(bad, 1_000)
        with store.read() as rx:
            assert rx.deployment.dropped_kek_versions() == frozenset({3})
    finally:
        store.close()
