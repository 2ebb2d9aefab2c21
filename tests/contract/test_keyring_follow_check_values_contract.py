"""A running process never seals under a keyring that holds another key under a version number
the store records a check value for (every backend).

A long-lived process follows its keyring file (``bootstrap.KeyringFile``). A file replaced by
one holding another key under a recorded version (another instance's keyring copied over this
one, an old backup) is refused like content that cannot be used: logged once, naming the file
and why, and the keyring read before stays in use, so later writes seal under the right key and
every other process opens what they seal. And whatever keyring a use case that writes is given,
it compares it with the check values its own transaction reads: refused, nothing written.

A version the store records no check value for (a file copied from a staging instance that added
a version 3 of its own) is not refused: a use case that writes records its check value in its
own transaction, before sealing anything under it, so the seal and the record commit together or
not at all, and another instance's different version 3 is refused from then on.
"""

from __future__ import annotations

import base64
import itertools
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from uid2_operator.bootstrap import (
    KEYRING_CHECK_INTERVAL_S,
    KeyringFile,
    Services,
    ensure_keyring,
    keyring_rotation_service,
    load_keyring,
    material_service,
    open_services,
    save_keyring,
)
from uid2_operator.clock import FixedClock
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.sealing import (
    Keyring,
    add_kek_version,
    compare_kek_check_values,
    generate_keyring,
)
from uid2_operator.errors import KekCheckMismatch, KeyringError, NotFound
from uid2_operator.serve_settings import ServeSettings
from uid2_operator.services.admin import AdminService
from uid2_operator.services.context import Actor
from uid2_operator.services.credentials import CredentialService
from uid2_operator.services.sharing import SharingService
from uid2_operator.services.views import IssuedKey
from uid2_operator.settings import Settings
from uid2_operator.storage.interface import Store
from uid2_operator.web.operator_api.server import build_worker

ACTOR = Actor("cli:tester", request_id="req-1", source="cli")
BUCKETS = "1024"


@dataclass
class Monotonic:
    """A monotonic clock that moves only when told to."""

    at: float = 100.0

    def __call__(self) -> float:
        return self.at

    def pass_interval(self) -> None:
        self.at += KEYRING_CHECK_INTERVAL_S


@dataclass
class Deployment:
    """A data directory as ``init`` leaves it over the backend under test, with one participant
    and one API key; ``services`` are a command's (over a fixed copy of the right keyring)."""

    settings: Settings
    right: Keyring
    services: Services
    site: int
    issued: IssuedKey

    @property
    def store(self) -> Store:
        return self.services.store


def _settings(tmp_path: Path, store_url: str, **env: str) -> Settings:
    return Settings.from_env(
        {
            "UID2_DATA_DIR": str(tmp_path / "data"),
            "UID2_DATABASE_URL": store_url,
            "UID2_SALT_BUCKETS": BUCKETS,
            **env,
        }
    )


@pytest.fixture
def deployment(tmp_path: Path, store_url: str) -> Iterator[Deployment]:
    settings = _settings(tmp_path, store_url)
    right = ensure_keyring(settings)
    services = open_services(settings, keyring=right)  # records version 1's check value
    try:
        services.material.initialise(ACTOR)
        site = services.credentials.create_participant(
            ACTOR, name="Publisher", type="publisher", roles=["GENERATOR"]
        ).site_id
        issued = services.credentials.create_key(
            ACTOR, site_id=site, name="first", roles=["GENERATOR"]
        )
        yield Deployment(settings, right, services, site, issued)
    finally:
        services.close()


@pytest.fixture
def monotonic() -> Monotonic:
    return Monotonic()


