"""Every error the service raises on purpose, as data.

Each class carries a stable machine ``code`` (never renamed: logs, metrics and clients match on it)
and a human ``message``. Where the UID2 protocol fixes the text a client sees, the message is that
text verbatim. Mapping to HTTP statuses happens in exactly one table at the web edge, looked up by
the class's MRO, so a handler for a base class covers its subclasses.

The tree::

    UID2Error                               code "error"
    ├── WireError                           malformed or unauthentic bytes on the wire
    │   ├── EnvelopeError                   the v2 request envelope (operator-api §2.3)
    │   │   ├── BodyMissing
    │   │   ├── UnencryptedJson
    │   │   ├── NotBase64
    │   │   ├── BodyTooShort
    │   │   ├── UnsupportedEnvelopeVersion
    │   │   ├── EnvelopeDecryptionFailed
    │   │   ├── StaleTimestamp
    │   │   └── InvalidPayload
    │   ├── ResponseEnvelopeError           a response envelope that does not open or match
    │   ├── IdentityInputError              identity input (operator-api §3)
    │   │   ├── MissingIdentity
    │   │   └── InvalidIdentifier
    │   ├── TokenError                      advertising and refresh tokens (operator-api §5)
    │   │   ├── MalformedToken
    │   │   ├── UnsupportedTokenVersion
    │   │   ├── UnknownTokenKey
    │   │   ├── TokenDecryptionFailed
    │   │   └── IdentityMismatch
    │   ├── RefreshEnvelopeError            the 388-character refresh envelope (operator-api §5.5)
    │   │   ├── RefreshNotBase64
    │   │   ├── RefreshKeyUnknown
    │   │   ├── RefreshDecryptionFailed
    │   │   └── RefreshPayloadInvalid
    │   ├── CstgError                       /v2/token/client-generate (operator-api §8)
    │   │   ├── CstgClientError             400 client_error
    │   │   │   ├── CstgJsonInvalid
    │   │   │   ├── CstgJsonMissing
    │   │   │   ├── CstgBadSubscription
    │   │   │   ├── CstgMissingParameters
    │   │   │   ├── CstgBadPublicKey
    │   │   │   ├── CstgBadIv
    │   │   │   ├── CstgDecryptionFailed
    │   │   │   ├── CstgStaleTimestamp      a request timestamp outside the window
    │   │   │   ├── CstgPayloadJsonInvalid
    │   │   │   ├── CstgPhoneNotSupported
    │   │   │   ├── CstgIdentityMissing
    │   │   │   └── CstgInvalidIdentifier
    │   │   ├── CstgKeypairDisabled         401 unauthorized
    │   │   ├── CstgInvalidOrigin           403 invalid_http_origin
    │   │   └── CstgInvalidAppName          403 invalid_app_name
    │   └── InvalidConsentString            an IAB TCF v2 TC string that does not parse (EUID)
    ├── KeySelectionError
    │   └── NoActiveKey                     no key of a keyset is active at the given time
    ├── SaltError                           salt material that cannot serve a derivation
    ├── StoreError                          the database failed or refused an operation
    │   ├── StoreUnavailable                unreachable, or locked for longer than the timeout
    │   │   └── StoreAccessRefused          reachable, but the role lacks a privilege it needs
    │   ├── SchemaOutOfDate                 not migrated to this code's schema (run db upgrade)
    │   ├── AuditChainAhead                 audit rows past the recorded head (an earlier version)
    │   ├── AuditRowUnreadable              an audit row changed outside uid2-operator
    │   ├── AuditHeadUnreadable             the recorded chain head changed outside uid2-operator
    │   ├── AuditHeadMissing                the recorded chain head removed outside uid2-operator
    │   └── UnsupportedDatabaseUrl          neither sqlite:/// nor postgresql(+psycopg)://
    ├── RequestError                        an HTTP request the admin API refuses as sent
    │   ├── MalformedBody                   not JSON, or not a JSON object
    │   ├── InvalidContentLength            a Content-Length that is not a size
    │   ├── BodyTooLarge
    │   ├── UnsupportedMediaType            a body that is not application/json
    │   └── MethodNotAllowed
    ├── OperatorError                       an operator API request refused by a protocol rule
    │   ├── ReplayedRequest                 same key and nonce again inside the timestamp window
    │   ├── InvalidRequest                  400 client_error with the endpoint's own message
    │   ├── InvalidTokenPresented           400 invalid_token (refresh, logout)
    │   ├── ExpiredTokenPresented           400 expired_token (refresh)
    │   ├── RefreshFailed                   400 error: any refresh failure of an anonymous caller
    │   └── InvalidClientSite               401 invalid_client: a reserved caller site id
    ├── NotServing                          503: no snapshot, or one past the age bound
    └── DomainError                         a control-plane rule refused the request
        ├── NotFound
        ├── AlreadyExists
        ├── InvalidInput
        ├── InvalidTransition               e.g. any change to a revoked key
        ├── PermissionDenied
        ├── AuditChainBroken                rows to adopt past the recorded head do not link
        ├── CredentialError                 a presented API key or admin token
        │   ├── MalformedCredential         wrong shape or checksum (refused before any lookup)
        │   ├── WrongEnvironment            minted for another environment
        │   ├── CredentialRejected          unknown id or hash mismatch
        │   └── CredentialMissing           no credential presented at all
        └── KeyringError                    key-encryption keys and the hashing pepper
            ├── KekCheckMismatch            another key under a version the store records
            ├── KekVersionMissing           the keyring lacks a version (``.version``)
            ├── KeyringMissing
            ├── PlaceholderKeyring          a development keyring where prod needs a real one
            └── SealedSecretUnreadable      a sealed client secret that does not open

A subclass may override ``code`` and ``message``; instances may pass a more specific message.
"""

