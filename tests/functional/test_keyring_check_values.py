"""The database records a check value per key-encryption key version, and refuses a keyring file
holding another key under a version number it knows.

Several data directories share one database, each with its own keyring file. A second file that
holds a version 2 of its own (a key another than the version 2 the first added) used to go
unnoticed until something sealed under it failed to open on the other instance. Now every
command that opens the services, ``serve`` at start-up, ``init`` and every keyring step refuse it
(exit status 1, ``keyring_invalid``), naming the version and what to do, before any write. Copying
the first file over it, as the message says, is enough. ``init`` records the check values of its
keyring, ``keyring add-version`` that of the version it adds, and a database an earlier version
wrote (no check values) gets those of the first keyring used on it: trust on first use.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from typing import Any

import pytest
from cli_harness import Cli, Database, settings_of, state_of
from serve_harness import UID2_OPERATOR, clean_env, served
from shared_database import second_data_directory
from sqlalchemy import delete, select

from uid2_operator.bootstrap import load_keyring, save_keyring
from uid2_operator.domain.sealing import add_kek_version
from uid2_operator.storage import open_store
from uid2_operator.storage import schema as t

pytestmark = pytest.mark.functional

SERVE = ("serve", "--port", "0", "--admin-port", "0")
SERVE_TIMEOUT_S = 60.0
REFUSAL = (
    "Error: This keyring's key-encryption key version 2 is another key than the database's "
    "version 2: copy the keyring file of the instance that added version 2 here (over this "
    "one), then run the command again\n"
)


def _ok(cli: Cli, *args: str) -> Any:
    result = cli("--json", *args)
    assert result.exit_code == 0, (args, result.output)
    return json.loads(result.stdout)


def _first(database: Database) -> tuple[Cli, str]:
    """The first data directory, initialised, with a participant and a key: its site id."""
    cli = Cli(database)
    _ok(cli, "init")
    site = str(_ok(cli, "participant", "create", "--name", "P", "--type", "publisher",
                   "--roles", "GENERATOR")["site_id"])  # fmt: skip
    _ok(cli, "key", "create", "--site-id", site, "--name", "k", "--roles", "GENERATOR")
    return cli, site


def _store_meta(database: Database) -> dict[str, int]:
    """Every ``store_meta`` row: what a refused command must leave as it was."""
    store = open_store(settings_of(database).store_url)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(select(t.store_meta.c.name, t.store_meta.c.value))
            return {name: int(value) for name, value in rows}
    finally:
        store.close()


def _check_values(database: Database) -> dict[int, int]:
    """The check values as rows: each version's, and the pepper's under 0."""
    meta = _store_meta(database)
    prefix = "kek_check_"
    found = {int(n[len(prefix) :]): v for n, v in meta.items() if n.startswith(prefix)}
    if "pepper_check" in meta:
        found[0] = meta["pepper_check"]
    return dict(sorted(found.items()))


def _forget_check_values(database: Database) -> None:
    """What a database an earlier version wrote looks like: no check value rows."""
    store = open_store(settings_of(database).store_url)
    try:
        with store.engine.begin() as conn:
            conn.execute(
                delete(t.store_meta).where(
                    t.store_meta.c.name.like("kek\\_check\\_%", "\\")
                    | (t.store_meta.c.name == "pepper_check")
                )
            )
    finally:
        store.close()
    assert _check_values(database) == {}


def _own_version_2(database: Database) -> None:
    """Give the data directory's keyring file a version 2 of its own, not active: the key
    another file's ``add-version`` put there is not this one."""
    settings = settings_of(database)
    ring = load_keyring(settings)
    stranger = add_kek_version(ring, lambda n: b"\x5a" * n, version=2, activate=False)
    save_keyring(settings, stranger)


