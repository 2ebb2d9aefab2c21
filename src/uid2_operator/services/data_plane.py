"""The operator's endpoints as functions of a snapshot, an opened request and the time.

Each function takes the ``Snapshot`` the request started with, the caller (already authenticated
and authorised for the endpoint), the decrypted JSON payload (``None`` when the envelope carried
none) and ``now_ms``, and returns a ``Reply`` (what goes into the sealed 200 response; a
``StreamedReply`` for an answer written in pieces) or raises a ``UID2Error`` that the web edge's
one error table turns into a status and body. Nothing here reads the clock, the network or the
database, so every outcome is reproducible in a test.

Messages, statuses and field types follow the reference operator (operator-api §6, sdk-compat §2,
§6); the deliberate differences are documented where they occur. The one other effect is a
rate-limited WARNING when a client-side request's ``subscription_id`` is an API key
(``ExposedKeyLog``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final, cast

from uid2_operator.domain.credentials import ApiKey, verify_api_key
from uid2_operator.domain.key_format import BRANDS, CredentialKind
from uid2_operator.domain.keysets import Keyset
from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.domain.origins import RegistrableDomain, check_origin_or_app
from uid2_operator.domain.roles import ClientRole
from uid2_operator.domain.salts import SaltTable
from uid2_operator.errors import (
    CstgBadSubscription,
    CstgJsonInvalid,
    CstgKeypairDisabled,
    ExpiredTokenPresented,
    IdentityInputError,
    InvalidClientSite,
    InvalidConsentString,
    InvalidIdentifier,
    InvalidRequest,
    InvalidTokenPresented,
    MissingIdentity,
    NoActiveKey,
    RefreshFailed,
    TokenError,
    UID2Error,
)
from uid2_operator.services.log_throttle import LogThrottle
from uid2_operator.services.snapshot import (
    ALLOW_CLOCK_SKEW_SECONDS,
    OLDEST_REFRESHABLE_ESTABLISHED_MS,
    OPTOUT_STATUS_MAX_REQUEST_SIZE,
    TOKEN_LIFETIME_TOLERANCE_SECONDS,
    Caller,
    Snapshot,
)
from uid2_operator.wire.aead import RandomBytes
from uid2_operator.wire.cstg import DEFAULT_CSTG_TIMESTAMP_WINDOW
from uid2_operator.wire.cstg import open_request as open_cstg_request
from uid2_operator.wire.cstg import parse_request as parse_cstg_request
from uid2_operator.wire.cstg import seal_response as seal_cstg_response
from uid2_operator.wire.encoding import b64encode, dumps, json_string, json_utf8
from uid2_operator.wire.envelope import TimestampWindow
from uid2_operator.wire.identity import (
    InputKind,
    identity_from_request,
    input_kinds,
    scalar_text,
)
from uid2_operator.wire.keys import (
    CLIENT_GENERATED_PRIVACY_BITS,
    MASTER_KEYSET_ID,
    MASTER_KEYSET_ID_IN_KEY_JSON,
    MAX_RESERVED_SITE_ID,
    REFRESH_KEYSET_ID,
    SERVER_GENERATED_PRIVACY_BITS,
    EncryptionKey,
)
from uid2_operator.wire.raw_uid import (
    SaltBucket,
    bucket_id,
    current_raw_uid,
    previous_raw_uid,
    raw_uid_v2,
    raw_uid_v3,
    refresh_from_seconds,
)
from uid2_operator.wire.refresh import (
    ENVELOPE_LENGTH,
    IdentityResponseBody,
    issue_identity,
    success_identity_json,
    unwrap_refresh_envelope,
)
from uid2_operator.wire.scope import IdentityScope, IdentityType
from uid2_operator.wire.tcf import DEFAULT_VENDOR_ID, parse_tc_string
from uid2_operator.wire.tokens import decode_advertising_token, decode_refresh_token

JsonObject = dict[str, Any]
OptOutSink = Callable[[OptOutRecord], None]
"""Where ``/v2/token/logout`` records an opt-out (the opt-out store; in memory for now)."""

MISSING_ANY_IDENTITY: Final = (
    "Required Parameter Missing: one or more of [email, email_hash, phone, phone_hash] "
    "must be specified"
)
INCORRECT_FORMAT: Final = "Incorrect request format"
INVALID_IDENTIFIER: Final = "invalid identifier"
OPTOUT: Final = "optout"
INSUFFICIENT_USER_CONSENT: Final = "insufficient_user_consent"
TCF_CONSENT_STRING: Final = "tcf_consent_string"
_EUID: Final = IdentityScope.EUID
"""Held here: reading an enum member through its class costs more than the comparison itself."""
_ISO_LOCAL = re.compile(
    r"(?:([+-])(\d{4,10})|(\d{4}))-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{0,9}))?)?",
    re.ASCII,
)
"""Java's ``ISO_LOCAL_DATE_TIME``, which the reference parses ``since_timestamp`` with: a year of
four digits, or signed (``+`` for five digits or more, ``-`` for four or more); ``T`` in either
case; seconds optional, and after them a fraction of up to nine digits, the point alone allowed."""
_MAX_YEAR: Final = 999_999_999
_DAY_MS: Final = 86_400_000
EXPOSED_KEY_LOG_INTERVAL_MS: Final = 60_000
EXPOSED_KEY_LOG_MAX_ENTRIES: Final = 10_000
_API_KEY_PREFIXES: Final = tuple(f"{brand}-{CredentialKind.CLIENT.value}-" for brand in BRANDS)
"""How every API key's text begins: a ``subscription_id`` that does not is not looked at."""

