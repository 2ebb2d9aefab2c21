"""Key-encryption key version numbers are reserved in the store: two keyring files on one
database never get the same version number with different keys.

Two data directories share one database, each with its own copy of the keyring file. A version
added inactive seals nothing, so numbering it from the keyring file and the store's sealed items
alone gave both files version 2, each with its own key; once both were activated and one
re-sealed, the other's ``serve`` could not open the salt table. The store now records the highest
version any file was given, so the second file's version is 3; activating 2 on the file that
lacks it is refused, and once the first file seals under 2 the second cannot activate 3 until it
holds 2. A database from an earlier version records nothing: the file and the sealed items still
count.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_harness import BACKENDS, Cli, Database, database_for
from click.testing import Result
from sqlalchemy import delete

from uid2_operator.bootstrap import load_keyring
from uid2_operator.domain.sealing import Keyring
from uid2_operator.settings import Settings
from uid2_operator.storage import open_store
from uid2_operator.storage import schema as t

pytestmark = pytest.mark.functional

ENV = {"UID2_SALT_BUCKETS": "1024"}


@pytest.fixture(params=BACKENDS)
def first(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cli]:
    with database_for(request.param, tmp_path) as db:
        yield Cli(db)


def run(cli: Cli, *args: str, status: int = 0) -> Result:
    result = cli(*args, env=dict(ENV))
    assert result.exit_code == status, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.output
    return result


def ok(cli: Cli, *args: str) -> Any:
    return json.loads(run(cli, *args, "--json").stdout)


def _settings(db: Database) -> Settings:
    return Settings.from_env(ENV, data_dir=str(db.data_dir), database_url=db.url)


def _keyring(cli: Cli) -> Keyring:
    return load_keyring(_settings(cli.database))


def _initialised(first: Cli) -> int:
    """``init`` and one publisher with one key: the site id."""
    ok(first, "init")
    site = ok(first, "participant", "create", "--name", "Pub", "--type", "publisher",
              "--roles", "GENERATOR")["site_id"]  # fmt: skip
    _create_key(first, int(site), "first")
    return int(site)


def _create_key(cli: Cli, site: int, name: str) -> None:
    ok(cli, "key", "create", "--site-id", str(site), "--name", name, "--roles", "GENERATOR")


def _second(first: Cli) -> Cli:
    """Another data directory on the same database, with its own copy of the keyring file."""
    db = first.database
    shared_url = db.url or f"sqlite:///{db.sqlite_path}"
    other = Database(db.backend, db.data_dir.with_name("second"), shared_url, db.schema)
    other.data_dir.mkdir(mode=0o700)
    keyring = other.data_dir / "keyring.json"
    shutil.copyfile(db.data_dir / "keyring.json", keyring)
    keyring.chmod(0o600)
    second = Cli(other)
    assert ok(second, "init")["admin_token"] is None  # the same database, already set up
    return second


def _forget_reservation(cli: Cli) -> None:
    """What a database an earlier version rotated looks like: no reservation row."""
    store = open_store(_settings(cli.database).store_url)
    try:
        with store.engine.begin() as conn:
            conn.execute(delete(t.store_meta).where(t.store_meta.c.name == t.KEK_VERSION_MAX))
    finally:
        store.close()


def test_two_keyring_files_adding_inactive_versions_get_different_numbers(first: Cli) -> None:
    site = _initialised(first)
    second = _second(first)

    assert ok(first, "keyring", "add-version", "--inactive")["version"] == 2
    added = ok(second, "keyring", "add-version", "--inactive")
    assert (added["version"], added["active_version"], added["keyring_versions"]) == (
        3,
        1,
        [1, 3],
    )
    one, other = _keyring(first), _keyring(second)
    assert (one.versions, other.versions) == ((1, 2), (1, 3))
    assert one.kek(1) == other.kek(1)

    refused = run(second, "keyring", "activate-version", "2", status=2)
    assert refused.stderr == (
        "Error: The keyring has no key-encryption key version 2 (it holds 1, 3); copy the "
        "keyring file that holds it here\n"
    )
    assert _keyring(second) == other

    # The first file goes ahead and seals under 2: the second cannot activate 3 until it holds 2.
    assert ok(first, "keyring", "activate-version", "2")["changed"] is True
    _create_key(first, site, "sealed under 2")
    behind = run(second, "keyring", "activate-version", "3", status=1)
    assert behind.stderr == (
        "Error: Items are sealed under key-encryption key versions the keyring lacks (version 2: "
        "1 item (client_secrets 1)), so another keyring file is ahead of this one; copy it over "
        "this one, then activate\n"
    )
    assert _keyring(second) == other
    assert ok(first, "keyring", "add-version", "--inactive")["version"] == 4


def test_a_dropped_version_number_is_not_given_out_again(first: Cli) -> None:
    _initialised(first)
    assert ok(first, "keyring", "add-version", "--inactive")["version"] == 2
    assert ok(first, "keyring", "drop-version", "2")["keyring_versions"] == [1]
    assert ok(first, "keyring", "add-version", "--inactive")["version"] == 3


def test_a_database_without_the_reservation_numbers_from_the_file_and_the_store(
    first: Cli,
) -> None:
    site = _initialised(first)
    second = _second(first)
    ok(first, "keyring", "add-version")  # version 2, active at once
    _create_key(first, site, "sealed under 2")
    _forget_reservation(first)
    # The second file holds only version 1 while items are sealed under 2: it is behind, and
    # adding to it is refused, changing nothing.
    before = _keyring(second)
    run(second, "keyring", "add-version", "--inactive", status=1)
    assert _keyring(second) == before
    # The first file, which holds 1 and 2, is numbered from the file and the store: 3; then
    # recorded again, so the second file, once it holds what the first does, gets 4.
    assert ok(first, "keyring", "add-version", "--inactive")["version"] == 3
    shutil.copyfile(_settings(first.database).keyring_path, _settings(second.database).keyring_path)
    assert ok(second, "keyring", "add-version", "--inactive")["version"] == 4
