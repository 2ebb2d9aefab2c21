"""Services over a real, migrated SQLite file, with a clock that moves only when told to."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_fixtures import ACTOR, KEYRING, MakeService

from uid2_operator.clock import FixedClock
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.lifecycle import DEFAULT_ROTATION_AGE_MS
from uid2_operator.services.admin import AdminService
from uid2_operator.services.credentials import CredentialService
from uid2_operator.services.material import MaterialConfig, MaterialService
from uid2_operator.storage import SqlStore, open_store, upgrade


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("services-template") / "uid2.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def db_path(tmp_path: Path, migrated_template: Path) -> Path:
    path = tmp_path / "uid2.db"
    shutil.copyfile(migrated_template, path)
    return path


@pytest.fixture
def store(db_path: Path) -> Iterator[SqlStore]:
    opened = open_store(f"sqlite:///{db_path}")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def make_service(store: SqlStore, clock: FixedClock) -> MakeService:
    def make(environment: Environment = Environment.LOCAL, **kwargs: int) -> CredentialService:
        rotation_age_ms = kwargs.pop("rotation_age_ms", DEFAULT_ROTATION_AGE_MS)
        assert not kwargs, kwargs
        return CredentialService(
            store, KEYRING, environment, clock, os.urandom, rotation_age_ms=rotation_age_ms
        )

    return make


@pytest.fixture
def svc(make_service: MakeService) -> CredentialService:
    return make_service()


@pytest.fixture
def admin(store: SqlStore, clock: FixedClock) -> AdminService:
    return AdminService(store, KEYRING, Environment.LOCAL, clock, os.urandom)


@pytest.fixture
def material(store: SqlStore, clock: FixedClock) -> MaterialService:
    """The material, initialised, with 64 salt buckets in one chunk (a module that needs other
    settings defines its own)."""
    service = MaterialService(
        store, KEYRING, MaterialConfig(bucket_count=64, chunk_size=64), clock, os.urandom
    )
    service.initialise(ACTOR)
    return service
