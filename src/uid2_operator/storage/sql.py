"""The store on a SQL database (SQLite file or PostgreSQL), in SQLAlchemy Core.

Units of work own one pooled connection each. A write unit takes the store-wide write lock as its
first statement (see ``engines``), so every read it makes afterwards is current and every
read-decide-write sequence inside it is race-free. Repositories only run statements on that
connection and mark the unit dirty; the unit commits once, bumping ``change_seq`` in the same
transaction when anything but usage counters changed.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import threading
from collections.abc import (
    Callable,
    Collection,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import closing, contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Row,
    Table,
    and_,
    case,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import URL
from sqlalchemy.sql.elements import ColumnElement

from uid2_operator.domain.admin_tokens import AdminToken
from uid2_operator.domain.audit import (
    AuditEvent,
    ChainHead,
    Outcome,
    UnreadableEvent,
    verify_chain,
)
from uid2_operator.domain.credentials import ApiKey, KeyState, SealedSecret
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import BRAND
from uid2_operator.domain.keypairs import ClientKeypair
from uid2_operator.domain.keysets import Keyset, SealedKey, SharingMode
from uid2_operator.domain.material_sealing import SealedMaterial
from uid2_operator.domain.optout import AdvertisingIdTimes, OptOutRecord
from uid2_operator.domain.participants import Participant, ParticipantType
from uid2_operator.domain.roles import AdminRole, ClientRole
from uid2_operator.domain.salts import SaltHeader, SealedSaltChunk
from uid2_operator.domain.sharing import SharingPolicy
from uid2_operator.error_text import some_of
from uid2_operator.errors import (
    AlreadyExists,
    AuditChainAhead,
    AuditHeadMissing,
    AuditHeadUnreadable,
    AuditRowUnreadable,
    InvalidTransition,
    NotFound,
    SchemaOutOfDate,
    StoreError,
)
from uid2_operator.storage import schema as t
from uid2_operator.storage.engines import (
    Flavour,
    make_engine,
    sqlite_path,
    unavailable_as_store_error,
)
from uid2_operator.storage.interface import (
    GENESIS_PREV_HASH,
    AuditFields,
    EventHasher,
    KekVersionCounts,
    KeyUsage,
    OptOutChanges,
    ReadTx,
    SiteOrigins,
    Snapshot,
    Store,
    Tx,
    UsageEntry,
    change_state,
)
from uid2_operator.storage.migrate import head_revision, revision_of

_R = TypeVar("_R", ClientRole, AdminRole)
_T = TypeVar("_T")


# -------------------------------------------------------------------------- column encodings


def _roles_text(roles: Iterable[ClientRole | AdminRole]) -> str:
    return ",".join(sorted(role.value for role in roles))


def _roles(text: str, enum: type[_R]) -> frozenset[_R]:
    return frozenset(enum(name) for name in text.split(",") if name)


def _json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _json_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _participant(row: Row[Any]) -> Participant:
    return Participant(
        site_id=row.site_id,
        name=row.name,
        type=ParticipantType(row.type),
        allowed_roles=_roles(row.allowed_roles, ClientRole),
        enabled=bool(row.enabled),
        contacts=tuple(json.loads(row.contacts)),
        created_at_ms=row.created_at_ms,
        updated_at_ms=row.updated_at_ms,
    )


def _api_key(row: Row[Any]) -> ApiKey:
    return ApiKey(
        key_id=row.key_id,
        site_id=row.site_id,
        name=row.name,
        roles=_roles(row.roles, ClientRole),
        state=KeyState(row.state),
        key_hash=bytes(row.key_hash),
        created_at_ms=row.created_at_ms,
        created_by=row.created_by,
        updated_at_ms=row.updated_at_ms,
        expires_at_ms=row.expires_at_ms,
        retires_at_ms=row.retires_at_ms,
        rotated_from=row.rotated_from,
        rotated_to=row.rotated_to,
        revoked_at_ms=row.revoked_at_ms,
        revoked_by=row.revoked_by,
        revoked_reason=row.revoked_reason,
        last_used_at_ms=row.last_used_at_ms,
    )


def _secret(row: Row[Any]) -> SealedSecret:
    return SealedSecret(
        secret_id=row.secret_id,
        key_id=row.key_id,
        kek_version=row.kek_version,
        ciphertext=bytes(row.ciphertext),
        created_at_ms=row.created_at_ms,
        retires_at_ms=row.retires_at_ms,
    )


def _admin_token(row: Row[Any]) -> AdminToken:
    return AdminToken(
        token_id=row.token_id,
        name=row.name,
        roles=_roles(row.roles, AdminRole),
        token_hash=bytes(row.token_hash),
        created_at_ms=row.created_at_ms,
        created_by=row.created_by,
        revoked_at_ms=row.revoked_at_ms,
        revoked_by=row.revoked_by,
    )


def _audit_event(row: Row[Any]) -> AuditEvent:
    """The event a row holds; AuditRowUnreadable for a row no version writes (changed outside
    the application: SQLite keeps whatever type a column is given), naming the field, never its
    content."""
    if not _numbered(row):
        raise AuditRowUnreadable(None, "its seq is not a number uid2-operator writes")
    try:
        outcome = Outcome(row.outcome)
    except (ValueError, TypeError):
        raise AuditRowUnreadable(row.seq, "its outcome is not one uid2-operator writes") from None
    return AuditEvent(
        seq=row.seq,
        at_ms=_audit_value(row, "at_ms", int),
        actor=_audit_value(row, "actor", str),
        action=_audit_value(row, "action", str),
        target_type=_audit_value(row, "target_type", str),
        target_id=_audit_value(row, "target_id", str),
        site_id=_audit_value(row, "site_id", int, optional=True),
        before=_audit_json(row, "before"),
        after=_audit_json(row, "after"),
        request_id=_audit_value(row, "request_id", str, optional=True),
        source=_audit_value(row, "source", str, optional=True),
        outcome=outcome,
        prev_hash=bytes(_audit_value(row, "prev_hash", (bytes, memoryview))),
        hash=bytes(_audit_value(row, "hash", (bytes, memoryview))),
    )


def _numbered(row: Any) -> bool:
    """Whether an audit row's seq is a whole number, as every version writes it. SQLite keeps
    whatever an outside edit gives the column, and sorts text and bytes after every number."""
    return isinstance(row.seq, int) and not isinstance(row.seq, bool)


def _audit_value(
    row: Any, name: str, kind: type | tuple[type, ...], *, optional: bool = False
) -> Any:
    """``row``'s (an audit row's, or some of its columns') ``name``, checked for its type."""
    value = getattr(row, name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise AuditRowUnreadable(row.seq, f"its {name} is not of the type uid2-operator writes")
    return value


def _audit_json(row: Row[Any], name: str) -> Any:
    text = _audit_value(row, name, str, optional=True)
    try:
        if text is None:
            return None
        value = json.loads(
            text,
            parse_constant=_not_json,
            parse_float=_finite,
            object_pairs_hook=_unrepeated,
        )
    except _RepeatedName:
        raise AuditRowUnreadable(row.seq, f"its {name} repeats a field") from None
    except (ValueError, RecursionError):
        raise AuditRowUnreadable(row.seq, f"its {name} is not JSON") from None
    if "\\u" in text:
        try:  # an escaped lone surrogate (\ud800) reads as JSON but is no Unicode text
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # no answer or output could carry it; no version writes one
            raise AuditRowUnreadable(
                row.seq, f"its {name} holds text that is not Unicode"
            ) from None
    return value


class _RepeatedName(ValueError):
    """A JSON object naming a field twice, which uid2-operator never writes."""


def _unrepeated(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object of ``pairs``; refused when a name repeats: a reader keeps the last, so text
    added before it would read back (and hash) as the event it was, and never show."""
    value = dict(pairs)
    if len(value) != len(pairs):
        raise _RepeatedName
    return value


def _finite(text: str) -> float:
    """A JSON number as Python reads it, refused when out of a float's range (``1e400``):
    it would read back as infinity, which no JSON answer can carry."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("a number out of range")
    return value


def _not_json(constant: str) -> Any:
    """``NaN`` and ``Infinity``, which Python's reader takes and JSON (RFC 8259) does not."""
    raise ValueError(f"{constant} is not JSON")


def _chain_event(row: Row[Any]) -> AuditEvent | UnreadableEvent:
    try:
        return _audit_event(row)
    except AuditRowUnreadable as unreadable:
        return UnreadableEvent(unreadable.seq, unreadable.problem)


def _last_numbered_row(conn: Connection, *, after_seq: int | None) -> Row[Any, Any] | None:
    """The seq and hash of the audit row with the highest whole-number seq (above ``after_seq``).
    A row whose seq an outside edit made text, bytes or a fraction is no version's: the chain
    neither ends at it nor runs past the head through it (``audit verify`` reports it)."""
    c = t.audit_events.c
    query = select(c.seq, c.hash).order_by(c.seq.desc())
    if after_seq is not None:
        query = query.where(c.seq > after_seq)
    with conn.execute(query) as rows:  # closed when the first numbered row is found
        return next((row for row in rows if _numbered(row)), None)


def _placed_event(
    event: AuditFields, end: ChainHead, hasher: EventHasher
) -> tuple[AuditEvent, dict[str, Any]]:
    """``event`` placed right after ``end``: as it will read back, and as its table row."""
    before = None if event.before is None else _json_text(event.before)
    after = None if event.after is None else _json_text(event.after)
    placed = AuditEvent(
        seq=end.seq + 1,
        at_ms=event.at_ms,
        actor=event.actor,
        action=event.action,
        target_type=event.target_type,
        target_id=event.target_id,
        site_id=event.site_id,
        # As they will read back, so the hash verifies against the stored row.
        before=_json_or_none(before),
        after=_json_or_none(after),
        request_id=event.request_id,
        source=event.source,
        outcome=event.outcome,
        prev_hash=end.hash,
        hash=b"",
    )
    placed = replace(placed, hash=hasher(placed.prev_hash, placed.seq, placed))
    row = {
        "seq": placed.seq,
        "at_ms": placed.at_ms,
        "actor": placed.actor,
        "action": placed.action,
        "target_type": placed.target_type,
        "target_id": placed.target_id,
        "site_id": placed.site_id,
        "before": before,
        "after": after,
        "request_id": placed.request_id,
        "source": placed.source,
        "outcome": placed.outcome.value,
        "prev_hash": placed.prev_hash,
        "hash": placed.hash,
    }
    return placed, row


def _usage(row: Row[Any]) -> KeyUsage:
    values = row._mapping  # ``row.count`` would be the tuple method
    return KeyUsage(
        key_id=values["key_id"],
        endpoint=values["endpoint"],
        count=values["count"],
        last_used_at_ms=values["last_used_at_ms"],
    )


def _participant_values(p: Participant) -> dict[str, Any]:
    return {
        "name": p.name,
        "type": p.type.value,
        "allowed_roles": _roles_text(p.allowed_roles),
        "enabled": p.enabled,
        "contacts": _json_text(list(p.contacts)),
        "updated_at_ms": p.updated_at_ms,
    }


def _key_values(k: ApiKey) -> dict[str, Any]:
    return {
        "name": k.name,
        "roles": _roles_text(k.roles),
        "state": k.state.value,
        "updated_at_ms": k.updated_at_ms,
        "expires_at_ms": k.expires_at_ms,
        "retires_at_ms": k.retires_at_ms,
        "rotated_from": k.rotated_from,
        "rotated_to": k.rotated_to,
        "revoked_at_ms": k.revoked_at_ms,
        "revoked_by": k.revoked_by,
        "revoked_reason": k.revoked_reason,
    }


def _token_values(token: AdminToken) -> dict[str, Any]:
    return {
        "name": token.name,
        "roles": _roles_text(token.roles),
        "revoked_at_ms": token.revoked_at_ms,
        "revoked_by": token.revoked_by,
    }


# ----------------------------------------------------------------------------- the unit of work


class _Unit:
    """The connection of one unit of work, and whether it changed control-plane records."""

    def __init__(self, conn: Connection, flavour: Flavour, *, writable: bool) -> None:
        self.conn = conn
        self.flavour = flavour
        self.writable = writable
        self.dirty = False
        self._committing_seq: int | None = None

    def writing(self, *, control_plane: bool = True) -> Connection:
        if not self.writable:
            raise StoreError("A read-only unit of work cannot change the store")
        if control_plane:
            self.dirty = True
        return self.conn

    def committing_seq(self) -> int:
        """The change sequence this write unit will commit at (read once, under the write
        lock: no other writer can move it before this unit commits and bumps it by one)."""
        if self._committing_seq is None:
            current = self.conn.execute(
                select(t.store_meta.c.value).where(t.store_meta.c.name == t.CHANGE_SEQ)
            ).scalar_one()
            self._committing_seq = int(current) + 1
        return self._committing_seq

    def exists(self, column: ColumnElement[Any], value: object) -> bool:
        return self.conn.execute(select(column).where(column == value)).first() is not None


def _check_updated(rowcount: int, what: str) -> None:
    if rowcount == 0:
        raise NotFound(f"No {what}")


def _count_by_kek_version(conn: Connection, column: ColumnElement[Any]) -> KekVersionCounts:
    """``{kek_version: rows}`` for one table's KEK version column, ascending."""
    rows = conn.execute(select(column, func.count()).group_by(column).order_by(column))
    return {int(version): int(count) for version, count in rows}


class _Participants:
    def __init__(self, unit: _Unit) -> None:
        self._u = unit

    def get(self, site_id: int) -> Participant | None:
        row = self._u.conn.execute(
            select(t.participants).where(t.participants.c.site_id == site_id)
        ).first()
        return None if row is None else _participant(row)

    def list_all(self) -> list[Participant]:
        rows = self._u.conn.execute(select(t.participants).order_by(t.participants.c.site_id))
        return [_participant(row) for row in rows]

    def list_page(self, *, after: int | None, limit: int | None) -> list[Participant]:
        c = t.participants.c
        query = select(t.participants).order_by(c.site_id).limit(limit)
        if after is not None:
            query = query.where(c.site_id > after)
        return [_participant(row) for row in self._u.conn.execute(query)]

    def highest_site_id(self) -> int | None:
        highest = self._u.conn.execute(select(func.max(t.participants.c.site_id))).scalar_one()
        return None if highest is None else int(highest)

    def lowest_free_site_id(self, low: int, high: int) -> int | None:
        # ``low`` when it is free; otherwise one above the lowest taken id in low..high-1 whose
        # successor is free (the id just below the lowest free one is such an id). The successor
        # is computed as a 64-bit integer: ``site_id + 1`` of the highest 32-bit id is no error.
        taken = t.participants.alias("taken")
        after = t.participants.alias("after")
        successor = cast(taken.c.site_id, BigInteger) + 1
        lowest_gap = (
            select(func.min(successor))
            .where(
                taken.c.site_id >= low,
                taken.c.site_id < high,
                ~exists().where(after.c.site_id == successor),
            )
            .scalar_subquery()
        )
        low_taken = exists().where(t.participants.c.site_id == low)
        found = self._u.conn.execute(
            select(case((low_taken, lowest_gap), else_=cast(literal(low), BigInteger)))
        ).scalar_one()
        return None if found is None else int(found)

    def add(self, participant: Participant) -> None:
        conn = self._u.writing()
        if self._u.exists(t.participants.c.site_id, participant.site_id):
            raise AlreadyExists(f"Participant {participant.site_id} already exists")
        conn.execute(
            insert(t.participants).values(
                site_id=participant.site_id,
                created_at_ms=participant.created_at_ms,
                change_seq=self._u.committing_seq(),
                **_participant_values(participant),
            )
        )

    def update(self, participant: Participant) -> None:
        conn = self._u.writing()
        result = conn.execute(
            update(t.participants)
            .where(t.participants.c.site_id == participant.site_id)
            .values(change_seq=self._u.committing_seq(), **_participant_values(participant))
        )
        _check_updated(result.rowcount, f"participant {participant.site_id}")


class _ApiKeys:
    def __init__(self, unit: _Unit) -> None:
        self._u = unit

    def get(self, key_id: str) -> ApiKey | None:
        row = self._u.conn.execute(select(t.api_keys).where(t.api_keys.c.key_id == key_id)).first()
        return None if row is None else _api_key(row)

    def list_for_site(self, site_id: int) -> list[ApiKey]:
        c = t.api_keys.c
        rows = self._u.conn.execute(
            select(t.api_keys).where(c.site_id == site_id).order_by(c.created_at_ms, c.key_id)
        )
        return [_api_key(row) for row in rows]

    def list_all(self) -> list[ApiKey]:
        c = t.api_keys.c
        rows = self._u.conn.execute(
            select(t.api_keys).order_by(c.site_id, c.created_at_ms, c.key_id)
        )
        return [_api_key(row) for row in rows]

    def list_page(
        self, *, site_id: int | None, after: ApiKey | None, limit: int | None
    ) -> list[ApiKey]:
        c = t.api_keys.c
        query = select(t.api_keys).order_by(c.site_id, c.created_at_ms, c.key_id).limit(limit)
        if site_id is not None:
            query = query.where(c.site_id == site_id)
        if after is not None:
            position = (after.site_id, after.created_at_ms, after.key_id)
            query = query.where(tuple_(c.site_id, c.created_at_ms, c.key_id) > tuple_(*position))
        return [_api_key(row) for row in self._u.conn.execute(query)]

    def add(self, key: ApiKey) -> None:
        conn = self._u.writing()
        if self._u.exists(t.api_keys.c.key_id, key.key_id):
            raise AlreadyExists(f"API key {key.key_id} already exists")
        if not self._u.exists(t.participants.c.site_id, key.site_id):
            raise NotFound(f"No participant {key.site_id}")
        conn.execute(
            insert(t.api_keys).values(
                key_id=key.key_id,
                site_id=key.site_id,
                key_hash=key.key_hash,
                created_at_ms=key.created_at_ms,
                created_by=key.created_by,
                last_used_at_ms=key.last_used_at_ms,
                change_seq=self._u.committing_seq(),
                **_key_values(key),
            )
        )

    def update(self, key: ApiKey) -> None:
        conn = self._u.writing()
        result = conn.execute(
            update(t.api_keys)
            .where(t.api_keys.c.key_id == key.key_id)
            .values(change_seq=self._u.committing_seq(), **_key_values(key))
        )
        _check_updated(result.rowcount, f"API key {key.key_id}")


class _Secrets:
    def __init__(self, unit: _Unit) -> None:
        self._u = unit

    def get(self, secret_id: int) -> SealedSecret | None:
        c = t.client_secrets.c
        row = self._u.conn.execute(select(t.client_secrets).where(c.secret_id == secret_id)).first()
        return None if row is None else _secret(row)

    def list_for_key(self, key_id: str) -> list[SealedSecret]:
        c = t.client_secrets.c
        rows = self._u.conn.execute(
            select(t.client_secrets).where(c.key_id == key_id).order_by(c.secret_id)
        )
        return [_secret(row) for row in rows]

    def list_live(self, now_ms: int) -> list[SealedSecret]:
        c = t.client_secrets.c
        rows = self._u.conn.execute(
            select(t.client_secrets)
            .where(c.retires_at_ms.is_(None) | (c.retires_at_ms > now_ms))
            .order_by(c.secret_id)
        )
        return [_secret(row) for row in rows]

    def count_by_kek_version(self) -> KekVersionCounts:
        return _count_by_kek_version(self._u.conn, t.client_secrets.c.kek_version)

    def list_not_sealed_under(self, kek_version: int) -> list[SealedSecret]:
        c = t.client_secrets.c
        rows = self._u.conn.execute(
            select(t.client_secrets).where(c.kek_version != kek_version).order_by(c.secret_id)
        )
        return [_secret(row) for row in rows]

    def add(
        self,
        key_id: str,
        *,
        kek_version: int,
        ciphertext: bytes,
        created_at_ms: int,
        retires_at_ms: int | None = None,
    ) -> SealedSecret:
        conn = self._u.writing()
        if not self._u.exists(t.api_keys.c.key_id, key_id):
            raise NotFound(f"No API key {key_id}")
        secret_id = conn.execute(
            insert(t.client_secrets)
            .values(
                key_id=key_id,
                kek_version=kek_version,
                ciphertext=ciphertext,
                created_at_ms=created_at_ms,
                retires_at_ms=retires_at_ms,
                change_seq=self._u.committing_seq(),
            )
            .returning(t.client_secrets.c.secret_id)
        ).scalar_one()
        return SealedSecret(
            secret_id=int(secret_id),
            key_id=key_id,
            kek_version=kek_version,
            ciphertext=ciphertext,
            created_at_ms=created_at_ms,
            retires_at_ms=retires_at_ms,
        )

    def update(self, secret: SealedSecret) -> None:
        conn = self._u.writing()
        result = conn.execute(
            update(t.client_secrets)
            .where(t.client_secrets.c.secret_id == secret.secret_id)
            .values(
                kek_version=secret.kek_version,
                ciphertext=secret.ciphertext,
                retires_at_ms=secret.retires_at_ms,
                change_seq=self._u.committing_seq(),
            )
        )
        _check_updated(result.rowcount, f"secret {secret.secret_id}")

    def purge_retired(self, now_ms: int) -> int:
        c, k = t.client_secrets.c, t.api_keys.c
        conn = self._u.writing(control_plane=False)
        dead_keys = select(k.key_id).where(
            or_(
                k.state == KeyState.REVOKED.value,
                and_(k.retires_at_ms.is_not(None), k.retires_at_ms <= now_ms),
                and_(k.expires_at_ms.is_not(None), k.expires_at_ms <= now_ms),
            )
        )
        unusable = or_(
            and_(c.retires_at_ms.is_not(None), c.retires_at_ms <= now_ms),
            c.key_id.in_(dead_keys),
        )
        # The keys first, while their doomed secrets still name them.
        conn.execute(
            update(t.api_keys)
            .where(k.key_id.in_(select(c.key_id).where(unusable)))
            .values(change_seq=self._u.committing_seq())
        )
        result = conn.execute(delete(t.client_secrets).where(unusable))
        if result.rowcount:
            self._u.dirty = True
        return result.rowcount


class _AdminTokens:
    def __init__(self, unit: _Unit) -> None:
        self._u = unit

    def get(self, token_id: str) -> AdminToken | None:
        c = t.admin_tokens.c
        row = self._u.conn.execute(select(t.admin_tokens).where(c.token_id == token_id)).first()
        return None if row is None else _admin_token(row)

    def list_all(self) -> list[AdminToken]:
        c = t.admin_tokens.c
        rows = self._u.conn.execute(select(t.admin_tokens).order_by(c.created_at_ms, c.token_id))
        return [_admin_token(row) for row in rows]

    def add(self, token: AdminToken) -> None:
        conn = self._u.writing()
        if self._u.exists(t.admin_tokens.c.token_id, token.token_id):
            raise AlreadyExists(f"Admin token {token.token_id} already exists")
        conn.execute(
            insert(t.admin_tokens).values(
                token_id=token.token_id,
                token_hash=token.token_hash,
                created_at_ms=token.created_at_ms,
                created_by=token.created_by,
                **_token_values(token),
            )
        )

    def update(self, token: AdminToken) -> None:
        conn = self._u.writing()
        result = conn.execute(
            update(t.admin_tokens)
            .where(t.admin_tokens.c.token_id == token.token_id)
            .values(**_token_values(token))
        )
        _check_updated(result.rowcount, f"admin token {token.token_id}")


class _Audit:
    def __init__(self, unit: _Unit) -> None:
        self._u = unit

    def last(self) -> AuditEvent | None:
        c = t.audit_events.c
        row = self._u.conn.execute(select(t.audit_events).order_by(c.seq.desc()).limit(1)).first()
        return None if row is None else _audit_event(row)

    def list_events(
        self,
        *,
        since_seq: int | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        action: str | None = None,
        site_id: int | None = None,
        limit: int | None = None,
        exclude_target_types: Collection[str] = (),
    ) -> list[AuditEvent]:
        c = t.audit_events.c
        filters = [
            column == value
            for column, value in (
                (c.target_type, target_type),
                (c.target_id, target_id),
                (c.action, action),
                (c.site_id, site_id),
            )
            if value is not None
        ]
        if since_seq is not None:
            filters.append(c.seq > since_seq)
        if exclude_target_types:
            filters.append(c.target_type.not_in(sorted(set(exclude_target_types))))
        query = select(t.audit_events).where(and_(True, *filters)).order_by(c.seq).limit(limit)
        # Every row fetched before any is read as an event: a row that cannot be must not leave
        # the statement open (on SQLite, it would hold the connection's read transaction, and
        # the pool would hand out a view from before the row was repaired).
        rows = self._u.conn.execute(query).all()
        return [_audit_event(row) for row in rows]

    def chain_events(
        self, *, since_seq: int | None = None
    ) -> Generator[AuditEvent | UnreadableEvent, None, None]:
        c = t.audit_events.c
        query = (
            select(t.audit_events)
            .order_by(c.seq)
            .execution_options(stream_results=True, yield_per=_AUDIT_ROWS_PER_FETCH)
        )
        if since_seq is not None:
            query = query.where(c.seq > since_seq)
        result = self._u.conn.execute(query)
        try:
            for row in result:
                yield _chain_event(row)  # an unreadable row is an event too: nothing raises here
        finally:
            result.close()

    def head(self) -> ChainHead | None:
        m = t.store_meta.c
        names = (t.AUDIT_HEAD_SEQ, *t.AUDIT_HEAD_HASH)
        rows = self._u.conn.execute(select(m.name, m.value).where(m.name.in_(names))).all()
        values: dict[str, int] = {}
        for row in rows:
            value = row.value  # SQLite's column keeps whatever an outside edit gives it
            if not isinstance(value, int) or isinstance(value, bool):
                raise AuditHeadUnreadable
            low = 0 if row.name == t.AUDIT_HEAD_SEQ else -(2**63)
            if not low <= value < 2**63:
                raise AuditHeadUnreadable
            values[row.name] = value
        if not values:
            return None
        if len(values) != len(names):
            # Part of it removed: building on the rest would fix the break into the chain.
            raise AuditHeadUnreadable
        words = [values[name] for name in t.AUDIT_HEAD_HASH]
        digest = b"".join(w.to_bytes(8, "big", signed=True) for w in words)
        return ChainHead(values[t.AUDIT_HEAD_SEQ], digest)

    def _record_head(self, conn: Connection, head: ChainHead) -> None:
        words = [
            int.from_bytes(head.hash[i : i + 8], "big", signed=True)
            for i in range(0, len(t.AUDIT_HEAD_HASH) * 8, 8)
        ]
        m = t.store_meta.c
        for name, value in (
            (t.AUDIT_HEAD_SEQ, head.seq),
            *zip(t.AUDIT_HEAD_HASH, words, strict=True),
        ):
            updated = conn.execute(update(t.store_meta).where(m.name == name).values(value=value))
            if updated.rowcount == 0:  # first append (the write lock is held: no race)
                conn.execute(insert(t.store_meta).values(name=name, value=value))

    def _chain_end(self, conn: Connection) -> ChainHead:
        """Where the next event goes: after the recorded head, or, when none is recorded, at the
        start or after the last row of a broken chain. AuditChainAhead when rows exist past the
        recorded head: a process that appends without moving it (an earlier version) writes to
        this database, and the next seq is taken. AuditHeadMissing when rows that verify exist
        and no head is recorded."""
        recorded = self.head()
        if recorded is not None:
            ahead = _last_numbered_row(conn, after_seq=recorded.seq)
            if ahead is not None:
                raise AuditChainAhead(
                    f"Audit rows exist past the recorded head (seq {ahead.seq} > {recorded.seq}); "
                    "a process of an earlier version may be writing to this database; stop it, "
                    "then run `uid2-operator audit verify`, and `uid2-operator audit adopt "
                    f"--through {ahead.seq}` to keep its rows"
                )
            return recorded
        last = _last_numbered_row(conn, after_seq=None)
        if last is None:
            return ChainHead(0, GENESIS_PREV_HASH)
        with closing(self.chain_events()) as events:
            intact = verify_chain(events).ok
        if intact:
            # ``db upgrade`` records the head of an intact chain that has none: its head was
            # removed since, perhaps with the newest rows. Appending would record a head over
            # the cut; a broken chain (an earlier version's, left headless by the upgrade) goes
            # on from its last row, and verification keeps reporting its break.
            raise AuditHeadMissing(
                f"No audit chain head is recorded, yet the chain verifies through seq {last.seq}: "
                "the head was removed outside uid2-operator, perhaps with the newest events; run "
                "`uid2-operator audit verify`, then `uid2-operator db upgrade` to record the head "
                "of the chain as it stands"
            )
        return ChainHead(last.seq, bytes(_audit_value(last, "hash", (bytes, memoryview))))

    def record_head_of_intact_chain(self) -> ChainHead | None:
        """Records the head of a chain written before heads were recorded: its last row, when
        every link up to that row verifies. Returns the head recorded, or None when there was
        nothing to do (a head is recorded already, or there are no rows) or the chain is broken
        (recording a head would hide the break from verification)."""
        conn = self._u.writing(control_plane=False)
        try:
            if self.head() is not None:
                return None
        except AuditHeadUnreadable:
            return None  # left for verification to report, and for a person to repair
        with closing(self.chain_events()) as events:
            verdict = verify_chain(events)
        if not verdict.ok or verdict.checked == 0:
            return None
        head = ChainHead(verdict.head_seq, verdict.head_hash)  # the last row's: every link held
        self._record_head(conn, head)
        return head

    def move_head(self, head: ChainHead) -> None:
        conn = self._u.writing()
        recorded = self.head()
        if recorded is None:
            raise InvalidTransition(
                "No audit chain head is recorded; `uid2-operator db upgrade` records it"
            )
        if head.seq < recorded.seq:
            raise InvalidTransition(
                f"The audit chain head cannot move back from seq {recorded.seq} to {head.seq}"
            )
        c = t.audit_events.c
        stored = conn.execute(select(c.hash).where(c.seq == head.seq)).scalar_one_or_none()
        if stored is None or not hmac.compare_digest(bytes(stored), head.hash):
            raise NotFound(f"No audit row at seq {head.seq} with the given hash")
        self._record_head(conn, head)

    def append(self, event: AuditFields, hasher: EventHasher) -> AuditEvent:
        (placed,) = self.append_many([event], hasher)
        return placed

    def append_many(self, events: Sequence[AuditFields], hasher: EventHasher) -> list[AuditEvent]:
        # Refused attempts' events change no configuration: alone, they move no change_seq.
        if not events:
            return []
        conn = self._u.writing(control_plane=any(e.outcome is Outcome.SUCCESS for e in events))
        end = self._chain_end(conn)
        placed: list[AuditEvent] = []
        rows: list[dict[str, Any]] = []
        for event in events:
            stored, row = _placed_event(event, end, hasher)
            placed.append(stored)
            rows.append(row)
            end = ChainHead(stored.seq, stored.hash)
        conn.execute(insert(t.audit_events), rows)
        self._record_head(conn, end)
        return placed


class _Usage:
    def __init__(self, unit: _Unit) -> None:
        self._u = unit

    def list_for_key(self, key_id: str) -> list[KeyUsage]:
        c = t.key_usage.c
        rows = self._u.conn.execute(
            select(t.key_usage).where(c.key_id == key_id).order_by(c.endpoint)
        )
        return [_usage(row) for row in rows]

    def list_all(self) -> list[KeyUsage]:
        c = t.key_usage.c
        rows = self._u.conn.execute(select(t.key_usage).order_by(c.key_id, c.endpoint))
        return [_usage(row) for row in rows]

    def list_for_keys(self, key_ids: Collection[str]) -> list[KeyUsage]:
        c = t.key_usage.c
        wanted = sorted(set(key_ids))
        found: list[KeyUsage] = []
        for batch in _batches(wanted):
            query = select(t.key_usage).where(c.key_id.in_(batch))
            found.extend(_usage(row) for row in self._u.conn.execute(query))
        return sorted(found, key=lambda u: (u.key_id, u.endpoint))

    def record(self, batch: Sequence[UsageEntry]) -> list[str]:
        conn = self._u.writing(control_plane=False)
        totals: dict[tuple[str, str], list[int]] = {}
        for key_id, endpoint, count, last_used_at_ms in batch:
            seen = totals.setdefault((key_id, endpoint), [0, last_used_at_ms])
            seen[0] += count
            seen[1] = max(seen[1], last_used_at_ms)
        if not totals:
            return []
        key_ids = sorted({key_id for key_id, _ in totals})
        known: set[str] = set()
        for ids in _batches(key_ids):
            known.update(
                conn.execute(select(t.api_keys.c.key_id).where(t.api_keys.c.key_id.in_(ids)))
                .scalars()
                .all()
            )
        missing = [key_id for key_id in key_ids if key_id not in known]
        if missing:
            totals = {pair: seen for pair, seen in totals.items() if pair[0] in known}
            if not totals:
                return missing

        u = t.key_usage.c
        stmt = self._u.flavour.upsert_insert(t.key_usage)
        stmt = stmt.on_conflict_do_update(
            index_elements=[u.key_id, u.endpoint],
            set_={
                "count": u.count + stmt.excluded.count,
                "last_used_at_ms": self._u.flavour.greatest(
                    u.last_used_at_ms, stmt.excluded.last_used_at_ms
                ),
            },
        )
        conn.execute(
            stmt,
            [
                {"key_id": k, "endpoint": e, "count": n, "last_used_at_ms": at}
                for (k, e), (n, at) in sorted(totals.items())
            ],
        )

        latest: dict[str, int] = {}
        for (key_id, _), (_, at) in totals.items():
            latest[key_id] = max(latest.get(key_id, at), at)
        k = t.api_keys.c
        for key_id, at in sorted(latest.items()):
            conn.execute(
                update(t.api_keys)
                .where(k.key_id == key_id)
                .values(
                    last_used_at_ms=case(
                        (k.last_used_at_ms.is_(None), at),
                        (k.last_used_at_ms < at, at),
                        else_=k.last_used_at_ms,
                    )
                )
            )
        return missing


# ------------------------------------------------------------ encryption keys, salts, opt-outs

_SALT_TABLE_NAME = "current"
_ID_BATCH = 500  # ids per IN list: far below SQLite's and PostgreSQL's bound on parameters


def _batches(ids: Sequence[_T]) -> Iterator[Sequence[_T]]:
    """``ids`` in runs of ``_ID_BATCH``, one IN list each."""
    for start in range(0, len(ids), _ID_BATCH):
        yield ids[start : start + _ID_BATCH]


_CHUNK_ROWS_PER_FETCH = 4  # ~1.3 MB each for production-sized chunks
_AUDIT_ROWS_PER_FETCH = 1000  # the chain is walked in pieces: it grows with every opt-out


def _keyset(row: Row[Any]) -> Keyset:
    return Keyset(
        keyset_id=row.keyset_id,
        site_id=row.site_id,
        name=row.name,
        enabled=bool(row.enabled),
        is_default=bool(row.is_default),
        created_at_ms=row.created_at_ms,
        sharing=SharingMode(row.sharing),
        allowed_sites=frozenset(json.loads(row.allowed_sites)),
    )


def _keyset_values(k: Keyset) -> dict[str, Any]:
    return {
        "name": k.name,
        "enabled": k.enabled,
        "is_default": k.is_default,
        "sharing": k.sharing.value,
        "allowed_sites": _json_text(sorted(k.allowed_sites)),
    }


def _sealed_key(row: Row[Any]) -> SealedKey:
    return SealedKey(
        id=row.key_id,
        keyset_id=row.keyset_id,
        created=row.created_at_ms // 1000,
        activates=row.activates_at_ms // 1000,
        expires=row.expires_at_ms // 1000,
        secret=SealedMaterial(row.kek_version, bytes(row.ciphertext)),
    )


def _salt_header(row: Row[Any]) -> SaltHeader:
    return SaltHeader(
        bucket_count=row.bucket_count,
        chunk_size=row.chunk_size,
        id_prefix=row.id_prefix,
        version=row.version,
        created_at_ms=row.created_at_ms,
        updated_at_ms=row.updated_at_ms,
        first_level_salt=SealedMaterial(
            row.first_level_salt_kek_version, bytes(row.first_level_salt_ciphertext)
        ),
        id_secret=SealedMaterial(row.id_secret_kek_version, bytes(row.id_secret_ciphertext)),
    )


def _salt_chunk(row: Row[Any]) -> SealedSaltChunk:
    return SealedSaltChunk(
        number=row.chunk,
        first_bucket=row.first_bucket,
        bucket_count=row.bucket_count,
        salts=SealedMaterial(row.kek_version, bytes(row.salts)),
        has_previous=bytes(row.has_previous),
        last_updated=bytes(row.last_updated),
        refresh_from=bytes(row.refresh_from),
    )


def _optout(row: Row[Any]) -> OptOutRecord:
    return OptOutRecord(
        first_level_hash=bytes(row.first_level_hash),
        timestamp_ms=row.timestamp_ms,
        advertising_id=row.advertising_id,
        earlier_advertising_ids=_earlier_ids(row.earlier_advertising_ids),
    )


def _earlier_ids(text: str | None) -> AdvertisingIdTimes:
    """``optouts.earlier_advertising_ids`` as the record holds it (the record checks it)."""
    if text is None:
        return ()
    return tuple((ad_id, at) for ad_id, at in json.loads(text))


def _earlier_ids_text(record: OptOutRecord) -> str | None:
    if not record.earlier_advertising_ids:
        return None
    return json.dumps(record.earlier_advertising_ids, separators=(",", ":"))


class _Keysets:
    def __init__(self, unit: _Unit) -> None:
        self._u = unit

    def get(self, keyset_id: int) -> Keyset | None:
        row = self._u.conn.execute(
            select(t.keysets).where(t.keysets.c.keyset_id == keyset_id)
        ).first()
        return None if row is None else _keyset(row)

    def list_all(self) -> list[Keyset]:
        rows = self._u.conn.execute(select(t.keysets).order_by(t.keysets.c.keyset_id))
        return [_keyset(row) for row in rows]

    def add(self, keyset: Keyset) -> None:
        conn = self._u.writing()
        if self._u.exists(t.keysets.c.keyset_id, keyset.keyset_id):
            raise AlreadyExists(f"Keyset {keyset.keyset_id} already exists")
        conn.execute(
            insert(t.keysets).values(
                keyset_id=keyset.keyset_id,
                site_id=keyset.site_id,
                created_at_ms=keyset.created_at_ms,
                **_keyset_values(keyset),
            )
        )

    def update(self, keyset: Keyset) -> None:
        conn = self._u.writing()
        result = conn.execute(
            update(t.keysets)
            .where(t.keysets.c.keyset_id == keyset.keyset_id)
            .values(**_keyset_values(keyset))
        )
        _check_updated(result.rowcount, f"keyset {keyset.keyset_id}")


class _EncryptionKeys:
    def __init__(self, unit: _Unit) -> None:
        self._u = unit

    def get(self, key_id: int) -> SealedKey | None:
        c = t.encryption_keys.c
        row = self._u.conn.execute(select(t.encryption_keys).where(c.key_id == key_id)).first()
        return None if row is None else _sealed_key(row)

    def list_all(self) -> list[SealedKey]:
        rows = self._u.conn.execute(select(t.encryption_keys).order_by(t.encryption_keys.c.key_id))
        return [_sealed_key(row) for row in rows]

    def list_for_keyset(self, keyset_id: int) -> list[SealedKey]:
        c = t.encryption_keys.c
        rows = self._u.conn.execute(
            select(t.encryption_keys).where(c.keyset_id == keyset_id).order_by(c.key_id)
        )
        return [_sealed_key(row) for row in rows]

    def count_by_kek_version(self) -> KekVersionCounts:
        return _count_by_kek_version(self._u.conn, t.encryption_keys.c.kek_version)

    def list_not_sealed_under(self, kek_version: int) -> list[SealedKey]:
        c = t.encryption_keys.c
        rows = self._u.conn.execute(
            select(t.encryption_keys).where(c.kek_version != kek_version).order_by(c.key_id)
        )
        return [_sealed_key(row) for row in rows]

    def longest_token_lifetime_s(self) -> int | None:
        m = t.store_meta.c
        value = self._u.conn.execute(
            select(m.value).where(m.name == t.LONGEST_LIFETIME)
        ).scalar_one_or_none()
        return None if value is None else int(value)

    def raise_longest_token_lifetime(self, seconds: int) -> int:
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
            raise StoreError("A token lifetime must be a positive whole number of seconds")
        conn = self._u.writing(control_plane=False)  # refuses a read unit; no snapshot reads it
        recorded = self.longest_token_lifetime_s()
        m = t.store_meta.c
        if recorded is None:  # the write lock is held: no other writer can insert it first
            conn.execute(insert(t.store_meta).values(name=t.LONGEST_LIFETIME, value=seconds))
            return seconds
        if recorded >= seconds:
            return recorded
        conn.execute(update(t.store_meta).where(m.name == t.LONGEST_LIFETIME).values(value=seconds))
        return seconds

    def reseal(self, key_id: int, secret: SealedMaterial) -> None:
        conn = self._u.writing()
        result = conn.execute(
            update(t.encryption_keys)
            .where(t.encryption_keys.c.key_id == key_id)
            .values(kek_version=secret.kek_version, ciphertext=secret.ciphertext)
        )
        _check_updated(result.rowcount, f"encryption key {key_id}")

    def allocate_ids(self, count: int) -> list[int]:
        if count < 0:
            raise StoreError("Cannot allocate a negative number of key ids")
        if count == 0:
            return []
        conn = self._u.writing()
        # Never below an id already in the table, whatever the sequence says.
        highest = conn.execute(select(func.max(t.encryption_keys.c.key_id))).scalar_one()
        start = max(self._last_id(conn), int(highest or 0))
        self._set_last_id(conn, start + count)
        return list(range(start + 1, start + count + 1))

    def delete(self, key_ids: Iterable[int]) -> None:
        wanted = sorted(set(key_ids))
        if not wanted:
            return
        conn = self._u.writing()  # refuses a read unit; a refusal below rolls the unit back
        c = t.encryption_keys.c
        found: set[int] = set()
        for batch in _batches(wanted):
            found.update(conn.execute(select(c.key_id).where(c.key_id.in_(batch))).scalars())
        missing = [key_id for key_id in wanted if key_id not in found]
        if missing:
            raise NotFound(f"No encryption key {some_of(missing, 10)}")
        # The sequence keeps the highest id deleted, so it is never handed out again even when
        # the key was added with an id of its own rather than one from ``allocate_ids``.
        if self._last_id(conn) < wanted[-1]:
            self._set_last_id(conn, wanted[-1])
        for batch in _batches(wanted):
            conn.execute(delete(t.encryption_keys).where(c.key_id.in_(batch)))

    def _last_id(self, conn: Connection) -> int:
        """The last key id handed out, per the sequence row (created at 0 when missing)."""
        m = t.store_meta.c
        last = conn.execute(select(m.value).where(m.name == t.KEY_ID_SEQ)).scalar_one_or_none()
        if last is None:  # a schema made from the metadata rather than by the migrations
            conn.execute(insert(t.store_meta).values(name=t.KEY_ID_SEQ, value=0))
            return 0
        return int(last)

    def _set_last_id(self, conn: Connection, value: int) -> None:
        m = t.store_meta.c
        conn.execute(update(t.store_meta).where(m.name == t.KEY_ID_SEQ).values(value=value))

    def add(self, key: SealedKey) -> None:
        conn = self._u.writing()
        if self._u.exists(t.encryption_keys.c.key_id, key.id):
            raise AlreadyExists(f"Encryption key {key.id} already exists")
        if not self._u.exists(t.keysets.c.keyset_id, key.keyset_id):
            raise NotFound(f"No keyset {key.keyset_id}")
        conn.execute(
            insert(t.encryption_keys).values(
                key_id=key.id,
                keyset_id=key.keyset_id,
                created_at_ms=key.created * 1000,
                activates_at_ms=key.activates * 1000,
                expires_at_ms=key.expires * 1000,
                kek_version=key.secret.kek_version,
                ciphertext=key.secret.ciphertext,
            )
        )


class _Salts:
    def __init__(self, unit: _Unit) -> None:
        self._u = unit

    def header(self) -> SaltHeader | None:
        c = t.salt_tables.c
        row = self._u.conn.execute(select(t.salt_tables).where(c.name == _SALT_TABLE_NAME)).first()
        return None if row is None else _salt_header(row)

    def get_chunk(self, number: int) -> SealedSaltChunk | None:
        c = t.salt_chunks.c
        row = self._u.conn.execute(select(t.salt_chunks).where(c.chunk == number)).first()
        return None if row is None else _salt_chunk(row)

    def iter_chunks(self) -> Generator[SealedSaltChunk, None, None]:
        query = (
            select(t.salt_chunks)
            .order_by(t.salt_chunks.c.chunk)
            .execution_options(stream_results=True, yield_per=_CHUNK_ROWS_PER_FETCH)
        )
        result = self._u.conn.execute(query)
        try:
            for row in result:
                yield _salt_chunk(row)
        finally:
            result.close()

    def count_chunks_by_kek_version(self) -> KekVersionCounts:
        return _count_by_kek_version(self._u.conn, t.salt_chunks.c.kek_version)

    def chunk_numbers_not_sealed_under(self, kek_version: int) -> list[int]:
        c = t.salt_chunks.c
        rows = self._u.conn.execute(
            select(c.chunk).where(c.kek_version != kek_version).order_by(c.chunk)
        )
        return [int(number) for number in rows.scalars()]

    def put_header(self, header: SaltHeader) -> None:
        conn = self._u.writing()
        values = {
            "bucket_count": header.bucket_count,
            "chunk_size": header.chunk_size,
            "id_prefix": header.id_prefix,
            "version": header.version,
            "created_at_ms": header.created_at_ms,
            "updated_at_ms": header.updated_at_ms,
            "first_level_salt_kek_version": header.first_level_salt.kek_version,
            "first_level_salt_ciphertext": header.first_level_salt.ciphertext,
            "id_secret_kek_version": header.id_secret.kek_version,
            "id_secret_ciphertext": header.id_secret.ciphertext,
        }
        stmt = self._u.flavour.upsert_insert(t.salt_tables).values(name=_SALT_TABLE_NAME, **values)
        conn.execute(stmt.on_conflict_do_update(index_elements=[t.salt_tables.c.name], set_=values))

    def put_chunks(self, chunks: Iterable[SealedSaltChunk]) -> None:
        conn = self._u.writing()
        c = t.salt_chunks.c
        for chunk in chunks:
            values = {
                "first_bucket": chunk.first_bucket,
                "bucket_count": chunk.bucket_count,
                "kek_version": chunk.salts.kek_version,
                "salts": chunk.salts.ciphertext,
                "has_previous": chunk.has_previous,
                "last_updated": chunk.last_updated,
                "refresh_from": chunk.refresh_from,
            }
            stmt = self._u.flavour.upsert_insert(t.salt_chunks).values(chunk=chunk.number, **values)
            conn.execute(stmt.on_conflict_do_update(index_elements=[c.chunk], set_=values))


class _OptOuts:
    def __init__(self, unit: _Unit) -> None:
        self._u = unit

    def get(self, first_level_hash: bytes) -> OptOutRecord | None:
        c = t.optouts.c
        row = self._u.conn.execute(
            select(t.optouts).where(c.first_level_hash == first_level_hash)
        ).first()
        return None if row is None else _optout(row)

    def get_many(self, first_level_hashes: Iterable[bytes]) -> dict[bytes, OptOutRecord]:
        c = t.optouts.c
        wanted = sorted(set(first_level_hashes))
        found: dict[bytes, OptOutRecord] = {}
        for batch in _batches(wanted):
            for row in self._u.conn.execute(select(t.optouts).where(c.first_level_hash.in_(batch))):
                record = _optout(row)
                found[record.first_level_hash] = record
        return found

    def list_all(self) -> list[OptOutRecord]:
        rows = self._u.conn.execute(select(t.optouts).order_by(t.optouts.c.first_level_hash))
        return [_optout(row) for row in rows]

    def count(self) -> int:
        return int(self._u.conn.execute(select(func.count()).select_from(t.optouts)).scalar_one())

    def since(self, cursor: int) -> OptOutChanges:
        c = t.optouts.c
        query = select(
            c.first_level_hash,
            c.advertising_id,
            c.timestamp_ms,
            c.change_seq,
            c.earlier_advertising_ids,
        )
        if cursor > 0:  # from nothing: a plain scan, not a walk of the whole index
            query = query.where(c.change_seq > cursor).order_by(c.change_seq)
        records: list[OptOutRecord] = []
        highest = cursor
        for flh, ad_id, timestamp_ms, seq, earlier in self._u.conn.execute(query):
            records.append(OptOutRecord(bytes(flh), timestamp_ms, ad_id, _earlier_ids(earlier)))
            highest = max(highest, seq)
        return OptOutChanges(tuple(records), highest)

    def put(self, record: OptOutRecord) -> None:
        self.put_many([record])

    def put_many(self, records: Sequence[OptOutRecord]) -> None:
        conn = self._u.writing(control_plane=bool(records))
        # One row per hash, the last record given for it: what repeated puts would leave.
        last = {record.first_level_hash: record for record in records}
        if not last:
            return
        seq = self._u.committing_seq()
        stmt = self._u.flavour.upsert_insert(t.optouts)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.optouts.c.first_level_hash],
            set_={
                "advertising_id": stmt.excluded.advertising_id,
                "timestamp_ms": stmt.excluded.timestamp_ms,
                "change_seq": stmt.excluded.change_seq,
                "earlier_advertising_ids": stmt.excluded.earlier_advertising_ids,
            },
        )
        conn.execute(
            stmt,
            [
                {
                    "first_level_hash": record.first_level_hash,
                    "advertising_id": record.advertising_id,
                    "timestamp_ms": record.timestamp_ms,
                    "change_seq": seq,
                    "earlier_advertising_ids": _earlier_ids_text(record),
                }
                for record in last.values()
            ],
        )


