"""Serve and its workers hold every key-encryption key, the pepper and every client secret in
memory: none of them may write a core file (the limit is 0, and cannot be raised again)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_harness import database_for
from serve_harness import prepare, served

pytestmark = pytest.mark.functional


def _core_limit(pid: int | str) -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            soft, hard = line.split()[4:6]
            return soft, hard
    raise AssertionError(f"no core limit listed for {pid}")


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="needs /proc/<pid>/limits")
def test_neither_serve_nor_its_workers_can_dump_core(tmp_path: Path) -> None:
    with database_for("sqlite", tmp_path) as database:
        prepare(database)
        with served(database, workers=2) as running:
            workers = running.workers(2, timeout_s=30)
            for pid in (running.process.pid, *workers):
                assert _core_limit(pid) == ("0", "0"), pid
