"""Use cases for participants, API keys and client secrets, and the credential lookup.

Every public method is one unit of work: arguments are type-checked first (they may come from a
JSON body), then one ``store.transaction()`` (or ``store.read()`` for reads) runs the domain rules,
writes the change and its audit event, and commits them together. A refusal anywhere rolls back
everything, so a failed call leaves no trace but its error.

The keyring comes from a ``KeyringSource``, asked once by each use case that needs it (a write
asks inside its transaction: ``KeyringSource.latest``): a running service follows a keyring file
that changes (KEK rotation) without mixing two keyrings inside one unit of work. A write compares
the keyring it got with the KEK check values its transaction reads before it mints or seals
anything, and records those of held versions the store has none for in that transaction
(``recorded_keyring``): a keyring holding another key under a version the store records is
refused (``KeyringError``), and nothing is written.

Plaintext keys and secrets exist only in the ``Issued*`` results of create and rotate (recorded in
the audit trail as disclosures) and in the raw secrets ``resolve_client`` hands the request path.
Logs name keys by ``key_id`` only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from uid2_operator.clock import Clock
from uid2_operator.domain import lifecycle
from uid2_operator.domain.audit import EMPTY_HEAD, verify_chain
from uid2_operator.domain.authorization import (
    AUDIT_TARGET_TYPES,
    Denied,
    audit_targets_hidden_from,
)
from uid2_operator.domain.credentials import (
    ApiKey,
    KeyState,
    SealedSecret,
    accepted_secrets,
    authenticate,
    effective_roles,
    is_expired,
    is_retired,
    issue_api_key,
    verify_api_key,
)
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import MintedCredential, mint_api_key
from uid2_operator.domain.participants import (
    MAX_SITE_ID,
    MIN_SITE_ID,
    Participant,
    new_participant,
    refuse_taken_name,
    set_participant_enabled,
    update_participant,
)
from uid2_operator.domain.roles import ClientRole, parse_client_roles
from uid2_operator.domain.sealing import (
    ClientSecret,
    Keyring,
    KeyringSource,
    new_client_secret,
    open_secret,
    seal_secret,
)
from uid2_operator.errors import (
    AlreadyExists,
    AuditHeadUnreadable,
    CredentialRejected,
    InvalidInput,
    InvalidTransition,
    MalformedCredential,
    NotFound,
)
from uid2_operator.services import inputs
from uid2_operator.services.audit_trail import record_event
from uid2_operator.services.context import Actor
from uid2_operator.services.kek_check_values import recorded_keyring
from uid2_operator.services.views import (
    AuditEventView,
    AuditVerdictView,
    IssuedKey,
    IssuedSecret,
    KeyView,
    Page,
    ParticipantView,
)
from uid2_operator.storage.interface import ReadTx, Store, Tx
from uid2_operator.wire.aead import RandomBytes
from uid2_operator.wire.scope import IdentityScope

logger = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_GRACE_DAYS = lifecycle.DEFAULT_GRACE_MS // lifecycle.DAY_MS
MAX_GRACE_DAYS = lifecycle.MAX_GRACE_MS // lifecycle.DAY_MS
MAX_AUDIT_LIMIT = 1000
MAX_LIST_LIMIT = 1000
"""The most participants or keys one page of a listing holds."""
# An audit event's site id: a participant's, or a reserved site's (the master keyset's is -1).
MIN_AUDIT_SITE_ID = -(2**31)
MAX_AUDIT_SITE_ID = 2**31 - 1
HEAD_UNREADABLE = "the recorded head cannot be read: it is not what uid2-operator writes"
NO_HEAD_REMEDY = (
    "if an earlier version of uid2-operator wrote this database, run `uid2-operator db upgrade` "
    "to record the head of its chain"
)
"""Said by ``verify_audit`` of an intact chain with no recorded head."""
# One lifecycle step inside ``_change_key``: (key, now_ms, tx) -> the changed key.
_KeyChange = Callable[[ApiKey, int, Tx], ApiKey]
# A new key id is a fresh 6-character public id; a clash is rare, and retried a few times.
_MINT_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class ResolvedClient:
    """A presented API key that may be used now: its view, its effective roles (the key's roles
    narrowed to what its participant may grant today) and the raw client secrets a request may be
    sealed with, newest first. The secrets are AES keys: this object is never logged."""

    key: KeyView
    roles: frozenset[ClientRole]
    secrets: tuple[bytes, ...] = field(repr=False)

    def __repr__(self) -> str:
        return f"ResolvedClient(key_id={self.key.key_id!r}, secrets=<{len(self.secrets)} hidden>)"

    __str__ = __repr__


class CredentialService:
    def __init__(
        self,
        store: Store,
        keyring: KeyringSource,
        environment: Environment,
        clock: Clock,
        random: RandomBytes,
        *,
        rotation_age_ms: int = lifecycle.DEFAULT_ROTATION_AGE_MS,
        scope: IdentityScope = IdentityScope.UID2,
    ) -> None:
        """``scope``: the deployment's identity scope, whose name its API keys carry
        (``EUID-C-...`` in the EUID scope; ``domain.key_format.BRANDS``)."""
        self._store = store
        self._keyrings = keyring
        self._environment = environment
        self._brand = scope.name
        self._clock = clock
        self._random = random
        self._rotation_age_ms = rotation_age_ms

    @property
    def environment(self) -> Environment:
        return self._environment

    # ---------------------------------------------------------------------------- participants

    def create_participant(
        self,
        actor: Actor,
        *,
        name: Any,
        type: Any,
        site_id: Any = None,
        roles: Any = (),
        contacts: Any = (),
    ) -> ParticipantView:
        """A new participant; ``site_id`` None takes the next free id above the reserved ones."""
        clean_name = inputs.name_text(name)
        ptype = inputs.participant_type(type)
        wanted_site = inputs.optional_integer(site_id, "site_id", low=MIN_SITE_ID, high=MAX_SITE_ID)
        allowed = parse_client_roles(inputs.names(roles, "roles"))
        contact_list = inputs.names(contacts, "contacts", max_length=inputs.MAX_TEXT)
        with self._store.transaction() as tx:
            now = self._clock.now_ms()
            site = self._next_site_id(tx) if wanted_site is None else wanted_site
            if tx.participants.get(site) is not None:
                raise AlreadyExists(f"Participant {site} already exists")
            participant = new_participant(
                site_id=site,
                name=clean_name,
                type=ptype,
                allowed_roles=allowed,
                contacts=contact_list,
                now_ms=now,
            )
            refuse_taken_name(participant.name, tx.participants.list_all())
            tx.participants.add(participant)
            record_event(
                tx,
                actor,
                at_ms=now,
                action="participant.create",
                target_type="participant",
                target_id=str(site),
                site_id=site,
                after=participant,
            )
        logger.info("participant created site_id=%s actor=%s", site, actor.id)
        return ParticipantView.of(participant)

    def participant_page(
        self, actor: Actor, *, limit: Any = None, after: Any = None
    ) -> Page[ParticipantView]:
        """At most ``limit`` participants (every one, when None) with a site id above ``after``
        (any, when None), by site id; ``more`` when others follow."""
        del actor  # reads are not audited
        count = inputs.optional_integer(limit, "limit", low=1, high=MAX_LIST_LIMIT)
        start = inputs.optional_integer(after, "after", low=0, high=MAX_SITE_ID)
        with self._store.read() as tx:
            found = tx.participants.list_page(
                after=start, limit=None if count is None else count + 1
            )
        more = count is not None and len(found) > count
        return Page([ParticipantView.of(p) for p in found[:count]], more)

    def get_participant(self, actor: Actor, site_id: Any) -> ParticipantView:
        del actor
        site = self._site_id(site_id)
        with self._store.read() as tx:
            return ParticipantView.of(self._participant(tx, site))

    def set_participant_enabled(self, actor: Actor, site_id: Any, enabled: Any) -> ParticipantView:
        """Disabling a participant stops every one of its keys at once (see ``authenticate``)."""
        site = self._site_id(site_id)
        if not isinstance(enabled, bool):
            raise InvalidInput("enabled must be true or false")
        with self._store.transaction() as tx:
            now = self._clock.now_ms()
            before = self._participant(tx, site)
            after = set_participant_enabled(before, enabled, now)
            tx.participants.update(after)
            record_event(
                tx,
                actor,
                at_ms=now,
                action="participant.enable" if enabled else "participant.disable",
                target_type="participant",
                target_id=str(site),
                site_id=site,
                before=before,
                after=after,
            )
        logger.info("participant site_id=%s enabled=%s actor=%s", site, enabled, actor.id)
        return ParticipantView.of(after)

    def set_participant_roles(self, actor: Actor, site_id: Any, roles: Any) -> ParticipantView:
        """Change the roles a participant may grant. Refused while a live key (not revoked,
        retired or expired) holds a role being taken away: narrow those keys first, so that no
        key silently loses a permission its holder relies on. A site that names no participant
        is refused as such (``NotFound``) before the role names are checked."""
        site = self._site_id(site_id)
        names = inputs.names(roles, "roles")
        with self._store.transaction() as tx:
            now = self._clock.now_ms()
            before = self._participant(tx, site)
            allowed = parse_client_roles(names)
            blocking = [
                key.key_id
                for key in tx.api_keys.list_for_site(site)
                if _is_live(key, now) and not key.roles <= allowed
            ]
            if blocking:
                raise InvalidInput(
                    "Keys still hold roles being removed; change their roles first: "
                    + ", ".join(blocking[:20])
                )
            after = update_participant(before, now_ms=now, allowed_roles=allowed)
            tx.participants.update(after)
            record_event(
                tx,
                actor,
                at_ms=now,
                action="participant.set_roles",
                target_type="participant",
                target_id=str(site),
                site_id=site,
                before=before,
                after=after,
            )
        logger.info("participant roles changed site_id=%s actor=%s", site, actor.id)
        return ParticipantView.of(after)

    # -------------------------------------------------------------------------------- API keys

    def create_key(
        self,
        actor: Actor,
        *,
        site_id: Any,
        name: Any,
        roles: Any,
        expires_in_days: Any = None,
    ) -> IssuedKey:
        """A new API key with its first client secret, both shown once (audited as disclosed)."""
        site = self._site_id(site_id)
        clean_name = inputs.name_text(name)
        wanted = parse_client_roles(inputs.names(roles, "roles"))
        days = inputs.optional_integer(
            expires_in_days, "expires_in_days", low=1, high=inputs.MAX_DAYS
        )
        with self._store.transaction() as tx:
            now = self._clock.now_ms()
            keyring = recorded_keyring(tx, self._keyrings)
            participant = self._participant(tx, site)
            minted = self._mint(tx, keyring, site)
            key = issue_api_key(
                minted,
                participant,
                name=clean_name,
                roles=wanted,
                now_ms=now,
                created_by=actor.id,
                expires_at_ms=None if days is None else now + days * lifecycle.DAY_MS,
            )
            tx.api_keys.add(key)
            secret = self._add_secret(tx, keyring, key.key_id, now)
            record_event(
                tx,
                actor,
                at_ms=now,
                action="key.create",
                target_type="api_key",
                target_id=key.key_id,
                site_id=site,
                after=_disclosed(key),
            )
        logger.info("api key created key_id=%s site_id=%s actor=%s", key.key_id, site, actor.id)
        return self._issued(minted, secret, key, now)

    def key_page(
        self, actor: Actor, *, site_id: Any = None, limit: Any = None, after: Any = None
    ) -> Page[KeyView]:
        """At most ``limit`` keys (every one, when None) in ``list_keys``' order (site, age,
        then key id) after the key ``after`` names (from the first, when None; an unknown key
        is NotFound, and with ``site_id`` a key of another participant is InvalidInput: it is no
        place in that listing); only ``site_id``'s when given. ``more`` when others follow."""
        del actor
        site = None if site_id is None else self._site_id(site_id)
        count = inputs.optional_integer(limit, "limit", low=1, high=MAX_LIST_LIMIT)
        start = None if after is None else inputs.credential_id(after, "after")
        now = self._clock.now_ms()
        with self._store.read() as tx:
            if site is not None:
                self._participant(tx, site)
            position = None if start is None else self._key(tx, start)
            if position is not None and site is not None and position.site_id != site:
                raise InvalidInput(
                    f"after names a key of participant {position.site_id}, not of {site}"
                )
            found = tx.api_keys.list_page(
                site_id=site, after=position, limit=None if count is None else count + 1
            )
            keys = found[:count]
            counters = (
                tx.usage.list_all()  # every key listed: one read, not one per batch of keys
                if site is None and count is None and start is None
                else tx.usage.list_for_keys([k.key_id for k in keys])
            )
            usage = _usage_by_key((u.key_id, u.endpoint, u.count) for u in counters)
        more = count is not None and len(found) > count
        return Page([self._view(k, now, usage.get(k.key_id)) for k in keys], more)

    def get_key(self, actor: Actor, key_id: Any) -> KeyView:
        del actor
        kid = inputs.credential_id(key_id, "key_id")
        now = self._clock.now_ms()
        with self._store.read() as tx:
            key = self._key(tx, kid)
            return self._view(key, now, self._usage(tx, kid))

    def rename_key(self, actor: Actor, key_id: Any, *, name: Any) -> KeyView:
        kid = inputs.credential_id(key_id, "key_id")
        clean_name = inputs.name_text(name)
        return self._change_key(
            actor,
            kid,
            "key.rename",
            lambda key, now, _tx: lifecycle.rename_key(key, clean_name, now),
        )

    def set_key_roles(self, actor: Actor, key_id: Any, *, roles: Any) -> KeyView:
        """Roles stay a non-empty subset of what the key's participant may grant."""
        kid = inputs.credential_id(key_id, "key_id")
        wanted = parse_client_roles(inputs.names(roles, "roles"))

        def change(key: ApiKey, now: int, tx: Tx) -> ApiKey:
            participant = self._participant(tx, key.site_id)
            return lifecycle.set_key_roles(key, wanted, participant, now)

        return self._change_key(actor, kid, "key.set_roles", change)

    def disable_key(self, actor: Actor, key_id: Any) -> KeyView:
        kid = inputs.credential_id(key_id, "key_id")
        return self._change_key(
            actor, kid, "key.disable", lambda key, now, _tx: lifecycle.disable_key(key, now)
        )

    def enable_key(self, actor: Actor, key_id: Any) -> KeyView:
        kid = inputs.credential_id(key_id, "key_id")
        return self._change_key(
            actor, kid, "key.enable", lambda key, now, _tx: lifecycle.enable_key(key, now)
        )

    def revoke_key(self, actor: Actor, key_id: Any, *, reason: Any) -> KeyView:
        """Terminal. The key's secrets stop being accepted at once as well."""
        kid = inputs.credential_id(key_id, "key_id")
        why = inputs.name_text(reason, "reason")

        def change(key: ApiKey, now: int, tx: Tx) -> ApiKey:
            revoked = lifecycle.revoke_key(key, now_ms=now, by=actor.id, reason=why)
            _stop_secrets(tx, key.key_id, now)
            return revoked

        return self._change_key(actor, kid, "key.revoke", change)

    def rotate_key(
        self,
        actor: Actor,
        key_id: Any,
        *,
        grace_days: Any = DEFAULT_GRACE_DAYS,
        name: Any = None,
    ) -> IssuedKey:
        """Issue the successor (same site, roles and expiry policy, a new secret; the old key's
        name unless ``name`` is given, checked as a created key's is). The old key keeps working
        for ``grace_days`` (0: stops now), then retires by itself."""
        kid = inputs.credential_id(key_id, "key_id")
        grace = inputs.integer(grace_days, "grace_days", low=0, high=MAX_GRACE_DAYS)
        clean_name = inputs.optional_name_text(name)
        with self._store.transaction() as tx:
            now = self._clock.now_ms()
            keyring = recorded_keyring(tx, self._keyrings)
            old = self._key(tx, kid)
            participant = self._participant(tx, old.site_id)
            if not participant.enabled:
                raise InvalidTransition(f"Participant {participant.site_id} is disabled")
            if old.rotated_to is not None:  # checked before minting, for a clear message
                raise InvalidTransition(f"API key {kid} was already rotated to {old.rotated_to}")
            minted = self._mint(tx, keyring, old.site_id)
            rotation = lifecycle.rotate_key(
                old,
                minted,
                participant,
                now_ms=now,
                by=actor.id,
                grace_ms=grace * lifecycle.DAY_MS,
                name=clean_name,
            )
            # The successor first: the old row's ``rotated_to`` refers to it.
            tx.api_keys.add(rotation.successor)
            tx.api_keys.update(rotation.old)
            tx.secrets.purge_retired(now)  # the old key's secrets, when it retires at once
            secret = self._add_secret(tx, keyring, rotation.successor.key_id, now)
            record_event(
                tx,
                actor,
                at_ms=now,
                action="key.rotate",
                target_type="api_key",
                target_id=kid,
                site_id=old.site_id,
                before=old,
                after=rotation.old,
            )
            record_event(
                tx,
                actor,
                at_ms=now,
                action="key.create",
                target_type="api_key",
                target_id=rotation.successor.key_id,
                site_id=old.site_id,
                after=_disclosed(rotation.successor),
            )
        logger.info(
            "api key rotated key_id=%s successor=%s grace_days=%s actor=%s",
            kid,
            rotation.successor.key_id,
            grace,
            actor.id,
        )
        return self._issued(minted, secret, rotation.successor, now)

    def retire_key_now(self, actor: Actor, key_id: Any) -> KeyView:
        """End a rotated key's grace window now: from this moment the old key, and its client
        secrets with it, are refused; its successor keeps working. Refused (InvalidTransition)
        for a key that was never rotated (revoke it instead), one already retired (a rotation
        with 0 grace retires at once) and a revoked key."""
        kid = inputs.credential_id(key_id, "key_id")

        def change(key: ApiKey, now: int, tx: Tx) -> ApiKey:
            retired = lifecycle.retire_now(key, now)
            _stop_secrets(tx, key.key_id, now)
            return retired

        return self._change_key(actor, kid, "key.retire_now", change)

    def rotate_secret(
        self, actor: Actor, key_id: Any, *, grace_days: Any = DEFAULT_GRACE_DAYS
    ) -> IssuedSecret:
        """A new client secret for the same key. Every previous secret still accepted stays so for
        the grace at most (an older overlap is cut short, never extended; 0 stops them all now);
        ``previous_secret_retires_at_ms`` is when the last of them stops."""
        kid = inputs.credential_id(key_id, "key_id")
        grace = inputs.integer(grace_days, "grace_days", low=0, high=MAX_GRACE_DAYS)
        with self._store.transaction() as tx:
            now = self._clock.now_ms()
            keyring = recorded_keyring(tx, self._keyrings)
            key = self._key(tx, kid)
            rotation = lifecycle.rotate_secret(
                key, tx.secrets.list_for_key(kid), now_ms=now, grace_ms=grace * lifecycle.DAY_MS
            )
            for previous in rotation.updates:
                tx.secrets.update(previous)
            tx.secrets.purge_retired(now)  # those stopped now (a grace of 0) are deleted now
            secret = self._add_secret(tx, keyring, kid, now)
            retires_at = rotation.previous_retires_at_ms
            record_event(
                tx,
                actor,
                at_ms=now,
                action="key.rotate_secret",
                target_type="api_key",
                target_id=kid,
                site_id=key.site_id,
                after={
                    "key_id": kid,
                    "secret_disclosed": True,
                    "previous_secret_retires_at_ms": retires_at,
                },
            )
        logger.info("client secret rotated key_id=%s grace_days=%s actor=%s", kid, grace, actor.id)
        return IssuedSecret(
            key_id=kid, secret=secret.text, previous_secret_retires_at_ms=retires_at
        )

    def purge_retired_secrets(self) -> int:
        """Delete every client secret no request can be sealed with again (past its overlap
        window, or its key revoked, retired or expired); how many. A change that stops secrets
        at once deletes them itself; this takes those whose time passed since (serve's upkeep
        runs it with the key rotation schedule)."""
        with self._store.transaction() as tx:
            purged = tx.secrets.purge_retired(self._clock.now_ms())
        if purged:
            logger.info("retired client secrets deleted count=%d", purged)
        return purged

    # ----------------------------------------------------------------------------- the lookup

    def resolve_client(self, key_text: Any) -> ResolvedClient:
        """Authenticate a presented API key and return what the request path needs.

        Shape, checksum and environment are refused before any lookup (``MalformedCredential``,
        ``WrongEnvironment``); then one lookup by key id and a constant-time hash compare (an
        unknown id costs the same); then the key's and its participant's state. Every refusal is a
        ``CredentialError`` whose message never repeats the presented text.
        """
        if not isinstance(key_text, str):
            raise MalformedCredential("The API key is malformed")
        now = self._clock.now_ms()
        keyring = self._keyrings.current()
        with self._store.read() as tx:
            key = verify_api_key(
                key_text,
                environment=self._environment,
                pepper=keyring.pepper,
                lookup=tx.api_keys.get,
            )
            participant = self._participant(tx, key.site_id)
            decision = authenticate(key, participant, now)
            if isinstance(decision, Denied):
                logger.info("api key refused key_id=%s reason=%s", key.key_id, decision.reason)
                raise CredentialRejected(f"The API key is not usable: {decision.reason.value}")
            sealed = accepted_secrets(tx.secrets.list_for_key(key.key_id), now)
            secrets = tuple(open_secret(keyring, s).raw for s in sealed)
            view = self._view(key, now, self._usage(tx, key.key_id))
        if not secrets:
            logger.warning("api key has no live client secret key_id=%s", key.key_id)
            raise CredentialRejected("The API key has no live client secret")
        logger.debug("api key resolved key_id=%s secrets=%d", key.key_id, len(secrets))
        return ResolvedClient(key=view, roles=effective_roles(key, participant), secrets=secrets)

    # ---------------------------------------------------------------------------------- audit

    def list_audit(
        self,
        actor: Actor,
        *,
        since_seq: Any = None,
        target_id: Any = None,
        action: Any = None,
        limit: Any = 100,
        target_type: Any = None,
        site_id: Any = None,
    ) -> list[AuditEventView]:
        """Events after ``since_seq`` (oldest first) matching the filters; page with since_seq.

        ``target_id`` is compared with the event's target id alone, whatever its type (a keyset
        id may equal a site id): ``target_type`` narrows it, and ``site_id`` finds every event
        about a participant (its keys, keysets, keypairs and itself).

        An actor with an admin token sees only the events whose target its roles may read
        (``authorization.AUDIT_TARGET_READS``: events about admin tokens only when it may list
        admin tokens); the events it may not see are left out by the store's query, so pages stay
        full. An actor without one (the command line, which holds the database) sees every event.
        """
        since = inputs.optional_integer(since_seq, "since_seq", low=0, high=2**62)
        target = inputs.optional_search_text(target_id, "target_id", max_length=200)
        act = inputs.optional_text(action, "action", max_length=64)
        count = inputs.integer(limit, "limit", low=1, high=MAX_AUDIT_LIMIT)
        kind = _audit_target_type(target_type)
        site = inputs.optional_integer(
            site_id, "site_id", low=MIN_AUDIT_SITE_ID, high=MAX_AUDIT_SITE_ID
        )
        with self._store.read() as tx:
            events = tx.audit.list_events(
                since_seq=since,
                target_type=kind,
                target_id=target,
                action=act,
                site_id=site,
                limit=count,
                exclude_target_types=_audit_targets_hidden(tx, actor),
            )
        return [AuditEventView.of(e) for e in events]

    def verify_audit(self, actor: Actor) -> AuditVerdictView:
        """Walks the whole chain: an edited, inserted, reordered or deleted row breaks it, and so
        does a chain that does not end at the head the store recorded with its last append (a
        deleted or truncated tail, a rewritten last event). The verdict carries the head so that
        operators can keep a copy outside the database, which also survives a rewrite of both.
        An intact chain with no recorded head (an earlier version's) is reported with the
        remedy: ``db upgrade`` records its head."""
        del actor
        with self._store.read() as tx:
            try:
                recorded = tx.audit.head()
            except AuditHeadUnreadable:
                with closing(tx.audit.chain_events()) as rows:
                    verdict = verify_chain(rows)  # the rows, with no head to end at
                if verdict.ok:  # the head names the last event: that is where it breaks
                    verdict = replace(
                        verdict,
                        ok=False,
                        first_bad_seq=verdict.head_seq,
                        problem=HEAD_UNREADABLE,
                    )
                return AuditVerdictView.of(verdict)
            # Streamed: the trail grows with every opt-out, so it is never held whole.
            with closing(tx.audit.chain_events()) as rows:
                events = _Counted(rows)
                verdict = verify_chain(
                    events, recorded_head=EMPTY_HEAD if recorded is None else recorded
                )
        if recorded is None and not verdict.ok and verdict.checked == events.count:
            # Every link verifies and only the head is missing: how an earlier version left it.
            verdict = replace(verdict, problem=f"{verdict.problem}; {NO_HEAD_REMEDY}")
        return AuditVerdictView.of(verdict)

    # -------------------------------------------------------------------------------- helpers

    def _change_key(
        self,
        actor: Actor,
        key_id: str,
        action: str,
        change: _KeyChange,
    ) -> KeyView:
        with self._store.transaction() as tx:
            now = self._clock.now_ms()
            before = self._key(tx, key_id)
            after = change(before, now, tx)
            tx.api_keys.update(after)
            record_event(
                tx,
                actor,
                at_ms=now,
                action=action,
                target_type="api_key",
                target_id=key_id,
                site_id=before.site_id,
                before=before,
                after=after,
            )
            view = self._view(after, now, self._usage(tx, key_id))
        logger.info("%s key_id=%s actor=%s", action, key_id, actor.id)
        return view

    def _site_id(self, site_id: Any) -> int:
        return inputs.integer(site_id, "site_id", low=MIN_SITE_ID, high=MAX_SITE_ID)

    @staticmethod
    def _participant(tx: ReadTx, site_id: int) -> Participant:
        participant = tx.participants.get(site_id)
        if participant is None:
            raise NotFound(f"No participant {site_id}")
        return participant

    @staticmethod
    def _key(tx: ReadTx, key_id: str) -> ApiKey:
        key = tx.api_keys.get(key_id)
        if key is None:
            raise NotFound(f"No API key {key_id}")
        return key

    @staticmethod
    def _next_site_id(tx: Tx) -> int:
        """One above the highest site id, when that is allowed; otherwise (a participant holds
        the highest allowed id) the lowest free id above the reserved ones. Read under the write
        lock of the transaction that adds the participant, so concurrent creates differ."""
        highest = tx.participants.highest_site_id()
        if highest is None or highest < MIN_SITE_ID:
            return MIN_SITE_ID
        if highest < MAX_SITE_ID:
            return highest + 1
        free = tx.participants.lowest_free_site_id(MIN_SITE_ID, MAX_SITE_ID)
        if free is None:
            raise InvalidInput(f"Every site id from {MIN_SITE_ID} to {MAX_SITE_ID} is taken")
        return free

    def _mint(self, tx: Tx, keyring: Keyring, site_id: int) -> MintedCredential:
        for _ in range(_MINT_ATTEMPTS):
            minted = mint_api_key(
                self._environment, site_id, keyring.pepper, self._random, brand=self._brand
            )
            if tx.api_keys.get(minted.key_id) is None:
                return minted
        raise AlreadyExists("Could not draw an unused key id; try again")

    def _add_secret(self, tx: Tx, keyring: Keyring, key_id: str, now: int) -> ClientSecret:
        secret = new_client_secret(self._random)
        sealed = seal_secret(keyring, key_id, secret, self._random, now)
        tx.secrets.add(
            key_id,
            kek_version=sealed.kek_version,
            ciphertext=sealed.ciphertext,
            created_at_ms=now,
        )
        return secret

    @staticmethod
    def _usage(tx: ReadTx, key_id: str) -> dict[str, int]:
        return {u.endpoint: u.count for u in tx.usage.list_for_key(key_id)}

    def _view(self, key: ApiKey, now: int, usage: dict[str, int] | None) -> KeyView:
        return KeyView.of(key, now_ms=now, usage=usage, rotation_age_ms=self._rotation_age_ms)

    def _issued(
        self, minted: MintedCredential, secret: ClientSecret, key: ApiKey, now: int
    ) -> IssuedKey:
        view = self._view(key, now, {})
        return IssuedKey(
            key_id=key.key_id,
            key=minted.text,
            secret=secret.text,
            roles=view.roles,
            site_id=key.site_id,
            name=key.name,
            expires_at_ms=key.expires_at_ms,
            key_view=view,
        )


