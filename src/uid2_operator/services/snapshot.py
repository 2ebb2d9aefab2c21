"""The operator's view of the world: one immutable, in-memory snapshot per generation of the store.

Every request is answered from a ``Snapshot`` and nothing else: credentials (with their client
secrets already opened), participants, keysets and encryption keys, salt buckets, opt-outs and the
token lifetimes. A snapshot is built by ``build_snapshot`` from plain records (whoever loads them:
the store poller, a test fixture) and never changes afterwards, so a request that picked one up at
its start sees a consistent world until it ends, and replacing the whole object is the only way
anything changes (an atomic reference swap, no locks on the hot path).

The snapshot holds the domain's own values wherever they serve the request path as they are, so a
snapshot that a test or a benchmark builds is made of exactly the types ``serve`` loads, and there
is no second definition of a keyset, a salt table or an opt-out to drift from the first:

- salts: ``domain.salts.SaltTable``, the table the material service loads, used as loaded. Salts
  are the bulk of the data (2^20 buckets in production); that table keeps them in flat columns
  (raw 32-byte salts, about 80 bytes a bucket) and makes a bucket's value only when a request
  asks for it, so neither loading nor serving makes one Python object per bucket;
- keysets: ``domain.keysets.Keyset``, each with its ``domain.sharing.SharingPolicy`` beside it
  (the policy is the stored sharing choice in full, participant types included, which the keyset
  record does not carry); who may download a key is ``domain.sharing.may_read``;
- opt-outs: ``domain.optout.OptOutRecord``, whether loaded from the store or made by
  ``/v2/token/logout`` (re-exported here, as the type ``build_snapshot`` and ``with_optouts``
  take), indexed by ``domain.optout.OptOutIndex``, the material's own index, which a reload
  extends by the records that changed instead of rebuilding; whether an identity is opted out
  is ``domain.optout.is_opted_out``.

What is the snapshot's own is what only the request path needs: client records with their secrets
opened and their authorisation precomputed, opt-outs indexed by first-level hash and by raw UID,
and the caches of active keys and verified API keys.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from hashlib import blake2b
from types import MappingProxyType
from typing import Final

from cryptography.hazmat.primitives.asymmetric import ec

from uid2_operator.domain.authorization import OPERATOR_ENDPOINTS
from uid2_operator.domain.credentials import ApiKey, KeyState, effective_roles
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.keysets import Keyset
from uid2_operator.domain.optout import (
    BuiltInIdentities,
    OptOutIndex,
    OptOutRecord,
    builtin_identities,
    is_opted_out,
)
from uid2_operator.domain.participants import Participant, ParticipantType
from uid2_operator.domain.roles import ClientRole
from uid2_operator.domain.salts import SaltTable
from uid2_operator.domain.sealing import ClientSecret
from uid2_operator.domain.sharing import KeyReader, SharingPolicy, keyset_sharing, may_read
from uid2_operator.errors import NoActiveKey
from uid2_operator.wire.keys import (
    FALLBACK_PUBLISHER_KEYSET_ID,
    FALLBACK_PUBLISHER_SITE_ID,
    MASTER_KEYSET_ID,
    REFRESH_KEYSET_ID,
    EncryptionKey,
    active_key,
)
from uid2_operator.wire.raw_uid import IdentityEnvironment
from uid2_operator.wire.scope import IdentityScope, IdentityType

ALLOW_CLOCK_SKEW_SECONDS: Final = 1800
TOKEN_LIFETIME_TOLERANCE_SECONDS: Final = 10
"""Added to the published maximum token lifetimes, as the reference operator does."""
OPTOUT_STATUS_MAX_REQUEST_SIZE: Final = 5000
OLDEST_REFRESHABLE_ESTABLISHED_MS: Final = 1_615_222_800_000
"""2021-03-08T17:00:00Z: identities established earlier are answered as opted out on refresh."""


# ----------------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class LiveSecret:
    """A client secret in the clear, held only in memory, and when it stops being accepted."""

    secret_id: int
    secret: ClientSecret
    retires_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent an authenticated request: the key's public id, its site, its effective roles."""

    key_id: str
    site_id: int
    roles: frozenset[ClientRole]


_NEVER: Final = 1 << 63
"""Later than any epoch millisecond a request can carry: "no expiry"."""


