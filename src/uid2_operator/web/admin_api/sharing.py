"""Sharing permissions, client-side keypairs and participants' domain and app names.

A keypair's public key string and subscription id are public (publishers put them in web pages),
so creating one discloses nothing secret; its private key is never in any response. Paths carry
subscription ids and site ids only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from uid2_operator.domain import keypairs
from uid2_operator.domain.authorization import AdminAction
from uid2_operator.domain.keysets import SharingMode
from uid2_operator.domain.origins import (
    APP_NAME_SEPARATOR,
    MAX_APP_NAME_LENGTH,
    MAX_APP_NAMES,
    MAX_DOMAIN_NAMES,
)
from uid2_operator.domain.participants import MAX_SITE_ID, MIN_SITE_ID, ParticipantType
from uid2_operator.domain.sharing import MAX_LISTED_SITES, check_mode_names
from uid2_operator.errors import InvalidInput, NotFound
from uid2_operator.services.sharing import MAX_SHARING_TYPES, SharingService
from uid2_operator.web.admin_api.bodies import (
    BIDI_CONTROLS,
    CONTROL_CHARACTERS,
    INTEGER_NOTE,
    INVISIBLE,
    LABEL_PATTERN,
    LABEL_RULE,
    TRIMMED_SPACE,
    BodyRule,
    BodySpec,
    Field,
    Kind,
    Value,
    Values,
    any_case_pattern,
    integer_schema,
    trimmed_pattern,
)
from uid2_operator.web.admin_api.participants import SITE_ID_PARAM
from uid2_operator.web.admin_api.routing import Call, Operation, Reply

SHARING_TAG = "sharing"
KEYPAIR_TAG = "keypairs"
SUBSCRIPTION_ID = Field(
    "subscription_id",
    Kind.STRING,
    "The keypair's subscription id",
    required=True,
    max_length=keypairs.SUBSCRIPTION_ID_LENGTH,
    pattern=f"^[{keypairs.SUBSCRIPTION_ID_ALPHABET}]{{{keypairs.SUBSCRIPTION_ID_LENGTH}}}$",
    pattern_rule=keypairs.SUBSCRIPTION_ID_RULE,
)
SUBSCRIPTION_PARAM = ((SUBSCRIPTION_ID.name, SUBSCRIPTION_ID.description),)
WRITE_ERRORS = (400, 404, 409, 413, 415, 422)
MAX_HOST_TEXT = 255
# Once trimmed: no space, control character, scheme, path, port or user (what
# ``origins.validate_domain_name`` refuses before it looks the name up in the suffix list).
DOMAIN_NAME_PATTERN = trimmed_pattern(rf"[^{TRIMMED_SPACE}{CONTROL_CHARACTERS}/:@?#\\]+")
# Once trimmed: no space, control character, bidirectional control, comma or character that shows
# nothing (``origins.validate_app_name``; those past U+FFFF, which the pattern cannot name, are
# refused by the rule).
APP_NAME_PATTERN = trimmed_pattern(
    f"[^{TRIMMED_SPACE}{CONTROL_CHARACTERS}{BIDI_CONTROLS}{INVISIBLE}{APP_NAME_SEPARATOR}]+"
)


@dataclass(frozen=True, slots=True)
class SiteIdListField(Field):
    """A JSON array of site ids (integers). Values travel as text to fit ``Values``."""

    def json_schema(self) -> dict[str, Any]:
        return {
            "type": "array",
            "items": integer_schema(self.minimum, self.maximum),
            "maxItems": self.max_items,
            "description": f"{self.description} (each {INTEGER_NOTE})",
        }

    def check(self, value: object) -> Value:
        if not isinstance(value, list) or not all(
            isinstance(item, int) and not isinstance(item, bool) for item in value
        ):
            raise InvalidInput(f"Field '{self.name}' must be a list of integers")
        if len(value) > self.max_items:
            raise InvalidInput(f"Field '{self.name}' takes at most {self.max_items} items")
        for item in value:
            self._bounded(item)
        return tuple(str(item) for item in value)


@dataclass(frozen=True, slots=True)
class BooleanField(Field):
    """A JSON boolean. Values travel as the text ``"true"`` or ``"false"`` to fit ``Values``."""

    def json_schema(self) -> dict[str, Any]:
        return {"type": "boolean", "description": self.description}

    def check(self, value: object) -> Value:
        if not isinstance(value, bool):
            raise InvalidInput(f"Field '{self.name}' must be true or false")
        return "true" if value else "false"


def check_mode_takes(body: Values) -> None:
    """``domain.sharing.check_mode_names`` of a body's mode, sites and types."""
    names = bool(body.optional_texts("sites")) or bool(body.optional_texts("types"))
    check_mode_names(body.text("mode"), names)


