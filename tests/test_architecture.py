"""The layering rules of docs/architecture.md, enforced.

``wire/`` and ``domain/`` are pure: no web framework, no database driver, no storage, services or
web code, no clock or entropy of their own (``now`` and a random source are passed in), and no
I/O (files, the environment, logging, threads, processes, the event loop; nor ``open`` or
``print``).
Import aliases are followed (``import os as o`` makes ``o.urandom`` count as ``os.urandom``), and
``getattr`` on an owner of a forbidden call is refused when it names that call or a computed name.

Only ``bootstrap.py`` picks and opens a storage backend: ``web/``, ``cli/`` and ``services/`` see
the store through ``storage.interface`` alone. Relative imports are resolved against the importing
module before any rule is applied, so ``from ..storage import open_store`` counts like the
absolute spelling.
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
    # No I/O of any kind: files, the environment, logging, threads, processes, the event loop.
    "os", "pathlib", "io", "shutil", "tempfile", "glob", "mmap", "fcntl", "select", "selectors",
    "signal", "ssl", "logging", "threading", "multiprocessing", "concurrent", "asyncio",
    "sqlite3", "dbm", "shelve", "pickle",
)  # fmt: skip

# Built-in functions that read or write files or the terminal.
FORBIDDEN_BUILTINS = frozenset({"open", "print", "input", "breakpoint"})

# Attribute reads that consult the clock or the OS entropy pool.
FORBIDDEN_CALLS = {
    ("os", "urandom"), ("os", "getrandom"), ("datetime", "now"), ("datetime", "utcnow"),
    ("datetime", "today"), ("date", "today"), ("uuid", "uuid4"), ("uuid", "uuid1"),
}  # fmt: skip


# Layers that reach the store only through its interface (bootstrap wires the backend in).
INTERFACE_ONLY_LAYERS = ("web", "cli", "services")
STORAGE = "uid2_operator.storage"
STORAGE_INTERFACE = "uid2_operator.storage.interface"


def _pure_files() -> list[Path]:
    return sorted(p for layer in PURE_LAYERS for p in (PACKAGE / layer).rglob("*.py"))


def _interface_only_files() -> list[Path]:
    return sorted(p for layer in INTERFACE_ONLY_LAYERS for p in (PACKAGE / layer).rglob("*.py"))


def _module_of(path: Path) -> str:
    """``.../src/uid2_operator/web/app.py`` -> ``uid2_operator.web.app`` (a package: itself)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from ... import`` names, relative levels resolved."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    drop = node.level - 1
    if drop >= len(package):
        raise AssertionError(f"relative import beyond the top package in {module}")
    base = package[: len(package) - drop]
    return ".".join([*base, node.module] if node.module else base)


