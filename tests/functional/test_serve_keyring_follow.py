"""A KEK rotation with ``serve`` running, and no restart: every process follows the keyring file.

A real ``uid2-operator serve --workers 2`` runs while ``keyring add-version``, ``keyring reseal``
and ``keyring drop-version 1`` run as separate commands. Its workers take up the new keyring
before the re-seal reaches them (their health check stays OK throughout), and its admin API
seals a key created afterwards under the new version: the store names no version but 2 and the
official SDK generates tokens with that key and with a key from before the rotation. Stopped
and started again, ``serve`` loads everything with the one remaining version.
"""

from __future__ import annotations

import threading
import urllib.error
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_harness import database_for
from serve_harness import Credential, Prepared, Served, cli, poll, prepare, served
from uid2_client import TokenGenerateInput, Uid2PublisherClient

pytestmark = pytest.mark.functional

WORKERS = 2
ENV = {"UID2_POLL_INTERVAL_S": "0.2"}
IN_A_ROW = 20  # consecutive answers on fresh connections: both workers answer some of them
WAIT_S = 60.0  # how long to wait for a condition before failing (not a performance bound)
EMAIL = "keyring-follow@example.com"


def _until(check: Callable[[], bool], what: str) -> None:
    """Wait until ``check`` holds ``IN_A_ROW`` times in a row."""
    assert poll(lambda: all(check() for _ in range(IN_A_ROW)), WAIT_S), f"timed out: {what}"


def _generates(server: Served, cred: Credential) -> bool:
    client = Uid2PublisherClient(server.base_url, cred.key, cred.secret)
    try:
        response = client.generate_token(TokenGenerateInput.from_email(EMAIL))
    except urllib.error.HTTPError as error:
        error.close()
        return False
    return bool(response.is_success()) and response.get_identity() is not None


def _healthy(server: Served) -> bool:
    return server.request("GET", "/ops/healthcheck").status_code == 200


def _admin_key(prepared: Prepared, server: Served) -> Credential:
    body = {"site_id": prepared.site_id, "name": "after rotation", "roles": ["GENERATOR"]}
    response = server.admin("POST", "/keys", prepared.admin_token, body)
    assert response.status_code == 201, response.text
    issued = response.json()
    return Credential(issued["key_id"], issued["key"], issued["secret"], prepared.site_id)


class _HealthWatch:
    """Samples the health check on fresh connections until stopped; keeps every bad answer."""

    def __init__(self, server: Served) -> None:
        self._server = server
        self._stop = threading.Event()
        self.samples = 0
        self.bad: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            reply = self._server.request("GET", "/ops/healthcheck")
            self.samples += 1
            if reply.status_code != 200:
                self.bad.append(f"{reply.status_code} {reply.text}")
            self._stop.wait(0.05)

    def __enter__(self) -> _HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_a_kek_rotation_reaches_a_running_serve_without_a_restart(tmp_path: Path) -> None:
    with database_for("sqlite", tmp_path) as database:
        prepared = prepare(database)
        before = prepared.key
        with served(database, workers=WORKERS, env=ENV) as running:
            _until(lambda: _generates(running, before), "the key from before to work")
            with _HealthWatch(running) as watch:
                added = cli(database, "keyring", "add-version")
                assert (added["version"], added["keyring_versions"]) == (2, [1, 2])
                resealed = cli(database, "keyring", "reseal")
                assert resealed["from_versions"] == [1]
                assert resealed["total"] > 0
                dropped = cli(database, "keyring", "drop-version", "1")
                assert dropped["keyring_versions"] == [2]
                after = _admin_key(prepared, running)
                _until(lambda: _generates(running, after), "the key created after to work")
                _until(lambda: _generates(running, before), "the key from before to work")
                _until(lambda: _healthy(running), "every worker to be healthy")
            assert watch.samples > 0
            assert watch.bad == []

            status = cli(database, "keyring", "status")
            assert (status["active_version"], status["keyring_versions"]) == (2, [2])
            assert [v["version"] for v in status["versions"]] == [2]
            assert (status["unknown_versions"], status["to_reseal"]) == ([], 0)
            assert status["versions"][0]["sealed"]["client_secrets"] == 2

        with served(database, workers=WORKERS, env=ENV) as again:  # ready: every worker loaded
            for cred in (before, after):
                _until(lambda cred=cred: _generates(again, cred), f"{cred.key_id} to work")
            assert _healthy(again)