# ------------------------------------------------------------- sharing and client-side keypairs


def _sharing_policy(row: Row[*tuple[Any, ...]]) -> SharingPolicy:
    mode = SharingMode(row.sharing)
    if mode is not SharingMode.LIST:  # sites and types only mean something for a list
        return SharingPolicy(mode)
    return SharingPolicy(
        mode,
        frozenset(json.loads(row.allowed_sites)),
        frozenset(ParticipantType(name) for name in json.loads(row.allowed_types)),
    )


def _site_origins(row: Row[*tuple[Any, ...]]) -> SiteOrigins:
    return SiteOrigins(
        site_id=row.site_id,
        domain_names=tuple(json.loads(row.domain_names)),
        app_names=tuple(json.loads(row.app_names)),
    )


def _keypair(row: Row[Any]) -> ClientKeypair:
    return ClientKeypair(
        subscription_id=row.subscription_id,
        site_id=row.site_id,
        public_key=bytes(row.public_key),
        sealed_private_key=SealedMaterial(row.kek_version, bytes(row.private_key_ciphertext)),
        name=row.name,
        contact=row.contact,
        disabled=bool(row.disabled),
        created_at_ms=row.created_at_ms,
    )


class _KeysetSharing:
    """The sharing columns of ``keysets``: mode, sites and participant types, written together."""

    def __init__(self, unit: _Unit) -> None:
        self._u = unit

    def get(self, keyset_id: int) -> SharingPolicy | None:
        c = t.keysets.c
        row = self._u.conn.execute(
            select(c.sharing, c.allowed_sites, c.allowed_types).where(c.keyset_id == keyset_id)
        ).first()
        return None if row is None else _sharing_policy(row)

    def list_all(self) -> dict[int, SharingPolicy]:
        c = t.keysets.c
        rows = self._u.conn.execute(
            select(c.keyset_id, c.sharing, c.allowed_sites, c.allowed_types).order_by(c.keyset_id)
        )
        return {row.keyset_id: _sharing_policy(row) for row in rows}

    def put(self, keyset_id: int, policy: SharingPolicy) -> None:
        conn = self._u.writing()
        result = conn.execute(
            update(t.keysets)
            .where(t.keysets.c.keyset_id == keyset_id)
            .values(
                sharing=policy.mode.value,
                allowed_sites=_json_text(policy.sorted_sites),
                allowed_types=_json_text(policy.sorted_types),
            )
        )
        _check_updated(result.rowcount, f"keyset {keyset_id}")