BUCKETS_PER_PIECE: Final = 4096
"""Buckets per piece of a ``buckets`` answer: about 290 KB of JSON, a few milliseconds of work."""
_BUCKETS_HEAD: Final = '{"status":"success","body":['
MAP_ITEMS_PER_PIECE: Final = 1000
"""Inputs per piece of an identity map answer: about 10-20 ms of derivation on a slow core, so
that one map of a whole 1 MiB body (some 60,000 e-mails) leaves the worker's other connections
answered between its pieces instead of waiting for all of it."""
_MAP_V2_HEAD: Final = b'{"status":"success","body":{"mapped":['
_MAP_V2_EMPTY: Final = _MAP_V2_HEAD + b"]}}"
_MAP_V3_HEAD: Final = b'{"status":"success","body":{'
_MAP_V3_FIELDS: Final = {
    kind: json_utf8(json_string(kind.value)) + b":" for kind in input_kinds(phone_support=True)
}
_UNUSABLE_V3_ENTRY: Final = {"e": INVALID_IDENTIFIER}
_STAMPS_KEPT: Final = 1024
"""Distinct ``last_updated`` texts a ``buckets`` answer remembers (a table holds one for its
creation and one per rotation's midnight)."""

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Reply:
    """A 200 outcome: ``{"status": status}`` plus ``body`` when the status is success.

    ``rendered``, when set, is ``to_json()`` computed ahead (``Reply.identity``, and constant
    replies): the answers of generate and refresh are formatted without the JSON encoder.
    ``body`` holds tokens, raw UIDs and the identities they answer for: the repr leaves it out.
    """

    status: str
    body: Any = field(default=None, repr=False)
    rendered: bytes | None = field(default=None, repr=False, compare=False)

    @classmethod
    def identity(cls, body: IdentityResponseBody) -> Reply:
        """The success answer of generate and refresh, its JSON rendered by the wire layer."""
        return cls("success", body, success_identity_json(body))

    def to_mapping(self) -> JsonObject:
        if self.status == "success":
            return {"status": "success", "body": self.body}
        return {"status": self.status}

    def to_json(self) -> bytes:
        rendered = self.rendered
        if rendered is not None:
            return rendered
        return dumps(self.to_mapping())


@dataclass(frozen=True, slots=True)
class StreamedReply:
    """A 200 success whose JSON is written in pieces, for an answer too large to hold at once.

    ``pieces()`` makes the pieces afresh on each call, at least one, reading the snapshot as it
    goes; joined they are the JSON the equivalent ``Reply("success", body).to_json()`` gives.
    The web edge seals and sends them as they come (as one answer when there is one piece).
    Everything that can refuse the request is checked before the reply is made.
    """

    pieces: Callable[[], Iterator[bytes]] = field(repr=False)


@dataclass(frozen=True, slots=True)
class RefreshReply:
    """A refresh outcome and the key to encrypt it with (``None``: a legacy, plain answer)."""

    reply: Reply
    response_key: bytes | None = field(repr=False)


SUCCESS_OPTOUT: Final = Reply(OPTOUT, rendered=dumps({"status": OPTOUT}))
NO_USER_CONSENT: Final = Reply(
    INSUFFICIENT_USER_CONSENT, rendered=dumps({"status": INSUFFICIENT_USER_CONSENT})
)


# ----------------------------------------------------------------------------------- identity


def _flh(snapshot: Snapshot, digest: bytes) -> bytes:
    return snapshot.salts.first_level_hash(digest)


def _bucket(snapshot: Snapshot, flh: bytes, now_ms: int) -> SaltBucket:
    """``flh``'s bucket as it is at ``now_ms`` (a rotation takes effect at its midnight)."""
    return snapshot.salts.bucket(snapshot.salts.index_of(flh), now_ms)


def _current_uid(snapshot: Snapshot, bucket: SaltBucket, flh: bytes, kind: IdentityType) -> bytes:
    ident = snapshot.identity
    return current_raw_uid(
        bucket,
        flh,
        scope=ident.scope,
        kind=kind,
        environment=ident.identity_environment,
        identity_v3=ident.identity_v3,
    )


def _current_uid_of(snapshot: Snapshot, flh: bytes, kind: IdentityType, now_ms: int) -> bytes:
    """``_current_uid`` of ``flh``'s bucket at ``now_ms``, reading only the salt in effect then.

    Token issuance, validate and logout need nothing else of the bucket, so no ``SaltBucket``
    is made (and no previous salt decoded).
    """
    salts = snapshot.salts
    salt = salts.salt(salts.index_of(flh), now_ms)
    ident = snapshot.identity
    if ident.identity_v3:
        return raw_uid_v3(flh, salt, ident.scope, kind)
    return raw_uid_v2(flh, salt)


def _issue(
    snapshot: Snapshot,
    *,
    now_ms: int,
    kind: IdentityType,
    flh: bytes,
    site_id: int,
    privacy_bits: int,
    established_ms: int,
    random: RandomBytes,
) -> IdentityResponseBody:
    """Token generation (operator-api §5.9) for an identity already checked against opt-outs."""
    master = snapshot.master_key(now_ms)
    site = snapshot.site_key(site_id, now_ms)
    refresh = snapshot.refresh_key(now_ms)
    raw_uid = _current_uid_of(snapshot, flh, kind, now_ms)
    life = snapshot.lifetimes
    return issue_identity(
        now_ms=now_ms,
        identity_lifetime_s=life.identity_token_s,
        refresh_lifetime_s=life.refresh_token_s,
        refresh_after_s=life.refresh_identity_after_s,
        master_key=master,
        site_key=site,
        refresh_key=refresh,
        site_id=site_id,
        privacy_bits=privacy_bits,
        established_ms=established_ms,
        raw_uid=raw_uid,
        first_level_hash=flh,
        scope=snapshot.identity.scope,
        identity_type=kind,
        random=random,
        draw_once=True,
    )


