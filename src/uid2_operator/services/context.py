"""Who is asking: the actor every use case records in the audit trail."""

from __future__ import annotations

from dataclasses import dataclass

from uid2_operator.errors import InvalidInput

SYSTEM_ACTOR_ID = "system"
ADMIN_ACTOR_PREFIX = "admin:"
MAX_ACTOR_LENGTH = 200
MAX_REQUEST_ID_LENGTH = 128
MAX_SOURCE_LENGTH = 200


@dataclass(frozen=True, slots=True)
class Actor:
    """The principal behind a use case, and where the request came from.

    ``id`` looks like ``"admin:<token_id>"``, ``"cli:<account>"`` or ``"system"``. It is public
    (token ids are prefixes, never token text) and lands in audit rows and ``created_by`` fields,
    so its length is bounded here, where a bad value is refused before any work starts.

    ``admin_token_id``: the admin token the actor authenticated with (the admin API sets it, with
    ``id`` ``"admin:<admin_token_id>"``); ``None`` for the command line, the system and any other
    actor without a token. Every audited change made as such an actor checks, inside its own
    transaction, that the token is still active (``audit_trail.require_active_token``), so a
    token revoked while its request was under way changes nothing.
    """

    id: str
    request_id: str | None = None
    source: str | None = None
    admin_token_id: str | None = None

    def __post_init__(self) -> None:
        for what, value, limit, optional in (
            ("actor id", self.id, MAX_ACTOR_LENGTH, False),
            ("request id", self.request_id, MAX_REQUEST_ID_LENGTH, True),
            ("source", self.source, MAX_SOURCE_LENGTH, True),
        ):
            if value is None and optional:
                continue
            if not isinstance(value, str) or not 1 <= len(value) <= limit or "\x00" in value:
                raise InvalidInput(f"The {what} must be 1 to {limit} characters")
        token_id = self.admin_token_id
        if token_id is not None and (
            not isinstance(token_id, str) or self.id != ADMIN_ACTOR_PREFIX + token_id
        ):
            raise InvalidInput("An actor with an admin token is named admin:<token_id>")


SYSTEM = Actor(SYSTEM_ACTOR_ID)
