"""A refused API key is counted in the metrics under its key id, but it is not the key's usage.

Through the observer a served worker is wired with (``build_worker``): the request metrics label
a 401 with the key id of a key whose text verified (a disabled key, say), never with the id a
forged text names, while the usage meter, whose totals become the key's ``usage`` and
``last_used_at``, counts only the requests the key authenticated. The worker serves the test
world's snapshot; its store is never reached.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from operator_harness import Credential, build_world_snapshot

from uid2_operator.clock import FixedClock
from uid2_operator.domain.key_format import checksum
from uid2_operator.domain.sealing import generate_keyring
from uid2_operator.serve_settings import ServeSettings
from uid2_operator.settings import Settings
from uid2_operator.web.operator_api.server import OperatorServer, build_worker
from uid2_operator.wire.envelope import seal_request

GENERATE = "/v2/token/generate"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[OperatorServer, FixedClock, dict[str, Credential]]]:
    clock = FixedClock()
    snapshot, credentials = build_world_snapshot(clock.now_ms())
    server = build_worker(
        Settings.from_env({}, data_dir=str(tmp_path / "data")),
        ServeSettings(),
        keyring=generate_keyring(os.urandom, development=True),
        clock=clock,
    )
    server.worker.source.current = snapshot  # what the API reads, as a poll would install it
    yield server, clock, credentials
    server.worker.write_behind.close()
    server.worker.source.close()
    server.worker.store.close()


def _generate(server: OperatorServer, clock: FixedClock, key: str, secret: str) -> int:
    sealed = seal_request(
        b'{"email":"someone@example.com","optout_check":1}',
        secret=base64.b64decode(secret),
        now_ms=clock.now_ms(),
        nonce=os.urandom(8),
        random=os.urandom,
    )

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=server)
        async with httpx.AsyncClient(transport=transport, base_url="http://op.test") as client:
            return await client.post(
                GENERATE,
                content=base64.b64encode(sealed),
                headers={"authorization": f"Bearer {key}", "content-type": "text/plain"},
            )

    return anyio.run(send).status_code


def _metrics(server: OperatorServer) -> str:
    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=server)
        async with httpx.AsyncClient(transport=transport, base_url="http://op.test") as client:
            return await client.get("/metrics")

    response = anyio.run(get)
    assert response.status_code == 200
    return response.text


def test_refused_keys_are_counted_in_the_metrics_but_not_as_usage(
    world: tuple[OperatorServer, FixedClock, dict[str, Credential]],
) -> None:
    server, clock, creds = world
    a, x = creds["A"], creds["X"]  # X is a disabled key
    body = f"{a.key_id}.{'Z' * 33}"
    forged = body + checksum(body)  # A's public key id, the right shape, the wrong secret part
    assert _generate(server, clock, forged, a.secret) == 401
    assert _generate(server, clock, x.key, x.secret) == 401
    counts = server.worker.metrics.counts()
    assert counts[(GENERATE, "", 401)] == 1  # the forged text: no key id series
    assert not any(key_id == a.key_id for _path, key_id, _status in counts)
    assert counts[(GENERATE, x.key_id, 401)] == 1
    scraped = _metrics(server)  # what anyone who reaches the operator port can read
    assert a.key_id not in scraped
    assert f'key_id="{x.key_id}"' in scraped
    assert len(server.worker.write_behind.usage) == 0
    assert server.worker.write_behind.usage.take() == []

    # A request the key authenticated is its usage, and only that one.
    assert _generate(server, clock, a.key, a.secret) == 200
    assert [(k, e, n) for k, e, n, _at in server.worker.write_behind.usage.take()] == [
        (a.key_id, GENERATE, 1)
    ]
    assert server.worker.metrics.counts()[(GENERATE, a.key_id, 200)] == 1
