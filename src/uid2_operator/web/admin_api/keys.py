"""API keys: issue, list, show, rename, set roles, disable/enable, revoke, rotate, retire now,
rotate secret.

The key and its client secret travel only in the bodies of the POST responses that issue them
(create, rotate, rotate-secret), marked ``discloses_secret`` so they go out with
``Cache-Control: no-store``. Paths carry the public ``key_id`` only.
"""

from __future__ import annotations

from dataclasses import replace

from uid2_operator.domain import key_format
from uid2_operator.domain.authorization import AdminAction
from uid2_operator.domain.participants import MAX_SITE_ID, MIN_SITE_ID
from uid2_operator.services import inputs
from uid2_operator.services.credentials import DEFAULT_GRACE_DAYS, MAX_GRACE_DAYS, MAX_LIST_LIMIT
from uid2_operator.web.admin_api.bodies import BodySpec, Field, Kind
from uid2_operator.web.admin_api.participants import (
    CLIENT_ROLE_NAMES,
    CLIENT_ROLE_PATTERN,
    CLIENT_ROLE_RULE,
    NAME_FIELD,
    ROLE_NAME_LENGTH,
)
from uid2_operator.web.admin_api.routing import Call, Handler, Operation, Reply

TAG = "keys"
# A key or token id as the services read it (``inputs.credential_id``): the public part of a
# credential, before the '.', with a site id of at most as many digits as the largest one.
CREDENTIAL_ID_PATTERN = f"^{key_format.KEY_ID_PATTERN}$"
CREDENTIAL_ID_RULE = (
    f"must be an id: {key_format.BRAND}-<kind>-<env>-<site id>-"
    f"<{key_format.PUBLIC_ID_LENGTH} letters or digits> ({'- or '.join(key_format.BRANDS)}-), "
    "the part before the '.'"
)
KEY_ID = Field(
    "key_id",
    Kind.STRING,
    "The key's public id, the part before the '.' (never the key)",
    required=True,
    max_length=inputs.MAX_TEXT,
    pattern=CREDENTIAL_ID_PATTERN,
    pattern_rule=CREDENTIAL_ID_RULE,
)
KEY_ID_PARAM = ((KEY_ID.name, KEY_ID.description),)
WRITE_ERRORS = (400, 404, 409, 413, 415, 422)

ROLES_FIELD = Field(
    "roles",
    Kind.STRING_LIST,
    f"Client roles of the key: {CLIENT_ROLE_NAMES} (trimmed, any case); a non-empty subset of "
    "its participant's roles",
    required=True,
    max_items=16,
    max_length=ROLE_NAME_LENGTH,
    min_items=1,
    pattern=CLIENT_ROLE_PATTERN,
    pattern_rule=CLIENT_ROLE_RULE,
)
GRACE_FIELD = Field(
    "grace_days",
    Kind.INTEGER,
    f"Days the previous credential keeps working (default {DEFAULT_GRACE_DAYS}; 0 = stop now)",
    minimum=0,
    maximum=MAX_GRACE_DAYS,
)

CREATE_BODY = BodySpec(
    (
        Field(
            "site_id",
            Kind.INTEGER,
            "The participant the key belongs to",
            required=True,
            minimum=MIN_SITE_ID,
            maximum=MAX_SITE_ID,
        ),
        NAME_FIELD,
        ROLES_FIELD,
        Field(
            "expires_in_days",
            Kind.INTEGER,
            "Optional hard expiry, in days from now",
            minimum=1,
            maximum=inputs.MAX_DAYS,
        ),
    )
)
RENAME_BODY = BodySpec((NAME_FIELD,))
ROLES_BODY = BodySpec((ROLES_FIELD,))
REVOKE_BODY = BodySpec(
    (
        replace(
            NAME_FIELD,
            name="reason",
            description="Why the key is revoked, kept on the tombstone and in the audit trail "
            "(trimmed; not blank)",
        ),
    )
)
ROTATE_BODY = BodySpec(
    (
        GRACE_FIELD,
        replace(
            NAME_FIELD,
            description="The successor's display name (trimmed; not blank); the old key's name "
            "when absent",
            required=False,
        ),
    )
)
ROTATE_SECRET_BODY = BodySpec((GRACE_FIELD,))
NO_BODY = BodySpec()
LIST_QUERY = (
    Field(
        "site_id",
        Kind.INTEGER,
        "Only this participant's keys",
        minimum=MIN_SITE_ID,
        maximum=MAX_SITE_ID,
    ),
    Field(
        "limit",
        Kind.INTEGER,
        "At most this many keys (default: every one); `next` is set when more follow",
        minimum=1,
        maximum=MAX_LIST_LIMIT,
    ),
    Field(
        "after",
        Kind.STRING,
        "Start after this key (a key id; the `next` of the previous page), in the listing's "
        "order: by site, then age",
        max_length=inputs.MAX_TEXT,
        pattern=CREDENTIAL_ID_PATTERN,
        pattern_rule=CREDENTIAL_ID_RULE,
    ),
)


def list_keys(call: Call) -> Reply:
    query = call.query
    page = call.services.credentials.key_page(
        call.actor,
        site_id=query.optional_integer("site_id"),
        limit=query.optional_integer("limit"),
        after=query.optional_text("after"),
    )
    following = page.items[-1].key_id if page.more else None
    return Reply({"keys": [view.to_json() for view in page.items], "next": following})


def get_key(call: Call) -> Reply:
    return Reply(call.services.credentials.get_key(call.actor, call.params["key_id"]).to_json())


