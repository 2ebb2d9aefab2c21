"""What the rest of the service may ask of a store, as typing Protocols.

A use case opens exactly one unit of work, ``with store.transaction() as tx:``, reads and writes
through the repositories hanging off ``tx``, and the unit of work commits once when the block ends
(or rolls back, leaving nothing behind, when it raises). Repositories never commit.

Write transactions are serialised across every process sharing the database. That is what makes
the audit chain's ``seq``/``prev_hash`` assignment race-free, and what lets a use case read a
record, decide, and write it back without a lost update. Read-only work goes through
``store.read()``, which sees one consistent snapshot and takes no write lock.

Storage adds, gets, lists, updates and appends; it does not decide whether a change is allowed
(role subsets, lifecycle transitions): the service layer does, with the rules in ``domain/``.
"""

from __future__ import annotations

from collections.abc import (
    Callable,
    Collection,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from uid2_operator.domain.admin_tokens import AdminToken
from uid2_operator.domain.audit import AuditEvent, ChainHead, Outcome, UnreadableEvent
from uid2_operator.domain.credentials import ApiKey, SealedSecret
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.keypairs import ClientKeypair
from uid2_operator.domain.keysets import Keyset, SealedKey
from uid2_operator.domain.material_sealing import SealedMaterial
from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.domain.participants import Participant
from uid2_operator.domain.salts import SaltHeader, SealedSaltChunk
from uid2_operator.domain.sharing import SharingPolicy

GENESIS_PREV_HASH = bytes(32)
"""The ``prev_hash`` of the first audit event of a store."""

EventHasher = Callable[[bytes, int, AuditEvent], bytes]
"""Computes an audit event's ``hash`` from ``(prev_hash, seq, event)``.

The store calls it while it holds the write lock, with the event as it will be stored (``seq``
and ``prev_hash`` assigned, ``hash`` still empty), so the caller never has to guess the chain
position. ``domain.audit.event_hash`` has exactly this shape.
"""

UsageEntry = tuple[str, str, int, int]
"""One usage observation to record: ``(key_id, endpoint, count, last_used_at_ms)``."""

KekVersionCounts = dict[int, int]
"""How many sealed items name each key-encryption key version: ``{version: count}``, ascending,
versions with no item left out."""


class AuditFields(Protocol):
    """An audit event before the store places it in the chain: no seq, prev_hash or hash yet.

    ``domain.audit.AuditDraft`` is one. ``before`` and ``after`` must be JSON-serialisable and
    already redacted; they are stored as JSON text, and the event handed to the hasher carries them
    exactly as they will read back (so a stored chain verifies against what is read).
    """

    @property
    def at_ms(self) -> int: ...
    @property
    def actor(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def target_type(self) -> str: ...
    @property
    def target_id(self) -> str: ...
    @property
    def site_id(self) -> int | None: ...
    @property
    def before(self) -> dict[str, Any] | None: ...
    @property
    def after(self) -> dict[str, Any] | None: ...
    @property
    def request_id(self) -> str | None: ...
    @property
    def source(self) -> str | None: ...
    @property
    def outcome(self) -> Outcome: ...


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """Per-key, per-endpoint request counter and the coarse time it was last seen."""

    key_id: str
    endpoint: str
    count: int
    last_used_at_ms: int


@dataclass(frozen=True, slots=True)
class SiteOrigins:
    """Where a participant's client-side token requests may come from (``domain.origins``)."""

    site_id: int
    domain_names: tuple[str, ...] = ()
    app_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OptOutChanges:
    """The opt-out records written after a cursor, and the cursor to read from next time.

    ``cursor`` is the highest change sequence among ``records`` (the cursor asked from when
    there are none): every record committed later carries a higher one, so asking from it again
    misses nothing and reads nothing twice.
    """

    records: tuple[OptOutRecord, ...]
    cursor: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The credentials the operator serves from, read in one consistent read transaction.

    Read in full (``Store.snapshot`` with ``since`` 0): ``keys`` holds every key, revoked
    tombstones included; ``secrets`` holds the sealed secrets that are still live at the time
    asked for (no ``retires_at_ms``, or one in the future).

    Read from a change sequence (``since`` above 0): only the rows written by commits after it,
    each as it is now: the participants and keys changed since, and the secrets added or changed
    since whether live or not, so that a reader holding the earlier state learns of a secret
    retired early; and, for each key changed since, every one of its secrets live at the time
    asked for, so that a reader replaces what it held for that key with what it is given. The
    one row of these tables ever deleted is a secret no request can use any more
    (``purge_retired``), which may go in the commit that retires it: that commit writes its
    key's row too, so a reader that never saw the retirement still loses the secret.
    ``change_seq`` below ``since`` means the store is not the one the reader read before
    (restored from an earlier backup, say): read it in full.
    """

    change_seq: int
    participants: tuple[Participant, ...]
    keys: tuple[ApiKey, ...]
    secrets: tuple[SealedSecret, ...]


def change_state(seq: int | None, mark: bytes | None) -> object:
    """The value ``Store.change_state`` gives for a change sequence and its mark, and a loaded
    snapshot is compared with: the pair, or the sequence alone when there is no mark."""
    return seq if mark is None else (seq, mark)


# ----------------------------------------------------------------------------- repositories


class ParticipantReader(Protocol):
    def get(self, site_id: int) -> Participant | None: ...

    def list_all(self) -> list[Participant]:
        """Every participant, by site id."""
        ...

    def list_page(self, *, after: int | None, limit: int | None) -> list[Participant]:
        """At most ``limit`` (every one, when None) participants with a site id above ``after``
        (any, when None), by site id."""
        ...

    def highest_site_id(self) -> int | None:
        """The highest site id of any participant; None when there is none."""
        ...

    def lowest_free_site_id(self, low: int, high: int) -> int | None:
        """The lowest id in ``low..high`` no participant has, found in one query; None when
        every id in that range is taken."""
        ...


class ParticipantRepository(ParticipantReader, Protocol):
    def add(self, participant: Participant) -> None:
        """Raises AlreadyExists if the site id is taken."""
        ...

    def update(self, participant: Participant) -> None:
        """Writes every field but ``site_id`` and ``created_at_ms``; raises NotFound."""
        ...


class ApiKeyReader(Protocol):
    def get(self, key_id: str) -> ApiKey | None:
        """Primary-key lookup."""
        ...

    def list_for_site(self, site_id: int) -> list[ApiKey]:
        """A participant's keys, oldest first."""
        ...

    def list_all(self) -> list[ApiKey]:
        """Every key of every participant, by site then age."""
        ...

    def list_page(
        self, *, site_id: int | None, after: ApiKey | None, limit: int | None
    ) -> list[ApiKey]:
        """At most ``limit`` (every one, when None) keys in ``list_all``'s order (site, age,
        then key id) that come after ``after`` in it (from the first, when None); only
        ``site_id``'s when given."""
        ...


class ApiKeyRepository(ApiKeyReader, Protocol):
    def add(self, key: ApiKey) -> None:
        """Raises AlreadyExists for a taken key id, NotFound for an unknown site."""
        ...

    def update(self, key: ApiKey) -> None:
        """Writes the mutable fields; raises NotFound.

        Immutable and store-owned fields are left as stored: ``site_id`` and ``key_hash`` (the key
        text embeds the site and is fixed at creation), ``created_at_ms``, ``created_by``, and
        ``last_used_at_ms`` (maintained by usage recording only).
        """
        ...


class SecretReader(Protocol):
    def get(self, secret_id: int) -> SealedSecret | None: ...

    def list_for_key(self, key_id: str) -> list[SealedSecret]:
        """A key's secrets, oldest (lowest secret id) first, expired ones included."""
        ...

    def list_live(self, now_ms: int) -> list[SealedSecret]:
        """Every secret with no ``retires_at_ms`` or one after ``now_ms``, by secret id."""
        ...

    def count_by_kek_version(self) -> KekVersionCounts:
        """Every stored secret (retired ones not yet purged included), counted by KEK version."""
        ...

    def list_not_sealed_under(self, kek_version: int) -> list[SealedSecret]:
        """Every stored secret sealed under another KEK version than ``kek_version``, by id."""
        ...


class SecretRepository(SecretReader, Protocol):
    def add(
        self,
        key_id: str,
        *,
        kek_version: int,
        ciphertext: bytes,
        created_at_ms: int,
        retires_at_ms: int | None = None,
    ) -> SealedSecret:
        """Stores a sealed secret and returns it with its store-assigned, increasing secret id.

        Raises NotFound for an unknown key id.
        """
        ...

    def update(self, secret: SealedSecret) -> None:
        """Writes ``kek_version``, ``ciphertext`` (re-sealing) and ``retires_at_ms``; NotFound."""
        ...

    def purge_retired(self, now_ms: int) -> int:
        """Deletes the secrets no request can be sealed with after ``now_ms``: those whose
        ``retires_at_ms`` is at or before it, and every secret of a key revoked, retired
        (``retires_at_ms``) or expired by then (none of which comes back); returns how many.
        Writes the row of each key that loses a secret (its change sequence), so that an
        incremental ``Store.snapshot`` hands over that key's remaining secrets."""
        ...


class AdminTokenReader(Protocol):
    def get(self, token_id: str) -> AdminToken | None:
        """Primary-key lookup."""
        ...

    def list_all(self) -> list[AdminToken]:
        """Every token, oldest first."""
        ...


class AdminTokenRepository(AdminTokenReader, Protocol):
    def add(self, token: AdminToken) -> None:
        """Raises AlreadyExists if the token id is taken."""
        ...

    def update(self, token: AdminToken) -> None:
        """Writes ``name``, ``roles``, ``revoked_at_ms`` and ``revoked_by``; raises NotFound."""
        ...


class AuditReader(Protocol):
    def last(self) -> AuditEvent | None:
        """The event with the highest seq."""
        ...

    def head(self) -> ChainHead | None:
        """The chain head recorded by the last append (None if nothing was ever recorded).

        Kept apart from the events so that deleting the last events shows: the chain then ends
        before the recorded head.
        """
        ...

    def list_events(
        self,
        *,
        since_seq: int | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        action: str | None = None,
        site_id: int | None = None,
        limit: int | None = None,
        exclude_target_types: Collection[str] = (),
    ) -> list[AuditEvent]:
        """Events with ``seq > since_seq`` matching every filter given, in seq order.

        Events whose target type is one of ``exclude_target_types`` are left out before ``limit``
        counts, so a page holds ``limit`` events the caller may see whenever that many follow.
        AuditRowUnreadable for a row that does not read back as an event.
        """
        ...

    def chain_events(
        self, *, since_seq: int | None = None
    ) -> Generator[AuditEvent | UnreadableEvent, None, None]:
        """Every event with ``seq > since_seq``, in seq order, for verifying the chain: a row that
        does not read back as an event is an ``UnreadableEvent`` in its place. Fetched a
        thousand rows at a time (the trail grows with every opt-out, without bound): consume or
        close it inside the unit of work (closing releases its cursor)."""
        ...


class AuditRepository(AuditReader, Protocol):
    def append(self, event: AuditFields, hasher: EventHasher) -> AuditEvent:
        """Places ``event`` at the end of the chain and returns it as stored.

        Assigns ``seq`` = recorded head seq + 1 (1 for the first event) and ``prev_hash`` = the
        recorded head's hash (``GENESIS_PREV_HASH`` for the first), then asks ``hasher`` for
        ``hash``, and records the new event as the head in the same transaction. Building on the
        recorded head rather than on the last row keeps a deleted tail visible after later appends
        (a gap) instead of papering over it; a store with no recorded head (made before heads were
        recorded) builds on its last row.

        An event whose outcome is not ``success`` (a refused attempt) changes no configuration:
        a unit of work that writes nothing else commits without moving ``change_seq``, so a
        refused admin request makes no operator reload its snapshot.
        """
        ...

    def move_head(self, head: ChainHead) -> None:
        """Records ``head`` as the chain's head, over rows appended past the recorded one without
        moving it (by an earlier version); the caller has checked their links
        (``domain.audit.check_adoption``). The next append builds on ``head``.

        Raises NotFound unless a row at ``head.seq`` carries ``head.hash``, and InvalidTransition
        for a head behind the recorded one (that would hide the rows after it) or when no head is
        recorded (``upgrade`` records one). Counts as a change of the audit trail: the unit moves
        ``change_seq``.
        """
        ...

    def append_many(self, events: Sequence[AuditFields], hasher: EventHasher) -> list[AuditEvent]:
        """Places ``events`` at the end of the chain, in the order given, and returns them as
        stored: exactly what ``append`` once per event would store (the same ``seq``,
        ``prev_hash`` and ``hash`` for each, the last one recorded as the head), with one read of
        the chain end, one insert of every row and one write of the head.

        An empty sequence writes nothing and returns ``[]``. Events none of whose outcomes is
        ``success`` move no ``change_seq`` on their own, as with ``append``.
        """
        ...


class UsageReader(Protocol):
    def list_for_key(self, key_id: str) -> list[KeyUsage]:
        """A key's counters, by endpoint."""
        ...

    def list_all(self) -> list[KeyUsage]:
        """Every counter, by key id then endpoint."""
        ...

    def list_for_keys(self, key_ids: Collection[str]) -> list[KeyUsage]:
        """The counters of the keys named, by key id then endpoint."""
        ...


class UsageRepository(UsageReader, Protocol):
    def record(self, batch: Sequence[UsageEntry]) -> list[str]:
        """Adds each entry's count to its (key, endpoint) counter and raises the counter's and the
        key's ``last_used_at_ms`` to the entry's value when that is later.

        Duplicate (key, endpoint) pairs in one batch are summed. Entries naming a key id the
        store does not hold (keys are never deleted: a store restored from an earlier backup)
        are left out, and their key ids returned, sorted; the others are recorded all the same.
        """
        ...


class KeysetReader(Protocol):
    def get(self, keyset_id: int) -> Keyset | None: ...

    def list_all(self) -> list[Keyset]:
        """Every keyset, by keyset id."""
        ...


class KeysetRepository(KeysetReader, Protocol):
    def add(self, keyset: Keyset) -> None:
        """Raises AlreadyExists if the keyset id is taken."""
        ...

    def update(self, keyset: Keyset) -> None:
        """Writes every field but ``keyset_id``, ``site_id`` and ``created_at_ms``; NotFound."""
        ...


class EncryptionKeyReader(Protocol):
    def get(self, key_id: int) -> SealedKey | None: ...

    def list_all(self) -> list[SealedKey]:
        """Every key of every keyset, expired ones included, by key id."""
        ...

    def list_for_keyset(self, keyset_id: int) -> list[SealedKey]:
        """A keyset's keys by key id."""
        ...

    def count_by_kek_version(self) -> KekVersionCounts:
        """Every key (expired ones included), counted by the KEK version its secret is under."""
        ...

    def list_not_sealed_under(self, kek_version: int) -> list[SealedKey]:
        """Every key whose secret is sealed under another KEK version than ``kek_version``, by
        key id."""
        ...

    def longest_token_lifetime_s(self) -> int | None:
        """The longest token lifetime (seconds) any serve recorded with
        ``raise_longest_token_lifetime``; None when none was ever recorded."""
        ...


class EncryptionKeyRepository(EncryptionKeyReader, Protocol):
    def raise_longest_token_lifetime(self, seconds: int) -> int:
        """Records that tokens may live ``seconds`` (positive), unless a longer lifetime is
        recorded already: the value only ever rises. Returns the value recorded after the call.

        Not a control-plane change: it does not move the change sequence (no snapshot reads it),
        and it writes nothing when the recorded value is already as long.
        """
        ...

    def allocate_ids(self, count: int) -> list[int]:
        """``count`` new key ids from the store's sequence, above every id handed out by a
        committed transaction and every id stored: increasing, never reused. (Ids of a unit of
        work that rolled back were never stored or published, so they may come round again.)"""
        ...

    def add(self, key: SealedKey) -> None:
        """Raises AlreadyExists for a taken key id, NotFound for an unknown keyset."""
        ...

    def delete(self, key_ids: Iterable[int]) -> None:
        """Removes these keys, their sealed secrets with them; nothing for an empty list.

        Raises NotFound, naming the missing ids, before deleting anything when one of them is
        not stored. A deleted id is never handed out again: ``allocate_ids`` stays above every
        id deleted here, however the key was added.
        """
        ...

    def reseal(self, key_id: int, secret: SealedMaterial) -> None:
        """Writes the key's sealed secret and its KEK version, nothing else; raises NotFound.

        For KEK rotation: the secret is the same, sealed again, so the key's times and keyset
        stay as they are.
        """
        ...


class SaltReader(Protocol):
    def header(self) -> SaltHeader | None:
        """The salt table's header, or None before the table is created."""
        ...

    def get_chunk(self, number: int) -> SealedSaltChunk | None: ...

    def iter_chunks(self) -> Generator[SealedSaltChunk, None, None]:
        """Every chunk by number, fetched a few rows at a time (a production table is ~80 MB);
        consume or close it inside the unit of work (closing releases its cursor)."""
        ...

    def count_chunks_by_kek_version(self) -> KekVersionCounts:
        """Every chunk, counted by the KEK version its salts are sealed under."""
        ...

    def chunk_numbers_not_sealed_under(self, kek_version: int) -> list[int]:
        """The numbers of the chunks sealed under another KEK version than ``kek_version``,
        ascending (numbers only: a caller re-sealing them reads one chunk at a time)."""
        ...


class SaltRepository(SaltReader, Protocol):
    def put_header(self, header: SaltHeader) -> None:
        """Creates or replaces the header."""
        ...

    def put_chunks(self, chunks: Iterable[SealedSaltChunk]) -> None:
        """Creates or replaces each chunk, by number."""
        ...


class OptOutReader(Protocol):
    def get(self, first_level_hash: bytes) -> OptOutRecord | None: ...

    def get_many(self, first_level_hashes: Iterable[bytes]) -> dict[bytes, OptOutRecord]:
        """The stored records of these first-level hashes, by hash; hashes with no record are
        left out (a hash given twice is read once)."""
        ...

    def list_all(self) -> list[OptOutRecord]:
        """Every record, by first-level hash."""
        ...

    def count(self) -> int: ...

    def since(self, cursor: int) -> OptOutChanges:
        """The records (re)written by commits after change sequence ``cursor``, in the order
        they were written, with the cursor to ask from next; ``since(0)`` reads every record, in
        no particular order (one record per first-level hash, so order cannot matter).

        Every ``put`` stamps its row with the change sequence its commit brings the store to;
        writes are serialised, so those stamps grow in commit order. Called in the same read
        unit as the other reads of a snapshot, it sees exactly the records of that state.
        """
        ...


class OptOutRepository(OptOutReader, Protocol):
    def put(self, record: OptOutRecord) -> None:
        """Creates or replaces the record of ``record.first_level_hash`` (the caller decides what
        to keep, see ``domain.optout.latest``), stamping it with this unit's change sequence so
        that ``since`` finds it again, whether it was new or made newer."""
        ...

    def put_many(self, records: Sequence[OptOutRecord]) -> None:
        """``put`` of each record, in the order given, in one statement: when a first-level
        hash comes more than once, the last of its records is what is stored (the caller merges
        them first if it means to keep another, see ``domain.optout.latest``). Nothing for an
        empty sequence."""
        ...


class KeysetSharingReader(Protocol):
    def get(self, keyset_id: int) -> SharingPolicy | None:
        """The keyset's sharing choice (mode, sites and types); None for an unknown keyset."""
        ...

    def list_all(self) -> dict[int, SharingPolicy]:
        """Every keyset's sharing choice, by keyset id."""
        ...


class KeysetSharingRepository(KeysetSharingReader, Protocol):
    def put(self, keyset_id: int, policy: SharingPolicy) -> None:
        """Writes the keyset's mode, sites and types together; raises NotFound."""
        ...


class SiteOriginsReader(Protocol):
    def get(self, site_id: int) -> SiteOrigins | None:
        """A participant's domain and app names; None for an unknown participant."""
        ...

    def list_all(self) -> list[SiteOrigins]:
        """Every participant's names, by site id (participants without names included)."""
        ...


class SiteOriginsRepository(SiteOriginsReader, Protocol):
    def put(self, origins: SiteOrigins) -> None:
        """Replaces both lists of the participant; raises NotFound."""
        ...


class KeypairReader(Protocol):
    def get(self, subscription_id: str) -> ClientKeypair | None:
        """Primary-key lookup."""
        ...

    def list_for_site(self, site_id: int) -> list[ClientKeypair]:
        """A participant's keypairs, oldest first."""
        ...

    def list_all(self) -> list[ClientKeypair]:
        """Every keypair, by site then age."""
        ...

    def count_by_kek_version(self) -> KekVersionCounts:
        """Every keypair, counted by the KEK version its private key is sealed under."""
        ...

    def list_not_sealed_under(self, kek_version: int) -> list[ClientKeypair]:
        """Every keypair whose private key is sealed under another KEK version, by site then age."""
        ...


class KeypairRepository(KeypairReader, Protocol):
    def add(self, keypair: ClientKeypair) -> None:
        """Raises AlreadyExists for a taken subscription id, NotFound for an unknown site."""
        ...

    def update(self, keypair: ClientKeypair) -> None:
        """Writes ``name``, ``contact`` and ``disabled`` (key material never changes); NotFound."""
        ...

    def delete(self, subscription_id: str) -> None:
        """Removes the row, its sealed private key with it; raises NotFound."""
        ...

    def reseal(self, subscription_id: str, private_key: SealedMaterial) -> None:
        """Writes the sealed private key and its KEK version, nothing else; raises NotFound.

        For KEK rotation: the key pair itself never changes (``update`` cannot touch it).
        """
        ...


class DeploymentReader(Protocol):
    def environment(self) -> Environment | None:
        """The environment the store was initialised for (``record_environment``); None when
        none is recorded: a store never initialised, or initialised by an earlier version."""
        ...

    def credential_environment_letters(self) -> frozenset[str]:
        """The distinct environment letters (``UID2-C-<letter>-...``, ``UID2-A-<letter>-...``)
        of every stored API key id and admin token id, revoked ones included; empty when the
        store holds none. What a store an earlier version initialised says of its environment."""
        ...

    def highest_kek_version(self) -> int:
        """The highest key-encryption key version ``reserve_kek_version`` recorded; 0 when none
        was (no version added since the store was created, or only by an earlier version)."""
        ...

    def kek_check_values(self) -> Mapping[int, int]:
        """The check value recorded for each key-encryption key version
        (``record_kek_check_values``), ascending by version, with the pepper's under 0
        (``domain.sealing.PEPPER_CHECK``) once recorded; empty when none is (a store never used
        by this version)."""
        ...

    def dropped_kek_versions(self) -> frozenset[int]:
        """The key-encryption key versions ``keyring drop-version`` dropped
        (``record_dropped_kek_version``)."""
        ...


class DeploymentRepository(DeploymentReader, Protocol):
    def reserve_kek_version(self, version: int) -> int:
        """Records that key-encryption key version ``version`` (positive) was given to a keyring
        file, unless a higher one is recorded already, and returns the highest recorded after
        the call: it only rises, so a number once reserved is never handed out again.

        Not a control-plane change: it does not move the change sequence (no snapshot reads it).
        """
        ...

    def record_dropped_kek_version(self, version: int, at_ms: int) -> None:
        """Records that ``version`` was dropped from a keyring at ``at_ms`` (once; again is a
        no-op). Not a control-plane change: it moves no change sequence."""
        ...

    def record_kek_check_values(self, values: Mapping[int, int]) -> Mapping[int, int]:
        """Records the check value of each key-encryption key version in ``values`` that has
        none recorded yet, never overwriting one, and returns every check value recorded after
        the call (ascending by version): the caller compares and refuses. Version 0 is the
        pepper's check value. Raises StoreError, recording nothing, for a version that is not a
        whole number from 0 or a value outside 0 to 2**63 - 1.

        Not a control-plane change: it does not move the change sequence (no snapshot reads it).
        """
        ...

    def record_environment(self, environment: Environment) -> Environment:
        """Records ``environment`` unless one is recorded already, and returns the one recorded
        after the call: once recorded, it never changes (the caller compares and refuses).

        Not a control-plane change: it does not move the change sequence (no snapshot reads
        it), and it writes nothing when one is recorded already.
        """
        ...


# ---------------------------------------------------------------------------- units of work


class ReadTx(Protocol):
    """A read-only unit of work: every read sees the same committed state."""

    @property
    def participants(self) -> ParticipantReader: ...

    @property
    def api_keys(self) -> ApiKeyReader: ...

    @property
    def secrets(self) -> SecretReader: ...

    @property
    def admin_tokens(self) -> AdminTokenReader: ...

    @property
    def audit(self) -> AuditReader: ...

    @property
    def usage(self) -> UsageReader: ...

    @property
    def keysets(self) -> KeysetReader: ...

    @property
    def encryption_keys(self) -> EncryptionKeyReader: ...

    @property
    def salts(self) -> SaltReader: ...

    @property
    def optouts(self) -> OptOutReader: ...

    @property
    def keyset_sharing(self) -> KeysetSharingReader: ...

    @property
    def site_origins(self) -> SiteOriginsReader: ...

    @property
    def keypairs(self) -> KeypairReader: ...

    @property
    def deployment(self) -> DeploymentReader: ...

    def change_seq(self) -> int:
        """The change sequence as this unit of work sees it (a read unit: the state it reads)."""
        ...

    def mark_of(self, seq: int) -> bytes | None:
        """The random mark the commit that moved the sequence to ``seq`` wrote, as this unit of
        work sees it; None when the store keeps none for it (further back than ``MARKS_KEPT``,
        or never reached). Two stores holding the same mark for a sequence hold the same
        commit: a reader that recorded it knows a restored store from the one it read."""
        ...


class Tx(ReadTx, Protocol):
    """A write unit of work, holding the store's write lock from its start to its end."""

    @property
    def participants(self) -> ParticipantRepository: ...

    @property
    def api_keys(self) -> ApiKeyRepository: ...

    @property
    def secrets(self) -> SecretRepository: ...

    @property
    def admin_tokens(self) -> AdminTokenRepository: ...

    @property
    def audit(self) -> AuditRepository: ...

    @property
    def usage(self) -> UsageRepository: ...

    @property
    def keysets(self) -> KeysetRepository: ...

    @property
    def encryption_keys(self) -> EncryptionKeyRepository: ...

    @property
    def salts(self) -> SaltRepository: ...

    @property
    def optouts(self) -> OptOutRepository: ...

    @property
    def keyset_sharing(self) -> KeysetSharingRepository: ...

    @property
    def site_origins(self) -> SiteOriginsRepository: ...

    @property
    def keypairs(self) -> KeypairRepository: ...

    @property
    def deployment(self) -> DeploymentRepository: ...


class Store(Protocol):
    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        ...

    def transaction(self) -> AbstractContextManager[Tx]:
        """A write unit of work; commits at the end of the ``with`` block, rolls back on error.

        A commit that changed any control-plane record bumps ``change_seq`` by exactly one.
        Usage counters are telemetry, not configuration: recording them alone does not bump it
        (otherwise every usage flush would make every operator reload its snapshot).
        """
        ...

    def read(self) -> AbstractContextManager[ReadTx]:
        """A read-only unit of work over one consistent snapshot; never bumps ``change_seq``."""
        ...

    def one_read(self) -> AbstractContextManager[None]:
        """Inside the block, every ``read`` (``snapshot`` and ``change_seq`` too) that this
        thread makes shares one read unit of work: reads made by different services see one
        state of the store, the one the block began with, whatever commits meanwhile."""
        ...

    def change_seq(self) -> int:
        """The current change sequence: one cheap read, meant for frequent polling."""
        ...

    def change_state(self) -> object:
        """The current change sequence with its mark (``ReadTx.mark_of``), in one read, as a
        value to compare with one read earlier: unequal when the store moved on, and when it
        is another store at the same sequence (restored from a backup and written back to it).
        One cheap read, meant for frequent polling."""
        ...

    def snapshot(self, now_ms: int, since: int = 0) -> Snapshot:
        """Participants, keys and live secrets with the change sequence they correspond to; with
        ``since`` above 0, only those written after that change sequence (``Snapshot``)."""
        ...

    def record_usage(self, batch: Sequence[UsageEntry]) -> list[str]:
        """``usage.record(batch)`` in a transaction of its own; the key ids it left out."""
        ...

    def close(self) -> None:
        """Releases every pooled connection."""
        ...