# ----------------------------------------------------------------------------------- tokens


def generate(
    snapshot: Snapshot,
    caller: Caller,
    payload: JsonObject | None,
    now_ms: int,
    random: RandomBytes,
    *,
    tcf_vendor_id: int = DEFAULT_VENDOR_ID,
) -> Reply:
    """``/v2/token/generate``. Legacy ``policy`` / ``optout_check`` fields are ignored.

    In the EUID scope, when the request carries the key ``tcf_consent_string`` (operator-api
    §6.1), the identity checks are followed by the user-consent check: a TC string that does not
    grant ``tcf_vendor_id`` the EUID purposes is answered ``insufficient_user_consent`` and
    nothing is looked up or issued; a value that is not a readable TC string (``null``, ``""``,
    a non-string) is ``InvalidConsentString``. It comes before the opt-out check, so neither
    answer says whether the identity opted out. Without the key there is no consent check, as in
    the upstream operator: the request goes on to the opt-out check and issue, the publisher
    answering for consent. The UID2 scope never reads the field, even a malformed one, and pays
    one comparison for it.
    """
    payload = payload or {}
    identity = identity_from_request(payload, phone_support=snapshot.identity.phone_support)
    if (
        snapshot.identity.scope is _EUID
        and TCF_CONSENT_STRING in payload
        and not _user_consents(payload[TCF_CONSENT_STRING], tcf_vendor_id)
    ):
        return NO_USER_CONSENT
    flh = _flh(snapshot, identity.digest)
    if snapshot.optouts.opted_out(identity.kind, flh):
        return SUCCESS_OPTOUT
    body = _issue(
        snapshot,
        now_ms=now_ms,
        kind=identity.kind,
        flh=flh,
        site_id=caller.site_id,
        privacy_bits=SERVER_GENERATED_PRIVACY_BITS,
        established_ms=now_ms,
        random=random,
    )
    return Reply.identity(body)


def _user_consents(consent: object, vendor_id: int) -> bool:
    """Whether the ``tcf_consent_string`` value of an EUID generate request that carries one
    lets ``vendor_id`` issue.

    Anything but a parsable TC string (``null``, ``""``, a non-string value, malformed text) is
    ``InvalidConsentString`` (400 ``User consent is invalid``); for a value that is not a string
    the detail names its type, never the value.
    """
    if consent is None:
        raise InvalidConsentString(f"{TCF_CONSENT_STRING} is null")
    if not isinstance(consent, str):
        raise InvalidConsentString(f"{TCF_CONSENT_STRING} is a {type(consent).__name__}")
    return parse_tc_string(consent).grants_euid(vendor_id)


def refresh(
    snapshot: Snapshot,
    body: bytes,
    *,
    authenticated: bool,
    now_ms: int,
    random: RandomBytes,
) -> RefreshReply:
    """``/v2/token/refresh``: a 388-character envelope, or (legacy) a bare inner refresh token.

    Both the envelope and the inner token must be sealed with a refresh key (keyset -2); the
    reference accepts any key id, which would let a holder of a shared site key forge refresh
    tokens. Failures of the inner token are ``invalid_token`` / ``expired_token`` for a caller
    that sent a valid API key and a bare ``error`` for anyone else, as in the reference; so is a
    refresh that finds no active key to issue with (the server's 500 only for the former).

    A token whose site is a participant the snapshot holds as disabled is answered as an invalid
    one (the reference refreshes it): disabling a participant stops its users' identities from
    being refreshed as well as its keys. A site the snapshot does not know as a participant
    (reserved ids among them) is refreshed as before.
    """
    lookup = snapshot.lookup_in(REFRESH_KEYSET_ID)
    invalid: UID2Error = InvalidTokenPresented() if authenticated else RefreshFailed()
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise invalid from None
    response_key: bytes | None = None
    inner = text
    if len(text) == ENVELOPE_LENGTH:
        response_key, inner = unwrap_refresh_envelope(text, lookup)
    try:
        token = decode_refresh_token(inner, key_lookup=lookup)
    except TokenError:
        raise invalid from None
    if token.scope is not snapshot.identity.scope:
        raise invalid
    site = snapshot.sites.get(token.site_id)
    if site is not None and not site.enabled:
        raise invalid
    if token.established_ms < OLDEST_REFRESHABLE_ESTABLISHED_MS:
        return RefreshReply(SUCCESS_OPTOUT, response_key)
    if token.expires_ms < now_ms:
        raise ExpiredTokenPresented() if authenticated else RefreshFailed()
    flh = token.first_level_hash
    if snapshot.optouts.opted_out_at_refresh(token.identity_type, flh):
        return RefreshReply(SUCCESS_OPTOUT, response_key)
    try:
        issued = _issue(
            snapshot,
            now_ms=now_ms,
            kind=token.identity_type,
            flh=flh,
            site_id=token.site_id,
            privacy_bits=token.privacy_bits,
            established_ms=token.established_ms,
            random=random,
        )
    except NoActiveKey:
        if authenticated:
            raise
        raise RefreshFailed() from None  # as every other failure is answered to this caller
    return RefreshReply(Reply.identity(issued), response_key)