def _replace_file(path: Path, keyring: Keyring) -> None:
    """Copy a keyring over the file as an administrator would: a new file renamed over it."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(keyring.to_json(), encoding="utf-8")
    os.replace(temporary, path)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _secret_forms(*keyrings: Keyring) -> list[str]:
    raw = [k.kek(v) for k in keyrings for v in k.versions] + [k.pepper for k in keyrings]
    forms = [form for r in raw for form in (base64.b64encode(r).decode(), r.hex())]
    checks = [str(value) for k in keyrings for value in k.kek_check_values().values()]
    return forms + checks


def _refusal(path: Path, version: int = 1) -> str:
    return (
        f"the keyring file {path} changed but cannot be used (This keyring's key-encryption key "
        f"version {version} is another key than the database's version {version}: copy the "
        f"keyring file of the instance that added version {version} here (over this one), then "
        "this process takes it up within about a second); still using the keyring read before "
        "(active version 1)"
    )


def _opens(store: Store, keyring: Keyring, issued: IssuedKey) -> bool:
    """Does another process, holding ``keyring``, open the secret ``issued`` was given?"""
    other = CredentialService(store, keyring, Environment.LOCAL, FixedClock(), os.urandom)
    return other.resolve_client(issued.key).secrets == (base64.b64decode(issued.secret),)


def _stored(store: Store) -> tuple[object, ...]:
    """Everything a write use case could have written."""
    with store.read() as rx:
        header = rx.salts.header()
        return (
            rx.change_seq(),
            [e.seq for e in rx.audit.list_events()],
            [p.site_id for p in rx.participants.list_all()],
            [k.key_id for k in rx.api_keys.list_all()],
            rx.secrets.count_by_kek_version(),
            [t.token_id for t in rx.admin_tokens.list_all()],
            [k.keyset_id for k in rx.keysets.list_all()],
            [(k.id, k.secret.kek_version) for k in rx.encryption_keys.list_all()],
            rx.keyset_sharing.list_all(),
            [k.subscription_id for k in rx.keypairs.list_all()],
            None if header is None else (header.version, header.updated_at_ms),
            len(rx.optouts.since(0).records),
            dict(rx.deployment.kek_check_values()),
        )


# ------------------------------------------------------------------------- a followed file


def test_a_file_replaced_by_another_key_under_the_recorded_version_is_refused(
    deployment: Deployment, monotonic: Monotonic, caplog: pytest.LogCaptureFixture
) -> None:
    """As ``serve`` opens its services: the followed file learns the store's check values at
    once, so the refusal holds before the first write too (``current()``), and a write goes on
    sealing under the right key, which other processes open."""
    settings, right = deployment.settings, deployment.right
    source = KeyringFile(settings, monotonic=monotonic)
    serving = open_services(settings, keyring=source)
    try:
        wrong = generate_keyring(os.urandom, development=True)  # version 1, another key
        _replace_file(settings.keyring_path, wrong)
        monotonic.pass_interval()
        assert source.current() == right
        assert _errors(caplog) == [_refusal(source.path)]

        issued = serving.credentials.create_key(
            ACTOR, site_id=deployment.site, name="after", roles=["GENERATOR"]
        )
        monotonic.pass_interval()
        assert source.current() == right
        assert _errors(caplog) == [_refusal(source.path)]  # logged once
        assert _opens(deployment.store, right, issued)
        assert _opens(deployment.store, right, deployment.issued)

        # The next good write of the file is taken up.
        rotated = add_kek_version(right, os.urandom, activate=False)
        save_keyring(settings, rotated)
        monotonic.pass_interval()
        assert source.current() == rotated
    finally:
        serving.close()
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert [form for form in _secret_forms(right, wrong) if form in logged] == []


def test_a_file_with_the_stores_keys_but_another_pepper_is_refused(
    deployment: Deployment, monotonic: Monotonic, caplog: pytest.LogCaptureFixture
) -> None:
    """Taken up, it would refuse every API key and admin token, and hash the keys created
    meanwhile so that they never work with the right file back: followed or written with, it is
    refused as a file with another key under a recorded version is."""
    settings, right = deployment.settings, deployment.right
    source = KeyringFile(settings, monotonic=monotonic)
    serving = open_services(settings, keyring=source)
    try:
        versions = {v: right.kek(v) for v in right.versions}
        wrong = Keyring(versions, right.active_version, bytes(range(32)), development=True)
        _replace_file(settings.keyring_path, wrong)
        monotonic.pass_interval()
        assert source.current() == right
        assert _errors(caplog) == [
            f"the keyring file {source.path} changed but cannot be used (This keyring's pepper "
            "is not the one the database's API keys and admin tokens are hashed with: copy the "
            "keyring file of another instance of this database here (over this one), then this "
            "process takes it up within about a second); still using the keyring read before "
            "(active version 1)"
        ]
        issued = serving.credentials.create_key(
            ACTOR, site_id=deployment.site, name="after", roles=["GENERATOR"]
        )
        assert _opens(deployment.store, right, issued)
    finally:
        serving.close()
    with pytest.raises(KeyringError, match="pepper is not the one"):
        open_services(settings, keyring=wrong)  # a process started with it: refused at once
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert [form for form in _secret_forms(right, wrong) if form in logged] == []


def test_a_writer_refuses_the_file_inside_its_transaction_before_anything_else_told_it(
    deployment: Deployment, monotonic: Monotonic, caplog: pytest.LogCaptureFixture
) -> None:
    """A followed file that was never given the store's check values (built on its own) learns
    them from the first write's transaction, and refuses a contradicting file there."""
    settings, right = deployment.settings, deployment.right
    source = KeyringFile(settings, monotonic=monotonic)
    follows = CredentialService(
        deployment.store, source, Environment.LOCAL, FixedClock(), os.urandom
    )
    _replace_file(settings.keyring_path, generate_keyring(os.urandom, development=True))
    issued = [
        follows.create_key(ACTOR, site_id=deployment.site, name=name, roles=["GENERATOR"])
        for name in ("one", "two")
    ]
    assert _errors(caplog) == [_refusal(source.path)]
    for key in issued:
        assert _opens(deployment.store, right, key)
        assert follows.resolve_client(key.key).secrets == (base64.b64decode(key.secret),)


