"""A key of another environment is refused with the bare 401, and the operator's log says why.

The protocol answers every refused key with exactly ``{"status":"unauthorized"}``, so the only
place that can say "this key belongs to the integ environment; this is the local environment" is
the operator's log: one WARNING naming both environments, with no key id (the text did not verify)
and nothing of the presented text, throttled like every other refusal line.
"""

from __future__ import annotations

import logging
import os

import pytest
from operator_harness import PEPPER, SITE_A, Credential, GenerateCaller, build_world_snapshot

from uid2_operator.clock import FixedClock
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import MintedCredential, checksum, mint_api_key
from uid2_operator.services.snapshot import Snapshot
from uid2_operator.web.operator_api.app import REFUSAL_LOG_INTERVAL_MS

GENERATE = "/v2/token/generate"
LOGGER = "uid2_operator.web.operator_api.app"
UNAUTHORIZED = b'{"status":"unauthorized"}'


class _LocalOperator(GenerateCaller):
    """The operator app over the test world, whose environment is ``local``."""

    def __init__(self, snapshot: Snapshot, clock: FixedClock) -> None:
        assert snapshot.identity.environment is Environment.LOCAL
        super().__init__(snapshot, clock)


def _world() -> tuple[_LocalOperator, Credential]:
    """The operator, and participant A's active key."""
    clock = FixedClock()
    snapshot, credentials = build_world_snapshot(clock.now_ms())
    return _LocalOperator(snapshot, clock), credentials["A"]


def _foreign_key(environment: Environment) -> MintedCredential:
    """A well-formed key for participant A, minted in ``environment``."""
    return mint_api_key(environment, SITE_A, PEPPER, os.urandom)


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def _assert_no_key_text(caplog: pytest.LogCaptureFixture, key: MintedCredential) -> None:
    public_id = key.key_id.rsplit("-", 1)[1]
    tail = key.text.split(".", 1)[1]
    for part in (key.text, key.key_id, public_id, tail):
        assert part not in caplog.text


@pytest.mark.parametrize("presented", [Environment.INTEG, Environment.PROD])
def test_a_key_of_another_environment_gets_the_bare_401_and_a_warning_naming_both(
    presented: Environment, caplog: pytest.LogCaptureFixture
) -> None:
    operator, a = _world()
    secret = a.secret
    key = _foreign_key(presented)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        response = operator.generate(key.text, secret)
    assert response.status_code == 401
    assert response.content == UNAUTHORIZED
    assert operator.observed == [(GENERATE, None, 401)]
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        f"API key refused: reason=credential_wrong_environment path={GENERATE}: "
        f"This API key belongs to the {presented.value} environment; "
        "this is the local environment"
    ]
    assert _lines(caplog) == [warnings[0].getMessage()]
    _assert_no_key_text(caplog, key)


def test_a_flood_of_keys_of_another_environment_is_throttled_like_other_refusals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    operator, a = _world()
    secret = a.secret
    keys = [_foreign_key(Environment.INTEG) for _ in range(4)]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for key in keys[:3]:  # distinct keys of the same environment: one line between them
            assert operator.generate(key.text, secret).content == UNAUTHORIZED
        assert len(_lines(caplog)) == 1
        operator.clock.advance(REFUSAL_LOG_INTERVAL_MS - 1)
        assert operator.generate(keys[0].text, secret).status_code == 401
        assert len(_lines(caplog)) == 1
        operator.clock.advance(1)
        assert operator.generate(keys[3].text, secret).status_code == 401
    lines = _lines(caplog)
    assert len(lines) == 2
    assert lines[1] == (
        f"API key refused: reason=credential_wrong_environment path={GENERATE}: "
        "This API key belongs to the integ environment; this is the local environment"
        " (3 more since the last line)"
    )
    assert operator.observed == [(GENERATE, None, 401)] * 5
    for key in keys:
        _assert_no_key_text(caplog, key)


def test_each_other_environment_has_its_own_line(caplog: pytest.LogCaptureFixture) -> None:
    operator, a = _world()
    secret = a.secret
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for presented in (Environment.INTEG, Environment.PROD, Environment.INTEG):
            assert operator.generate(_foreign_key(presented).text, secret).status_code == 401
    assert [line.split("belongs to the ")[1] for line in _lines(caplog)] == [
        "integ environment; this is the local environment",
        "prod environment; this is the local environment",
    ]


def test_a_key_of_this_environment_that_does_not_verify_logs_no_environment_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    operator, a = _world()
    secret = a.secret
    unknown = _foreign_key(Environment.LOCAL)  # right environment, not in the snapshot
    known_id = a.key_id
    body = f"{known_id}.{'Z' * 33}"
    forged = body + checksum(body)  # a known key id, the wrong tail
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for text in (unknown.text, forged, f"{known_id}.mistyped", "no-key-at-all"):
            response = operator.generate(text, secret)
            assert response.status_code == 401
            assert response.content == UNAUTHORIZED
    assert operator.observed == [(GENERATE, None, 401)] * 4
    assert _lines(caplog) == []
    assert "environment" not in caplog.text
