"""The encryption keys stay usable when the time of day jumps under a running serve.

A host suspended or a VM paused for longer than the newest key's remaining life wakes up with
every key expired, while the monotonic clock the rotation schedule counts on has not moved; an
instance of a shared database whose clock is far ahead deletes the keys in use. Either way the
serving process's upkeep runs the rotation at once, not at its next scheduled run (an hour away
by default), and meanwhile a worker's health check says which keyset has no active key.

The first test runs a real ``serve`` whose processes see the time of day shifted by what a file
says (a ``sitecustomize`` module on their ``PYTHONPATH``; the monotonic clock is left alone);
the others drive the upkeep and a worker over a real store with the project's ``FixedClock``.
"""

from __future__ import annotations

import base64
import functools
import importlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import pytest
from cli_harness import Database, settings_of
from serve_harness import Credential, poll, prepare, served

from uid2_operator.bootstrap import Services, ensure_keyring, open_services, upgrade_database
from uid2_operator.clock import FixedClock, SystemClock
from uid2_operator.errors import NoActiveKey
from uid2_operator.serve_settings import ServeSettings
from uid2_operator.web.operator_api.server import OperatorServer, build_worker
from uid2_operator.wire.envelope import open_response, seal_request, unframe_response
from uid2_operator.wire.keys import active_key

pytestmark = pytest.mark.functional

serve = importlib.import_module("uid2_operator.cli.serve")  # the package names its command so
DAY_MS = 86_400_000
MONTH_MS = 31 * DAY_MS
"""Longer than a key lives (30 days): every key in use has expired after such a jump."""
SHIFT_VARIABLE = "UID2_TEST_CLOCK_SHIFT_FILE"
SITECUSTOMIZE = f'''
import os, time

_file = os.environ.get("{SHIFT_VARIABLE}")
if _file:
    _time_ns = time.time_ns

    def _shift_ns():
        try:
            with open(_file) as text:
                return int(text.read().strip() or 0) * 1_000_000
        except OSError:
            return 0

    time.time_ns = lambda: _time_ns() + _shift_ns()
    time.time = lambda: time.time_ns() / 1e9
'''
"""Shifts the time of day (``time.time``, ``time.time_ns``) by the milliseconds the file holds,
read at every call; ``time.monotonic`` is untouched, as across a suspend."""


def _generate(base_url: str, cred: Credential, now_ms: int) -> tuple[int, str]:
    """``/v2/token/generate``, sealed at ``now_ms``: the status, and the envelope's status
    (200) or the body (otherwise)."""
    nonce = os.urandom(8)
    sealed = seal_request(
        json.dumps({"email": "user@example.com"}).encode(),
        secret=cred.secret_bytes,
        now_ms=now_ms,
        nonce=nonce,
        random=os.urandom,
    )
    reply = httpx.post(
        f"{base_url}/v2/token/generate",
        content=base64.b64encode(sealed),
        headers={"authorization": f"Bearer {cred.key}", "content-type": "text/plain"},
        timeout=30,
    )
    if reply.status_code != 200:
        return reply.status_code, reply.text
    opened = open_response(
        unframe_response(reply.content, False), secret=cred.secret_bytes, nonce=nonce
    )
    return 200, opened["status"]


