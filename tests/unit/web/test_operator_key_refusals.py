"""A refused API key leaves a trace: counted under its key id and logged with its reason.

Every refusal answers the same bare 401. When the presented text verified as a key the snapshot
knows (the key refused for its state, its participant's, a role or its secrets), the metrics
observer gets that key id and one WARNING line names it and the reason, at most once a minute per
key id and reason. A text that does not verify, even one naming a known key id, is neither a
label nor logged (else /metrics would tell anyone which key ids exist), and no line ever carries
the presented text.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import replace

import pytest
from operator_harness import Credential, GenerateCaller, build_world_snapshot

from uid2_operator.clock import FixedClock
from uid2_operator.domain.key_format import checksum
from uid2_operator.domain.sealing import ClientSecret
from uid2_operator.services.snapshot import ClientRecord, LiveSecret
from uid2_operator.web.operator_api.app import (
    REFUSAL_LOG_INTERVAL_MS,
    RefusalLog,
)

GENERATE = "/v2/token/generate"
LOGGER = "uid2_operator.web.operator_api.app"


class _Operator(GenerateCaller):
    def generate_status(self, key: str, secret: str) -> int:
        response = self.generate(key, secret)
        if response.status_code == 401:
            assert response.content == b'{"status":"unauthorized"}'
        return response.status_code


def _world() -> tuple[_Operator, dict[str, Credential]]:
    clock = FixedClock()
    snapshot, credentials = build_world_snapshot(clock.now_ms())
    return _Operator(snapshot, clock), credentials


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_a_disabled_key_is_counted_under_its_id_and_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    operator, creds = _world()
    x = creds["X"]  # a disabled key
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            assert operator.generate_status(x.key, x.secret) == 401
        assert operator.observed == [(GENERATE, x.key_id, 401)] * 3
        assert _lines(caplog) == [
            f"API key refused: key_id={x.key_id} reason=key_disabled path={GENERATE}"
        ]
        operator.clock.advance(REFUSAL_LOG_INTERVAL_MS)
        assert operator.generate_status(x.key, x.secret) == 401
    lines = _lines(caplog)
    assert len(lines) == 2
    assert lines[1].endswith(
        "reason=key_disabled path=/v2/token/generate (2 more since the last line)"
    )
    assert x.key not in caplog.text
    assert x.key.split(".")[1] not in caplog.text
    assert x.secret not in caplog.text


@pytest.mark.parametrize(
    ("name", "reason"),
    [("OFF", "participant_disabled"), ("M", "missing_role")],
)
def test_each_reason_is_logged_under_the_key_id(
    name: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    operator, creds = _world()
    cred = creds[name]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert operator.generate_status(cred.key, cred.secret) == 401
    assert operator.observed == [(GENERATE, cred.key_id, 401)]
    assert _lines(caplog) == [
        f"API key refused: key_id={cred.key_id} reason={reason} path={GENERATE}"
    ]


@pytest.mark.parametrize("name", ["A", "X"])
def test_a_forged_text_naming_a_known_key_id_is_neither_a_label_nor_logged(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Whether the named key is active (A) or disabled (X), a text that does not verify leaves
    the same trace as one naming no key at all: none."""
    operator, creds = _world()
    cred = creds[name]
    body = f"{cred.key_id}.{'Z' * 33}"
    forged = body + checksum(body)  # the right shape and checksum, the wrong secret tail
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert operator.generate_status(forged, cred.secret) == 401
        assert operator.generate_status(f"{cred.key_id}.mistyped", cred.secret) == 401
    assert operator.observed == [(GENERATE, None, 401)] * 2
    assert _lines(caplog) == []
    assert cred.key_id not in caplog.text


def test_an_unknown_key_id_is_neither_a_label_nor_logged(caplog: pytest.LogCaptureFixture) -> None:
    operator, creds = _world()
    a = creds["A"]
    unknown_id = "UID2-C-L-1001-zzzzzz"
    body = f"{unknown_id}.{'Q' * 33}"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert operator.generate_status(body + checksum(body), a.secret) == 401
        assert operator.generate_status("UID2-C-P-1001-abcdef.x", a.secret) == 401  # another env
        assert operator.generate_status("no-key-at-all", a.secret) == 401
    assert [key_id for _, key_id, _ in operator.observed] == [None, None, None]
    assert _lines(caplog) == []


def test_success_is_counted_under_the_key_and_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    operator, creds = _world()
    a = creds["A"]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert operator.generate_status(a.key, a.secret) == 200
    assert operator.observed == [(GENERATE, a.key_id, 200)]
    assert _lines(caplog) == []


def test_a_key_with_no_client_secret_left_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    clock = FixedClock()
    snapshot, creds = build_world_snapshot(clock.now_ms())
    a = creds["A"]
    record = snapshot.clients[a.key_id]
    retired = LiveSecret(1, ClientSecret(base64.b64decode(a.secret)), clock.now_ms() - 1)
    clients = {
        **snapshot.clients,
        a.key_id: ClientRecord(record.key, record.participant, (retired,)),
    }
    operator = _Operator(replace(snapshot, clients=clients), clock)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert operator.generate_status(a.key, a.secret) == 401
    assert operator.observed == [(GENERATE, a.key_id, 401)]
    assert _lines(caplog) == [
        f"API key refused: key_id={a.key_id} reason=no_live_client_secret path={GENERATE}"
    ]


def test_the_refusal_log_remembers_a_bounded_number_of_keys(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusals = RefusalLog(interval_ms=1000, max_entries=2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        refusals.refused("k1", "key_disabled", GENERATE, 0)
        refusals.refused("k2", "key_disabled", GENERATE, 500)
        refusals.refused("k1", "key_disabled", GENERATE, 600)  # inside the interval: counted
        assert len(_lines(caplog)) == 2
        # A third pair finds the table full with nothing expired: it is emptied, so k1 is
        # logged again rather than the table growing.
        refusals.refused("k3", "key_disabled", GENERATE, 700)
        refusals.refused("k1", "key_disabled", GENERATE, 800)
        assert [line.split()[3] for line in _lines(caplog)] == [
            "key_id=k1", "key_id=k2", "key_id=k3", "key_id=k1",
        ]  # fmt: skip
        # Full again (k3, k1); at 1600 k3 has expired and is dropped, k1 is kept.
        refusals.refused("k4", "key_disabled", GENERATE, 1750)
        refusals.refused("k1", "key_disabled", GENERATE, 1790)
    assert [line.split()[3] for line in _lines(caplog)][4:] == ["key_id=k4"]