from __future__ import annotations

from typing import ClassVar


class UID2Error(Exception):
    """Root of every deliberate error in the service."""

    code: ClassVar[str] = "error"
    message: ClassVar[str] = "Unexpected error"

    def __init__(self, message: str | None = None) -> None:
        self.detail = message if message is not None else type(self).message
        super().__init__(self.detail)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.detail!r})"


# --------------------------------------------------------------------------------------- wire


class WireError(UID2Error):
    """Bytes or text from the wire that are malformed, unauthentic or of an unknown version."""

    code = "wire_error"
    message = "Invalid wire data"


class EnvelopeError(WireError):
    code = "envelope_invalid"
    message = "Invalid body"


class BodyMissing(EnvelopeError):
    code = "envelope_body_missing"
    message = "Invalid body: Body is missing."


class UnencryptedJson(EnvelopeError):
    code = "envelope_unencrypted_json"
    message = "Invalid body: The request body is unencrypted JSON."


class NotBase64(EnvelopeError):
    code = "envelope_not_base64"
    message = "Invalid body: Body is not valid base64."


class BodyTooShort(EnvelopeError):
    code = "envelope_too_short"
    message = "Invalid body: Body too short. Check encryption method."


class UnsupportedEnvelopeVersion(EnvelopeError):
    code = "envelope_version_unsupported"
    message = "Invalid body: Invalid request envelope format version."


class EnvelopeDecryptionFailed(EnvelopeError):
    code = "envelope_decryption_failed"
    message = "Invalid body: Check encryption key (ClientSecret)."


class StaleTimestamp(EnvelopeError):
    code = "envelope_stale_timestamp"
    message = "Invalid timestamp: Request too old or client time drift."


class InvalidPayload(EnvelopeError):
    code = "envelope_invalid_payload"
    message = "Invalid payload in body: Data is not valid json string."


class ResponseEnvelopeError(WireError):
    code = "response_envelope_invalid"
    message = "Invalid response envelope"


class IdentityInputError(WireError):
    code = "identity_input_invalid"
    message = "Invalid Identifier"


class MissingIdentity(IdentityInputError):
    code = "identity_missing"
    message = (
        "Required Parameter Missing: exactly one of [email, email_hash, phone, phone_hash] "
        "must be specified"
    )


class InvalidIdentifier(IdentityInputError):
    code = "identity_invalid"
    message = "Invalid Identifier"


class TokenError(WireError):
    code = "token_invalid"
    message = "Invalid token"


class MalformedToken(TokenError):
    code = "token_malformed"
    message = "Invalid token"


class UnsupportedTokenVersion(TokenError):
    code = "token_version_unsupported"
    message = "Invalid token version"


class UnknownTokenKey(TokenError):
    code = "token_key_unknown"
    message = "Token was encrypted with an unknown key"


