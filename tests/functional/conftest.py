"""Fixtures shared by the functional tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_harness import BACKENDS, Database, database_for
from sdk_sdist import sdk_sdist


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh store per test, on each backend in turn (``cli_harness.database_for``)."""
    with database_for(request.param, tmp_path) as db:
        yield db


@pytest.fixture(scope="module")
def sdk_source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SDK's source tree with its tests (downloaded once per pytest cache)."""
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    base = cache.mkdir("uid2-client-sdist") if cache is not None else tmp_path_factory.mktemp("sdk")
    return sdk_sdist(base)