class _SiteOrigins:
    def __init__(self, unit: _Unit) -> None:
        self._u = unit

    def get(self, site_id: int) -> SiteOrigins | None:
        c = t.participants.c
        row = self._u.conn.execute(
            select(c.site_id, c.domain_names, c.app_names).where(c.site_id == site_id)
        ).first()
        return None if row is None else _site_origins(row)

    def list_all(self) -> list[SiteOrigins]:
        c = t.participants.c
        rows = self._u.conn.execute(
            select(c.site_id, c.domain_names, c.app_names).order_by(c.site_id)
        )
        return [_site_origins(row) for row in rows]

    def put(self, origins: SiteOrigins) -> None:
        conn = self._u.writing()
        result = conn.execute(
            update(t.participants)
            .where(t.participants.c.site_id == origins.site_id)
            .values(
                domain_names=_json_text(sorted(origins.domain_names)),
                app_names=_json_text(sorted(origins.app_names)),
                change_seq=self._u.committing_seq(),
            )
        )
        _check_updated(result.rowcount, f"participant {origins.site_id}")


class _Keypairs:
    def __init__(self, unit: _Unit) -> None:
        self._u = unit

    def get(self, subscription_id: str) -> ClientKeypair | None:
        c = t.client_side_keypairs.c
        row = self._u.conn.execute(
            select(t.client_side_keypairs).where(c.subscription_id == subscription_id)
        ).first()
        return None if row is None else _keypair(row)

    def list_for_site(self, site_id: int) -> list[ClientKeypair]:
        c = t.client_side_keypairs.c
        rows = self._u.conn.execute(
            select(t.client_side_keypairs)
            .where(c.site_id == site_id)
            .order_by(c.created_at_ms, c.subscription_id)
        )
        return [_keypair(row) for row in rows]

    def list_all(self) -> list[ClientKeypair]:
        c = t.client_side_keypairs.c
        rows = self._u.conn.execute(
            select(t.client_side_keypairs).order_by(c.site_id, c.created_at_ms, c.subscription_id)
        )
        return [_keypair(row) for row in rows]

    def count_by_kek_version(self) -> KekVersionCounts:
        return _count_by_kek_version(self._u.conn, t.client_side_keypairs.c.kek_version)

    def list_not_sealed_under(self, kek_version: int) -> list[ClientKeypair]:
        c = t.client_side_keypairs.c
        rows = self._u.conn.execute(
            select(t.client_side_keypairs)
            .where(c.kek_version != kek_version)
            .order_by(c.site_id, c.created_at_ms, c.subscription_id)
        )
        return [_keypair(row) for row in rows]

    def add(self, keypair: ClientKeypair) -> None:
        conn = self._u.writing()
        if self._u.exists(t.client_side_keypairs.c.subscription_id, keypair.subscription_id):
            raise AlreadyExists(f"Keypair {keypair.subscription_id} already exists")
        if not self._u.exists(t.participants.c.site_id, keypair.site_id):
            raise NotFound(f"No participant {keypair.site_id}")
        conn.execute(
            insert(t.client_side_keypairs).values(
                subscription_id=keypair.subscription_id,
                site_id=keypair.site_id,
                public_key=keypair.public_key,
                kek_version=keypair.sealed_private_key.kek_version,
                private_key_ciphertext=keypair.sealed_private_key.ciphertext,
                name=keypair.name,
                contact=keypair.contact,
                disabled=keypair.disabled,
                created_at_ms=keypair.created_at_ms,
            )
        )

    def update(self, keypair: ClientKeypair) -> None:
        conn = self._u.writing()
        c = t.client_side_keypairs.c
        result = conn.execute(
            update(t.client_side_keypairs)
            .where(c.subscription_id == keypair.subscription_id)
            .values(name=keypair.name, contact=keypair.contact, disabled=keypair.disabled)
        )
        _check_updated(result.rowcount, f"keypair {keypair.subscription_id}")

    def delete(self, subscription_id: str) -> None:
        conn = self._u.writing()
        c = t.client_side_keypairs.c
        result = conn.execute(
            delete(t.client_side_keypairs).where(c.subscription_id == subscription_id)
        )
        _check_updated(result.rowcount, f"keypair {subscription_id}")

    def reseal(self, subscription_id: str, private_key: SealedMaterial) -> None:
        conn = self._u.writing()
        c = t.client_side_keypairs.c
        result = conn.execute(
            update(t.client_side_keypairs)
            .where(c.subscription_id == subscription_id)
            .values(
                kek_version=private_key.kek_version,
                private_key_ciphertext=private_key.ciphertext,
            )
        )
        _check_updated(result.rowcount, f"keypair {subscription_id}")


