"""KEK rotation as an administrator runs it: see what is sealed under which key-encryption key
version, add a version (active at once, or inactive then activated), re-seal everything under the
active one, drop a version nothing needs.

Everything secret at rest is sealed under a versioned key-encryption key (KEK) from the keyring:
client secrets (``domain.sealing``), and the material of ``domain.material_sealing`` (encryption
keys, the salt table's first-level salt and bucket-id secret, the salt chunks, client-side private
keys). The keyring lives outside the store, in a file or in the UID2_KEYRING variable, so the two
can drift apart, and one drift loses data for good: a version removed from the keyring while
items are still sealed under it. Nothing opens those items again, and every snapshot load fails
on them. So the use cases here count the store before they change the keyring, and do both in one
write unit of work: the store's write lock is held from the count until the new keyring is
written beside the file, and no other writer can seal anything in between; the new keyring
replaces the file only once the unit of work has committed, so the file never holds a change the
store did not record (``_keyring_write``). (A running ``serve`` follows the keyring file: each of
its processes takes up the new keyring within about a second and seals under the new active
version from then on. Whatever it sealed under the old one just before is still counted, so
``drop_version`` refuses until ``reseal`` has moved that too.)

- ``status``: the keyring's versions (numbers only, never key bytes or the pepper) and, for every
  version the keyring holds or the store names, how many items of each kind are sealed under it.
  A version the store names but the keyring lacks is shown as such: it is the error condition.
- ``add_version``: a new random version becomes active. It is numbered above every version the
  keyring holds, every version the store still names *and* every version any keyring file on
  the store was ever given (the store records the highest, in the same unit of work), so a
  version number never comes back with another key: not one lost from the keyring (its items
  would then fail to open as if tampered with, instead of showing as sealed under a missing
  version), nor one another keyring file added inactive, which seals nothing. Older versions
  stay, so old seals open. With ``activate=False`` the version is added inactive: nothing is
  sealed under it yet, so the keyring file can first be copied to every other keyring file
  (each data directory, on this machine or another) whose processes must open what will be
  sealed under it.
  Refused, as ``activate_version`` is, while the store names a version this keyring lacks, and
  when the new number would be above the highest a keyring can hold
  (``domain.sealing.MAX_KEK_VERSION``).
- ``activate_version``: a version the keyring holds becomes the active one (nothing to do when it
  already is). Refused, as ``reseal`` is, while the store names a version this keyring lacks:
  another keyring file is then ahead of this one, and it most likely lacks the version activated
  here, so what this one sealed under it would stop that file's processes too.
- ``reseal``: every item not under the active version is opened and sealed again under it, all
  in one unit of work: either every item moves or none does. The plaintexts do not change: API
  keys keep their secrets, issued tokens keep decrypting, raw UIDs stay the same. The store's
  change sequence moves once, as after any change, and workers reload; a reload finds the same
  secrets, salts and keys. A second run finds nothing to do and changes nothing.
- ``drop_version``: refused while anything is sealed under the version, and for the active one.

Every step, ``status`` included, first compares the keyring with the check values the store
records per version (``domain.sealing.compare_kek_check_values``) and refuses, before any write,
a keyring holding another key under a version number the store knows: another keyring file
added that version, and this file's copy of it is not that key. ``add_version`` records the new
version's check value in its unit of work (with those of any held version the store has none
for), and numbers the new version above every version with a recorded check value too.
``activate_version`` (when it changes the active version) and ``reseal`` record those of the
held versions the store has none for in theirs, as every use case that writes does
(``services.kek_check_values``): what is sealed from then on goes under the active version, and
a keyring file copied from another instance may hold it unrecorded here. ``drop_version`` and
``status`` seal nothing and record nothing.

Each change writes one audit event in its unit of work, with version numbers and counts only.
Reading and writing the keyring belong to the composition root (``bootstrap``); the use cases see
it through a ``KeyringHolder``. A keyring given in the environment cannot be written: adding or
dropping a version is then refused with what to provision instead.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final, Protocol

from uid2_operator.clock import Clock
from uid2_operator.domain.keypairs import PRIVATE_KEY_LABEL
from uid2_operator.domain.material_sealing import (
    ENCRYPTION_KEY_LABEL,
    FIRST_LEVEL_SALT_LABEL,
    ID_SECRET_LABEL,
    SALT_CHUNK_LABEL,
    reseal_material,
)
from uid2_operator.domain.salts import SaltHeader
from uid2_operator.domain.sealing import (
    Keyring,
    activate_kek_version,
    add_kek_version,
    compare_kek_check_values,
    drop_kek_version,
    next_kek_version,
    reseal_secret,
)
from uid2_operator.errors import InvalidInput, KeyringError, StoreError
from uid2_operator.services.audit_trail import record_event
from uid2_operator.services.context import SYSTEM, Actor
from uid2_operator.services.kek_check_values import (
    recorded_keyring,
)
from uid2_operator.storage.interface import KekVersionCounts, ReadTx, Store, Tx
from uid2_operator.wire.aead import RandomBytes

logger = logging.getLogger(__name__)

KEYRING_TARGET: Final = "keyring"
"""The audit target type of the keyring's events (the target id is a version number)."""
ADD_VERSION_ACTION: Final = "keyring.version.add"
ACTIVATE_VERSION_ACTION: Final = "keyring.version.activate"
RESEAL_ACTION: Final = "keyring.reseal"
DROP_VERSION_ACTION: Final = "keyring.version.drop"
RESEAL_COMMAND: Final = "uid2-operator keyring reseal"
ACTIVATE_COMMAND: Final = "uid2-operator keyring activate-version"


