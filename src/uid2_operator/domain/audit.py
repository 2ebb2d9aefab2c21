"""The audit trail: append-only, hash-chained events that never carry secret material."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from enum import Enum, StrEnum
from typing import Any

from uid2_operator.domain.credential_text import CREDENTIAL_TEXT
from uid2_operator.errors import AuditChainBroken, InvalidInput, InvalidTransition


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


GENESIS_HASH = bytes(32)

# Field names (compared case-insensitively) whose values are secret material or derived from it.
SECRET_FIELD_NAMES = frozenset(
    {
        "key", "api_key", "key_text", "plaintext_key", "text", "secret", "client_secret",
        "secret_text", "hash", "key_hash", "token_hash", "salt", "key_salt", "ciphertext",
        "pepper", "kek", "keks", "token", "password", "authorization",
    }
)  # fmt: skip
SECRET_FIELD_SUFFIXES = ("_hash", "_secret", "_ciphertext", "_salt", "_pepper", "_token")


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return lowered in SECRET_FIELD_NAMES or lowered.endswith(SECRET_FIELD_SUFFIXES)


def _is_secret_value(value: object) -> bool:
    if isinstance(value, bytes | bytearray | memoryview):
        return True
    return isinstance(value, str) and CREDENTIAL_TEXT.search(value) is not None


def redact(value: Any) -> Any:
    """Drop secret-bearing entries at any depth and turn the rest into plain JSON values.

    Removed: entries whose name is secret-bearing (``key_hash``, ``secret``, ``ciphertext``...),
    any bytes, and any string holding a full API key or admin token. Sets become sorted lists,
    tuples lists, enums their values, dataclass records dicts of their fields. Floats and other
    types are refused: the result is hashed, and must hash the same after a database round trip.
    """
    if is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for name, item in value.items():
            if not isinstance(name, str):
                raise InvalidInput("audit field names must be strings")
            if not _is_secret_name(name) and not _is_secret_value(item):
                out[name] = redact(item)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        items = [redact(item) for item in value if not _is_secret_value(item)]
        if isinstance(value, set | frozenset):
            items.sort(key=_canonical_json)
        return items
    if isinstance(value, Enum):
        return redact(value.value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return str(value)
    raise InvalidInput(f"audit values cannot hold {type(value).__name__}")


def _canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, ASCII only: one byte string per value, on every database."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(
        "ascii"
    )


@dataclass(frozen=True, slots=True)
class AuditDraft:
    """An event before the store gives it a place in the chain (``seq`` and ``prev_hash``)."""

    at_ms: int
    actor: str
    action: str
    target_type: str
    target_id: str
    site_id: int | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None
    source: str | None
    outcome: Outcome


def draft_event(
    *,
    at_ms: int,
    actor: str,
    action: str,
    target_type: str,
    target_id: str,
    site_id: int | None = None,
    before: object = None,
    after: object = None,
    request_id: str | None = None,
    source: str | None = None,
    outcome: Outcome = Outcome.SUCCESS,
) -> AuditDraft:
    """A redacted event. ``before``/``after`` may be records (dataclasses) or dicts."""
    return AuditDraft(
        at_ms=at_ms,
        actor=actor,
        action=action,
        target_type=target_type,
        target_id=target_id,
        site_id=site_id,
        before=_snapshot(before),
        after=_snapshot(after),
        request_id=request_id,
        source=source,
        outcome=outcome,
    )


def _snapshot(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    redacted = redact(value)
    if not isinstance(redacted, dict):
        raise InvalidInput("audit before/after must be a record or a mapping")
    return redacted


def canonical_event_bytes(seq: int, event: AuditDraft | AuditEvent) -> bytes:
    """The canonical JSON of every field except ``prev_hash`` and ``hash``, as they are: a draft
    is redacted when it is made, and a stored row is hashed as stored, so that whatever is added
    to a row later (a field redaction would have dropped, a float) changes its hash."""
    return _canonical_json(
        {
            "seq": seq,
            "at_ms": event.at_ms,
            "actor": event.actor,
            "action": event.action,
            "target_type": event.target_type,
            "target_id": event.target_id,
            "site_id": event.site_id,
            "before": event.before,
            "after": event.after,
            "request_id": event.request_id,
            "source": event.source,
            "outcome": event.outcome.value,
        }
    )


def event_hash(prev_hash: bytes, seq: int, event: AuditDraft | AuditEvent) -> bytes:
    """``SHA-256(prev_hash || canonical JSON of the other fields)``."""
    return hashlib.sha256(prev_hash + canonical_event_bytes(seq, event)).digest()


def link_event(draft: AuditDraft, *, seq: int, prev_hash: bytes) -> AuditEvent:
    """Place a draft after the event whose hash is ``prev_hash`` (``GENESIS_HASH`` for seq 1)."""
    return AuditEvent(
        seq=seq,
        at_ms=draft.at_ms,
        actor=draft.actor,
        action=draft.action,
        target_type=draft.target_type,
        target_id=draft.target_id,
        site_id=draft.site_id,
        before=draft.before,
        after=draft.after,
        request_id=draft.request_id,
        source=draft.source,
        outcome=draft.outcome,
        prev_hash=prev_hash,
        hash=event_hash(prev_hash, seq, draft),
    )


@dataclass(frozen=True, slots=True)
class UnreadableEvent:
    """An audit row that does not read back as an event (``problem`` says which field, never
    its content): it was changed outside the application, so the chain breaks there."""

    seq: int | None  # None when the seq is what cannot be read
    problem: str


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The position of a chain's last event: its ``seq`` and ``hash``.

    The store records it in the same transaction as every append, so a deleted or truncated tail
    (which leaves an internally consistent, shorter chain) no longer matches. Someone able to write
    the whole database can rewrite the record as well; a copy kept outside the database (printed by
    ``audit verify``) is the defence against that.
    """

    seq: int
    hash: bytes


