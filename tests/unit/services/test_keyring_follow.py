"""A long-lived process follows the keyring file (``bootstrap.KeyringFile``): it takes up a new
keyring without a restart, keeps the one it has when the new file cannot be used, and its use
cases and snapshot loads each open and seal with one keyring from start to end."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from service_fixtures import ACTOR

from uid2_operator import bootstrap
from uid2_operator.bootstrap import (
    KEYRING_CHECK_INTERVAL_S,
    KeyringFile,
    Services,
    ensure_keyring,
    follow_keyring,
    keyring_rotation_service,
    load_keyring,
    open_services,
    save_keyring,
    upgrade_database,
)
from uid2_operator.clock import FixedClock
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.sealing import Keyring, add_kek_version, generate_keyring
from uid2_operator.errors import KeyringError, KeyringMissing
from uid2_operator.serve_settings import ServeSettings
from uid2_operator.services.admin import AdminService
from uid2_operator.services.credentials import CredentialService
from uid2_operator.services.sharing import SharingService
from uid2_operator.services.snapshot import Lifetimes
from uid2_operator.services.snapshot_loader import load_snapshot, operator_identity
from uid2_operator.settings import Settings
from uid2_operator.storage import SqlStore
from uid2_operator.web.operator_api.server import build_worker

BUCKETS = "1024"


@dataclass
class Monotonic:
    """A monotonic clock that moves only when told to."""

    at: float = 100.0

    def __call__(self) -> float:
        return self.at

    def pass_interval(self) -> None:
        self.at += KEYRING_CHECK_INTERVAL_S


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(
        {"UID2_DATA_DIR": str(tmp_path / "data"), "UID2_SALT_BUCKETS": BUCKETS, **env}
    )


def _replace_file(path: Path, content: str) -> None:
    """Replace the file the way an editor or a deployment tool would: a new file renamed over."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(content, encoding="utf-8")
    os.replace(temporary, path)


def _secret_forms(keyring: Keyring) -> list[str]:
    raw = [keyring.kek(v) for v in keyring.versions] + [keyring.pepper]
    return [form for r in raw for form in (base64.b64encode(r).decode(), r.hex())]


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture
def monotonic() -> Monotonic:
    return Monotonic()


# ------------------------------------------------------------------------------ the file source


