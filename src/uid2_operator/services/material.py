"""Use cases for the service-held material: keysets and encryption keys, salts, opt-outs.

Like the credential use cases, each public method is one unit of work: the change and its audit
event commit together, and a refusal leaves nothing behind. Secrets (key secrets, salts, the
first-level salt, the bucket-id secret) are sealed under the keyring before they reach the store
and are opened only by ``load_material``, for the operator's in-memory snapshot. The keyring comes
from a ``KeyringSource``, asked once per use case, inside the transaction of a write (or given
by the use case that calls in, so that one unit of work seals and opens with one keyring). A
write compares it with the KEK check values its transaction reads first, and records those of
held versions the store has none for in that transaction (``recorded_keyring``): a keyring
holding another key under a version the store records is refused (``KeyringError``) and nothing
is written.

Sizes: the salt table has ``MaterialConfig.bucket_count`` buckets (the ``UID2_SALT_BUCKETS``
setting: 2^20 in integ and prod, as the reference operator, 2^16 in local, quick to create with
every code path the same). The count is fixed when the table is created: every raw UID depends on
it, so ``initialise`` refuses a configuration asking for another count rather than silently
serving the stored one or re-deriving every identity.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from uid2_operator.clock import Clock
from uid2_operator.domain.keysets import (
    KeyPolicy,
    Keyset,
    SealedKey,
    mint_keys,
    new_keyset_sharing,
    new_site_keyset,
    next_keyset_id,
    open_key,
    plan_purge,
    plan_rotation,
    purge_retention_s,
    reserved_keysets,
    seal_key,
    site_default_keyset,
)
from uid2_operator.domain.optout import (
    BuiltInIdentities,
    OptOutIndex,
    OptOutRecord,
    builtin_identities,
    identity_first_level_hash,
    latest,
)
from uid2_operator.domain.participants import Participant, refuse_surrogates
from uid2_operator.domain.salts import (
    DEFAULT_CHUNK_SIZE,
    SaltHeader,
    SaltTable,
    assemble,
    generate_salt_table,
    open_chunk,
    open_header_secrets,
    rotate,
    seal_chunk,
    seal_header,
)
from uid2_operator.domain.sealing import Keyring, KeyringSource
from uid2_operator.errors import (
    IdentityInputError,
    InvalidInput,
    KekVersionMissing,
    KeyringError,
    NotFound,
)
from uid2_operator.services.audit_trail import record_event
from uid2_operator.services.context import SYSTEM, Actor
from uid2_operator.services.kek_check_values import recorded_keyring
from uid2_operator.storage.interface import ReadTx, Store, Tx
from uid2_operator.wire.aead import RandomBytes
from uid2_operator.wire.encoding import b64encode
from uid2_operator.wire.identity import InputKind
from uid2_operator.wire.keys import MASTER_KEYSET_ID, EncryptionKey
from uid2_operator.wire.raw_uid import (
    PRODUCTION_BUCKET_COUNT,
    IdentityEnvironment,
    bucket_index,
    current_raw_uid,
)
from uid2_operator.wire.scope import IdentityScope, IdentityType

logger = logging.getLogger(__name__)

DEFAULT_SALT_FRACTION = 0.05
NOT_INITIALISED = "The encryption material is not initialised; run uid2-operator init first"


@dataclass(frozen=True, slots=True)
class MaterialConfig:
    """How much material to make and how to rotate it (see the module docstring for sizes).

    ``expired_key_retention_s``: how long past its expiry ``rotate_keys`` keeps a key before
    deleting it (``domain.keysets.plan_purge``); None keeps every key. The settings compute it
    from the token lifetimes (``ServeSettings.key_retention_s``), which only they know. A purge
    keeps keys longer when the store has recorded a longer token lifetime
    (``record_token_lifetime``; ``domain.keysets.purge_retention_s``).
    """

    bucket_count: int = PRODUCTION_BUCKET_COUNT
    chunk_size: int = DEFAULT_CHUNK_SIZE
    key_policy: KeyPolicy = field(default_factory=KeyPolicy)
    id_prefix: str = ""
    identity_scope: IdentityScope = IdentityScope.UID2
    identity_v3: bool = False
    expired_key_retention_s: int | None = None

    def __post_init__(self) -> None:
        retention = self.expired_key_retention_s
        if retention is not None and (
            isinstance(retention, bool) or not isinstance(retention, int) or retention < 0
        ):
            raise InvalidInput("The expired key retention must be a whole number of seconds")


# ------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A created encryption key, without its secret (times in epoch seconds)."""

    key_id: int
    keyset_id: int
    site_id: int
    created: int
    activates: int
    expires: int

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "keyset_id": self.keyset_id,
            "site_id": self.site_id,
            "created": self.created,
            "activates": self.activates,
            "expires": self.expires,
        }


