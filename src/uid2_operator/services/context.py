"""Who is asking: the actor every use case records in the audit trail."""

from __future__ import annotations

from dataclasses import dataclass

from uid2_operator.errors import InvalidInput

SYSTEM_ACTOR_ID = "system"
MAX_ACTOR_LENGTH = 200
MAX_REQUEST_ID_LENGTH = 128
MAX_SOURCE_LENGTH = 200


@dataclass(frozen=True, slots=True)
class Actor:
    """The principal behind a use case, and where the request came from.

    ``id`` looks like ``"admin:<token_id>"``, ``"cli:<account>"`` or ``"system"``. It is public
    (token ids are prefixes, never token text) and lands in audit rows and ``created_by`` fields,
    so its length is bounded here, where a bad value is refused before any work starts.
    """

    id: str
    request_id: str | None = None
    source: str | None = None

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


SYSTEM = Actor(SYSTEM_ACTOR_ID)
