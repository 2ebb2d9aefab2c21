"""An API key sent as a client-side ``subscription_id`` or ``public_key`` is logged: it sits in a
web page or app.

The answer is the one any unknown subscription gets (400 ``bad subscription_id``). One WARNING
line names the key id, never the text, at most once a minute per key id; a text that does not
verify as one of this environment's keys (a forged tail, another environment) is not logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import anyio
import httpx
import pytest
from operator_harness import build_world_snapshot

from uid2_operator.clock import FixedClock
from uid2_operator.domain.key_format import checksum
from uid2_operator.domain.participants import ParticipantType
from uid2_operator.errors import CstgBadPublicKey, CstgBadSubscription, UID2Error
from uid2_operator.services import data_plane
from uid2_operator.services.data_plane import EXPOSED_KEY_LOG_INTERVAL_MS, ExposedKeyLog
from uid2_operator.services.public_suffix import registrable_domain_lookup
from uid2_operator.services.snapshot import CstgKeypair, SiteData, Snapshot
from uid2_operator.web.operator_api.app import create_operator_app
from uid2_operator.web.operator_api.errors import render
from uid2_operator.wire.cstg import build_request, private_key_from_random, public_key_der

LOGGER = "uid2_operator.services.data_plane"
SERVER_KEY = private_key_from_random(lambda n: hashlib.sha256(b"srv").digest()[:n].ljust(n, b"s"))
LOOKUP = registrable_domain_lookup()


def _body(subscription_id: str, now_ms: int) -> bytes:
    built = build_request(
        public_key_der(SERVER_KEY.public_key()),
        {"email_hash": "ntI244ZRTXwAwpki6/M5cyBYW7h/Wq576lnN3l9+W/c="},
        timestamp=now_ms,
        subscription_id=subscription_id,
        random=os.urandom,
    )
    return json.dumps(built.body).encode()


def _refused(
    error: type[UID2Error], snapshot: Snapshot, body: bytes, now_ms: int, log: ExposedKeyLog
) -> Any:
    """The rendered refusal (``error``) of a client-side generate of ``body``."""
    with pytest.raises(error) as caught:
        data_plane.client_generate(
            snapshot,
            body,
            origin="https://pub.example.com",
            now_ms=now_ms,
            random=os.urandom,
            registrable_domain=LOOKUP,
            exposed_keys=log,
        )
    return render(caught.value)


def _answer(snapshot: Snapshot, subscription_id: str, now_ms: int, log: ExposedKeyLog) -> Any:
    return _refused(CstgBadSubscription, snapshot, _body(subscription_id, now_ms), now_ms, log)


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_an_api_key_as_subscription_id_is_logged_by_key_id_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FixedClock()
    snapshot, creds = build_world_snapshot(clock.now_ms())
    a, x = creds["A"], creds["X"]
    log = ExposedKeyLog()
    unknown = _answer(snapshot, "Qq1Qq1Qq1Q", clock.now_ms(), log)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert _answer(snapshot, a.key, clock.now_ms(), log) == unknown  # the answer is unchanged
        assert _answer(snapshot, a.key, clock.now_ms(), log) == unknown
        assert _answer(snapshot, x.key, clock.now_ms(), log) == unknown  # disabled: exposed too
        lines = _lines(caplog)
        assert len(lines) == 2
        assert f"key_id={a.key_id}" in lines[0]
        assert f"key_id={x.key_id}" in lines[1]
        clock.advance(EXPOSED_KEY_LOG_INTERVAL_MS - 1)
        _answer(snapshot, a.key, clock.now_ms(), log)
        assert len(_lines(caplog)) == 2
        clock.advance(1)
        _answer(snapshot, a.key, clock.now_ms(), log)
        assert len(_lines(caplog)) == 3
    for cred in (a, x):
        assert cred.key not in caplog.text
        assert cred.key.split(".")[1] not in caplog.text
        assert cred.secret not in caplog.text


def test_texts_that_are_not_this_environments_keys_are_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FixedClock()
    snapshot, creds = build_world_snapshot(clock.now_ms())
    a = creds["A"]
    forged_body = f"{a.key_id}.{'Z' * 33}"
    other_env = a.key.replace("UID2-C-L-", "UID2-C-P-", 1)
    other_env = other_env[:-5] + checksum(other_env[:-5])
    log = ExposedKeyLog()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for text in (forged_body + checksum(forged_body), other_env, a.key_id, "UID2-C-L-x"):
            _answer(snapshot, text, clock.now_ms(), log)
    assert _lines(caplog) == []


def test_the_operator_answers_an_exposed_key_as_any_unknown_subscription(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FixedClock()
    snapshot, creds = build_world_snapshot(clock.now_ms())
    a = creds["A"]
    app = create_operator_app(snapshot_provider=lambda: snapshot, clock=clock)

    def post(subscription_id: str) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://op.test") as c:
                return await c.post(
                    "/v2/token/client-generate",
                    content=_body(subscription_id, clock.now_ms()),
                    headers={"origin": "https://pub.example.com"},
                )

        return anyio.run(send)

    unknown = post("Qq1Qq1Qq1Q")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        exposed = post(a.key)
    assert (exposed.status_code, exposed.content) == (unknown.status_code, unknown.content)
    assert exposed.status_code == 400
    assert [line.count(a.key_id) for line in _lines(caplog)] == [1]
    assert a.key not in caplog.text


def test_an_api_key_as_public_key_is_logged_and_answered_as_a_bad_public_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past a known subscription, the public key is read: an API key there is no public key
    (400 ``bad public key``, as any unreadable one), and it is exposed all the same."""
    clock = FixedClock()
    world, creds = build_world_snapshot(clock.now_ms())
    a = creds["A"]
    subscription = "Qq1Qq1Qq1Q"
    keypair = CstgKeypair(subscription, 999, False, SERVER_KEY)
    snapshot = replace(
        world,
        keypairs=MappingProxyType({subscription: keypair}),
        sites=MappingProxyType(
            {999: SiteData(999, ParticipantType.PUBLISHER, True, ("example.com",))}
        ),
    )

    def answer(public_key: str) -> Any:
        body = json.loads(_body(subscription, clock.now_ms()))
        body["public_key"] = public_key
        return _refused(CstgBadPublicKey, snapshot, json.dumps(body).encode(), clock.now_ms(), log)

    log = ExposedKeyLog()
    garbage = answer("not base64 at all!")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert answer(a.key) == garbage
        assert answer(f"{a.key_id}.{'Z' * 33}") == garbage  # not a key of this store
    lines = _lines(caplog)
    assert len(lines) == 1
    assert f"client-side public_key: key_id={a.key_id}" in lines[0]
    assert a.key not in caplog.text


