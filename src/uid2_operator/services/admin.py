"""Use cases for administrators' tokens: issue, list, revoke, authenticate, and the bootstrap token.

Admin tokens are minted, hashed and verified by the same machinery as API keys (kind letter ``A``,
site 0), so the same guarantees hold: the token text is shown once, stored only as a keyed hash,
looked up by its public id and compared in constant time, with the same work for an unknown id.
The pepper comes from a ``KeyringSource``, asked once per use case (inside the transaction of a
write). A token is minted only under a keyring that agrees with the KEK check values the store
records (``recorded_keyring``): the check values name the keyring, and a keyring file copied
from another instance brings another pepper too, under which the token would not authenticate
once the right file is back.
"""

from __future__ import annotations

import logging
from typing import Any

from uid2_operator.clock import Clock
from uid2_operator.domain.admin_tokens import (
    AdminToken,
    authenticate_admin_token,
    issue_admin_token,
    keep_a_super_user,
    revoke_admin_token,
    verify_admin_token,
)
from uid2_operator.domain.audit import AuditEvent, Outcome
from uid2_operator.domain.authorization import Denied
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import MintedCredential, mint_admin_token
from uid2_operator.domain.roles import AdminRole, parse_admin_roles
from uid2_operator.domain.sealing import Keyring, KeyringSource
from uid2_operator.errors import AlreadyExists, CredentialRejected, MalformedCredential, NotFound
from uid2_operator.services import inputs
from uid2_operator.services.audit_trail import record_event, record_refusal, require_active_token
from uid2_operator.services.context import Actor
from uid2_operator.services.kek_check_values import recorded_keyring
from uid2_operator.services.views import AdminTokenView, IssuedAdminToken
from uid2_operator.storage.interface import ReadTx, Store, Tx
from uid2_operator.wire.aead import RandomBytes

logger = logging.getLogger(__name__)

BOOTSTRAP_TOKEN_NAME = "bootstrap"  # noqa: S105 (a display name, not a secret)
_MINT_ATTEMPTS = 8


