"""The OpenAPI 3.1 document of the admin API, generated from the route table.

Paths, methods, the admin action and roles of each route, its body and query (from the same
``Field`` declarations that check requests), its success body and the errors it can answer all come
from ``Operation`` values, so a route cannot exist without being documented. Besides the errors a
route declares, every route may answer 500; one that takes a token 401, 403 and 503 (the token is
looked up in the store); one whose query string is checked 422. Path parameters are
described by the ``Field`` their route module declares for them (``PATH_PARAMETERS``), the same
one the app checks each request's path values against (``path_fields``); a path parameter without
one stops the document, and so the app, from being built. Only the response schemas are written
out here; they mirror the services' views, and the tests check real responses against them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any, Final

from uid2_operator.domain.authorization import ADMIN_ACTIONS
from uid2_operator.domain.participants import ParticipantType
from uid2_operator.web.admin_api import admin_tokens, keys, participants, sharing
from uid2_operator.web.admin_api.bodies import Field
from uid2_operator.web.admin_api.routing import Operation, RouteTableError

OPENAPI_VERSION = "3.1.0"
SECURITY_SCHEME = "adminToken"
AUTH_ERRORS = (401, 403)
STORE_ERRORS = (503,)
"""What a route that authenticates its caller can answer besides: authenticating reads the store."""
QUERY_ERRORS = (422,)
"""What a route that checks its query string answers for an unknown or malformed parameter."""
IGNORED_QUERY_NOTE = (
    "Any query string is ignored, as the operator's /ops/healthcheck ignores it (a load "
    "balancer's cache-busting parameter, say)"
)
PATH_PARAMETERS: Final[Mapping[str, Field]] = {
    field.name: field
    for field in (participants.SITE_ID, keys.KEY_ID, admin_tokens.TOKEN_ID, sharing.SUBSCRIPTION_ID)
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str) -> dict[str, Any]:
    return {"type": [kind, "null"]}


def _record(properties: dict[str, Any], description: str = "") -> dict[str, Any]:
    """A JSON object that always carries every listed property and nothing else."""
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "required": sorted(properties),
        "properties": properties,
    }
    if description:
        schema["description"] = description
    return schema


def _list_of(field: str, item: str) -> dict[str, Any]:
    return _record({field: {"type": "array", "items": _ref(item)}})


def _page_of(field: str, item: str, cursor: str) -> dict[str, Any]:
    """A listing that may be one page of several: ``next`` is what to pass as ``after`` for the
    following page, null on the last one (and when no ``limit`` was asked)."""
    return _record({field: {"type": "array", "items": _ref(item)}, "next": _nullable(cursor)})


_STR = {"type": "string"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_ROLES = {"type": "array", "items": _STR}

_KEY = {
    "key_id": {"type": "string", "description": "Public id: the key's text up to the '.'"},
    "site_id": _INT,
    "name": _STR,
    "roles": _ROLES,
    "state": {"type": "string", "enum": ["active", "disabled", "revoked"]},
    "created_at_ms": _INT,
    "created_by": _STR,
    "expires_at_ms": _nullable("integer"),
    "retires_at_ms": _nullable("integer"),
    "rotated_from": _nullable("string"),
    "rotated_to": _nullable("string"),
    "revoked_at_ms": _nullable("integer"),
    "revoked_by": _nullable("string"),
    "revoked_reason": _nullable("string"),
    "last_used_at_ms": _nullable("integer"),
    "rotation_due": _BOOL,
    "usage": {"type": "object", "additionalProperties": _INT},
    "usable": {
        "type": "boolean",
        "description": "Whether the key itself authenticates now: active, and neither expired "
        "nor retired ('state' stays 'active' past either); a disabled participant refuses it "
        "all the same",
    },
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _record(
        {
            "error": _record(
                {
                    "code": {"type": "string", "description": "Stable machine code"},
                    "message": {"type": "string", "description": "Human text"},
                }
            )
        }
    ),
    "Health": _record({"status": {"type": "string", "enum": ["ok"]}}),
    "OpenApiDocument": {"type": "object", "description": "This document"},
    "Participant": _record(
        {
            "site_id": _INT,
            "name": _STR,
            "type": {"type": "string", "enum": [t.value for t in ParticipantType]},
            "roles": {**_ROLES, "description": "Client roles the participant may grant"},
            "enabled": _BOOL,
            "contacts": {"type": "array", "items": _STR},
            "created_at_ms": _INT,
            "updated_at_ms": _INT,
        }
    ),
    "ParticipantList": _page_of("participants", "Participant", "integer"),
    "Key": _record(_KEY, "An API key as stored: never its key text, hash or secret"),
    "KeyList": _page_of("keys", "Key", "string"),
    "IssuedKey": _record(
        {
            "key_id": _STR,
            "key": {"type": "string", "description": "The API key; shown this once"},
            "secret": {
                "type": "string",
                "description": "The client secret (base64 of 32 bytes); shown this once",
            },
            "roles": _ROLES,
            "site_id": _INT,
            "name": _STR,
            "expires_at_ms": _nullable("integer"),
            "key_view": _ref("Key"),
        },
        "A newly issued key. Sent once, with Cache-Control: no-store; store it now.",
    ),
    "IssuedSecret": _record(
        {
            "key_id": _STR,
            "secret": {"type": "string", "description": "The new client secret; shown once"},
            "previous_secret_retires_at_ms": _nullable("integer"),
        },
        "A newly issued client secret. Sent once, with Cache-Control: no-store.",
    ),
    "AdminToken": _record(
        {
            "token_id": _STR,
            "name": _STR,
            "roles": _ROLES,
            "created_at_ms": _INT,
            "created_by": _STR,
            "revoked_at_ms": _nullable("integer"),
        }
    ),
    "AdminTokenList": _list_of("admin_tokens", "AdminToken"),
    "IssuedAdminToken": _record(
        {
            "token_id": _STR,
            "token": {"type": "string", "description": "The bearer token; shown this once"},
            "roles": _ROLES,
            "name": _STR,
        },
        "A newly issued admin token. Sent once, with Cache-Control: no-store.",
    ),
    "Sharing": _record(
        {
            "site_id": _INT,
            "keyset_id": {
                **_nullable("integer"),
                "description": "null for a participant added since the last upkeep, which has "
                "no keyset yet; mode is then the choice its keyset will be created with, from "
                "the participant's type and roles: bidders for a publisher or when it holds "
                "GENERATOR, owner_only otherwise",
            },
            "mode": {"type": "string", "enum": ["owner_only", "bidders", "list"]},
            "sites": {"type": "array", "items": _INT},
            "types": {"type": "array", "items": _STR},
            "changed": _BOOL,
            "rotated_key_ids": {"type": "array", "items": _INT},
        },
        "Who besides the owner may download the keys of the participant's default keyset",
    ),
    "Keypair": _record(
        {
            "subscription_id": _STR,
            "site_id": _INT,
            "public_key": {
                "type": "string",
                "description": "UID2-X-<env>-<base64 SPKI DER> (EUID-X-... in the EUID scope)",
            },
            "name": _STR,
            "contact": _STR,
            "disabled": _BOOL,
            "created_at_ms": _INT,
        },
        "A client-side keypair: public parts only, never the private key",
    ),
    "KeypairList": _list_of("keypairs", "Keypair"),
    "SiteOrigins": _record(
        {
            "site_id": _INT,
            "domain_names": {"type": "array", "items": _STR},
            "app_names": {"type": "array", "items": _STR},
        }
    ),
    "AuditEvent": _record(
        {
            "seq": _INT,
            "at_ms": _INT,
            "actor": _STR,
            "action": _STR,
            "target_type": _STR,
            "target_id": _STR,
            "site_id": _nullable("integer"),
            "before": _nullable("object"),
            "after": _nullable("object"),
            "request_id": _nullable("string"),
            "source": _nullable("string"),
            "outcome": _STR,
            "hash": {"type": "string", "description": "SHA-256 of the chained event, hex"},
        }
    ),
    "AuditEventList": _list_of("events", "AuditEvent"),
    "AuditVerdict": _record(
        {
            "ok": _BOOL,
            "checked": _INT,
            "first_bad_seq": _nullable("integer"),
            "reason": _nullable("string"),
            "head_seq": {"type": "integer", "description": "seq of the last good event"},
            "head_hash": {
                "type": "string",
                "description": "hash of the last good event, hex: keep a copy outside the "
                "database, since whoever can write all of it can rewrite the chain and its head",
            },
        }
    ),
}

_HEADERS = {
    "X-Request-ID": {
        "description": "The request's id (the caller's X-Request-ID, or a generated one)",
        "schema": _STR,
    },
    "Cache-Control": {
        "description": "Always no-store: responses may name credentials or carry a secret",
        "schema": {"type": "string", "const": "no-store"},
    },
}


def _error_response(status: int) -> dict[str, Any]:
    description = HTTPStatus(status).phrase
    response: dict[str, Any] = {
        "description": description,
        "headers": _HEADERS,
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    if status == 401:
        response["description"] = "Missing, malformed, unknown or revoked admin token"
    elif status == 403:
        response["description"] = "The admin token lacks a role allowed for this action"
    return response


def path_fields(op: Operation) -> tuple[Field, ...]:
    """The declared ``Field`` of each of ``op``'s path parameters, in order: the schema the
    document gives it, and what the app checks the request's value against."""
    fields: list[Field] = []
    for name, _ in op.path_params:
        field = PATH_PARAMETERS.get(name)
        if field is None:
            raise RouteTableError(
                f"{op.method} {op.full_path}: path parameter {name} has no schema"
            )
        fields.append(field)
    return tuple(fields)


