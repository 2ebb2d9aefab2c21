"""Client-side token generation (CSTG): the ``/v2/token/client-generate`` request and response.

A browser or app holds no secret. It makes an ephemeral P-256 key pair, runs ECDH with the
publisher's published server public key, and uses the raw 32-byte shared X coordinate directly as
an AES-256-GCM key (no KDF: WebCrypto's ``deriveKey(ECDH -> AES-GCM 256)`` yields the same key). It
sends plain JSON (operator-api §8)::

    {"payload": b64(ciphertext || tag), "iv": b64(12 bytes), "public_key": b64(SPKI DER),
     "timestamp": <epoch ms>, "subscription_id": "...", "app_name": "..." (optional)}

The GCM associated data is the compact JSON array ``[timestamp]`` or ``[timestamp,"app_name"]``,
rebuilt here from the *parsed integer* timestamp, so the timestamp and app name are authenticated
by the tag. The response is ``b64(IV || GCM(JSON) || tag)`` under the same shared secret, so only
the holder of the ephemeral private key can read the tokens.

Request handling is split in two so the keypair lookup, the disabled check and the origin/app check
(which need the store and the public suffix list) run between them, in the reference's order:

1. ``parse_request``: body JSON (``json payload is not valid`` / ``expected but not found``);
2. (caller) keypair by ``subscription_id``, disabled, origin or app name;
3. ``open_request``: required parameters, public key, IV, decryption, the timestamp window,
   inner JSON, phone support, exactly one identity, identity validity.

Every failure is a ``CstgError`` subclass carrying the reference's message; its class tells the web
layer the status (400 / 401 / 403).

Freshness: the reference binds ``timestamp`` into the AAD but never compares it with its clock
(§15.13). This implementation refuses requests outside ``DEFAULT_CSTG_TIMESTAMP_WINDOW`` (30 min
either way). The check runs *after* decryption, when the timestamp is authenticated. The window is
wide because the clocks are those of end-user devices, not servers; a replayed request gains an
eavesdropper nothing (the response is sealed to the original sender's ephemeral key), so the window
bounds how long a captured request can be re-used to mint tokens rather than closing a secrecy hole.

The client half (``build_request``, ``open_response``) mirrors what a browser SDK does and exists
for tests and tooling. Randomness is always injected: ephemeral and server keys are derived from
``random`` bytes, never from the crypto library's own generator.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from uid2_operator.errors import (
    CstgBadIv,
    CstgBadPublicKey,
    CstgDecryptionFailed,
    CstgIdentityMissing,
    CstgInvalidIdentifier,
    CstgJsonInvalid,
    CstgJsonMissing,
    CstgMissingParameters,
    CstgPayloadJsonInvalid,
    CstgPhoneNotSupported,
    CstgStaleTimestamp,
    InvalidIdentifier,
    ResponseEnvelopeError,
)
from uid2_operator.wire.aead import IV_SIZE, AeadFailure, RandomBytes, open_, seal
from uid2_operator.wire.encoding import Base64Error, b64decode, b64encode, dumps
from uid2_operator.wire.envelope import TimestampWindow
from uid2_operator.wire.identity import HashedIdentity, InputKind, identity_text, java_utf8

CURVE: Final = ec.SECP256R1()
CURVE_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
"""The order n of P-256's base point."""
SCALAR_SEED_SIZE: Final = 40
"""Random bytes per private scalar: 64 bits above n, so the bias of the reduction is < 2^-64."""
SHARED_SECRET_SIZE: Final = 32

DEFAULT_CSTG_TIMESTAMP_WINDOW: Final = TimestampWindow(
    max_past_ms=30 * 60 * 1000, max_future_ms=30 * 60 * 1000
)
"""30 minutes either way: end-user clocks drift; see the module docstring."""

PHONE_DISABLED_IDENTITY_MESSAGE: Final = "please provide email_hash"

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_STRING_FIELDS: Final = ("payload", "iv", "public_key", "subscription_id", "app_name")
_SHORT_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


# Like the reference's Jackson parser: NaN and Infinity are not JSON.
_JSON: Final = json.JSONDecoder(parse_constant=_reject_constant)


# ------------------------------------------------------------------------------------ keys


