"""The CI entry point runs the suite with ``CI`` set, so PostgreSQL-backed tests cannot skip."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / ".ci" / "run"


def _ci_seen_by_the_test_command(tmp_path: Path, ci: str | None) -> str:
    """Run ``.ci/run`` with a stand-in ``python3`` that reports the CI variable it was given."""
    stub = tmp_path / "python3"
    stub.write_text('#!/bin/sh\nprintf "%s|%s" "${CI-unset}" "$*"\n')
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = f"{tmp_path}{os.pathsep}{env.get('PATH', '')}"
    if ci is not None:
        env["CI"] = ci
    done = subprocess.run(  # noqa: S603 (a fixed script of this repository)
        ["/usr/bin/env", "bash", str(ENTRY)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout


@pytest.mark.parametrize(("given", "seen"), [(None, "true"), ("true", "true"), ("1", "1")])
def test_the_entry_point_sets_ci_unless_given(tmp_path: Path, given: str | None, seen: str) -> None:
    assert _ci_seen_by_the_test_command(tmp_path, given) == f"{seen}|dev.py test"
