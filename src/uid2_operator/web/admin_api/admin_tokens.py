"""Administrators' tokens: issue (shown once), list, revoke. SUPER_USER only."""

from __future__ import annotations

from uid2_operator.domain.authorization import AdminAction
from uid2_operator.domain.participants import MAX_NAME_LENGTH
from uid2_operator.domain.roles import AdminRole
from uid2_operator.web.admin_api.bodies import BodySpec, Field, Kind
from uid2_operator.web.admin_api.routing import Call, Operation, Reply

TAG = "admin-tokens"

CREATE_BODY = BodySpec(
    (
        Field("name", Kind.STRING, "Display name", required=True, max_length=MAX_NAME_LENGTH),
        Field(
            "roles",
            Kind.STRING_LIST,
            "Admin roles: " + ", ".join(r.value for r in AdminRole),
            required=True,
            max_items=8,
            max_length=32,
        ),
    )
)


def list_admin_tokens(call: Call) -> Reply:
    views = call.services.admin.list_admin_tokens(call.actor)
    return Reply({"admin_tokens": [view.to_json() for view in views]})


def create_admin_token(call: Call) -> Reply:
    issued = call.services.admin.create_admin_token(
        call.actor, name=call.body.text("name"), roles=call.body.texts("roles")
    )
    return Reply(issued.to_json(), status=201)


def revoke_admin_token(call: Call) -> Reply:
    view = call.services.admin.revoke_admin_token(call.actor, call.params["token_id"])
    return Reply(view.to_json())


OPERATIONS = (
    Operation(
        "GET",
        "/admin-tokens",
        AdminAction.ADMIN_TOKEN_LIST,
        list_admin_tokens,
        operation_id="listAdminTokens",
        summary="List admin tokens (never their token text)",
        response="AdminTokenList",
        tag=TAG,
    ),
    Operation(
        "POST",
        "/admin-tokens",
        AdminAction.ADMIN_TOKEN_CREATE,
        create_admin_token,
        operation_id="createAdminToken",
        summary="Issue an admin token (shown once)",
        response="IssuedAdminToken",
        tag=TAG,
        status=201,
        body=CREATE_BODY,
        errors=(400, 413, 415, 422),
        discloses_secret=True,
    ),
    Operation(
        "POST",
        "/admin-tokens/{token_id}/revoke",
        AdminAction.ADMIN_TOKEN_REVOKE,
        revoke_admin_token,
        operation_id="revokeAdminToken",
        summary="Revoke an admin token for good",
        response="AdminToken",
        tag=TAG,
        body=BodySpec(),
        errors=(400, 404, 409, 413, 415, 422),
        path_params=(("token_id", "The token's public id, the part before the '.'"),),
    ),
)
