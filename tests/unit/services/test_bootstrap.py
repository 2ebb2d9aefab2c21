"""The composition root: keyring loading and creation, environment record, wiring."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from uid2_operator.bootstrap import (
    InitKeyring,
    ensure_keyring,
    keyring_for_init,
    load_keyring,
    open_services,
    record_environment,
    upgrade_database,
)
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.sealing import generate_keyring
from uid2_operator.errors import (
    InvalidInput,
    KeyringError,
    KeyringMissing,
    PlaceholderKeyring,
    SchemaOutOfDate,
)
from uid2_operator.services.context import SYSTEM
from uid2_operator.settings import Settings, SettingsError


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"UID2_DATA_DIR": str(tmp_path / "data"), **env})


def test_a_missing_keyring_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyringMissing):
        load_keyring(_settings(tmp_path))


def test_init_creates_a_private_development_keyring_once(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    created = ensure_keyring(settings)
    assert created.development
    mode = stat.S_IMODE(settings.keyring_path.stat().st_mode)
    assert mode == 0o600
    assert ensure_keyring(settings) == created
    assert load_keyring(settings) == created


def test_an_init_that_loses_the_race_for_the_keyring_file_did_not_create_it(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    settings.data_dir.mkdir(parents=True)
    winners: list[InitKeyring] = []

    def another_init_first(n: int) -> bytes:
        # Another init creates the file after this one found none, before this one writes it.
        if not winners:
            winners.append(keyring_for_init(settings))
        return os.urandom(n)

    lost = keyring_for_init(settings, another_init_first)
    assert [winner.created for winner in winners] == [True]
    assert lost == InitKeyring(winners[0].keyring, created=False)
    assert load_keyring(settings) == winners[0].keyring
    assert keyring_for_init(settings).created is False


def test_prod_never_gets_a_development_keyring(tmp_path: Path) -> None:
    settings = _settings(tmp_path, UID2_ENVIRONMENT="prod")
    with pytest.raises(KeyringMissing):
        ensure_keyring(settings)
    assert not settings.keyring_path.exists()
    dev = generate_keyring(os.urandom, development=True)
    with pytest.raises(PlaceholderKeyring):
        load_keyring(_settings(tmp_path, UID2_ENVIRONMENT="prod", UID2_KEYRING=dev.to_json()))


def test_prod_takes_a_generated_keyring_from_the_environment(tmp_path: Path) -> None:
    ring = generate_keyring(os.urandom)
    settings = _settings(tmp_path, UID2_ENVIRONMENT="prod", UID2_KEYRING=ring.to_json())
    assert ensure_keyring(settings) == ring
    path = tmp_path / "ring.json"
    path.write_text(ring.to_json())
    assert load_keyring(_settings(tmp_path, UID2_KEYRING_FILE=str(path))) == ring


def test_an_unreadable_keyring_file_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "dir.json"
    folder.mkdir()
    with pytest.raises(KeyringError, match="cannot be read"):
        load_keyring(_settings(tmp_path, UID2_KEYRING_FILE=str(folder)))


def test_the_environment_is_recorded_and_kept(tmp_path: Path) -> None:
    integ = _settings(tmp_path, UID2_ENVIRONMENT="integ")
    record_environment(integ)
    record_environment(integ)
    assert _settings(tmp_path).environment is Environment.INTEG
    with pytest.raises(InvalidInput, match="initialised for the integ environment"):
        record_environment(_settings(tmp_path, UID2_ENVIRONMENT="prod"))


def test_settings_refuse_a_bad_rotation_age(tmp_path: Path) -> None:
    assert _settings(tmp_path, UID2_KEY_ROTATION_AGE_DAYS="30").rotation_age_days == 30
    for bad in ("0", "-1", "x", "1.5"):
        with pytest.raises(SettingsError):
            _settings(tmp_path, UID2_KEY_ROTATION_AGE_DAYS=bad)


def test_services_need_a_migrated_database(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    ensure_keyring(settings)
    with pytest.raises(SchemaOutOfDate):
        open_services(settings)
    upgrade_database(settings)
    services = open_services(settings)
    try:
        issued = services.admin.bootstrap_token(SYSTEM)
        assert issued is not None
        assert services.credentials.environment is Environment.LOCAL
        assert services.admin.authenticate(issued.token).token_id == issued.token_id
    finally:
        services.close()


def test_a_handed_in_keyring_is_still_checked_for_prod(tmp_path: Path) -> None:
    settings = _settings(tmp_path, UID2_ENVIRONMENT="prod")
    with pytest.raises(PlaceholderKeyring):
        open_services(settings, keyring=generate_keyring(os.urandom, development=True))


def test_a_keyring_link_to_nothing_is_named_not_taken_for_a_missing_keyring(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    settings.data_dir.mkdir(parents=True)
    target = tmp_path / "secrets" / "keyring.json"
    settings.keyring_path.symlink_to(target)
    with pytest.raises(KeyringError) as refused:
        keyring_for_init(settings)
    assert str(refused.value) == (
        f"The keyring file {settings.keyring_path.absolute()} is a link to {target}, which does "
        "not exist: put the keyring there, or remove the link for init to create one"
    )
    assert not target.exists()
