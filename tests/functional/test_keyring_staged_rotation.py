"""Staged KEK rotation: ``keyring add-version --inactive``, the file copied over every other
keyring file, then ``keyring activate-version`` on each, so nothing is sealed under a version some
process cannot open.

Through the command line on every backend: an inactive version is held but nothing is sealed
under it; activating it switches sealing; a missing version, or a keyring file behind another
(the store names a version it lacks), is refused; both commands write the file as the other
keyring commands do. With real ``serve`` processes: one follows a staged rotation of its own file
(health 200 throughout, new keys work); two data directories over one PostgreSQL database, each
with its own keyring file, keep loading snapshots (new keys and revocations reach both) through
the whole rotation; and two data directories sharing one keyring file through UID2_KEYRING_FILE
take every step from that one file.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_harness import BACKENDS, Cli, Database, database_for
from click.testing import Result
from serve_harness import Credential, Prepared, Served, cli, poll, prepare, served

from uid2_operator.bootstrap import KEYRING_CHECK_INTERVAL_S, KEYRING_DEBRIS_AGE_S, load_keyring
from uid2_operator.settings import Settings
from uid2_operator.storage import open_store

pytestmark = pytest.mark.functional

KINDS = ["client_secrets", "encryption_keys", "salt_table", "salt_chunks", "keypairs"]
ENV = {"UID2_SALT_BUCKETS": "1024"}
POLL = {"UID2_POLL_INTERVAL_S": "0.2"}
IN_A_ROW = 20  # consecutive answers on fresh connections
WAIT_S = 60.0  # how long to wait for a condition before failing (not a performance bound)
GENERATE = "/v2/token/generate"
TAKE_UP_S = 2 * KEYRING_CHECK_INTERVAL_S
"""The documented wait between distributing a keyring file and activating the version: every
process following the file has looked at it again by then."""
TODAYS_FIELDS = ["at_ms", "version", "active_version", "keyring_versions", "source"]


# ------------------------------------------------------------------------------- command line


@pytest.fixture(params=BACKENDS)
def cli_run(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cli]:
    with database_for(request.param, tmp_path) as db:
        yield Cli(db)


def run(cli_run: Cli, *args: str, status: int = 0, env: dict[str, str] | None = None) -> Result:
    result = cli_run(*args, env=ENV | (env or {}))
    assert result.exit_code == status, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.output
    return result


def ok(cli_run: Cli, *args: str, env: dict[str, str] | None = None) -> Any:
    return json.loads(run(cli_run, *args, "--json", env=env).stdout)


def _initialised(cli_run: Cli, env: dict[str, str] | None = None) -> int:
    """``init`` and one publisher with one key: the site id."""
    ok(cli_run, "init", env=env)
    site = ok(cli_run, "participant", "create", "--name", "Pub", "--type", "publisher",
              "--roles", "GENERATOR", env=env)["site_id"]  # fmt: skip
    _create_key(cli_run, site, "first", env)
    return int(site)


def _create_key(cli_run: Cli, site: int, name: str, env: dict[str, str] | None = None) -> str:
    created = ok(cli_run, "key", "create", "--site-id", str(site), "--name", name,
                 "--roles", "GENERATOR", env=env)  # fmt: skip
    return str(created["key_id"])


def _secrets_by_version(cli_run: Cli, env: dict[str, str] | None = None) -> dict[int, int]:
    status = ok(cli_run, "keyring", "status", env=env)
    return {v["version"]: v["sealed"]["client_secrets"] for v in status["versions"]}


def _settings(db: Database) -> Settings:
    return Settings.from_env(ENV, data_dir=str(db.data_dir), database_url=db.url)


def _keyring_events(cli_run: Cli) -> list[tuple[str, str, Any, Any]]:
    audit = ok(cli_run, "audit", "list", "--limit", "1000")
    events = audit["events"] if isinstance(audit, dict) else audit
    return [
        (e["action"], e["target_id"], e["before"], e["after"])
        for e in events
        if e["target_type"] == "keyring"
    ]


def test_an_inactive_version_is_held_but_nothing_is_sealed_under_it(cli_run: Cli) -> None:
    site = _initialised(cli_run)
    settings = _settings(cli_run.database)
    before = load_keyring(settings)

    added = run(cli_run, "keyring", "add-version", "--inactive")
    assert added.stdout.splitlines() == [
        "Added key-encryption key version 2, not active: new items are still sealed under "
        "version 1 (versions 1, 2).",
        "Copy this file to every other keyring file: each data directory, on this machine or "
        "another. Running `uid2-operator serve` processes take it up within about a second.",
        "A second after the last copy, run `uid2-operator keyring activate-version 2` on each "
        "keyring file, then `uid2-operator keyring reseal`.",
    ]
    ring = load_keyring(settings)
    assert (ring.versions, ring.active_version, ring.kek(1)) == ((1, 2), 1, before.kek(1))

    _create_key(cli_run, site, "after the add")
    status = ok(cli_run, "keyring", "status")
    assert (status["active_version"], status["keyring_versions"]) == (1, [1, 2])
    assert status["versions"][1] == {
        "version": 2,
        "in_keyring": True,
        "active": False,
        "sealed": dict.fromkeys(KINDS, 0),
        "total": 0,
    }
    assert _secrets_by_version(cli_run) == {1: 2, 2: 0}
    assert status["to_reseal"] == 0
    text = run(cli_run, "keyring", "status").stdout.splitlines()
    assert text[-1] == "Every item is sealed under the active version 1."

    third = ok(cli_run, "keyring", "add-version", "--inactive")
    assert list(third) == [*TODAYS_FIELDS, "active"]
    assert (third["version"], third["active_version"], third["keyring_versions"]) == (
        3,
        1,
        [1, 2, 3],
    )
    assert third["active"] is False
    assert third["source"] == str(settings.keyring_path.absolute())
    assert _keyring_events(cli_run) == [
        ("keyring.version.add", "2", None, {"kek_version": 2, "active": False}),
        ("keyring.version.add", "3", None, {"kek_version": 3, "active": False}),
    ]


def test_activate_version_switches_sealing_to_it(cli_run: Cli) -> None:
    site = _initialised(cli_run)
    settings = _settings(cli_run.database)
    ok(cli_run, "keyring", "add-version", "--inactive")

    activated = run(cli_run, "keyring", "activate-version", "2")
    assert activated.stdout.splitlines() == [
        "Key-encryption key version 2 is now active, instead of version 1 (versions 1, 2).",
        "Running `uid2-operator serve` processes that read this keyring file seal with version 2 "
        "within about a second. Activate it in every other keyring file too (each data "
        "directory, on this machine or another), or copy this file there; then run "
        "`uid2-operator keyring reseal`.",
    ]
    assert load_keyring(settings).active_version == 2
    _create_key(cli_run, site, "after activation")
    assert _secrets_by_version(cli_run) == {1: 1, 2: 1}
    status = ok(cli_run, "keyring", "status")
    assert status["active_version"] == 2
    assert status["versions"][0]["total"] > 0
    assert status["to_reseal"] == status["versions"][0]["total"]

    again = ok(cli_run, "keyring", "activate-version", "2")
    assert again == {
        "at_ms": again["at_ms"],
        "version": 2,
        "active_version": 2,
        "keyring_versions": [1, 2],
        "source": str(settings.keyring_path.absolute()),
        "active": True,
        "previous_active_version": 2,
        "changed": False,
    }
    assert run(cli_run, "keyring", "activate-version", "2").stdout == (
        "Key-encryption key version 2 is already active (versions 1, 2); nothing changed.\n"
    )
    assert _keyring_events(cli_run) == [
        ("keyring.version.add", "2", None, {"kek_version": 2, "active": False}),
        ("keyring.version.activate", "2", {"active_kek_version": 1}, {"active_kek_version": 2}),
    ]

    ok(cli_run, "keyring", "reseal")
    ok(cli_run, "keyring", "drop-version", "1")
    assert _secrets_by_version(cli_run) == {2: 2}
    assert ok(cli_run, "audit", "verify")["ok"] is True


def test_activate_version_of_a_version_the_file_lacks_is_refused(cli_run: Cli) -> None:
    _initialised(cli_run)
    ok(cli_run, "keyring", "add-version", "--inactive")
    path = _settings(cli_run.database).keyring_path
    content, events = path.read_bytes(), _keyring_events(cli_run)

    refused = run(cli_run, "keyring", "activate-version", "5", status=2)
    assert refused.stdout == ""
    assert refused.stderr == (
        "Error: The keyring has no key-encryption key version 5 (it holds 1, 2); copy the "
        "keyring file that holds it here\n"
    )
    as_json = run(cli_run, "keyring", "activate-version", "5", "--json", status=2)
    assert json.loads(as_json.stdout)["error"]["code"] == "invalid_input"
    missing = run(cli_run, "keyring", "activate-version", status=2)
    assert "Missing argument 'VERSION'" in missing.stderr
    assert (path.read_bytes(), _keyring_events(cli_run)) == (content, events)


def test_activate_version_is_refused_while_another_keyring_file_is_ahead(
    cli_run: Cli, tmp_path: Path
) -> None:
    site = _initialised(cli_run)
    own = _settings(cli_run.database).keyring_path
    other = tmp_path / "other" / "keyring.json"
    other.parent.mkdir(mode=0o700)
    shutil.copyfile(own, other)
    elsewhere = {"UID2_KEYRING_FILE": str(other)}
    assert ok(cli_run, "keyring", "add-version", "--inactive")["version"] == 2
    # Then the other file's version 3 made active at once, and a key sealed under it there.
    assert ok(cli_run, "keyring", "add-version", env=elsewhere)["version"] == 3
    _create_key(cli_run, site, "sealed elsewhere", elsewhere)

    content = own.read_bytes()
    refused = run(cli_run, "keyring", "activate-version", "2", status=1)
    assert refused.stderr == (
        "Error: Items are sealed under key-encryption key versions the keyring lacks (version 3: "
        "1 item (client_secrets 1)), so another keyring file is ahead of this one; copy it over "
        "this one, then activate\n"
    )
    assert own.read_bytes() == content
    assert [e[0] for e in _keyring_events(cli_run)] == ["keyring.version.add"] * 2


def test_both_commands_write_the_file_as_the_other_keyring_commands_do(cli_run: Cli) -> None:
    _initialised(cli_run)
    path = _settings(cli_run.database).keyring_path
    for args in (("add-version", "--inactive"), ("activate-version", "2")):
        debris = path.parent / f".{path.name}.abcd1234.tmp"  # left by a crashed write
        debris.write_text("{}")
        os.utime(debris, (time.time() - KEYRING_DEBRIS_AGE_S - 10,) * 2)
        with path.open("rb") as before:  # held open: its inode cannot be reused meanwhile
            run(cli_run, "keyring", *args)
            # Replaced by a rename, not written in place.
            assert path.stat().st_ino != os.fstat(before.fileno()).st_ino
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert not debris.exists()
        assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert load_keyring(_settings(cli_run.database)).active_version == 2


def test_a_keyring_from_the_environment_is_refused_with_what_to_provision(cli_run: Cli) -> None:
    _initialised(cli_run)
    path = _settings(cli_run.database).keyring_path
    ok(cli_run, "keyring", "add-version", "--inactive")
    env = {"UID2_KEYRING": path.read_text(encoding="utf-8")}
    added = run(cli_run, "keyring", "add-version", "--inactive", env=env, status=2)
    assert added.stderr == (
        "Error: The keyring comes from UID2_KEYRING and cannot be written here: provision "
        "keyring JSON there with version 3 added (32 random bytes, base64) keeping "
        "active_kek_version 1, then restart\n"
    )
    activated = run(cli_run, "keyring", "activate-version", "2", env=env, status=2)
    assert activated.stderr == (
        "Error: The keyring comes from UID2_KEYRING and cannot be written here: provision "
        "keyring JSON there with active_kek_version 2, restart, then run "
        "uid2-operator keyring reseal\n"
    )
    assert ok(cli_run, "keyring", "activate-version", "1", env=env)["changed"] is False


# ------------------------------------------------------------------------------- running serves


def _until(check: Callable[[], bool], what: str) -> None:
    """Wait until ``check`` holds ``IN_A_ROW`` times in a row."""
    assert poll(lambda: all(check() for _ in range(IN_A_ROW)), WAIT_S), f"timed out: {what}"


def _generates(server: Served, cred: Credential) -> bool:
    reply, opened = server.call(GENERATE, {"email": "staged-rotation@example.com"}, cred)
    assert reply.status_code in (200, 401), (reply.status_code, reply.text)
    return opened is not None and opened["status"] == "success"


def _healthy(server: Served) -> bool:
    return server.request("GET", "/ops/healthcheck").status_code == 200


def _admin_key(admin_token: str, site_id: int, server: Served, name: str) -> Credential:
    body = {"site_id": site_id, "name": name, "roles": ["GENERATOR"]}
    response = server.admin("POST", "/keys", admin_token, body)
    assert response.status_code == 201, response.text
    issued = response.json()
    return Credential(issued["key_id"], issued["key"], issued["secret"], site_id)


def _sealed_under(database: Database, key_id: str) -> int:
    """The KEK version the (only) secret of ``key_id`` is sealed under."""
    store = open_store(_settings(database).store_url)
    try:
        with store.read() as rx:
            (sealed,) = rx.secrets.list_for_key(key_id)
            return sealed.kek_version
    finally:
        store.close()


def _copy_keyring(source: Path, target: Path) -> None:
    """Copy a keyring file over another as the documentation says: written beside the target,
    then renamed over it, so a running serve never reads half a file."""
    beside = target.with_name(f"{target.name}.copying")
    shutil.copyfile(source, beside)
    beside.chmod(0o600)
    os.replace(beside, target)


class _HealthWatch:
    """Samples the health check on fresh connections until stopped; keeps every bad answer."""

    def __init__(self, *servers: Served) -> None:
        self._servers = servers
        self._stop = threading.Event()
        self.samples = 0
        self.bad: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for index, server in enumerate(self._servers):
                reply = server.request("GET", "/ops/healthcheck")
                self.samples += 1
                if reply.status_code != 200:
                    self.bad.append(f"serve {index}: {reply.status_code} {reply.text}")
            self._stop.wait(0.05)

    def __enter__(self) -> _HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_a_running_serve_follows_a_staged_rotation_of_its_own_file(tmp_path: Path) -> None:
    with database_for("sqlite", tmp_path) as database:
        prepared = prepare(database)
        token, site = prepared.admin_token, prepared.site_id
        with served(database, workers=2, env=POLL) as running:
            _until(lambda: _generates(running, prepared.key), "the key from before to work")
            with _HealthWatch(running) as watch:
                added = cli(database, "keyring", "add-version", "--inactive")
                assert (added["version"], added["active"]) == (2, False)
                time.sleep(TAKE_UP_S)
                during = _admin_key(token, site, running, "while inactive")
                assert _sealed_under(database, during.key_id) == 1
                _until(lambda: _generates(running, during), "the key made while inactive")

                activated = cli(database, "keyring", "activate-version", "2")
                assert (activated["previous_active_version"], activated["changed"]) == (1, True)
                after = _admin_key(token, site, running, "after activation")
                assert _sealed_under(database, after.key_id) == 2
                _until(lambda: _generates(running, after), "the key made after activation")
                for cred in (prepared.key, during):
                    _until(lambda cred=cred: _generates(running, cred), f"{cred.key_id} to work")
                _until(lambda: _healthy(running), "every worker to be healthy")
            assert watch.samples > 0
            assert watch.bad == []


def _second_directory(first: Database, tmp_path: Path) -> Database:
    """Another data directory over the same PostgreSQL database."""
    directory = tmp_path / "second"
    directory.mkdir(mode=0o700)
    return Database(first.backend, directory, first.url, first.schema)


@pytest.mark.postgres
def test_two_data_directories_keep_loading_snapshots_through_a_staged_rotation(
    tmp_path: Path,
) -> None:
    with database_for("postgresql", tmp_path) as first:
        prepared: Prepared = prepare(first)
        token, site, before = prepared.admin_token, prepared.site_id, prepared.key
        second = _second_directory(first, tmp_path)
        files = [_settings(db).keyring_path for db in (first, second)]
        _copy_keyring(files[0], files[1])
        assert cli(second, "init")["admin_token"] is None  # the same database, already set up
        with (
            served(first, env=POLL) as a,
            served(second, env=POLL) as b,
            _HealthWatch(a, b) as watch,
        ):
            _until(lambda: _generates(b, before), "the key from before to work on the second")

            assert cli(first, "keyring", "add-version", "--inactive")["active"] is False
            _copy_keyring(files[0], files[1])
            time.sleep(TAKE_UP_S)
            for db in (first, second):
                assert cli(db, "keyring", "activate-version", "2")["changed"] is True
            after = _admin_key(token, site, a, "after activation")
            assert _sealed_under(first, after.key_id) == 2
            _until(lambda: _generates(b, after), "the new key to work on the second")
            revoked = a.admin("POST", f"/keys/{before.key_id}/revoke", token, {"reason": "test"})
            assert revoked.status_code in (200, 201), revoked.text
            _until(lambda: not _generates(b, before), "the revocation to reach the second")

            assert cli(first, "keyring", "reseal")["total"] > 0
            assert cli(first, "keyring", "drop-version", "1")["keyring_versions"] == [2]
            _copy_keyring(files[0], files[1])
            _until(lambda: _generates(b, after), "the new key to work on the second, after")
            _until(lambda: _generates(a, after), "the new key to work on the first, after")
            for server in (a, b):
                _until(lambda server=server: _healthy(server), "every serve to be healthy")
        assert watch.samples > 0
        assert watch.bad == []
        assert load_keyring(_settings(second)).versions == (2,)


@pytest.mark.postgres
def test_two_data_directories_can_share_one_keyring_file(tmp_path: Path) -> None:
    with database_for("postgresql", tmp_path) as first:
        second = _second_directory(first, tmp_path)
        shared = tmp_path / "keyring" / "keyring.json"
        env = {"UID2_KEYRING_FILE": str(shared)}
        one, other = Cli(first), Cli(second)
        token = ok(one, "init", env=env)["admin_token"]
        assert ok(other, "init", env=env)["keyring_created"] is False
        assert not _settings(first).keyring_path.exists()
        assert not _settings(second).keyring_path.exists()
        site = int(ok(one, "participant", "create", "--name", "Pub", "--type", "publisher",
                      "--roles", "GENERATOR", env=env)["site_id"])  # fmt: skip
        with (
            served(first, env=ENV | POLL | env) as a,
            served(second, env=ENV | POLL | env) as b,
            _HealthWatch(a, b) as watch,
        ):
            before = _admin_key(token, site, a, "before")
            _until(lambda: _generates(b, before), "the key from before to work on the second")

            assert ok(one, "keyring", "add-version", "--inactive", env=env)["active"] is False
            time.sleep(TAKE_UP_S)
            assert ok(other, "keyring", "activate-version", "2", env=env)["changed"] is True
            after = _admin_key(token, site, a, "after activation")
            assert _sealed_under(first, after.key_id) == 2
            _until(lambda: _generates(b, after), "the new key to work on the second")
            _until(lambda: _generates(a, before), "the key from before to work on the first")
            ok(one, "keyring", "reseal", env=env)
            ok(one, "keyring", "drop-version", "1", env=env)
            _until(lambda: _generates(b, after), "the new key to work on the second, after")
            for server in (a, b):
                _until(lambda server=server: _healthy(server), "every serve to be healthy")
        assert watch.samples > 0
        assert watch.bad == []
        shared_ring = Settings.from_env(env, data_dir=str(first.data_dir))
        assert load_keyring(shared_ring).versions == (2,)