_ENVIRONMENTS = {code: Environment(name) for name, code in t.ENVIRONMENT_CODES.items()}
_ID_LETTER_AT = len(f"{BRAND}-C-") + 1
"""Where (1-based, as SQL's ``substr`` counts) a key's or admin token's id carries its
environment letter (``domain.key_format``)."""


class _Deployment:
    def __init__(self, unit: _Unit) -> None:
        self._u = unit

    def environment(self) -> Environment | None:
        m = t.store_meta.c
        code = self._u.conn.execute(
            select(m.value).where(m.name == t.ENVIRONMENT)
        ).scalar_one_or_none()
        if code is None:
            return None
        found = _ENVIRONMENTS.get(int(code))
        if found is None:  # only a newer version could have written it
            raise StoreError(
                f"The store records an environment this version does not know ({code})"
            )
        return found

    def credential_environment_letters(self) -> frozenset[str]:
        at = _ID_LETTER_AT
        keys = select(func.substr(t.api_keys.c.key_id, at, 1))
        tokens = select(func.substr(t.admin_tokens.c.token_id, at, 1))
        return frozenset(self._u.conn.execute(keys.union(tokens)).scalars())

    def record_environment(self, environment: Environment) -> Environment:
        conn = self._u.writing(control_plane=False)  # refuses a read unit; no snapshot reads it
        recorded = self.environment()
        if recorded is not None:
            return recorded
        # The write lock is held: no other writer can insert it first.
        code = t.ENVIRONMENT_CODES[environment.value]
        conn.execute(insert(t.store_meta).values(name=t.ENVIRONMENT, value=code))
        return environment

    def highest_kek_version(self) -> int:
        m = t.store_meta.c
        value = self._u.conn.execute(
            select(m.value).where(m.name == t.KEK_VERSION_MAX)
        ).scalar_one_or_none()
        return 0 if value is None else int(value)

    def reserve_kek_version(self, version: int) -> int:
        if not _is_whole(version) or version <= 0:
            raise StoreError("A key-encryption key version must be a positive whole number")
        conn = self._u.writing(control_plane=False)  # refuses a read unit; no snapshot reads it
        m = t.store_meta.c
        recorded = conn.execute(
            select(m.value).where(m.name == t.KEK_VERSION_MAX)
        ).scalar_one_or_none()
        if recorded is None:  # the write lock is held: no other writer can insert it first
            conn.execute(insert(t.store_meta).values(name=t.KEK_VERSION_MAX, value=version))
            return version
        if int(recorded) >= version:
            return int(recorded)
        conn.execute(update(t.store_meta).where(m.name == t.KEK_VERSION_MAX).values(value=version))
        return version

    def dropped_kek_versions(self) -> frozenset[int]:
        m = t.store_meta.c
        rows = self._u.conn.execute(
            select(m.name).where(m.name.startswith(t.KEK_DROPPED_PREFIX, autoescape=True))
        )
        suffixes = (name[len(t.KEK_DROPPED_PREFIX) :] for (name,) in rows)
        return frozenset(int(s) for s in suffixes if s.isascii() and s.isdigit())

    def record_dropped_kek_version(self, version: int, at_ms: int) -> None:
        if not _is_whole(version) or not 0 < version <= _BIGINT_MAX:
            raise StoreError("A key-encryption key version must be a positive whole number")
        conn = self._u.writing(control_plane=False)
        if version not in self.dropped_kek_versions():
            name = f"{t.KEK_DROPPED_PREFIX}{version}"
            conn.execute(insert(t.store_meta).values(name=name, value=at_ms))

    def kek_check_values(self) -> dict[int, int]:
        m = t.store_meta.c
        rows = self._u.conn.execute(
            select(m.name, m.value).where(
                m.name.startswith(t.KEK_CHECK_PREFIX, autoescape=True)
                | (m.name == t.PEPPER_CHECK_NAME)
            )
        )
        found: dict[int, int] = {}
        for name, value in rows:
            if name == t.PEPPER_CHECK_NAME:
                found[0] = int(value)
                continue
            suffix = name[len(t.KEK_CHECK_PREFIX) :]
            if suffix.isascii() and suffix.isdigit() and not suffix.startswith("0"):
                found[int(suffix)] = int(value)
        return dict(sorted(found.items()))

    def record_kek_check_values(self, values: Mapping[int, int]) -> dict[int, int]:
        for version, value in values.items():
            if not _is_whole(version) or not 0 <= version <= _BIGINT_MAX:  # 0: the pepper's
                raise StoreError("A key-encryption key version must be a whole number from 0")
            if not _is_whole(value) or not 0 <= value <= _BIGINT_MAX:
                raise StoreError(
                    f"The check value of key-encryption key version {version} must be a whole "
                    "number from 0 to 2**63 - 1"
                )
        conn = self._u.writing(control_plane=False)  # refuses a read unit; no snapshot reads it
        recorded = self.kek_check_values()
        # The write lock is held: no other writer can record a version first.
        new = {version: value for version, value in values.items() if version not in recorded}
        if new:
            conn.execute(
                insert(t.store_meta),
                [{"name": t.kek_check_name(v), "value": value} for v, value in new.items()],
            )
        return dict(sorted((recorded | new).items()))