class KeyringHolder(Protocol):
    """Where the keyring is read from and written to (``bootstrap.ConfiguredKeyring``)."""

    @property
    def source(self) -> str:
        """The keyring file's path, or ``"environment"`` for one given as UID2_KEYRING."""
        ...

    @property
    def writable(self) -> bool:
        """False for a keyring from the environment: no command can rewrite it."""
        ...

    def load(self) -> Keyring:
        """The keyring as it is now, under the same rules as every other command."""
        ...

    def stage(self, keyring: Keyring) -> StagedKeyring:
        """Write ``keyring`` where nothing reads it yet (beside the file), ready to replace the
        keyring atomically; raises, with nothing left behind, when it cannot be written."""
        ...

    def locked(self) -> AbstractContextManager[None]:
        """Hold the keyring for one change, from before it is read until the new one is in
        place: another change (in this process or another, through the same file) waits."""
        ...


@dataclass(frozen=True, slots=True)
class StagedKeyring:
    """A keyring written where nothing reads it yet: ``publish`` puts it in place of the keyring
    (atomically), ``discard`` removes it."""

    publish: Callable[[], None]
    discard: Callable[[], None]


class _Staging:
    """Where a keyring change puts its new keyring (``_keyring_write``)."""

    def __init__(self, holder: KeyringHolder) -> None:
        self._holder = holder
        self.staged: StagedKeyring | None = None

    def stage(self, keyring: Keyring) -> None:
        self.staged = self._holder.stage(keyring)


@contextmanager
def _keyring_write(holder: KeyringHolder) -> Iterator[_Staging]:
    """A keyring change's file write, split around its unit of work. Entered before the write
    transaction (so it is left after it): ``stage`` writes the new keyring beside the file
    within the unit of work, so a file that cannot be written refuses the change before
    anything commits; leaving the block puts it in place once the unit of work has committed,
    and removes it when anything failed, the commit included. So the keyring file never holds
    a change the store did not record: no version number the store has not reserved, no drop
    without the store's record of it (``refuse_dropped_active_version``).

    The keyring is held (``KeyringHolder.locked``) for the whole block, taken before the store's
    write lock: the store's lock is released at the commit, before the rename, and another
    change that read the file in between would put back what this one changed (a version added
    and perhaps already sealed under, lost for good). Changes of the keyring take the two locks
    in that order; nothing else takes the keyring's."""
    with holder.locked():
        write = _Staging(holder)
        try:
            yield write
        except BaseException:
            if write.staged is not None:
                write.staged.discard()
            raise
        if write.staged is not None:
            write.staged.publish()


