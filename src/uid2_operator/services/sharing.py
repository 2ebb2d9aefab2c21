"""Use cases for sharing permissions, client-side keypairs and participants' domain/app names.

Like the other services, each public method is one unit of work: arguments are type-checked
first (they may come from a JSON body), then one transaction applies the domain rules
(``domain.sharing``, ``domain.keypairs``, ``domain.origins``), writes the change and its audit
event, and commits them together.

Sharing is a property of a participant's default keyset (the keyset its tokens are sealed with).
Narrowing it does not reach keys a former reader already downloaded: those keep decrypting new
tokens until new tokens stop being sealed with them. So when ``revocation_requires_rotation``
says a reader may have been removed, ``set_sharing`` (unless ``rotate=False``) creates, in the
same transaction, a key that is active at once, plus a twin of every key of the keyset that is
not active yet (same activation and expiry, a higher id, so the twin is chosen over the key the
former reader holds). Tokens the operator mints from the next snapshot on are sealed with keys
the former reader never saw. Sharing tokens the owner encrypts itself (with its ``SharingClient``)
are sealed with the keys it last fetched, which the former reader holds too, until the owner
refreshes its keys: the owner should refresh them after narrowing its list. Tokens minted before
stay readable by the former reader until they expire; readers still allowed pick the new keys up
on their next key refresh, and until then cannot read the newest tokens (the price of closing
the gap at once rather than at the next scheduled rotation). A keyset the change itself creates
(a participant that had none) is not rotated: no reader can have fetched its keys.

A keypair's private key is generated here, sealed at once, and opened only by
``read_client_side_state`` for the operator's in-memory snapshot. No view, audit row or log line
carries it. Deleting a keypair removes its row, sealed private key included (the audit trail keeps
its subscription id and public key); disabling is the reversible way to stop it. The keyring comes
from a ``KeyringSource``, asked once, inside its transaction, by each use case that seals, and
compared with the KEK check values that transaction reads, which records those of held versions
the store has none for (``recorded_keyring``): a keyring holding another key under a version the
store records is refused, and nothing is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from uid2_operator.clock import Clock
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.keypairs import (
    SUBSCRIPTION_ID_RULE,
    ClientKeypair,
    generate_keypair,
    is_subscription_id,
    keypair_text_too_long,
    keypair_view,
    open_private_key,
    set_keypair_disabled,
)
from uid2_operator.domain.keysets import (
    KeyPolicy,
    Keyset,
    PlannedKey,
    mint_keys,
    new_keyset_sharing,
    seal_key,
    site_default_keyset,
)
from uid2_operator.domain.origins import (
    MAX_APP_NAME_LENGTH,
    MAX_APP_NAMES,
    MAX_DOMAIN_NAMES,
    MAX_HOST_LENGTH,
    RegistrableDomain,
    validate_app_names,
    validate_domain_names,
)
from uid2_operator.domain.participants import (
    MAX_SITE_ID,
    MIN_SITE_ID,
    Participant,
    ParticipantType,
)
from uid2_operator.domain.sealing import Keyring, KeyringSource
from uid2_operator.domain.sharing import (
    MAX_LISTED_SITES,
    SharingPolicy,
    parse_sharing,
    revocation_requires_rotation,
)
from uid2_operator.error_text import some_of
from uid2_operator.errors import InvalidInput, InvalidTransition, NotFound
from uid2_operator.services import inputs
from uid2_operator.services.audit_trail import record_event
from uid2_operator.services.context import Actor
from uid2_operator.services.kek_check_values import recorded_keyring
from uid2_operator.services.material import MaterialService
from uid2_operator.services.public_suffix import registrable_domain_lookup
from uid2_operator.services.snapshot import CstgKeypair, SiteData
from uid2_operator.storage.interface import ReadTx, SiteOrigins, Store, Tx
from uid2_operator.wire.aead import RandomBytes
from uid2_operator.wire.scope import IdentityScope

logger = logging.getLogger(__name__)

DEFAULT_ROTATE_ON_REVOKE: Final = True
MAX_SHARING_TYPES: Final = 2 * len(ParticipantType)


# ---------------------------------------------------------------------------------- views


@dataclass(frozen=True, slots=True)
class SharingView:
    """A participant's sharing choice; ``rotated_key_ids`` lists keys a change created.

    ``keyset_id`` is None for a participant added since the last upkeep, which has no keyset
    yet; its choice is then the one its keyset will be created with (``new_keyset_sharing`` of
    its type and roles: bidders for a publisher or when it holds GENERATOR, else owner only).
    """

    site_id: int
    keyset_id: int | None
    policy: SharingPolicy
    changed: bool = False
    rotated_key_ids: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "site_id": self.site_id,
            "keyset_id": self.keyset_id,
            **self.policy.to_json(),
            "changed": self.changed,
            "rotated_key_ids": list(self.rotated_key_ids),
        }


@dataclass(frozen=True, slots=True)
class KeypairView:
    """What every read shows of a keypair: the public key string, never the private key."""

    subscription_id: str
    site_id: int
    public_key: str
    name: str
    contact: str
    disabled: bool
    created_at_ms: int

    @classmethod
    def of(cls, keypair: ClientKeypair, environment: Environment, brand: str) -> KeypairView:
        return cls(**keypair_view(keypair, environment, brand))

    def to_json(self) -> dict[str, Any]:
        return {
            "subscription_id": self.subscription_id,
            "site_id": self.site_id,
            "public_key": self.public_key,
            "name": self.name,
            "contact": self.contact,
            "disabled": self.disabled,
            "created_at_ms": self.created_at_ms,
        }


@dataclass(frozen=True, slots=True)
class SiteOriginsView:
    site_id: int
    domain_names: tuple[str, ...]
    app_names: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "site_id": self.site_id,
            "domain_names": list(self.domain_names),
            "app_names": list(self.app_names),
        }


# --------------------------------------------------------------------- the snapshot's part


@dataclass(frozen=True, slots=True, eq=False)
class ClientSideState:
    """Sharing choices by keyset, every participant's type and names, and the keypairs opened,
    read in one unit of work (``change_seq`` is the state it reflects).

    ``sharing`` (every keyset's choice, participant types included) and ``keypairs`` go into the
    snapshot as they are; ``snapshot_sites`` joins the participants' facts into one record each.
    """

    change_seq: int
    sharing: dict[int, SharingPolicy]
    site_types: dict[int, ParticipantType]
    site_enabled: dict[int, bool]
    origins: tuple[SiteOrigins, ...]
    keypairs: tuple[CstgKeypair, ...] = field(repr=False)

    def snapshot_sites(self) -> list[SiteData]:
        """Every participant with its type, state and names, for the operator snapshot."""
        names = {o.site_id: o for o in self.origins}
        return [
            SiteData(
                site_id=site,
                type=kind,
                enabled=self.site_enabled.get(site, False),
                domain_names=names[site].domain_names if site in names else (),
                app_names=names[site].app_names if site in names else (),
            )
            for site, kind in sorted(self.site_types.items())
        ]


def read_client_side_state(
    store: Store, keyring: Keyring, participants: Collection[Participant] | None = None
) -> ClientSideState:
    """What the operator snapshot needs beyond credentials and material (see module docstring).

    ``participants``: every participant as the caller already holds them from the same read
    unit (``Store.one_read``; the snapshot loader's credentials); None reads them here.

    A private key that does not open raises ``SealedSecretUnreadable``: the snapshot is not built
    rather than served without a keypair the store says exists.
    """
    with store.read() as tx:
        change_seq = tx.change_seq()
        sharing = tx.keyset_sharing.list_all()
        if participants is None:
            participants = tx.participants.list_all()
        site_types = {p.site_id: p.type for p in participants}
        site_enabled = {p.site_id: p.enabled for p in participants}
        origins = tuple(tx.site_origins.list_all())
        stored = tx.keypairs.list_all()
    opened = tuple(
        CstgKeypair(k.subscription_id, k.site_id, k.disabled, open_private_key(keyring, k))
        for k in stored
    )
    return ClientSideState(change_seq, sharing, site_types, site_enabled, origins, opened)


# ---------------------------------------------------------------------------------- service


class SharingService:
    def __init__(
        self,
        store: Store,
        keyring: KeyringSource,
        environment: Environment,
        clock: Clock,
        random: RandomBytes,
        *,
        registrable_domain: RegistrableDomain | None = None,
        material: MaterialService | None = None,
        key_policy: KeyPolicy | None = None,
        scope: IdentityScope = IdentityScope.UID2,
    ) -> None:
        """``material``, when given, creates a participant's default keyset (in the sharing
        change's own transaction) when a sharing change finds none; ``registrable_domain``
        defaults to the bundled Public Suffix List. ``scope`` (the deployment's identity scope)
        names the brand of the public keys shown (``EUID-X-...`` in the EUID scope)."""
        self._store = store
        self._keyrings = keyring
        self._environment = environment
        self._brand = scope.name
        self._clock = clock
        self._random = random
        self._registrable_domain = registrable_domain
        self._material = material
        self._key_policy = (
            key_policy
            if key_policy is not None
            else (material.config.key_policy if material is not None else KeyPolicy())
        )

    @property
    def environment(self) -> Environment:
        return self._environment

    # -------------------------------------------------------------------------- sharing

    def show_sharing(self, actor: Actor, site_id: Any) -> SharingView:
        """The participant's sharing choice. A participant added since the last upkeep has no
        keyset yet: its answer has no keyset id, and the choice its keyset will be created with
        (``keysets.new_keyset_sharing`` of its type and roles, as read now; the upkeep or the first
        ``set_sharing`` creates it; this read creates nothing)."""
        del actor  # reads are not audited
        site = _site_id(site_id)
        with self._store.read() as tx:
            participant = _participant(tx, site)
            keyset = site_default_keyset(tx.keysets.list_all(), site)
            if keyset is None:
                created = SharingPolicy(
                    new_keyset_sharing(participant.type, participant.allowed_roles)
                )
                return SharingView(site, None, created)
            policy = tx.keyset_sharing.get(keyset.keyset_id)
            if policy is None:  # pragma: no cover - the keyset was just read
                raise NotFound(f"No keyset {keyset.keyset_id}")
        return SharingView(site, keyset.keyset_id, policy)

    def set_sharing(
        self,
        actor: Actor,
        site_id: Any,
        *,
        mode: Any,
        sites: Any = (),
        types: Any = (),
        rotate: Any = DEFAULT_ROTATE_ON_REVOKE,
    ) -> SharingView:
        """Replace the sharing choice of the participant's default keyset.

        ``mode``: ``owner_only``, ``bidders`` or ``list`` (with ``sites`` and/or ``types``).
        Listed sites must be participants. ``rotate`` (default on): when the change may remove
        a reader, rotate the keyset's keys in the same transaction (see the module docstring),
        unless this transaction created the keyset.
        A choice equal to the current one changes nothing and writes nothing (``changed`` false),
        except for the keyset and first key this call created, if any (``changed`` true).
        A site that names no participant is refused as such (``NotFound``) before the choice is
        checked: a site that does not exist owns no keyset, whatever the choice says.
        """
        site = _site_id(site_id)
        mode_name = inputs.text(mode, "mode", max_length=32).strip().lower()
        site_list = _site_ids(sites)
        type_names = inputs.names(types, "types", max_length=32)
        if len(type_names) > MAX_SHARING_TYPES:
            raise InvalidInput(f"types may hold at most {MAX_SHARING_TYPES} entries")
        if not isinstance(rotate, bool):
            raise InvalidInput("rotate must be true or false")
        with self._store.transaction() as tx:
            now = self._clock.now_ms()
            keyring = recorded_keyring(tx, self._keyrings)
            _participant(tx, site)
            policy = parse_sharing(site, mode_name, site_list, type_names)
            # One read for every listed site: a list may name 10,000, and this transaction
            # holds the store's write lock.
            types_by_site = {p.site_id: p.type for p in tx.participants.list_all()}
            unknown = sorted(s for s in policy.sites if s not in types_by_site)
            if unknown:
                raise InvalidInput(f"No participant with site id {some_of(unknown, 10)}")
            if self._material is not None:
                # A participant without a keyset yet gets one here, committed with the change;
                # a keyset created in this transaction has keys no reader could have fetched.
                keyset, fresh = self._material.ensure_site_keyset_in(tx, site, actor, now, keyring)
            else:
                keyset, fresh = _default_keyset(tx, site), False
            before = tx.keyset_sharing.get(keyset.keyset_id)
            if before is None:  # pragma: no cover - the keyset was just read
                raise NotFound(f"No keyset {keyset.keyset_id}")
            if before == policy:
                return SharingView(site, keyset.keyset_id, policy, changed=fresh)
            needed = not fresh and revocation_requires_rotation(before, policy, types_by_site.get)
            tx.keyset_sharing.put(keyset.keyset_id, policy)
            created = (
                self._rotate_keyset(tx, keyring, keyset, now, actor) if needed and rotate else []
            )
            record_event(
                tx,
                actor,
                at_ms=now,
                action="keyset.sharing",
                target_type="keyset",
                target_id=str(keyset.keyset_id),
                site_id=site,
                before=before.to_json(),
                after={
                    **policy.to_json(),
                    "rotation_needed": needed,
                    "rotated_key_ids": created,
                },
            )
        logger.info(
            "sharing set site_id=%s keyset_id=%s mode=%s rotated=%d actor=%s",
            site,
            keyset.keyset_id,
            policy.mode.value,
            len(created),
            actor.id,
        )
        return SharingView(site, keyset.keyset_id, policy, True, tuple(created))

    def _rotate_keyset(
        self, tx: Tx, keyring: Keyring, keyset: Keyset, now_ms: int, actor: Actor
    ) -> list[int]:
        """A key active now, and a twin of each key not active yet (see the module docstring)."""
        now_s = now_ms // 1000
        plans = [PlannedKey(keyset.keyset_id, now_s, now_s, now_s + self._key_policy.lifetime_s)]
        for stored in tx.encryption_keys.list_for_keyset(keyset.keyset_id):
            if stored.activates > now_s:
                plans.append(PlannedKey(keyset.keyset_id, now_s, stored.activates, stored.expires))
        ids = tx.encryption_keys.allocate_ids(len(plans))
        created: list[int] = []
        for key in mint_keys(plans, ids, self._random):
            tx.encryption_keys.add(seal_key(keyring, key, self._random))
            record_event(
                tx,
                actor,
                at_ms=now_ms,
                action="encryption_key.create",
                target_type="keyset",
                target_id=str(key.keyset_id),
                site_id=keyset.site_id,
                after={
                    "key_id": key.id,
                    "keyset_id": key.keyset_id,
                    "site_id": keyset.site_id,
                    "created": key.created,
                    "activates": key.activates,
                    "expires": key.expires,
                    "reason": "sharing_revoked",
                },
            )
            created.append(key.id)
        return created

    # -------------------------------------------------------------------------- keypairs

    def create_keypair(
        self, actor: Actor, *, site_id: Any, name: Any = "", contact: Any = ""
    ) -> KeypairView:
        """A new subscription id and P-256 key pair; the view carries the public key string."""
        site = _site_id(site_id)
        clean_name = inputs.bounded_text(name, "name", keypair_text_too_long("name"))
        clean_contact = inputs.bounded_text(contact, "contact", keypair_text_too_long("contact"))
        with self._store.transaction() as tx:
            now = self._clock.now_ms()
            keyring = recorded_keyring(tx, self._keyrings)
            if not _participant(tx, site).enabled:  # as no API key is issued to one
                raise InvalidTransition(f"Participant {site} is disabled")
            taken = _TakenIds(tx)
            created = generate_keypair(
                site_id=site,
                environment=self._environment,
                keyring=keyring,
                random=self._random,
                now_ms=now,
                taken=taken,
                name=clean_name,
                contact=clean_contact,
                brand=self._brand,
            )
            tx.keypairs.add(created.keypair)
            view = KeypairView.of(created.keypair, self._environment, self._brand)
            record_event(
                tx,
                actor,
                at_ms=now,
                action="keypair.create",
                target_type="keypair",
                target_id=view.subscription_id,
                site_id=site,
                after=view.to_json(),
            )
        logger.info(
            "keypair created subscription_id=%s site_id=%s actor=%s",
            view.subscription_id,
            site,
            actor.id,
        )
        return view

    def list_keypairs(self, actor: Actor, *, site_id: Any = None) -> list[KeypairView]:
        del actor
        site = None if site_id is None else _site_id(site_id)
        with self._store.read() as tx:
            if site is None:
                stored = tx.keypairs.list_all()
            else:
                _participant(tx, site)
                stored = tx.keypairs.list_for_site(site)
        return [KeypairView.of(k, self._environment, self._brand) for k in stored]

    def get_keypair(self, actor: Actor, subscription_id: Any) -> KeypairView:
        del actor
        ident = _subscription_id(subscription_id)
        with self._store.read() as tx:
            return KeypairView.of(_keypair(tx, ident), self._environment, self._brand)

    def set_keypair_disabled(
        self, actor: Actor, subscription_id: Any, disabled: Any
    ) -> KeypairView:
        """Disable (requests with its subscription id get 401 from the next snapshot) or
        enable again."""
        ident = _subscription_id(subscription_id)
        if not isinstance(disabled, bool):
            raise InvalidInput("disabled must be true or false")
        with self._store.transaction() as tx:
            now = self._clock.now_ms()
            before = _keypair(tx, ident)
            after = set_keypair_disabled(before, disabled)
            tx.keypairs.update(after)
            view = KeypairView.of(after, self._environment, self._brand)
            record_event(
                tx,
                actor,
                at_ms=now,
                action="keypair.disable" if disabled else "keypair.enable",
                target_type="keypair",
                target_id=ident,
                site_id=after.site_id,
                before=KeypairView.of(before, self._environment, self._brand).to_json(),
                after=view.to_json(),
            )
        logger.info("keypair %s disabled=%s actor=%s", ident, disabled, actor.id)
        return view

    def delete_keypair(self, actor: Actor, subscription_id: Any) -> KeypairView:
        """Remove the keypair and its sealed private key for good; returns what it was."""
        ident = _subscription_id(subscription_id)
        with self._store.transaction() as tx:
            now = self._clock.now_ms()
            before = _keypair(tx, ident)
            tx.keypairs.delete(ident)
            view = KeypairView.of(before, self._environment, self._brand)
            record_event(
                tx,
                actor,
                at_ms=now,
                action="keypair.delete",
                target_type="keypair",
                target_id=ident,
                site_id=before.site_id,
                before=view.to_json(),
            )
        logger.info("keypair %s deleted actor=%s", ident, actor.id)
        return view

    # -------------------------------------------------------------------------- origins

    def get_origins(self, actor: Actor, site_id: Any) -> SiteOriginsView:
        del actor
        site = _site_id(site_id)
        with self._store.read() as tx:
            origins = tx.site_origins.get(site)
        if origins is None:
            raise NotFound(f"No participant {site}")
        return SiteOriginsView(site, origins.domain_names, origins.app_names)

    def set_domain_names(self, actor: Actor, site_id: Any, domain_names: Any) -> SiteOriginsView:
        """Replace the site's domain names: bare registrable domains (``example.com``).

        A site that names no participant is refused as such (``NotFound``) before the names are
        read: their shape, the credential-text check and the rules (``domain.origins``)."""
        site = _site_id(site_id)
        if self._registrable_domain is None:  # the suffix list is parsed on first use only
            self._registrable_domain = registrable_domain_lookup()
        registrable_domain = self._registrable_domain
        return self._set_origins(
            actor,
            site,
            "domain_names",
            lambda: validate_domain_names(
                _name_list(domain_names, "domain_names", MAX_DOMAIN_NAMES, MAX_HOST_LENGTH + 2),
                registrable_domain,
            ),
        )

    def set_app_names(self, actor: Actor, site_id: Any, app_names: Any) -> SiteOriginsView:
        """Replace the site's app names (package names, bundle ids, store ids).

        A site that names no participant is refused as such (``NotFound``) before the names are
        read: their shape, the credential-text check and the rules (``domain.origins``)."""
        site = _site_id(site_id)
        return self._set_origins(
            actor,
            site,
            "app_names",
            lambda: validate_app_names(
                _name_list(app_names, "app_names", MAX_APP_NAMES, MAX_APP_NAME_LENGTH + 2)
            ),
        )

    def _set_origins(
        self,
        actor: Actor,
        site: int,
        which: Literal["domain_names", "app_names"],
        validated: Callable[[], tuple[str, ...]],
    ) -> SiteOriginsView:
        """Replace one of the site's name lists with ``validated()``, run once the site is
        known to name a participant, in the transaction that writes the change."""
        with self._store.transaction() as tx:
            now = self._clock.now_ms()
            before = tx.site_origins.get(site)
            if before is None:
                raise NotFound(f"No participant {site}")
            names = validated()
            after = SiteOrigins(
                site,
                names if which == "domain_names" else before.domain_names,
                names if which == "app_names" else before.app_names,
            )
            view = SiteOriginsView(site, after.domain_names, after.app_names)
            if after != before:
                tx.site_origins.put(after)
                record_event(
                    tx,
                    actor,
                    at_ms=now,
                    action=(
                        "participant.domains"
                        if which == "domain_names"
                        else "participant.app_names"
                    ),
                    target_type="participant",
                    target_id=str(site),
                    site_id=site,
                    before=SiteOriginsView(site, before.domain_names, before.app_names).to_json(),
                    after=view.to_json(),
                )
        logger.info("participant site_id=%s origins set actor=%s", site, actor.id)
        return view


# ---------------------------------------------------------------------------------- helpers


class _TakenIds:
    """``in`` asks the store whether a subscription id is taken (a container for the domain)."""

    def __init__(self, tx: ReadTx) -> None:
        self._tx = tx

    def __contains__(self, candidate: object) -> bool:
        return isinstance(candidate, str) and self._tx.keypairs.get(candidate) is not None


def _site_id(value: Any) -> int:
    return inputs.integer(value, "site_id", low=MIN_SITE_ID, high=MAX_SITE_ID)


def _site_ids(value: Any) -> list[int]:
    if isinstance(value, str | bytes | dict) or not isinstance(value, Iterable):
        raise InvalidInput("sites must be a list of site ids")
    items = list(value)
    if len(items) > MAX_LISTED_SITES:
        raise InvalidInput(f"sites may hold at most {MAX_LISTED_SITES} entries")
    return [
        inputs.integer(item, "each of sites", low=MIN_SITE_ID, high=MAX_SITE_ID) for item in items
    ]


def _name_list(value: Any, what: str, max_items: int, max_length: int) -> list[str]:
    if isinstance(value, str | bytes | dict) or not isinstance(value, Iterable):
        raise InvalidInput(f"{what} must be a list of strings")
    items = list(value)
    if len(items) > max_items:
        raise InvalidInput(f"{what} may hold at most {max_items} entries")
    return [inputs.text(item, f"each of {what}", max_length=max_length) for item in items]


def _subscription_id(value: Any) -> str:
    """A subscription id as given; one that cannot be one is invalid input (the admin API
    refuses it by its declared shape first), refused before any lookup and never echoed."""
    text = inputs.text(value, "subscription_id", max_length=64).strip()
    if not is_subscription_id(text):
        raise InvalidInput(f"subscription_id {SUBSCRIPTION_ID_RULE}")
    return text


def _participant(tx: ReadTx, site: int) -> Participant:
    found = tx.participants.get(site)
    if found is None:
        raise NotFound(f"No participant {site}")
    return found


def _default_keyset(tx: ReadTx, site: int) -> Keyset:
    keyset = site_default_keyset(tx.keysets.list_all(), site)
    if keyset is None:
        raise NotFound(
            f"Participant {site} has no keyset yet; "
            "run `uid2-operator keys rotate` (or serve) first"
        )
    return keyset


def _keypair(tx: ReadTx, ident: str) -> ClientKeypair:
    found = tx.keypairs.get(ident)
    if found is None:
        raise NotFound(f"No keypair {ident}")
    return found