_BIGINT_MAX = (1 << 63) - 1


def _is_whole(value: object) -> bool:
    """An ``int`` proper: not a ``bool``, a float or a string of digits."""
    return isinstance(value, int) and not isinstance(value, bool)


class SqlTx:
    """One unit of work; satisfies both ``Tx`` and ``ReadTx`` (a read unit refuses writes)."""

    def __init__(self, unit: _Unit) -> None:
        self._unit = unit
        self.participants = _Participants(unit)
        self.api_keys = _ApiKeys(unit)
        self.secrets = _Secrets(unit)
        self.admin_tokens = _AdminTokens(unit)
        self.audit = _Audit(unit)
        self.usage = _Usage(unit)
        self.keysets = _Keysets(unit)
        self.encryption_keys = _EncryptionKeys(unit)
        self.salts = _Salts(unit)
        self.optouts = _OptOuts(unit)
        self.keyset_sharing = _KeysetSharing(unit)
        self.site_origins = _SiteOrigins(unit)
        self.keypairs = _Keypairs(unit)
        self.deployment = _Deployment(unit)

    def change_seq(self) -> int:
        return _change_seq(self)

    def mark_of(self, seq: int) -> bytes | None:
        return _mark_of(self, seq)


# ---------------------------------------------------------------------------------- the store


