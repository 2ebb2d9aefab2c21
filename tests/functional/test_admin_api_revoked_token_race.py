"""An admin token revoked while one of its requests is under way: the request changes nothing.

The request is authenticated, then its token is revoked (through the service, or by another admin
API request) before the request's own write transaction starts: a hook on
``AdminService.authenticate`` makes that interleaving happen every time, on a real store (SQLite,
and PostgreSQL when reachable). The request must then get what a request sent after the
revocation gets (401 ``credential_rejected``), and the store must stand exactly where the
revocation left it: no change committed, no audit event written by the revoked token. Every write
route of the admin API is tried, each first with a token that stays active, so that each attempt
is one that would have succeeded. Refusal events keep being written for a token revoked meanwhile,
and actors without a token (the command line) are not affected.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from admin_api_harness import PREFIX, AdminEnv, StoreMark, admin_env_fixture

from uid2_operator.domain.admin_tokens import AdminToken
from uid2_operator.domain.audit import Outcome
from uid2_operator.domain.roles import AdminRole
from uid2_operator.errors import CredentialRejected, InvalidInput, StoreUnavailable
from uid2_operator.services.audit_trail import EventDetails, record_event, record_events
from uid2_operator.services.context import SYSTEM, Actor
from uid2_operator.web.admin_api.routing import WRITE_METHODS

pytestmark = pytest.mark.functional

REVOKER = Actor("cli:revoker", source="cli")
# A check of the audit chain that records nothing when it succeeds: it changes nothing to refuse.
NOT_A_CHANGE = {("POST", "/audit/verify")}

env = admin_env_fixture()

Request = tuple[str, Any]  # the path below PREFIX, and the JSON body
RequestMaker = Callable[[AdminEnv], Request]


@dataclass
class Revocation:
    """Where the store stood right after the hook revoked the token (None: not yet revoked)."""

    mark: StoreMark | None = None
    revocation_seq: int | None = None


def _issue(env: AdminEnv, role: AdminRole = AdminRole.SUPER_USER) -> tuple[str, str]:
    issued = env.services.admin.create_admin_token(SYSTEM, name="racer", roles=[role.value])
    return issued.token, issued.token_id


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def _after_authenticating(
    env: AdminEnv, monkeypatch: pytest.MonkeyPatch, token_id: str, then: Callable[[], None]
) -> Iterator[Revocation]:
    """Run ``then`` once, right after the admin API authenticated a request of ``token_id`` (and
    before anything else of that request runs); the revocation ``then`` made is described in the
    ``Revocation`` yielded."""
    service = env.services.admin
    real = service.authenticate
    seen = Revocation()

    def authenticate(text: Any) -> Any:
        view = real(text)
        if view.token_id == token_id and seen.mark is None:
            then()
            assert _token(env, token_id).revoked_at_ms is not None
            seen.mark = env.mark()
            seen.revocation_seq = seen.mark.audit_seq
        return view

    with monkeypatch.context() as patch:
        patch.setattr(service, "authenticate", authenticate)
        yield seen


def _token(env: AdminEnv, token_id: str) -> AdminToken:
    with env.services.store.read() as tx:
        token = tx.admin_tokens.get(token_id)
    assert token is not None
    return token


def _send(env: AdminEnv, method: str, path: str, body: Any, token: str) -> httpx.Response:
    return env.client.request(method, PREFIX + path, json=body, headers=_bearer(token))


def _assert_refused_as_revoked(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "credential_rejected"
    assert response.headers["www-authenticate"].startswith("Bearer")


# ------------------------------------------------------------------- what each write route needs


_NUMBERS = itertools.count(1)  # participant names are unique


def _site(env: AdminEnv, roles: tuple[str, ...] = ("GENERATOR", "SHARER")) -> int:
    body = {"name": f"P {next(_NUMBERS)}", "type": "publisher", "roles": list(roles)}
    response = env.call("POST", "/participants", json=body)
    assert response.status_code == 201, response.text
    site: int = response.json()["site_id"]
    return site


def _key(env: AdminEnv) -> str:
    body = {"site_id": _site(env), "name": "k", "roles": ["GENERATOR"]}
    response = env.call("POST", "/keys", json=body)
    assert response.status_code == 201, response.text
    key_id: str = response.json()["key_id"]
    return key_id


def _changed(env: AdminEnv, method: str, path: str, body: Any = None) -> None:
    response = env.call(method, path, json={} if body is None else body)
    assert response.status_code in (200, 201), response.text


def _disabled_site(env: AdminEnv) -> int:
    site = _site(env)
    _changed(env, "POST", f"/participants/{site}/disable")
    return site


def _disabled_key(env: AdminEnv) -> str:
    key_id = _key(env)
    _changed(env, "POST", f"/keys/{key_id}/disable")
    return key_id


def _rotated_key(env: AdminEnv) -> str:
    key_id = _key(env)
    _changed(env, "POST", f"/keys/{key_id}/rotate", {"grace_days": 3})
    return key_id


def _keypair(env: AdminEnv) -> str:
    response = env.call("POST", "/keypairs", json={"site_id": _site(env), "name": "web"})
    assert response.status_code == 201, response.text
    ident: str = response.json()["subscription_id"]
    return ident


def _disabled_keypair(env: AdminEnv) -> str:
    ident = _keypair(env)
    _changed(env, "POST", f"/keypairs/{ident}/disable")
    return ident


def _admin_token(env: AdminEnv) -> str:
    return _issue(env, AdminRole.READ_ONLY)[1]


def _sharing(env: AdminEnv) -> Request:
    other = _site(env)
    return f"/participants/{_site(env)}/sharing", {"mode": "list", "sites": [other]}


# Every write route the admin API has, with a request of it that succeeds (each call makes fresh
# targets, so that the same request can be sent twice).
WRITES: dict[tuple[str, str], RequestMaker] = {
    ("POST", "/participants"): lambda env: (
        "/participants",
        {"name": f"New {next(_NUMBERS)}", "type": "publisher", "roles": ["GENERATOR"]},
    ),
    ("POST", "/participants/{site_id}/disable"): lambda env: (
        f"/participants/{_site(env)}/disable",
        {},
    ),
    ("POST", "/participants/{site_id}/enable"): lambda env: (
        f"/participants/{_disabled_site(env)}/enable",
        {},
    ),
    ("PUT", "/participants/{site_id}/roles"): lambda env: (
        f"/participants/{_site(env)}/roles",
        {"roles": ["GENERATOR", "SHARER", "OPTOUT"]},
    ),
    ("PUT", "/participants/{site_id}/sharing"): _sharing,
    ("PUT", "/participants/{site_id}/domain-names"): lambda env: (
        f"/participants/{_site(env)}/domain-names",
        {"domain_names": ["example.com"]},
    ),
    ("PUT", "/participants/{site_id}/app-names"): lambda env: (
        f"/participants/{_site(env)}/app-names",
        {"app_names": ["com.example.App"]},
    ),
    ("POST", "/keys"): lambda env: (
        "/keys",
        {"site_id": _site(env), "name": "k", "roles": ["GENERATOR"]},
    ),
    ("POST", "/keys/{key_id}/rename"): lambda env: (f"/keys/{_key(env)}/rename", {"name": "r"}),
    ("PUT", "/keys/{key_id}/roles"): lambda env: (
        f"/keys/{_key(env)}/roles",
        {"roles": ["SHARER"]},
    ),
    ("POST", "/keys/{key_id}/disable"): lambda env: (f"/keys/{_key(env)}/disable", {}),
    ("POST", "/keys/{key_id}/enable"): lambda env: (f"/keys/{_disabled_key(env)}/enable", {}),
    ("POST", "/keys/{key_id}/revoke"): lambda env: (
        f"/keys/{_key(env)}/revoke",
        {"reason": "leaked"},
    ),
    ("POST", "/keys/{key_id}/rotate"): lambda env: (
        f"/keys/{_key(env)}/rotate",
        {"grace_days": 3},
    ),
    ("POST", "/keys/{key_id}/retire-now"): lambda env: (
        f"/keys/{_rotated_key(env)}/retire-now",
        {},
    ),
    ("POST", "/keys/{key_id}/rotate-secret"): lambda env: (
        f"/keys/{_key(env)}/rotate-secret",
        {"grace_days": 1},
    ),
    ("POST", "/keypairs"): lambda env: ("/keypairs", {"site_id": _site(env), "name": "web"}),
    ("POST", "/keypairs/{subscription_id}/disable"): lambda env: (
        f"/keypairs/{_keypair(env)}/disable",
        {},
    ),
    ("POST", "/keypairs/{subscription_id}/enable"): lambda env: (
        f"/keypairs/{_disabled_keypair(env)}/enable",
        {},
    ),
    ("DELETE", "/keypairs/{subscription_id}"): lambda env: (
        f"/keypairs/{_keypair(env)}",
        {},
    ),
    ("POST", "/admin-tokens"): lambda env: (
        "/admin-tokens",
        {"name": "ops", "roles": ["READ_ONLY"]},
    ),
    ("POST", "/admin-tokens/{token_id}/revoke"): lambda env: (
        f"/admin-tokens/{_admin_token(env)}/revoke",
        {},
    ),
}


# ------------------------------------------------------------------------------------- tests


def test_the_table_holds_every_write_route(env: AdminEnv) -> None:
    routes = {(op.method, op.path) for op in env.operations if op.method in WRITE_METHODS}
    assert routes - NOT_A_CHANGE == set(WRITES)


def test_no_write_route_commits_for_a_token_revoked_after_authentication(
    env: AdminEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong: list[tuple[str, str, int]] = []
    for (method, template), make in WRITES.items():
        path, body = make(env)
        allowed = _send(env, method, path, body, env.tokens[AdminRole.SUPER_USER])
        assert allowed.status_code in (200, 201), (method, template, allowed.text)

        path, body = make(env)
        token, token_id = _issue(env)

        def revoke(token_id: str = token_id) -> None:
            env.services.admin.revoke_admin_token(REVOKER, token_id)

        with _after_authenticating(env, monkeypatch, token_id, revoke) as revocation:
            response = _send(env, method, path, body, token)

        assert revocation.mark is not None, (method, template)
        # Nothing committed after the revocation (neither a change nor an event), and the answer
        # is that of a request sent after it.
        if env.mark() != revocation.mark or response.status_code != 401:
            wrong.append((method, template, response.status_code))
        else:
            _assert_refused_as_revoked(response)
    assert wrong == []


def test_of_two_tokens_revoking_each_other_only_the_first_succeeds(
    env: AdminEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    left, left_id = _issue(env)
    right, right_id = _issue(env)
    answers: dict[str, httpx.Response] = {}

    def right_revokes_left() -> None:
        path = f"/admin-tokens/{left_id}/revoke"
        answers["right"] = _send(env, "POST", path, {}, right)

    with _after_authenticating(env, monkeypatch, left_id, right_revokes_left) as revocation:
        answers["left"] = _send(env, "POST", f"/admin-tokens/{right_id}/revoke", {}, left)

    assert answers["right"].status_code == 200, answers["right"].text
    _assert_refused_as_revoked(answers["left"])
    assert _token(env, left_id).revoked_by == f"admin:{right_id}"
    assert _token(env, right_id).revoked_at_ms is None
    assert env.mark() == revocation.mark
    # The trail never shows the left token acting after its revocation.
    late = [
        e
        for e in env.audit_events()
        if e.actor == f"admin:{left_id}" and e.seq > (revocation.revocation_seq or 0)
    ]
    assert late == []


def test_a_token_still_revokes_itself(env: AdminEnv) -> None:
    token, token_id = _issue(env)
    response = _send(env, "POST", f"/admin-tokens/{token_id}/revoke", {}, token)
    assert response.status_code == 200, response.text
    assert _token(env, token_id).revoked_by == f"admin:{token_id}"
    again = env.client.request("GET", PREFIX + "/admin-tokens", headers=_bearer(token))
    _assert_refused_as_revoked(again)


def test_a_write_refused_by_a_rule_answers_as_revoked_when_its_token_was(
    env: AdminEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, body = "/keys/UID2-C-L-3-AAAAAA/rename", {"name": "x"}
    mark = env.mark()
    unknown = _send(env, "POST", path, body, env.tokens[AdminRole.SUPER_USER])
    assert unknown.status_code == 404
    [failed] = env.refusals_since(mark)
    assert failed.outcome is Outcome.FAILED

    token, token_id = _issue(env)

    def revoke() -> None:
        env.services.admin.revoke_admin_token(REVOKER, token_id)

    with _after_authenticating(env, monkeypatch, token_id, revoke) as revocation:
        response = _send(env, "POST", path, body, token)

    _assert_refused_as_revoked(response)
    assert env.mark() == revocation.mark  # no ``failed`` event for the revoked token


def test_a_rule_refusal_keeps_its_answer_when_the_token_cannot_be_read_again(
    env: AdminEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(actor: Actor) -> None:
        raise StoreUnavailable("the store is unavailable")

    monkeypatch.setattr(env.services.admin, "require_active", unavailable)
    response = _send(
        env,
        "POST",
        "/keys/UID2-C-L-3-AAAAAA/rename",
        {"name": "x"},
        env.tokens[AdminRole.SUPER_USER],
    )
    assert response.status_code == 404  # the rule's answer, not a 503


def test_a_denial_is_still_recorded_for_a_token_revoked_after_authentication(
    env: AdminEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, token_id = _issue(env, AdminRole.READ_ONLY)
    path, body = WRITES[("POST", "/keys")](env)

    def revoke() -> None:
        env.services.admin.revoke_admin_token(REVOKER, token_id)

    with _after_authenticating(env, monkeypatch, token_id, revoke) as revocation:
        response = _send(env, "POST", path, body, token)

    assert response.status_code == 403, response.text
    assert revocation.mark is not None
    [denied] = env.refusals_since(revocation.mark)
    assert (denied.outcome, denied.actor, denied.action) == (
        Outcome.DENIED,
        f"admin:{token_id}",
        "key.create",
    )


def test_the_audit_trail_refuses_a_change_by_a_revoked_token_and_nothing_else(
    env: AdminEnv,
) -> None:
    _, token_id = _issue(env)
    actor = Actor(f"admin:{token_id}", admin_token_id=token_id)
    event = EventDetails(at_ms=1, action="participant.update", target_type="t", target_id="1")
    with env.services.store.transaction() as tx:
        record_events(tx, actor, [event])  # active: recorded
    env.services.admin.revoke_admin_token(REVOKER, token_id)
    mark = env.mark()

    for record in (
        lambda tx: record_events(tx, actor, [event]),
        lambda tx: record_event(tx, actor, at_ms=1, action="a.b", target_type="t", target_id="1"),
    ):
        with pytest.raises(CredentialRejected), env.services.store.transaction() as tx:
            record(tx)
        assert env.mark() == mark

    # An actor without a token, the command line's, records as before.
    with env.services.store.transaction() as tx:
        record_event(tx, REVOKER, at_ms=1, action="a.b", target_type="t", target_id="1")
    assert env.mark().audit_seq == mark.audit_seq + 1


def test_an_actor_names_the_admin_token_it_carries() -> None:
    assert Actor("admin:UID2-A-L-0-abcDEF", admin_token_id="UID2-A-L-0-abcDEF").admin_token_id
    with pytest.raises(InvalidInput):
        Actor("cli:ops", admin_token_id="UID2-A-L-0-abcDEF")
    with pytest.raises(InvalidInput):
        Actor("admin:UID2-A-L-0-abcDEF", admin_token_id="UID2-A-L-0-zzzzzz")
