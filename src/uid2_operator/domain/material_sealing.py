"""Service-held cryptographic material (encryption keys, salts) sealed at rest under the keyring.

The material the operator derives UID2s and tokens from is generated and kept by this service, so
a copy of the database must not be enough to mint or open tokens, or to recompute raw UIDs from
e-mail addresses. Every such secret is sealed exactly like a client secret (AES-256-GCM under the
active key-encryption key version, see ``domain.sealing``), with associated data naming what the
blob is: ``"<kind>:<id>"``. The label binds a ciphertext to its row *and* to its kind, so neither
a blob copied onto another row nor one copied between tables (an encryption key's ciphertext
presented as a salt chunk, say) opens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from uid2_operator.domain.sealing import Keyring
from uid2_operator.errors import KeyringError, SealedSecretUnreadable
from uid2_operator.wire import aead
from uid2_operator.wire.aead import RandomBytes

ENCRYPTION_KEY_LABEL = "encryption_key"
SALT_CHUNK_LABEL = "salt_chunk"
FIRST_LEVEL_SALT_LABEL = "first_level_salt"
ID_SECRET_LABEL = "bucket_id_secret"  # noqa: S105 - a label, not a secret


@dataclass(frozen=True, slots=True)
class SealedMaterial:
    """A sealed blob and the KEK version it was sealed under; the bytes stay out of ``repr``."""

    kek_version: int
    ciphertext: bytes = field(repr=False)


def material_aad(label: str, ident: int | str) -> bytes:
    """``utf8("<label>:<id>")``: what a sealed blob is, bound into its authentication tag."""
    return f"{label}:{ident}".encode()


def seal_material(
    keyring: Keyring, label: str, ident: int | str, plaintext: bytes, random: RandomBytes
) -> SealedMaterial:
    """Seal ``plaintext`` under the active KEK with ``material_aad(label, ident)``."""
    version = keyring.active_version
    return SealedMaterial(
        kek_version=version,
        ciphertext=aead.seal(keyring.kek(version), plaintext, random, material_aad(label, ident)),
    )


def open_material(keyring: Keyring, label: str, ident: int | str, sealed: SealedMaterial) -> bytes:
    """Open a sealed blob; a wrong label, id, KEK version or tampered blob does not open."""
    try:
        kek = keyring.kek(sealed.kek_version)
    except KeyringError as exc:
        raise SealedSecretUnreadable(exc.detail) from exc
    try:
        return aead.open_(kek, sealed.ciphertext, material_aad(label, ident))
    except aead.AeadFailure:
        raise SealedSecretUnreadable(f"The sealed {label} {ident} does not open") from None


def reseal_material(
    keyring: Keyring, label: str, ident: int | str, sealed: SealedMaterial, random: RandomBytes
) -> SealedMaterial:
    """KEK rotation, step 2, for material: the same plaintext sealed again under the active version.

    The associated data stays ``material_aad(label, ident)``, so the new blob is bound to the same
    row and kind as the old one. A blob that does not open raises ``SealedSecretUnreadable`` and
    nothing is sealed.
    """
    plaintext = open_material(keyring, label, ident, sealed)
    return seal_material(keyring, label, ident, plaintext, random)
