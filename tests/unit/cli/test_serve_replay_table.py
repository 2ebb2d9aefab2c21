"""The serving process creates the replay table its workers share, sized by
``UID2_REPLAY_TABLE_ENTRIES`` and made for the request window, in the runtime directory, before
any worker starts; a table it cannot create stops serve with a message and leaves nothing."""

from __future__ import annotations

import errno
import importlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from uid2_operator.serve_settings import RUNTIME_DIR_VARIABLE, ServeSettings
from uid2_operator.services.replay_table import (
    DEFAULT_SLOTS,
    KEPT_FILE,
    MAX_SLOTS,
    PROBE,
    TABLE_FILE,
    ReplayTable,
    restore,
    table_size,
)
from uid2_operator.settings import SettingsError

serve = importlib.import_module("uid2_operator.cli.serve")  # the package names its command so


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The serve variables this file sets, restored afterwards (and the directory removed)."""
    for name in (RUNTIME_DIR_VARIABLE, "UID2_REPLAY_TABLE_ENTRIES", "UID2_REQUEST_MAX_AGE_MS"):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    made = os.environ.get(RUNTIME_DIR_VARIABLE)
    if made:
        shutil.rmtree(made, ignore_errors=True)


def test_the_setting_defaults_to_two_million_slots_and_is_bounded() -> None:
    assert ServeSettings.from_env({}).replay_table_entries == DEFAULT_SLOTS == 2_097_152
    given = ServeSettings.from_env({"UID2_REPLAY_TABLE_ENTRIES": "4096"})
    assert given.replay_table_entries == 4096
    for wrong in ("1023", str(MAX_SLOTS + 1), "-5", "2e6", "lots"):
        with pytest.raises(SettingsError, match="UID2_REPLAY_TABLE_ENTRIES"):
            ServeSettings.from_env({"UID2_REPLAY_TABLE_ENTRIES": wrong})


def test_the_runtime_directory_starts_with_the_replay_table(
    environ: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    environ.setenv("UID2_REPLAY_TABLE_ENTRIES", "5000")
    environ.setenv("UID2_REQUEST_MAX_AGE_MS", "60000")
    runtime_dir = serve._share_runtime_dir(tmp_path)
    assert os.environ[RUNTIME_DIR_VARIABLE] == str(runtime_dir)
    assert runtime_dir.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in runtime_dir.iterdir()) == [TABLE_FILE]
    with ReplayTable.open(runtime_dir / TABLE_FILE, max_past_ms=60_000) as table:
        assert table.slots == 5000
        assert table.first_use("k", bytes(8), 1_700_000_000_000, 1_700_000_000_000)


def test_a_table_that_cannot_be_made_stops_serve_and_leaves_nothing(
    environ: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    made: list[Path] = []

    def no_space(path: Path, **_: object) -> None:
        made.append(path.parent)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    environ.setattr(serve.replay_table.ReplayTable, "create", staticmethod(no_space))
    with pytest.raises(click.ClickException, match="cannot create the replay table") as raised:
        serve._share_runtime_dir(tmp_path)
    size_mib = table_size(DEFAULT_SLOTS, PROBE) // (1 << 20)
    assert f"({size_mib} MiB, UID2_REPLAY_TABLE_ENTRIES)" in raised.value.message
    assert "No space left on device" in raised.value.message
    assert len(made) == 1
    assert not made[0].exists()
    assert RUNTIME_DIR_VARIABLE not in os.environ


T0 = 1_700_000_000_000


def test_a_clean_stop_keeps_the_table_for_the_next_serve(
    environ: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    environ.setenv("UID2_REPLAY_TABLE_ENTRIES", "5000")
    environ.setenv("UID2_REQUEST_MAX_AGE_MS", "60000")
    first = serve._share_runtime_dir(tmp_path)
    with ReplayTable.open(first / TABLE_FILE, max_past_ms=60_000) as table:
        assert table.first_use("k", bytes(8), T0, T0)
    serve._retire_runtime_dir(first, tmp_path)
    assert not first.exists()
    kept = tmp_path / KEPT_FILE
    assert kept.stat().st_mode & 0o777 == 0o600

    second = serve._share_runtime_dir(tmp_path)
    assert not kept.exists()  # restored once, never again after a later crash
    with ReplayTable.open(second / TABLE_FILE, max_past_ms=60_000) as table:
        assert not table.first_use("k", bytes(8), T0, T0 + 1_000)
        assert table.first_use("k", bytes(7) + b"\x01", T0, T0 + 1_000)
    assert (second / TABLE_FILE).stat().st_mode & 0o777 == 0o600


def test_a_kept_table_of_another_size_or_window_is_not_used(
    environ: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    environ.setenv("UID2_REQUEST_MAX_AGE_MS", "60000")
    for size, window in (("6000", "60000"), ("5000", "30000")):
        environ.setenv("UID2_REPLAY_TABLE_ENTRIES", "5000")
        environ.setenv("UID2_REQUEST_MAX_AGE_MS", "60000")
        made = serve._share_runtime_dir(tmp_path)
        with ReplayTable.open(made / TABLE_FILE, max_past_ms=60_000) as table:
            assert table.first_use("k", bytes(8), T0, T0)
        serve._retire_runtime_dir(made, tmp_path)
        environ.setenv("UID2_REPLAY_TABLE_ENTRIES", size)
        environ.setenv("UID2_REQUEST_MAX_AGE_MS", window)
        fresh = serve._share_runtime_dir(tmp_path)
        assert not (tmp_path / KEPT_FILE).exists()
        with ReplayTable.open(fresh / TABLE_FILE, max_past_ms=int(window)) as table:
            assert table.slots == int(size)
            assert table.first_use("k", bytes(8), T0, T0)  # a new, empty table
        shutil.rmtree(fresh)


def test_restore_explains_why_a_kept_file_is_not_used(tmp_path: Path) -> None:
    kept, table = tmp_path / KEPT_FILE, tmp_path / "table"
    assert restore(kept, table, max_past_ms=60_000, slots=5000) == "no table kept"
    kept.write_bytes(b"not a table at all")
    reason = restore(kept, table, max_past_ms=60_000, slots=5000)
    assert reason is not None
    assert "is not a replay table" in reason
    assert not kept.exists()
    assert not table.exists()


def test_a_table_that_cannot_be_kept_is_logged_and_the_directory_still_removed(
    environ: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    environ.setenv("UID2_REPLAY_TABLE_ENTRIES", "5000")
    made = serve._share_runtime_dir(tmp_path)
    serve._retire_runtime_dir(made, tmp_path / "no such directory")
    assert not made.exists()
    assert "replay table not kept for the next serve" in caplog.text