class TokenDecryptionFailed(TokenError):
    code = "token_decryption_failed"
    message = "Token did not decrypt"


class IdentityMismatch(TokenError):
    code = "token_identity_mismatch"
    message = "Token identity type does not match its raw UID"


class RefreshEnvelopeError(WireError):
    code = "refresh_envelope_invalid"
    message = "Invalid refresh token"


class RefreshNotBase64(RefreshEnvelopeError):
    code = "refresh_not_base64"
    message = "Invalid body: Body is not valid base64."


class RefreshKeyUnknown(RefreshEnvelopeError):
    code = "refresh_key_unknown"
    message = "Invalid key: Generator of this token does not exist."


class RefreshDecryptionFailed(RefreshEnvelopeError):
    code = "refresh_decryption_failed"
    message = "Invalid data: Check encryption method and encryption key."


class RefreshPayloadInvalid(RefreshEnvelopeError):
    code = "refresh_payload_invalid"
    message = "Invalid format: Payload is not valid json or missing required data."


class CstgError(WireError):
    """A client-side token generate request refused; the message is the reference's text.

    The subclass decides the response: ``CstgClientError`` 400 ``client_error``,
    ``CstgKeypairDisabled`` 401 ``unauthorized``, ``CstgInvalidOrigin`` 403 ``invalid_http_origin``,
    ``CstgInvalidAppName`` 403 ``invalid_app_name`` (``status`` holds the JSON status string).
    """

    code = "cstg_invalid"
    message = "client side token generate request refused"
    status: ClassVar[str] = "client_error"


class CstgClientError(CstgError):
    code = "cstg_client_error"


class CstgJsonInvalid(CstgClientError):
    code = "cstg_json_invalid"
    message = "json payload is not valid"


class CstgJsonMissing(CstgClientError):
    code = "cstg_json_missing"
    message = "json payload expected but not found"


class CstgBadSubscription(CstgClientError):
    code = "cstg_bad_subscription"
    message = "bad subscription_id"


class CstgMissingParameters(CstgClientError):
    code = "cstg_missing_parameters"
    message = "required parameters: payload, iv, public_key"


class CstgBadPublicKey(CstgClientError):
    code = "cstg_bad_public_key"
    message = "bad public key"


class CstgBadIv(CstgClientError):
    code = "cstg_bad_iv"
    message = "bad iv"


class CstgDecryptionFailed(CstgClientError):
    code = "cstg_decryption_failed"
    message = "payload decryption failed"


class CstgStaleTimestamp(CstgClientError):
    code = "cstg_stale_timestamp"
    message = "invalid timestamp: request too old or client clock drift"


class CstgPayloadJsonInvalid(CstgClientError):
    code = "cstg_payload_json_invalid"
    message = "encrypted payload contains invalid json"


class CstgPhoneNotSupported(CstgClientError):
    code = "cstg_phone_not_supported"
    message = "phone support not enabled"


class CstgIdentityMissing(CstgClientError):
    code = "cstg_identity_missing"
    message = "please provide exactly one of: email_hash, phone_hash"


class CstgInvalidIdentifier(CstgClientError):
    code = "cstg_invalid_identifier"
    message = "Invalid Identifier"


class CstgKeypairDisabled(CstgError):
    code = "cstg_keypair_disabled"
    message = "Unauthorized"
    status = "unauthorized"


class CstgInvalidOrigin(CstgError):
    code = "cstg_invalid_origin"
    message = "unexpected http origin"
    status = "invalid_http_origin"


class CstgInvalidAppName(CstgError):
    code = "cstg_invalid_app_name"
    message = "unexpected app name"
    status = "invalid_app_name"


class InvalidConsentString(WireError):
    """A ``tcf_consent_string`` that is not a well-formed TCF v2 TC string (``wire.tcf``).

    The client sees only the protocol's fixed text (``message``); the instance's ``detail`` says
    precisely what was wrong (which field, which bit), for tests and diagnostics, and the web
    edge's table sends the fixed text rather than that detail.
    """

    code = "tcf_consent_invalid"
    message = "User consent is invalid"


# ----------------------------------------------------------------------------------- keys/salts


class KeySelectionError(UID2Error):
    code = "key_selection_error"
    message = "No suitable key"


