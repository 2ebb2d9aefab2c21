from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

import uid2_operator.domain.audit as audit_module
from uid2_operator.domain.audit import (
    EMPTY_HEAD,
    GENESIS_HASH,
    AuditEvent,
    ChainHead,
    Outcome,
    UnreadableEvent,
    canonical_event_bytes,
    check_adoption,
    draft_event,
    event_hash,
    link_event,
    redact,
    verify_chain,
)
from uid2_operator.domain.credentials import ApiKey, SealedSecret
from uid2_operator.domain.roles import ClientRole
from uid2_operator.errors import InvalidInput, InvalidTransition

MakeKey = Callable[..., tuple[str, ApiKey]]
T0 = 1_700_000_000_000
KEY_TEXT = "UID2-C-L-1001-fCXrMM." + "a" * 38


def test_redaction_removes_secret_bearing_fields_at_any_depth() -> None:
    before = {
        "key_id": "UID2-C-L-1001-fCXrMM",
        "name": "web",
        "key_hash": "deadbeef",
        "Secret": "c2VjcmV0",
        "client_secret": "x",
        "ciphertext": "y",
        "plaintext_key": "z",
        "nested": {
            "token_hash": "t",
            "kept": 1,
            "deeper": [{"refresh_token": "r", "pepper": "p", "ok": True}],
        },
        "raw": b"\x00\x01",
        "note": f"pasted {KEY_TEXT} by mistake",
        "list": ["plain", KEY_TEXT, b"bytes", {"salt": "s", "v": None}],
    }
    assert redact(before) == {
        "key_id": "UID2-C-L-1001-fCXrMM",
        "name": "web",
        "nested": {"kept": 1, "deeper": [{"ok": True}]},
        "list": ["plain", {"v": None}],
    }


def test_records_are_described_without_hashes_or_ciphertext(make_key: MakeKey) -> None:
    text, key = make_key(roles=frozenset({ClientRole.MAPPER, ClientRole.GENERATOR}))
    described = redact(key)
    assert "key_hash" not in described
    assert described["roles"] == ["GENERATOR", "MAPPER"]  # sets sorted
    assert described["state"] == "active"
    assert type(described["state"]) is str
    assert described["key_id"] == key.key_id
    sealed = SealedSecret(3, key.key_id, 1, b"\x01" * 60, T0)
    assert redact(sealed) == {
        "secret_id": 3, "key_id": key.key_id, "kek_version": 1, "created_at_ms": T0,
        "retires_at_ms": None,
    }  # fmt: skip
    dumped = json.dumps(redact({"before": key, "after": sealed, "t": (1, 2)}))
    assert text not in dumped
    assert key.key_hash.hex() not in dumped


def test_redaction_refuses_values_that_do_not_hash_stably() -> None:
    with pytest.raises(InvalidInput, match="float"):
        redact({"ratio": 0.5})
    with pytest.raises(InvalidInput, match="strings"):
        redact({1: "x"})
    with pytest.raises(InvalidInput, match="before/after"):
        draft_event(at_ms=T0, actor="a", action="x", target_type="t", target_id="i", after=[1])


def _chain(n: int) -> list[AuditEvent]:
    events: list[AuditEvent] = []
    prev = GENESIS_HASH
    for seq in range(1, n + 1):
        draft = draft_event(
            at_ms=T0 + seq,
            actor="admin:UID2-A-L-0-abcdef",
            action="key.create",
            target_type="api_key",
            target_id=f"UID2-C-L-1001-key{seq:03d}",
            site_id=1001,
            before=None if seq == 1 else {"name": f"n{seq - 1}", "secret": "s"},
            after={"name": f"n{seq}", "roles": {"MAPPER", "GENERATOR"}},
            request_id=f"req-{seq}",
            source="203.0.113.7",
            outcome=Outcome.SUCCESS,
        )
        event = link_event(draft, seq=seq, prev_hash=prev)
        events.append(event)
        prev = event.hash
    return events


def test_linking_and_hash_definition() -> None:
    events = _chain(3)
    first = events[0]
    assert first.prev_hash == GENESIS_HASH == bytes(32)
    assert first.before is None
    assert events[1].before == {"name": "n1"}
    assert first.after == {"name": "n1", "roles": ["GENERATOR", "MAPPER"]}
    canonical = canonical_event_bytes(1, first)
    assert json.loads(canonical) == {
        "seq": 1, "at_ms": T0 + 1, "actor": "admin:UID2-A-L-0-abcdef", "action": "key.create",
        "target_type": "api_key", "target_id": "UID2-C-L-1001-key001", "site_id": 1001,
        "before": None, "after": {"name": "n1", "roles": ["GENERATOR", "MAPPER"]},
        "request_id": "req-1", "source": "203.0.113.7", "outcome": "success",
    }  # fmt: skip
    assert canonical.startswith(b'{"action":"key.create","actor":')  # sorted, compact
    assert first.hash == hashlib.sha256(bytes(32) + canonical).digest()
    assert events[1].prev_hash == first.hash
    assert event_hash(first.hash, 2, events[1]) == events[1].hash


