"""What use cases return: plain, frozen, JSON-ready views of the records.

Views never carry a key hash, a sealed secret or a KEK version. The only views that hold a
plaintext credential are the ``Issued*`` results of create and rotate, which exist to be shown
once; their reprs hide the credential so that logging or printing the object by mistake leaks
nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from uid2_operator.domain.admin_tokens import AdminToken
from uid2_operator.domain.audit import AuditEvent, ChainVerdict
from uid2_operator.domain.credentials import ApiKey, key_usable
from uid2_operator.domain.lifecycle import DEFAULT_ROTATION_AGE_MS, rotation_due
from uid2_operator.domain.participants import Participant
from uid2_operator.domain.roles import AdminRole, ClientRole

JsonDict = dict[str, Any]


def _sorted_roles(roles: Iterable[ClientRole | AdminRole]) -> list[str]:
    return sorted(role.value for role in roles)


_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Page(Generic[_T]):
    """One page of a listing: its items, in the listing's order, and whether more follow (the
    next page starts after the last item)."""

    items: list[_T]
    more: bool


@dataclass(frozen=True, slots=True)
class ParticipantView:
    site_id: int
    name: str
    type: str
    roles: list[str]  # the roles this participant may grant to its keys, sorted
    enabled: bool
    contacts: list[str]
    created_at_ms: int
    updated_at_ms: int

    @classmethod
    def of(cls, participant: Participant) -> ParticipantView:
        return cls(
            site_id=participant.site_id,
            name=participant.name,
            type=participant.type.value,
            roles=_sorted_roles(participant.allowed_roles),
            enabled=participant.enabled,
            contacts=list(participant.contacts),
            created_at_ms=participant.created_at_ms,
            updated_at_ms=participant.updated_at_ms,
        )

    def to_json(self) -> JsonDict:
        return {
            "site_id": self.site_id,
            "name": self.name,
            "type": self.type,
            "roles": list(self.roles),
            "enabled": self.enabled,
            "contacts": list(self.contacts),
            "created_at_ms": self.created_at_ms,
            "updated_at_ms": self.updated_at_ms,
        }


@dataclass(frozen=True, slots=True)
class KeyView:
    key_id: str
    site_id: int
    name: str
    roles: list[str]
    state: str  # the stored lifecycle state: active, disabled or revoked
    created_at_ms: int
    created_by: str
    expires_at_ms: int | None
    retires_at_ms: int | None
    rotated_from: str | None
    rotated_to: str | None
    revoked_at_ms: int | None
    revoked_by: str | None
    revoked_reason: str | None
    last_used_at_ms: int | None
    rotation_due: bool
    usage: dict[str, int]
    usable: bool
    """Whether the key itself authenticates now: ``active``, and neither expired nor retired
    (``state`` stays ``active`` past either). A disabled participant refuses it all the same."""

    @classmethod
    def of(
        cls,
        key: ApiKey,
        *,
        now_ms: int,
        usage: Mapping[str, int] | None = None,
        rotation_age_ms: int = DEFAULT_ROTATION_AGE_MS,
    ) -> KeyView:
        return cls(
            key_id=key.key_id,
            site_id=key.site_id,
            name=key.name,
            roles=_sorted_roles(key.roles),
            state=key.state.value,
            created_at_ms=key.created_at_ms,
            created_by=key.created_by,
            expires_at_ms=key.expires_at_ms,
            retires_at_ms=key.retires_at_ms,
            rotated_from=key.rotated_from,
            rotated_to=key.rotated_to,
            revoked_at_ms=key.revoked_at_ms,
            revoked_by=key.revoked_by,
            revoked_reason=key.revoked_reason,
            last_used_at_ms=key.last_used_at_ms,
            rotation_due=rotation_due(key, now_ms, rotation_age_ms),
            usage=dict(sorted((usage or {}).items())),
            usable=key_usable(key, now_ms),
        )

    def to_json(self) -> JsonDict:
        return {
            "key_id": self.key_id,
            "site_id": self.site_id,
            "name": self.name,
            "roles": list(self.roles),
            "state": self.state,
            "created_at_ms": self.created_at_ms,
            "created_by": self.created_by,
            "expires_at_ms": self.expires_at_ms,
            "retires_at_ms": self.retires_at_ms,
            "rotated_from": self.rotated_from,
            "rotated_to": self.rotated_to,
            "revoked_at_ms": self.revoked_at_ms,
            "revoked_by": self.revoked_by,
            "revoked_reason": self.revoked_reason,
            "last_used_at_ms": self.last_used_at_ms,
            "rotation_due": self.rotation_due,
            "usage": dict(self.usage),
            "usable": self.usable,
        }


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A new API key and its first client secret: the only time either is ever shown."""

    key_id: str
    key: str = field(repr=False)
    secret: str = field(repr=False)
    roles: list[str]
    site_id: int
    name: str
    expires_at_ms: int | None
    key_view: KeyView

    def __repr__(self) -> str:
        return f"IssuedKey(key_id={self.key_id!r}, key=<redacted>, secret=<redacted>)"

    __str__ = __repr__

    def to_json(self) -> JsonDict:
        return {
            "key_id": self.key_id,
            "key": self.key,
            "secret": self.secret,
            "roles": list(self.roles),
            "site_id": self.site_id,
            "name": self.name,
            "expires_at_ms": self.expires_at_ms,
            "key_view": self.key_view.to_json(),
        }