class NoActiveKey(KeySelectionError):
    code = "no_active_key"
    message = "No active encryption key available"


class SaltError(UID2Error):
    code = "salt_error"
    message = "Salt data cannot serve this identity"


# ------------------------------------------------------------------------------------ storage


class StoreError(UID2Error):
    """The database failed or refused an operation (missing records raise NotFound instead)."""

    code = "store_error"
    message = "The store failed"


class StoreUnavailable(StoreError):
    code = "store_unavailable"
    message = "The store is unavailable"


class StoreAccessRefused(StoreUnavailable):
    """The database answers but refuses the role a table it needs (a revoked grant, a role set
    up for another schema): unavailable to every use as an outage is, with the same code, but
    the store is reachable (the health check says the reload fails, not that it is down)."""

    public_cause = "database access refused"


class SchemaOutOfDate(StoreError):
    code = "store_schema_out_of_date"
    message = (
        "The database schema is not at this version's head; stop every process of the earlier "
        "version on it, then run `uid2-operator db upgrade`"
    )


class AuditChainAhead(StoreError):
    """The audit chain goes on past the head the store recorded: a process that appends without
    moving the head (an earlier version of uid2-operator) writes to the same database. Appending
    is refused rather than forking the chain; the message holds seqs only, no secret."""

    code = "audit_chain_ahead"
    message = (
        "Audit rows exist past the recorded head; a process of an earlier version may be writing "
        "to this database; stop it, then run `uid2-operator audit verify`, and `uid2-operator "
        "audit adopt --through <seq>` to keep its rows"
    )


class AuditRowUnreadable(StoreError):
    """An audit row that does not read back as an event (its ``before`` or ``after`` not JSON,
    an outcome no version writes): it was changed outside uid2-operator. The message names the
    seq and the field, never the row's content; ``audit verify`` reports the break."""

    code = "audit_row_unreadable"
    message = "An audit row cannot be read"

    def __init__(self, seq: int | None, problem: str) -> None:
        # None: the seq itself is what does not read back (SQLite keeps any type it is given).
        event = "An audit event" if seq is None else f"Audit event seq {seq}"
        super().__init__(
            f"{event} cannot be read ({problem}): it was changed outside "
            "uid2-operator; `uid2-operator audit verify` reports where the chain breaks"
        )
        self.seq = seq
        self.problem = problem


class AuditHeadUnreadable(StoreError):
    """The audit chain head the store recorded is not what uid2-operator writes (text, a
    fraction, a number past 64 bits, where SQLite's untyped column takes them): it was changed
    outside uid2-operator. Audited writes are refused, since the next event would build on it;
    ``audit verify`` reports it. The message never repeats the value."""

    code = "audit_head_unreadable"
    message = (
        "The recorded audit chain head cannot be read: it was changed outside uid2-operator; "
        "`uid2-operator audit verify` reports it"
    )


class AuditHeadMissing(StoreError):
    """No audit chain head is recorded, yet the chain's rows verify: the head was removed outside
    uid2-operator (every append records it, and ``db upgrade`` records that of an intact chain an
    earlier version wrote). Audited writes are refused: the next event would record a new head
    over the cut, and ``audit verify`` would no longer see it. The message holds seqs only."""

    code = "audit_head_missing"
    message = (
        "No audit chain head is recorded, yet the chain verifies: it was removed outside "
        "uid2-operator; run `uid2-operator audit verify`, then `uid2-operator db upgrade`"
    )


class UnsupportedDatabaseUrl(StoreError):
    code = "store_url_unsupported"
    message = "Unsupported database URL"


# ------------------------------------------------------------------------------------ requests


class RequestError(UID2Error):
    """An HTTP request refused for its form (body, media type, method), before any rule runs."""

    code = "request_invalid"
    message = "The request cannot be processed as sent"


class MalformedBody(RequestError):
    code = "malformed_body"
    message = "The request body must be a JSON object"


class InvalidContentLength(RequestError):
    code = "invalid_content_length"
    message = "The Content-Length header is not a valid size"


class BodyTooLarge(RequestError):
    code = "body_too_large"
    message = "The request body is too large"


class UnsupportedMediaType(RequestError):
    code = "unsupported_media_type"
    message = "The request body must be sent as application/json"