def test_canonical_bytes_are_ascii_and_stable_across_a_json_round_trip() -> None:
    draft = draft_event(
        at_ms=T0, actor="admin:é", action="participant.update", target_type="participant",
        target_id="1001", after={"name": "Zürich \ud800 ünïcode", "b": {"z": 1, "a": 2}},
    )  # fmt: skip
    event = link_event(draft, seq=1, prev_hash=GENESIS_HASH)
    canonical = canonical_event_bytes(1, event)
    canonical.decode("ascii")
    assert draft.outcome is Outcome.SUCCESS
    reloaded = replace(event, after=json.loads(json.dumps(event.after)))
    assert verify_chain([reloaded]).ok


def test_an_intact_chain_verifies() -> None:
    events = _chain(5)
    verdict = verify_chain(events)
    assert verdict.ok
    assert (verdict.checked, verdict.first_bad_seq, verdict.problem) == (5, None, None)
    assert (verdict.head_seq, verdict.head_hash) == (5, events[-1].hash)
    assert verify_chain([]).ok
    assert verify_chain([]).head_hash == GENESIS_HASH
    # From the middle, anchored on a trusted earlier event.
    assert verify_chain(events[2:], start_seq=3, start_prev_hash=events[1].hash).ok


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("actor", "admin:someone-else"),
        ("after", {"name": "changed", "roles": ["GENERATOR", "MAPPER"]}),
        ("outcome", Outcome.DENIED),
        ("at_ms", T0),
        ("site_id", None),
    ],
)
def test_a_modified_row_is_detected(field: str, value: Any) -> None:
    events = _chain(5)
    events[2] = replace(events[2], **{field: value})
    verdict = verify_chain(events)
    assert not verdict.ok
    assert verdict.first_bad_seq == 3
    assert verdict.problem == "hash does not match the event's content"
    assert (verdict.checked, verdict.head_seq, verdict.head_hash) == (2, 2, events[1].hash)


def test_a_modified_row_with_a_recomputed_hash_breaks_the_next_link() -> None:
    events = _chain(5)
    forged = replace(events[2], actor="admin:intruder")
    events[2] = replace(forged, hash=event_hash(forged.prev_hash, 3, forged))
    verdict = verify_chain(events)
    assert (verdict.ok, verdict.first_bad_seq) == (False, 4)
    assert verdict.problem == "prev_hash does not match the previous event's hash"


def test_a_deleted_row_is_detected() -> None:
    events = _chain(5)
    del events[2]
    verdict = verify_chain(events)
    assert (verdict.ok, verdict.first_bad_seq) == (False, 3)
    assert verdict.problem == "expected seq 3, found 4"


def test_a_reordered_row_is_detected() -> None:
    events = _chain(5)
    events[2], events[3] = events[3], events[2]
    verdict = verify_chain(events)
    assert (verdict.ok, verdict.first_bad_seq) == (False, 3)


def test_an_inserted_row_is_detected() -> None:
    events = _chain(5)
    intruder = link_event(
        draft_event(at_ms=T0, actor="x", action="key.revoke", target_type="api_key", target_id="k"),
        seq=3,
        prev_hash=events[1].hash,
    )
    tampered = [*events[:2], intruder, *[replace(e, seq=e.seq + 1) for e in events[2:]]]
    verdict = verify_chain(tampered)
    assert (verdict.ok, verdict.first_bad_seq) == (False, 4)


def test_a_forged_hash_is_detected() -> None:
    events = _chain(5)
    events[4] = replace(events[4], hash=bytes(32))
    assert verify_chain(events).first_bad_seq == 5
    events = _chain(5)
    events[0] = replace(events[0], prev_hash=b"\x01" * 32)
    verdict = verify_chain(events)
    assert (verdict.first_bad_seq, verdict.problem) == (
        1,
        "prev_hash does not match the previous event's hash",
    )


# -------------------------------------------------------------------- the recorded chain head


def _head_of(event: AuditEvent) -> ChainHead:
    return ChainHead(event.seq, event.hash)


def test_a_chain_ending_at_its_recorded_head_verifies() -> None:
    events = _chain(5)
    verdict = verify_chain(events, recorded_head=_head_of(events[-1]))
    assert (verdict.ok, verdict.checked, verdict.head_seq) == (True, 5, 5)
    assert verdict.recorded_head == _head_of(events[-1])
    assert verify_chain([], recorded_head=EMPTY_HEAD).ok
    assert verify_chain(events[2:], start_seq=3, start_prev_hash=events[1].hash,
                        recorded_head=_head_of(events[-1])).ok  # fmt: skip


@pytest.mark.parametrize("deleted", [1, 2, 5])
def test_a_deleted_tail_is_detected_against_the_recorded_head(deleted: int) -> None:
    events = _chain(5)
    head = _head_of(events[-1])
    kept = events[:-deleted]
    assert verify_chain(kept).ok  # consistent by itself: only the head gives it away
    verdict = verify_chain(kept, recorded_head=head)
    assert not verdict.ok
    assert verdict.first_bad_seq == 6 - deleted
    assert verdict.problem == (
        f"the chain ends at seq {5 - deleted} but the recorded head is seq 5: "
        "its last events were deleted"
    )
    assert (verdict.checked, verdict.head_seq) == (5 - deleted, 5 - deleted)