def test_a_worker_keeps_loading_snapshots_when_its_file_is_replaced_by_another_key(
    deployment: Deployment, monotonic: Monotonic, caplog: pytest.LogCaptureFixture
) -> None:
    """A snapshot load reads the store's check values first: a worker never takes up the
    contradicting file, and keeps opening everything with the keyring it had."""
    settings = deployment.settings
    source = KeyringFile(settings, monotonic=monotonic)
    server = build_worker(
        settings, ServeSettings.from_env({}), store=deployment.store, keyring=source
    )
    snapshots = server.worker.source
    try:
        _replace_file(settings.keyring_path, generate_keyring(os.urandom, development=True))
        assert snapshots.refresh()
        assert snapshots.problem is None
        later = deployment.services.credentials.create_key(
            ACTOR, site_id=deployment.site, name="later", roles=["GENERATOR"]
        )
        assert snapshots.refresh()
        assert snapshots.problem is None
        snapshot = snapshots.current
        assert snapshot is not None
        now = FixedClock().now_ms()
        for issued in (deployment.issued, later):
            record = snapshot.client(issued.key_id)
            assert record is not None
            assert record.accepted_secrets(now) == [base64.b64decode(issued.secret)]
        assert _errors(caplog) == [_refusal(source.path)]
    finally:
        snapshots.close()


def test_a_file_adding_a_version_the_store_does_not_record_is_taken_up(
    deployment: Deployment, monotonic: Monotonic, caplog: pytest.LogCaptureFixture
) -> None:
    settings, right = deployment.settings, deployment.right
    source = KeyringFile(settings, monotonic=monotonic)
    serving = open_services(settings, keyring=source)
    try:
        added = add_kek_version(right, os.urandom)  # version 2, active, not recorded
        _replace_file(settings.keyring_path, added)
        monotonic.pass_interval()
        assert source.current() == added
        issued = serving.credentials.create_key(
            ACTOR, site_id=deployment.site, name="v2", roles=["GENERATOR"]
        )
        with deployment.store.read() as rx:
            assert [s.kek_version for s in rx.secrets.list_for_key(issued.key_id)] == [2]
            assert rx.deployment.kek_check_values() == added.kek_check_values()
        assert _opens(deployment.store, added, issued)
        assert _errors(caplog) == []
    finally:
        serving.close()