SHARING_BODY = BodySpec(
    (
        Field(
            "mode",
            Kind.STRING,
            "owner_only: nobody else; bidders: every ID_READER caller; list: the sites and "
            "participant types given",
            required=True,
            max_length=16,
            choices=tuple(m.value for m in SharingMode),
        ),
        SiteIdListField(
            "sites",
            Kind.STRING_LIST,
            "Site ids allowed (mode list only): participants other than this one",
            max_items=MAX_LISTED_SITES,
            minimum=MIN_SITE_ID,
            maximum=MAX_SITE_ID,
        ),
        Field(
            "types",
            Kind.STRING_LIST,
            "Participant types allowed (mode list only): "
            + ", ".join(t.value for t in ParticipantType)
            + " (trimmed, any case)",
            max_items=MAX_SHARING_TYPES,
            max_length=32,
            # The service trims type names and compares them in lower case.
            pattern=any_case_pattern((t.value for t in ParticipantType), str.lower),
            pattern_rule="must be one of " + ", ".join(t.value for t in ParticipantType),
        ),
        BooleanField(
            "rotate",
            Kind.STRING,
            "true (default): when the change may remove a reader, rotate the keyset's keys so "
            "keys it already holds stop opening new tokens; false: do not",
        ),
    ),
    rules=(
        BodyRule(
            "Mode list names at least one site or type; the other modes none",
            {
                "if": {"properties": {"mode": {"const": SharingMode.LIST.value}}},
                "then": {
                    "anyOf": [
                        {"required": [name], "properties": {name: {"type": "array", "minItems": 1}}}
                        for name in ("sites", "types")
                    ]
                },
                "else": {"properties": {"sites": {"maxItems": 0}, "types": {"maxItems": 0}}},
            },
            check_mode_takes,
        ),
    ),
)
KEYPAIR_BODY = BodySpec(
    (
        Field(
            "site_id",
            Kind.INTEGER,
            "The participant the keypair belongs to",
            required=True,
            minimum=MIN_SITE_ID,
            maximum=MAX_SITE_ID,
        ),
        Field(
            "name",
            Kind.STRING,
            "A label (trimmed)",
            max_length=keypairs.MAX_NAME_LENGTH,
            pattern=LABEL_PATTERN,
            pattern_rule=LABEL_RULE,
        ),
        Field(
            "contact",
            Kind.STRING,
            "Who to ask about it (trimmed)",
            max_length=keypairs.MAX_CONTACT_LENGTH,
            pattern=LABEL_PATTERN,
            pattern_rule=LABEL_RULE,
        ),
    )
)
DOMAINS_BODY = BodySpec(
    (
        Field(
            "domain_names",
            Kind.STRING_LIST,
            "Registrable domains (example.com) client-side requests may come from: "
            "bare names (no scheme, path or port), each a registrable domain under the Public "
            "Suffix List (trimmed; stored in lower case, IDNA-encoded)",
            required=True,
            max_items=MAX_DOMAIN_NAMES,
            max_length=MAX_HOST_TEXT,
            min_length=1,
            pattern=DOMAIN_NAME_PATTERN,
            pattern_rule="must be a bare domain name (no scheme, path, port or spaces)",
        ),
    )
)
APP_NAMES_BODY = BodySpec(
    (
        Field(
            "app_names",
            Kind.STRING_LIST,
            "App ids (package names, bundle ids, store ids) client-side requests may name "
            "(trimmed; no spaces or commas inside: each app id is a name of its own)",
            required=True,
            max_items=MAX_APP_NAMES,
            max_length=MAX_APP_NAME_LENGTH,
            min_length=1,
            pattern=APP_NAME_PATTERN,
            pattern_rule="must be one app id (no spaces, commas or control characters)",
        ),
    )
)
NO_BODY = BodySpec()
KEYPAIR_QUERY = (
    Field(
        "site_id",
        Kind.INTEGER,
        "Only this participant's keypairs",
        minimum=MIN_SITE_ID,
        maximum=MAX_SITE_ID,
    ),
)