def _serve_refused(database: Database) -> subprocess.CompletedProcess[str]:
    """Run ``serve`` on ``database``'s data directory, expecting it to stop by itself."""
    process = subprocess.Popen(  # noqa: S603 (our own command)
        [UID2_OPERATOR, *database.cli_args(), *SERVE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        stdout, stderr = process.communicate(timeout=SERVE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
        pytest.fail(f"serve started instead of refusing the keyring: {stderr}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_init_records_the_check_values_and_add_version_those_of_each_version_it_adds(
    database: Database,
) -> None:
    cli, _ = _first(database)
    settings = settings_of(database)
    assert _check_values(database) == load_keyring(settings).kek_check_values()
    shown = cli("keyring", "status").output + cli("--json", "keyring", "status").output
    for value in _check_values(database).values():  # no secret, but not shown either
        assert str(value) not in shown
        assert f"{value:x}" not in shown

    added = _ok(cli, "keyring", "add-version", "--inactive")
    ring = load_keyring(settings)
    assert (added["version"], ring.versions) == (2, (1, 2))
    assert _check_values(database) == ring.kek_check_values()
    assert _store_meta(database)["kek_version_max"] == 2

    _ok(cli, "keyring", "activate-version", "2")
    _ok(cli, "keyring", "reseal")
    _ok(cli, "keyring", "drop-version", "1")
    assert load_keyring(settings).versions == (2,)
    # A dropped version's value stays: its number never comes back with another key.
    assert _check_values(database) == ring.kek_check_values()


def test_a_keyring_file_holding_another_key_under_a_known_version_is_refused_before_any_write(
    database: Database,
) -> None:
    first, site = _first(database)
    other = second_data_directory(database)  # a copy of the first file, version 1 only
    _ok(first, "keyring", "add-version", "--inactive")
    second = Cli(other)
    # Only lacking a version the database knows is not this check's business.
    assert _ok(second, "keyring", "status")["keyring_versions"] == [1]
    assert _ok(second, "participant", "list") is not None
    _own_version_2(other)
    keyring_file = other.data_dir / "keyring.json"
    content = keyring_file.read_bytes()
    # The keyring's lock file (made empty by the first keyring command) is no write of data.
    lock = ".keyring.json.lock"
    files = sorted(p.name for p in other.data_dir.iterdir() if p.name != lock)
    before, meta = state_of(database), _store_meta(database)

    commands = [
        ["participant", "list"],
        ["participant", "create", "--name", "Q", "--type", "publisher", "--roles", "GENERATOR"],
        ["key", "create", "--site-id", site, "--name", "k2", "--roles", "GENERATOR"],
        ["keys", "rotate"],
        ["init"],
        ["keyring", "status"],
        ["keyring", "add-version", "--inactive"],
        ["keyring", "activate-version", "2"],
        ["keyring", "reseal"],
        ["keyring", "drop-version", "1"],
    ]
    for command in commands:
        refused = second(*command)
        assert refused.exit_code == 1, (command, refused.output)
        assert refused.stderr == REFUSAL, command
        assert refused.stdout == "", command
        as_json = second("--json", *command)
        assert as_json.exit_code == 1, (command, as_json.output)
        assert json.loads(as_json.stdout)["error"]["code"] == "keyring_invalid", command

    assert (state_of(database), _store_meta(database)) == (before, meta)
    assert keyring_file.read_bytes() == content
    assert sorted(p.name for p in other.data_dir.iterdir() if p.name != lock) == files

    stopped = _serve_refused(other)
    assert stopped.returncode == 1, (stopped.stdout, stopped.stderr)
    assert REFUSAL in stopped.stderr, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert "operator API:" not in stopped.stdout  # nothing was bound
    assert (state_of(database), _store_meta(database)) == (before, meta)
    assert keyring_file.read_bytes() == content

    # What the message says: the file of the instance that added version 2, copied here.
    shutil.copyfile(database.data_dir / "keyring.json", keyring_file)
    assert _ok(second, "keyring", "activate-version", "2")["changed"] is True
    assert _ok(second, "keyring", "status")["keyring_versions"] == [1, 2]


def test_an_earlier_versions_database_records_the_first_keyring_used_on_it(
    database: Database,
) -> None:
    """Trust on first use: the first process of this version to open the database records the
    check values of its keyring; from then on another key under those numbers is refused."""
    first, _ = _first(database)
    other = second_data_directory(database)
    _ok(first, "keyring", "add-version", "--inactive")
    _own_version_2(other)
    _forget_check_values(database)

    with served(database):
        recorded = _check_values(database)
    assert recorded == load_keyring(settings_of(database)).kek_check_values()

    refused = Cli(other)("participant", "list")
    assert refused.exit_code == 1, refused.output
    assert refused.stderr == REFUSAL
    assert _check_values(database) == recorded


def test_a_command_records_the_versions_the_database_has_no_value_for(
    database: Database,
) -> None:
    """The versions it lacks, never another one: what was recorded stays as it was."""
    first, _ = _first(database)
    _ok(first, "keyring", "add-version", "--inactive")
    everything = _check_values(database)
    assert everything == load_keyring(settings_of(database)).kek_check_values()
    store = open_store(settings_of(database).store_url)
    try:
        with store.engine.begin() as conn:
            conn.execute(delete(t.store_meta).where(t.store_meta.c.name == "kek_check_2"))
    finally:
        store.close()
    assert list(_check_values(database)) == [0, 1]  # the pepper (0) and version 1
    before = state_of(database)

    _ok(first, "participant", "list")
    assert _check_values(database) == everything
    assert state_of(database) == before  # no change sequence moved, no audit event


def test_add_version_numbers_above_a_version_only_recorded_by_a_process_start(
    database: Database,
) -> None:
    """A version provisioned by hand (say in UID2_KEYRING, which no command can write) is
    recorded by the first command that uses it, never reserved: another file's ``add-version``
    must not hand that number out again with another key."""
    first, _ = _first(database)
    other = second_data_directory(database)
    _own_version_2(other)  # the hand-provisioned version 2, not active
    assert _ok(Cli(other), "participant", "list") is not None
    assert list(_check_values(database)) == [0, 1, 2]
    assert "kek_version_max" not in _store_meta(database)

    added = _ok(first, "keyring", "add-version", "--inactive")
    assert added["version"] == 3
    ring = load_keyring(settings_of(database))
    assert _check_values(database) == {
        0: ring.kek_check_values()[0],
        1: ring.kek_check_values()[1],
        2: load_keyring(settings_of(other)).kek_check_values()[2],
        3: ring.kek_check_values()[3],
    }
    assert _ok(first, "keyring", "status")["keyring_versions"] == [1, 3]