def _operation(op: Operation) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
    }
    if op.query_ignored:
        doc["description"] = IGNORED_QUERY_NOTE
    if op.public:
        doc["security"] = []
    else:
        action = str(op.access)
        doc["security"] = [{SECURITY_SCHEME: []}]
        doc["x-admin-action"] = action
        doc["x-admin-roles"] = sorted(ADMIN_ACTIONS[action])
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": text,
            "schema": field.json_schema(),
        }
        for (name, text), field in zip(op.path_params, path_fields(op), strict=True)
    ]
    parameters += [
        {
            "name": f.name,
            "in": "query",
            "required": f.required,
            "description": f.description,
            "schema": f.json_schema(),
        }
        for f in op.query
    ]
    if parameters:
        doc["parameters"] = parameters
    if op.body is not None:
        doc["requestBody"] = {
            "required": any(f.required for f in op.body.fields),
            "content": {"application/json": {"schema": op.body.json_schema()}},
        }
    success: dict[str, Any] = {
        "description": HTTPStatus(op.status).phrase,
        "headers": _HEADERS,
        "content": {"application/json": {"schema": _ref(op.response)}},
    }
    if op.discloses_secret:
        doc["x-discloses-secret"] = True
        success["description"] += "; carries a secret shown only this once"
    statuses = set(op.errors) | {500}
    if not op.public:
        statuses |= {*AUTH_ERRORS, *STORE_ERRORS}
    if not op.query_ignored:
        statuses |= set(QUERY_ERRORS)
    doc["responses"] = {str(op.status): success} | {
        str(status): _error_response(status) for status in sorted(statuses)
    }
    return doc


def build_document(operations: Iterable[Operation], *, version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.full_path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "UID2 operator admin API",
            "version": version,
            "description": (
                "Participants, API keys, client secrets, admin tokens and the audit trail. "
                "Authenticate with 'Authorization: Bearer <admin token>'. Secrets are returned "
                "once, by the POST that issues them, and never travel in a URL. Errors are "
                '{"error": {"code": ..., "message": ...}}. Inputs: an explicit null means '
                '"not given"; integers are written without a fraction or exponent (42, not 42.0 '
                "or 4.2e1: JSON Schema cannot tell 42.0 from 42, and this API refuses 42.0); text "
                "must be valid Unicode without control characters; text holding a credential (an "
                "API key or admin token, a key's tail, a client secret) is refused wherever it is "
                "pasted, except in the audit filter target_id, which is only compared (an "
                "opt-out's target id has a client secret's shape)."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An admin token (UID2-A-<env>-0-<id>.<tail>)",
                }
            },
        },
    }
