"""Record builders and a stand-in audit hasher for the store contract suite."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from uid2_operator.domain.admin_tokens import AdminToken
from uid2_operator.domain.audit import AuditEvent, Outcome
from uid2_operator.domain.credentials import ApiKey, KeyState
from uid2_operator.domain.participants import Participant, ParticipantType
from uid2_operator.domain.roles import AdminRole, ClientRole

T0 = 1_700_000_000_000


def participant(site_id: int = 1001, **changes: Any) -> Participant:
    values: dict[str, Any] = {
        "site_id": site_id,
        "name": f"Site {site_id}",
        "type": ParticipantType.PUBLISHER,
        "allowed_roles": frozenset({ClientRole.GENERATOR, ClientRole.MAPPER}),
        "enabled": True,
        "contacts": ("ops@example.com", "dev@example.com"),
        "created_at_ms": T0,
        "updated_at_ms": T0,
    }
    values.update(changes)
    return Participant(**values)


def api_key(key_id: str = "UID2-C-L-1001-abcDE1", site_id: int = 1001, **changes: Any) -> ApiKey:
    values: dict[str, Any] = {
        "key_id": key_id,
        "site_id": site_id,
        "name": f"key {key_id}",
        "roles": frozenset({ClientRole.GENERATOR}),
        "state": KeyState.ACTIVE,
        "key_hash": hashlib.sha256(key_id.encode()).digest(),
        "created_at_ms": T0,
        "created_by": "cli:test",
        "updated_at_ms": T0,
    }
    values.update(changes)
    return ApiKey(**values)


def admin_token(token_id: str = "UID2-A-L-0-tokEN1", **changes: Any) -> AdminToken:  # noqa: S107
    values: dict[str, Any] = {
        "token_id": token_id,
        "name": f"token {token_id}",
        "roles": frozenset({AdminRole.READ_ONLY}),
        "token_hash": hashlib.sha256(token_id.encode()).digest(),
        "created_at_ms": T0,
        "created_by": "cli:test",
    }
    values.update(changes)
    return AdminToken(**values)


@dataclass(frozen=True, slots=True)
class Draft:
    """An audit event before it is placed in the chain (structurally an ``AuditFields``)."""

    at_ms: int = T0
    actor: str = "cli:test"
    action: str = "participant.create"
    target_type: str = "participant"
    target_id: str = "1001"
    site_id: int | None = 1001
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    request_id: str | None = None
    source: str | None = "cli"
    outcome: Outcome = Outcome.SUCCESS


def simple_hash(prev_hash: bytes, seq: int, event: AuditEvent) -> bytes:
    """SHA-256 over the chain link and a few fields: enough to tell links apart."""
    fields = [seq, event.at_ms, event.actor, event.action, event.target_id, event.after]
    return hashlib.sha256(prev_hash + json.dumps(fields, sort_keys=True).encode()).digest()
