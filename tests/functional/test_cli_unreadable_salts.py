"""A salt chunk that does not open is refused with one clean line, in a real process.

Reading the salt table streams its chunks from the store. When one of them fails to open, the
refusal must be the command's own ``Error:`` line and nothing more: the stream is closed while
its connection is still open, so no cursor is left for the interpreter to close later against a
closed connection (SQLite then logged "Error closing cursor" with a traceback after the answer).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pytest
from cli_harness import run_installed

from uid2_operator.settings import DB_FILE

pytestmark = pytest.mark.functional


def _run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_installed(data_dir, *args, env={"UID2_SALT_BUCKETS": "1024"})


def _damage_first_chunk(data_dir: Path) -> None:
    with closing(sqlite3.connect(data_dir / DB_FILE)) as conn:
        (sealed,) = conn.execute("SELECT salts FROM salt_chunks ORDER BY chunk LIMIT 1").fetchone()
        damaged = bytearray(sealed)
        damaged[len(damaged) // 2] ^= 0x01
        conn.execute("UPDATE salt_chunks SET salts = ? WHERE chunk = 0", (bytes(damaged),))
        conn.commit()


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_a_salt_chunk_that_does_not_open_gives_one_error_line(
    tmp_path: Path, as_json: bool
) -> None:
    data_dir = tmp_path / "data"
    assert _run(data_dir, "init").returncode == 0
    _damage_first_chunk(data_dir)

    result = _run(data_dir, "salts", "rotate", *(["--json"] if as_json else []))

    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr == "Error: The sealed salt_chunk 0 does not open\n"
    if as_json:
        assert json.loads(result.stdout)["error"]["code"] == "sealed_secret_unreadable"
    else:
        assert result.stdout == ""