@dataclass(frozen=True, slots=True)
class ClientRecord:
    """An API key as the operator needs it: the record, its participant, its opened secrets.

    What the request path would otherwise rebuild on every request is derived once here, since
    key and participant are fixed for the record: the effective roles, the ``Caller`` handed to
    the endpoints, the endpoints those roles unlock, and until when the key may be used. The last
    two only let an allowed request skip the full checks (``authenticate``, then
    ``authorize_endpoint``); anything else still goes through them, so a refusal and its reason
    come from the same code as before.
    """

    key: ApiKey
    participant: Participant
    secrets: tuple[LiveSecret, ...]
    roles: frozenset[ClientRole] = field(init=False, repr=False, compare=False)
    """``effective_roles(key, participant)``, computed once: both are fixed for the record."""
    caller: Caller = field(init=False, repr=False, compare=False)
    allowed_paths: frozenset[str] = field(init=False, repr=False, compare=False)
    """The operator endpoints whose roles (``OPERATOR_ENDPOINTS``) ``roles`` meets."""
    usable_before_ms: int = field(init=False, repr=False, compare=False)
    """``authenticate`` allows the key exactly at instants before this (0: never)."""

    def __post_init__(self) -> None:
        key, participant = self.key, self.participant
        roles = effective_roles(key, participant)
        object.__setattr__(self, "roles", roles)
        object.__setattr__(self, "caller", Caller(key.key_id, key.site_id, roles))
        allowed = frozenset(
            path for path, needed in OPERATOR_ENDPOINTS.items() if not needed.isdisjoint(roles)
        )
        object.__setattr__(self, "allowed_paths", allowed)
        usable = (
            key.site_id == participant.site_id
            and key.state is not KeyState.REVOKED
            and key.state is not KeyState.DISABLED
            and participant.enabled
        )
        before = _NEVER if usable else 0
        for bound in (key.expires_at_ms, key.retires_at_ms):
            if bound is not None:
                before = min(before, bound)
        object.__setattr__(self, "usable_before_ms", before)

    def accepted_secrets(self, now_ms: int) -> list[bytes]:
        """Secrets a request may be sealed with now, newest first (rotation overlap).

        The very ``bytes`` object each ``ClientSecret`` holds is returned every time, so the
        cipher cache (``wire.aead``, keyed by those bytes) finds it by its cached hash.
        """
        secrets = self.secrets
        # ``domain.credentials.still_accepted``, written out: this runs on every request
        if len(secrets) == 1:  # the usual case: no rotation under way, nothing to order
            only = secrets[0]
            retires = only.retires_at_ms
            return [only.secret.raw] if retires is None or retires > now_ms else []
        live = [s for s in secrets if s.retires_at_ms is None or s.retires_at_ms > now_ms]
        live.sort(key=lambda s: s.secret_id, reverse=True)
        return [s.secret.raw for s in live]


@dataclass(frozen=True, slots=True)
class SiteData:
    """A participant as the key endpoints and client-side generation need it."""

    site_id: int
    type: ParticipantType | None = None
    enabled: bool = True
    domain_names: tuple[str, ...] = ()
    app_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CstgKeypair:
    """A client-side keypair with its private key opened (in memory only, never in repr)."""

    subscription_id: str
    site_id: int
    disabled: bool
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)


@dataclass(frozen=True, slots=True)
class Lifetimes:
    """Token lifetimes in seconds (operator-api §5.8)."""

    identity_token_s: int = 259_200
    refresh_token_s: int = 2_592_000
    refresh_identity_after_s: int = 3_600
    sharing_token_expiry_s: int = 2_592_000
    max_bidstream_lifetime_s: int | None = None
    max_sharing_lifetime_s: int | None = None

    def __post_init__(self) -> None:
        if not (0 < self.refresh_identity_after_s <= self.identity_token_s <= self.refresh_token_s):
            raise ValueError("lifetimes must satisfy refresh-after <= identity <= refresh")


# ----------------------------------------------------------------------------------- opt-outs