# ------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class SealedCounts:
    """How many items of each kind are sealed under one KEK version (or were just re-sealed).

    The field names are the kinds, as ``to_json`` prints them: ``client_secrets`` (rows of
    ``client_secrets``, retired ones not yet purged included), ``encryption_keys`` (every key,
    expired ones included), ``salt_table`` (the first-level salt and the bucket-id secret: two
    items), ``salt_chunks`` and ``keypairs`` (client-side private keys).
    """

    client_secrets: int = 0
    encryption_keys: int = 0
    salt_table: int = 0
    salt_chunks: int = 0
    keypairs: int = 0

    @property
    def total(self) -> int:
        return sum(self.to_json().values())

    def to_json(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def describe(self) -> str:
        """``"5 items (client_secrets 3, salt_table 2)"``: the total and the kinds with items."""
        parts = ", ".join(f"{kind} {count}" for kind, count in self.to_json().items() if count)
        total = self.total
        return f"{total} item{'' if total == 1 else 's'}" + (f" ({parts})" if parts else "")


SEALED_KINDS: Final = tuple(f.name for f in fields(SealedCounts))
"""The kinds of sealed item, in the order every output lists them."""


@dataclass(frozen=True, slots=True)
class VersionUse:
    """One KEK version: whether the keyring holds it, whether it is active, what it seals."""

    version: int
    in_keyring: bool
    active: bool
    sealed: SealedCounts

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "in_keyring": self.in_keyring,
            "active": self.active,
            "sealed": self.sealed.to_json(),
            "total": self.sealed.total,
        }


@dataclass(frozen=True, slots=True)
class KeyringStatus:
    """The keyring (versions only) beside what the store has sealed under each version.

    ``versions`` lists every version the keyring holds or the store names, ascending.
    """

    source: str
    development: bool
    active_version: int
    keyring_versions: tuple[int, ...]
    versions: tuple[VersionUse, ...]
    active_version_dropped: bool = False
    """Another instance of the database dropped the active version: this file was not replaced
    by that instance's, and nothing may be sealed through it (every write is refused)."""

    @property
    def unknown_versions(self) -> tuple[int, ...]:
        """Versions items are sealed under that the keyring lacks: those items cannot open."""
        return tuple(use.version for use in self.versions if not use.in_keyring)

    def describe_unknown(self) -> str | None:
        """``"version 3: 2 items (client_secrets 2)"`` for each version items are sealed under
        that the keyring lacks; None when there is none."""
        missing = [
            f"version {use.version}: {use.sealed.describe()}"
            for use in self.versions
            if not use.in_keyring
        ]
        return "; ".join(missing) or None

    @property
    def to_reseal(self) -> int:
        """Items not under the active version: what ``reseal`` would move."""
        return sum(use.sealed.total for use in self.versions if not use.active)

    def use_of(self, version: int) -> VersionUse | None:
        return next((use for use in self.versions if use.version == version), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "development": self.development,
            "active_version": self.active_version,
            "keyring_versions": list(self.keyring_versions),
            "versions": [use.to_json() for use in self.versions],
            "unknown_versions": list(self.unknown_versions),
            "to_reseal": self.to_reseal,
            "active_version_dropped": self.active_version_dropped,
        }


@dataclass(frozen=True, slots=True)
class ResealResult:
    """What one ``reseal`` moved: counts per kind, and the versions they moved from."""

    at_ms: int
    active_version: int
    from_versions: tuple[int, ...]
    resealed: SealedCounts = field(default_factory=SealedCounts)

    def to_json(self) -> dict[str, Any]:
        return {
            "at_ms": self.at_ms,
            "active_version": self.active_version,
            "from_versions": list(self.from_versions),
            "resealed": self.resealed.to_json(),
            "total": self.resealed.total,
        }


@dataclass(frozen=True, slots=True)
class VersionChange:
    """A version added to or dropped from the keyring, and the keyring's versions after."""

    at_ms: int
    version: int
    active_version: int
    keyring_versions: tuple[int, ...]
    source: str

    @property
    def active(self) -> bool:
        """Whether the version is the active one after the change (a version added inactive,
        or one dropped, is not)."""
        return self.version == self.active_version

    def to_json(self) -> dict[str, Any]:
        return {
            "at_ms": self.at_ms,
            "version": self.version,
            "active_version": self.active_version,
            "keyring_versions": list(self.keyring_versions),
            "source": self.source,
            "active": self.active,
        }


