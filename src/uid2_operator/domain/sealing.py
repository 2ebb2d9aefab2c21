"""The keyring, and client secrets sealed at rest under its key-encryption keys (KEKs).

A client secret is the AES-256-GCM key of the v2 request envelope, so the server must be able to
read it: it cannot be hashed like an API key. It is sealed with AES-256-GCM under the active KEK
version, with the owning ``key_id`` as associated data, so a ciphertext copied onto another key's
row does not open. KEKs are versioned: a new version becomes active for new seals while older
versions stay in the keyring until every secret has been re-sealed, then they can be dropped.

The keyring also holds the pepper for the keyed hash of API keys and admin tokens. It is loaded
from settings (a file or an environment variable), never from the database, so a stolen database
alone yields neither secrets nor a way to test key guesses. Nothing here prints key bytes: the
reprs name versions only.

Keyring JSON::

    {"active_kek_version": 2,
     "keks": {"1": "<base64 of 32 bytes>", "2": "<base64 of 32 bytes>"},
     "pepper": "<base64 of 32 bytes>",
     "development": false}

Each KEK version has a check value (``kek_check_value``): a one-way digest of the key that the
store records per version, so a keyring holding another key under a version number the store
already knows is refused (``compare_kek_check_values``) before anything is sealed or opened
under it. Several keyring files share one store, one per data directory, and a version copied
wrongly (or added twice under one number) would otherwise surface only when an item sealed under
it fails to open elsewhere. The check value is no secret, but it is never printed either.

A long-lived process follows the keyring where it is kept (``bootstrap.KeyringFile``): its use
cases take a ``KeyringSource`` and ask it for the keyring once per unit of work, so one unit of
work never mixes two keyrings: ``current()`` at the start of a read, ``latest(recorded)`` inside
a write transaction (see ``KeyringSource``). A ``Keyring`` is its own source, fixed.

A keyring file can be replaced under a running process by one holding another key under a
version number the store knows (another instance's file, an old backup). Two things keep that
keyring from sealing anything: a unit of work that writes reads the store's check values in its
own transaction and passes them to ``latest`` (a source that follows a file refuses new content
that contradicts them, and keeps what it had), then compares the keyring it got with them itself
(``compare_kek_check_values``), so nothing sealed under a keyring the store contradicts ever
commits. A version the store records nothing for is recorded in that same transaction, before
anything is sealed under it (``services.kek_check_values.recorded_keyring``): the store learns a
version no later than the first seal under it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Final, Protocol

from uid2_operator.domain.credentials import SealedSecret
from uid2_operator.domain.environments import Environment
from uid2_operator.errors import (
    KekCheckMismatch,
    KekVersionMissing,
    KeyringError,
    KeyringMissing,
    PlaceholderKeyring,
    SealedSecretUnreadable,
)
from uid2_operator.wire import aead
from uid2_operator.wire.aead import RandomBytes
from uid2_operator.wire.encoding import Base64Error, b64decode, b64encode

KEK_SIZE = aead.KEY_SIZE
PEPPER_SIZE = 32
SECRET_SIZE = 32
# The store assigns secret ids; a freshly sealed secret carries this until it is added.
UNASSIGNED_SECRET_ID = 0
KEK_CHECK_LABEL: Final = b"uid2-operator kek check value"
"""What a KEK authenticates to give its check value (``kek_check_value``); never changes."""
KEK_CHECK_MAX: Final = (1 << 63) - 1
"""The largest check value: 63 bits, so it fits a signed 64-bit integer (``store_meta``)."""
PEPPER_CHECK_LABEL: Final = b"uid2-operator pepper check value"
"""What the pepper authenticates to give its check value (``pepper_check_value``)."""
PEPPER_CHECK: Final = 0
"""The pepper's key in a mapping of check values (``compare_kek_check_values``): no key-encryption
key version is 0, so the store records it beside theirs and it is compared as they are."""
RUN_AGAIN: Final = "then run the command again"
"""What a refusal of ``compare_kek_check_values`` says to do once the right keyring is in place."""
MAX_KEK_VERSION: Final = 999_999_999
"""The highest key-encryption key version number: nine digits. A keyring file holds nothing
above it (``Keyring``, ``from_json``) and no version above it is ever added (``next_kek_version``),
so every keyring written can be read back; it also fits the store's 32-bit integer columns."""
_VERSIONS_ARE: Final = f"Key-encryption key versions are positive integers up to {MAX_KEK_VERSION}"


