"""The layering rules of docs/architecture.md, enforced.

``wire/`` and ``domain/`` are pure: no web framework, no database driver, no storage, services or
web code, and no clock or entropy of their own (``now`` and a random source are passed in).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "uid2_operator"
PURE_LAYERS = ("wire", "domain")

FORBIDDEN_MODULES = (
    "starlette", "fastapi", "uvicorn", "granian", "httpx", "requests", "aiohttp", "flask",
    "sqlalchemy", "alembic", "psycopg", "psycopg2", "sqlite3", "asyncpg", "redis",
    "uid2_operator.storage", "uid2_operator.services", "uid2_operator.web", "uid2_operator.cli",
    "uid2_operator.bootstrap", "uid2_operator.settings", "uid2_operator.clock",
    "socket", "random", "secrets", "time", "subprocess", "urllib", "http",
)  # fmt: skip

# Attribute reads that consult the clock or the OS entropy pool.
FORBIDDEN_CALLS = {
    ("os", "urandom"), ("os", "getrandom"), ("datetime", "now"), ("datetime", "utcnow"),
    ("datetime", "today"), ("date", "today"), ("uuid", "uuid4"), ("uuid", "uuid1"),
}  # fmt: skip


def _pure_files() -> list[Path]:
    return sorted(p for layer in PURE_LAYERS for p in (PACKAGE / layer).rglob("*.py"))


def _violations(source: str) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN_MODULES):
                found.append(f"imports {name}")
        if isinstance(node, ast.Attribute):
            owner = node.value
            left = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", None)
            if (left, node.attr) in FORBIDDEN_CALLS:
                found.append(f"uses {left}.{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.module in ("os", "datetime", "uuid"):
            for alias in node.names:
                if (node.module, alias.name) in FORBIDDEN_CALLS:
                    found.append(f"imports {node.module}.{alias.name}")
    return found


@pytest.mark.parametrize("path", _pure_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_layers_stay_pure(path: Path) -> None:
    assert _violations(path.read_text()) == []


@pytest.mark.parametrize(
    "source",
    [
        "import starlette.responses",
        "from sqlalchemy import select",
        "import sqlite3",
        "from uid2_operator.storage import sqlite",
        "from uid2_operator.services.keys import create",
        "from uid2_operator import web",
        "import time",
        "import os\nos.urandom(12)",
        "from os import urandom",
        "import datetime\ndatetime.datetime.now()",
        "from datetime import datetime\ndatetime.now()",
        "import secrets",
    ],
)
def test_the_checker_catches_each_rule(source: str) -> None:
    assert _violations(source), source


def test_the_pure_layers_exist() -> None:
    assert len(_pure_files()) >= 2