class AdminService:
    def __init__(
        self,
        store: Store,
        keyring: KeyringSource,
        environment: Environment,
        clock: Clock,
        random: RandomBytes,
    ) -> None:
        self._store = store
        self._keyrings = keyring
        self._environment = environment
        self._clock = clock
        self._random = random

    def create_admin_token(self, actor: Actor, *, name: Any, roles: Any) -> IssuedAdminToken:
        """A new admin token, shown once (audited as a disclosure)."""
        clean_name = inputs.name_text(name)
        wanted = parse_admin_roles(inputs.names(roles, "roles"))
        with self._store.transaction() as tx:
            now = self._clock.now_ms()
            keyring = recorded_keyring(tx, self._keyrings)
            minted, token = self._issue(tx, actor, clean_name, wanted, now, keyring=keyring)
        logger.info("admin token created token_id=%s actor=%s", token.token_id, actor.id)
        return _issued(minted, token)

    def list_admin_tokens(self, actor: Actor) -> list[AdminTokenView]:
        del actor
        with self._store.read() as tx:
            return [AdminTokenView.of(t) for t in tx.admin_tokens.list_all()]

    def revoke_admin_token(self, actor: Actor, token_id: Any) -> AdminTokenView:
        """Terminal. The token stops working with the next request that presents it.

        Refused (``InvalidTransition``) when it would leave no active SUPER_USER token, from the
        admin API and the command line alike: create another SUPER_USER token first.
        """
        tid = inputs.credential_id(token_id, "token_id")
        with self._store.transaction() as tx:
            now = self._clock.now_ms()
            # The acting admin token is checked before the change rather than when its event is
            # recorded, since the change may be that token's own revocation.
            require_active_token(tx, actor)
            before = _token(tx, tid)
            after = revoke_admin_token(before, now_ms=now, by=actor.id)
            # Read and decided under the store-wide write lock: of two concurrent revokes of
            # the last two SUPER_USER tokens, the second sees the first and is refused.
            keep_a_super_user(tx.admin_tokens.list_all(), after)
            tx.admin_tokens.update(after)
            record_event(
                tx,
                actor,
                at_ms=now,
                action="admin_token.revoke",
                target_type="admin_token",
                target_id=tid,
                before=before,
                after=after,
                check_token=False,  # checked before the change, which may end that token
            )
        logger.info("admin token revoked token_id=%s actor=%s", tid, actor.id)
        return AdminTokenView.of(after)

    def authenticate(self, token_text: Any) -> AdminTokenView:
        """The token's view if it may be used now; otherwise a ``CredentialError``.

        Malformed text and a token of another environment are refused before any lookup
        (``MalformedCredential``, ``WrongEnvironment``: the latter names the environment); an
        unknown id, a wrong tail and a revoked token raise ``CredentialRejected``.
        """
        if not isinstance(token_text, str):
            raise MalformedCredential("The admin token is malformed")
        pepper = self._keyrings.current().pepper
        with self._store.read() as tx:
            token = verify_admin_token(
                token_text,
                environment=self._environment,
                pepper=pepper,
                lookup=tx.admin_tokens.get,
            )
        decision = authenticate_admin_token(token)
        if isinstance(decision, Denied):
            logger.info(
                "admin token refused token_id=%s reason=%s", token.token_id, decision.reason
            )
            raise CredentialRejected("The admin token is not valid")
        return AdminTokenView.of(token)

    def require_active(self, actor: Actor) -> None:
        """Refuse (``CredentialRejected``) an actor whose admin token is no longer active, as
        read now; nothing for an actor without a token. A change made with the token checks this
        itself, in its own transaction; this is for the admin API to answer a write its service
        refused, which changed nothing, as a request sent after the revocation would be."""
        with self._store.read() as tx:
            require_active_token(tx, actor)

    def record_refusal(
        self,
        actor: Actor,
        *,
        outcome: Outcome,
        action: str,
        target_type: str,
        target_id: str,
        site_id: int | None = None,
        error_code: str | None = None,
        repeated: int = 0,
    ) -> AuditEvent:
        """Record an admin request that was refused: ``denied`` (the token's roles do not allow
        ``action``) or ``failed`` (allowed, then refused by a rule; ``error_code`` says which).
        ``repeated``: the repeats of the same attempt left out since the last one recorded.

        One transaction of its own, since the refused request changed nothing.
        """
        return record_refusal(
            self._store,
            actor,
            now_ms=self._clock.now_ms,
            outcome=outcome,
            action=action,
            target_type=target_type,
            target_id=target_id,
            site_id=site_id,
            error_code=error_code,
            repeated=repeated,
        )

    def bootstrap_token(self, actor: Actor) -> IssuedAdminToken | None:
        """The first SUPER_USER token, only while no admin token exists (``init`` shows it once).

        Checked and created in one write transaction, so two concurrent first runs cannot both
        get one.
        """
        with self._store.transaction() as tx:
            now = self._clock.now_ms()
            keyring = recorded_keyring(tx, self._keyrings)
            if tx.admin_tokens.list_all():
                return None
            minted, token = self._issue(
                tx,
                actor,
                BOOTSTRAP_TOKEN_NAME,
                frozenset({AdminRole.SUPER_USER}),
                now,
                keyring=keyring,
            )
        logger.info("bootstrap admin token created token_id=%s", token.token_id)
        return _issued(minted, token)

    def _issue(
        self,
        tx: Tx,
        actor: Actor,
        name: str,
        roles: frozenset[AdminRole],
        now: int,
        *,
        keyring: Keyring,
    ) -> tuple[MintedCredential, AdminToken]:
        minted = self._mint(tx, keyring)
        token = issue_admin_token(minted, name=name, roles=roles, now_ms=now, created_by=actor.id)
        tx.admin_tokens.add(token)
        record_event(
            tx,
            actor,
            at_ms=now,
            action="admin_token.create",
            target_type="admin_token",
            target_id=token.token_id,
            after={
                "token_id": token.token_id,
                "name": token.name,
                "roles": sorted(r.value for r in token.roles),
                "secret_disclosed": True,
            },
        )
        return minted, token

    def _mint(self, tx: Tx, keyring: Keyring) -> MintedCredential:
        for _ in range(_MINT_ATTEMPTS):
            minted = mint_admin_token(self._environment, keyring.pepper, self._random)
            if tx.admin_tokens.get(minted.key_id) is None:
                return minted
        raise AlreadyExists("Could not draw an unused token id; try again")


def _token(tx: ReadTx, token_id: str) -> AdminToken:
    token = tx.admin_tokens.get(token_id)
    if token is None:
        raise NotFound(f"No admin token {token_id}")
    return token


def _issued(minted: MintedCredential, token: AdminToken) -> IssuedAdminToken:
    return IssuedAdminToken(
        token_id=token.token_id,
        token=minted.text,
        roles=sorted(r.value for r in token.roles),
        name=token.name,
    )