def test_the_first_read_refuses_a_missing_keyring_as_load_keyring_does(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with pytest.raises(KeyringMissing):
        KeyringFile(settings)


@pytest.mark.parametrize(
    ("environment", "remedy"),
    [
        ("local", "name the right file with UID2_KEYRING_FILE, or run init to create one"),
        ("prod", "prod needs a provisioned one there"),
    ],
)
def test_a_missing_keyring_file_is_named(tmp_path: Path, environment: str, remedy: str) -> None:
    missing = tmp_path / "nowhere" / "keyring.json"
    settings = _settings(tmp_path, UID2_KEYRING_FILE=str(missing), UID2_ENVIRONMENT=environment)
    for read in (load_keyring, KeyringFile):
        with pytest.raises(KeyringMissing) as refused:
            read(settings)
        assert str(refused.value).startswith(
            f"No keyring: the keyring file {missing} does not exist; {remedy}"
        )


def test_an_edit_in_place_is_taken_up_too(tmp_path: Path, monotonic: Monotonic) -> None:
    """The same inode, new content (an editor that writes in place): times and size moved."""
    settings = _settings(tmp_path)
    first = ensure_keyring(settings)
    source = KeyringFile(settings, monotonic=monotonic)
    inode = settings.keyring_path.stat().st_ino
    second = add_kek_version(first, os.urandom)
    with settings.keyring_path.open("w", encoding="utf-8") as handle:
        handle.write(second.to_json())
    assert settings.keyring_path.stat().st_ino == inode
    monotonic.pass_interval()
    assert source.current() == second


def test_the_new_keyring_is_used_once_the_file_is_replaced(
    tmp_path: Path, monotonic: Monotonic
) -> None:
    settings = _settings(tmp_path)
    first = ensure_keyring(settings)
    source = KeyringFile(settings, monotonic=monotonic)
    assert source.current() == first

    second = add_kek_version(first, os.urandom)
    save_keyring(settings, second)
    assert source.current() == first  # looked at the file less than an interval ago
    monotonic.pass_interval()
    assert source.current() == second
    assert (source.current().active_version, source.current().versions) == (2, (1, 2))
    shown = repr(source)
    assert "active_version=2, versions=[1, 2]" in shown
    assert [form for form in _secret_forms(second) if form in shown] == []

    # A writer asks for the latest keyring: the file is looked at whatever the interval.
    third = add_kek_version(second, os.urandom)
    save_keyring(settings, third)
    assert source.current() == second
    assert source.latest({}) == third
    assert source.current() == third
    fixed = load_keyring(settings)
    assert fixed.latest({}) is fixed  # a keyring is a source that never changes


def test_an_unchanged_file_is_not_read_again_and_looked_at_once_an_interval(
    tmp_path: Path, monotonic: Monotonic, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    first = ensure_keyring(settings)
    source = KeyringFile(settings, monotonic=monotonic)
    reads: list[Path] = []
    looks: list[str] = []
    real_read, real_stat = bootstrap._read_keyring_file, os.stat

    def read(path: Path, environment: Environment) -> tuple[Keyring, tuple[int, ...]]:
        reads.append(path)
        return real_read(path, environment)

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(path) == str(source.path):
            looks.append(str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(bootstrap, "_read_keyring_file", read)
    monkeypatch.setattr(bootstrap.os, "stat", stat)
    held = source.current()
    assert held == first
    for _ in range(1000):  # a burst of use cases within one interval
        assert source.current() is held
    assert looks == []
    for _ in range(3):
        monotonic.pass_interval()
        assert source.current() is held
    assert (len(looks), reads) == (3, [])

    save_keyring(settings, add_kek_version(first, os.urandom))
    monotonic.pass_interval()
    assert source.current().active_version == 2
    assert reads == [source.path]


def test_garbage_keeps_the_previous_keyring_logs_once_and_the_next_good_write_is_used(
    tmp_path: Path, monotonic: Monotonic, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = _settings(tmp_path)
    first = ensure_keyring(settings)
    source = KeyringFile(settings, monotonic=monotonic)
    second = add_kek_version(first, os.urandom)
    # cut short: the keyring's JSON with its end missing, every key still in it
    _replace_file(settings.keyring_path, second.to_json()[:-40])
    for _ in range(3):
        monotonic.pass_interval()
        assert source.current() == first
    errors = _errors(caplog)
    assert errors == [
        f"the keyring file {source.path} changed but cannot be used (The keyring is not valid "
        "JSON); still using the keyring read before (active version 1)"
    ]

    _replace_file(settings.keyring_path, "[]")  # another bad write is reported too
    monotonic.pass_interval()
    assert source.current() == first
    assert len(_errors(caplog)) == 2
    assert "must be a JSON object" in _errors(caplog)[1]

    save_keyring(settings, second)
    monotonic.pass_interval()
    assert source.current() == second
    assert any("keyring reloaded" in r.getMessage() for r in caplog.records)
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert [form for form in _secret_forms(second) if form in logged] == []


def test_a_removed_file_keeps_the_previous_keyring_until_it_is_back(
    tmp_path: Path, monotonic: Monotonic, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path)
    first = ensure_keyring(settings)
    source = KeyringFile(settings, monotonic=monotonic)
    settings.keyring_path.unlink()
    monotonic.pass_interval()
    assert source.current() == first
    monotonic.pass_interval()
    assert source.current() == first
    assert len(_errors(caplog)) == 1
    assert "No keyring" in _errors(caplog)[0]

    second = add_kek_version(first, os.urandom)
    _replace_file(settings.keyring_path, second.to_json())
    monotonic.pass_interval()
    assert source.current() == second


@pytest.mark.parametrize(
    ("unusable", "logged"),
    [
        (lambda path: path.write_text('{"active_kek_version": 1,', encoding="utf-8"), "not valid"),
        (lambda path: path.unlink(), "No keyring"),
    ],
    ids=["cut-short", "removed"],
)
def test_a_process_started_while_the_file_cannot_be_used_starts_with_its_fallback(
    tmp_path: Path,
    monotonic: Monotonic,
    caplog: pytest.LogCaptureFixture,
    unusable: Callable[[Path], object],
    logged: str,
) -> None:
    # A worker that serve restarts while the file is being replaced: it serves on with the
    # keyring serve holds, logs the file once, and follows the file from there.
    settings = _settings(tmp_path)
    first = ensure_keyring(settings)
    unusable(settings.keyring_path)
    with pytest.raises(KeyringError if logged == "not valid" else KeyringMissing):
        KeyringFile(settings, monotonic=monotonic)  # with no fallback: refused, as ever
    source = KeyringFile(settings, monotonic=monotonic, fallback=first)
    for _ in range(3):
        assert source.current() == first
        monotonic.pass_interval()
    errors = _errors(caplog)
    assert len(errors) == 1
    assert logged in errors[0]
    assert errors[0].endswith(
        "using the keyring the serving process holds (active version 1) until the file can be used"
    )
    assert [form for form in _secret_forms(first) if form in caplog.text] == []

    second = add_kek_version(first, os.urandom)
    save_keyring(settings, second)
    monotonic.pass_interval()
    assert source.current() == second


def test_a_fallback_is_held_to_the_environment_rules(tmp_path: Path) -> None:
    settings = _settings(tmp_path, UID2_ENVIRONMENT="prod")
    development = generate_keyring(os.urandom, development=True)
    with pytest.raises(KeyringError, match="development or placeholder keyring"):
        KeyringFile(settings, fallback=development)  # no file in prod: the fallback is checked


def test_a_usable_file_is_read_whatever_the_fallback(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    first = ensure_keyring(settings)
    source = KeyringFile(settings, fallback=add_kek_version(first, os.urandom))
    assert source.current() == first


def test_prod_keeps_its_keyring_when_the_file_becomes_a_development_keyring(
    tmp_path: Path, monotonic: Monotonic, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path, UID2_ENVIRONMENT="prod")
    settings.data_dir.mkdir(parents=True)
    provisioned = generate_keyring(os.urandom)
    save_keyring(settings, provisioned)
    source = KeyringFile(settings, monotonic=monotonic)

    development = add_kek_version(generate_keyring(os.urandom, development=True), os.urandom)
    _replace_file(settings.keyring_path, development.to_json())
    monotonic.pass_interval()
    assert source.current() == provisioned
    errors = _errors(caplog)
    assert len(errors) == 1
    assert "development or placeholder keyring" in errors[0]
    assert [form for form in _secret_forms(development) if form in caplog.text] == []

    rotated = add_kek_version(provisioned, os.urandom)
    save_keyring(settings, rotated)
    monotonic.pass_interval()
    assert source.current() == rotated


def test_a_keyring_from_the_environment_stays_fixed(tmp_path: Path, monotonic: Monotonic) -> None:
    given = generate_keyring(os.urandom)
    settings = _settings(tmp_path, UID2_KEYRING=given.to_json())
    settings.data_dir.mkdir(parents=True)
    other = generate_keyring(os.urandom)
    settings.keyring_path.write_text(other.to_json(), encoding="utf-8")
    source = follow_keyring(settings, monotonic=monotonic)
    assert source.current() == given
    _replace_file(settings.keyring_path, add_kek_version(other, os.urandom).to_json())
    monotonic.pass_interval()
    assert source.current() == given
    assert isinstance(source, Keyring)


# ------------------------------------------------------------------------------ use cases


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Settings, Services]]:
    """A data directory as ``init`` leaves it, with one participant; services as a separate
    command opens them."""
    settings = _settings(tmp_path)
    ensure_keyring(settings)
    upgrade_database(settings)
    services = open_services(settings)
    services.material.initialise()
    try:
        yield settings, services
    finally:
        services.close()


def _site(services: Services) -> int:
    return services.credentials.create_participant(
        ACTOR, name="Publisher", type="publisher", roles=["GENERATOR"]
    ).site_id


def _following(settings: Settings, store: SqlStore, monotonic: Monotonic) -> CredentialService:
    """Credential use cases over the keyring file, followed as a serve process follows it."""
    return CredentialService(
        store,
        KeyringFile(settings, monotonic=monotonic),
        Environment.LOCAL,
        FixedClock(),
        os.urandom,
    )


def _sealed_versions(store: SqlStore, key_id: str) -> list[int]:
    with store.read() as tx:
        return [s.kek_version for s in tx.secrets.list_for_key(key_id)]


def test_a_credential_service_seals_under_the_added_version_without_being_rebuilt(
    served: tuple[Settings, Services], monotonic: Monotonic
) -> None:
    settings, services = served
    site = _site(services)
    store = services.store
    assert isinstance(store, SqlStore)
    follows = _following(settings, store, monotonic)
    before = follows.create_key(ACTOR, site_id=site, name="before", roles=["GENERATOR"])
    assert _sealed_versions(store, before.key_id) == [1]

    save_keyring(settings, add_kek_version(load_keyring(settings), os.urandom))
    monotonic.pass_interval()
    after = follows.create_key(ACTOR, site_id=site, name="after", roles=["GENERATOR"])
    assert _sealed_versions(store, after.key_id) == [2]
    for issued in (before, after):
        resolved = follows.resolve_client(issued.key)
        assert resolved.secrets == (base64.b64decode(issued.secret),)


class _Changing:
    """A source that gives ``first`` once and ``then`` on every later call: a use case that
    asked twice would mix two keyrings."""

    def __init__(self, first: Keyring, then: Keyring) -> None:
        self._rings = [first]
        self._then = then

    def current(self) -> Keyring:
        return self._rings.pop() if self._rings else self._then

    def latest(self, recorded: Mapping[int, int]) -> Keyring:
        return self.current()


def test_a_use_case_seals_and_hashes_with_one_keyring(
    served: tuple[Settings, Services],
) -> None:
    settings, services = served
    site = _site(services)
    ring = load_keyring(settings)
    stranger = generate_keyring(os.urandom, development=True)  # same version 1, other bytes
    mixing = CredentialService(
        services.store, _Changing(ring, stranger), Environment.LOCAL, FixedClock(), os.urandom
    )
    issued = mixing.create_key(ACTOR, site_id=site, name="one ring", roles=["GENERATOR"])
    resolved = services.credentials.resolve_client(issued.key)  # over ``ring`` alone
    assert resolved.secrets == (base64.b64decode(issued.secret),)


def test_a_snapshot_load_opens_everything_with_one_keyring(
    served: tuple[Settings, Services],
) -> None:
    settings, services = served
    site = _site(services)
    issued = services.credentials.create_key(ACTOR, site_id=site, name="k", roles=["GENERATOR"])
    ring = load_keyring(settings)
    stranger = generate_keyring(os.urandom, development=True)
    loaded = load_snapshot(
        services.store,
        _Changing(ring, stranger),
        services.material,
        identity=operator_identity(Environment.LOCAL),
        lifetimes=Lifetimes(),
        generation=1,
        now_ms=FixedClock().now_ms(),
    )
    record = loaded.snapshot.client(issued.key_id)
    assert record is not None
    assert record.accepted_secrets(FixedClock().now_ms()) == [base64.b64decode(issued.secret)]
    assert loaded.snapshot.pepper == ring.pepper


def _add_version_reseal_and_issue(settings: Settings, store: SqlStore, site: int) -> Any:
    """What another process does: add KEK version 2, re-seal under it, issue a key under it."""
    save_keyring(settings, add_kek_version(load_keyring(settings), os.urandom))
    rotation = keyring_rotation_service(settings, store)
    assert rotation.reseal(ACTOR).resealed.total > 0
    others = open_services(settings)
    try:
        return others.credentials.create_key(ACTOR, site_id=site, name="v2", roles=["GENERATOR"])
    finally:
        others.close()


def _opens_both(source: Any, *issued: Any) -> None:
    snapshot = source.current
    assert snapshot is not None
    now = FixedClock().now_ms()
    for key in issued:
        record = snapshot.client(key.key_id)
        assert record is not None
        assert record.accepted_secrets(now) == [base64.b64decode(key.secret)]


def test_a_snapshot_reload_reads_the_keyring_file_as_it_is_now(
    served: tuple[Settings, Services], monotonic: Monotonic
) -> None:
    """A reload follows a store change, which may hold items sealed under a version that reached
    the file a moment ago: it looks at the file then, not only once an interval."""
    settings, services = served
    site = _site(services)
    store = services.store
    first = services.credentials.create_key(ACTOR, site_id=site, name="v1", roles=["GENERATOR"])
    server = build_worker(
        settings,
        ServeSettings.from_env({}),
        store=store,
        keyring=KeyringFile(settings, monotonic=monotonic),
    )
    source = server.worker.source
    try:
        assert source.refresh()
        second = _add_version_reseal_and_issue(settings, store, site)
        # The monotonic clock has not moved: the keyring's own interval has not passed.
        assert source.refresh()
        assert source.problem is None
        _opens_both(source, first, second)
    finally:
        source.close()


def test_a_worker_whose_keyring_lacked_a_version_recovers_without_a_store_change(
    served: tuple[Settings, Services], monotonic: Monotonic, tmp_path: Path
) -> None:
    settings, services = served
    site = _site(services)
    store = services.store
    first = services.credentials.create_key(ACTOR, site_id=site, name="v1", roles=["GENERATOR"])
    # The worker reads a keyring file of its own (another data directory's copy, say).
    own_file = tmp_path / "worker-keyring.json"
    own_file.write_bytes(settings.keyring_path.read_bytes())
    own_file.chmod(0o600)
    worker_settings = _settings(tmp_path, UID2_KEYRING_FILE=str(own_file))
    server = build_worker(
        worker_settings,
        ServeSettings.from_env({}),
        store=store,
        keyring=KeyringFile(worker_settings, monotonic=monotonic),
    )
    source = server.worker.source
    try:
        assert source.refresh()
        assert source.problem is None
        second = _add_version_reseal_and_issue(settings, store, site)
        assert not source.refresh()
        assert source.problem is not None
        assert "snapshot reload failing" in source.problem
        assert "no key-encryption key version 2" in source.problem
        seq = store.change_seq()

        _replace_file(own_file, settings.keyring_path.read_text(encoding="utf-8"))
        assert source.refresh()
        assert store.change_seq() == seq  # nothing moved the store in between
        assert source.problem is None
        _opens_both(source, first, second)
    finally:
        source.close()


class _LockedStore:
    """The store, telling whether a write transaction is open (so its write lock is held)."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self.writing = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._store.transaction() as tx:
            self.writing = True
            try:
                yield tx
            finally:
                self.writing = False


class _Watched:
    """A keyring source noting, for each ask, which method and whether the lock was held."""

    def __init__(self, ring: Keyring, store: _LockedStore) -> None:
        self._ring = ring
        self._store = store
        self.asks: list[tuple[str, bool]] = []

    def current(self) -> Keyring:
        self.asks.append(("current", self._store.writing))
        return self._ring

    def latest(self, recorded: Mapping[int, int]) -> Keyring:
        self.asks.append(("latest", self._store.writing))
        return self._ring


def test_every_use_case_that_writes_reads_the_keyring_fresh_under_the_write_lock(
    served: tuple[Settings, Services],
) -> None:
    """The rotation commands write the keyring file under the store's write lock; a writer that
    took its keyring before the lock could seal under a version a ``drop-version`` had removed
    while it waited."""
    settings, services = served
    site = _site(services)
    inner = services.store
    assert isinstance(inner, SqlStore)
    store = _LockedStore(inner)
    watched = _Watched(load_keyring(settings), store)
    env, clock = Environment.LOCAL, FixedClock()
    material = bootstrap.material_service(settings, store, watched, clock, os.urandom)  # type: ignore[arg-type]
    credentials = CredentialService(store, watched, env, clock, os.urandom)  # type: ignore[arg-type]
    admin = AdminService(store, watched, env, clock, os.urandom)  # type: ignore[arg-type]
    sharing = SharingService(store, watched, env, clock, os.urandom, material=material)  # type: ignore[arg-type]
    issued = services.credentials.create_key(ACTOR, site_id=site, name="k", roles=["GENERATOR"])
    bidder = credentials.create_participant(ACTOR, name="DSP", type="dsp", roles=["ID_READER"])

    writes: dict[str, Callable[[], object]] = {
        "create_key": lambda: credentials.create_key(
            ACTOR, site_id=site, name="k2", roles=["GENERATOR"]
        ),
        "rotate_secret": lambda: credentials.rotate_secret(ACTOR, issued.key_id),
        "rotate_key": lambda: credentials.rotate_key(ACTOR, issued.key_id, grace_days=0),
        "create_admin_token": lambda: admin.create_admin_token(
            ACTOR, name="ops", roles=["MAINTAINER"]
        ),
        "bootstrap_token": lambda: admin.bootstrap_token(ACTOR),
        "set_sharing": lambda: sharing.set_sharing(
            ACTOR, site, mode="list", sites=[bidder.site_id]
        ),
        "create_keypair": lambda: sharing.create_keypair(ACTOR, site_id=site),
        "initialise": material.initialise,
        "ensure_site_keyset": lambda: material.ensure_site_keyset(bidder.site_id),
        "rotate_keys": material.rotate_keys,
        "rotate_salts": lambda: material.rotate_salts(1.0),
        "add_optout": lambda: material.add_optout("email", "someone@example.com"),
    }
    for name, write in writes.items():
        watched.asks.clear()
        write()
        assert watched.asks == [("latest", True)], name


def test_a_command_writing_during_a_kek_rotation_never_seals_under_the_dropped_version(
    served: tuple[Settings, Services], monotonic: Monotonic
) -> None:
    """A command's services, opened before the rotation, and a serve process's, which looked at
    the file just before it (``current()`` would still answer version 1), both create a key once
    version 1 is gone: each seals under version 2, and nothing is left under a missing version."""
    settings, services = served
    site = _site(services)
    store = services.store
    assert isinstance(store, SqlStore)
    command = open_services(settings)
    follows = _following(settings, store, monotonic)
    try:
        rotation = keyring_rotation_service(settings, store)
        rotation.add_version(ACTOR)
        rotation.reseal(ACTOR)
        rotation.drop_version(1, ACTOR)
        assert load_keyring(settings).versions == (2,)

        made = [
            command.credentials.create_key(ACTOR, site_id=site, name="cmd", roles=["GENERATOR"]),
            follows.create_key(ACTOR, site_id=site, name="srv", roles=["GENERATOR"]),
        ]
        assert rotation.status().unknown_versions == ()
        ring = load_keyring(settings)
        later = CredentialService(store, ring, Environment.LOCAL, FixedClock(), os.urandom)
        for issued in made:
            assert _sealed_versions(store, issued.key_id) == [2]
            resolved = later.resolve_client(issued.key)
            assert resolved.secrets == (base64.b64decode(issued.secret),)
    finally:
        command.close()
