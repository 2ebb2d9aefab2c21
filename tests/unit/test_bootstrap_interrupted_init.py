"""An ``init`` stopped part-way (Ctrl-C, SIGKILL, a power cut) leaves a data directory the next
``init`` finishes: the keyring and the ``environment`` file appear whole or not at all, an empty
``environment`` file records no environment, and an empty keyring file an earlier version left is
replaced while the database holds nothing sealed. A keyring file or data directory that cannot be
written, or a keyring file that holds no keyring, is refused with a message naming it."""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from pathlib import Path

import pytest

from interrupted_writes import (
    interrupt_first_write_in,
    read_only_parent_fixture,  # noqa: F401 (fixture)
)
from uid2_operator.bootstrap import (
    KEYRING_DEBRIS_AGE_S,
    check_environment,
    discard_interrupted_keyring,
    ensure_keyring,
    load_keyring,
    open_services,
    record_environment,
    upgrade_database,
)
from uid2_operator.domain.environments import Environment
from uid2_operator.errors import KekVersionMissing, KeyringError
from uid2_operator.services.context import SYSTEM
from uid2_operator.settings import EnvironmentSource, Settings, SettingsError


def _settings(data_dir: Path, **env: str) -> Settings:
    return Settings.from_env(env, data_dir=str(data_dir))


def test_a_keyring_write_interrupted_after_the_open_leaves_no_keyring_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path / "data")
    settings.data_dir.mkdir(mode=0o700)
    with monkeypatch.context() as patched:
        interrupt_first_write_in(settings.data_dir, patched)
        with pytest.raises(KeyboardInterrupt):
            ensure_keyring(settings)
    assert os.listdir(settings.data_dir) == []  # no keyring, empty or not; no temporary file

    keyring = ensure_keyring(settings)  # the next init creates it
    assert load_keyring(settings) == keyring
    assert stat.S_IMODE(settings.keyring_path.stat().st_mode) == 0o600
    assert os.listdir(settings.data_dir) == ["keyring.json"]