class MethodNotAllowed(RequestError):
    code = "method_not_allowed"
    message = "This method is not allowed on this path"


# ----------------------------------------------------------------------------------- operator


class OperatorError(UID2Error):
    """An operator API request refused by one of the protocol's rules (operator-api §6)."""

    code = "operator_error"
    message = "request body contains invalid argument(s)"


class ReplayedRequest(OperatorError):
    code = "request_replayed"
    message = "Invalid nonce: Request already received."


class InvalidRequest(OperatorError):
    code = "invalid_request"
    message = "request body contains invalid argument(s)"


class InvalidTokenPresented(OperatorError):
    code = "invalid_token"
    message = "Invalid Token presented"


class ExpiredTokenPresented(OperatorError):
    code = "expired_token"
    message = "Expired Token presented"


class RefreshFailed(OperatorError):
    code = "refresh_failed"
    message = "Error refreshing token"


class InvalidClientSite(OperatorError):
    code = "invalid_client_site"
    message = "Unexpected client site id"


class NotServing(UID2Error):
    """An operator worker refusing API requests: it has loaded no snapshot yet, or the one it
    holds is older than the age bound (its health check says which)."""

    code = "not_serving"
    message = "This worker serves no snapshot"


# ------------------------------------------------------------------------------------- domain


class DomainError(UID2Error):
    """A control-plane rule (participants, credentials, keyring, audit) refused the request."""

    code = "domain_error"
    message = "The request breaks a rule"


class NotFound(DomainError):
    code = "not_found"
    message = "Not found"


class AlreadyExists(DomainError):
    code = "already_exists"
    message = "Already exists"


class InvalidInput(DomainError):
    code = "invalid_input"
    message = "Invalid input"


class InvalidTransition(DomainError):
    code = "invalid_transition"
    message = "This change is not allowed in the current state"


class PermissionDenied(DomainError):
    code = "permission_denied"
    message = "Permission denied"


class AuditChainBroken(DomainError):
    """Audit rows past the recorded head were to be adopted, and one of them does not link to the
    one before it (edited, rewritten, missing or inserted): adopting them would record a head over
    a break. The message names the first broken seq and why, never a row's content."""

    code = "audit_chain_broken"
    message = "The audit rows past the recorded head do not link; nothing was adopted"


class CredentialError(DomainError):
    """A presented credential was refused. Messages never echo the presented text."""

    code = "credential_invalid"
    message = "Invalid credential"


class MalformedCredential(CredentialError):
    code = "credential_malformed"
    message = "The credential is malformed"


class WrongEnvironment(CredentialError):
    code = "credential_wrong_environment"
    message = "The credential belongs to another environment"


class CredentialRejected(CredentialError):
    code = "credential_rejected"
    message = "The credential is not valid"


class CredentialMissing(CredentialError):
    code = "credential_missing"
    message = "A credential is required"


class KeyringError(DomainError):
    code = "keyring_invalid"
    message = "The keyring is invalid"


class KekCheckMismatch(KeyringError):
    """The keyring holds another key under a version number the store records a check value for
    (``domain.sealing.compare_kek_check_values``): another instance's keyring file, or an old
    backup, in place of this one. The message names version numbers and the remedy only, never a
    key byte or check value, so the admin API sends it."""

    # The code stays ``keyring_invalid`` (inherited), as before this refusal had a class of its
    # own: automation matches on it.


class KekVersionMissing(KeyringError):
    """The keyring holds no key-encryption key of ``version`` (an item sealed under it, or the
    version named active). The version number is the one part of the refusal that may be shown
    publicly (the health check names it)."""

    # The code stays ``keyring_invalid`` (inherited), as before this refusal had a class of its
    # own: automation matches on it.
    message = "The keyring lacks a key-encryption key version"

    def __init__(self, version: int, message: str | None = None) -> None:
        self.version = version
        super().__init__(message or f"The keyring has no key-encryption key version {version}")


class KeyringMissing(KeyringError):
    code = "keyring_missing"
    message = "No keyring is configured"


class PlaceholderKeyring(KeyringError):
    code = "keyring_placeholder"
    message = "A development or placeholder keyring cannot be used in prod"


class SealedSecretUnreadable(KeyringError):
    code = "sealed_secret_unreadable"
    message = "A sealed client secret does not open with this keyring"
