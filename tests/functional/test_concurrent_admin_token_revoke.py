"""Concurrent revokes of the last two SUPER_USER tokens, each from its own services and store:
exactly one succeeds, so one active SUPER_USER token remains."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_harness import BACKENDS, Database, database_for

from uid2_operator.bootstrap import ensure_keyring, open_services, upgrade_database
from uid2_operator.errors import InvalidTransition
from uid2_operator.services.context import Actor
from uid2_operator.services.views import AdminTokenView
from uid2_operator.settings import Settings

ACTOR = Actor("cli:racer", source="cli")
ROUNDS = 5


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    db: Database
    with database_for(request.param, tmp_path) as db:
        configured = Settings.from_env({}, data_dir=str(db.data_dir), database_url=db.url)
        ensure_keyring(configured)
        upgrade_database(configured)
        yield configured


def _race(settings: Settings, token_ids: list[str]) -> tuple[list[AdminTokenView], int]:
    barrier = threading.Barrier(len(token_ids))
    successes: list[AdminTokenView] = []
    refusals: list[InvalidTransition] = []
    others: list[BaseException] = []

    def revoke(token_id: str) -> None:
        services = open_services(settings)  # its own store and connection pool
        try:
            barrier.wait()
            successes.append(services.admin.revoke_admin_token(ACTOR, token_id))
        except InvalidTransition as exc:
            refusals.append(exc)
        except BaseException as exc:
            others.append(exc)
        finally:
            services.close()

    threads = [threading.Thread(target=revoke, args=(tid,)) for tid in token_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert others == []
    assert all("create another SUPER_USER token first" in r.detail for r in refusals)
    return successes, len(refusals)


def test_two_concurrent_revokes_of_the_last_two_super_users_leave_one(settings: Settings) -> None:
    for _ in range(ROUNDS):
        setup = open_services(settings)
        try:
            pair = [
                setup.admin.create_admin_token(ACTOR, name=name, roles=["SUPER_USER"]).token_id
                for name in ("left", "right")
            ]
            for view in setup.admin.list_admin_tokens(ACTOR):  # earlier rounds' survivor
                if view.token_id not in pair and view.revoked_at_ms is None:
                    setup.admin.revoke_admin_token(ACTOR, view.token_id)
        finally:
            setup.close()

        successes, refused = _race(settings, pair)

        assert (len(successes), refused) == (1, 1)
        check = open_services(settings)
        try:
            active = [
                t.token_id
                for t in check.admin.list_admin_tokens(ACTOR)
                if t.revoked_at_ms is None and "SUPER_USER" in t.roles
            ]
            assert check.credentials.verify_audit(ACTOR).ok
        finally:
            check.close()
        assert active == [tid for tid in pair if tid != successes[0].token_id]