def validate(snapshot: Snapshot, caller: Caller, payload: JsonObject | None, now_ms: int) -> Reply:
    """``/v2/token/validate``: does the token carry this identity's current raw UID?

    Only tokens whose site key belongs to one of the caller's own keysets may be checked.
    """
    payload = payload or {}
    identity = identity_from_request(payload, phone_support=snapshot.identity.phone_support)
    text = payload.get("token")
    if not isinstance(text, str):
        raise InvalidRequest("Invalid token")
    try:
        token = decode_advertising_token(
            text,
            master_key=snapshot.lookup_in(MASTER_KEYSET_ID),
            site_key=snapshot.site_key_lookup,
        )
    except TokenError:
        raise InvalidRequest("Invalid token") from None
    site_key = snapshot.keys_by_id[token.site_key_id]
    keyset = snapshot.keysets.get(site_key.keyset_id)
    if keyset is None or keyset.site_id != caller.site_id:
        raise InvalidRequest("Unauthorised to validate token")
    flh = _flh(snapshot, identity.digest)
    expected = _current_uid_of(snapshot, flh, identity.kind, now_ms)
    return Reply("success", expected == token.raw_uid)


def logout(
    snapshot: Snapshot,
    caller: Caller,
    payload: JsonObject | None,
    now_ms: int,
    record: OptOutSink,
) -> Reply:
    """``/v2/token/logout`` (OPTOUT role): record an opt-out for the identity.

    Bad input is answered ``invalid_token`` as in the reference, but without echoing the input:
    it is personal data and would end up in logs.
    """
    try:
        identity = identity_from_request(
            payload or {}, phone_support=snapshot.identity.phone_support
        )
    except IdentityInputError:
        raise InvalidTokenPresented from None
    flh = _flh(snapshot, identity.digest)
    raw_uid = _current_uid_of(snapshot, flh, identity.kind, now_ms)
    record(OptOutRecord(flh, now_ms, b64encode(raw_uid)))
    return Reply("success", {"optout": "OK"})


# ----------------------------------------------------------------------------------- maps


def _map_one(
    snapshot: Snapshot, kind: InputKind, value: str, now_ms: int
) -> tuple[bytes, SaltBucket, IdentityType] | str:
    """``(flh, bucket, type)`` for a mappable identity, else the unmapped reason."""
    try:
        digest = kind.digest(value)
    except InvalidIdentifier:
        return INVALID_IDENTIFIER
    flh = _flh(snapshot, digest)
    identity_type = kind.identity_type
    if snapshot.optouts.opted_out(identity_type, flh):
        return OPTOUT
    return flh, _bucket(snapshot, flh, now_ms), identity_type


def map_v2(snapshot: Snapshot, payload: JsonObject | None, now_ms: int) -> StreamedReply:
    """``/v2/identity/map`` (deprecated): exactly one non-empty array of one input kind.

    The fields are read in the reference operator's order (email, email_hash, phone, phone_hash),
    and reading stops at a second non-empty array, so what is refused, and with which message,
    is what the reference refuses. A ``null`` element of ``phone`` is unmapped as an invalid
    identifier, as the reference answers it; in the other arrays (where the reference fails
    with 500) a ``null`` element, like an array or object element, is refused with 400.

    The whole request is checked here; the answer is made in pieces (``_map_v2_pieces``).
    """
    payload = payload or {}
    given = False  # an array was sent, empty or not
    chosen: tuple[InputKind, list[Any]] | None = None  # the non-empty one
    for kind in input_kinds(phone_support=snapshot.identity.phone_support):
        value = payload.get(kind.value)
        if value is None:
            continue
        if not isinstance(value, list):
            raise InvalidRequest(f"{kind.value} must be an array")
        given = True
        if value:
            if chosen is not None:
                raise MissingIdentity
            chosen = (kind, value)
    if not given:
        raise MissingIdentity
    if chosen is None:
        return StreamedReply(partial(iter, (_MAP_V2_EMPTY,)))
    kind, values = chosen
    texts: list[str | None] = []
    for value in values:
        text = scalar_text(value)
        if text is None and not (value is None and kind is InputKind.PHONE):
            raise InvalidRequest
        texts.append(text)
    return StreamedReply(partial(_map_v2_pieces, snapshot, kind, texts, now_ms))


def _map_v2_pieces(
    snapshot: Snapshot, kind: InputKind, texts: list[str | None], now_ms: int
) -> Iterator[bytes]:
    """The JSON of a ``/v2/identity/map`` answer, a piece per ``MAP_ITEMS_PER_PIECE`` inputs
    (one piece up to that many): ``mapped`` as it is derived, then ``unmapped`` (invalid or
    opted-out inputs, which cost no derivation) at the end, when there are any."""
    salts = snapshot.salts
    parts = [_MAP_V2_HEAD]
    unmapped: list[JsonObject] = []
    separator = b""
    for start in range(0, len(texts), MAP_ITEMS_PER_PIECE):
        if start:
            yield b"".join(parts)
            parts = []
        mapped: list[JsonObject] = []
        for text in texts[start : start + MAP_ITEMS_PER_PIECE]:
            outcome = INVALID_IDENTIFIER if text is None else _map_one(snapshot, kind, text, now_ms)
            if isinstance(outcome, str):
                unmapped.append({"identifier": text, "reason": outcome})
                continue
            flh, bucket, identity_type = outcome
            mapped.append(
                {
                    "identifier": text,
                    "advertising_id": b64encode(_current_uid(snapshot, bucket, flh, identity_type)),
                    "bucket_id": bucket_id(
                        bucket.index, id_prefix=salts.id_prefix, id_secret=salts.id_secret
                    ),
                }
            )
        if mapped:
            parts += (separator, dumps(mapped)[1:-1])
            separator = b","
    parts.append(b"]")
    if unmapped:
        parts += (b',"unmapped":', dumps(unmapped))
    parts.append(b"}}")
    yield b"".join(parts)