def private_key_from_random(random: RandomBytes) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key whose scalar comes from ``random``: ``1 + (int(40 bytes) mod (n-1))``.

    Keys are derived from the injected source rather than the library's generator so that key
    creation is reproducible in tests and the entropy source is chosen in one place.
    """
    seed = int.from_bytes(random(SCALAR_SEED_SIZE), "big")
    return ec.derive_private_key(1 + seed % (CURVE_ORDER - 1), CURVE)


def public_key_der(key: ec.EllipticCurvePublicKey) -> bytes:
    """X.509 SubjectPublicKeyInfo DER (uncompressed point), as WebCrypto exports ``spki``."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_key_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 DER, the form the reference keeps behind ``UID2-Y-<env>-``."""
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_public_key_der(der: bytes) -> ec.EllipticCurvePublicKey:
    """Parse SPKI DER; anything but a valid point on P-256 raises ``CstgBadPublicKey``."""
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CstgBadPublicKey from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != CURVE.name:
        raise CstgBadPublicKey
    return key


def load_private_key_der(der: bytes) -> ec.EllipticCurvePrivateKey:
    """Parse PKCS#8 DER of a P-256 key; anything else raises ``ValueError``.

    Private keys come from this service's own store, never from a request, so a failure here is
    a server fault, not a client error.
    """
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != CURVE.name:
        raise ValueError("not a P-256 private key")
    return key


def shared_secret(
    private_key: ec.EllipticCurvePrivateKey, public_key: ec.EllipticCurvePublicKey
) -> bytes:
    """Raw ECDH output: the 32-byte X coordinate, used as the AES-256-GCM key as is."""
    return private_key.exchange(ec.ECDH(), public_key)


# ------------------------------------------------------------------------------------- AAD


def _json_string(text: str) -> str:
    """A JSON string literal as the reference's Jackson writes it (control chars ``\\u00XX``)."""
    out = ['"']
    for ch in text:
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif ch < " ":
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def request_aad(timestamp: int, app_name: str | None) -> bytes:
    """``[timestamp]`` or ``[timestamp,"app_name"]``, compact, UTF-8 (unpaired surrogates as
    ``?``, as the JVM encodes them)."""
    if app_name is None:
        return f"[{timestamp}]".encode("ascii")
    return java_utf8(f"[{timestamp},{_json_string(app_name)}]")


# --------------------------------------------------------------------------------- request


@dataclass(frozen=True, slots=True)
class CstgRequest:
    """The outer request as parsed; fields are ``None`` when absent or ``null``.

    ``timestamp`` defaults to 0 when absent, as the reference's primitive ``long`` field does; it
    then fails the freshness window (or, with the window off, is bound into the AAD as 0).
    """

    payload: str | None
    iv: str | None
    public_key: str | None
    timestamp: int
    subscription_id: str | None
    app_name: str | None


def parse_request(body: bytes | str) -> CstgRequest:
    """The request body as JSON. An empty body or ``null`` is ``CstgJsonMissing``; anything that
    is not a JSON object with string fields and an integer timestamp is ``CstgJsonInvalid``."""
    if len(body) == 0:
        raise CstgJsonMissing
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        doc = _JSON.decode(text)
    except (ValueError, RecursionError) as exc:
        raise CstgJsonInvalid from exc
    if doc is None:
        raise CstgJsonMissing
    if not isinstance(doc, dict):
        raise CstgJsonInvalid
    values: dict[str, str | None] = {}
    for name in _STRING_FIELDS:
        value = doc.get(name)
        if value is not None and not isinstance(value, str):
            raise CstgJsonInvalid
        values[name] = value
    timestamp = doc.get("timestamp", 0)
    if timestamp is None:
        timestamp = 0
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise CstgJsonInvalid
    if not _INT64_MIN <= timestamp <= _INT64_MAX:
        raise CstgJsonInvalid
    return CstgRequest(
        payload=values["payload"],
        iv=values["iv"],
        public_key=values["public_key"],
        timestamp=timestamp,
        subscription_id=values["subscription_id"],
        app_name=values["app_name"],
    )


@dataclass(frozen=True, slots=True)
class OpenedCstgRequest:
    """A request that decrypted: the identity to issue tokens for, and the key for the response."""

    identity: HashedIdentity
    kind: InputKind
    timestamp: int
    app_name: str | None
    secret: bytes = field(repr=False)