class _SharedRead(threading.local):
    """The read unit of work a thread's ``SqlStore.one_read`` block shares, if any."""

    tx: SqlTx | None = None


class SqlStore:
    """A Store on SQLite or PostgreSQL; build it with ``open_store``."""

    def __init__(self, engine: Engine, flavour: Flavour) -> None:
        self._engine = engine
        self._flavour = flavour
        self._shared = _SharedRead()

    @property
    def backend(self) -> str:
        return self._flavour.name

    @property
    def engine(self) -> Engine:
        return self._engine

    @contextmanager
    def transaction(self) -> Iterator[SqlTx]:
        with unavailable_as_store_error(self._engine), self._engine.connect() as conn:
            self._flavour.begin_write(conn)
            unit = _Unit(conn, self._flavour, writable=True)
            try:
                yield SqlTx(unit)
                if unit.dirty:
                    _advance_change_seq(conn)
                conn.commit()
            except BaseException:
                conn.rollback()
                raise

    @contextmanager
    def read(self) -> Iterator[SqlTx]:
        shared = self._shared.tx
        if shared is not None:  # inside ``one_read``: its unit, closed when that block ends
            yield shared
            return
        with unavailable_as_store_error(self._engine), self._engine.connect() as conn:
            unit = _Unit(self._flavour.begin_read(conn), self._flavour, writable=False)
            try:
                yield SqlTx(unit)
            finally:
                conn.rollback()

    @contextmanager
    def one_read(self) -> Iterator[None]:
        if self._shared.tx is not None:  # already inside one: the outer block's unit
            yield
            return
        with self.read() as tx:
            _change_seq(tx)  # the first statement fixes the state every read in it sees
            self._shared.tx = tx
            try:
                yield
            finally:
                self._shared.tx = None

    def change_seq(self) -> int:
        with self.read() as tx:
            return _change_seq(tx)

    def change_state(self) -> object:
        with self.read() as tx:
            seq = _change_seq(tx)
            mark = _mark_of(tx, seq)
        return change_state(seq, mark)

    def snapshot(self, now_ms: int, since: int = 0) -> Snapshot:
        with self.read() as tx:
            seq = _change_seq(tx)
            if since <= 0:
                return Snapshot(
                    change_seq=seq,
                    participants=tuple(tx.participants.list_all()),
                    keys=tuple(tx.api_keys.list_all()),
                    secrets=tuple(tx.secrets.list_live(now_ms)),
                )
            conn = tx._unit.conn
            return Snapshot(
                change_seq=seq,
                participants=tuple(_written_after(conn, t.participants, since, _participant)),
                keys=tuple(_written_after(conn, t.api_keys, since, _api_key)),
                secrets=(
                    *_live_secrets_of_keys_written_after(conn, since, now_ms),
                    *_written_after(conn, t.client_secrets, since, _secret),
                ),
            )

    def record_usage(self, batch: Sequence[UsageEntry]) -> list[str]:
        with self.transaction() as tx:
            return tx.usage.record(batch)

    def close(self) -> None:
        self._engine.dispose()