def _service(call: Call) -> SharingService:
    service = getattr(call.services, "sharing", None)
    if not isinstance(service, SharingService):
        raise NotFound("Sharing and keypairs are not available on this server")
    return service


def show_sharing(call: Call) -> Reply:
    return Reply(_service(call).show_sharing(call.actor, call.site_id()).to_json())


def set_sharing(call: Call) -> Reply:
    body = call.body
    view = _service(call).set_sharing(
        call.actor,
        call.site_id(),
        mode=body.text("mode"),
        sites=[int(text) for text in body.optional_texts("sites") or ()],
        types=body.optional_texts("types") or (),
        rotate=body.optional_text("rotate") != "false",
    )
    return Reply(view.to_json())


def list_keypairs(call: Call) -> Reply:
    views = _service(call).list_keypairs(call.actor, site_id=call.query.optional_integer("site_id"))
    return Reply({"keypairs": [view.to_json() for view in views]})


def create_keypair(call: Call) -> Reply:
    body = call.body
    view = _service(call).create_keypair(
        call.actor,
        site_id=body.integer("site_id"),
        name=body.optional_text("name") or "",
        contact=body.optional_text("contact") or "",
    )
    return Reply(view.to_json(), status=201)


def _subscription_id(call: Call) -> str:
    return call.params["subscription_id"]


def get_keypair(call: Call) -> Reply:
    return Reply(_service(call).get_keypair(call.actor, _subscription_id(call)).to_json())


def disable_keypair(call: Call) -> Reply:
    service = _service(call)
    return Reply(service.set_keypair_disabled(call.actor, _subscription_id(call), True).to_json())


def enable_keypair(call: Call) -> Reply:
    service = _service(call)
    return Reply(service.set_keypair_disabled(call.actor, _subscription_id(call), False).to_json())


def delete_keypair(call: Call) -> Reply:
    return Reply(_service(call).delete_keypair(call.actor, _subscription_id(call)).to_json())


def get_origins(call: Call) -> Reply:
    return Reply(_service(call).get_origins(call.actor, call.site_id()).to_json())


def set_domain_names(call: Call) -> Reply:
    names = call.body.texts("domain_names")
    return Reply(_service(call).set_domain_names(call.actor, call.site_id(), names).to_json())


def set_app_names(call: Call) -> Reply:
    names = call.body.texts("app_names")
    return Reply(_service(call).set_app_names(call.actor, call.site_id(), names).to_json())