def open_request(
    request: CstgRequest,
    server_private_key: ec.EllipticCurvePrivateKey,
    *,
    now_ms: int,
    phone_support: bool,
    window: TimestampWindow | None = DEFAULT_CSTG_TIMESTAMP_WINDOW,
) -> OpenedCstgRequest:
    """Steps after the keypair, disabled and origin checks, in the reference's order.

    ``window=None`` reproduces the reference exactly (no freshness check).
    """
    if request.payload is None or request.iv is None or request.public_key is None:
        raise CstgMissingParameters
    try:
        client_der = b64decode(request.public_key)
    except Base64Error as exc:
        raise CstgBadPublicKey from exc
    secret = shared_secret(server_private_key, load_public_key_der(client_der))
    try:
        iv = b64decode(request.iv)
    except Base64Error as exc:
        raise CstgBadIv from exc
    if len(iv) != IV_SIZE:
        raise CstgBadIv
    try:
        sealed = b64decode(request.payload)
        plaintext = open_(secret, iv + sealed, request_aad(request.timestamp, request.app_name))
    except (Base64Error, AeadFailure) as exc:
        raise CstgDecryptionFailed from exc
    if window is not None and not window.accepts(request.timestamp, now_ms):
        raise CstgStaleTimestamp
    kind, identity = _read_identity(plaintext, phone_support=phone_support)
    return OpenedCstgRequest(
        identity=identity,
        kind=kind,
        timestamp=request.timestamp,
        app_name=request.app_name,
        secret=secret,
    )


def _read_identity(plaintext: bytes, *, phone_support: bool) -> tuple[InputKind, HashedIdentity]:
    try:
        doc = _JSON.decode(plaintext.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise CstgPayloadJsonInvalid from exc
    if not isinstance(doc, dict):
        raise CstgPayloadJsonInvalid
    email = doc.get(InputKind.EMAIL_HASH.value)
    phone = doc.get(InputKind.PHONE_HASH.value)
    if phone is not None and not phone_support:
        raise CstgPhoneNotSupported
    if (email is None) == (phone is None):
        raise CstgIdentityMissing(None if phone_support else PHONE_DISABLED_IDENTITY_MESSAGE)
    kind, value = (InputKind.EMAIL_HASH, email) if phone is None else (InputKind.PHONE_HASH, phone)
    try:  # a number is read as its digits, as on generate
        return kind, kind.hashed(identity_text(value))
    except InvalidIdentifier as exc:
        raise CstgInvalidIdentifier from exc


# -------------------------------------------------------------------------------- response


def seal_response(secret: bytes, payload: Mapping[str, Any], random: RandomBytes) -> str:
    """``b64(IV || AES-GCM(secret, compact JSON) || tag)``: no timestamp or nonce prefix."""
    return b64encode(seal(secret, dumps(payload), random))


def open_response(secret: bytes, text: str | bytes) -> Any:
    """The client's side of ``seal_response``; anything that does not open or parse raises
    ``ResponseEnvelopeError``."""
    try:
        return json.loads(open_(secret, b64decode(text)).decode("utf-8"))
    except (Base64Error, AeadFailure, ValueError, RecursionError) as exc:
        raise ResponseEnvelopeError from exc


# ---------------------------------------------------------------------------------- client


@dataclass(frozen=True, slots=True)
class BuiltRequest:
    """A request body as a browser SDK sends it, and the secret that opens its response."""

    body: dict[str, Any]
    secret: bytes = field(repr=False)


def build_request(
    server_public_key: bytes,
    identity: Mapping[str, Any],
    *,
    timestamp: int,
    subscription_id: str,
    random: RandomBytes,
    app_name: str | None = None,
) -> BuiltRequest:
    """What a browser SDK does with WebCrypto: an ephemeral P-256 key, ECDH with the published
    server key (``server_public_key``: SPKI DER, the text after the 9-character prefix, decoded),
    AES-GCM over the compact JSON of ``identity`` with the timestamp (and app name) as AAD."""
    ephemeral = private_key_from_random(random)
    secret = shared_secret(ephemeral, load_public_key_der(server_public_key))
    blob = seal(secret, dumps(dict(identity)), random, request_aad(timestamp, app_name))
    body: dict[str, Any] = {
        "payload": b64encode(blob[IV_SIZE:]),
        "iv": b64encode(blob[:IV_SIZE]),
        "public_key": b64encode(public_key_der(ephemeral.public_key())),
        "timestamp": timestamp,
        "subscription_id": subscription_id,
    }
    if app_name is not None:
        body["app_name"] = app_name
    return BuiltRequest(body=body, secret=secret)