def create_key(call: Call) -> Reply:
    body = call.body
    issued = call.services.credentials.create_key(
        call.actor,
        site_id=body.integer("site_id"),
        name=body.text("name"),
        roles=body.texts("roles"),
        expires_in_days=body.optional_integer("expires_in_days"),
    )
    return Reply(issued.to_json(), status=201)


def rename_key(call: Call) -> Reply:
    view = call.services.credentials.rename_key(
        call.actor, call.params["key_id"], name=call.body.text("name")
    )
    return Reply(view.to_json())


def set_key_roles(call: Call) -> Reply:
    view = call.services.credentials.set_key_roles(
        call.actor, call.params["key_id"], roles=call.body.texts("roles")
    )
    return Reply(view.to_json())


def disable_key(call: Call) -> Reply:
    return Reply(call.services.credentials.disable_key(call.actor, call.params["key_id"]).to_json())


def enable_key(call: Call) -> Reply:
    return Reply(call.services.credentials.enable_key(call.actor, call.params["key_id"]).to_json())


def revoke_key(call: Call) -> Reply:
    view = call.services.credentials.revoke_key(
        call.actor, call.params["key_id"], reason=call.body.text("reason")
    )
    return Reply(view.to_json())


def _grace(call: Call) -> int:
    grace = call.body.optional_integer("grace_days")
    return DEFAULT_GRACE_DAYS if grace is None else grace


def rotate_key(call: Call) -> Reply:
    issued = call.services.credentials.rotate_key(
        call.actor,
        call.params["key_id"],
        grace_days=_grace(call),
        name=call.body.optional_text("name"),
    )
    return Reply(issued.to_json(), status=201)


def retire_key_now(call: Call) -> Reply:
    view = call.services.credentials.retire_key_now(call.actor, call.params["key_id"])
    return Reply(view.to_json())


def rotate_secret(call: Call) -> Reply:
    issued = call.services.credentials.rotate_secret(
        call.actor, call.params["key_id"], grace_days=_grace(call)
    )
    return Reply(issued.to_json())


def _key_op(
    method: str,
    suffix: str,
    action: AdminAction,
    handler: Handler,
    *,
    operation_id: str,
    summary: str,
    body: BodySpec,
    response: str = "Key",
    status: int = 200,
    discloses_secret: bool = False,
) -> Operation:
    """A write on one key (``/keys/{key_id}<suffix>``)."""
    return Operation(
        method,
        "/keys/{key_id}" + suffix,
        action,
        handler,
        operation_id=operation_id,
        summary=summary,
        response=response,
        tag=TAG,
        status=status,
        body=body,
        errors=WRITE_ERRORS,
        path_params=KEY_ID_PARAM,
        discloses_secret=discloses_secret,
    )


_A = AdminAction

OPERATIONS = (
    Operation(
        "GET",
        "/keys",
        _A.KEY_LIST,
        list_keys,
        operation_id="listKeys",
        summary="List API keys (never their key text or secret)",
        response="KeyList",
        tag=TAG,
        query=LIST_QUERY,
        errors=(404, 422),
    ),
    Operation(
        "POST",
        "/keys",
        _A.KEY_CREATE,
        create_key,
        operation_id="createKey",
        summary="Issue an API key and its client secret (shown once)",
        response="IssuedKey",
        tag=TAG,
        status=201,
        body=CREATE_BODY,
        errors=WRITE_ERRORS,
        discloses_secret=True,
    ),
    Operation(
        "GET",
        "/keys/{key_id}",
        _A.KEY_GET,
        get_key,
        operation_id="getKey",
        summary="Show an API key, its state and usage (never its key text or secret)",
        response="Key",
        tag=TAG,
        errors=(404, 422),
        path_params=KEY_ID_PARAM,
    ),
    _key_op(
        "POST",
        "/rename",
        _A.KEY_UPDATE,
        rename_key,
        operation_id="renameKey",
        summary="Rename a key",
        body=RENAME_BODY,
    ),
    _key_op(
        "PUT",
        "/roles",
        _A.KEY_UPDATE,
        set_key_roles,
        operation_id="setKeyRoles",
        summary="Replace a key's roles",
        body=ROLES_BODY,
    ),
    _key_op(
        "POST",
        "/disable",
        _A.KEY_DISABLE,
        disable_key,
        operation_id="disableKey",
        summary="Disable a key (reversible)",
        body=NO_BODY,
    ),
    _key_op(
        "POST",
        "/enable",
        _A.KEY_ENABLE,
        enable_key,
        operation_id="enableKey",
        summary="Enable a disabled key",
        body=NO_BODY,
    ),
    _key_op(
        "POST",
        "/revoke",
        _A.KEY_REVOKE,
        revoke_key,
        operation_id="revokeKey",
        summary="Revoke a key for good (the record stays as a tombstone)",
        body=REVOKE_BODY,
    ),
    _key_op(
        "POST",
        "/rotate",
        _A.KEY_ROTATE,
        rotate_key,
        operation_id="rotateKey",
        summary="Issue a successor key with a new secret; the old key retires after the grace",
        body=ROTATE_BODY,
        response="IssuedKey",
        status=201,
        discloses_secret=True,
    ),
    _key_op(
        "POST",
        "/retire-now",
        _A.KEY_RETIRE_NOW,
        retire_key_now,
        operation_id="retireKeyNow",
        summary="End a rotated key's grace window now; its successor keeps working",
        body=NO_BODY,
    ),
    _key_op(
        "POST",
        "/rotate-secret",
        _A.KEY_ROTATE_SECRET,
        rotate_secret,
        operation_id="rotateKeySecret",
        summary="Issue a new client secret; the previous one is accepted for the grace",
        body=ROTATE_SECRET_BODY,
        response="IssuedSecret",
        discloses_secret=True,
    ),
)
