"""Administrators' tokens: issue (shown once), list, revoke. SUPER_USER only."""

from __future__ import annotations

from dataclasses import replace

from uid2_operator.domain.authorization import AdminAction
from uid2_operator.domain.roles import AdminRole
from uid2_operator.web.admin_api.bodies import BodySpec, Field, Kind, any_case_pattern
from uid2_operator.web.admin_api.keys import KEY_ID
from uid2_operator.web.admin_api.participants import NAME_FIELD, ROLE_NAME_LENGTH
from uid2_operator.web.admin_api.routing import Call, Operation, Reply

TAG = "admin-tokens"
ADMIN_ROLE_NAMES = ", ".join(AdminRole.__members__)
# Same shape as a key id: the services read both with ``inputs.credential_id``.
TOKEN_ID = replace(
    KEY_ID, name="token_id", description="The token's public id, the part before the '.'"
)

CREATE_BODY = BodySpec(
    (
        NAME_FIELD,
        Field(
            "roles",
            Kind.STRING_LIST,
            f"Admin roles: {ADMIN_ROLE_NAMES} (trimmed, any case); at least one",
            required=True,
            max_items=8,
            max_length=ROLE_NAME_LENGTH,
            min_items=1,
            # The services trim role names and compare them in upper case.
            pattern=any_case_pattern(AdminRole.__members__, str.upper),
            pattern_rule=f"must be one of {ADMIN_ROLE_NAMES} (any case)",
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
        path_params=((TOKEN_ID.name, TOKEN_ID.description),),
    ),
)