def _audit_target_type(value: Any) -> str | None:
    kind = inputs.optional_text(value, "target_type", max_length=64)
    if kind is not None and kind not in AUDIT_TARGET_TYPES:
        raise InvalidInput(f"target_type must be one of: {', '.join(AUDIT_TARGET_TYPES)}")
    return kind


def _audit_targets_hidden(tx: ReadTx, actor: Actor) -> frozenset[str]:
    """The target types whose events ``actor`` may not list: none for an actor without an admin
    token; for one with a token, decided from its roles (which never change) by the
    authorisation table; a token no longer stored holds no role."""
    if actor.admin_token_id is None:
        return frozenset()
    token = tx.admin_tokens.get(actor.admin_token_id)
    return audit_targets_hidden_from(() if token is None else token.roles)


def _is_live(key: ApiKey, now_ms: int) -> bool:
    return (
        key.state is not KeyState.REVOKED
        and not is_retired(key, now_ms)
        and not is_expired(key, now_ms)
    )


def _disclosed(key: ApiKey) -> dict[str, Any]:
    """The audit ``after`` of an issued key: its public fields, and the fact of disclosure."""
    return {
        "key_id": key.key_id,
        "site_id": key.site_id,
        "name": key.name,
        "roles": sorted(r.value for r in key.roles),
        "state": key.state.value,
        "expires_at_ms": key.expires_at_ms,
        "rotated_from": key.rotated_from,
        "secret_disclosed": True,
    }


def _retired_at(secret: SealedSecret, now_ms: int) -> SealedSecret:
    return replace(secret, retires_at_ms=now_ms)


def _stop_secrets(tx: Tx, key_id: str, now_ms: int) -> None:
    """Retire, at ``now_ms``, every client secret of the key still accepted, and delete them
    with every other secret no request can be sealed with again (``purge_retired``)."""
    for secret in accepted_secrets(tx.secrets.list_for_key(key_id), now_ms):
        tx.secrets.update(_retired_at(secret, now_ms))
    tx.secrets.purge_retired(now_ms)


def _usage_by_key(rows: Iterable[tuple[str, str, int]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for key_id, endpoint, count in rows:
        out.setdefault(key_id, {})[endpoint] = count
    return out


__all__: Sequence[str] = ("CredentialService", "ResolvedClient")


class _Counted(Iterator[T]):
    """``items``, counting those taken (a walk that stops early takes fewer than there are)."""

    def __init__(self, items: Iterator[T]) -> None:
        self._items = items
        self.count = 0

    def __next__(self) -> T:
        item = next(self._items)
        self.count += 1
        return item
