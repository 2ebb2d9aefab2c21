"""What the admin API answers when a write meets a keyring the store's KEK check values
contradict (every backend): the code automation knows (``keyring_invalid``), and a message that
names the versions and the remedy, since nothing else tells the administrator which file to copy;
nothing is written, and the log line is the admin API's one line for a 500, without the
message's text or a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import httpx
import pytest

from uid2_operator.bootstrap import (
    KEYRING_CHECK_INTERVAL_S,
    KeyringFile,
    ensure_keyring,
    keyring_rotation_service,
    open_services,
)
from uid2_operator.clock import FixedClock
from uid2_operator.domain.sealing import Keyring, add_kek_version
from uid2_operator.errors import KekCheckMismatch
from uid2_operator.services.context import Actor
from uid2_operator.settings import Settings
from uid2_operator.web.admin_api import create_admin_app
from uid2_operator.web.admin_api.errors import render_error

ACTOR = Actor("cli:tester", request_id="req-1", source="cli")
PREFIX = "/admin/api"


class _Monotonic:
    def __init__(self) -> None:
        self.at = 100.0

    def __call__(self) -> float:
        return self.at


def _settings(directory: Path, store_url: str, keyring_file: Path | None = None) -> Settings:
    env = {
        "UID2_DATA_DIR": str(directory / "data"),
        "UID2_DATABASE_URL": store_url,
        "UID2_SALT_BUCKETS": "1024",
    }
    if keyring_file is not None:
        env["UID2_KEYRING_FILE"] = str(keyring_file)
    return Settings.from_env(env)


def _replace_file(path: Path, keyring: Keyring) -> None:
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(keyring.to_json(), encoding="utf-8")
    os.replace(temporary, path)


def _post(app: object, token: str, path: str, body: dict[str, object]) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as client:
            return await client.post(
                PREFIX + path, json=body, headers={"authorization": f"Bearer {token}"}
            )

    return asyncio.run(send())


def test_a_write_refused_for_a_contradicted_keyring_answers_its_versions_and_remedy(
    tmp_path: Path, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path, store_url)
    right = ensure_keyring(settings)
    setup = open_services(settings, keyring=right)
    try:
        setup.material.initialise(ACTOR)
        site = setup.credentials.create_participant(
            ACTOR, name="Publisher", type="publisher", roles=["GENERATOR"]
        ).site_id
        token = setup.admin.create_admin_token(ACTOR, name="ops", roles=["SUPER_USER"]).token
    finally:
        setup.close()

    # The serving process follows its file; the file gains a version 2 of its own, which the
    # store does not know yet, so it is taken up ...
    monotonic = _Monotonic()
    source = KeyringFile(settings, monotonic=monotonic)
    serving = open_services(settings, keyring=source)
    other_file = tmp_path / "other-keyring.json"
    other_file.write_text(right.to_json(), encoding="utf-8")
    other_file.chmod(0o600)
    try:
        _replace_file(settings.keyring_path, add_kek_version(right, os.urandom))
        monotonic.at += KEYRING_CHECK_INTERVAL_S
        assert source.current().versions == (1, 2)
        # ... then another instance adds and records its own version 2.
        other = _settings(tmp_path, store_url, other_file)
        keyring_rotation_service(other, serving.store).add_version(ACTOR)
        with serving.store.read() as rx:
            seq_before = rx.change_seq()

        app = create_admin_app(serving, clock=FixedClock())
        with caplog.at_level(logging.INFO):
            answer = _post(
                app, token, "/keys", {"site_id": site, "name": "k", "roles": ["GENERATOR"]}
            )

        assert answer.status_code == 500
        assert answer.json()["error"] == {
            "code": "keyring_invalid",
            "message": (
                "This keyring's key-encryption key version 2 is another key than the database's "
                "version 2: copy the keyring file of the instance that added version 2 here "
                "(over this one), then run the command again"
            ),
        }
        with serving.store.read() as rx:
            assert rx.change_seq() == seq_before  # nothing written
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "failed with KekCheckMismatch" in logged
        assert "another key" not in logged
        assert "Traceback" not in caplog.text
    finally:
        serving.close()


def test_only_the_check_value_refusal_sends_its_message() -> None:
    mismatch = render_error(KekCheckMismatch("versions 3 and 4 differ"))
    assert (mismatch.status, mismatch.body["error"]) == (
        500,
        {"code": "keyring_invalid", "message": "versions 3 and 4 differ"},
    )