@dataclass(frozen=True, slots=True)
class Activation:
    """A version made the active one: the version active before, and whether anything changed
    (not when the version already was active)."""

    at_ms: int
    version: int
    previous_version: int
    keyring_versions: tuple[int, ...]
    source: str

    @property
    def changed(self) -> bool:
        return self.version != self.previous_version

    def to_json(self) -> dict[str, Any]:
        return {
            "at_ms": self.at_ms,
            "version": self.version,
            "active_version": self.version,
            "keyring_versions": list(self.keyring_versions),
            "source": self.source,
            "active": True,
            "previous_active_version": self.previous_version,
            "changed": self.changed,
        }


# ------------------------------------------------------------------------------- counting


def _header_counts(header: SaltHeader | None) -> KekVersionCounts:
    if header is None:
        return {}
    return dict(Counter((header.first_level_salt.kek_version, header.id_secret.kek_version)))


def sealed_inventory(tx: ReadTx) -> dict[int, SealedCounts]:
    """``{kek_version: SealedCounts}`` for every version the store names, ascending."""
    per_kind: dict[str, KekVersionCounts] = {
        "client_secrets": tx.secrets.count_by_kek_version(),
        "encryption_keys": tx.encryption_keys.count_by_kek_version(),
        "salt_table": _header_counts(tx.salts.header()),
        "salt_chunks": tx.salts.count_chunks_by_kek_version(),
        "keypairs": tx.keypairs.count_by_kek_version(),
    }
    versions = sorted({version for counts in per_kind.values() for version in counts})
    return {
        version: SealedCounts(**{kind: counts.get(version, 0) for kind, counts in per_kind.items()})
        for version in versions
    }


def keyring_status(
    keyring: Keyring,
    source: str,
    inventory: dict[int, SealedCounts],
    dropped: frozenset[int] = frozenset(),
) -> KeyringStatus:
    versions = sorted(set(keyring.versions) | set(inventory))
    return KeyringStatus(
        active_version_dropped=keyring.active_version in dropped,
        source=source,
        development=keyring.development,
        active_version=keyring.active_version,
        keyring_versions=keyring.versions,
        versions=tuple(
            VersionUse(
                version=version,
                in_keyring=version in keyring.versions,
                active=version == keyring.active_version,
                sealed=inventory.get(version, SealedCounts()),
            )
            for version in versions
        ),
    )


def _unwritable(provision: str) -> InvalidInput:
    """The refusal to change a keyring given in UID2_KEYRING, with what to provision there."""
    return InvalidInput(
        "The keyring comes from UID2_KEYRING and cannot be written here: provision keyring JSON "
        f"there {provision}"
    )


# ------------------------------------------------------------------------------- service


