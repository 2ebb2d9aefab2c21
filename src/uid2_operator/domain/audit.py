"""The audit trail: append-only, hash-chained events that never carry secret material."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    SUCCESS = "success"
    DENIED = "denied"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    seq: int  # assigned by the store, gap-free within one store
    at_ms: int
    actor: str  # e.g. "admin:<token_id>", "cli:<os user>", "system"
    action: str  # e.g. "key.create", "key.secret.reveal"
    target_type: str  # "participant", "api_key", "admin_token", ...
    target_id: str
    site_id: int | None
    before: dict[str, Any] | None  # secrets redacted
    after: dict[str, Any] | None  # secrets redacted
    request_id: str | None
    source: str | None  # source address or "cli"
    outcome: Outcome
    prev_hash: bytes
    hash: bytes