def _written_after(
    conn: Connection, table: Table, since: int, convert: Callable[[Row[Any]], _T]
) -> list[_T]:
    """The rows of a credentials table written by commits after change sequence ``since``, in the
    order of the commits that wrote them, then of their key."""
    c = table.c
    query = select(table).where(c.change_seq > since).order_by(c.change_seq, *table.primary_key)
    return [convert(row) for row in conn.execute(query)]


def _live_secrets_of_keys_written_after(
    conn: Connection, since: int, now_ms: int
) -> list[SealedSecret]:
    """The secrets live at ``now_ms``, not written since ``since``, of the keys written since:
    with those written since, all a key changed since has (``Snapshot``)."""
    c, k = t.client_secrets.c, t.api_keys.c
    query = (
        select(t.client_secrets)
        .where(
            c.key_id.in_(select(k.key_id).where(k.change_seq > since)),
            c.change_seq <= since,
            or_(c.retires_at_ms.is_(None), c.retires_at_ms > now_ms),
        )
        .order_by(c.change_seq, c.secret_id)
    )
    return [_secret(row) for row in conn.execute(query)]


def _advance_change_seq(conn: Connection) -> None:
    """Moves the change sequence on by one as a write unit commits, with a fresh mark for the
    new value; the mark of the sequence ``MARKS_KEPT`` back goes (one row, by its key)."""
    seq = int(
        conn.execute(
            update(t.store_meta)
            .where(t.store_meta.c.name == t.CHANGE_SEQ)
            .values(value=t.store_meta.c.value + 1)
            .returning(t.store_meta.c.value)
        ).scalar_one()
    )
    marks = t.change_marks
    conn.execute(insert(marks).values(seq=seq, mark=os.urandom(t.MARK_BYTES)))
    conn.execute(delete(marks).where(marks.c.seq <= seq - t.MARKS_KEPT))