def test_a_keyring_taken_up_before_the_store_recorded_its_version_refuses_every_write(
    deployment: Deployment, monotonic: Monotonic, tmp_path: Path, store_url: str
) -> None:
    """This file gained a version 2 of its own (copied from an old backup, say) before another
    instance added, and recorded, its version 2: nothing is sealed under this file's version 2,
    until the other instance's file is copied over it."""
    settings, right = deployment.settings, deployment.right
    other_file = tmp_path / "other-keyring.json"
    other_file.write_text(right.to_json(), encoding="utf-8")
    other_file.chmod(0o600)
    other = _settings(tmp_path, store_url, UID2_KEYRING_FILE=str(other_file))

    source = KeyringFile(settings, monotonic=monotonic)
    serving = open_services(settings, keyring=source)
    try:
        _replace_file(settings.keyring_path, add_kek_version(right, os.urandom))
        monotonic.pass_interval()
        assert source.current().versions == (1, 2)
        added = keyring_rotation_service(other, deployment.store).add_version(ACTOR)
        assert added.version == 2

        before = _stored(deployment.store)
        with pytest.raises(KeyringError) as refused:
            serving.credentials.create_key(
                ACTOR, site_id=deployment.site, name="refused", roles=["GENERATOR"]
            )
        assert refused.value.detail == (
            "This keyring's key-encryption key version 2 is another key than the database's "
            "version 2: copy the keyring file of the instance that added version 2 here (over "
            "this one), then run the command again"
        )
        assert _stored(deployment.store) == before

        _replace_file(settings.keyring_path, load_keyring(other))
        issued = serving.credentials.create_key(
            ACTOR, site_id=deployment.site, name="fixed", roles=["GENERATOR"]
        )
        assert _opens(deployment.store, load_keyring(other), issued)
    finally:
        serving.close()


def test_a_worker_whose_keyring_the_store_came_to_contradict_stops_loading_until_it_is_fixed(
    deployment: Deployment, monotonic: Monotonic, tmp_path: Path, store_url: str
) -> None:
    """A worker's file gained a version 2 of its own before another instance added, and
    recorded, its version 2: the next load is refused before anything is opened, saying what to
    do, and the worker recovers once the other instance's file is copied over its own."""
    settings, right = deployment.settings, deployment.right
    other_file = tmp_path / "other-keyring.json"
    other_file.write_text(right.to_json(), encoding="utf-8")
    other_file.chmod(0o600)
    other = _settings(tmp_path, store_url, UID2_KEYRING_FILE=str(other_file))
    source = KeyringFile(settings, monotonic=monotonic)
    server = build_worker(
        settings, ServeSettings.from_env({}), store=deployment.store, keyring=source
    )
    snapshots = server.worker.source
    try:
        assert snapshots.refresh()
        own = add_kek_version(right, os.urandom, activate=False)
        _replace_file(settings.keyring_path, own)
        deployment.services.credentials.create_participant(
            ACTOR, name="Later", type="publisher", roles=["GENERATOR"]
        )
        assert snapshots.refresh()  # takes the file up: the store records no version 2 yet
        assert source.current() == own
        keyring_rotation_service(other, deployment.store).add_version(ACTOR, activate=False)

        assert not snapshots.refresh()
        assert snapshots.problem is not None
        assert "snapshot reload failing" in snapshots.problem
        assert "(keyring_invalid)" in snapshots.problem
        assert snapshots.problem_detail is not None
        assert (
            "This keyring's key-encryption key version 2 is another key than the database's "
            "version 2: copy the keyring file of the instance that added version 2 here (over "
            "this one), then the next snapshot load uses it"
        ) in snapshots.problem_detail

        _replace_file(settings.keyring_path, load_keyring(other))
        assert snapshots.refresh()
        assert snapshots.problem is None
        assert source.current() == load_keyring(other)
    finally:
        snapshots.close()


# ------------------------------------------------------------------------- every writer


_BIDDER_NUMBERS = itertools.count(1)  # participant names are unique; _writes runs more than once


