"""While the admin API's store does not answer, every request gets 503 ``store_unavailable``,
and the log says so once a minute (with how many were refused in between), never as an
internal error with a stack: an outage under steady traffic must not flood the log."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator

import pytest
from admin_api_harness import PREFIX, AdminEnv, open_admin_env, raw_asgi_request, sqlite_settings

from store_wrapper import StoreWrapper
from uid2_operator.clock import FixedClock
from uid2_operator.errors import StoreUnavailable
from uid2_operator.web.admin_api import create_admin_app
from uid2_operator.web.admin_api.app import OUTAGE_LOG_INTERVAL_MS

ADMIN_LOGGER = "uid2_operator.web.admin_api.app"


class _Unreachable(StoreWrapper):
    def change_seq(self) -> int:
        raise StoreUnavailable("The database does not answer")


@pytest.fixture
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminEnv]:
    with open_admin_env(sqlite_settings(tmp_path_factory.mktemp("admin-outage"))) as opened:
        yield opened


def test_an_outage_is_one_warning_a_minute_not_an_error_per_request(
    env: AdminEnv, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FixedClock()
    services = dataclasses.replace(env.services, store=_Unreachable(env.services.store))
    app = create_admin_app(services, clock=clock)

    def health() -> int:
        status, _, body = raw_asgi_request(app, "GET", f"{PREFIX}/health", headers=[], chunks=[])
        assert json.loads(body)["error"]["code"] == "store_unavailable"
        return status

    with caplog.at_level(logging.INFO, logger=ADMIN_LOGGER):
        assert [health() for _ in range(5)] == [503] * 5
        clock.advance(OUTAGE_LOG_INTERVAL_MS)
        assert health() == 503
    records = [r for r in caplog.records if r.name == ADMIN_LOGGER]
    assert [r for r in records if r.levelno >= logging.ERROR] == []
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    # the store's own reason, not a generic one
    assert warnings[0] == "admin GET /admin/api/health answered 503: The database does not answer"
    assert "more answered 503" not in warnings[0]
    assert warnings[1].endswith("(4 more answered 503 since the last line)")
    assert all("Traceback" not in w and ".py:" not in w for w in warnings)
