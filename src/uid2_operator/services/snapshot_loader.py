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

from dataclasses import dataclass
from typing import Final

from uid2_operator.domain.environments import Environment
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
from uid2_operator.storage.interface import Snapshot as StoredCredentials
from uid2_operator.storage.interface import Store
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
    environment: Environment, scope: IdentityScope = IdentityScope.UID2
) -> OperatorIdentity:
    return OperatorIdentity(
        environment=environment,
        scope=scope,
        identity_environment=_IDENTITY_ENVIRONMENTS[environment],
        phone_support=True,
    )


@dataclass(frozen=True, slots=True, eq=False)
class Loaded:
    """A snapshot and the material it was built from (kept to make the next reload cheaper)."""

    snapshot: Snapshot
    material: Material

    def __repr__(self) -> str:
        return f"Loaded(generation={self.snapshot.generation}, {self.material!r})"


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
    prior = None if previous is None else previous.material
    with store.one_read():
        credentials = store.snapshot(now_ms)
        loaded = read_material(material, prior, ring)
        client_side = read_client_side_state(store, ring)
    snapshot = build_snapshot(
        generation=generation,
        built_at_ms=now_ms,
        identity=identity,
        lifetimes=lifetimes,
        pepper=ring.pepper,
        clients=client_records(credentials, ring),
        keysets=loaded.keysets,
        sharing=client_side.sharing,
        keys=loaded.keys,
        salts=loaded.salts,
        optouts=loaded.optouts,
        builtins=loaded.builtins,
        change_seq=min(credentials.change_seq, loaded.change_seq, client_side.change_seq),
        sites=client_side.snapshot_sites(),
        keypairs=client_side.keypairs,
    )
    return Loaded(snapshot, loaded)


def client_records(credentials: StoredCredentials, keyring: Keyring) -> list[ClientRecord]:
    """Every API key with its participant and its live secrets opened.

    Revoked, disabled and expired keys are kept: the request path refuses them by their state
    with the same 401 as an unknown key, and keeping them costs a few hundred bytes each.
    """
    participants = {p.site_id: p for p in credentials.participants}
    secrets: dict[str, list[LiveSecret]] = {}
    for sealed in credentials.secrets:
        secrets.setdefault(sealed.key_id, []).append(
            LiveSecret(sealed.secret_id, open_secret(keyring, sealed), sealed.retires_at_ms)
        )
    records: list[ClientRecord] = []
    for key in credentials.keys:
        participant = participants.get(key.site_id)
        if participant is None:  # the store's foreign key makes this impossible; be safe
            continue
        records.append(ClientRecord(key, participant, tuple(secrets.get(key.key_id, ()))))
    return records