def _writes(deployment: Deployment, keyring: Keyring) -> dict[str, Callable[[], object]]:
    """Every use case that asks its keyring source for the latest keyring, over ``keyring``."""
    store, site, key_id = deployment.store, deployment.site, deployment.issued.key_id
    env, clock = Environment.LOCAL, FixedClock()
    material = material_service(deployment.settings, store, keyring, clock, os.urandom)
    credentials = CredentialService(store, keyring, env, clock, os.urandom)
    admin = AdminService(store, keyring, env, clock, os.urandom)
    sharing = SharingService(store, keyring, env, clock, os.urandom, material=material)
    bidder = deployment.services.credentials.create_participant(
        ACTOR, name=f"DSP {next(_BIDDER_NUMBERS)}", type="dsp", roles=["ID_READER"]
    ).site_id
    return {
        "create_key": lambda: credentials.create_key(
            ACTOR, site_id=site, name="k2", roles=["GENERATOR"]
        ),
        "rotate_secret": lambda: credentials.rotate_secret(ACTOR, key_id),
        "rotate_key": lambda: credentials.rotate_key(ACTOR, key_id, grace_days=0),
        "create_admin_token": lambda: admin.create_admin_token(
            ACTOR, name="ops", roles=["MAINTAINER"]
        ),
        "bootstrap_token": lambda: admin.bootstrap_token(ACTOR),
        "set_sharing": lambda: sharing.set_sharing(ACTOR, site, mode="list", sites=[bidder]),
        "create_keypair": lambda: sharing.create_keypair(ACTOR, site_id=site),
        "initialise": lambda: material.initialise(ACTOR),
        "ensure_site_keyset": lambda: material.ensure_site_keyset(bidder, ACTOR),
        "rotate_keys": lambda: material.rotate_keys(actor=ACTOR),
        "rotate_salts": lambda: material.rotate_salts(1.0, ACTOR),
        "add_optout": lambda: material.add_optout("email", "someone@example.com", ACTOR),
    }


WRITES = [
    "create_key",
    "rotate_secret",
    "rotate_key",
    "create_admin_token",
    "bootstrap_token",
    "set_sharing",
    "create_keypair",
    "initialise",
    "ensure_site_keyset",
    "rotate_keys",
    "rotate_salts",
    "add_optout",
]


@pytest.mark.parametrize("write", WRITES)
def test_a_write_under_a_keyring_the_store_contradicts_is_refused_writing_nothing(
    deployment: Deployment, write: str
) -> None:
    """Given a keyring holding another key under version 1 (no file to refuse: a fixed keyring,
    as UID2_KEYRING gives one), every writer refuses it in its own transaction."""
    wrong = generate_keyring(os.urandom, development=True)
    writes = _writes(deployment, wrong)
    assert sorted(writes) == sorted(WRITES)
    before = _stored(deployment.store)
    with pytest.raises(KeyringError) as refused:
        writes[write]()
    assert refused.value.detail.startswith(
        "This keyring's key-encryption key version 1 is another key than the database's version 1: "
    )
    assert _stored(deployment.store) == before

    # The same use case under the right keyring goes through.
    _writes(deployment, deployment.right)[write]()


# ------------------------------------------------------------------------- an unrecorded version


def _recorded(store: Store) -> dict[int, int]:
    with store.read() as rx:
        return dict(rx.deployment.kek_check_values())


def _staging(right: Keyring, *, activate: bool = True) -> Keyring:
    """A staging instance's clone of this keyring, with a version 3 of its own (this store
    records none: nothing here gave out that number)."""
    return add_kek_version(right, os.urandom, version=3, activate=activate)


def test_the_first_write_under_a_followed_unrecorded_version_records_it_with_its_seal(
    deployment: Deployment, monotonic: Monotonic
) -> None:
    """The followed file is replaced by a staging instance's clone holding a version 3 of its own
    (active): the next write seals under version 3 and records its check value in the same
    commit. Another instance that then adds a different version 3 is refused, instead of sealing
    what this one cannot open (or this one sealing what that one cannot open)."""
    settings, right, store = deployment.settings, deployment.right, deployment.store
    source = KeyringFile(settings, monotonic=monotonic)
    serving = open_services(settings, keyring=source)
    try:
        staging = _staging(right)
        _replace_file(settings.keyring_path, staging)
        monotonic.pass_interval()
        assert source.current() == staging
        assert _recorded(store) == right.kek_check_values()
        with store.read() as rx:
            seq = rx.change_seq()

        issued = serving.credentials.create_key(
            ACTOR, site_id=deployment.site, name="v3", roles=["GENERATOR"]
        )
        with store.read() as rx:
            assert rx.change_seq() == seq + 1  # one commit: the seal and the record
            assert [s.kek_version for s in rx.secrets.list_for_key(issued.key_id)] == [3]
        recorded = _recorded(store)
        assert recorded == staging.kek_check_values()
        assert _opens(store, staging, issued)

        elsewhere = _staging(right)  # another instance's version 3: another key
        with pytest.raises(KekCheckMismatch):
            compare_kek_check_values(elsewhere, recorded)
        before = _stored(store)
        other = CredentialService(store, elsewhere, Environment.LOCAL, FixedClock(), os.urandom)
        with pytest.raises(KeyringError):
            other.create_key(ACTOR, site_id=deployment.site, name="other", roles=["GENERATOR"])
        assert _stored(store) == before
    finally:
        serving.close()