def _imports(source: str, module: str, is_package: bool = False) -> list[tuple[str, list[str]]]:
    """Per import statement: the module it loads and the names it binds, absolute."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((alias.name, [alias.name]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            origin = _absolute(node, module, is_package)
            found.append((origin, [f"{origin}.{alias.name}" for alias in node.names]))
    return found


def _storage_violations(
    source: str, module: str = "uid2_operator.web.example", *, is_package: bool = False
) -> list[str]:
    """Imports of the storage package other than ``storage.interface``."""
    found: list[str] = []
    for _origin, names in _imports(source, module, is_package):
        for name in names:
            inside = name == STORAGE or name.startswith(STORAGE + ".")
            allowed = name == STORAGE_INTERFACE or name.startswith(STORAGE_INTERFACE + ".")
            if inside and not allowed:
                found.append(f"imports {name}")
    return found


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Names bound by ``import ... as`` and ``from ... import ... as``, to what they name:
    ``import os as o`` -> ``{"o": "os"}``, ``from datetime import datetime as D`` ->
    ``{"D": "datetime.datetime"}``."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bound.update((a.asname, a.name) for a in node.names if a.asname)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            bound.update((a.asname, f"{node.module}.{a.name}") for a in node.names if a.asname)
    return bound


def _owner_name(owner: ast.expr, aliases: dict[str, str]) -> str | None:
    """The last part of what ``owner`` names, through import aliases: ``o`` bound by
    ``import os as o`` is ``os``; ``dt.datetime`` is ``datetime``."""
    if isinstance(owner, ast.Name):
        return aliases.get(owner.id, owner.id).rsplit(".", 1)[-1]
    if isinstance(owner, ast.Attribute):
        return owner.attr
    return None


FORBIDDEN_OWNERS = {owner for owner, _ in FORBIDDEN_CALLS}


def _violations(
    source: str, module: str = "uid2_operator.wire.example", *, is_package: bool = False
) -> list[str]:
    found: list[str] = []
    for origin, bound in _imports(source, module, is_package):
        for name in dict.fromkeys([origin, *bound]):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN_MODULES):
                found.append(f"imports {name}")
    tree = ast.parse(source)
    aliases = _aliases(tree)
    shadowed = {  # a function or name of the module's own that happens to be called ``open``
        node.name if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else node.id
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        or (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store))
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            left = _owner_name(node.value, aliases)
            if (left, node.attr) in FORBIDDEN_CALLS:
                found.append(f"uses {left}.{node.attr}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "getattr"
            and node.args
        ):
            left = _owner_name(node.args[0], aliases)
            attr = node.args[1] if len(node.args) > 1 else None
            named = attr.value if isinstance(attr, ast.Constant) else None
            # A computed name cannot be checked, so any dynamic lookup on these owners is refused.
            if left in FORBIDDEN_OWNERS and (
                not isinstance(named, str) or (left, named) in FORBIDDEN_CALLS
            ):
                found.append(f"uses getattr({left}, {named!r})")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in FORBIDDEN_BUILTINS
            and node.func.id not in aliases
            and node.func.id not in shadowed
        ):
            found.append(f"calls {node.func.id}()")
        if isinstance(node, ast.ImportFrom) and node.module in ("os", "datetime", "uuid"):
            for alias in node.names:
                if (node.module, alias.name) in FORBIDDEN_CALLS:
                    found.append(f"imports {node.module}.{alias.name}")
    return found


@pytest.mark.parametrize("path", _pure_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_layers_stay_pure(path: Path) -> None:
    found = _violations(path.read_text(), _module_of(path), is_package=path.name == "__init__.py")
    assert found == []


@pytest.mark.parametrize("path", _interface_only_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_bootstrap_opens_storage_backends(path: Path) -> None:
    module = _module_of(path)
    found = _storage_violations(path.read_text(), module, is_package=path.name == "__init__.py")
    assert found == [], f"{module} must reach the store through bootstrap and storage.interface"


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
        "import os as o\no.urandom(8)",
        "import uuid as u\nu.uuid4()",
        "from datetime import datetime as D\nD.now()",
        "from datetime import date as Day\nDay.today()",
        "import datetime as dt\ndt.datetime.utcnow()",
        'import os\ngetattr(os, "urandom")(8)',
        'import os as o\ngetattr(o, "getrandom")',
        "import uuid\ngetattr(uuid, name)()",
        "import os\nos.environ['UID2_X']",
        "from os import getenv",
        "import logging\nlogging.getLogger(__name__).warning('x')",
        "from pathlib import Path\nPath('k').read_bytes()",
        "import threading",
        "import asyncio",
        "open('keyring.json').read()",
        "print(secret)",
    ],
)
def test_the_checker_catches_each_rule(source: str) -> None:
    assert _violations(source), source


@pytest.mark.parametrize(
    "source",
    [
        "import sys\nsys.byteorder",
        "from datetime import datetime as D\nD.fromtimestamp(0)",
        "def open(x): return x\nopen(1)",
        "getattr(record, name)",
        'import uuid as u\nu.UUID(bytes=b"0" * 16)',
    ],
)
def test_the_checker_lets_harmless_aliases_and_lookups_pass(source: str) -> None:
    assert _violations(source) == [], source


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("from ..storage import open_store", "uid2_operator.wire.envelope"),
        ("from ..services.keys import create", "uid2_operator.domain.keysets"),
        ("from .. import web", "uid2_operator.domain.keysets"),
        ("from ...storage.sql import SqlStore", "uid2_operator.domain.sub.rules"),
    ],
)
def test_the_checker_resolves_relative_imports(source: str, module: str) -> None:
    assert _violations(source, module), source


def test_relative_imports_inside_the_layer_are_allowed() -> None:
    assert _violations("from . import encoding", "uid2_operator.wire.envelope") == []
    assert _violations("from .aead import seal", "uid2_operator.wire.envelope") == []
    assert _violations("from .encoding import b64", "uid2_operator.wire", is_package=True) == []
    assert _absolute_of("from . import x", "uid2_operator.wire", is_package=True) == (
        "uid2_operator.wire"
    )
    assert _absolute_of("from .. import x", "uid2_operator.wire.aead") == "uid2_operator"


def _absolute_of(source: str, module: str, *, is_package: bool = False) -> str:
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.ImportFrom)
    return _absolute(node, module, is_package)


def test_a_relative_import_beyond_the_package_is_an_error() -> None:
    with pytest.raises(AssertionError, match="beyond the top package"):
        _violations("from .... import x", "uid2_operator.wire.envelope")


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("from uid2_operator.storage import open_store", "uid2_operator.cli.material"),
        ("from uid2_operator.storage.sql import SqlStore", "uid2_operator.services.sharing"),
        ("import uid2_operator.storage.engines", "uid2_operator.web.operator_api.server"),
        ("from uid2_operator import storage", "uid2_operator.cli.serve"),
        ("import uid2_operator.storage", "uid2_operator.cli.serve"),
        ("from ..storage import open_store", "uid2_operator.cli.material"),
        ("from ...storage.migrate import upgrade", "uid2_operator.web.operator_api.server"),
        ("from .. import storage", "uid2_operator.services.material"),
    ],
)
def test_the_checker_catches_each_storage_import(source: str, module: str) -> None:
    assert _storage_violations(source, module), source


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("from uid2_operator.storage.interface import Store", "uid2_operator.cli.material"),
        ("from uid2_operator.storage import interface", "uid2_operator.services.sharing"),
        ("import uid2_operator.storage.interface", "uid2_operator.web.operator_api.server"),
        ("from ..storage.interface import Tx", "uid2_operator.services.material"),
        ("from ...storage.interface import Store", "uid2_operator.web.operator_api.server"),
        ("from uid2_operator.bootstrap import open_services", "uid2_operator.cli.runtime"),
    ],
)
def test_the_storage_interface_is_allowed(source: str, module: str) -> None:
    assert _storage_violations(source, module) == []


def test_module_names_follow_the_files() -> None:
    assert _module_of(PACKAGE / "wire" / "aead.py") == "uid2_operator.wire.aead"
    assert _module_of(PACKAGE / "cli" / "__init__.py") == "uid2_operator.cli"


def test_the_pure_layers_exist() -> None:
    assert len(_pure_files()) >= 2
    assert {p.parent.name for p in _interface_only_files()} >= {"web", "cli", "services"}
