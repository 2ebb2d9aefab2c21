"""The CI entry point runs the suite with ``CI`` set, so PostgreSQL-backed tests cannot skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ci_mode import under_ci

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


@pytest.mark.parametrize(
    ("ci", "expected"),
    [
        (None, False),
        ("", False),
        ("0", False),
        ("false", False),
        ("False", False),
        ("no", False),
        ("off", False),
        ("true", True),
        ("True", True),
        ("1", True),
        ("yes", True),
    ],
)
def test_any_usual_ci_value_counts_as_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str | None, expected: bool
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert under_ci() is expected


@pytest.mark.parametrize(("ci", "outcome"), [("1", "error"), ("True", "error"), ("0", "skipped")])
def test_a_missing_postgresql_fails_the_suite_under_ci(ci: str, outcome: str) -> None:
    """Whatever value a CI service gives ``CI``, a PostgreSQL-backed case cannot pass by
    skipping."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["CI"] = ci
    env["UID2_TEST_POSTGRES_URL"] = "postgresql://postgres@127.0.0.1:1/none"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-cov",
         "tests/contract/test_audit_head_contract.py", "-k", "postgresql"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    summary = done.stdout.strip().splitlines()[-1]
    assert outcome in summary, done.stdout[-2000:]
    assert ("passed" in summary) is False
