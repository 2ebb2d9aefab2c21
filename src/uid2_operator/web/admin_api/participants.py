"""Participants (sites): list, show, create, enable/disable, and the roles they may grant."""

from __future__ import annotations

from dataclasses import replace

from uid2_operator.domain.authorization import AdminAction
from uid2_operator.domain.participants import (
    MAX_CONTACT_LENGTH,
    MAX_CONTACTS,
    MAX_NAME_LENGTH,
    MAX_SITE_ID,
    MIN_SITE_ID,
    ParticipantType,
)
from uid2_operator.domain.roles import ClientRole
from uid2_operator.services.credentials import MAX_LIST_LIMIT
from uid2_operator.web.admin_api.bodies import (
    BIDI_CONTROLS,
    CONTROL_CHARACTERS,
    NON_BLANK_PATTERN,
    NON_BLANK_RULE,
    TRIMMED_SPACE,
    BodySpec,
    Field,
    Kind,
    any_case_pattern,
    trimmed_pattern,
)
from uid2_operator.web.admin_api.routing import Call, Operation, Reply

TAG = "participants"
SITE_ID = Field(
    "site_id",
    Kind.INTEGER,
    "The participant's site id",
    required=True,
    minimum=MIN_SITE_ID,
    maximum=MAX_SITE_ID,
)
SITE_ID_PARAM = ((SITE_ID.name, SITE_ID.description),)
MAX_ROLE_NAMES = 2 * len(ClientRole)
ROLE_NAME_LENGTH = 32
CLIENT_ROLE_NAMES = ", ".join(ClientRole.__members__)
# The services trim role names and compare them in upper case (``roles.parse_client_roles``).
CLIENT_ROLE_PATTERN = any_case_pattern(ClientRole.__members__, str.upper)
CLIENT_ROLE_RULE = f"must be one of {CLIENT_ROLE_NAMES} (any case)"
# An e-mail-like address once trimmed, with no bidirectional control: what
# ``participants.validate_contacts`` accepts.
_ADDRESS_CHARACTER = f"[^@{TRIMMED_SPACE}{CONTROL_CHARACTERS}{BIDI_CONTROLS}]"
CONTACT_PATTERN = trimmed_pattern(
    rf"{_ADDRESS_CHARACTER}+@{_ADDRESS_CHARACTER}+\.{_ADDRESS_CHARACTER}+"
)

ROLES_FIELD = Field(
    "roles",
    Kind.STRING_LIST,
    f"Client roles the participant may grant to its keys: {CLIENT_ROLE_NAMES} (trimmed, any case)",
    max_items=MAX_ROLE_NAMES,
    max_length=ROLE_NAME_LENGTH,
    pattern=CLIENT_ROLE_PATTERN,
    pattern_rule=CLIENT_ROLE_RULE,
)
NAME_FIELD = Field(
    "name",
    Kind.STRING,
    "Display name (trimmed; not blank)",
    required=True,
    max_length=MAX_NAME_LENGTH,
    min_length=1,
    pattern=NON_BLANK_PATTERN,
    pattern_rule=NON_BLANK_RULE,
)

CREATE_BODY = BodySpec(
    (
        NAME_FIELD,
        Field(
            "type",
            Kind.STRING,
            "Participant type",
            required=True,
            max_length=32,
            choices=tuple(t.value for t in ParticipantType),
        ),
        Field(
            "site_id",
            Kind.INTEGER,
            "Site id to use. When absent: one above the highest site id, or, once a "
            f"participant holds {MAX_SITE_ID}, the lowest free id from {MIN_SITE_ID} up",
            minimum=MIN_SITE_ID,
            maximum=MAX_SITE_ID,
        ),
        ROLES_FIELD,
        Field(
            "contacts",
            Kind.STRING_LIST,
            "Contact e-mail addresses (trimmed; duplicates ignoring case are dropped)",
            max_items=MAX_CONTACTS,
            max_length=MAX_CONTACT_LENGTH,
            pattern=CONTACT_PATTERN,
            pattern_rule="must be an e-mail address",
        ),
    )
)
ROLES_BODY = BodySpec((replace(ROLES_FIELD, required=True),))
NO_BODY = BodySpec()


