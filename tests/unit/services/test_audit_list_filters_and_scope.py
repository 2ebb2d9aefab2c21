"""``CredentialService.list_audit``: its site and target-type filters, the values it refuses, and
the events each actor is shown (decided from the acting admin token's stored roles)."""

from __future__ import annotations

import pytest
from service_fixtures import ACTOR

from uid2_operator.domain.authorization import AUDIT_TARGET_TYPES
from uid2_operator.errors import InvalidInput
from uid2_operator.services.admin import AdminService
from uid2_operator.services.context import Actor
from uid2_operator.services.credentials import CredentialService


def _token_actor(admin: AdminService, role: str) -> Actor:
    issued = admin.create_admin_token(ACTOR, name=role.lower(), roles=[role])
    return Actor(f"admin:{issued.token_id}", admin_token_id=issued.token_id)


def _kinds(svc: CredentialService, actor: Actor, **filters: object) -> list[str]:
    return [e.target_type for e in svc.list_audit(actor, limit=1000, **filters)]


def test_each_actor_sees_the_events_its_roles_may_read(
    svc: CredentialService, admin: AdminService
) -> None:
    reader = _token_actor(admin, "READ_ONLY")
    maintainer = _token_actor(admin, "MAINTAINER")
    super_user = _token_actor(admin, "SUPER_USER")
    svc.create_participant(ACTOR, name="P", type="publisher")

    everything = ["admin_token"] * 3 + ["participant"]
    assert _kinds(svc, ACTOR) == everything  # the command line holds the database
    assert _kinds(svc, super_user) == everything
    assert _kinds(svc, reader) == ["participant"]
    assert _kinds(svc, maintainer) == ["participant"]
    assert _kinds(svc, reader, target_type="admin_token") == []
    assert _kinds(svc, reader, action="admin_token.create") == []
    # A revoked token's roles are still those it was issued with.
    admin.revoke_admin_token(ACTOR, maintainer.admin_token_id)
    assert _kinds(svc, maintainer) == ["participant"]
    # A token no longer stored holds no role: it is shown nothing.
    gone = Actor("admin:UID2-A-L-0-gone00", admin_token_id="UID2-A-L-0-gone00")
    assert _kinds(svc, gone) == []


def test_site_id_and_target_type_filter(svc: CredentialService) -> None:
    for site in (3, 4):
        svc.create_participant(ACTOR, name=f"P{site}", type="publisher", site_id=site)
    svc.create_participant(ACTOR, name="P5", type="dsp", site_id=5, roles=["ID_READER"])
    issued = svc.create_key(ACTOR, site_id=5, name="k", roles=["ID_READER"])
    assert [(e.action, e.site_id) for e in svc.list_audit(ACTOR, site_id=4)] == [
        ("participant.create", 4)
    ]
    assert [e.target_id for e in svc.list_audit(ACTOR, site_id=5, target_type="api_key")] == [
        issued.key_id
    ]
    assert [e.target_id for e in svc.list_audit(ACTOR, target_type="participant")] == [
        "3",
        "4",
        "5",
    ]


@pytest.mark.parametrize(
    ("filters", "says"),
    [
        ({"target_type": "site"}, "target_type must be one of: " + ", ".join(AUDIT_TARGET_TYPES)),
        ({"target_type": 5}, "target_type"),
        ({"target_type": "a\x00b"}, "target_type"),
        ({"site_id": "4"}, "site_id must be an integer"),
        ({"site_id": True}, "site_id must be an integer"),
        ({"site_id": 2**31}, "site_id must be between"),
        ({"site_id": -(2**31) - 1}, "site_id must be between"),
    ],
)
def test_bad_filters_are_refused(
    svc: CredentialService, filters: dict[str, object], says: str
) -> None:
    with pytest.raises(InvalidInput, match="^" + says.replace("(", r"\(")):
        svc.list_audit(ACTOR, **filters)  # type: ignore[arg-type]
