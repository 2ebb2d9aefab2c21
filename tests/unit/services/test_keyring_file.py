"""Writing the keyring back (``bootstrap.save_keyring``) and wiring the KEK rotation use cases."""

from __future__ import annotations

import base64
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from uid2_operator.bootstrap import (
    KEYRING_DEBRIS_AGE_S,
    KEYRING_FROM_ENVIRONMENT,
    ConfiguredKeyring,
    ensure_keyring,
    keyring_rotation_service,
    keyring_source,
    load_keyring,
    open_configured_store,
    save_keyring,
    sweep_keyring_debris,
    upgrade_database,
)
from uid2_operator.domain.sealing import add_kek_version, generate_keyring
from uid2_operator.errors import InvalidInput, KeyringError, PlaceholderKeyring
from uid2_operator.services.context import SYSTEM
from uid2_operator.settings import Settings


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"UID2_DATA_DIR": str(tmp_path / "data"), **env})


def _leftovers(folder: Path, keep: str = "keyring.json") -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != keep)


def test_save_replaces_the_keyring_file_owner_only(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    first = ensure_keyring(settings)
    settings.keyring_path.chmod(0o644)
    old_umask = os.umask(0o000)
    try:
        second = add_kek_version(first, os.urandom)
        save_keyring(settings, second)
    finally:
        os.umask(old_umask)
    assert load_keyring(settings) == second
    assert stat.S_IMODE(settings.keyring_path.stat().st_mode) == 0o600
    assert _leftovers(settings.data_dir) == []


def test_save_syncs_the_new_file_and_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    first = ensure_keyring(settings)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        synced.append("dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "?")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    save_keyring(settings, add_kek_version(first, os.urandom))
    # The copy that proves the file can be replaced, then the new keyring, each with the
    # directory once in place.
    assert synced == ["file", "dir", "file", "dir"]


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_a_failed_save_keeps_the_old_keyring_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    settings = _settings(tmp_path)
    first = ensure_keyring(settings)
    before = settings.keyring_path.read_bytes()

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(
        KeyringError, match=r"keyring.json cannot be (written|replaced): No space left"
    ):
        save_keyring(settings, add_kek_version(first, os.urandom))
    monkeypatch.undo()
    assert settings.keyring_path.read_bytes() == before
    assert _leftovers(settings.data_dir) == []


def test_a_directory_that_cannot_be_synced_after_the_rename_still_counts_as_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path)
    second = add_kek_version(ensure_keyring(settings), os.urandom)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    save_keyring(settings, second)
    monkeypatch.undo()
    assert load_keyring(settings) == second
    assert "could not be synced (Input/output error)" in caplog.text
    assert _leftovers(settings.data_dir) == []


def test_save_follows_a_symbolic_link_to_the_keyring(tmp_path: Path) -> None:
    vault = tmp_path / "vault"
    vault.mkdir()
    target = vault / "ring.json"
    first = generate_keyring(os.urandom)
    target.write_text(first.to_json())
    link = tmp_path / "ring-link.json"
    link.symlink_to(target)
    settings = _settings(tmp_path, UID2_KEYRING_FILE=str(link))
    second = add_kek_version(first, os.urandom)
    save_keyring(settings, second)
    assert link.is_symlink()
    assert load_keyring(settings) == second
    assert _leftovers(vault, keep="ring.json") == []


def test_a_keyring_from_the_environment_is_never_written(tmp_path: Path) -> None:
    ring = generate_keyring(os.urandom)
    settings = _settings(tmp_path, UID2_KEYRING=ring.to_json())
    with pytest.raises(InvalidInput, match="UID2_KEYRING environment variable"):
        save_keyring(settings, add_kek_version(ring, os.urandom))
    assert not settings.keyring_path.exists()
    held = ConfiguredKeyring(settings)
    assert held.writable is False
    assert held.source == KEYRING_FROM_ENVIRONMENT == "environment"
    assert held.load() == ring


def test_prod_never_gets_a_development_keyring_written(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    real = generate_keyring(os.urandom)
    path.write_text(real.to_json())
    settings = _settings(tmp_path, UID2_ENVIRONMENT="prod", UID2_KEYRING_FILE=str(path))
    with pytest.raises(PlaceholderKeyring):
        save_keyring(settings, generate_keyring(os.urandom, development=True))
    assert load_keyring(settings) == real
    rotated = add_kek_version(real, os.urandom)
    save_keyring(settings, rotated)
    assert load_keyring(settings) == rotated


def test_the_keyring_source_is_the_file_path_or_the_environment(tmp_path: Path) -> None:
    assert keyring_source(_settings(tmp_path)) == str((tmp_path / "data/keyring.json").absolute())
    named = tmp_path / "elsewhere.json"
    assert keyring_source(_settings(tmp_path, UID2_KEYRING_FILE=str(named))) == str(named)
    ring = generate_keyring(os.urandom).to_json()
    assert keyring_source(_settings(tmp_path, UID2_KEYRING=ring)) == "environment"
    held = ConfiguredKeyring(_settings(tmp_path))
    assert held.writable is True
    assert held.source == keyring_source(_settings(tmp_path))


def test_the_wired_service_writes_the_configured_keyring_file(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    first = ensure_keyring(settings)
    upgrade_database(settings)
    store = open_configured_store(settings)
    try:
        service = keyring_rotation_service(settings, store)
        change = service.add_version(SYSTEM)
        assert change.source == keyring_source(settings)
        assert service.status().keyring_versions == (1, 2)
    finally:
        store.close()
    stored = load_keyring(settings)
    assert (stored.versions, stored.active_version) == ((1, 2), 2)
    assert stored.kek(1) == first.kek(1)
    assert stored.pepper == first.pepper
    assert stored.development


# ------------------------------------------------------------------ what a crashed save leaves

_CRASHING_SAVE = """
import os, signal, sys
from uid2_operator.bootstrap import load_keyring, save_keyring
from uid2_operator.domain.sealing import add_kek_version
from uid2_operator.settings import Settings

settings = Settings.from_env({"UID2_DATA_DIR": sys.argv[1]})
os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # dies before the rename
save_keyring(settings, add_kek_version(load_keyring(settings), os.urandom))
"""


def _crash_a_save(settings: Settings) -> Path:
    """Run a save in a process killed before its rename; the temporary file it left."""
    done = subprocess.run(  # noqa: S603 (this interpreter, a fixed script)
        [sys.executable, "-c", _CRASHING_SAVE, str(settings.data_dir)], check=False
    )
    assert done.returncode == -signal.SIGKILL
    (debris,) = [p for p in settings.data_dir.iterdir() if p.name.endswith(".tmp")]
    return debris


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def test_the_next_save_removes_what_a_crashed_save_left_and_logs_no_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path)
    first = ensure_keyring(settings)
    debris = _crash_a_save(settings)
    assert stat.S_IMODE(debris.stat().st_mode) == 0o600
    assert "keks" in debris.read_text(encoding="utf-8")  # a whole keyring, under no used name
    assert load_keyring(settings) == first
    _age(debris, KEYRING_DEBRIS_AGE_S + 1)

    second = add_kek_version(first, os.urandom)
    save_keyring(settings, second)
    assert load_keyring(settings) == second
    assert not debris.exists()
    assert not [p for p in settings.data_dir.iterdir() if p.name.endswith(".tmp")]
    logged = caplog.text
    assert debris.name in logged
    for ring in (first, second):
        for version in ring.versions:
            assert base64.b64encode(ring.kek(version)).decode() not in logged


def test_the_sweep_leaves_a_recent_write_links_and_other_names_alone(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    ensure_keyring(settings)
    recent = _crash_a_save(settings)  # as a save still in progress elsewhere would look
    folder = settings.data_dir
    outside = tmp_path / "elsewhere.tmp"
    outside.write_text("not ours", encoding="utf-8")
    link = folder / ".keyring.json.abcd1234.tmp"
    link.symlink_to(outside)
    others = [
        folder / ".keyring.json.backup",
        folder / ".keyring.json.abc.tmp",  # not a name a save gives
        folder / ".other.json.abcd1234.tmp",
        folder / "keyring.json.abcd1234.tmp",
    ]
    for other in others:
        other.write_text("{}", encoding="utf-8")
    for path in [*others, link, outside]:
        _age(path, KEYRING_DEBRIS_AGE_S + 1)

    assert sweep_keyring_debris(settings) == []
    assert all(p.exists() for p in [recent, *others, outside])
    assert link.is_symlink()

    _age(recent, KEYRING_DEBRIS_AGE_S + 1)
    assert sweep_keyring_debris(settings) == [recent]
    assert all(p.exists() for p in [*others, outside])
    assert link.is_symlink()


def test_a_keyring_from_the_environment_has_nothing_to_sweep(tmp_path: Path) -> None:
    ring = generate_keyring(os.urandom, development=True)
    settings = _settings(tmp_path, UID2_KEYRING=ring.to_json())
    assert sweep_keyring_debris(settings) == []