@pytest.mark.parametrize(
    "wrong",
    [
        {"payload": None},
        {"iv": None},
        {"subscription_id": None},
        {"timestamp": "now"},  # refused by the request parser, before any field is read
        {"subscription_id": 12345},
    ],
)
def test_an_api_key_as_public_key_is_logged_whatever_else_is_wrong(
    caplog: pytest.LogCaptureFixture, wrong: dict[str, Any]
) -> None:
    """Whatever the request gets wrong first (a missing field, a field of the wrong type, an
    unknown subscription), the key sits in the page all the same."""
    clock = FixedClock()
    snapshot, creds = build_world_snapshot(clock.now_ms())
    a = creds["A"]
    body = json.loads(_body("Qq1Qq1Qq1Q", clock.now_ms()))
    body["public_key"] = a.key
    for name, value in wrong.items():
        if value is None:
            del body[name]
        else:
            body[name] = value
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _refused(UID2Error, snapshot, json.dumps(body).encode(), clock.now_ms(), ExposedKeyLog())
    assert [line.count(f"public_key: key_id={a.key_id}") for line in _lines(caplog)] == [1]
    assert a.key not in caplog.text


def test_an_api_key_as_subscription_id_in_a_body_of_the_wrong_shape_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FixedClock()
    snapshot, creds = build_world_snapshot(clock.now_ms())
    a = creds["A"]
    body = json.loads(_body(a.key, clock.now_ms()))
    body["timestamp"] = "now"  # refused by the request parser, before any field is read
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        _refused(UID2Error, snapshot, json.dumps(body).encode(), clock.now_ms(), ExposedKeyLog())
    assert [line.count(f"subscription_id: key_id={a.key_id}") for line in _lines(caplog)] == [1]
    assert a.key not in caplog.text