EMPTY_HEAD = ChainHead(0, GENESIS_HASH)
"""The head of a chain without events (and what a store with no recorded head compares against)."""


@dataclass(frozen=True, slots=True)
class ChainVerdict:
    """``ok``, or the first seq where the chain breaks and why. ``head_*`` is the last good link:
    record it outside the database to also detect a truncated or rewritten tail later.
    ``recorded_head`` is the head the walk was compared against, if any."""

    ok: bool
    checked: int
    first_bad_seq: int | None
    problem: str | None
    head_seq: int
    head_hash: bytes
    recorded_head: ChainHead | None = None


def verify_chain(
    events: Iterable[AuditEvent | UnreadableEvent],
    *,
    start_seq: int = 1,
    start_prev_hash: bytes = GENESIS_HASH,
    recorded_head: ChainHead | None = None,
) -> ChainVerdict:
    """Walk events in the order given (ascending seq). Detects a modified row (its hash no longer
    matches), a deleted or inserted row (seq not gap-free, or a broken ``prev_hash`` link), a
    reordered row, a forged hash and a row that does not read back as an event
    (``UnreadableEvent``). To check from the middle, pass the seq and hash of a trusted
    earlier event as ``start_seq - 1`` / ``start_prev_hash``.

    With ``recorded_head`` (the head the store recorded, or one kept elsewhere; ``EMPTY_HEAD`` when
    none was recorded) the walk must also end exactly there: a chain that ends early (its last rows
    deleted), goes past it (rows appended behind the store's back) or whose last event differs
    from it (a rewritten head) is reported, since each of those is a consistent chain by itself.
    """
    expected_seq = start_seq
    prev_hash = start_prev_hash
    link_before_last = prev_hash
    checked = 0

    def broken(seq: int, problem: str) -> ChainVerdict:
        return ChainVerdict(
            False, checked, seq, problem, expected_seq - 1, prev_hash, recorded_head
        )

    unnumbered: UnreadableEvent | None = None
    for event in events:
        if isinstance(event, UnreadableEvent) and event.seq is None:
            # A row whose seq does not read back (text, bytes, a fraction) is none of the
            # numbered ones, wherever it sorts: the chain breaks where those stop being
            # gap-free, or, when they are, where it would go on.
            unnumbered = unnumbered or event
            continue
        if event.seq != expected_seq:
            return broken(expected_seq, f"expected seq {expected_seq}, found {event.seq}")
        if isinstance(event, UnreadableEvent):
            return broken(expected_seq, f"the row cannot be read: {event.problem}")
        if not hmac.compare_digest(event.prev_hash, prev_hash):
            return broken(event.seq, "prev_hash does not match the previous event's hash")
        if not hmac.compare_digest(event.hash, event_hash(prev_hash, event.seq, event)):
            return broken(event.seq, "hash does not match the event's content")
        link_before_last = prev_hash
        prev_hash = event.hash
        expected_seq += 1
        checked += 1
    last_seq = expected_seq - 1
    mismatch: tuple[int, str] | None = None
    if unnumbered is not None:
        mismatch = (expected_seq, f"the row cannot be read: {unnumbered.problem}")
    elif recorded_head is not None:
        mismatch = _head_mismatch(last_seq, prev_hash, recorded_head)
        if mismatch is not None and last_seq == recorded_head.seq and checked:
            # The last event itself is in doubt: the good chain ends one link earlier.
            checked -= 1
            expected_seq -= 1
            prev_hash = link_before_last
    if mismatch is not None:
        return broken(*mismatch)
    return ChainVerdict(True, checked, None, None, last_seq, prev_hash, recorded_head)


