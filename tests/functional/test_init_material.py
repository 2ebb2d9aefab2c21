"""``init`` creates the encryption material ``serve`` needs, with the configured bucket count."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cli_harness import Cli, Database

from uid2_operator.bootstrap import open_services
from uid2_operator.domain.keysets import site_default_keyset
from uid2_operator.settings import Settings
from uid2_operator.wire.keys import MASTER_KEYSET_ID

pytestmark = pytest.mark.functional

REFRESH_KEYSET_ID = -2
FALLBACK_SITE_ID = 2


def _settings(database: Database) -> Settings:
    return Settings.from_env({}, data_dir=str(database.data_dir), database_url=database.url)


def test_init_creates_keysets_keys_and_salts(database: Database) -> None:
    cli = Cli(database)
    result = cli("init", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["material_created"] is True
    assert document["salt_buckets"] == 1 << 16
    opened = open_services(_settings(database))
    try:
        with opened.store.read() as tx:
            keysets = tx.keysets.list_all()
            keys = tx.encryption_keys.list_all()
            header = tx.salts.header()
            chunks = list(tx.salts.iter_chunks())
        loaded = opened.material.load_material()
    finally:
        opened.close()
    ids = {k.keyset_id for k in keysets}
    assert {MASTER_KEYSET_ID, REFRESH_KEYSET_ID} <= ids
    assert site_default_keyset(keysets, FALLBACK_SITE_ID) is not None
    assert {k.keyset_id for k in keys} == ids  # every keyset has a key
    assert header is not None
    assert header.bucket_count == 1 << 16
    assert chunks
    assert loaded.salts.first_level_salt
    # A rerun creates nothing more.
    again = json.loads(cli("init", "--json").stdout)
    assert again["material_created"] is False


def test_material_commands_work_right_after_init(database: Database) -> None:
    cli = Cli(database)
    assert cli("init").exit_code == 0
    rotated = cli("--json", "salts", "rotate", "--fraction", "0.5")
    assert rotated.exit_code == 0, rotated.output
    assert json.loads(rotated.stdout)["bucket_count"] == 1 << 16
    added = cli("--json", "optout", "add", "--email", "someone@example.com")
    assert added.exit_code == 0, added.output


def test_the_salt_bucket_count_is_a_setting_fixed_at_creation(tmp_path: Path) -> None:
    cli = Cli(Database("sqlite", tmp_path / "data", None))
    first = cli("init", "--json", env={"UID2_SALT_BUCKETS": "1024"})
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["salt_buckets"] == 1024
    changed = cli("init", "--json", env={"UID2_SALT_BUCKETS": "4096"})
    assert changed.exit_code == 2
    message = json.loads(changed.stdout)["error"]["message"]
    assert "created with 1024 buckets" in message
    assert "set it back to 1024" in message
    same = cli("init", "--json", env={"UID2_SALT_BUCKETS": "1024"})
    assert same.exit_code == 0, same.output


@pytest.mark.parametrize("value", ["1000", "0", "2097152", "many", "-4"])
def test_a_bad_salt_bucket_count_is_refused(tmp_path: Path, value: str) -> None:
    cli = Cli(Database("sqlite", tmp_path / "data", None))
    result = cli("init", env={"UID2_SALT_BUCKETS": value})
    assert result.exit_code != 0
    assert "UID2_SALT_BUCKETS" in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "data" / "uid2.db").exists()


def test_init_keeps_the_data_directory_and_the_database_file_owner_only(tmp_path: Path) -> None:
    """Whatever the umask: the directory 0700, the SQLite file and its journals 0600."""
    database = Database("sqlite", tmp_path / "data", None)
    old = os.umask(0)
    try:
        result = Cli(database)("init")
        assert result.exit_code == 0, result.output
        made = Cli(database)("participant", "create", "--name", "P", "--type", "publisher",
                             "--roles", "GENERATOR")  # fmt: skip
        assert made.exit_code == 0, made.output
    finally:
        os.umask(old)
    assert stat.S_IMODE(database.data_dir.stat().st_mode) == 0o700
    files = [p for p in database.data_dir.iterdir() if p.name.startswith("uid2.db")]
    assert database.sqlite_path in files
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == dict.fromkeys(
        (p.name for p in files), 0o600
    )


@pytest.mark.parametrize("name", ["a?b", "p%41x", "h#x", "sp ace", "ü"])
def test_init_keeps_the_database_in_a_data_directory_of_any_name(tmp_path: Path, name: str) -> None:
    """The path goes into a URL: a '?', '#' or '%' in it must not move the database elsewhere."""
    database = Database("sqlite", tmp_path / name, None)
    result = Cli(database)("init")
    assert result.exit_code == 0, result.output
    assert database.sqlite_path.stat().st_size > 0
    assert stat.S_IMODE(database.sqlite_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_sqlite_database_named_by_url_is_created_owner_only(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "uid2.db"
    target.parent.mkdir()
    database = Database("sqlite", tmp_path / "data", f"sqlite:///{target}")
    old = os.umask(0o022)
    try:
        result = Cli(database)("init")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