@dataclass(frozen=True, slots=True)
class OptOuts:
    """Opt-outs by first-level hash (for tokens and maps) and by raw UID (for optout/status).

    ``index`` is the material's ``domain.optout.OptOutIndex`` as loaded (a reload changes it by
    the records that changed, see ``snapshot_loader``); ``by_flh`` and ``by_advertising_id`` are
    its maps, kept as plain attributes for the request path. ``builtins`` are the built-in test
    identities under the snapshot's first-level salt; the decisions are
    ``domain.optout.is_opted_out`` over ``by_flh`` and them.
    """

    index: OptOutIndex = field(repr=False)
    builtins: BuiltInIdentities = field(repr=False)
    by_flh: Mapping[bytes, int] = field(init=False, repr=False, compare=False)
    by_advertising_id: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_flh", self.index.by_flh)
        object.__setattr__(self, "by_advertising_id", self.index.by_advertising_id)

    def opted_out(self, kind: IdentityType, flh: bytes) -> bool:
        """Token generate and identity map: any record, or a built-in opted-out identity."""
        return is_opted_out(kind, flh, self.by_flh, self.builtins)

    def opted_out_at_refresh(self, kind: IdentityType, flh: bytes) -> bool:
        return is_opted_out(kind, flh, self.by_flh, self.builtins, at_refresh=True)


def build_optouts(records: Iterable[OptOutRecord], first_level_salt: str) -> OptOuts:
    """The opt-outs of a snapshot built from plain records (one per first-level hash, as a
    store holds them; several for one hash are kept as the store would, ``latest``)."""
    return OptOuts(OptOutIndex.empty().merged(records), builtin_identities(first_level_salt))


# ----------------------------------------------------------------------------------- snapshot


@dataclass(frozen=True, slots=True)
class OperatorIdentity:
    """Deployment-wide facts the endpoints need."""

    environment: Environment = Environment.LOCAL
    scope: IdentityScope = IdentityScope.UID2
    identity_environment: IdentityEnvironment = IdentityEnvironment.TEST
    identity_v3: bool = False
    phone_support: bool = True
    client_side_generate: bool = True
    """``/v2/token/client-generate`` and ``site_data`` in key responses (operator-api §8)."""


_NO_KEY: Final = None
MAX_VERIFIED_KEYS: Final = 10_000
_EARLIEST: Final = -(1 << 63)
_LATEST: Final = 1 << 63
MAX_CACHED_SITES: Final = 65_536
"""Bound on the site keys one ``ActiveKeys`` remembers (site ids come from authenticated
callers and tokens, so this is only a guard)."""


@dataclass(slots=True)
class ActiveKeys:
    """The keys token issuance uses, valid for ``starts_ms <= now < ends_ms``.

    Between two consecutive activation or expiry instants of the snapshot's keys, whether a key
    is started and unexpired cannot change, so neither can ``active_key``'s choice: the choice is
    made once per such interval instead of three times per request. ``None`` records that no key
    qualified (the caller raises ``NoActiveKey``, as the uncached selection does).
    """

    starts_ms: int
    ends_ms: int
    master: EncryptionKey | None
    refresh: EncryptionKey | None
    sites: dict[int, EncryptionKey | None]