def kek_check_value(kek: bytes) -> int:
    """The check value of a KEK: the first 8 bytes of HMAC-SHA256(kek, ``KEK_CHECK_LABEL``),
    big-endian, masked to 63 bits. Two keys under one version number differ in it (but for a
    chance of one in 2**63), and it reveals nothing of the key."""
    digest = hmac.new(kek, KEK_CHECK_LABEL, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") & KEK_CHECK_MAX


def pepper_check_value(pepper: bytes) -> int:
    """The check value of the pepper, as ``kek_check_value`` is a KEK's (another label): a
    keyring holding another pepper would hash every API key and admin token differently."""
    digest = hmac.new(pepper, PEPPER_CHECK_LABEL, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") & KEK_CHECK_MAX


class Keyring:
    """KEK versions, the active version, and the credential-hashing pepper. Immutable."""

    __slots__ = ("_active", "_development", "_keks", "_pepper")

    def __init__(
        self,
        keks: Mapping[int, bytes],
        active_version: int,
        pepper: bytes,
        *,
        development: bool = False,
    ) -> None:
        if not keks:
            raise KeyringError("The keyring holds no key-encryption key")
        for version, kek in keks.items():
            if (
                isinstance(version, bool)
                or not isinstance(version, int)
                or not 1 <= version <= MAX_KEK_VERSION
            ):
                raise KeyringError(_VERSIONS_ARE)
            if len(kek) != KEK_SIZE:
                raise KeyringError(f"Key-encryption key version {version} is not {KEK_SIZE} bytes")
        if isinstance(active_version, bool) or not isinstance(active_version, int):
            raise KeyringError("The active key-encryption key version is not an integer")
        if active_version not in keks:
            raise KekVersionMissing(
                active_version,
                f"The active key-encryption key version {active_version} is absent",
            )
        if len(pepper) != PEPPER_SIZE:
            raise KeyringError(f"The pepper is not {PEPPER_SIZE} bytes")
        self._keks: Mapping[int, bytes] = MappingProxyType({v: bytes(k) for v, k in keks.items()})
        self._active = active_version
        self._pepper = bytes(pepper)
        self._development = development

    @property
    def active_version(self) -> int:
        return self._active

    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(sorted(self._keks))

    @property
    def pepper(self) -> bytes:
        return self._pepper

    @property
    def development(self) -> bool:
        return self._development

    @property
    def is_placeholder(self) -> bool:
        """Marked for development, or holding an all-zero key: never acceptable in prod."""
        zero = bytes(KEK_SIZE)
        return self._development or self._pepper == zero or zero in self._keks.values()

    def current(self) -> Keyring:
        """A keyring is a ``KeyringSource`` that never changes."""
        return self

    def latest(self, recorded: Mapping[int, int]) -> Keyring:
        """Itself: a fixed keyring has nothing to take up (``checked_keyring`` compares it)."""
        del recorded
        return self

    def kek(self, version: int) -> bytes:
        try:
            return self._keks[version]
        except KeyError:
            raise KekVersionMissing(version) from None

    def kek_check_values(self) -> dict[int, int]:
        """What the store records of this keyring: ``{version: kek_check_value}`` for every
        version it holds, ascending, after the pepper's check value under ``PEPPER_CHECK`` (0)."""
        values = {PEPPER_CHECK: pepper_check_value(self._pepper)}
        values.update((v, kek_check_value(self._keks[v])) for v in self.versions)
        return values

    def __repr__(self) -> str:
        return (
            f"Keyring(active_version={self._active}, versions={list(self.versions)}, "
            f"development={self._development})"
        )

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Keyring):
            return NotImplemented
        return (self._keks, self._active, self._pepper, self._development) == (
            other._keks,
            other._active,
            other._pepper,
            other._development,
        )

    def __hash__(self) -> int:
        return hash((self._active, self.versions))

    # ------------------------------------------------------------------ serialisation

    def to_json(self) -> str:
        """The keyring file's content (holds every key: write it with mode 0600)."""
        doc = {
            "active_kek_version": self._active,
            "keks": {str(v): b64encode(self._keks[v]) for v in self.versions},
            "pepper": b64encode(self._pepper),
            "development": self._development,
        }
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Keyring:
        """Parse the keyring JSON; any defect raises ``KeyringError`` (never key bytes in it)."""
        try:
            doc = json.loads(text, object_pairs_hook=_once_each)
        except (ValueError, RecursionError):
            raise KeyringError("The keyring is not valid JSON") from None
        if not isinstance(doc, dict):
            raise KeyringError("The keyring must be a JSON object")
        keks_doc = doc.get("keks")
        active = doc.get("active_kek_version")
        development = doc.get("development", False)
        if not isinstance(keks_doc, dict):
            raise KeyringError('The keyring needs "keks": {"<version>": "<base64>"}')
        if isinstance(active, bool) or not isinstance(active, int):
            raise KeyringError('The keyring needs an integer "active_kek_version"')
        if not isinstance(development, bool):
            raise KeyringError('"development" must be true or false')
        keks = {_parse_version(v): _decode_key(k, f"keks.{v}") for v, k in keks_doc.items()}
        return cls(keks, active, _decode_key(doc.get("pepper"), "pepper"), development=development)


class KeyringSource(Protocol):
    """Where a use case gets its keyring: a fixed ``Keyring``, or one that follows a file."""

    def current(self) -> Keyring:
        """The keyring to use for one unit of work that only reads, from its start to its end.

        A source that follows a file may answer with what it read up to a second ago."""
        ...

    def latest(self, recorded: Mapping[int, int]) -> Keyring:
        """The keyring as it is at this moment, for a unit of work that writes the store (and for
        a snapshot load).

        Asked inside the write transaction, after the store's write lock is taken: KEK rotation
        writes the keyring under that same lock, so what a writer seals under is in the keyring
        when it commits, and a later ``drop-version`` counts it.

        ``recorded``: the check values the store records (``{version: value}``), read by the
        caller in its own unit of work. A source that follows a file never takes up new content
        holding another key under one of those versions (``compare_kek_check_values``): it keeps
        the keyring it had, as for any content it cannot use. The source never reads the store
        itself: it is asked while the caller holds a transaction, and a second one could wait
        for the first (a pool of one connection) or see another state. What it answers may still
        contradict ``recorded`` (taken up before the store recorded that version): the caller
        compares it (``checked_keyring``, ``services.kek_check_values.recorded_keyring``)."""
        ...


_KEYRING_FIELDS: Final = frozenset({"active_kek_version", "keks", "pepper", "development"})


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose names are all different: a name given twice would otherwise keep its
    last value without a word (a second key under one version, a pasted pepper). The name is
    shown only when it is a field or a version number, never text that could be key bytes."""
    doc: dict[str, Any] = {}
    for name, value in pairs:
        if name in doc:
            version = name.isascii() and name.isdigit() and len(name) < 12
            shown = f'"{name}"' if version or name in _KEYRING_FIELDS else "a name"
            raise KeyringError(
                f"The keyring gives {shown} twice: each field and each key-encryption key "
                "version appears once"
            )
        doc[name] = value
    return doc


def _parse_version(text: str) -> int:
    # The length first: never convert an arbitrarily long run of digits.
    if (
        not (text.isascii() and text.isdigit())
        or text.startswith("0")
        or len(text) > len(str(MAX_KEK_VERSION))  # MAX_KEK_VERSION is all nines: the bound
    ):
        raise KeyringError(_VERSIONS_ARE)
    return int(text)


def _decode_key(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise KeyringError(f'The keyring needs "{name}" as base64 text')
    try:
        return b64decode(value)
    except Base64Error:
        raise KeyringError(f'"{name}" is not valid base64') from None


def generate_keyring(random: RandomBytes, *, development: bool = False) -> Keyring:
    """A fresh keyring with KEK version 1 active."""
    return Keyring({1: random(KEK_SIZE)}, 1, random(PEPPER_SIZE), development=development)


def next_kek_version(highest: int) -> int:
    """The version number one above ``highest``: ``KeyringError`` when that is above
    ``MAX_KEK_VERSION``, since no keyring holding it could be read back."""
    if highest >= MAX_KEK_VERSION:
        raise KeyringError(_no_version_left(highest + 1))
    return highest + 1


def _no_version_left(version: int) -> str:
    return (
        f"No key-encryption key version can be added: the next would be {version}, above "
        f"the highest a keyring can hold ({MAX_KEK_VERSION})"
    )


def add_kek_version(
    keyring: Keyring, random: RandomBytes, *, version: int | None = None, activate: bool = True
) -> Keyring:
    """KEK rotation, step 1: a new version, active at once unless ``activate`` is False; older
    ones stay to open old seals.

    ``version`` (default: one above the keyring's highest) must be above every version the
    keyring holds. A caller that knows the store should pick one above every version sealed
    items still name as well: a version that went missing from the keyring must never come back
    with another key, or the items sealed under it would stop showing as "sealed under a
    version the keyring lacks" and fail as if tampered with instead.

    Added inactive, the version opens seals but nothing is sealed under it until
    ``activate_kek_version``: the keyring can first reach every process that must open them.

    ``KeyringError`` for a version above ``MAX_KEK_VERSION`` (``next_kek_version``), before any
    key is drawn.
    """
    highest = max(keyring.versions)
    if version is None:
        version = next_kek_version(highest)
    elif isinstance(version, bool) or not isinstance(version, int) or version <= highest:
        raise KeyringError(f"A new key-encryption key version must be above {highest}")
    elif version > MAX_KEK_VERSION:
        raise KeyringError(_no_version_left(version))
    keks = {v: keyring.kek(v) for v in keyring.versions} | {version: random(KEK_SIZE)}
    active = version if activate else keyring.active_version
    return Keyring(keks, active, keyring.pepper, development=keyring.development)


def activate_kek_version(keyring: Keyring, version: int) -> Keyring:
    """Make ``version``, which the keyring holds, the one new seals go under (the same keyring
    when it already is). ``KekVersionMissing`` for a version the keyring lacks."""
    keyring.kek(version)
    if version == keyring.active_version:
        return keyring
    keks = {v: keyring.kek(v) for v in keyring.versions}
    return Keyring(keks, version, keyring.pepper, development=keyring.development)


def drop_kek_version(keyring: Keyring, version: int) -> Keyring:
    """KEK rotation, last step, once nothing is sealed under ``version`` any more."""
    if version == keyring.active_version:
        raise KeyringError("The active key-encryption key cannot be dropped")
    keyring.kek(version)
    keks = {v: keyring.kek(v) for v in keyring.versions if v != version}
    return Keyring(keks, keyring.active_version, keyring.pepper, development=keyring.development)


def compare_kek_check_values(
    keyring: Keyring, recorded: Mapping[int, int], *, then: str = RUN_AGAIN
) -> dict[int, int]:
    """Compare the keyring with the check values the store recorded (``{version: value}``).

    Refuses (``KekCheckMismatch``) a keyring holding a version under another key than the one the
    store recorded for that number, naming the versions (never a key byte or check value) and
    what to do: copy the right keyring file over this one, ``then`` (what follows: by default,
    run the command again). Otherwise returns the check values of the held versions the store
    has none for, ascending: what the caller records. A version the store records and the
    keyring lacks is not this comparison's business (items sealed under it show as sealed under
    a missing version). The pepper is compared the same way, under ``PEPPER_CHECK``: a keyring
    with the store's keys but another pepper would refuse every API key and admin token, and
    hash new ones so that they never work with the right keyring back.
    """
    own = keyring.kek_check_values()
    differ = [
        v
        for v, value in own.items()
        if v != PEPPER_CHECK and v in recorded and recorded[v] != value
    ]
    if not differ and recorded.get(PEPPER_CHECK, own[PEPPER_CHECK]) != own[PEPPER_CHECK]:
        raise KekCheckMismatch(
            "This keyring's pepper is not the one the database's API keys and admin tokens are "
            "hashed with: copy the keyring file of another instance of this database here (over "
            f"this one), {then}"
        )
    if differ:
        listed = ", ".join(str(v) for v in differ)
        if len(differ) == 1:
            which = f"version {listed} is another key than the database's version {listed}"
            adder = f"the instance that added version {listed}"
        else:
            which = f"versions {listed} are other keys than the database's versions {listed}"
            adder = "the instance that added them"
        raise KekCheckMismatch(
            f"This keyring's key-encryption key {which}: copy the keyring file of {adder} here "
            f"(over this one), {then}"
        )
    return {v: value for v, value in own.items() if v not in recorded}


def checked_keyring(
    source: KeyringSource, recorded: Mapping[int, int], *, then: str = RUN_AGAIN
) -> Keyring:
    """The keyring a snapshot load opens with: ``source``'s latest (``KeyringSource.latest``),
    refused (``KeyringError``, ``compare_kek_check_values``) when it holds another key under a
    version the store records (``recorded``, read by the caller just before:
    ``DeploymentReader.kek_check_values``, one small read). A version the store does not record
    yet is not refused, nor recorded: a load writes nothing (a unit of work that writes records
    it in its own transaction before it seals anything under it,
    ``services.kek_check_values.recorded_keyring``; ``keyring add-version`` records its version,
    then writes the file). ``then``: what the refusal says follows the fix
    (``compare_kek_check_values``)."""
    keyring = source.latest(recorded)
    compare_kek_check_values(keyring, recorded, then=then)
    return keyring


def require_keyring(keyring: Keyring | None, environment: Environment) -> Keyring:
    """The startup check: a keyring must exist, and prod refuses a placeholder one."""
    if keyring is None:
        if environment is Environment.PROD:
            raise KeyringMissing(
                "No keyring: prod needs a provisioned one, in the data directory's keyring.json "
                "(mode 0600) or given as UID2_KEYRING or UID2_KEYRING_FILE; init never creates "
                "one in prod (its format: docs/credentials.md, The keyring)"
            )
        raise KeyringMissing(
            "No keyring: set UID2_KEYRING or UID2_KEYRING_FILE, or run init to create one"
        )
    if environment is Environment.PROD and keyring.is_placeholder:
        raise PlaceholderKeyring(
            "The keyring is a development or placeholder keyring; prod needs a generated one"
        )
    return keyring


class ClientSecret:
    """A client secret in the clear: 32 bytes, shown to its holder as standard base64."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != SECRET_SIZE:
            raise SealedSecretUnreadable(f"A client secret is {SECRET_SIZE} bytes")
        self._raw = bytes(raw)

    @property
    def raw(self) -> bytes:
        """The AES-256-GCM key of the request envelope."""
        return self._raw

    @property
    def text(self) -> str:
        """Standard padded base64, the form every UID2 SDK takes."""
        return b64encode(self._raw)

    def __repr__(self) -> str:
        return "ClientSecret(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClientSecret):
            return NotImplemented
        return self._raw == other._raw

    def __hash__(self) -> int:
        return hash(self._raw)


def new_client_secret(random: RandomBytes) -> ClientSecret:
    return ClientSecret(random(SECRET_SIZE))


def seal_secret(
    keyring: Keyring, key_id: str, secret: ClientSecret, random: RandomBytes, now_ms: int
) -> SealedSecret:
    """Seal under the active KEK with ``key_id`` as AAD. The store assigns ``secret_id``."""
    version = keyring.active_version
    return SealedSecret(
        secret_id=UNASSIGNED_SECRET_ID,
        key_id=key_id,
        kek_version=version,
        ciphertext=aead.seal(keyring.kek(version), secret.raw, random, key_id.encode("utf-8")),
        created_at_ms=now_ms,
    )


def open_secret(keyring: Keyring, sealed: SealedSecret) -> ClientSecret:
    """Open a sealed secret; a wrong key id, KEK version or tampered ciphertext does not open."""
    try:
        kek = keyring.kek(sealed.kek_version)
    except KeyringError as exc:
        raise SealedSecretUnreadable(exc.detail) from exc
    try:
        raw = aead.open_(kek, sealed.ciphertext, sealed.key_id.encode("utf-8"))
    except aead.AeadFailure:
        raise SealedSecretUnreadable(
            f"The sealed secret {sealed.secret_id} of {sealed.key_id} does not open"
        ) from None
    return ClientSecret(raw)


def needs_reseal(keyring: Keyring, sealed: SealedSecret) -> bool:
    return sealed.kek_version != keyring.active_version


def reseal_secret(keyring: Keyring, sealed: SealedSecret, random: RandomBytes) -> SealedSecret:
    """KEK rotation, step 2: the same secret sealed again under the active version."""
    secret = open_secret(keyring, sealed)
    version = keyring.active_version
    return replace(
        sealed,
        kek_version=version,
        ciphertext=aead.seal(keyring.kek(version), secret.raw, random, sealed.key_id.encode()),
    )
