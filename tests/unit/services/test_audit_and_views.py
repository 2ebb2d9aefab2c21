"""Audit events written with each change, views that hold no secret, usage, and the lookup."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest
from service_fixtures import ACTOR, KEYRING

from uid2_operator.clock import FixedClock
from uid2_operator.domain.audit import event_hash
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import checksum, mint_api_key
from uid2_operator.domain.optout import OptOutRecord
from uid2_operator.domain.participants import ParticipantType
from uid2_operator.errors import CredentialRejected, MalformedCredential
from uid2_operator.services.admin import AdminService
from uid2_operator.services.credentials import CredentialService
from uid2_operator.services.write_behind import write_optouts
from uid2_operator.storage import SqlStore
from uid2_operator.wire.encoding import b64decode, b64encode


def _actions(svc: CredentialService) -> list[str]:
    return [e.action for e in svc.list_audit(ACTOR, limit=1000)]


def test_every_change_writes_one_event_with_the_change(svc: CredentialService) -> None:
    site = svc.create_participant(ACTOR, name="P", type="publisher", roles=["GENERATOR"]).site_id
    issued = svc.create_key(ACTOR, site_id=site, name="k", roles=["GENERATOR"])
    svc.rename_key(ACTOR, issued.key_id, name="k2")
    svc.set_key_roles(ACTOR, issued.key_id, roles=["GENERATOR"])
    svc.disable_key(ACTOR, issued.key_id)
    svc.enable_key(ACTOR, issued.key_id)
    svc.rotate_secret(ACTOR, issued.key_id)
    new = svc.rotate_key(ACTOR, issued.key_id)
    svc.revoke_key(ACTOR, new.key_id, reason="r")
    svc.set_participant_roles(ACTOR, site, ["GENERATOR", "MAPPER"])
    svc.set_participant_enabled(ACTOR, site, False)
    svc.set_participant_enabled(ACTOR, site, True)
    assert _actions(svc) == [
        "participant.create",
        "key.create",
        "key.rename",
        "key.set_roles",
        "key.disable",
        "key.enable",
        "key.rotate_secret",
        "key.rotate",
        "key.create",
        "key.revoke",
        "participant.set_roles",
        "participant.disable",
        "participant.enable",
    ]
    events = svc.list_audit(ACTOR)
    assert {(e.actor, e.request_id, e.source, e.outcome) for e in events} == {
        ("cli:tester", "req-1", "cli", "success")
    }
    create = events[1].to_json()
    assert create["after"]["secret_disclosed"] is True
    assert create["target_id"] == issued.key_id
    rename = events[2]
    assert rename.before is not None
    assert rename.after is not None
    assert (rename.before["name"], rename.after["name"]) == ("k", "k2")
    assert "key_hash" not in rename.after
    assert svc.verify_audit(ACTOR).to_json() == {
        "ok": True,
        "checked": 13,
        "first_bad_seq": None,
        "reason": None,
        "head_seq": 13,
        "head_hash": events[-1].hash,
    }


def test_a_refused_change_writes_no_event(svc: CredentialService) -> None:
    site = svc.create_participant(ACTOR, name="P", type="publisher", roles=["GENERATOR"]).site_id
    with pytest.raises(Exception, match="MAPPER"):
        svc.create_key(ACTOR, site_id=site, name="k", roles=["MAPPER"])
    assert _actions(svc) == ["participant.create"]


def test_audit_filters_and_paging(svc: CredentialService) -> None:
    site = svc.create_participant(ACTOR, name="P", type="publisher", roles=["GENERATOR"]).site_id
    a = svc.create_key(ACTOR, site_id=site, name="a", roles=["GENERATOR"])
    svc.create_key(ACTOR, site_id=site, name="b", roles=["GENERATOR"])
    svc.disable_key(ACTOR, a.key_id)
    assert [e.action for e in svc.list_audit(ACTOR, target_id=a.key_id)] == [
        "key.create",
        "key.disable",
    ]
    assert len(svc.list_audit(ACTOR, action="key.create")) == 2
    assert [e.seq for e in svc.list_audit(ACTOR, since_seq=2, limit=1)] == [3]


def test_an_optout_event_can_be_found_by_its_target_id(
    svc: CredentialService, store: SqlStore
) -> None:
    """An opt-out's target id is the base64 of its first-level hash, which has a client secret's
    shape: a filter only compares it, so it is not refused as credential text."""
    flh = bytes(range(32))
    write_optouts(store, [OptOutRecord(flh, 1_700_000_000_000, b64encode(bytes(33)))], lambda: 1)
    target = b64encode(flh)
    assert len(target) == 44
    assert target.endswith("=")
    assert [e.action for e in svc.list_audit(ACTOR, target_id=target)] == ["optout.add"]


def test_issued_results_hide_their_secrets(svc: CredentialService) -> None:
    site = svc.create_participant(ACTOR, name="P", type="publisher", roles=["GENERATOR"]).site_id
    issued = svc.create_key(ACTOR, site_id=site, name="k", roles=["GENERATOR"])
    secret = svc.rotate_secret(ACTOR, issued.key_id)
    client = svc.resolve_client(issued.key)
    # The client holds the secrets as bytes: their repr and hex are what a leak would show.
    raw = [b64decode(issued.secret), b64decode(secret.secret)]
    assert set(client.secrets) == set(raw)
    for text in (repr(issued), str(issued), repr(secret), str(secret), repr(client), str(client)):
        assert issued.key not in text
        assert issued.secret not in text
        assert secret.secret not in text
        assert not any(repr(r)[2:-1] in text or r.hex() in text for r in raw)
    assert issued.to_json()["key"] == issued.key
    assert secret.to_json()["secret"] == secret.secret
    assert "secret" not in issued.key_view.to_json()


def test_usage_shows_in_key_views(
    svc: CredentialService, store: SqlStore, clock: FixedClock
) -> None:
    site = svc.create_participant(ACTOR, name="P", type="publisher", roles=["GENERATOR"]).site_id
    issued = svc.create_key(ACTOR, site_id=site, name="k", roles=["GENERATOR"])
    store.record_usage([(issued.key_id, "/v2/token/generate", 3, clock.now_ms() + 5)])
    view = svc.get_key(ACTOR, issued.key_id)
    assert (view.usage, view.last_used_at_ms) == ({"/v2/token/generate": 3}, clock.now_ms() + 5)
    assert svc.key_page(ACTOR).items[0].usage == {"/v2/token/generate": 3}
    assert svc.key_page(ACTOR, site_id=site).items[0].usage == {"/v2/token/generate": 3}


def test_the_lookup_refuses_wrong_tails_unknown_ids_and_bad_shapes(
    svc: CredentialService,
) -> None:
    site = svc.create_participant(ACTOR, name="P", type="publisher", roles=["GENERATOR"]).site_id
    issued = svc.create_key(ACTOR, site_id=site, name="k", roles=["GENERATOR"])
    body = f"{issued.key_id}.{'B' * 33}"
    unknown = mint_api_key(Environment.LOCAL, site, KEYRING.pepper, lambda n: b"\x07" * n)
    for text in (body + checksum(body), unknown.text):
        with pytest.raises(CredentialRejected, match=r"^The API key is not valid$"):
            svc.resolve_client(text)
    for text in (issued.key[:-1], issued.key_id, "", issued.key + "x"):
        with pytest.raises(MalformedCredential):
            svc.resolve_client(text)


def test_key_ids_are_redrawn_on_a_clash(store: SqlStore, clock: FixedClock) -> None:
    svc = CredentialService(store, KEYRING, Environment.LOCAL, clock, lambda n: b"\x02" * n)
    site = svc.create_participant(ACTOR, name="P", type="publisher", roles=["GENERATOR"]).site_id
    svc.create_key(ACTOR, site_id=site, name="k", roles=["GENERATOR"])
    with pytest.raises(Exception, match="unused key id"):
        svc.create_key(ACTOR, site_id=site, name="k", roles=["GENERATOR"])
    assert len(svc.key_page(ACTOR).items) == 1


def test_a_key_without_a_live_secret_is_refused(
    svc: CredentialService, store: SqlStore, clock: FixedClock
) -> None:
    site = svc.create_participant(ACTOR, name="P", type="publisher", roles=["GENERATOR"]).site_id
    issued = svc.create_key(ACTOR, site_id=site, name="k", roles=["GENERATOR"])
    with store.transaction() as tx:
        for secret in tx.secrets.list_for_key(issued.key_id):
            tx.secrets.update(replace(secret, retires_at_ms=clock.now_ms()))
    with pytest.raises(CredentialRejected, match="no live client secret"):
        svc.resolve_client(issued.key)


def test_verify_reports_an_edited_event(svc: CredentialService, db_path: Path) -> None:
    svc.create_participant(ACTOR, name="P", type="publisher")
    svc.create_participant(ACTOR, name="Q", type="publisher")
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("UPDATE audit_events SET actor = 'someone else' WHERE seq = 1")
    verdict = svc.verify_audit(ACTOR)
    assert (verdict.ok, verdict.first_bad_seq, verdict.checked) == (False, 1, 0)
    assert verdict.reason is not None


def test_admin_token_views_are_json_ready(admin: AdminService) -> None:
    issued = admin.create_admin_token(ACTOR, name="ops", roles=["READ_ONLY"])
    (view,) = admin.list_admin_tokens(ACTOR)
    assert view.to_json() == {
        "token_id": issued.token_id,
        "name": "ops",
        "roles": ["READ_ONLY"],
        "created_at_ms": view.created_at_ms,
        "created_by": ACTOR.id,
        "revoked_at_ms": None,
    }


def test_a_participant_type_may_be_the_enum(svc: CredentialService) -> None:
    view = svc.create_participant(ACTOR, name="P", type=ParticipantType.DATA_PROVIDER)
    assert view.type == "data_provider"


def test_verify_reports_a_rewritten_last_event(
    svc: CredentialService, store: SqlStore, db_path: Path
) -> None:
    """A last event rewritten with a recomputed hash is a consistent chain by itself: only the
    head recorded with the original append gives it away."""
    svc.create_participant(ACTOR, name="P", type="publisher")
    svc.create_participant(ACTOR, name="Q", type="publisher")
    intact = svc.verify_audit(ACTOR)
    with store.read() as rx:
        last = rx.audit.last()
    assert last is not None
    assert (intact.ok, intact.head_seq, intact.head_hash) == (True, 2, last.hash.hex())
    forged = replace(last, actor="cli:mallory")
    forged_hash = event_hash(forged.prev_hash, forged.seq, forged)
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute(
            "UPDATE audit_events SET actor = ?, hash = ? WHERE seq = ?",
            (forged.actor, forged_hash, forged.seq),
        )
    verdict = svc.verify_audit(ACTOR)
    assert (verdict.ok, verdict.first_bad_seq, verdict.checked) == (False, 2, 1)
    assert verdict.reason == "the last event's hash does not match the recorded head"
    assert verdict.head_seq == 1


def test_verify_reports_a_chain_without_its_recorded_head(
    svc: CredentialService, db_path: Path
) -> None:
    svc.create_participant(ACTOR, name="P", type="publisher")
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("DELETE FROM store_meta WHERE name LIKE 'audit_head_%'")
    verdict = svc.verify_audit(ACTOR)
    assert (verdict.ok, verdict.first_bad_seq) == (False, 1)
    assert verdict.reason is not None
    assert verdict.reason.startswith("no chain head is recorded, yet the chain reaches seq 1")
    assert "run `uid2-operator db upgrade`" in verdict.reason  # what records it, links intact
