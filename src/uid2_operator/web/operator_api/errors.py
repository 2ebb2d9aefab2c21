"""The operator API's one error table: error class -> HTTP status, protocol status and message.

Errors leave the operator unencrypted as ``{"status": <protocol status>, "message": <text>}`` with
``application/json`` (operator-api §1.4), except authentication failures, which are exactly
``{"status":"unauthorized"}``, and failures of the HTTP layer itself (size, path, method), which
are the reason phrase as plain text, as the reference's framework sends them.

The entry is found by walking the raised class's MRO, so a base-class entry covers every subclass.
Anything without an entry, or any exception that is not a ``UID2Error``, is a 500 ``unknown``
whose details never reach the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from uid2_operator.errors import (
    BodyTooLarge,
    CredentialError,
    CstgClientError,
    CstgInvalidAppName,
    CstgInvalidOrigin,
    CstgKeypairDisabled,
    EnvelopeError,
    ExpiredTokenPresented,
    IdentityInputError,
    InvalidClientSite,
    InvalidConsentString,
    InvalidRequest,
    InvalidTokenPresented,
    KeySelectionError,
    MethodNotAllowed,
    NotFound,
    NotServing,
    OperatorError,
    RefreshEnvelopeError,
    RefreshFailed,
    ReplayedRequest,
    SaltError,
    UID2Error,
    WireError,
)
from uid2_operator.wire.encoding import dumps

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class OperatorErrorMapping:
    """How one error class leaves the operator API.

    ``status``: the protocol's status string, or None for a plain-text reason phrase.
    ``detail``: send the instance's message (else the fixed ``message`` or none at all).
    """

    http_status: int
    status: str | None
    detail: bool = True
    message: str | None = None


UNAUTHORIZED = OperatorErrorMapping(401, "unauthorized", detail=False)
UNKNOWN = OperatorErrorMapping(500, "unknown", detail=False, message="Unknown error")

OPERATOR_ERROR_TABLE: Mapping[type[UID2Error], OperatorErrorMapping] = MappingProxyType(
    {
        EnvelopeError: OperatorErrorMapping(400, "client_error"),
        RefreshEnvelopeError: OperatorErrorMapping(400, "client_error"),
        IdentityInputError: OperatorErrorMapping(400, "client_error"),
        WireError: OperatorErrorMapping(400, "client_error"),
        CstgClientError: OperatorErrorMapping(400, "client_error"),
        # The fixed text only: the instance's detail names the field that failed, for tests.
        InvalidConsentString: OperatorErrorMapping(
            400, "client_error", detail=False, message=InvalidConsentString.message
        ),
        CstgKeypairDisabled: OperatorErrorMapping(401, "unauthorized"),
        CstgInvalidOrigin: OperatorErrorMapping(403, "invalid_http_origin"),
        CstgInvalidAppName: OperatorErrorMapping(403, "invalid_app_name"),
        ReplayedRequest: OperatorErrorMapping(400, "client_error"),
        InvalidRequest: OperatorErrorMapping(400, "client_error"),
        InvalidTokenPresented: OperatorErrorMapping(400, "invalid_token"),
        ExpiredTokenPresented: OperatorErrorMapping(400, "expired_token"),
        RefreshFailed: OperatorErrorMapping(400, "error"),
        InvalidClientSite: OperatorErrorMapping(401, "invalid_client"),
        OperatorError: OperatorErrorMapping(400, "client_error"),
        CredentialError: UNAUTHORIZED,
        KeySelectionError: OperatorErrorMapping(500, "unknown"),
        SaltError: UNKNOWN,
        BodyTooLarge: OperatorErrorMapping(413, None, message="Request Entity Too Large"),
        NotFound: OperatorErrorMapping(404, None, message="Not Found"),
        MethodNotAllowed: OperatorErrorMapping(405, None, message="Method Not Allowed"),
        NotServing: OperatorErrorMapping(503, None, message="Service Unavailable"),
    }
)


def mapping_for(error: BaseException) -> OperatorErrorMapping:
    """The table entry of the nearest class in ``error``'s MRO; ``UNKNOWN`` when none."""
    if isinstance(error, UID2Error):
        for cls in type(error).__mro__:
            found = OPERATOR_ERROR_TABLE.get(cls)
            if found is not None:
                return found
    return UNKNOWN


def render(error: BaseException) -> tuple[int, bytes, bytes]:
    """``(http status, body, content type)`` for an error."""
    mapping = mapping_for(error)
    if mapping.status is None:
        return mapping.http_status, (mapping.message or "").encode(), TEXT
    message = error.detail if mapping.detail and isinstance(error, UID2Error) else mapping.message
    payload = {"status": mapping.status}
    if message is not None:
        payload["message"] = message
    return mapping.http_status, dumps(payload), JSON
