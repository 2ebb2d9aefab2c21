"""The admin API's one error table: error class -> HTTP status and JSON body.

Every failure leaves the API as ``{"error": {"code": <stable code>, "message": <text>}}``. The
status is found by walking the raised class's MRO, so an entry for a base class covers every
subclass added later, and a class with no entry (or any exception that is not a ``UID2Error``) is
an internal error whose details never reach the client: its message could hold SQL parameters,
file paths or other material a caller must not see.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from uid2_operator.errors import (
    AlreadyExists,
    AuditChainAhead,
    AuditHeadMissing,
    AuditHeadUnreadable,
    AuditRowUnreadable,
    BodyTooLarge,
    CredentialError,
    DomainError,
    InvalidInput,
    InvalidTransition,
    KekCheckMismatch,
    KeyringError,
    MalformedBody,
    MethodNotAllowed,
    NotFound,
    PermissionDenied,
    RequestError,
    StoreError,
    StoreUnavailable,
    UID2Error,
    UnsupportedMediaType,
    WireError,
)

INTERNAL_CODE = "internal_error"
INTERNAL_MESSAGE = "Internal error; quote the X-Request-ID header when reporting it"


@dataclass(frozen=True, slots=True)
class HttpMapping:
    """How one error class leaves the API.

    ``detail``: send the instance's own message (specific, written for the caller). Off for
    classes whose instance messages may carry infrastructure details; the class's generic message
    is sent instead, with the class's stable code either way.
    """

    status: int
    detail: bool = True


ERROR_TABLE: Mapping[type[UID2Error], HttpMapping] = MappingProxyType(
    {
        MalformedBody: HttpMapping(400),
        RequestError: HttpMapping(400),
        WireError: HttpMapping(400),
        CredentialError: HttpMapping(401),
        PermissionDenied: HttpMapping(403),
        NotFound: HttpMapping(404),
        MethodNotAllowed: HttpMapping(405),
        AlreadyExists: HttpMapping(409),
        InvalidTransition: HttpMapping(409),
        BodyTooLarge: HttpMapping(413),
        UnsupportedMediaType: HttpMapping(415),
        InvalidInput: HttpMapping(422),
        DomainError: HttpMapping(422),
        # Version numbers and the remedy only: the keyring file must be replaced by hand.
        KekCheckMismatch: HttpMapping(500),
        KeyringError: HttpMapping(500, detail=False),
        StoreUnavailable: HttpMapping(503, detail=False),
        # Seqs and the remedy only: the operator must stop a process of an earlier version.
        AuditChainAhead: HttpMapping(500),
        # The seq and the field only, never the row's content.
        AuditRowUnreadable: HttpMapping(500),
        AuditHeadUnreadable: HttpMapping(500),
        AuditHeadMissing: HttpMapping(500),
        StoreError: HttpMapping(500, detail=False),
    }
)


@dataclass(frozen=True, slots=True)
class ErrorReply:
    status: int
    body: dict[str, Any]
    expected: bool  # False: an internal error the caller should log


def mapping_for(error_type: type[BaseException]) -> HttpMapping | None:
    """The entry of the nearest class along ``error_type``'s MRO that has one."""
    for cls in error_type.__mro__:
        if issubclass(cls, UID2Error) and cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return None


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def render_error(error: BaseException) -> ErrorReply:
    mapping = mapping_for(type(error))
    if not isinstance(error, UID2Error) or mapping is None:
        return ErrorReply(500, error_body(INTERNAL_CODE, INTERNAL_MESSAGE), expected=False)
    message = error.detail if mapping.detail else type(error).message
    return ErrorReply(
        mapping.status,
        error_body(error.code, message),
        # A store that does not answer is an outage, not a fault of this code: logged as such
        # by the app (one WARNING a minute), with no stack.
        expected=mapping.status < 500 or isinstance(error, StoreUnavailable),
    )