class ActiveKeyCache:
    """The ``ActiveKeys`` of the interval holding the last ``now_ms`` asked about.

    The interval bounds are every ``activates`` and ``expires`` instant (ms) of the keys, sorted;
    a time outside the cached interval (later, or earlier after a clock step back) starts a new
    interval. It holds the snapshot's key maps, not the snapshot (no reference cycle keeps an old
    snapshot and its salts alive after a swap). Only the event loop's thread uses a snapshot; if
    two threads ever raced here, each would compute the same answer.
    """

    __slots__ = ("_by_keyset", "_current", "_defaults", "_times")

    def __init__(
        self,
        keys_by_keyset: Mapping[int, tuple[EncryptionKey, ...]],
        default_keysets: Mapping[int, int],
    ) -> None:
        self._by_keyset = keys_by_keyset
        self._defaults = default_keysets
        self._times = sorted(
            {
                instant * 1000
                for keys in keys_by_keyset.values()
                for key in keys
                for instant in (key.activates, key.expires)
            }
        )
        self._current: ActiveKeys | None = None

    def select(self, keyset_id: int, now_ms: int) -> EncryptionKey | None:
        """``active_key`` of one keyset, uncached; None when no key qualifies."""
        try:
            return active_key(self._by_keyset.get(keyset_id, ()), now_ms)
        except NoActiveKey:
            return _NO_KEY

    def at(self, now_ms: int) -> ActiveKeys:
        current = self._current
        if current is not None and current.starts_ms <= now_ms < current.ends_ms:
            return current
        times = self._times
        after = bisect_right(times, now_ms)
        current = ActiveKeys(
            starts_ms=times[after - 1] if after else _EARLIEST,
            ends_ms=times[after] if after < len(times) else _LATEST,
            master=self.select(MASTER_KEYSET_ID, now_ms),
            refresh=self.select(REFRESH_KEYSET_ID, now_ms),
            sites={},
        )
        self._current = current
        return current

    def site(self, site_id: int, now_ms: int) -> EncryptionKey | None:
        """The active key of the site's default keyset, else of the fallback publisher site."""
        sites = self.at(now_ms).sites
        try:
            return sites[site_id]
        except KeyError:
            pass
        key: EncryptionKey | None = _NO_KEY
        for site in (site_id, FALLBACK_PUBLISHER_SITE_ID):
            keyset_id = self._defaults.get(site)
            if keyset_id is not None:
                key = self.select(keyset_id, now_ms)
                if key is not None:
                    break
        if len(sites) >= MAX_CACHED_SITES:
            sites.clear()
        sites[site_id] = key
        return key


class VerifiedKeys:
    """API keys that passed the full check against one snapshot, by digest of their text.

    Passing the check (shape, checksum, environment, the constant-time compare of the keyed hash)
    depends only on the text, the pepper and the stored hash, none of which changes during a
    snapshot's life, so a later request presenting the same text may skip it; the key's state,
    expiry and roles are still judged on every request. Only texts that passed are kept, so
    guesses cannot fill the map, and the map is bounded (cleared when full).

    The plaintext is not kept: entries are keyed by an unkeyed 128-bit BLAKE2b of the text, so
    the process holds a key's text no longer than the request that presented it. A digest does
    not reveal an API key (its secret part is far too random to search for), and a different text
    reaching the same entry would take a BLAKE2b second preimage (2^128 work), so a hit still
    proves possession of the whole key.
    """

    __slots__ = ("_records",)

    def __init__(self) -> None:
        self._records: dict[bytes, ClientRecord] = {}

    def __len__(self) -> int:
        return len(self._records)

    def get(self, text: str) -> ClientRecord | None:
        """The record ``text`` verified as before, or None."""
        return self._records.get(_key_digest(text))

    def remember(self, text: str, record: ClientRecord) -> None:
        records = self._records
        if len(records) >= MAX_VERIFIED_KEYS:
            records.clear()
        records[_key_digest(text)] = record

    def entries(self) -> dict[bytes, ClientRecord]:
        """A copy of the map (digest -> record), for inspection."""
        return dict(self._records)


