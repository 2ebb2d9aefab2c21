"""Client-side keypairs: the credential of publishers that generate tokens in a browser or app.

A keypair is a subscription id (public, sent by the browser) and a P-256 key pair. The public key
is published as ``UID2-X-<env letter>-`` + base64 of its SubjectPublicKeyInfo DER; publishers paste
it into their pages. The private key never leaves the service: it is sealed at rest under the
keyring exactly like a client secret (AES-256-GCM under the active key-encryption key, bound to
the subscription id and to its kind), opened only to build the operator's in-memory snapshot, and
absent from every read view and from ``repr``. The reference lets a read-only administrator read
it back (credentials §h #6); here no read path can.

The key material of a keypair cannot change: a compromised pair is disabled and a new one made.
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass, field, replace
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec

from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import BRAND, BRANDS
from uid2_operator.domain.material_sealing import SealedMaterial, open_material, seal_material
from uid2_operator.domain.participants import (
    refuse_control_characters,
    refuse_deceptive_text,
    refuse_surrogates,
    validate_site_id,
)
from uid2_operator.domain.sealing import Keyring
from uid2_operator.errors import (
    CstgBadPublicKey,
    InvalidInput,
    InvalidTransition,
    SealedSecretUnreadable,
)
from uid2_operator.wire.aead import RandomBytes
from uid2_operator.wire.cstg import (
    load_private_key_der,
    load_public_key_der,
    private_key_der,
    private_key_from_random,
    public_key_der,
)
from uid2_operator.wire.encoding import Base64Error, b64decode, b64encode

SUBSCRIPTION_ID_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
"""58 characters without the look-alikes 0, O, I and l, as the reference draws them."""
SUBSCRIPTION_ID_LENGTH: Final = 10
SUBSCRIPTION_ID_RULE: Final = (
    f"must be {SUBSCRIPTION_ID_LENGTH} characters of the digits 1-9 and the ASCII letters"
    " other than I, O and l"
)
"""The rule in words: the alphabet itself, written out, reads as a random run of text and is
masked wherever credential-like text is (the CLI's error messages)."""
MAX_SUBSCRIPTION_ID_ATTEMPTS: Final = 32
PUBLIC_KEY_KIND: Final = "X"
KEY_PREFIX_LENGTH: Final = 9
PRIVATE_KEY_LABEL: Final = "cstg_private_key"
MAX_NAME_LENGTH: Final = 200
MAX_CONTACT_LENGTH: Final = 254

_SUBSCRIPTION_ID: Final = re.compile(f"[{SUBSCRIPTION_ID_ALPHABET}]{{{SUBSCRIPTION_ID_LENGTH}}}")
_PUBLIC_KEY_PREFIX: Final = re.compile(f"(?:{'|'.join(BRANDS)})-{PUBLIC_KEY_KIND}-([A-Z])-")
# Highest byte value below which ``byte % 58`` is uniform (4 * 58 = 232).
_UNBIASED_LIMIT: Final = 256 - 256 % len(SUBSCRIPTION_ID_ALPHABET)


@dataclass(frozen=True, slots=True)
class ClientKeypair:
    """A keypair as stored. ``public_key`` is SPKI DER; the sealed private key stays out of repr."""

    subscription_id: str
    site_id: int
    public_key: bytes
    sealed_private_key: SealedMaterial = field(repr=False)
    name: str
    contact: str
    disabled: bool
    created_at_ms: int


# ------------------------------------------------------------------------- subscription ids


def random_subscription_id(random: RandomBytes) -> str:
    """10 characters of the 58-character alphabet, uniformly (rejection sampling, no bias)."""
    out: list[str] = []
    while len(out) < SUBSCRIPTION_ID_LENGTH:
        for byte in random(SUBSCRIPTION_ID_LENGTH - len(out) + 4):
            if byte < _UNBIASED_LIMIT and len(out) < SUBSCRIPTION_ID_LENGTH:
                out.append(SUBSCRIPTION_ID_ALPHABET[byte % len(SUBSCRIPTION_ID_ALPHABET)])
    return "".join(out)


def new_subscription_id(random: RandomBytes, taken: Container[str]) -> str:
    """A subscription id not in ``taken`` (drawn again on a collision, as the reference does)."""
    for _ in range(MAX_SUBSCRIPTION_ID_ATTEMPTS):
        candidate = random_subscription_id(random)
        if candidate not in taken:
            return candidate
    raise InvalidInput("Could not draw an unused subscription id")


def is_subscription_id(text: str) -> bool:
    """Whether ``text`` has the shape of a subscription id (a cheap refusal before any lookup)."""
    return _SUBSCRIPTION_ID.fullmatch(text) is not None


# ------------------------------------------------------------------------- public key text


def format_public_key(environment: Environment, der: bytes, brand: str = BRAND) -> str:
    """``UID2-X-<env letter>-`` (``EUID-X-...`` in the EUID scope: ``brand``) + standard base64
    of the SPKI DER: what publishers configure."""
    return f"{brand}-{PUBLIC_KEY_KIND}-{environment.letter}-{b64encode(der)}"


def parse_public_key(text: str, environment: Environment | None = None) -> bytes:
    """The SPKI DER of a public key string, checked to be a P-256 point.

    The prefix is exactly 9 characters (``UID2-X-L-``, or ``EUID-X-L-``); its environment letter
    must be known and, when ``environment`` is given, must be that environment's.
    """
    match = _PUBLIC_KEY_PREFIX.fullmatch(text[:KEY_PREFIX_LENGTH])
    if match is None:
        raise InvalidInput(
            "A public key starts with UID2-X- or EUID-X-, then its environment letter"
        )
    presented = Environment.from_letter(match.group(1))
    if presented is None:
        raise InvalidInput("The public key names an unknown environment")
    if environment is not None and presented is not environment:
        raise InvalidInput(f"The public key belongs to the {presented.value} environment")
    try:
        der = b64decode(text[KEY_PREFIX_LENGTH:])
        load_public_key_der(der)
    except (Base64Error, CstgBadPublicKey):
        raise InvalidInput("The public key is not a base64 P-256 SubjectPublicKeyInfo") from None
    return der


# ---------------------------------------------------------------------------- lifecycle


@dataclass(frozen=True, slots=True)
class NewKeypair:
    """A freshly generated keypair and the public key string to hand to the publisher."""

    keypair: ClientKeypair
    public_key_text: str


def validate_keypair_name(name: str) -> str:
    """Trimmed, at most 200 characters, no control characters; may be empty (the default)."""
    return _clean_text(name, "name")


def validate_keypair_contact(contact: str) -> str:
    return _clean_text(contact, "contact")


KEYPAIR_TEXT_LIMITS: Final = {"name": MAX_NAME_LENGTH, "contact": MAX_CONTACT_LENGTH}


def keypair_text_too_long(what: str) -> InvalidInput:
    """The refusal of a keypair's ``name`` or ``contact`` that is too long."""
    return InvalidInput(f"A keypair {what} is at most {KEYPAIR_TEXT_LIMITS[what]} characters")


def _clean_text(value: str, what: str) -> str:
    label = f"A keypair {what}"
    cleaned = refuse_control_characters(refuse_surrogates(value, label), label).strip()
    if len(cleaned) > KEYPAIR_TEXT_LIMITS[what]:
        raise keypair_text_too_long(what)
    return refuse_deceptive_text(cleaned, label)


def generate_keypair(
    *,
    site_id: int,
    environment: Environment,
    keyring: Keyring,
    random: RandomBytes,
    now_ms: int,
    taken: Container[str] = (),
    name: str = "",
    contact: str = "",
    disabled: bool = False,
    brand: str = BRAND,
) -> NewKeypair:
    """A new subscription id and P-256 pair for ``site_id``, the private key sealed at once.

    The private scalar is derived from ``random`` (see ``wire.cstg.private_key_from_random``).
    """
    validate_site_id(site_id)
    subscription_id = new_subscription_id(random, taken)
    private = private_key_from_random(random)
    der = public_key_der(private.public_key())
    sealed = seal_material(
        keyring, PRIVATE_KEY_LABEL, subscription_id, private_key_der(private), random
    )
    keypair = ClientKeypair(
        subscription_id=subscription_id,
        site_id=site_id,
        public_key=der,
        sealed_private_key=sealed,
        name=validate_keypair_name(name),
        contact=validate_keypair_contact(contact),
        disabled=disabled,
        created_at_ms=now_ms,
    )
    return NewKeypair(keypair, format_public_key(environment, der, brand))


def open_private_key(keyring: Keyring, keypair: ClientKeypair) -> ec.EllipticCurvePrivateKey:
    """The private key for ECDH (operator snapshot only). A blob that does not open, or opens to
    something that is not the pair's P-256 key, raises ``SealedSecretUnreadable``."""
    der = open_material(
        keyring, PRIVATE_KEY_LABEL, keypair.subscription_id, keypair.sealed_private_key
    )
    try:
        key = load_private_key_der(der)
    except ValueError:
        key = None
    if key is None or public_key_der(key.public_key()) != keypair.public_key:
        raise SealedSecretUnreadable(
            f"The sealed private key of keypair {keypair.subscription_id} is not its key"
        )
    return key


def update_keypair(
    keypair: ClientKeypair,
    *,
    name: str | None = None,
    contact: str | None = None,
    disabled: bool | None = None,
) -> ClientKeypair:
    """Change name, contact or the disabled flag (at least one); key material never changes."""
    if name is None and contact is None and disabled is None:
        raise InvalidInput("Give at least one of name, contact, disabled")
    return replace(
        keypair,
        name=keypair.name if name is None else validate_keypair_name(name),
        contact=keypair.contact if contact is None else validate_keypair_contact(contact),
        disabled=keypair.disabled if disabled is None else disabled,
    )


def set_keypair_disabled(keypair: ClientKeypair, disabled: bool) -> ClientKeypair:
    """Disable (the only revocation) or re-enable; a no-op change is refused so it is noticed."""
    if keypair.disabled == disabled:
        state = "disabled" if disabled else "enabled"
        raise InvalidTransition(f"keypair {keypair.subscription_id} is already {state}")
    return replace(keypair, disabled=disabled)


# ---------------------------------------------------------------------------------- views


def keypair_view(
    keypair: ClientKeypair, environment: Environment, brand: str = BRAND
) -> dict[str, Any]:
    """What every read (API, CLI, audit) shows of a keypair: never the private key."""
    return {
        "subscription_id": keypair.subscription_id,
        "site_id": keypair.site_id,
        "public_key": format_public_key(environment, keypair.public_key, brand),
        "name": keypair.name,
        "contact": keypair.contact,
        "disabled": keypair.disabled,
        "created_at_ms": keypair.created_at_ms,
    }
