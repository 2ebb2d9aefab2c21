"""A process on the SQLite default never imports psycopg: the PostgreSQL driver (with its libpq)
costs about 25 MB of resident memory, in every worker and in the parent, for nothing. And a serve
worker, which opens its store without the schema check, never imports Alembic (about 11 MB)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from uid2_operator.storage import upgrade

_PROBE = """
import sys
from uid2_operator.cli import main  # every command, serve included
from uid2_operator.storage import open_store, upgrade
from uid2_operator.web.operator_api import server  # what a worker runs

url = "sqlite:///" + sys.argv[1]
upgrade(url)
store = open_store(url)
with store.read() as rx:
    rx.participants.list_all()
store.close()
print(sorted(name for name in sys.modules if name.split(".")[0] in ("psycopg", "psycopg_binary")))
"""


def _imported_by(probe: str, db_file: Path) -> str:
    """What ``probe`` prints, run in a fresh interpreter with the SQLite file's path."""
    done = subprocess.run(  # noqa: S603 (this interpreter, a fixed program)
        [sys.executable, "-c", probe, str(db_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_sqlite_store_and_the_worker_import_no_postgresql_driver(tmp_path: Path) -> None:
    assert _imported_by(_PROBE, tmp_path / "uid2.db") == "[]\n"


_WORKER_PROBE = """
import sys
from uid2_operator.cli import serve  # what a spawned worker imports to run its target
from uid2_operator.storage import open_store
from uid2_operator.web.operator_api import server

store = open_store("sqlite:///" + sys.argv[1], check_schema=False)  # as a worker opens it
with store.read() as rx:
    rx.participants.list_all()
store.close()
print(sorted({name.split(".")[0] for name in sys.modules} & {"alembic", "mako", "pygments"}))
"""


def test_a_worker_opening_its_store_imports_no_migration_tool(tmp_path: Path) -> None:
    upgrade(f"sqlite:///{tmp_path / 'uid2.db'}")  # here, not in the probe
    assert _imported_by(_WORKER_PROBE, tmp_path / "uid2.db") == "[]\n"