def test_a_new_keyring_never_replaces_one_that_exists(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    first = ensure_keyring(settings)
    assert ensure_keyring(settings) == first
    assert load_keyring(settings) == first


@pytest.mark.parametrize(
    ("content", "defect"),
    [
        ("", "it is empty"),
        ("{", "not valid JSON"),
        ("[]", "must be a JSON object"),
    ],
)
def test_a_keyring_file_holding_no_keyring_is_refused_naming_the_file(
    tmp_path: Path, content: str, defect: str
) -> None:
    settings = _settings(tmp_path)
    settings.keyring_path.write_text(content, encoding="utf-8")
    with pytest.raises(KeyringError) as refused:
        load_keyring(settings)
    named = f"The keyring file {settings.keyring_path.absolute()} cannot be used: "
    assert refused.value.detail.startswith(named)
    assert defect in refused.value.detail
    with pytest.raises(KeyringError, match=str(settings.keyring_path.absolute())):
        ensure_keyring(settings)  # never replaced by init either


def test_a_keyring_file_naming_a_missing_active_version_keeps_its_error_class(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    document = json.loads(ensure_keyring(settings).to_json())
    document["active_kek_version"] = 7
    settings.keyring_path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(KekVersionMissing) as refused:
        load_keyring(settings)
    assert refused.value.version == 7
    assert str(settings.keyring_path.absolute()) in refused.value.detail


def test_an_empty_keyring_file_is_discarded_while_the_database_holds_nothing_sealed(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path / "data")
    settings.data_dir.mkdir(mode=0o700)
    settings.keyring_path.touch(mode=0o600)
    assert discard_interrupted_keyring(settings)  # a database not even created yet
    assert not settings.keyring_path.exists()

    upgrade_database(settings)
    settings.keyring_path.touch(mode=0o600)
    assert discard_interrupted_keyring(settings)  # created, nothing sealed in it
    assert not settings.keyring_path.exists()
    keyring = ensure_keyring(settings)
    assert load_keyring(settings) == keyring
    assert not discard_interrupted_keyring(settings)  # a keyring that holds something stays


def test_an_empty_keyring_file_is_kept_once_the_database_holds_sealed_items(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path / "data")
    upgrade_database(settings)
    keyring = ensure_keyring(settings)
    services = open_services(settings, keyring=keyring)
    try:
        services.material.initialise(SYSTEM)
    finally:
        services.close()
    settings.keyring_path.write_bytes(b"")
    assert not discard_interrupted_keyring(settings)
    assert settings.keyring_path.exists()
    with pytest.raises(KeyringError, match="it is empty"):
        load_keyring(settings)


def test_an_empty_keyring_file_is_kept_in_prod(tmp_path: Path) -> None:
    settings = _settings(tmp_path, UID2_ENVIRONMENT="prod")
    settings.keyring_path.touch(mode=0o600)
    assert not discard_interrupted_keyring(settings)
    assert settings.keyring_path.exists()


def test_an_empty_environment_file_records_no_environment_and_init_writes_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "environment").write_text("", encoding="utf-8")
    settings = _settings(tmp_path, UID2_ENVIRONMENT="integ")
    assert settings.environment is Environment.INTEG
    assert not check_environment(settings)
    assert _settings(tmp_path).environment_source is EnvironmentSource.DEFAULT

    record_environment(settings)
    assert settings.environment_path.read_text(encoding="utf-8") == "integ\n"
    assert check_environment(settings)
    assert _settings(tmp_path).environment is Environment.INTEG


def test_an_environment_write_interrupted_after_the_open_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    with monkeypatch.context() as patched:
        interrupt_first_write_in(tmp_path, patched)
        with pytest.raises(KeyboardInterrupt):
            record_environment(settings)
    assert os.listdir(tmp_path) == []

    record_environment(settings)
    assert settings.environment_path.read_text(encoding="utf-8") == "local\n"
    assert stat.S_IMODE(settings.environment_path.stat().st_mode) == 0o600


def test_a_keyring_file_that_cannot_be_created_is_named_with_the_cause(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    path = blocker / "keys" / "keyring.json"
    settings = _settings(tmp_path / "data", UID2_KEYRING_FILE=str(path))
    with pytest.raises(KeyringError) as refused:
        ensure_keyring(settings)
    assert refused.value.detail == f"The keyring file {path} cannot be written: Not a directory"


def test_a_keyring_file_in_a_directory_that_cannot_be_written_is_named_with_the_cause(
    tmp_path: Path, read_only_parent: Path
) -> None:
    path = read_only_parent / "keyring.json"
    settings = _settings(tmp_path / "data", UID2_KEYRING_FILE=str(path))
    with pytest.raises(KeyringError) as refused:
        ensure_keyring(settings)
    assert refused.value.detail == f"The keyring file {path} cannot be written: Permission denied"
    assert os.listdir(read_only_parent) == []


def test_a_data_directory_that_cannot_be_created_is_named_with_the_cause(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    settings = _settings(blocker / "data", UID2_ENVIRONMENT="local")
    with pytest.raises(SettingsError) as refused:
        upgrade_database(settings)
    assert refused.value.detail == (
        f"The data directory {blocker / 'data'} cannot be created: Not a directory"
    )


def test_a_data_directory_in_a_directory_that_cannot_be_written_is_named_with_the_cause(
    read_only_parent: Path,
) -> None:
    settings = _settings(read_only_parent / "data")
    with pytest.raises(SettingsError) as refused:
        upgrade_database(settings)
    assert refused.value.detail == (
        f"The data directory {read_only_parent / 'data'} cannot be created: Permission denied"
    )


@pytest.mark.parametrize("code", [errno.EPERM, errno.EOPNOTSUPP])
def test_a_filesystem_without_hard_links_still_gets_its_keyring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    settings = _settings(tmp_path / "data")

    def no_links(source: object, target: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_links)
    keyring = ensure_keyring(settings)
    assert load_keyring(settings) == keyring
    assert stat.S_IMODE(settings.keyring_path.stat().st_mode) == 0o600
    assert os.listdir(settings.data_dir) == ["keyring.json"]  # no temporary file left
    assert ensure_keyring(settings) == keyring  # and never replaced


def test_a_keyring_written_in_short_writes_is_written_whole_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A write may take only part of what it is given (more likely on the network and vfat
    # filesystems that lack hard links): the file must still hold all of it.
    settings = _settings(tmp_path / "data")
    write = os.write

    def no_links(source: object, target: object) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    def short_write(fd: int, data: bytes | memoryview) -> int:
        return write(fd, bytes(data[:64]))

    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(os, "write", short_write)
    keyring = ensure_keyring(settings)
    monkeypatch.undo()
    assert settings.keyring_path.stat().st_size > 64
    assert load_keyring(settings) == keyring


def test_init_removes_what_an_environment_write_stopped_before_its_rename_left(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path / "data")
    settings.data_dir.mkdir(mode=0o700)
    debris = settings.data_dir / ".environment.abcd1234.tmp"
    debris.write_text("local\n", encoding="utf-8")
    old = time.time() - KEYRING_DEBRIS_AGE_S - 10
    os.utime(debris, (old, old))
    fresh = settings.data_dir / ".environment.efgh5678.tmp"  # a write in progress elsewhere
    fresh.write_text("local\n", encoding="utf-8")

    record_environment(settings)
    assert not debris.exists()
    assert fresh.exists()
    assert settings.environment_path.read_text(encoding="utf-8") == "local\n"