@dataclass(frozen=True, slots=True)
class IssuedSecret:
    """A key's new client secret (shown once) and when the previous one stops being accepted."""

    key_id: str
    secret: str = field(repr=False)
    previous_secret_retires_at_ms: int | None

    def __repr__(self) -> str:
        return f"IssuedSecret(key_id={self.key_id!r}, secret=<redacted>)"

    __str__ = __repr__

    def to_json(self) -> JsonDict:
        return {
            "key_id": self.key_id,
            "secret": self.secret,
            "previous_secret_retires_at_ms": self.previous_secret_retires_at_ms,
        }


@dataclass(frozen=True, slots=True)
class AdminTokenView:
    token_id: str
    name: str
    roles: list[str]
    created_at_ms: int
    created_by: str
    revoked_at_ms: int | None

    @classmethod
    def of(cls, token: AdminToken) -> AdminTokenView:
        return cls(
            token_id=token.token_id,
            name=token.name,
            roles=_sorted_roles(token.roles),
            created_at_ms=token.created_at_ms,
            created_by=token.created_by,
            revoked_at_ms=token.revoked_at_ms,
        )

    def to_json(self) -> JsonDict:
        return {
            "token_id": self.token_id,
            "name": self.name,
            "roles": list(self.roles),
            "created_at_ms": self.created_at_ms,
            "created_by": self.created_by,
            "revoked_at_ms": self.revoked_at_ms,
        }


@dataclass(frozen=True, slots=True)
class IssuedAdminToken:
    """A new admin token: shown once, then only its hash exists."""

    token_id: str
    token: str = field(repr=False)
    roles: list[str]
    name: str

    def __repr__(self) -> str:
        return f"IssuedAdminToken(token_id={self.token_id!r}, token=<redacted>)"

    __str__ = __repr__

    def to_json(self) -> JsonDict:
        return {
            "token_id": self.token_id,
            "token": self.token,
            "roles": list(self.roles),
            "name": self.name,
        }


@dataclass(frozen=True, slots=True)
class AuditEventView:
    seq: int
    at_ms: int
    actor: str
    action: str
    target_type: str
    target_id: str
    site_id: int | None
    before: JsonDict | None
    after: JsonDict | None
    request_id: str | None
    source: str | None
    outcome: str
    hash: str  # hex

    @classmethod
    def of(cls, event: AuditEvent) -> AuditEventView:
        return cls(
            seq=event.seq,
            at_ms=event.at_ms,
            actor=event.actor,
            action=event.action,
            target_type=event.target_type,
            target_id=event.target_id,
            site_id=event.site_id,
            before=event.before,
            after=event.after,
            request_id=event.request_id,
            source=event.source,
            outcome=event.outcome.value,
            hash=event.hash.hex(),
        )

    def to_json(self) -> JsonDict:
        return {
            "seq": self.seq,
            "at_ms": self.at_ms,
            "actor": self.actor,
            "action": self.action,
            "target_type": self.target_type,
            "target_id": self.target_id,
            "site_id": self.site_id,
            "before": self.before,
            "after": self.after,
            "request_id": self.request_id,
            "source": self.source,
            "outcome": self.outcome,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class AuditVerdictView:
    """The verdict, and the chain's head (the last good event's seq and hex hash) for operators
    to record outside the database: whoever can write the whole database can rewrite the events
    and the recorded head together, but not a copy kept elsewhere."""

    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str | None
    head_seq: int
    head_hash: str  # hex

    @classmethod
    def of(cls, verdict: ChainVerdict) -> AuditVerdictView:
        return cls(
            ok=verdict.ok,
            checked=verdict.checked,
            first_bad_seq=verdict.first_bad_seq,
            reason=verdict.problem,
            head_seq=verdict.head_seq,
            head_hash=verdict.head_hash.hex(),
        )

    def to_json(self) -> JsonDict:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
        }