def _key_digest(text: str) -> bytes:
    return blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    """Everything a request may read. Build it with ``build_snapshot``; never mutate it."""

    generation: int
    built_at_ms: int
    identity: OperatorIdentity
    lifetimes: Lifetimes
    pepper: bytes = field(repr=False)
    clients: Mapping[str, ClientRecord] = field(repr=False)
    keysets: Mapping[int, Keyset] = field(repr=False)
    sharing: Mapping[int, SharingPolicy] = field(repr=False)
    """Every keyset's sharing choice, by keyset id (one entry per entry of ``keysets``)."""
    keys_by_id: Mapping[int, EncryptionKey] = field(repr=False)
    keys_by_keyset: Mapping[int, tuple[EncryptionKey, ...]] = field(repr=False)
    default_keysets: Mapping[int, int] = field(repr=False)
    salts: SaltTable = field(repr=False)
    optouts: OptOuts = field(repr=False)
    change_seq: int | None = None
    """The store's change sequence this snapshot was loaded at (None: not from a store)."""
    sites: Mapping[int, SiteData] = field(default_factory=dict, repr=False)
    keypairs: Mapping[str, CstgKeypair] = field(default_factory=dict, repr=False)
    active_keys: ActiveKeyCache = field(init=False, repr=False, compare=False)
    """The selections of ``master_key``, ``refresh_key`` and ``site_key``, by time interval."""
    verified_keys: VerifiedKeys = field(
        init=False, default_factory=VerifiedKeys, repr=False, compare=False
    )
    """API keys that passed the full check against this snapshot (``remember_verified``)."""

    def __post_init__(self) -> None:
        cache = ActiveKeyCache(self.keys_by_keyset, self.default_keysets)
        object.__setattr__(self, "active_keys", cache)  # frozen: set once, at construction

    # ------------------------------------------------------------------------ credentials

    def client(self, key_id: str) -> ClientRecord | None:
        return self.clients.get(key_id)

    def remember_verified(self, text: str, record: ClientRecord) -> None:
        """Remember that the API key ``text`` verified as ``record`` (see ``VerifiedKeys``: by
        digest, never the text; state, expiry and roles are still judged on every request)."""
        self.verified_keys.remember(text, record)

    # ------------------------------------------------------------------------ keys

    def active_key(self, keyset_id: int, now_ms: int) -> EncryptionKey:
        return active_key(self.keys_by_keyset.get(keyset_id, ()), now_ms)

    def master_key(self, now_ms: int) -> EncryptionKey:
        key = self.active_keys.at(now_ms).master
        if key is None:
            raise NoActiveKey
        return key

    def refresh_key(self, now_ms: int) -> EncryptionKey:
        key = self.active_keys.at(now_ms).refresh
        if key is None:
            raise NoActiveKey
        return key

    def site_key(self, site_id: int, now_ms: int) -> EncryptionKey:
        """The active key of the site's default keyset, else of the fallback publisher site."""
        key = self.active_keys.site(site_id, now_ms)
        if key is None:
            raise NoActiveKey
        return key

    def keysets_without_active_key(self, now_ms: int) -> tuple[str, ...]:
        """The service's own keysets token issuance draws on that have no key active at
        ``now_ms``, named for a health check: the master (-1) and refresh (-2) keysets, and the
        fallback publisher's (site 2's default keyset, what every publisher without an active
        key of its own gets). Empty when each has one. Answered from the same cached selection
        as ``master_key``, ``refresh_key`` and ``site_key``."""
        active = self.active_keys.at(now_ms)
        missing: list[str] = []
        if active.master is None:
            missing.append(f"master keyset ({MASTER_KEYSET_ID})")
        if active.refresh is None:
            missing.append(f"refresh keyset ({REFRESH_KEYSET_ID})")
        if self.active_keys.site(FALLBACK_PUBLISHER_SITE_ID, now_ms) is None:
            missing.append(f"fallback publisher keyset ({FALLBACK_PUBLISHER_KEYSET_ID})")
        return tuple(missing)

    def lookup_in(self, *keyset_ids: int) -> Callable[[int], EncryptionKey | None]:
        """A key lookup that only finds keys of the given keysets (token layers are scoped)."""
        allowed = frozenset(keyset_ids)

        def lookup(key_id: int) -> EncryptionKey | None:
            key = self.keys_by_id.get(key_id)
            return key if key is not None and key.keyset_id in allowed else None

        return lookup

    def site_key_lookup(self, key_id: int) -> EncryptionKey | None:
        """Site layer of an advertising token: any key except the master and refresh keys."""
        key = self.keys_by_id.get(key_id)
        if key is None or key.keyset_id in (MASTER_KEYSET_ID, REFRESH_KEYSET_ID):
            return None
        return key

    def site_type(self, site_id: int) -> ParticipantType | None:
        site = self.sites.get(site_id)
        return None if site is None else site.type

    def visible_keys(
        self, site_id: int, roles: frozenset[ClientRole]
    ) -> list[tuple[EncryptionKey, Keyset]]:
        """Keys a caller may download: ``domain.sharing.may_read`` of their keyset (which never
        admits the refresh keyset's)."""
        reader = KeyReader(site_id, roles, self.site_type(site_id))
        keysets, sharing = self.keysets, self.sharing
        out: list[tuple[EncryptionKey, Keyset]] = []
        for key in self.keys_by_id.values():
            keyset = keysets.get(key.keyset_id)
            if keyset is not None and may_read(reader, keyset, sharing[keyset.keyset_id]):
                out.append((key, keyset))
        return out

    def with_optouts(self, records: Iterable[OptOutRecord]) -> Snapshot:
        """A new snapshot, one generation on, with these opt-outs added to the current ones as
        the store will keep them (``domain.optout.latest``).

        The index's overlay is copied, never its base, and no fold happens here (the caller is
        the event loop): the cost is that of the records and the overlay, whatever the number
        of opt-outs; the next reload folds if the overlay has grown past its share.
        """
        index = self.optouts.index.merged(records, fold=False)
        optouts = OptOuts(index, self.optouts.builtins)
        return replace(self, generation=self.generation + 1, optouts=optouts)