def _keyset_json(keyset: Keyset) -> dict[str, Any]:
    return {
        "keyset_id": keyset.keyset_id,
        "site_id": keyset.site_id,
        "name": keyset.name,
        "enabled": keyset.enabled,
        "is_default": keyset.is_default,
        "sharing": keyset.sharing.value,
        "allowed_sites": sorted(keyset.allowed_sites),
        "created_at_ms": keyset.created_at_ms,
    }


@dataclass(frozen=True, slots=True)
class KeyRotationResult:
    """What a rotation run did: keys created, keysets created, and keys purged (deleted long
    past their expiry, see ``MaterialConfig.expired_key_retention_s``). ``retention_s``: the
    retention the purge used (the configured one, or longer when the store recorded a longer
    token lifetime); None when the configuration purges nothing."""

    at_ms: int
    created: tuple[KeyInfo, ...]
    keysets_created: tuple[Keyset, ...] = ()
    purged: tuple[KeyInfo, ...] = ()
    retention_s: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "at_ms": self.at_ms,
            "created": [k.to_json() for k in self.created],
            "keysets_created": [_keyset_json(k) for k in self.keysets_created],
            "purged": [k.to_json() for k in self.purged],
            "retention_s": self.retention_s,
        }


@dataclass(frozen=True, slots=True)
class InitialiseResult:
    """What ``initialise`` had to create; all empty (and ``salts_created`` False) on a rerun."""

    at_ms: int
    keysets_created: tuple[Keyset, ...]
    keys_created: tuple[KeyInfo, ...]
    salts_created: bool
    bucket_count: int

    @property
    def changed(self) -> bool:
        return bool(self.keysets_created or self.keys_created or self.salts_created)

    def to_json(self) -> dict[str, Any]:
        return {
            "at_ms": self.at_ms,
            "keysets_created": [_keyset_json(k) for k in self.keysets_created],
            "keys_created": [k.to_json() for k in self.keys_created],
            "salts_created": self.salts_created,
            "bucket_count": self.bucket_count,
        }


@dataclass(frozen=True, slots=True)
class SaltRotationResult:
    at_ms: int
    fraction: float
    rotated: int
    bucket_count: int
    version: int
    chunks_rewritten: int
    effective_at_ms: int | None = None
    """When the rotated buckets' new salts take effect (the first UTC midnight more than an hour
    after ``at_ms``: ``domain.salts.rotation_effective_at``); None when no bucket rotated."""

    def to_json(self) -> dict[str, Any]:
        return {
            "at_ms": self.at_ms,
            "fraction": self.fraction,
            "rotated": self.rotated,
            "bucket_count": self.bucket_count,
            "version": self.version,
            "chunks_rewritten": self.chunks_rewritten,
            "effective_at_ms": self.effective_at_ms,
        }


@dataclass(frozen=True, slots=True)
class OptOutResult:
    """A recorded opt-out. ``advertising_id`` is the raw UID the identity had (base64)."""

    identity_type: str
    timestamp_ms: int
    advertising_id: str | None = field(repr=False)
    already_opted_out: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "identity_type": self.identity_type,
            "timestamp_ms": self.timestamp_ms,
            "advertising_id": self.advertising_id,
            "already_opted_out": self.already_opted_out,
        }