def test_a_write_refused_after_recording_leaves_nothing_recorded(
    deployment: Deployment, monotonic: Monotonic
) -> None:
    """The record is part of the write's transaction: a write refused by a rule once it has
    recorded (no such participant) rolls the record back with everything else; the next write
    that commits records it."""
    settings, right, store = deployment.settings, deployment.right, deployment.store
    source = KeyringFile(settings, monotonic=monotonic)
    serving = open_services(settings, keyring=source)
    try:
        staging = _staging(right)
        _replace_file(settings.keyring_path, staging)
        monotonic.pass_interval()
        before = _stored(store)
        with pytest.raises(NotFound):
            serving.credentials.create_key(
                ACTOR, site_id=deployment.site + 1000, name="nobody", roles=["GENERATOR"]
            )
        assert _stored(store) == before
        assert _recorded(store) == right.kek_check_values()

        serving.credentials.rotate_secret(ACTOR, deployment.issued.key_id)
        assert _recorded(store) == staging.kek_check_values()
    finally:
        serving.close()


@pytest.mark.parametrize("write", WRITES)
def test_every_write_records_the_versions_the_store_does_not_record(
    deployment: Deployment, write: str
) -> None:
    staging = _staging(deployment.right)
    writes = _writes(deployment, staging)
    assert _recorded(deployment.store) == deployment.right.kek_check_values()
    writes[write]()
    assert _recorded(deployment.store) == staging.kek_check_values()


def test_a_write_that_changes_nothing_else_records_without_moving_the_change_sequence(
    deployment: Deployment,
) -> None:
    store, env, clock = deployment.store, Environment.LOCAL, FixedClock()
    assert AdminService(store, deployment.right, env, clock, os.urandom).bootstrap_token(ACTOR)
    staging = _staging(deployment.right)
    before = _stored(store)
    assert AdminService(store, staging, env, clock, os.urandom).bootstrap_token(ACTOR) is None
    after = _stored(store)
    assert after[:-1] == before[:-1]  # the change sequence included
    assert after[-1] == _recorded(store) == staging.kek_check_values()


def test_reseal_under_an_unrecorded_active_version_records_it(deployment: Deployment) -> None:
    """A staging clone copied over this keyring file, then ``keyring reseal``: everything moves
    under version 3, and the store records version 3 in the same unit of work."""
    settings, store = deployment.settings, deployment.store
    staging = _staging(deployment.right)
    save_keyring(settings, staging)
    result = keyring_rotation_service(settings, store).reseal(ACTOR)
    assert (result.active_version, result.from_versions) == (3, (1,))
    assert _recorded(store) == staging.kek_check_values()
    assert _opens(store, staging, deployment.issued)


def test_activating_an_unrecorded_version_records_it(deployment: Deployment) -> None:
    """``keyring activate-version`` records the version it makes active when the store has no
    check value for it; an activation that changes nothing writes nothing."""
    settings, store, right = deployment.settings, deployment.store, deployment.right
    staging = _staging(right, activate=False)
    save_keyring(settings, staging)
    rotation = keyring_rotation_service(settings, store)
    assert not rotation.activate_version(1, ACTOR).changed
    assert _recorded(store) == right.kek_check_values()
    assert rotation.activate_version(3, ACTOR).changed
    assert _recorded(store) == staging.kek_check_values()
