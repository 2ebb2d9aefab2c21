"""A changed audit row is a verdict, on every backend, whatever was changed.

Verification hashes a row as it is stored. It used to redact the stored values again before
hashing, so a field that redaction drops (one named like a secret, a value shaped like a full
API key) could be added to an event without changing its hash; and a row that no longer read back
as an event (a float, text that is not JSON, an outcome no version writes) made verification fail
with an error instead of naming the row.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from sqlalchemy import select, update

from uid2_operator.domain.audit import draft_event, event_hash, verify_chain
from uid2_operator.errors import AuditRowUnreadable, StoreError
from uid2_operator.storage import SqlStore
from uid2_operator.storage import schema as t

T0 = 1_760_000_000_000
FULL_KEY = "UID2-C-L-3-Gc9126.AAAAAAAAAAAAAAAAAAAAAAAA"


def _chain(store: SqlStore) -> None:
    """Three events, as the application drafts them (redacted), the middle one about a key."""
    for seq, after in enumerate(
        [
            {"name": "first", "site_id": 3},
            {"key_id": "UID2-C-L-3-Gc9126", "roles": ["GENERATOR"], "state": "active"},
            {"name": "third", "site_id": 3},
        ],
        start=1,
    ):
        draft = draft_event(
            at_ms=T0 + seq,
            actor="cli:test",
            action="key.create",
            target_type="api_key",
            target_id=f"target-{seq}",
            site_id=3,
            after=after,
        )
        with store.transaction() as tx:
            tx.audit.append(draft, event_hash)


def _edit_after(store: SqlStore, seq: int, change: Callable[[str], str]) -> None:
    c = t.audit_events.c
    with store.engine.begin() as conn:
        text = conn.execute(select(c.after).where(c.seq == seq)).scalar_one()
        conn.execute(update(t.audit_events).where(c.seq == seq).values(after=change(text)))


def _with(**added: object) -> Callable[[str], str]:
    def change(text: str) -> str:
        value = json.loads(text)
        value.update(added)
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    return change


def _roles_plus(item: str) -> Callable[[str], str]:
    def change(text: str) -> str:
        value = json.loads(text)
        value["roles"].append(item)
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    return change


def test_an_untouched_chain_verifies(store: SqlStore) -> None:
    _chain(store)
    with store.read() as rx:
        verdict = verify_chain(list(rx.audit.chain_events()), recorded_head=rx.audit.head())
    assert (verdict.ok, verdict.checked) == (True, 3)


@pytest.mark.parametrize(
    "change",
    [
        _with(approved_by_token="ticket SEC-1 approved"),  # a name redaction drops
        _with(Secret="none", Text="also granted MAPPER"),  # in any case
        _roles_plus(f"MAPPER ({FULL_KEY})"),  # a list item shaped like a full API key
        _with(approved_by=FULL_KEY),  # a value shaped like one
    ],
    ids=["secret-like name", "secret-like names in capitals", "credential in a list", "credential"],
)
def test_a_field_that_redaction_would_drop_still_breaks_the_chain(
    store: SqlStore, change: Callable[[str], str]
) -> None:
    _chain(store)
    _edit_after(store, 2, change)
    with store.read() as rx:
        verdict = verify_chain(list(rx.audit.chain_events()), recorded_head=rx.audit.head())
    assert (verdict.ok, verdict.first_bad_seq) == (False, 2)
    assert verdict.problem == "hash does not match the event's content"


def test_a_float_breaks_the_chain(store: SqlStore) -> None:
    _chain(store)
    _edit_after(store, 1, lambda text: text.replace('"site_id":3', '"site_id":3.0'))
    with store.read() as rx:
        verdict = verify_chain(list(rx.audit.chain_events()), recorded_head=rx.audit.head())
    assert (verdict.ok, verdict.first_bad_seq) == (False, 1)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("prev_hash", "SECRETTEXT"),
        ("hash", "SECRETTEXT"),
        ("prev_hash", 1 << 40),  # read as bytes(n), it would be a TiB of zeros
        ("actor", b"\x00\xff"),
        ("target_id", b"7"),
        ("at_ms", "yesterday"),
        ("site_id", "three"),
        ("request_id", b"\x01"),
        ("after", b"{}"),
    ],
)
@pytest.mark.parametrize("backend", ["sqlite"])  # PostgreSQL enforces its column types
def test_a_column_of_another_type_is_named_by_the_verdict(
    store: SqlStore, column: str, value: object
) -> None:
    # SQLite keeps whatever type a column is given: an edit outside the application can store
    # text where a hash goes, or bytes where text goes.
    _chain(store)
    with store.engine.begin() as conn:  # below the column types, as an outside edit writes
        statement = f"UPDATE audit_events SET {column} = ? WHERE seq = 2"  # noqa: S608 (ours)
        conn.exec_driver_sql(statement, (value,))
    with store.read() as rx:
        verdict = verify_chain(list(rx.audit.chain_events()), recorded_head=rx.audit.head())
        with pytest.raises(AuditRowUnreadable):
            rx.audit.list_events()
    assert (verdict.ok, verdict.first_bad_seq) == (False, 2)
    assert verdict.problem == (
        f"the row cannot be read: its {column} is not of the type uid2-operator writes"
    )


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"after": "not json"}, "its after is not JSON"),
        ({"before": "{"}, "its before is not JSON"),
        ({"outcome": "weird"}, "its outcome is not one uid2-operator writes"),
        ({"after": '{"a":NaN}'}, "its after is not JSON"),  # Python's reader takes them
        ({"before": '{"a":-Infinity}'}, "its before is not JSON"),
        ({"after": '{"a":1e400}'}, "its after is not JSON"),  # read back as infinity
        # An escaped lone surrogate reads as JSON, but no answer or output can carry it.
        ({"after": '{"a":"\\ud800"}'}, "its after holds text that is not Unicode"),
        ({"before": '{"\\udfff":1}'}, "its before holds text that is not Unicode"),
        ({"after": '{"a":[{"b":"x\\uDBFF"}]}'}, "its after holds text that is not Unicode"),
    ],
)
def test_a_row_that_does_not_read_back_is_named_by_the_verdict(
    store: SqlStore, values: dict[str, str], problem: str
) -> None:
    _chain(store)
    c = t.audit_events.c
    with store.engine.begin() as conn:
        conn.execute(update(t.audit_events).where(c.seq == 2).values(**values))
    with store.read() as rx:
        verdict = verify_chain(list(rx.audit.chain_events()), recorded_head=rx.audit.head())
        # Listing the events names the row and the field, never its content.
        with pytest.raises(AuditRowUnreadable) as unreadable:
            rx.audit.list_events()
    assert (verdict.ok, verdict.first_bad_seq, verdict.checked) == (False, 2, 1)
    assert verdict.problem == f"the row cannot be read: {problem}"
    assert unreadable.value.detail == (
        f"Audit event seq 2 cannot be read ({problem}): it was changed outside uid2-operator; "
        "`uid2-operator audit verify` reports where the chain breaks"
    )
    assert "weird" not in unreadable.value.detail
    assert "not json" not in unreadable.value.detail


@pytest.mark.parametrize("backend", ["sqlite"])  # PostgreSQL enforces its column types
def test_a_write_after_an_unreadable_last_row_and_no_recorded_head_names_the_row(
    store: SqlStore,
) -> None:
    # With no head recorded (a chain an earlier version wrote, which db upgrade leaves so when
    # it is broken), the next event builds on the last row: its hash must be one.
    _chain(store)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM store_meta WHERE name LIKE 'audit_head%'")
        conn.exec_driver_sql("UPDATE audit_events SET hash = 'x' WHERE seq = 3")
    draft = draft_event(
        at_ms=T0 + 9, actor="cli:test", action="key.create", target_type="api_key", target_id="t"
    )
    with pytest.raises(AuditRowUnreadable) as refused, store.transaction() as tx:
        tx.audit.append(draft, event_hash)
    assert refused.value.seq == 3
    with store.read() as rx:
        assert len(list(rx.audit.chain_events())) == 3  # nothing appended


def test_a_field_repeated_in_a_row_breaks_the_chain(store: SqlStore) -> None:
    # JSON readers keep the last of a repeated name: text added before it in the stored row (a
    # credential, say) would read back as the same event, with the same hash, and never show.
    _chain(store)
    _edit_after(store, 2, lambda text: '{"state":' + json.dumps(FULL_KEY) + "," + text[1:])
    with store.read() as rx:
        verdict = verify_chain(list(rx.audit.chain_events()), recorded_head=rx.audit.head())
        with pytest.raises(AuditRowUnreadable) as unreadable:
            rx.audit.list_events()
    assert (verdict.ok, verdict.first_bad_seq, verdict.checked) == (False, 2, 1)
    assert verdict.problem == "the row cannot be read: its after repeats a field"
    assert FULL_KEY not in unreadable.value.detail


@pytest.mark.parametrize("value", ["x", b"\x07", 2.5])
@pytest.mark.parametrize("edited", [2, 3])
@pytest.mark.parametrize("head_recorded", [True, False])
@pytest.mark.parametrize("backend", ["sqlite"])  # PostgreSQL enforces its column types
def test_a_row_whose_seq_is_not_a_number_leaves_writes_working_and_the_verdict_naming_it(
    store: SqlStore, value: object, edited: int, head_recorded: bool
) -> None:
    # SQLite sorts text and bytes after every number, and a fraction between two: no version
    # writes such a seq, so the chain neither ends at the row nor runs past its head through it.
    _chain(store)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE audit_events SET seq = ? WHERE seq = ?", (value, edited))
        if not head_recorded:
            conn.exec_driver_sql("DELETE FROM store_meta WHERE name LIKE 'audit_head%'")
    draft = draft_event(
        at_ms=T0 + 9, actor="cli:test", action="key.create", target_type="api_key", target_id="t"
    )
    with store.transaction() as tx:
        appended = tx.audit.append(draft, event_hash)
    # After the recorded head; with none, after the last numbered row.
    assert appended.seq == (4 if head_recorded or edited == 2 else 3)
    with store.read() as rx:
        events = list(rx.audit.chain_events())
        verdict = verify_chain(events, recorded_head=rx.audit.head())
        with pytest.raises(AuditRowUnreadable) as unreadable:
            rx.audit.list_events()
    assert appended in events
    # The last row edited with no head recorded: the new seq 3 links to seq 2, so the break is
    # the edited row itself, after 3, wherever it sorts (a fraction sorts before 3).
    rebuilt = not head_recorded and edited == 3
    assert (verdict.ok, verdict.first_bad_seq) == (False, 4 if rebuilt else edited)
    assert unreadable.value.detail == (
        "An audit event cannot be read (its seq is not a number uid2-operator writes): it was "
        "changed outside uid2-operator; `uid2-operator audit verify` reports where the chain "
        "breaks"
    )


def test_text_outside_the_basic_plane_reads_back_whether_escaped_or_not(store: SqlStore) -> None:
    # A surrogate pair escaped in the stored JSON is one character once read: not a lone one.
    _chain(store)
    _edit_after(store, 2, lambda text: text.replace('"active"', '"\\ud83d\\ude00 \U0001f600"'))
    with store.read() as rx:
        [event] = [e for e in rx.audit.list_events() if e.seq == 2]
    assert event.after is not None
    assert event.after["state"] == "\U0001f600 \U0001f600"


@pytest.mark.parametrize("backend", ["sqlite"])  # PostgreSQL stores only UTF-8 text
def test_a_stored_text_that_is_not_utf8_is_named_by_its_column_never_quoted(
    store: SqlStore,
) -> None:
    _chain(store)
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE audit_events SET actor = CAST(X'ff4f7574736964657221' AS TEXT) WHERE seq = 2"
        )
    with pytest.raises(StoreError) as unreadable, store.read() as rx:
        list(rx.audit.chain_events())
    assert "Could not decode to UTF-8 column 'actor'" in unreadable.value.detail
    assert "written outside uid2-operator" in unreadable.value.detail
    assert "Outsider" not in unreadable.value.detail
