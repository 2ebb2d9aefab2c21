"""At start-up the serving process records in the store the longest lifetime it gives tokens,
raising (never lowering) what an earlier serve recorded, before any worker issues a token; every
key purge then honours it, whichever process runs it. The start-up function serve calls, on a
real data directory."""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path

import pytest

from uid2_operator.bootstrap import (
    KEYRING_DEBRIS_AGE_S,
    ensure_keyring,
    open_services,
    upgrade_database,
)
from uid2_operator.serve_settings import ServeSettings
from uid2_operator.settings import Settings

serve = importlib.import_module("uid2_operator.cli.serve")  # the package names its command so
DAY_S = 86_400


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A local data directory with a keyring and a migrated database, before any material."""
    chosen = Settings.from_env({}, data_dir=str(tmp_path / "data"))
    ensure_keyring(chosen)
    upgrade_database(chosen)
    return chosen


def _start(settings: Settings, environ: dict[str, str]) -> None:
    services = serve._open_serving(settings, ServeSettings.from_env(environ))
    services.close()


def _recorded(settings: Settings) -> tuple[int | None, int]:
    """The recorded longest token lifetime, and how many encryption keys exist."""
    opened = open_services(settings)
    try:
        with opened.store.read() as tx:
            return tx.encryption_keys.longest_token_lifetime_s(), len(tx.encryption_keys.list_all())
    finally:
        opened.close()


def test_serve_records_a_raised_refresh_token_lifetime(settings: Settings) -> None:
    _start(settings, {"UID2_REFRESH_TOKEN_EXPIRES_AFTER_S": str(90 * DAY_S)})
    recorded, keys = _recorded(settings)
    assert recorded == 90 * DAY_S
    assert keys > 0  # the material was made in the same start-up


def test_serve_with_default_lifetimes_records_the_longest_default(settings: Settings) -> None:
    _start(settings, {})
    assert _recorded(settings)[0] == 30 * DAY_S  # sharing tokens, in the local environment


def test_a_later_serve_with_shorter_lifetimes_does_not_lower_it(settings: Settings) -> None:
    _start(settings, {"UID2_REFRESH_TOKEN_EXPIRES_AFTER_S": str(90 * DAY_S)})
    _start(settings, {})
    assert _recorded(settings)[0] == 90 * DAY_S
    _start(settings, {"UID2_MAX_SHARING_LIFETIME_S": str(120 * DAY_S)})
    assert _recorded(settings)[0] == 120 * DAY_S


def test_serve_removes_what_a_crashed_keyring_write_left_before_it_starts(
    settings: Settings,
) -> None:
    debris = settings.keyring_path.with_name(f".{settings.keyring_path.name}.k3y_t3mp.tmp")
    debris.write_text(settings.keyring_path.read_text(encoding="utf-8"), encoding="utf-8")
    debris.chmod(0o600)
    then = time.time() - KEYRING_DEBRIS_AGE_S - 1
    os.utime(debris, (then, then))
    _start(settings, {})
    assert not debris.exists()
    assert settings.keyring_path.exists()