LIST_QUERY = (
    Field(
        "limit",
        Kind.INTEGER,
        "At most this many participants (default: every one); `next` is set when more follow",
        minimum=1,
        maximum=MAX_LIST_LIMIT,
    ),
    Field(
        "after",
        Kind.INTEGER,
        "Start after this site id (the `next` of the previous page)",
        minimum=0,
        maximum=MAX_SITE_ID,
    ),
)


def list_participants(call: Call) -> Reply:
    query = call.query
    page = call.services.credentials.participant_page(
        call.actor, limit=query.optional_integer("limit"), after=query.optional_integer("after")
    )
    following = page.items[-1].site_id if page.more else None
    return Reply({"participants": [view.to_json() for view in page.items], "next": following})


def get_participant(call: Call) -> Reply:
    return Reply(call.services.credentials.get_participant(call.actor, call.site_id()).to_json())


def create_participant(call: Call) -> Reply:
    body = call.body
    view = call.services.credentials.create_participant(
        call.actor,
        name=body.text("name"),
        type=body.text("type"),
        site_id=body.optional_integer("site_id"),
        roles=body.optional_texts("roles") or (),
        contacts=body.optional_texts("contacts") or (),
    )
    return Reply(view.to_json(), status=201)


def disable_participant(call: Call) -> Reply:
    credentials = call.services.credentials
    return Reply(credentials.set_participant_enabled(call.actor, call.site_id(), False).to_json())


def enable_participant(call: Call) -> Reply:
    credentials = call.services.credentials
    return Reply(credentials.set_participant_enabled(call.actor, call.site_id(), True).to_json())


def set_participant_roles(call: Call) -> Reply:
    view = call.services.credentials.set_participant_roles(
        call.actor, call.site_id(), call.body.texts("roles")
    )
    return Reply(view.to_json())


OPERATIONS = (
    Operation(
        "GET",
        "/participants",
        AdminAction.PARTICIPANT_LIST,
        list_participants,
        operation_id="listParticipants",
        summary="List participants",
        response="ParticipantList",
        tag=TAG,
        query=LIST_QUERY,
        errors=(422,),
    ),
    Operation(
        "POST",
        "/participants",
        AdminAction.PARTICIPANT_CREATE,
        create_participant,
        operation_id="createParticipant",
        summary="Create a participant",
        response="Participant",
        tag=TAG,
        status=201,
        body=CREATE_BODY,
        errors=(400, 409, 413, 415, 422),
    ),
    Operation(
        "GET",
        "/participants/{site_id}",
        AdminAction.PARTICIPANT_GET,
        get_participant,
        operation_id="getParticipant",
        summary="Show a participant",
        response="Participant",
        tag=TAG,
        errors=(404, 422),
        path_params=SITE_ID_PARAM,
    ),
    Operation(
        "POST",
        "/participants/{site_id}/disable",
        AdminAction.PARTICIPANT_DISABLE,
        disable_participant,
        operation_id="disableParticipant",
        summary="Disable a participant (stops all of its keys at once)",
        response="Participant",
        tag=TAG,
        body=NO_BODY,
        errors=(400, 404, 409, 413, 415, 422),
        path_params=SITE_ID_PARAM,
    ),
    Operation(
        "POST",
        "/participants/{site_id}/enable",
        AdminAction.PARTICIPANT_ENABLE,
        enable_participant,
        operation_id="enableParticipant",
        summary="Enable a participant",
        response="Participant",
        tag=TAG,
        body=NO_BODY,
        errors=(400, 404, 409, 413, 415, 422),
        path_params=SITE_ID_PARAM,
    ),
    Operation(
        "PUT",
        "/participants/{site_id}/roles",
        AdminAction.PARTICIPANT_UPDATE,
        set_participant_roles,
        operation_id="setParticipantRoles",
        summary="Replace the roles a participant may grant",
        response="Participant",
        tag=TAG,
        body=ROLES_BODY,
        errors=(400, 404, 409, 413, 415, 422),
        path_params=SITE_ID_PARAM,
    ),
)