def test_a_serve_whose_time_of_day_jumps_a_month_makes_keys_at_once(
    database: Database, tmp_path: Path
) -> None:
    prepared = prepare(database)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    shift_file = tmp_path / "shift_ms"
    shift_file.write_text("0")
    paths = [str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {
        "PYTHONPATH": os.pathsep.join(paths),
        SHIFT_VARIABLE: str(shift_file),
        "UID2_POLL_INTERVAL_S": "0.2",
        # The scheduled run stays an hour away: only the jump can bring it forward.
        "UID2_KEY_ROTATION_INTERVAL_S": "3600",
    }
    with served(database, env=env) as server:
        url = server.base_url
        assert _generate(url, prepared.key, SystemClock().now_ms()) == (200, "success")

        shift_file.write_text(str(MONTH_MS))

        def generated() -> bool:
            return _generate(url, prepared.key, SystemClock().now_ms() + MONTH_MS)[0] == 200

        assert poll(generated, 20.0), "\n".join(server.lines)
        assert _generate(url, prepared.key, SystemClock().now_ms() + MONTH_MS) == (
            200,
            "success",
        )
        assert poll(lambda: server.request("GET", "/ops/healthcheck").text == "OK", 10.0)
        assert any("key rotation run at once: the time of day moved +" in x for x in server.lines)


# ------------------------------------------------------------- the upkeep, driven directly


@contextmanager
def _material(database: Database, clock: FixedClock, **options: Any) -> Iterator[Services]:
    settings = settings_of(database)
    ensure_keyring(settings)
    upgrade_database(settings)
    services = open_services(settings, clock=clock, **options)
    try:
        yield services
    finally:
        services.close()


def _keysets_without_active_key(services: Services, now_ms: int) -> list[int]:
    material = services.material.load_material()
    missing = []
    for keyset in material.keysets:
        if not keyset.enabled:
            continue
        try:
            active_key(material.keys, now_ms, keyset_id=keyset.keyset_id)
        except NoActiveKey:
            missing.append(keyset.keyset_id)
    return missing


class _Monotonic:
    """What the upkeep's module reads of ``time``: a monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def _upkeep(services: Services, clock: FixedClock, *, coverage: bool) -> Any:
    reader = functools.partial(serve.read_key_coverage, services.store) if coverage else None
    return serve._Upkeep(
        services,
        services.material,
        ServeSettings(poll_interval_s=1.0, key_rotation_interval_s=3600.0),
        key_coverage=reader,
        wall_ms=clock.now_ms,
    )


def test_the_upkeep_rotates_at_once_when_the_time_of_day_jumps(
    database: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without reading any key: the time of day moved a month while the monotonic clock moved
    a fifth of a second (a suspend). The rotation runs at the next turn, an hour before it is
    due."""
    clock = FixedClock(SystemClock().now_ms())
    monotonic = _Monotonic()
    monkeypatch.setattr(serve, "time", SimpleNamespace(monotonic=monotonic.monotonic))
    with _material(database, clock) as services:
        services.material.initialise()
        upkeep = _upkeep(services, clock, coverage=False)
        upkeep.tick()
        clock.at_ms += MONTH_MS
        monotonic.now += 0.2
        assert _keysets_without_active_key(services, clock.now_ms())  # every key expired
        with caplog.at_level(logging.WARNING, logger=serve.__name__):
            upkeep.tick()
        assert _keysets_without_active_key(services, clock.now_ms()) == []
    assert "key rotation run at once: the time of day moved +2678400 s" in caplog.text


def test_the_upkeep_rotates_at_once_when_no_key_is_active_at_the_time_of_day(
    database: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No single jump here: the time of day creeps ahead 59 s a turn (each step below the 60 s
    the upkeep takes for a jump) while the monotonic clock stands still, so neither a poll nor
    the schedule comes due. Once the keys in use have expired, the coverage the upkeep read from
    the store says no key is active at its time of day, and it rotates at once."""
    clock = FixedClock(SystemClock().now_ms())
    monotonic = _Monotonic()
    monkeypatch.setattr(serve, "time", SimpleNamespace(monotonic=monotonic.monotonic))
    with _material(database, clock) as services:
        services.material.initialise()
        upkeep = _upkeep(services, clock, coverage=True)
        upkeep.tick()  # the first poll: reads the coverage
        expiry_ms = 1000 * min(k.expires for k in services.material.load_material().keys)
        with caplog.at_level(logging.WARNING, logger=serve.__name__):
            while clock.now_ms() < expiry_ms + 60_000:
                clock.at_ms += 59_000
                upkeep.tick()
        assert _keysets_without_active_key(services, clock.now_ms()) == []
    assert caplog.text.count("key rotation run at once: an enabled keyset has no active") == 1
    assert "the time of day moved" not in caplog.text


def test_keys_deleted_by_an_instance_whose_clock_is_ahead_are_replaced_at_the_next_poll(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both clocks move a second a turn. Another instance of the store, its clock 400 days
    ahead, runs the rotation: it deletes every key in use as long expired and makes keys that
    activate in 400 days. At its next poll the upkeep sees the store changed, and the schedule
    it applies then gives every keyset a key active now: keys that activate later do not count
    as coverage."""
    clock = FixedClock(SystemClock().now_ms())
    monotonic = _Monotonic()
    monkeypatch.setattr(serve, "time", SimpleNamespace(monotonic=monotonic.monotonic))
    retention = {"expired_key_retention_s": 31 * 86_400}
    ahead = FixedClock(clock.now_ms() + 400 * DAY_MS)
    with (
        _material(database, clock, **retention) as services,
        _material(database, ahead, **retention) as elsewhere,
    ):
        services.material.initialise()
        upkeep = _upkeep(services, clock, coverage=True)
        upkeep.tick()
        assert elsewhere.material.rotate_keys().purged
        assert _keysets_without_active_key(services, clock.now_ms())
        clock.advance(1000)
        monotonic.now += 1.0
        upkeep.tick()
        assert _keysets_without_active_key(services, clock.now_ms()) == []


# ------------------------------------------------------------------- the worker's health


def _health(server: OperatorServer) -> tuple[int, str]:
    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=server)
        async with httpx.AsyncClient(transport=transport, base_url="http://op.test") as client:
            return await client.get("/ops/healthcheck")

    response = anyio.run(get)
    return response.status_code, response.text


def test_the_health_check_names_the_keysets_without_an_active_key(database: Database) -> None:
    clock = FixedClock(SystemClock().now_ms())
    with _material(database, clock) as services:
        services.material.initialise()
        server = build_worker(settings_of(database), ServeSettings(), clock=clock)
        try:
            server.worker.source.refresh()
            assert _health(server) == (200, "OK")

            clock.at_ms += MONTH_MS  # every key has expired; no rotation has run yet
            status, text = _health(server)
            assert status == 503
            assert text == (
                "Degraded: no active encryption key in the master keyset (-1), refresh keyset "
                "(-2), fallback publisher keyset (2); token requests that need one fail until "
                "the key rotation makes one"
            )

            services.material.rotate_keys()
            assert server.worker.source.refresh()
            assert _health(server) == (200, "OK")
        finally:
            server.worker.write_behind.close()
            server.worker.source.close()
            server.worker.store.close()