def _mark_of(tx: SqlTx, seq: int) -> bytes | None:
    conn = tx._unit.conn
    mark = conn.execute(
        select(t.change_marks.c.mark).where(t.change_marks.c.seq == seq)
    ).scalar_one_or_none()
    return None if mark is None else bytes(mark)


def _change_seq(tx: SqlTx) -> int:
    conn = tx._unit.conn
    value = conn.execute(
        select(t.store_meta.c.value).where(t.store_meta.c.name == t.CHANGE_SEQ)
    ).scalar_one()
    return int(value)


def record_audit_head_on_upgrade(conn: Connection, flavour: Flavour) -> ChainHead | None:
    """The upgrade's data step, on its connection and in its transaction: a chain written by an
    earlier version, which kept no head, gets its last row recorded as the head when every link up
    to it verifies (``_Audit.record_head_of_intact_chain``). Without it, verification would report
    such a chain as going past an empty head until the next append. A broken chain gets no head,
    so verification keeps reporting the break; a chain with a head is left alone."""
    # The store-wide write lock first (SQLite's BEGIN IMMEDIATE holds it already): no writer can
    # append between the read of the rows and the record of the head.
    conn.execute(
        select(t.store_meta.c.value).where(t.store_meta.c.name == t.CHANGE_SEQ).with_for_update()
    )
    return _Audit(_Unit(conn, flavour, writable=True)).record_head_of_intact_chain()


def open_store(url: str | URL, *, check_schema: bool = True) -> SqlStore:
    """Opens the store at ``url`` (``sqlite:///<path>`` or ``postgresql[+psycopg]://...``).

    Refuses (SchemaOutOfDate) a database that is not at the head revision this code ships, so a
    forgotten ``db upgrade`` fails at startup rather than on the first write, and a database at a
    revision this code does not ship (upgraded by a newer version) is refused as such rather than
    sent to an upgrade that cannot help; raises StoreUnavailable when the database cannot be
    reached.

    A SQLite file is never created here (only the upgrade creates it, owner-only): a missing one
    is refused as never initialised (SchemaOutOfDate), or, with ``check_schema`` off, makes each
    use fail with StoreUnavailable.
    """
    engine, flavour = make_engine(url, must_exist=True)
    if check_schema:
        path = sqlite_path(url)
        if path is not None and not path.exists():
            engine.dispose()
            raise SchemaOutOfDate(
                f"The database is at schema revision none (the SQLite file {path} does not "
                f"exist), this version needs {head_revision()}; run `uid2-operator init` first"
            )
        try:
            found = revision_of(engine)  # refuses a revision newer than this code
        except BaseException:
            engine.dispose()
            raise
        if found != head_revision():
            engine.dispose()
            remedy = (
                "run `uid2-operator init` first"
                if found is None
                else "stop every process of the earlier version on this database, then run "
                "`uid2-operator db upgrade`"
            )
            raise SchemaOutOfDate(
                f"The database is at schema revision {found or 'none'}, this version needs "
                f"{head_revision()}; {remedy}"
            )
    return SqlStore(engine, flavour)


if TYPE_CHECKING:  # the backend satisfies the protocols it is used through

    def _is_a_store(store: SqlStore) -> Store:
        return store

    def _is_a_tx(tx: SqlTx) -> Tx:
        return tx

    def _is_a_read_tx(tx: SqlTx) -> ReadTx:
        return tx
