"""``keyring add-version`` refuses a keyring file that is behind the store (every backend).

Two data directories share one database, each with its own keyring file. When the first file
gains a version and seals an item under it, the second file lacks a version the store names:
another keyring file is ahead of it. ``activate-version`` and ``reseal`` already refuse such a
file; ``add-version`` does too, active or ``--inactive``, with the same error and exit status,
writing nothing (neither the keyring file nor the database). Otherwise the second file would
seal under a version the first cannot open, or, once copied over the others as the staged
rotation says, take from them the version the store's items are sealed under. A keyring whose
versions do not overlap the store's at all is refused alike, and its check values are not
recorded. Once the file that is ahead is copied over, ``add-version`` goes on as usual.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_data_dir import DataDir

from uid2_operator.domain.sealing import Keyring
from uid2_operator.storage import open_store

BEHIND = (
    "Error: Items are sealed under key-encryption key versions the keyring lacks (version 2: "
    "1 item (client_secrets 1)), so another keyring file is ahead of this one; copy it over "
    "this one, then add the version\n"
)


@dataclass(frozen=True)
class Pair:
    ahead: DataDir
    behind: DataDir
    url: str


@pytest.fixture
def pair(tmp_path: Path, store_url: str) -> Pair:
    """Both data directories initialised with one keyring (version 1); then the first adds
    version 2, active at once, and seals a client secret under it."""
    ahead = DataDir(tmp_path / "a", store_url)
    behind = DataDir(tmp_path / "b", store_url)
    ahead.ok("init")
    behind.path.mkdir(mode=0o700)
    shutil.copy2(ahead.keyring_path, behind.keyring_path)
    behind.ok("init")
    assert ahead.ok("keyring", "add-version")["version"] == 2
    site = ahead.ok("participant", "create", "--name", "Pub", "--type", "publisher",
                    "--roles", "GENERATOR")["site_id"]  # fmt: skip
    ahead.ok("key", "create", "--site-id", str(site), "--name", "k", "--roles", "GENERATOR")
    return Pair(ahead, behind, store_url)


def _stored(url: str) -> tuple[object, ...]:
    """What add-version writes to the database: the change sequence, the audit trail, the
    highest version given out and the recorded check values."""
    store = open_store(url)
    try:
        with store.read() as rx:
            return (
                store.change_seq(),
                [(e.seq, e.action) for e in rx.audit.list_events()],
                rx.deployment.highest_kek_version(),
                dict(rx.deployment.kek_check_values()),
            )
    finally:
        store.close()


def _check_values(url: str) -> dict[int, int]:
    store = open_store(url)
    try:
        with store.read() as rx:
            return dict(rx.deployment.kek_check_values())
    finally:
        store.close()


@pytest.mark.parametrize("flags", [(), ("--inactive",)], ids=["active", "inactive"])
def test_add_version_refuses_a_keyring_file_behind_the_store(
    pair: Pair, flags: tuple[str, ...]
) -> None:
    behind = pair.behind
    content, stored = behind.keyring_path.read_bytes(), _stored(pair.url)

    refused = behind.run("keyring", "add-version", *flags, status=1)
    assert (refused.stdout, refused.stderr) == ("", BEHIND)
    as_json = behind.run("keyring", "add-version", *flags, "--json", status=1)
    assert json.loads(as_json.stdout)["error"]["code"] == "keyring_invalid"

    assert behind.keyring_path.read_bytes() == content
    assert _stored(pair.url) == stored


def test_the_file_that_is_ahead_copied_over_lets_add_version_go_on(pair: Pair) -> None:
    behind = pair.behind
    behind.run("keyring", "add-version", status=1)
    shutil.copy2(pair.ahead.keyring_path, behind.keyring_path)
    added = behind.ok("keyring", "add-version", "--inactive")
    assert (added["version"], added["active_version"], added["keyring_versions"]) == (
        3,
        2,
        [1, 2, 3],
    )


def test_a_keyring_sharing_no_version_with_the_store_is_refused_recording_nothing(
    pair: Pair,
) -> None:
    behind = pair.behind
    original = Keyring.from_json(behind.keyring_path.read_bytes())
    # Versions 7, 8 and 9, none of which the store knows (a keyring file from elsewhere).
    stranger = Keyring(
        {7: bytes(range(32)), 8: bytes(range(1, 33)), 9: bytes(range(2, 34))},
        8,
        original.pepper,
        development=original.development,
    )
    behind.keyring_path.write_text(stranger.to_json(), encoding="utf-8")
    content, stored = behind.keyring_path.read_bytes(), _stored(pair.url)

    for flags in ((), ("--inactive",)):
        refused = behind.run("keyring", "add-version", *flags, status=1)
        assert refused.stderr.startswith(
            "Error: Items are sealed under key-encryption key versions the keyring lacks "
            "(version 1: "
        )
        assert "; version 2: 1 item (client_secrets 1)), so another keyring file" in refused.stderr
    assert behind.keyring_path.read_bytes() == content
    assert _stored(pair.url) == stored
    assert sorted(_check_values(pair.url)) == [0, 1, 2]  # the pepper, versions 1 and 2
