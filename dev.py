#!/usr/bin/env python3
"""Set-up and check commands that work on a fresh machine with only Python 3.11.

    python3 dev.py serve [ARGS...]   run the service on the embedded SQLite default
    python3 dev.py test  [PYTEST ARGS...]
                                     lint, type-check and run the whole test suite

Both bootstrap ``.venv`` from ``pyproject.toml`` pinned by ``constraints.txt`` and reinstall only
when one of those files changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def _run(*cmd: str | Path, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    result = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, check=False)  # noqa: S603
    if result.returncode != 0:
        sys.exit(result.returncode)


def ensure_venv(extras: str) -> None:
    """Create the virtual environment and install the project with ``extras`` when needed."""
    inputs = b"".join((ROOT / name).read_bytes() for name in ("pyproject.toml", "constraints.txt"))
    stamp = f"{extras}:{hashlib.sha256(inputs).hexdigest()}"
    marker = VENV / ".installed"
    if marker.exists() and stamp in marker.read_text().split():
        return
    if not PY.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    _run(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    target = f".[{extras}]" if extras else "."
    _run(PY, "-m", "pip", "install", "--quiet", "-c", "constraints.txt", "-e", target)
    previous = marker.read_text().split() if marker.exists() else []
    keep = [s for s in previous if s.split(":")[1] == stamp.split(":")[1]]
    marker.write_text("\n".join([*keep, stamp]) + "\n")


def serve(args: list[str]) -> None:
    ensure_venv("")
    cli = BIN / "uid2-operator"
    os.execv(cli, [str(cli), "serve", "--init-if-new", *args])  # noqa: S606


def _test_processes() -> int:
    """How many processes run the tests: one per CPU this process may use, at most four (each
    functional test starts real ``serve`` processes of its own, and PostgreSQL's connections are
    shared by all)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, cpus or 1))


def test(args: list[str]) -> None:
    ensure_venv("test")
    _run(BIN / "ruff", "check", "src", "tests", "bench", "dev.py")
    _run(BIN / "ruff", "format", "--check", "src", "tests", "bench", "dev.py")
    _run(BIN / "mypy")
    env = dict(os.environ)
    env.setdefault("UID2_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    for stale in ROOT.glob(".coverage*"):
        stale.unlink()
    processes = str(_test_processes())
    _run(
        PY, "-m", "pytest", "--numprocesses", processes, "--dist", "worksteal",
        "--cov", "--cov-report=term", *args, env=env,
    )  # fmt: skip
    # The wire layer is the protocol itself: every branch of it is exercised.
    _run(
        PY, "-m", "coverage", "report", "--include=src/uid2_operator/wire/*",
        "--fail-under=100", env=env,
    )  # fmt: skip


COMMANDS = {"serve": serve, "test": test}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        sys.exit(2)
    COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
