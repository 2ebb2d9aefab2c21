"""A participant route whose site names no participant answers 404 ``not_found`` whatever its
body: the body's rules (public suffixes, listing the owner itself, ...) are checked only for a
participant that exists, and the refusal's ``failed`` event records ``not_found``. Real services
on a real store (SQLite, and PostgreSQL when reachable), driven over ASGI."""

from __future__ import annotations

from typing import Any

import pytest
from admin_api_harness import AdminEnv, admin_env_fixture

pytestmark = pytest.mark.functional

UNKNOWN = 888888
CREDENTIAL_LIKE = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"

env = admin_env_fixture()

# Bodies the edge's declarations accept but the rules refuse for a participant that exists.
RULE_BREAKING = [
    pytest.param(
        "sharing",
        "sharing.set",
        lambda site: {"mode": "list", "sites": [site]},
        "owns the keyset; do not list it",
        id="sharing-lists-its-owner",
    ),
    pytest.param(
        "domain-names",
        "participant.update",
        lambda site: {"domain_names": ["co.uk"]},
        "is a public suffix",
        id="domain-names-public-suffix",
    ),
    # A run of 33 or more mixed-case letters and digits is refused as possible credential text.
    pytest.param(
        "domain-names",
        "participant.update",
        lambda site: {"domain_names": [f"{CREDENTIAL_LIKE}.com"]},
        "looks like a credential",
        id="domain-names-credential-text",
    ),
    pytest.param(
        "app-names",
        "participant.update",
        lambda site: {"app_names": [f"com.{CREDENTIAL_LIKE}"]},
        "looks like a credential",
        id="app-names-credential-text",
    ),
]


@pytest.mark.parametrize(("route", "action", "body", "rule"), RULE_BREAKING)
def test_an_unknown_site_is_not_found_whatever_the_body(
    env: AdminEnv, route: str, action: str, body: Any, rule: str
) -> None:
    mark = env.mark()
    response = env.call("PUT", f"/participants/{UNKNOWN}/{route}", json=body(UNKNOWN))
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["code"] == "not_found"
    assert rule not in error["message"]
    [event] = env.refusals_since(mark)
    assert (event.outcome.value, event.action, event.after) == (
        "failed",
        action,
        {"code": "not_found"},
    )
    assert (event.target_type, event.target_id, event.site_id) == (
        "participant",
        str(UNKNOWN),
        UNKNOWN,
    )


@pytest.mark.parametrize(("route", "action", "body", "rule"), RULE_BREAKING)
def test_a_known_site_still_gets_the_rule_that_refuses_its_body(
    env: AdminEnv, route: str, action: str, body: Any, rule: str
) -> None:
    site = env.create_participant(("GENERATOR", "SHARER"))
    mark = env.mark()
    response = env.call("PUT", f"/participants/{site}/{route}", json=body(site))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert rule in error["message"]
    [event] = env.refusals_since(mark)
    assert (event.outcome.value, event.action, event.after) == (
        "failed",
        action,
        {"code": "invalid_input"},
    )
