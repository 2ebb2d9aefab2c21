"""Writes stopped where a Ctrl-C lands, and directories a user cannot write, for the tests of an
``init`` stopped part-way (unit and functional alike)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest


def interrupt_first_write_in(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the first ``os.write`` to a file in ``directory`` raise ``KeyboardInterrupt`` (Ctrl-C
    arriving once the file is open, before any byte of it is written)."""
    real_write = os.write

    def in_directory(fd: int) -> bool:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode) or not directory.is_dir():
            return False
        return any(
            os.path.samestat(os.lstat(directory / name), status) for name in os.listdir(directory)
        )

    def interrupted(fd: int, data: bytes | memoryview) -> int:
        if in_directory(fd):
            monkeypatch.setattr(os, "write", real_write)
            raise KeyboardInterrupt
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", interrupted)


@pytest.fixture(name="read_only_parent")
def read_only_parent_fixture(tmp_path: Path) -> Iterator[Path]:
    """A directory mode 0500; skipped where that does not stop writes (root)."""
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        probe = parent / "probe"
        try:
            probe.touch()
        except PermissionError:
            pass
        else:
            probe.unlink()
            if os.geteuid() == 0:
                pytest.skip("mode 0500 does not stop this user (root) from writing")
        yield parent
    finally:
        parent.chmod(0o700)