OPERATIONS = (
    Operation(
        "GET",
        "/participants/{site_id}/sharing",
        AdminAction.SHARING_GET,
        show_sharing,
        operation_id="getSharing",
        summary="Who besides the participant may decrypt its tokens",
        response="Sharing",
        tag=SHARING_TAG,
        errors=(404, 422),
        path_params=SITE_ID_PARAM,
    ),
    Operation(
        "PUT",
        "/participants/{site_id}/sharing",
        AdminAction.SHARING_SET,
        set_sharing,
        operation_id="setSharing",
        summary="Replace the participant's sharing choice (rotates keys when a reader goes)",
        response="Sharing",
        tag=SHARING_TAG,
        body=SHARING_BODY,
        errors=WRITE_ERRORS,
        path_params=SITE_ID_PARAM,
    ),
    Operation(
        "GET",
        "/participants/{site_id}/origins",
        AdminAction.PARTICIPANT_GET,
        get_origins,
        operation_id="getOrigins",
        summary="The domain and app names client-side requests may come from",
        response="SiteOrigins",
        tag=KEYPAIR_TAG,
        errors=(404, 422),
        path_params=SITE_ID_PARAM,
    ),
    Operation(
        "PUT",
        "/participants/{site_id}/domain-names",
        AdminAction.PARTICIPANT_UPDATE,
        set_domain_names,
        operation_id="setDomainNames",
        summary="Replace the participant's domain names",
        response="SiteOrigins",
        tag=KEYPAIR_TAG,
        body=DOMAINS_BODY,
        errors=WRITE_ERRORS,
        path_params=SITE_ID_PARAM,
    ),
    Operation(
        "PUT",
        "/participants/{site_id}/app-names",
        AdminAction.PARTICIPANT_UPDATE,
        set_app_names,
        operation_id="setAppNames",
        summary="Replace the participant's app names",
        response="SiteOrigins",
        tag=KEYPAIR_TAG,
        body=APP_NAMES_BODY,
        errors=WRITE_ERRORS,
        path_params=SITE_ID_PARAM,
    ),
    Operation(
        "GET",
        "/keypairs",
        AdminAction.KEYPAIR_LIST,
        list_keypairs,
        operation_id="listKeypairs",
        summary="List client-side keypairs (never their private keys)",
        response="KeypairList",
        tag=KEYPAIR_TAG,
        query=KEYPAIR_QUERY,
        errors=(404, 422),
    ),
    Operation(
        "POST",
        "/keypairs",
        AdminAction.KEYPAIR_CREATE,
        create_keypair,
        operation_id="createKeypair",
        summary="Create a client-side keypair (subscription id and public key)",
        response="Keypair",
        tag=KEYPAIR_TAG,
        status=201,
        body=KEYPAIR_BODY,
        errors=WRITE_ERRORS,
    ),
    Operation(
        "GET",
        "/keypairs/{subscription_id}",
        AdminAction.KEYPAIR_GET,
        get_keypair,
        operation_id="getKeypair",
        summary="Show a client-side keypair",
        response="Keypair",
        tag=KEYPAIR_TAG,
        errors=(404, 422),
        path_params=SUBSCRIPTION_PARAM,
    ),
    Operation(
        "POST",
        "/keypairs/{subscription_id}/disable",
        AdminAction.KEYPAIR_DISABLE,
        disable_keypair,
        operation_id="disableKeypair",
        summary="Disable a keypair (its requests get 401)",
        response="Keypair",
        tag=KEYPAIR_TAG,
        body=NO_BODY,
        errors=WRITE_ERRORS,
        path_params=SUBSCRIPTION_PARAM,
    ),
    Operation(
        "POST",
        "/keypairs/{subscription_id}/enable",
        AdminAction.KEYPAIR_ENABLE,
        enable_keypair,
        operation_id="enableKeypair",
        summary="Enable a disabled keypair",
        response="Keypair",
        tag=KEYPAIR_TAG,
        body=NO_BODY,
        errors=WRITE_ERRORS,
        path_params=SUBSCRIPTION_PARAM,
    ),
    Operation(
        "DELETE",
        "/keypairs/{subscription_id}",
        AdminAction.KEYPAIR_DELETE,
        delete_keypair,
        operation_id="deleteKeypair",
        summary="Delete a keypair and its private key for good",
        response="Keypair",
        tag=KEYPAIR_TAG,
        body=NO_BODY,
        errors=WRITE_ERRORS,
        path_params=SUBSCRIPTION_PARAM,
    ),
)