def _head_mismatch(last_seq: int, last_hash: bytes, recorded: ChainHead) -> tuple[int, str] | None:
    """Where and why a chain ending at ``(last_seq, last_hash)`` does not end at ``recorded``."""
    if last_seq < recorded.seq:
        return last_seq + 1, (
            f"the chain ends at seq {last_seq} but the recorded head is seq {recorded.seq}: "
            "its last events were deleted"
        )
    if last_seq > recorded.seq:
        if recorded.seq == 0:
            return 1, f"no chain head is recorded, yet the chain reaches seq {last_seq}"
        return recorded.seq + 1, (
            f"the chain goes on past the recorded head (seq {recorded.seq}) to seq {last_seq}"
        )
    if not hmac.compare_digest(last_hash, recorded.hash):
        return last_seq, "the last event's hash does not match the recorded head"
    return None


@dataclass(frozen=True, slots=True)
class Adoption:
    """Rows past a recorded head that link to it and to each other, checked for adoption:
    ``from_seq`` to ``head.seq`` (``count`` rows), with ``head`` the last one's seq and hash."""

    previous_head: ChainHead
    from_seq: int
    head: ChainHead
    count: int


def check_adoption(
    recorded: ChainHead, past_head: Sequence[AuditEvent | UnreadableEvent], through_seq: int
) -> Adoption:
    """Whether the rows written past ``recorded`` (``past_head``: every row with a higher seq, in
    seq order) may become the chain's own, through ``through_seq``.

    A process that appends without moving the recorded head (an earlier version) leaves such rows;
    adopting them records a new head over them, so only rows that ``verify_chain`` would accept
    after ``recorded`` qualify: gap-free from ``recorded.seq + 1``, each row's hash its content's,
    each ``prev_hash`` the previous row's hash (the recorded head's for the first). ``through_seq``
    must be the last row: adopting part of them would leave the chain still past its head.

    Refuses with InvalidTransition when there is nothing past the head, InvalidInput when
    ``through_seq`` is not the last row (the message names the last one), and AuditChainBroken
    naming the first seq whose link breaks. Messages hold seqs and the verifier's reason, never a
    row's content.
    """
    # A row whose seq does not read back sorts past every head (SQLite orders text after any
    # number) whatever its place: no version wrote it, so it is not one to adopt, nor one that
    # keeps the rest from being adopted (verification reports it).
    past_head = [event for event in past_head if event.seq is not None]
    if not past_head:
        raise InvalidTransition(
            f"Nothing to adopt: no audit rows exist past the recorded head (seq {recorded.seq})"
        )
    last_seq = past_head[-1].seq
    if through_seq != last_seq:
        raise InvalidInput(
            f"Seq {through_seq} is not the audit chain's last row: rows run past the recorded "
            f"head (seq {recorded.seq}) to seq {last_seq}; adopt through seq {last_seq}, once "
            "every process of the earlier version is stopped"
        )
    verdict = verify_chain(past_head, start_seq=recorded.seq + 1, start_prev_hash=recorded.hash)
    if not verdict.ok:
        raise AuditChainBroken(
            f"The audit rows past the recorded head (seq {recorded.seq}) do not link at seq "
            f"{verdict.first_bad_seq}: {verdict.problem}; nothing was adopted"
        )
    return Adoption(
        previous_head=recorded,
        from_seq=recorded.seq + 1,
        head=ChainHead(verdict.head_seq, verdict.head_hash),
        count=verdict.checked,
    )