def map_v3(snapshot: Snapshot, payload: JsonObject | None, now_ms: int) -> StreamedReply:
    """``/v3/identity/map``: any of the four arrays, strictly typed; output aligned with input.

    Unknown fields, non-array values and ``null`` or container elements are refused with
    ``Incorrect request format``; other scalars are read as text (and then fail as invalid).
    The whole request is checked here; the answer is made in pieces (``_map_v3_pieces``).
    """
    if not payload:
        raise InvalidRequest(MISSING_ANY_IDENTITY)
    kinds = {kind.value: kind for kind in input_kinds(phone_support=True)}
    if any(name not in kinds for name in payload):
        raise InvalidRequest(INCORRECT_FORMAT)
    phone_support = snapshot.identity.phone_support
    columns: list[tuple[InputKind, list[str], bool]] = []
    for name, kind in kinds.items():
        values = payload.get(name)
        if values is None:
            values = []
        if not isinstance(values, list):
            raise InvalidRequest(INCORRECT_FORMAT)
        texts = [scalar_text(v) for v in values]
        if any(t is None for t in texts):
            raise InvalidRequest(INCORRECT_FORMAT)
        usable = phone_support or kind.identity_type is IdentityType.EMAIL
        columns.append((kind, cast("list[str]", texts), usable))  # no None left
    return StreamedReply(partial(_map_v3_pieces, snapshot, columns, now_ms))


def _map_v3_pieces(
    snapshot: Snapshot, columns: list[tuple[InputKind, list[str], bool]], now_ms: int
) -> Iterator[bytes]:
    """The JSON of a ``/v3/identity/map`` answer, the four arrays in order, a piece per
    ``MAP_ITEMS_PER_PIECE`` inputs across them (one piece up to that many)."""
    parts = [_MAP_V3_HEAD]
    held = 0
    for column, (kind, texts, usable) in enumerate(columns):
        parts += (b"," if column else b"", _MAP_V3_FIELDS[kind], b"[")
        separator = b""
        start = 0
        while start < len(texts):
            if held == MAP_ITEMS_PER_PIECE:
                yield b"".join(parts)
                parts = []
                held = 0
            stop = start + MAP_ITEMS_PER_PIECE - held
            run = texts[start:stop]
            if usable:
                entries = [_map_v3_entry(snapshot, kind, text, now_ms) for text in run]
            else:
                entries = [_UNUSABLE_V3_ENTRY] * len(run)
            parts += (separator, dumps(entries)[1:-1])
            separator = b","
            held += len(run)
            start = stop
        parts.append(b"]")
    parts.append(b"}}")
    yield b"".join(parts)


def _map_v3_entry(snapshot: Snapshot, kind: InputKind, value: str, now_ms: int) -> JsonObject:
    outcome = _map_one(snapshot, kind, value, now_ms)
    if isinstance(outcome, str):
        return {"e": outcome}
    flh, bucket, identity_type = outcome
    ident = snapshot.identity
    previous = previous_raw_uid(
        bucket,
        flh,
        now_ms=now_ms,
        scope=ident.scope,
        kind=identity_type,
        environment=ident.identity_environment,
        identity_v3=ident.identity_v3,
    )
    return {
        "u": b64encode(_current_uid(snapshot, bucket, flh, identity_type)),
        "p": None if previous is None else b64encode(previous),
        "r": refresh_from_seconds(bucket, now_ms),
    }