def build_snapshot(
    *,
    generation: int,
    built_at_ms: int,
    identity: OperatorIdentity,
    lifetimes: Lifetimes,
    pepper: bytes,
    clients: Iterable[ClientRecord],
    keysets: Iterable[Keyset],
    sharing: Mapping[int, SharingPolicy] | None = None,
    keys: Iterable[EncryptionKey],
    salts: SaltTable,
    optouts: Iterable[OptOutRecord] | OptOutIndex = (),
    builtins: BuiltInIdentities | None = None,
    change_seq: int | None = None,
    sites: Iterable[SiteData] = (),
    keypairs: Iterable[CstgKeypair] = (),
) -> Snapshot:
    """Index plain records into a snapshot. Pure: no clock, no I/O.

    ``sharing``: the stored sharing choices by keyset id, participant types included (what the
    store's ``keyset_sharing`` lists). A keyset it does not name is shared as its own record says
    (``domain.sharing.keyset_sharing``). This is the one place where the request path's sharing
    choice of a keyset is settled.

    ``optouts``: records, or an ``OptOutIndex`` already made (the material's, used as it is);
    ``builtins``: the built-in identities of ``salts``' first-level salt, when already made.
    """
    keyset_map = {k.keyset_id: k for k in keysets}
    stored = {} if sharing is None else sharing
    policies: dict[int, SharingPolicy] = {}
    for keyset_id, keyset in keyset_map.items():
        policy = stored.get(keyset_id)
        policies[keyset_id] = keyset_sharing(keyset) if policy is None else policy
    keys_by_id: dict[int, EncryptionKey] = {}
    for key in sorted(keys, key=lambda k: k.id):
        if key.id in keys_by_id:
            raise ValueError(f"duplicate encryption key id {key.id}")
        keys_by_id[key.id] = key
    grouped: dict[int, list[EncryptionKey]] = {}
    for key in keys_by_id.values():
        grouped.setdefault(key.keyset_id, []).append(key)
    by_keyset = {
        ks: tuple(sorted(group, key=lambda k: (k.activates, k.id))) for ks, group in grouped.items()
    }
    defaults: dict[int, int] = {}
    for keyset in keyset_map.values():
        if keyset.enabled and keyset.is_default and keyset.keyset_id > 0:
            if keyset.site_id in defaults:
                raise ValueError(f"site {keyset.site_id} has more than one default keyset")
            defaults[keyset.site_id] = keyset.keyset_id
    return Snapshot(
        generation=generation,
        built_at_ms=built_at_ms,
        identity=identity,
        lifetimes=lifetimes,
        pepper=bytes(pepper),
        clients=MappingProxyType({c.key.key_id: c for c in clients}),
        keysets=MappingProxyType(keyset_map),
        sharing=MappingProxyType(policies),
        keys_by_id=MappingProxyType(keys_by_id),
        keys_by_keyset=MappingProxyType(by_keyset),
        default_keysets=MappingProxyType(defaults),
        salts=salts,
        optouts=_optouts(optouts, builtins, salts.first_level_salt),
        change_seq=change_seq,
        sites=MappingProxyType({s.site_id: s for s in sites}),
        keypairs=MappingProxyType({k.subscription_id: k for k in keypairs}),
    )


def _optouts(
    optouts: Iterable[OptOutRecord] | OptOutIndex,
    builtins: BuiltInIdentities | None,
    first_level_salt: str,
) -> OptOuts:
    if not isinstance(optouts, OptOutIndex):
        built = build_optouts(optouts, first_level_salt)
        return built if builtins is None else OptOuts(built.index, builtins)
    return OptOuts(optouts, builtin_identities(first_level_salt) if builtins is None else builtins)
