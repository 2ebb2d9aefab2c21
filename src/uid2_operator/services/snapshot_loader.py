"""Loading the operator's snapshot from the store: credentials and material, secrets opened.

Three reads make a snapshot: the credentials (participants, API keys and the client secrets
that are still live, ``Store.snapshot``), the service-held material (keysets, encryption keys,
the salt table and opt-outs, ``MaterialService.load_material``) and the client-side state
(sharing choices, participants' domain and app names, keypairs with their private keys opened,
``sharing.read_client_side_state``). All three share one read transaction
(``Store.one_read``), so a snapshot is one state of the store whatever commits meanwhile: it
never mixes two, such as a sharing change's narrower list of readers with the keys from before
it, whose tokens a removed reader could still open. A change that commits during the load is
simply not in it: the store's sequence is past the snapshot's, and the next poll loads again.
Each part is read once, however often the store is written during the load (a load that read
them again when they disagreed could, on a large store written every second, read them again
and again).

Secrets are opened with the keyring here and exist in the clear only in the returned snapshot,
in memory. The keyring source is asked once per load, and that one keyring opens all three reads:
a worker that follows a keyring file (KEK rotation) never builds a snapshot from two keyrings.
It is asked with the KEK check values the store records (one small read first), so a worker never
takes up a keyring file that holds another key under a version the store knows (another
instance's file copied over its own, say): it keeps the keyring it had and goes on loading. A
keyring it already holds that contradicts them fails the load (``KeyringError``, naming the
versions and what to do) before anything is opened, rather than as items that do not open.
Nothing is converted on the way: the snapshot holds the material's own keysets, opt-outs and
compact salt table (``domain.salts.SaltTable``, no per-bucket object is ever made), with the
stored sharing choices beside the keysets; a reload whose salt table has not changed reuses the
previous table object instead of reading it again.

Credentials are read the same way: a reload reads only the participants, keys and secrets
written since the change sequence the previous load read at (``Store.snapshot`` with ``since``),
opens only the secrets among them, and builds new client records only for the keys they touch
(and for keys whose secret's retirement time has passed), keeping every other record object of
the previous load (``Credentials``). A reload's cost then follows what changed, not how many keys
the store holds: a revocation reaches the workers at the next poll however large the store.

Opt-outs follow the same rule: a reload reads only the records written since the previous
load's cursor and builds the new index from the previous one (``MaterialService.load_material``,
``domain.optout.OptOutIndex``). The previous index is the *material's*, the store's records
alone: opt-outs a worker applied to its snapshot before writing them
(``SnapshotSource.add_optouts``) are not part of it, so a load gives exactly what a full load
would. The snapshot source applies them again to each snapshot it installs, on top of what the
load built, until the write-behind reports them written (a load after that reads them back from
the store) or given up (``services.snapshot_source``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final

from uid2_operator.domain.credentials import ApiKey, SealedSecret, still_accepted
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.participants import Participant
from uid2_operator.domain.sealing import Keyring, KeyringSource, checked_keyring, open_secret
from uid2_operator.services.material import Material, MaterialService
from uid2_operator.services.sharing import read_client_side_state
from uid2_operator.services.snapshot import (
    ClientRecord,
    Lifetimes,
    LiveSecret,
    OperatorIdentity,
    Snapshot,
    build_snapshot,
)
from uid2_operator.storage.interface import ReadTx, Store, change_state
from uid2_operator.storage.interface import Snapshot as StoredCredentials
from uid2_operator.wire.raw_uid import IdentityEnvironment
from uid2_operator.wire.scope import IdentityScope

_RELOADED: Final = "then the next snapshot load uses it"
"""What a load's refusal of a keyring the store's check values contradict says follows the fix:
a failed load is retried at every poll (``SnapshotSource``)."""

_IDENTITY_ENVIRONMENTS = {
    Environment.PROD: IdentityEnvironment.PROD,
    Environment.INTEG: IdentityEnvironment.INTEG,
    Environment.LOCAL: IdentityEnvironment.TEST,
}


def operator_identity(
    environment: Environment,
    scope: IdentityScope = IdentityScope.UID2,
    *,
    identity_v3: bool = False,
) -> OperatorIdentity:
    return OperatorIdentity(
        environment=environment,
        scope=scope,
        identity_environment=_IDENTITY_ENVIRONMENTS[environment],
        identity_v3=identity_v3,
        phone_support=True,
    )


_NO_RETIREMENT: Final = 1 << 63
"""Later than any epoch millisecond: no live secret has a retirement time."""


@dataclass(frozen=True, slots=True, eq=False)
class Credentials:
    """The credentials one load read, as the next reload starts from: every participant and key
    as stored, every live secret opened, and the client record built from them for each key.

    ``cursor`` is the change sequence they were read at. ``next_retirement_ms`` is the earliest
    ``retires_at_ms`` among the live secrets: until then, no record loses a secret by time.
    Never changed once made (a reload makes a new one from copies), so a load that fails leaves
    the previous one as it was.
    """

    cursor: int
    participants: Mapping[int, Participant]
    keys: Mapping[str, ApiKey]
    secrets: Mapping[str, tuple[LiveSecret, ...]]
    records: Mapping[str, ClientRecord]
    next_retirement_ms: int

    def __repr__(self) -> str:  # the records hold opened secrets
        return f"Credentials(cursor={self.cursor}, keys={len(self.keys)})"

    @classmethod
    def read(cls, stored: StoredCredentials, keyring: Keyring) -> Credentials:
        """Everything, from a full read (``Store.snapshot`` without ``since``)."""
        secrets: dict[str, tuple[LiveSecret, ...]] = {}
        for sealed in stored.secrets:  # by secret id: each key's secrets end up in that order
            secrets[sealed.key_id] = (*secrets.get(sealed.key_id, ()), _opened(sealed, keyring))
        participants = {p.site_id: p for p in stored.participants}
        keys = {k.key_id: k for k in stored.keys}
        records = {
            key_id: record
            for key_id in keys
            if (record := _record(key_id, keys, participants, secrets)) is not None
        }
        return cls(
            stored.change_seq,
            participants,
            keys,
            secrets,
            records,
            _next_retirement(secrets),
        )

    def updated(
        self,
        changed: StoredCredentials,
        keyring: Keyring,
        now_ms: int,
    ) -> Credentials:
        """These credentials with the rows written since ``cursor`` (``changed``, read with
        ``since=cursor``) applied, and the secrets retired by ``now_ms`` dropped."""
        participants = {**self.participants, **{p.site_id: p for p in changed.participants}}
        keys = {**self.keys, **{k.key_id: k for k in changed.keys}}
        touched = {k.key_id for k in changed.keys}
        if changed.participants:  # a participant's change reaches every one of its keys
            sites = {p.site_id for p in changed.participants}
            touched.update(key_id for key_id, key in keys.items() if key.site_id in sites)
        secrets = dict(self.secrets)
        for key in changed.keys:
            # ``changed.secrets`` holds every live secret of a key changed since: what is held
            # for it goes, so that a secret deleted since (``purge_retired``) goes too.
            secrets.pop(key.key_id, None)
        for sealed in changed.secrets:
            held = [s for s in secrets.get(sealed.key_id, ()) if s.secret_id != sealed.secret_id]
            if still_accepted(sealed.retires_at_ms, now_ms):
                held = sorted([*held, _opened(sealed, keyring)], key=lambda s: s.secret_id)
            secrets[sealed.key_id] = tuple(held)
            touched.add(sealed.key_id)
        if now_ms >= self.next_retirement_ms:
            touched.update(
                key_id
                for key_id, held_secrets in self.secrets.items()
                if not all(still_accepted(s.retires_at_ms, now_ms) for s in held_secrets)
            )
        records = dict(self.records)
        for key_id in touched:
            kept = secrets.pop(key_id, ())
            live = tuple(s for s in kept if still_accepted(s.retires_at_ms, now_ms))
            if live:
                secrets[key_id] = live
            record = _record(key_id, keys, participants, secrets)
            if record is None:
                records.pop(key_id, None)
            else:
                records[key_id] = record
        return Credentials(
            changed.change_seq,
            participants,
            keys,
            secrets,
            records,
            _next_retirement(secrets),
        )


def _opened(sealed: SealedSecret, keyring: Keyring) -> LiveSecret:
    return LiveSecret(sealed.secret_id, open_secret(keyring, sealed), sealed.retires_at_ms)


def _next_retirement(secrets: Mapping[str, Iterable[LiveSecret]]) -> int:
    return min(
        (s.retires_at_ms for held in secrets.values() for s in held if s.retires_at_ms is not None),
        default=_NO_RETIREMENT,
    )


def _record(
    key_id: str,
    keys: Mapping[str, ApiKey],
    participants: Mapping[int, Participant],
    secrets: Mapping[str, tuple[LiveSecret, ...]],
) -> ClientRecord | None:
    key = keys.get(key_id)
    participant = None if key is None else participants.get(key.site_id)
    if key is None or participant is None:  # the store's foreign key makes this impossible
        return None
    return ClientRecord(key, participant, secrets.get(key_id, ()))


def read_credentials(
    store: Store, keyring: Keyring, now_ms: int, previous: Credentials | None
) -> Credentials:
    """The credentials as the store holds them now: what changed since ``previous`` applied to
    it, or a full read when there is none or the store's sequence is behind its cursor.
    ``previous`` must have been read from this store, gone on (``load_snapshot`` checks it).
    Meant to run inside ``Store.one_read``, so that the reads see one state."""
    if previous is not None:
        changed = store.snapshot(now_ms, since=previous.cursor)
        if changed.change_seq >= previous.cursor:
            return previous.updated(changed, keyring, now_ms)
    return Credentials.read(store.snapshot(now_ms), keyring)


@dataclass(frozen=True, slots=True, eq=False)
class Loaded:
    """A snapshot and what it was built from (kept to make the next reload cheaper): the
    material, and the credentials (None only for a snapshot not built by ``load_snapshot``)."""

    snapshot: Snapshot
    material: Material
    credentials: Credentials | None = None
    mark: bytes | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"Loaded(generation={self.snapshot.generation}, {self.material!r})"

    @property
    def state(self) -> object:
        """What a poll compares with the store's own (``Store.change_state``): the change
        sequence it was read at with that sequence's mark (the sequence alone for a snapshot not
        built by ``load_snapshot``)."""
        return change_state(self.snapshot.change_seq, self.mark)

    def with_snapshot(self, snapshot: Snapshot) -> Loaded:
        """The same, serving ``snapshot`` (the snapshot with a worker's own opt-outs applied)."""
        return replace(self, snapshot=snapshot)


def read_material(
    service: MaterialService, previous: Material | None, keyring: Keyring
) -> Material:
    """The one place that asks the material service for its part of the snapshot."""
    return service.load_material(previous, keyring)


def load_snapshot(
    store: Store,
    keyring: KeyringSource,
    material: MaterialService,
    *,
    identity: OperatorIdentity,
    lifetimes: Lifetimes,
    generation: int,
    now_ms: int,
    previous: Loaded | None = None,
) -> Loaded:
    """Read the store and build an immutable snapshot (see the module docstring).

    The keyring is taken as the file holds it now (``latest``: one ``stat``), not as read up
    to an interval ago: a reload follows a store change, and that change may hold items sealed
    under a version that reached the file a moment before. It is checked against the store's
    KEK check values, read just before in a read unit of their own (``checked_keyring``)."""
    with store.read() as rx:
        recorded = rx.deployment.kek_check_values()
    ring = checked_keyring(keyring, recorded, then=_RELOADED)
    with store.one_read():
        with store.read() as rx:
            mark = rx.mark_of(rx.change_seq())
            kept = previous if previous is not None and _continues(rx, previous) else None
        prior_credentials = None if kept is None else kept.credentials
        credentials = read_credentials(store, ring, now_ms, prior_credentials)
        loaded = read_material(material, None if kept is None else kept.material, ring)
        client_side = read_client_side_state(store, ring, credentials.participants.values())
    snapshot = build_snapshot(
        generation=generation,
        built_at_ms=now_ms,
        identity=identity,
        lifetimes=lifetimes,
        pepper=ring.pepper,
        clients=credentials.records.values(),
        keysets=loaded.keysets,
        sharing=client_side.sharing,
        keys=loaded.keys,
        salts=loaded.salts,
        optouts=loaded.optouts,
        builtins=loaded.builtins,
        change_seq=min(credentials.cursor, loaded.change_seq, client_side.change_seq),
        sites=client_side.snapshot_sites(),
        keypairs=client_side.keypairs,
    )
    return Loaded(snapshot, loaded, credentials, mark)


def _continues(rx: ReadTx, previous: Loaded) -> bool:
    """Whether the store is the one ``previous`` was read from, gone on: it still holds, for the
    sequence ``previous`` was read at, the mark it recorded. A store restored from an earlier
    backup has lost that commit, whatever its sequence is now (behind, equal, or past after more
    writes): the marks are random, so no other commit writes the same one."""
    if previous.mark is None or previous.credentials is None:
        return False
    return rx.mark_of(previous.credentials.cursor) == previous.mark