def test_a_rewritten_last_event_is_detected_against_the_recorded_head() -> None:
    events = _chain(5)
    head = _head_of(events[-1])
    forged = replace(events[-1], actor="admin:intruder")
    events[-1] = replace(forged, hash=event_hash(forged.prev_hash, 5, forged))
    assert verify_chain(events).ok
    verdict = verify_chain(events, recorded_head=head)
    assert (verdict.ok, verdict.first_bad_seq) == (False, 5)
    assert verdict.problem == "the last event's hash does not match the recorded head"
    assert (verdict.checked, verdict.head_seq, verdict.head_hash) == (4, 4, events[3].hash)


def test_events_past_the_recorded_head_are_detected() -> None:
    events = _chain(5)
    verdict = verify_chain(events, recorded_head=_head_of(events[2]))
    assert (verdict.ok, verdict.first_bad_seq) == (False, 4)
    assert verdict.problem == "the chain goes on past the recorded head (seq 3) to seq 5"
    missing = verify_chain(events, recorded_head=EMPTY_HEAD)
    assert (missing.ok, missing.first_bad_seq) == (False, 1)
    assert missing.problem == "no chain head is recorded, yet the chain reaches seq 5"


def test_a_recorded_head_with_a_wrong_hash_and_no_events_is_detected() -> None:
    verdict = verify_chain([], recorded_head=ChainHead(0, b"\x01" * 32))
    assert (verdict.ok, verdict.first_bad_seq, verdict.checked) == (False, 0, 0)


NO_SEQ = UnreadableEvent(None, "its seq is not a number uid2-operator writes")


def test_a_row_whose_seq_cannot_be_read_breaks_the_chain_where_it_would_go_on() -> None:
    # Such a row sorts after every numbered one.
    events = _chain(3)
    verdict = verify_chain([*events, NO_SEQ], recorded_head=_head_of(events[-1]))
    assert (verdict.ok, verdict.first_bad_seq, verdict.checked) == (False, 4, 3)
    assert verdict.problem == "the row cannot be read: its seq is not a number uid2-operator writes"
    # In place of a numbered row that is gone, the gap is reported where it is.
    gap = verify_chain([events[0], events[2], NO_SEQ])
    assert (gap.first_bad_seq, gap.problem) == (2, "expected seq 2, found 3")
    # Wherever it sorts (a fraction sorts among the numbers), the break is the same.
    among = verify_chain([events[0], NO_SEQ, events[2]])
    assert (among.first_bad_seq, among.problem, among.head_seq) == (2, "expected seq 2, found 3", 1)
    intact = verify_chain([events[0], NO_SEQ, events[1], events[2]])
    assert (intact.first_bad_seq, intact.checked, intact.head_seq) == (4, 3, 3)


def test_a_row_whose_seq_cannot_be_read_is_not_adopted_nor_keeps_the_rest_from_being() -> None:
    # It sorts past any head wherever it was: adoption takes the numbered rows past the head.
    events = _chain(4)
    adopted = check_adoption(_head_of(events[1]), [*events[2:], NO_SEQ], 4)
    assert (adopted.from_seq, adopted.head, adopted.count) == (3, _head_of(events[3]), 2)
    with pytest.raises(InvalidTransition, match=r"^Nothing to adopt"):
        check_adoption(_head_of(events[3]), [NO_SEQ], 5)


# Spelled out, not read from SECRET_FIELD_NAMES: dropping a name from the rule must fail here.
@pytest.mark.parametrize(
    "name",
    [
        "key", "api_key", "key_text", "plaintext_key", "text", "secret", "client_secret",
        "secret_text", "hash", "key_hash", "token_hash", "salt", "key_salt", "ciphertext",
        "pepper", "kek", "keks", "token", "password", "authorization",
        "refresh_hash", "admin_secret", "material_ciphertext", "first_level_salt",
        "old_pepper", "access_token", "KEK", "Authorization",
    ],
)  # fmt: skip
def test_every_secret_bearing_name_is_dropped_at_any_depth(name: str) -> None:
    assert redact({name: "v", "kept": 1}) == {"kept": 1}
    assert redact({"outer": [{"inner": {name: "v"}}]}) == {"outer": [{"inner": {}}]}


@pytest.mark.parametrize("brand", ["UID2", "EUID"])
def test_a_value_holding_a_full_key_of_either_brand_is_dropped(brand: str) -> None:
    text = f"{brand}-C-L-1001-fCXrMM." + "a" * 38
    assert redact({"note": f"pasted {text} here", "kept": "plain"}) == {"kept": "plain"}


def test_hashes_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    events = _chain(3)
    compared: list[tuple[bytes, bytes]] = []
    real = audit_module.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr(audit_module.hmac, "compare_digest", spy)
    assert verify_chain(events, recorded_head=_head_of(events[-1])).ok
    # each hash twice: against itself recomputed, then as the next link (the last: the head)
    assert [compared.count((event.hash, event.hash)) for event in events] == [2, 2, 2]
