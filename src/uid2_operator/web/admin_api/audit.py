"""The audit trail: read it page by page, and verify its hash chain."""

from __future__ import annotations

import logging

from uid2_operator.domain.authorization import AUDIT_TARGET_TYPES, AdminAction
from uid2_operator.services.credentials import (
    MAX_AUDIT_LIMIT,
    MAX_AUDIT_SITE_ID,
    MIN_AUDIT_SITE_ID,
)
from uid2_operator.web.admin_api.bodies import BodySpec, Field, Kind
from uid2_operator.web.admin_api.routing import Call, Operation, Reply

log = logging.getLogger(__name__)

TAG = "audit"
DEFAULT_LIMIT = 100

LIST_QUERY = (
    Field(
        "since_seq",
        Kind.INTEGER,
        "Only events after this sequence number (page with the last seq seen)",
        minimum=0,
        maximum=2**62,
    ),
    Field(
        "target_id",
        Kind.STRING,
        "Only events whose target id is this, whatever the target's type: a key id (api_key), "
        "an admin token id (admin_token), a keypair's subscription id (keypair), a participant's "
        "site id (participant), a keyset id (keyset), an opt-out's hash (optout), ... Keyset ids "
        "and site ids overlap: add target_type to say which is meant, and use site_id for "
        "everything about a participant",
        max_length=200,
    ),
    Field(
        "target_type",
        Kind.STRING,
        "Only events whose target is of this type",
        max_length=64,
        choices=AUDIT_TARGET_TYPES,
    ),
    Field(
        "site_id",
        Kind.INTEGER,
        "Only events about this participant (site): the participant itself, its keys, keyset "
        "and keypairs, and refusals naming it",
        minimum=MIN_AUDIT_SITE_ID,
        maximum=MAX_AUDIT_SITE_ID,
    ),
    Field("action", Kind.STRING, "Only events of this action, e.g. key.rotate", max_length=64),
    Field(
        "limit",
        Kind.INTEGER,
        f"At most this many events (default {DEFAULT_LIMIT})",
        minimum=1,
        maximum=MAX_AUDIT_LIMIT,
    ),
)


def list_audit(call: Call) -> Reply:
    query = call.query
    limit = query.optional_integer("limit")
    events = call.services.credentials.list_audit(
        call.actor,
        since_seq=query.optional_integer("since_seq"),
        target_id=query.optional_text("target_id"),
        action=query.optional_text("action"),
        limit=DEFAULT_LIMIT if limit is None else limit,
        target_type=query.optional_text("target_type"),
        site_id=query.optional_integer("site_id"),
    )
    return Reply({"events": [event.to_json() for event in events]})


def verify_audit(call: Call) -> Reply:
    """The verdict; a broken chain is also a WARNING in the server's log (the command line
    prints its verdict and error line itself)."""
    verdict = call.services.credentials.verify_audit(call.actor)
    if not verdict.ok:
        log.warning(
            "audit chain broken first_bad_seq=%s problem=%s", verdict.first_bad_seq, verdict.reason
        )
    return Reply(verdict.to_json())


OPERATIONS = (
    Operation(
        "GET",
        "/audit",
        AdminAction.AUDIT_LIST,
        list_audit,
        operation_id="listAuditEvents",
        summary="List audit events, oldest first (events about admin tokens only to the roles "
        "that may list admin tokens)",
        response="AuditEventList",
        tag=TAG,
        query=LIST_QUERY,
        errors=(422,),
    ),
    Operation(
        "POST",
        "/audit/verify",
        AdminAction.AUDIT_VERIFY,
        verify_audit,
        operation_id="verifyAuditChain",
        summary="Verify the audit hash chain (detects edited, inserted and deleted rows)",
        response="AuditVerdict",
        tag=TAG,
        body=BodySpec(),
        errors=(400, 413, 415, 422),
    ),
)
