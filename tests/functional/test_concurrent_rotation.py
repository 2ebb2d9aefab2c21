"""Concurrent rotations of one key, each from its own service and store: exactly one successor."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_harness import BACKENDS, Database, database_for

from uid2_operator.bootstrap import ensure_keyring, open_services, upgrade_database
from uid2_operator.errors import InvalidTransition
from uid2_operator.services.context import Actor
from uid2_operator.services.views import IssuedKey
from uid2_operator.settings import Settings

WORKERS = 8
ACTOR = Actor("cli:racer", source="cli")


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    db: Database
    with database_for(request.param, tmp_path) as db:
        configured = Settings.from_env({}, data_dir=str(db.data_dir), database_url=db.url)
        ensure_keyring(configured)
        upgrade_database(configured)
        yield configured


def test_concurrent_rotations_make_one_successor(settings: Settings) -> None:
    setup = open_services(settings)
    try:
        site = setup.credentials.create_participant(
            ACTOR, name="P", type="publisher", roles=["GENERATOR"]
        ).site_id
        key_id = setup.credentials.create_key(
            ACTOR, site_id=site, name="k", roles=["GENERATOR"]
        ).key_id
    finally:
        setup.close()

    barrier = threading.Barrier(WORKERS)
    successes: list[IssuedKey] = []
    refusals: list[BaseException] = []
    others: list[BaseException] = []

    def rotate() -> None:
        services = open_services(settings)  # its own store and connection pool
        try:
            barrier.wait()
            successes.append(services.credentials.rotate_key(ACTOR, key_id))
        except InvalidTransition as exc:
            refusals.append(exc)
        except BaseException as exc:
            others.append(exc)
        finally:
            services.close()

    threads = [threading.Thread(target=rotate) for _ in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert others == []
    assert len(successes) == 1
    assert len(refusals) == WORKERS - 1
    check = open_services(settings)
    try:
        keys = check.credentials.key_page(ACTOR).items
        rotations = check.credentials.list_audit(ACTOR, action="key.rotate")
        assert check.credentials.verify_audit(ACTOR).ok
    finally:
        check.close()
    assert sorted(k.key_id for k in keys) == sorted([key_id, successes[0].key_id])
    assert [k.rotated_from for k in keys if k.key_id != key_id] == [key_id]
    assert len(rotations) == 1