class KeyringRotationService:
    """The steps of KEK rotation and the status that guides them (see the module doc)."""

    def __init__(
        self, store: Store, keyring: KeyringHolder, clock: Clock, random: RandomBytes
    ) -> None:
        self._store = store
        self._holder = keyring
        self._clock = clock
        self._random = random

    def status(self) -> KeyringStatus:
        """The keyring's versions and what is sealed under each, from one read unit of work."""
        keyring = self._holder.load()
        with self._store.read() as rx:
            compare_kek_check_values(keyring, rx.deployment.kek_check_values())
            inventory = sealed_inventory(rx)
            dropped = rx.deployment.dropped_kek_versions()
        return keyring_status(keyring, self._holder.source, inventory, dropped)

    def add_version(self, actor: Actor = SYSTEM, *, activate: bool = True) -> VersionChange:
        """Step 1: a new random version written to the keyring file, active at once unless
        ``activate`` is False (then ``activate_version`` makes it active, once the file has
        reached every other keyring file).

        Numbered one above the highest of: the versions this keyring holds, those the store
        names, the highest the store records as given to any keyring file on it, and those it
        records a check value for; the store records the new number, and the new version's
        check value, in the same unit of work. Refused (KeyringError), changing nothing: for a
        keyring holding another key under a version the store records a check value for; while
        items are sealed under a version the keyring lacks (as ``activate_version``: another
        keyring file is ahead of this one, and a version added to this one, active or not, only
        widens the drift); and when the new number would be above ``MAX_KEK_VERSION``. A
        keyring from the environment cannot be written (InvalidInput, saying what to provision
        there): the number it names is reserved all the same, so that another keyring file's
        ``add_version`` never gives it out again with another key."""
        unwritable: InvalidInput | None = None
        with _keyring_write(self._holder) as write, self._store.transaction() as tx:
            now = self._clock.now_ms()
            keyring = self._holder.load()
            recorded = tx.deployment.kek_check_values()
            compare_kek_check_values(keyring, recorded)
            inventory = sealed_inventory(tx)
            self._refuse_unknown_versions(
                keyring,
                inventory,
                ", so another keyring file is ahead of this one; copy it over this one, then "
                "add the version",
            )
            reserved = tx.deployment.highest_kek_version()
            version = next_kek_version(max((*keyring.versions, *inventory, reserved, *recorded)))
            # Taken for good, even if this version is dropped later or never provisioned: under
            # the write lock, so another keyring file adding a version next is numbered above it.
            tx.deployment.reserve_kek_version(version)
            if not self._holder.writable:
                then = (
                    f"as active_kek_version, restart, then run {RESEAL_COMMAND}"
                    if activate
                    else f"keeping active_kek_version {keyring.active_version}, then restart"
                )
                unwritable = _unwritable(
                    f"with version {version} added (32 random bytes, base64) {then}"
                )
            else:
                updated = add_kek_version(keyring, self._random, version=version, activate=activate)
                tx.deployment.record_kek_check_values(compare_kek_check_values(updated, recorded))
                added = {"kek_version": version} | ({} if activate else {"active": False})
                change = self._save_change(
                    tx,
                    write,
                    actor=actor,
                    now=now,
                    updated=updated,
                    version=version,
                    action=ADD_VERSION_ACTION,
                    before=None,
                    after=added,
                )
        if unwritable is not None:  # raised once the reservation has committed
            raise unwritable
        logger.info(
            "keyring version added version=%d active=%s actor=%s",
            version,
            "yes" if activate else "no",
            actor.id,
        )
        return change

    def activate_version(self, version: int, actor: Actor = SYSTEM) -> Activation:
        """Make ``version``, which the keyring file holds, the active one: new items are sealed
        under it from then on, so the store records the check values of the held versions it has
        none for with the change. Nothing changes (no write, no audit event) when it already is.

        Refused, changing nothing: for a keyring holding another key under a version the store
        records a check value for (KeyringError), for a version the keyring does not hold
        (InvalidInput, naming the versions it holds), while items are sealed under a version the
        keyring lacks (KeyringError, as ``reseal``: another keyring file is ahead of this one),
        and for a keyring from the environment (InvalidInput, with what to provision instead).
        """
        if isinstance(version, bool) or not isinstance(version, int):
            raise InvalidInput("The version must be an integer")
        with _keyring_write(self._holder) as write, self._store.transaction() as tx:
            now = self._clock.now_ms()
            keyring = self._holder.load()
            recorded = tx.deployment.kek_check_values()
            compare_kek_check_values(keyring, recorded)
            previous = keyring.active_version
            if version not in keyring.versions:
                held = ", ".join(str(v) for v in keyring.versions)
                raise InvalidInput(
                    f"The keyring has no key-encryption key version {version} (it holds {held}); "
                    "copy the keyring file that holds it here"
                )
            if version in tx.deployment.dropped_kek_versions():
                # Whether or not this file has it active already: what it sealed, no
                # up-to-date instance could open.
                raise KeyringError(
                    f"Key-encryption key version {version} was dropped from the keyring of "
                    "another instance of this database: copy that instance's keyring file here "
                    "(over this one); the version it has active is the one to use"
                )
            if version == previous:
                return Activation(now, version, previous, keyring.versions, self._holder.source)
            self._refuse_unknown_versions(
                keyring,
                sealed_inventory(tx),
                ", so another keyring file is ahead of this one; copy it over this one, then "
                "activate",
            )
            if not self._holder.writable:
                raise _unwritable(
                    f"with active_kek_version {version}, restart, then run {RESEAL_COMMAND}"
                )
            updated = activate_kek_version(keyring, version)
            # What is sealed from now on goes under ``version``: recorded with this change.
            tx.deployment.record_kek_check_values(compare_kek_check_values(updated, recorded))
            record_event(
                tx,
                actor,
                at_ms=now,
                action=ACTIVATE_VERSION_ACTION,
                target_type=KEYRING_TARGET,
                target_id=str(version),
                before={"active_kek_version": previous},
                after={"active_kek_version": version},
            )
            write.stage(updated)  # last: a refused write rolls the event back
        logger.info(
            "keyring version activated version=%d previous=%d actor=%s", version, previous, actor.id
        )
        return Activation(now, version, previous, updated.versions, self._holder.source)

    def reseal(self, actor: Actor = SYSTEM) -> ResealResult:
        """Step 2: every item not under the active version, sealed again under it, all at once.
        The store records the check values of the held versions it has none for first, in the
        same unit of work (``recorded_keyring``).

        Refused, changing nothing, for a keyring holding another key under a version the store
        records a check value for, and while items are sealed under a version the keyring lacks
        (they cannot be opened; the message names the versions and what they seal).
        """
        with self._store.transaction() as tx:
            now = self._clock.now_ms()
            keyring = recorded_keyring(tx, self._holder.load())
            # Client secrets no request can be sealed with again are deleted, not carried over
            # to the new version: re-sealing often follows a suspected leak of the old one.
            tx.secrets.purge_retired(now)
            inventory = sealed_inventory(tx)
            self._refuse_unknown_versions(
                keyring, inventory, "; put those versions back into the keyring, then re-seal"
            )
            active = keyring.active_version
            from_versions = tuple(
                version
                for version, counts in inventory.items()
                if version != active and counts.total
            )
            if not from_versions:
                return ResealResult(now, active, ())
            resealed = self._reseal_all(tx, keyring)
            expected = SealedCounts(
                **{
                    kind: sum(getattr(inventory[v], kind) for v in from_versions)
                    for kind in SEALED_KINDS
                }
            )
            if resealed != expected:  # the write lock is held: the store cannot have moved
                raise StoreError(
                    f"Re-sealing moved {resealed.describe()}, not the {expected.describe()} "
                    "counted; nothing was changed"
                )
            record_event(
                tx,
                actor,
                at_ms=now,
                action=RESEAL_ACTION,
                target_type=KEYRING_TARGET,
                target_id=str(active),
                after={
                    "kek_version": active,
                    "from_versions": list(from_versions),
                    "resealed": resealed.to_json(),
                    "total": resealed.total,
                },
            )
        logger.info(
            "sealed items moved to keyring version=%d items=%d from=%s actor=%s",
            active,
            resealed.total,
            ",".join(str(v) for v in from_versions),
            actor.id,
        )
        return ResealResult(now, active, from_versions, resealed)

    def _refuse_unknown_versions(
        self, keyring: Keyring, inventory: dict[int, SealedCounts], advice: str
    ) -> None:
        """KeyringError while items are sealed under a version ``keyring`` lacks: the message
        names those versions and what they seal, followed by ``advice``."""
        missing = keyring_status(keyring, self._holder.source, inventory).describe_unknown()
        if missing is not None:
            raise KeyringError(
                f"Items are sealed under key-encryption key versions the keyring lacks ({missing})"
                + advice
            )

    def _reseal_all(self, tx: Tx, keyring: Keyring) -> SealedCounts:
        active = keyring.active_version
        rand = self._random
        secrets = 0
        for secret in tx.secrets.list_not_sealed_under(active):
            tx.secrets.update(reseal_secret(keyring, secret, rand))
            secrets += 1
        keys = 0
        for key in tx.encryption_keys.list_not_sealed_under(active):
            tx.encryption_keys.reseal(
                key.id, reseal_material(keyring, ENCRYPTION_KEY_LABEL, key.id, key.secret, rand)
            )
            keys += 1
        header_items = 0
        header = tx.salts.header()
        if header is not None:
            first_level_salt, id_secret = header.first_level_salt, header.id_secret
            if first_level_salt.kek_version != active:
                first_level_salt = reseal_material(
                    keyring, FIRST_LEVEL_SALT_LABEL, 0, first_level_salt, rand
                )
                header_items += 1
            if id_secret.kek_version != active:
                id_secret = reseal_material(keyring, ID_SECRET_LABEL, 0, id_secret, rand)
                header_items += 1
            if header_items:
                # Same version and times: the salts did not change, only how they are sealed.
                tx.salts.put_header(
                    replace(header, first_level_salt=first_level_salt, id_secret=id_secret)
                )
        chunks = 0
        for number in tx.salts.chunk_numbers_not_sealed_under(active):
            # One chunk in memory at a time: a production chunk is over a megabyte.
            chunk = tx.salts.get_chunk(number)
            if chunk is None:  # listed a moment ago under the same write lock
                raise StoreError(f"Salt chunk {number} vanished while re-sealing")
            salts = reseal_material(keyring, SALT_CHUNK_LABEL, number, chunk.salts, rand)
            tx.salts.put_chunks([replace(chunk, salts=salts)])
            chunks += 1
        keypairs = 0
        for keypair in tx.keypairs.list_not_sealed_under(active):
            tx.keypairs.reseal(
                keypair.subscription_id,
                reseal_material(
                    keyring,
                    PRIVATE_KEY_LABEL,
                    keypair.subscription_id,
                    keypair.sealed_private_key,
                    rand,
                ),
            )
            keypairs += 1
        return SealedCounts(secrets, keys, header_items, chunks, keypairs)

    def drop_version(self, version: int, actor: Actor = SYSTEM) -> VersionChange:
        """Step 3: remove ``version`` from the keyring file once nothing is sealed under it.

        Refused (InvalidInput, changing nothing) for a version the keyring does not hold, for the
        active version, while anything in the store is sealed under it (the message names what,
        and says to re-seal first), and for a keyring from the environment; and (KeyringError)
        for a keyring holding another key under a version the store records a check value for.
        """
        if isinstance(version, bool) or not isinstance(version, int):
            raise InvalidInput("The version must be an integer")
        with _keyring_write(self._holder) as write, self._store.transaction() as tx:
            now = self._clock.now_ms()
            keyring = self._holder.load()
            compare_kek_check_values(keyring, tx.deployment.kek_check_values())
            held = ", ".join(str(v) for v in keyring.versions)
            if version not in keyring.versions:
                raise InvalidInput(
                    f"The keyring has no key-encryption key version {version} (it holds {held})"
                )
            if version == keyring.active_version:
                raise InvalidInput(
                    f"Version {version} is the active key-encryption key version and cannot be "
                    "dropped: add a new version, re-seal, then drop this one"
                )
            sealed = sealed_inventory(tx).get(version, SealedCounts())
            if sealed.total:
                raise InvalidInput(
                    f"Version {version} still seals {sealed.describe()}; dropping it would make "
                    f"them unreadable. Run {RESEAL_COMMAND} first"
                )
            if not self._holder.writable:
                raise _unwritable(f"without version {version}, then restart")
            updated = drop_kek_version(keyring, version)
            tx.deployment.record_dropped_kek_version(version, now)
            dropped = {"kek_version": version}
            change = self._save_change(
                tx,
                write,
                actor=actor,
                now=now,
                updated=updated,
                version=version,
                action=DROP_VERSION_ACTION,
                before=dropped,
                after=None,
            )
        logger.info("keyring version dropped version=%d actor=%s", version, actor.id)
        return change

    def _save_change(
        self,
        tx: Tx,
        write: _Staging,
        *,
        actor: Actor,
        now: int,
        updated: Keyring,
        version: int,
        action: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> VersionChange:
        """Record the audit event of adding or dropping ``version``, then stage ``updated``:
        last, so that a refused write rolls the event back with everything else."""
        record_event(
            tx,
            actor,
            at_ms=now,
            action=action,
            target_type=KEYRING_TARGET,
            target_id=str(version),
            before=before,
            after=after,
        )
        write.stage(updated)
        return VersionChange(
            now, version, updated.active_version, updated.versions, self._holder.source
        )