def _parse_local_datetime_ms(text: str) -> int | None:
    """An ISO-8601 local date-time read as UTC, in epoch ms (floored), as the reference reads it
    (``_ISO_LOCAL``; the proleptic Gregorian calendar, years -999,999,999 to 999,999,999), or
    None where the reference refuses it (an impossible date or time, ``-0000``)."""
    match = _ISO_LOCAL.fullmatch(text)
    if match is None:
        return None
    sign, signed_year, plain_year, month, day, hour, minute, second, fraction = match.groups()
    if sign is None:
        year = int(plain_year)
    else:
        year = int(signed_year)
        if (sign == "+" and len(signed_year) == 4) or (sign == "-" and year == 0):
            return None
        year = -year if sign == "-" else year
    if year > _MAX_YEAR or year < -_MAX_YEAR:
        return None
    month_n, day_n = int(month), int(day)
    if not 1 <= month_n <= 12 or not 1 <= day_n <= _days_in_month(year, month_n):
        return None
    hour_n, minute_n, second_n = int(hour), int(minute), int(second or 0)
    if hour_n > 23 or minute_n > 59 or second_n > 59:
        return None
    millis = int((fraction or "").ljust(3, "0")[:3])
    seconds = hour_n * 3600 + minute_n * 60 + second_n
    return _days_from_epoch(year, month_n, day_n) * _DAY_MS + seconds * 1000 + millis


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _days_from_epoch(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a proleptic Gregorian date, for any year (``datetime`` stops at
    1 and 9999): the day count of the shifted year that starts in March, by whole 400-year eras."""
    shifted = year - 1 if month <= 2 else year
    era, year_of_era = divmod(shifted, 400)
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146_097 + day_of_era - 719_468


def _format_ms(ms: int) -> str:
    moment = datetime.fromtimestamp(ms // 1000, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}"


def buckets(snapshot: Snapshot, payload: JsonObject | None, now_ms: int) -> StreamedReply:
    """``/v2/identity/buckets``: buckets whose salt changed at or after ``since_timestamp``.

    A change is listed once it has taken effect (a rotation's midnight has come), with the time
    it took effect, never before: until then the bucket's raw UIDs are the ones already mapped.

    The request is checked here; the answer, ``{"status":"success","body":[{"bucket_id":...,
    "last_updated":...}, ...]}``, is written in pieces of ``BUCKETS_PER_PIECE`` buckets as they
    are read. A first sync lists every bucket (2^20 in production), an answer of tens of
    megabytes that is never held whole.
    """
    raw = (payload or {}).get("since_timestamp")
    if raw is None:
        raise InvalidRequest("missing parameter since_timestamp")
    text = scalar_text(raw)
    since = None if text is None else _parse_local_datetime_ms(text)
    if since is None:
        raise InvalidRequest("invalid date, must conform to ISO 8601")
    return StreamedReply(partial(_bucket_pieces, snapshot.salts, since, now_ms))


def _bucket_pieces(salts: SaltTable, since_ms: int, now_ms: int) -> Iterator[bytes]:
    """The JSON of the ``buckets`` answer for ``salts.updated_since(since_ms, now_ms)``, in
    pieces of ``BUCKETS_PER_PIECE`` buckets (one piece when there are none): the bytes
    ``Reply("success", [{"bucket_id": ..., "last_updated": ...}, ...]).to_json()`` gives, split.

    Each distinct ``last_updated`` is formatted once (most buckets share the one of their
    table's creation or of a rotation's midnight); the remembered texts are dropped past
    ``_STAMPS_KEPT``, so a table of all-different times costs a format per bucket, not memory.
    """
    id_prefix, id_secret = salts.id_prefix, salts.id_secret
    stamps: dict[int, str] = {}
    parts = [_BUCKETS_HEAD]
    held = 0
    separator = ""
    for index, updated in salts.updated_since(since_ms, now_ms):
        if held == BUCKETS_PER_PIECE:
            yield json_utf8("".join(parts))
            parts = []
            held = 0
        stamp = stamps.get(updated)
        if stamp is None:
            if len(stamps) >= _STAMPS_KEPT:
                stamps.clear()
            stamp = stamps[updated] = json_string(_format_ms(updated))
        name = json_string(bucket_id(index, id_prefix=id_prefix, id_secret=id_secret))
        parts.append(f'{separator}{{"bucket_id":{name},"last_updated":{stamp}}}')
        separator = ","
        held += 1
    parts.append("]}")
    yield json_utf8("".join(parts))


def optout_status(snapshot: Snapshot, payload: JsonObject | None, now_ms: int) -> Reply:
    """``/v2/optout/status``: which of these raw UIDs are opted out, and since when (ms)."""
    if payload is None:
        raise InvalidRequest("Invalid request body")
    ids = payload.get("advertising_ids")
    if ids is None:
        raise InvalidRequest("Required Parameter Missing: advertising_ids")
    if not isinstance(ids, list):
        raise InvalidRequest
    if len(ids) > OPTOUT_STATUS_MAX_REQUEST_SIZE:
        raise InvalidRequest("Request payload is too large")
    index = snapshot.optouts.by_advertising_id
    opted: list[JsonObject] = []
    for value in ids:
        since = index.get(value) if isinstance(value, str) and value else None
        if since is not None:
            opted.append({"advertising_id": value, "opted_out_since": since // 1000 * 1000})
    return Reply("success", {"opted_out": opted})


# ----------------------------------------------------------------------------------- keys


def _check_caller_site(caller: Caller) -> None:
    if caller.site_id <= MAX_RESERVED_SITE_ID:
        raise InvalidClientSite(f"Unexpected client site id {caller.site_id}")


def _key_json(key: EncryptionKey) -> JsonObject:
    return {
        "id": key.id,
        "created": key.created,
        "activates": key.activates,
        "expires": key.expires,
        "secret": b64encode(key.secret),
    }


def _published(snapshot: Snapshot, caller: Caller) -> list[tuple[EncryptionKey, Keyset]]:
    """Visible keys ordered so that every keyset's keys ascend by activation (SDKs bisect)."""
    keys = snapshot.visible_keys(caller.site_id, caller.roles)
    keys.sort(key=lambda pair: (pair[0].activates, pair[0].id))
    return keys


def key_latest(snapshot: Snapshot, caller: Caller) -> Reply:
    """``/v2/key/latest`` (legacy): every visible key with its owning site, by id."""
    _check_caller_site(caller)
    keys = sorted(snapshot.visible_keys(caller.site_id, caller.roles), key=lambda p: p[0].id)
    return Reply("success", [{**_key_json(k), "site_id": ks.site_id} for k, ks in keys])


def key_sharing(snapshot: Snapshot, caller: Caller) -> Reply:
    """``/v2/key/sharing``: keys plus what an SDK needs to encrypt as the caller."""
    _check_caller_site(caller)
    life = snapshot.lifetimes
    body: JsonObject = {
        "caller_site_id": caller.site_id,
        "master_keyset_id": MASTER_KEYSET_ID_IN_KEY_JSON,
    }
    default = snapshot.default_keysets.get(caller.site_id)
    if default is not None:
        body["default_keyset_id"] = default
    body["token_expiry_seconds"] = str(life.sharing_token_expiry_s)
    if ClientRole.SHARER in caller.roles:
        max_sharing = life.max_sharing_lifetime_s or life.sharing_token_expiry_s
        body["max_sharing_lifetime_seconds"] = max_sharing + TOKEN_LIFETIME_TOLERANCE_SECONDS
    body["identity_scope"] = snapshot.identity.scope.name
    body["allow_clock_skew_seconds"] = ALLOW_CLOCK_SKEW_SECONDS
    keys: list[JsonObject] = []
    published = _published(snapshot, caller)
    for key, keyset in published:
        entry = _key_json(key)
        if keyset.keyset_id == MASTER_KEYSET_ID:
            entry["keyset_id"] = MASTER_KEYSET_ID_IN_KEY_JSON
        elif keyset.site_id == caller.site_id:
            entry["keyset_id"] = keyset.keyset_id
        keys.append(entry)
    body["keys"] = keys
    _add_site_data(snapshot, body, published)
    return Reply("success", body)


def key_bidstream(snapshot: Snapshot, caller: Caller) -> Reply:
    """``/v2/key/bidstream``: keys and the lifetime cap a DSP checks tokens against."""
    _check_caller_site(caller)
    life = snapshot.lifetimes
    max_bidstream = life.max_bidstream_lifetime_s or life.identity_token_s
    published = _published(snapshot, caller)
    body: JsonObject = {
        "max_bidstream_lifetime_seconds": max_bidstream + TOKEN_LIFETIME_TOLERANCE_SECONDS,
        "identity_scope": snapshot.identity.scope.name,
        "allow_clock_skew_seconds": ALLOW_CLOCK_SKEW_SECONDS,
        "keys": [_key_json(key) for key, _ in published],
    }
    _add_site_data(snapshot, body, published)
    return Reply("success", body)


def _add_site_data(
    snapshot: Snapshot, body: JsonObject, published: list[tuple[EncryptionKey, Keyset]]
) -> None:
    """``site_data`` when client-side generation is on (operator-api §6.11): the sites owning
    a published key, ascending, each with its domain names; sites without names are left out.
    A DSP checks the domain a client-side token claims against it."""
    if not snapshot.identity.client_side_generate:
        return
    entries: list[JsonObject] = []
    for site_id in sorted({keyset.site_id for _, keyset in published}):
        site = snapshot.sites.get(site_id)
        if site is not None and site.domain_names:
            entries.append({"id": site_id, "domain_names": sorted(site.domain_names)})
    body["site_data"] = entries


# ----------------------------------------------------------------------------- client-side


class ExposedKeyLog:
    """One WARNING per API key per ``interval_ms`` sent in a client-side request's
    ``subscription_id`` or ``public_key``.

    A client-side request comes from a web page or an app, so an API key found there is exposed
    to anyone who views it, and its holder should rotate it. The line names the key id (public)
    only, never the text. At most ``max_entries`` key ids are remembered; past that, expired ones
    are dropped, and if none has expired, all.
    """

    __slots__ = ("_throttle",)

    def __init__(
        self,
        interval_ms: int = EXPOSED_KEY_LOG_INTERVAL_MS,
        max_entries: int = EXPOSED_KEY_LOG_MAX_ENTRIES,
    ) -> None:
        self._throttle: LogThrottle[str] = LogThrottle(interval_ms, max_entries)

    def exposed(self, key_id: str, now_ms: int, field: str = "subscription_id") -> None:
        if self._throttle.due(key_id, now_ms) is None:
            return
        log.warning(
            "API key sent as a client-side %s: key_id=%s. The key is exposed in a "
            "web page or app; rotate it and stop publishing it.",
            field,
            key_id,
        )


_EXPOSED_KEYS: Final = ExposedKeyLog()
"""The process's log of exposed keys, for callers that bring none."""


def _note_exposed_key(
    snapshot: Snapshot, text: str, now_ms: int, exposed: ExposedKeyLog, field: str
) -> None:
    """Log ``text``, sent as ``field``, if it is one of this snapshot's API keys (its whole text
    verified, so that made-up texts, which anyone can give a valid checksum, never reach the
    log)."""
    if not text.startswith(_API_KEY_PREFIXES):
        return

    def lookup(key_id: str) -> ApiKey | None:
        record = snapshot.client(key_id)
        return None if record is None else record.key

    try:
        key = verify_api_key(
            text,
            environment=snapshot.identity.environment,
            pepper=snapshot.pepper,
            lookup=lookup,
        )
    except UID2Error:
        return
    exposed.exposed(key.key_id, now_ms, field)


def _note_exposed_texts(
    snapshot: Snapshot, body: bytes, now_ms: int, exposed: ExposedKeyLog
) -> None:
    """``_note_exposed_key`` for the ``public_key`` and ``subscription_id`` texts of a body the
    request parser refused (another field of the wrong type), read leniently: anything that is
    not a JSON object holding them as text is passed over."""
    try:
        fields = json.loads(body)
    except (ValueError, RecursionError):
        return
    if not isinstance(fields, dict):
        return
    for name in ("public_key", "subscription_id"):
        text = fields.get(name)
        if isinstance(text, str):
            _note_exposed_key(snapshot, text, now_ms, exposed, name)


def client_generate(
    snapshot: Snapshot,
    body: bytes,
    *,
    origin: str | None,
    now_ms: int,
    random: RandomBytes,
    registrable_domain: RegistrableDomain,
    window: TimestampWindow | None = DEFAULT_CSTG_TIMESTAMP_WINDOW,
    exposed_keys: ExposedKeyLog | None = None,
) -> str:
    """``/v2/token/client-generate`` (operator-api §8): the sealed response, base64 text.

    Checks run in the reference's order (body, subscription, disabled, origin or app name, then
    the request's cryptography and identity); each failure is a ``CstgError`` whose class gives
    the status. A disabled participant counts as a disabled keypair (401). The timestamp must
    fall inside ``window`` (the reference does not check it; ``None`` turns the check off).

    A ``subscription_id`` or ``public_key`` that is one of this environment's API keys is
    answered as any unknown subscription or unreadable public key (or as whatever else the
    request gets wrong first), and its key id is logged with ``exposed_keys`` (default: the
    process's own log), whatever the rest of the request.
    """
    exposed = _EXPOSED_KEYS if exposed_keys is None else exposed_keys
    try:
        request = parse_cstg_request(body)
    except CstgJsonInvalid:  # a field of the wrong type: the texts may still hold a key
        _note_exposed_texts(snapshot, body, now_ms, exposed)
        raise
    subscription_id = request.subscription_id
    if request.public_key is not None:
        _note_exposed_key(snapshot, request.public_key, now_ms, exposed, "public_key")
    keypair = None if subscription_id is None else snapshot.keypairs.get(subscription_id)
    if keypair is None:
        if subscription_id is not None:
            _note_exposed_key(snapshot, subscription_id, now_ms, exposed, "subscription_id")
        raise CstgBadSubscription
    site = snapshot.sites.get(keypair.site_id)
    if keypair.disabled or site is None or not site.enabled:
        raise CstgKeypairDisabled
    check_origin_or_app(
        origin=origin,
        app_name=request.app_name,
        domain_names=site.domain_names,
        app_names=site.app_names,
        registrable_domain=registrable_domain,
    )
    opened = open_cstg_request(
        request,
        keypair.private_key,
        now_ms=now_ms,
        phone_support=snapshot.identity.phone_support,
        window=window,
    )
    kind = opened.identity.kind
    flh = _flh(snapshot, opened.identity.digest)
    if snapshot.optouts.opted_out(kind, flh):
        reply = SUCCESS_OPTOUT
    else:
        issued = _issue(
            snapshot,
            now_ms=now_ms,
            kind=kind,
            flh=flh,
            site_id=keypair.site_id,
            privacy_bits=CLIENT_GENERATED_PRIVACY_BITS,
            established_ms=now_ms,
            random=random,
        )
        reply = Reply.identity(issued)
    return seal_cstg_response(opened.secret, reply.to_mapping(), random)


EndpointHandler = Callable[
    [Snapshot, Caller, "JsonObject | None", int, RandomBytes], "Reply | StreamedReply"
]


def _ignore_random(
    fn: Callable[[Snapshot, JsonObject | None, int], Reply | StreamedReply],
) -> EndpointHandler:
    def handler(
        snapshot: Snapshot, caller: Caller, payload: JsonObject | None, now: int, _: RandomBytes
    ) -> Reply | StreamedReply:
        return fn(snapshot, payload, now)

    return handler


def _keys_only(fn: Callable[[Snapshot, Caller], Reply]) -> EndpointHandler:
    def handler(
        snapshot: Snapshot, caller: Caller, payload: JsonObject | None, now: int, _: RandomBytes
    ) -> Reply:
        return fn(snapshot, caller)

    return handler


def _validate(
    snapshot: Snapshot, caller: Caller, payload: JsonObject | None, now: int, _: RandomBytes
) -> Reply:
    return validate(snapshot, caller, payload, now)


def _generate_for(tcf_vendor_id: int) -> EndpointHandler:
    """``generate`` for ``tcf_vendor_id``: the function itself for the default vendor, so the
    hot path makes no extra call; else a ``partial`` (a keyword merge, about 0.1 µs a request)."""
    if tcf_vendor_id == DEFAULT_VENDOR_ID:
        return generate
    return partial(generate, tcf_vendor_id=tcf_vendor_id)


def enveloped_endpoints(
    record_optout: OptOutSink, *, tcf_vendor_id: int = DEFAULT_VENDOR_ID
) -> Mapping[str, EndpointHandler]:
    """Every API-key endpoint, by path, in one uniform signature for the web edge.

    ``tcf_vendor_id``: the vendor whose consent EUID token generation requires.
    """

    def _logout(
        snapshot: Snapshot, caller: Caller, payload: JsonObject | None, now: int, _: RandomBytes
    ) -> Reply:
        return logout(snapshot, caller, payload, now, record_optout)

    return {
        "/v2/token/generate": _generate_for(tcf_vendor_id),
        "/v2/token/validate": _validate,
        "/v2/token/logout": _logout,
        "/v2/identity/map": _ignore_random(map_v2),
        "/v3/identity/map": _ignore_random(map_v3),
        "/v2/identity/buckets": _ignore_random(buckets),
        "/v2/optout/status": _ignore_random(optout_status),
        "/v2/key/latest": _keys_only(key_latest),
        "/v2/key/sharing": _keys_only(key_sharing),
        "/v2/key/bidstream": _keys_only(key_bidstream),
    }