@dataclass(frozen=True, slots=True, eq=False)
class Material:
    """Everything the operator snapshot needs of the material, read in one unit of work.

    ``keys`` hold their secrets in the clear: this object lives in memory only and is never
    logged (its repr shows counts and versions).
    """

    change_seq: int
    keysets: tuple[Keyset, ...]
    keys: tuple[EncryptionKey, ...]
    salts: SaltTable
    optouts: OptOutIndex
    """Every stored opt-out, indexed (iterating it gives the records)."""
    builtins: BuiltInIdentities
    optout_cursor: int = 0
    """Where the next load reads opt-outs from (``OptOutReader.since``); 0: from nothing."""
    optouts_read: int = 0
    """How many opt-out records this load read from the store."""

    def __repr__(self) -> str:
        return (
            f"Material(change_seq={self.change_seq}, keysets={len(self.keysets)}, "
            f"keys={len(self.keys)}, salts={self.salts!r}, optouts={len(self.optouts)}, "
            f"optouts_read={self.optouts_read})"
        )

    __str__ = __repr__


# ------------------------------------------------------------------------------- service


class MaterialService:
    def __init__(
        self,
        store: Store,
        keyring: KeyringSource,
        config: MaterialConfig,
        clock: Clock,
        random: RandomBytes,
    ) -> None:
        self._store = store
        self._keyrings = keyring
        self._config = config
        self._clock = clock
        self._random = random

    @property
    def config(self) -> MaterialConfig:
        return self._config

    # ------------------------------------------------------------------------ set-up

    def initialise(self, actor: Actor = SYSTEM) -> InitialiseResult:
        """Create whatever is missing, idempotently: the master (-1), refresh (-2) and fallback
        publisher (2) keysets, a default keyset for every participant without one, the salt
        table with its first-level salt and bucket-id secret, and an active key in every keyset.

        Refused (KeyringError), changing nothing, when the keyring does not open the store's salt
        table: the store was initialised under another keyring, and whatever this run sealed
        would not open for the processes that use that one.
        """
        with self._store.transaction() as tx:
            now = self._clock.now_ms()
            keyring = recorded_keyring(tx, self._keyrings)
            header = tx.salts.header()
            if header is not None:
                _require_opens(keyring, header)
            keysets = _TxKeysets.read(tx)
            created: list[Keyset] = []
            for keyset in reserved_keysets(now):
                if keysets.get(keyset.keyset_id) is None:
                    created.append(self._add_keyset(tx, keysets, keyset, actor, now))
            created.extend(self._missing_site_keysets(tx, keysets, actor, now))
            salts_created = header is None
            if header is None:
                table = generate_salt_table(
                    self._config.bucket_count, now, self._random, id_prefix=self._config.id_prefix
                )
                size = self._config.chunk_size
                self._write_table(
                    tx,
                    keyring,
                    table,
                    chunk_size=size,
                    chunks=range(table.chunk_count(size)),
                    created_at_ms=now,
                    updated_at_ms=now,
                )
                record_event(
                    tx,
                    actor,
                    at_ms=now,
                    action="salts.create",
                    target_type="salt_table",
                    target_id="current",
                    after={"bucket_count": table.bucket_count, "version": table.version},
                )
                bucket_count = table.bucket_count
            else:
                bucket_count = header.bucket_count
                if bucket_count != self._config.bucket_count:
                    raise InvalidInput(
                        f"The salt table was created with {bucket_count} buckets; the configured "
                        f"count (UID2_SALT_BUCKETS) is {self._config.bucket_count}. The count is "
                        f"fixed once the table exists: set it back to {bucket_count}"
                    )
            keys, _ = self._rotate(tx, keysets, keyring, now, actor)
        if created or keys or salts_created:
            logger.info(
                "material initialised keysets=%d keys=%d salts_created=%s actor=%s",
                len(created),
                len(keys),
                salts_created,
                actor.id,
            )
        return InitialiseResult(now, tuple(created), tuple(keys), salts_created, bucket_count)

    def ensure_site_keyset(self, site_id: int, actor: Actor = SYSTEM) -> Keyset:
        """The participant's default keyset, created (with an active key) if it has none."""
        if isinstance(site_id, bool) or not isinstance(site_id, int):
            raise InvalidInput("site_id must be an integer")
        with self._store.transaction() as tx:
            now = self._clock.now_ms()
            keyring = recorded_keyring(tx, self._keyrings)
            return self.ensure_site_keyset_in(tx, site_id, actor, now, keyring)[0]

    def ensure_site_keyset_in(
        self, tx: Tx, site_id: int, actor: Actor, now_ms: int, keyring: Keyring
    ) -> tuple[Keyset, bool]:
        """``ensure_site_keyset`` inside the caller's transaction, for a use case that needs the
        keyset as part of its own unit of work (the keyset commits, or not, with its change; its
        first key is sealed with the caller's ``keyring``); and whether it was created here."""
        participant = tx.participants.get(site_id)
        if participant is None:
            raise NotFound(f"No participant {site_id}")
        keysets = _TxKeysets.read(tx)
        keyset, is_new = self._site_keyset(tx, keysets, participant, actor, now_ms)
        if is_new:
            self._rotate(tx, keysets, keyring, now_ms, actor, only=keyset.keyset_id)
        return keyset, is_new

    # ------------------------------------------------------------------------ keys

    def rotate_keys(self, now_ms: int | None = None, actor: Actor = SYSTEM) -> KeyRotationResult:
        """Create the keys the schedule asks for at ``now_ms`` (default: the clock's now), then
        delete the keys expired ``MaterialConfig.expired_key_retention_s`` or longer ago, or
        the longest token lifetime the store recorded plus a day when that is longer (read in
        the same transaction; ``domain.keysets.purge_retention_s``).

        In the same transaction, a participant created since the last run gets its default
        keyset (and so its first key). Successors are created before anything is purged, and
        each purged key gets its own ``encryption_key.delete`` audit event. Refused, changing
        nothing, before ``initialise``.
        """
        with self._store.transaction() as tx:
            now = self._clock.now_ms() if now_ms is None else now_ms
            keyring = recorded_keyring(tx, self._keyrings)
            if tx.keysets.get(MASTER_KEYSET_ID) is None:
                raise NotFound(NOT_INITIALISED)
            keysets = _TxKeysets.read(tx)
            new_keysets = self._missing_site_keysets(tx, keysets, actor, now)
            created, keys = self._rotate(tx, keysets, keyring, now, actor)
            retention, purged = self._purge(tx, keysets, keys, now, actor)
        logger.info(
            "encryption keys rotated keysets=%d created=%d purged=%d retention_s=%s actor=%s",
            len(new_keysets),
            len(created),
            len(purged),
            retention,
            actor.id,
        )
        return KeyRotationResult(now, tuple(created), tuple(new_keysets), tuple(purged), retention)

    def record_token_lifetime(self, longest_s: int) -> int:
        """Record in the store that tokens may live ``longest_s`` seconds (the longest lifetime
        ``serve`` issues them with), unless a longer one is recorded already; returns the value
        recorded. One small transaction; nothing is written when the value does not rise.

        Every purge, whichever process runs it, keeps keys at least that long (plus a day) past
        their expiry. No audit event: like the store's other sequence rows, it is bookkeeping
        that follows the settings of the processes, not a change anyone makes to a record.
        """
        if isinstance(longest_s, bool) or not isinstance(longest_s, int) or longest_s <= 0:
            raise InvalidInput("The token lifetime must be a positive whole number of seconds")
        with self._store.transaction() as tx:
            before = tx.encryption_keys.longest_token_lifetime_s()
            recorded = tx.encryption_keys.raise_longest_token_lifetime(longest_s)
        if recorded != before:
            logger.info("longest token lifetime recorded seconds=%d before=%s", recorded, before)
        return recorded

    def _purge(
        self, tx: Tx, keysets: _TxKeysets, keys: Sequence[SealedKey], now: int, actor: Actor
    ) -> tuple[int | None, list[KeyInfo]]:
        """Delete the keys nothing can still need (``plan_purge``) among ``keys`` (every key of
        the store in this transaction, as ``_rotate`` returns them), one audit event each; with
        the retention used (None: this configuration purges nothing)."""
        configured = self._config.expired_key_retention_s
        if configured is None:
            return None, []
        recorded = tx.encryption_keys.longest_token_lifetime_s()
        retention = purge_retention_s(configured, recorded)
        doomed = plan_purge(keys, now, retention)
        if not doomed:
            return retention, []
        tx.encryption_keys.delete(key.id for key in doomed)
        purged: list[KeyInfo] = []
        for key in doomed:
            info = _key_info(key, keysets.site_of(key.keyset_id))
            _record_key_event(tx, actor, now, info, created=False)
            purged.append(info)
        return retention, purged

    def _missing_site_keysets(
        self, tx: Tx, keysets: _TxKeysets, actor: Actor, now: int
    ) -> list[Keyset]:
        """A default keyset for every participant that has none yet (their keys come after)."""
        created: list[Keyset] = []
        for participant in tx.participants.list_all():
            keyset, is_new = self._site_keyset(tx, keysets, participant, actor, now)
            if is_new:
                created.append(keyset)
        return created

    def _rotate(
        self,
        tx: Tx,
        keysets: _TxKeysets,
        keyring: Keyring,
        now: int,
        actor: Actor,
        *,
        only: int | None = None,
    ) -> tuple[list[KeyInfo], list[SealedKey]]:
        """Create the keys the schedule asks for (in the keyset ``only``, or in every keyset);
        returns them, and every key the store holds now (those read, then those created)."""
        scope = keysets.values() if only is None else [keysets.require(only)]
        keys = list(tx.encryption_keys.list_all())
        plans = plan_rotation(scope, keys, now, self._config.key_policy)
        ids = tx.encryption_keys.allocate_ids(len(plans))
        created: list[KeyInfo] = []
        for key in mint_keys(plans, ids, self._random):
            sealed = seal_key(keyring, key, self._random)
            tx.encryption_keys.add(sealed)
            keys.append(sealed)
            info = _key_info(sealed, keysets.site_of(key.keyset_id))
            _record_key_event(tx, actor, now, info, created=True)
            created.append(info)
        return created, keys

    def _add_keyset(
        self, tx: Tx, keysets: _TxKeysets, keyset: Keyset, actor: Actor, now: int
    ) -> Keyset:
        tx.keysets.add(keyset)
        keysets.add(keyset)
        record_event(
            tx,
            actor,
            at_ms=now,
            action="keyset.create",
            target_type="keyset",
            target_id=str(keyset.keyset_id),
            site_id=keyset.site_id,
            after=_keyset_json(keyset),
        )
        return keyset

    def _site_keyset(
        self, tx: Tx, keysets: _TxKeysets, participant: Participant, actor: Actor, now: int
    ) -> tuple[Keyset, bool]:
        """The participant's default keyset, and whether it was created just now: a new one is
        shared as ``new_keyset_sharing`` says for the participant's type and roles; an existing
        one keeps its sharing, whatever they are now."""
        existing = keysets.site_default(participant.site_id)
        if existing is not None:
            return existing, False
        sharing = new_keyset_sharing(participant.type, participant.allowed_roles)
        keyset = new_site_keyset(keysets.next_id(), participant.site_id, now, sharing=sharing)
        return self._add_keyset(tx, keysets, keyset, actor, now), True

    # ------------------------------------------------------------------------ salts

    def rotate_salts(
        self, fraction: Any = DEFAULT_SALT_FRACTION, actor: Actor = SYSTEM
    ) -> SaltRotationResult:
        """Rotate a random ``fraction`` of the buckets (those whose refresh time has come).

        The new salts take effect at the first UTC midnight more than an hour away
        (``effective_at_ms``); until then every raw UID stays what mappers were last given.
        """
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise InvalidInput("The fraction must be a number")
        share = float(fraction)
        if not 0 < share <= 1:
            raise InvalidInput("The fraction of buckets to rotate must be in (0, 1]")
        with self._store.transaction() as tx:
            now = self._clock.now_ms()
            keyring = recorded_keyring(tx, self._keyrings)
            header = self._header(tx)
            table = self._read_table(tx, keyring, header)
            rotation = rotate(table, share, now, self._random)
            touched = rotation.touched_chunks(header.chunk_size)
            if rotation.rotated:
                self._write_table(
                    tx,
                    keyring,
                    rotation.table,
                    chunk_size=header.chunk_size,
                    chunks=touched,
                    created_at_ms=header.created_at_ms,
                    updated_at_ms=now,
                )
                record_event(
                    tx,
                    actor,
                    at_ms=now,
                    action="salts.rotate",
                    target_type="salt_table",
                    target_id="current",
                    after={
                        "rotated": len(rotation.rotated),
                        "bucket_count": table.bucket_count,
                        "version": rotation.table.version,
                        "fraction": repr(share),
                        "effective_at_ms": rotation.effective_at_ms,
                    },
                )
        logger.info("salts rotated buckets=%d actor=%s", len(rotation.rotated), actor.id)
        return SaltRotationResult(
            at_ms=now,
            fraction=share,
            rotated=len(rotation.rotated),
            bucket_count=table.bucket_count,
            version=rotation.table.version if rotation.rotated else table.version,
            chunks_rewritten=len(touched),
            effective_at_ms=rotation.effective_at_ms if rotation.rotated else None,
        )

    def _header(self, tx: ReadTx) -> SaltHeader:
        header = tx.salts.header()
        if header is None:
            raise NotFound(NOT_INITIALISED)
        return header

    def _read_table(self, tx: ReadTx, keyring: Keyring, header: SaltHeader) -> SaltTable:
        first_level_salt, id_secret = open_header_secrets(keyring, header)
        # Closed here, whether or not every chunk opened: a stream left suspended by a chunk that
        # fails would close its cursor only when collected, after the transaction's connection.
        with closing(tx.salts.iter_chunks()) as sealed:
            return assemble(
                bucket_count=header.bucket_count,
                chunk_size=header.chunk_size,
                chunks=(open_chunk(keyring, c) for c in sealed),
                first_level_salt=first_level_salt,
                id_prefix=header.id_prefix,
                id_secret=id_secret,
                version=header.version,
            )

    def _write_table(
        self,
        tx: Tx,
        keyring: Keyring,
        table: SaltTable,
        *,
        chunk_size: int,
        chunks: Iterable[int],
        created_at_ms: int,
        updated_at_ms: int,
    ) -> None:
        """Write the header and the given chunks (each sealed just before it is written)."""
        tx.salts.put_header(
            seal_header(
                keyring,
                table,
                chunk_size=chunk_size,
                created_at_ms=created_at_ms,
                updated_at_ms=updated_at_ms,
                random=self._random,
            )
        )
        tx.salts.put_chunks(
            seal_chunk(keyring, table.chunk(number, chunk_size), self._random) for number in chunks
        )

    # ------------------------------------------------------------------------ opt-outs

    def add_optout(self, kind: Any, value: Any, actor: Actor = SYSTEM) -> OptOutResult:
        """Record an opt-out for an email, phone, or their hashes (as requests accept them).

        The stored record holds the first-level hash, the time, and the raw UID the identity
        has now (from the salt in effect now, read from the one salt chunk its bucket is in).
        Invalid input is refused without echoing it: it is personal data. Text that is not
        valid UTF-8 (a command line's bytes in another encoding, as lone surrogates) is refused
        too: hashed, it would opt out another identity (each surrogate reads as ``?``, as a
        request's JSON escapes do).
        """
        input_kind = _input_kind(kind)
        if isinstance(value, str):
            refuse_surrogates(value, input_kind.value)
        with self._store.transaction() as tx:
            now = self._clock.now_ms()
            keyring = recorded_keyring(tx, self._keyrings)
            header = self._header(tx)
            first_level_salt, _ = open_header_secrets(keyring, header)
            try:
                flh = identity_first_level_hash(input_kind, value, first_level_salt)
            except IdentityInputError:
                raise InvalidInput(f"Invalid {input_kind.value}") from None
            _refuse_builtin(input_kind.identity_type, flh, first_level_salt, input_kind.value)
            index = bucket_index(flh, header.bucket_count)
            sealed = tx.salts.get_chunk(index // header.chunk_size)
            if sealed is None:
                raise NotFound(NOT_INITIALISED)
            bucket = open_chunk(keyring, sealed).bucket(index, now)
            raw_uid = current_raw_uid(
                bucket,
                flh,
                scope=self._config.identity_scope,
                kind=input_kind.identity_type,
                environment=IdentityEnvironment.TEST,  # only v4 raw UIDs carry it; salts are v2/v3
                identity_v3=self._config.identity_v3,
            )
            existing = tx.optouts.get(flh)
            record = latest(existing, OptOutRecord(flh, now, b64encode(raw_uid)))
            tx.optouts.put(record)
            record_event(
                tx,
                actor,
                at_ms=now,
                action="optout.add",
                target_type="optout",
                target_id=b64encode(flh),
                after={
                    "identity_type": input_kind.identity_type.name.lower(),
                    "timestamp_ms": record.timestamp_ms,
                },
            )
        logger.info("opt-out recorded type=%s actor=%s", input_kind.value, actor.id)
        return OptOutResult(
            identity_type=input_kind.identity_type.name.lower(),
            timestamp_ms=record.timestamp_ms,
            advertising_id=record.advertising_id,
            already_opted_out=existing is not None,
        )

    # ------------------------------------------------------------------------ loading

    def load_material(
        self, previous: Material | None = None, keyring: Keyring | None = None
    ) -> Material:
        """Keysets, keys (secrets opened), the salt table, opt-outs and the change sequence,
        from one read transaction, opened with ``keyring`` (default: the source's current one;
        a snapshot load passes the one it opens everything else with).

        With ``previous``, its salt table is reused when the stored one has not changed (same
        version and secrets): a reload after a key rotation or an opt-out then costs no salt
        reads and no second copy of the table in memory. Its opt-outs are reused too: only the
        records written since its cursor are read, in the same read transaction, and replace
        theirs in a new index that shares the previous one's frozen base
        (``domain.optout.OptOutIndex``), so a reload costs the opt-outs that changed, not the
        ones that exist. All of them are read again when there is no previous load, when the
        first-level salt changed (another store, or a re-created one: every hash would differ)
        or when the store's sequence is behind the cursor (a store restored from a backup).
        """
        ring = self._keyrings.current() if keyring is None else keyring
        with self._store.read() as tx:
            change_seq = tx.change_seq()
            header = self._header(tx)
            first_level_salt, id_secret = open_header_secrets(ring, header)
            salts: SaltTable
            if previous is not None and _same_table(
                previous.salts, header, first_level_salt, id_secret
            ):
                salts = previous.salts
            else:
                salts = self._read_table(tx, ring, header)
            keysets = tuple(tx.keysets.list_all())
            keys = tuple(open_key(ring, k) for k in tx.encryption_keys.list_all())
            incremental = (
                previous is not None
                and previous.salts.first_level_salt == first_level_salt
                and previous.optout_cursor <= change_seq
            )
            since = previous.optout_cursor if previous is not None and incremental else 0
            changes = tx.optouts.since(since)
        if previous is not None and incremental:
            optouts = previous.optouts.replaced(changes.records)
            builtins = previous.builtins
        else:
            optouts = OptOutIndex.of(changes.records)
            builtins = builtin_identities(first_level_salt)
        return Material(
            change_seq,
            keysets,
            keys,
            salts,
            optouts,
            builtins,
            optout_cursor=changes.cursor,
            optouts_read=len(changes.records),
        )


def _refuse_builtin(kind: IdentityType, flh: bytes, first_level_salt: str, field: str) -> None:
    """Refuse an opt-out for one of the built-in test identities (operator-api §7.3), whose
    opt-out state is fixed: recorded, it would change nothing generate, refresh or the maps
    answer, though the command would report it done."""
    builtins = builtin_identities(first_level_salt)
    identity = (kind, flh)
    for fixed, state in (
        (builtins.always, "always opted out"),
        (builtins.at_refresh, "opted out at refresh only"),
        (builtins.never, "never opted out"),
    ):
        if identity in fixed:
            raise InvalidInput(
                f"This {field} is a built-in test identity, {state} whatever is recorded: an "
                "opt-out for it would change nothing"
            )


class _TxKeysets:
    """The keysets of one write transaction, read once (``read``) and kept up to date with
    the keysets the unit of work adds (``add``): a use case that looks at every participant's
    keyset then costs one read of the table, not one per participant.

    The rules stay those of ``domain.keysets``: a site's default keyset is
    ``site_default_keyset`` over that site's keysets, and a new keyset id is ``next_keyset_id``
    over the highest id in use, kept as a running maximum.
    """

    __slots__ = ("_by_id", "_by_site", "_top")

    def __init__(self, keysets: Iterable[Keyset]) -> None:
        self._by_id: dict[int, Keyset] = {}
        self._by_site: dict[int, list[Keyset]] = {}
        self._top: int | None = None
        for keyset in keysets:
            self.add(keyset)

    @classmethod
    def read(cls, tx: ReadTx) -> _TxKeysets:
        return cls(tx.keysets.list_all())

    def add(self, keyset: Keyset) -> None:
        self._by_id[keyset.keyset_id] = keyset
        self._by_site.setdefault(keyset.site_id, []).append(keyset)
        if self._top is None or keyset.keyset_id > self._top:
            self._top = keyset.keyset_id

    def get(self, keyset_id: int) -> Keyset | None:
        return self._by_id.get(keyset_id)

    def require(self, keyset_id: int) -> Keyset:
        keyset = self._by_id.get(keyset_id)
        if keyset is None:
            raise NotFound(f"No keyset {keyset_id}")
        return keyset

    def values(self) -> list[Keyset]:
        return list(self._by_id.values())

    def site_of(self, keyset_id: int) -> int:
        return self.require(keyset_id).site_id

    def site_default(self, site_id: int) -> Keyset | None:
        return site_default_keyset(self._by_site.get(site_id, ()), site_id)

    def next_id(self) -> int:
        return next_keyset_id(() if self._top is None else (self._top,))


def _key_info(key: SealedKey, site_id: int) -> KeyInfo:
    """What a result and an audit event say of a key: its ids and times, never its secret."""
    return KeyInfo(key.id, key.keyset_id, site_id, key.created, key.activates, key.expires)


def _require_opens(keyring: Keyring, header: SaltHeader) -> None:
    """Refuse a keyring that does not open the salt table's secrets: the store was initialised
    under another keyring (a version of the same number with another key, or one it lacks)."""
    try:
        open_header_secrets(keyring, header)
    except KeyringError as exc:
        message = (
            "This keyring does not open the store's salt table: the store was initialised with "
            f"another keyring ({exc.detail}). Use that keyring (its file, or UID2_KEYRING); "
            "nothing was changed"
        )
        if isinstance(exc, KekVersionMissing):
            raise KekVersionMissing(exc.version, message) from None
        raise KeyringError(message) from None


def _same_table(
    table: SaltTable, header: SaltHeader, first_level_salt: str, id_secret: str
) -> bool:
    return (
        table.version == header.version
        and table.bucket_count == header.bucket_count
        and table.first_level_salt == first_level_salt
        and table.id_secret == id_secret
        and table.id_prefix == header.id_prefix
    )


def _input_kind(kind: Any) -> InputKind:
    if isinstance(kind, InputKind):
        return kind
    try:
        return InputKind(kind)
    except ValueError:
        names = ", ".join(k.value for k in InputKind)
        raise InvalidInput(f"The identity kind must be one of {names}") from None


def _record_key_event(tx: Tx, actor: Actor, now: int, info: KeyInfo, *, created: bool) -> None:
    """The audit event of a key made (its times as ``after``) or purged (as ``before``); a key's
    secret never reaches an event."""
    record_event(
        tx,
        actor,
        at_ms=now,
        action="encryption_key.create" if created else "encryption_key.delete",
        target_type="keyset",
        target_id=str(info.keyset_id),
        site_id=info.site_id,
        before=None if created else info.to_json(),
        after=info.to_json() if created else None,
    )
