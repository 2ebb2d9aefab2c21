"""Keys long past their expiry are purged by the rotation schedule, and nothing still needs them.

One world on a real SQLite file: the clock moves forward 100 days through repeated
``rotate_keys`` runs, with a snapshot reloaded (incrementally, and from nothing) after each.
Tokens sealed with the first keys one second before those keys expire must still decrypt and
refresh until their own expiry; the keys go, with an audit event each, exactly the retention
after their expiry, and the snapshot, the key endpoints and the audit trail then show it.
"""

from __future__ import annotations

import base64
import os
from dataclasses import replace

import pytest
from service_fixtures import ACTOR, KEYRING, load_local_snapshot

from uid2_operator.clock import FixedClock
from uid2_operator.domain.audit import verify_chain
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.keysets import DAY_S, HOUR_S, site_default_keyset
from uid2_operator.domain.participants import ParticipantType, new_participant
from uid2_operator.domain.roles import ClientRole
from uid2_operator.errors import InvalidInput, RefreshKeyUnknown, UnknownTokenKey
from uid2_operator.serve_settings import ServeSettings
from uid2_operator.services import data_plane
from uid2_operator.services.data_plane import Caller
from uid2_operator.services.material import MaterialConfig, MaterialService
from uid2_operator.services.snapshot import Snapshot
from uid2_operator.services.snapshot_loader import Loaded
from uid2_operator.storage import SqlStore
from uid2_operator.wire.keys import (
    FALLBACK_PUBLISHER_KEYSET_ID,
    MASTER_KEYSET_ID,
    REFRESH_KEYSET_ID,
    EncryptionKey,
)
from uid2_operator.wire.refresh import issue_identity
from uid2_operator.wire.scope import IdentityScope, IdentityType
from uid2_operator.wire.tokens import (
    AdvertisingToken,
    decode_advertising_token,
    encode_advertising_token,
)

PUBLISHER, RETIRED, DSP = 1001, 1002, 1003
SETTINGS = ServeSettings.from_env({})
LIFETIMES = SETTINGS.token_lifetimes(Environment.PROD)  # what load_local_snapshot serves with
RETENTION_S = SETTINGS.key_retention_s(Environment.PROD)
STEP_MS = 12 * HOUR_S * 1000
WORLD_MS = 100 * DAY_S * 1000
PUBLISHER_CALLER = Caller("UID2-C-L-1001-pub", PUBLISHER, frozenset({ClientRole.SHARER}))
DSP_CALLER = Caller("UID2-C-L-1003-dsp", DSP, frozenset({ClientRole.ID_READER}))


def _config(retention_s: int | None) -> MaterialConfig:
    return MaterialConfig(bucket_count=64, chunk_size=64, expired_key_retention_s=retention_s)


def _add_participant(store: SqlStore, site_id: int, kind: ParticipantType, now_ms: int) -> None:
    roles = {ClientRole.GENERATOR, ClientRole.SHARER, ClientRole.ID_READER}
    with store.transaction() as tx:
        tx.participants.add(
            new_participant(
                site_id=site_id,
                name=f"Site {site_id}",
                type=kind,
                allowed_roles=frozenset(roles),
                contacts=[],
                now_ms=now_ms,
            )
        )


@pytest.fixture
def material(store: SqlStore, clock: FixedClock) -> MaterialService:
    """Material for a publisher, a DSP, and a participant whose keyset an administrator
    disabled (its keys are no longer rotated, but still purged)."""
    for site_id, kind in (
        (PUBLISHER, ParticipantType.PUBLISHER),
        (RETIRED, ParticipantType.PUBLISHER),
        (DSP, ParticipantType.DSP),
    ):
        _add_participant(store, site_id, kind, clock.now_ms())
    service = MaterialService(store, KEYRING, _config(RETENTION_S), clock, os.urandom)
    service.initialise(ACTOR)
    with store.transaction() as tx:
        retired = site_default_keyset(tx.keysets.list_all(), RETIRED)
        assert retired is not None
        tx.keysets.update(replace(retired, enabled=False))
    return service


def _keyset_of(snapshot: Snapshot, site_id: int) -> int:
    return snapshot.default_keysets[site_id]


def _published_ids(snapshot: Snapshot, caller: Caller) -> set[int]:
    sharing = data_plane.key_sharing(snapshot, caller).body["keys"]
    bidstream = data_plane.key_bidstream(snapshot, caller).body["keys"]
    latest = data_plane.key_latest(snapshot, caller).body
    return {k["id"] for k in sharing} | {k["id"] for k in bidstream} | {k["id"] for k in latest}


class Tokens:
    """Tokens sealed with the first keys one second before those keys expire."""

    def __init__(self, master: EncryptionKey, site: EncryptionKey, refresh: EncryptionKey) -> None:
        self.issued_ms = master.expires * 1000 - 1000
        assert site.expires == refresh.expires == master.expires
        self.keys = (master, site, refresh)
        body = issue_identity(
            now_ms=self.issued_ms,
            identity_lifetime_s=LIFETIMES.identity_token_s,
            refresh_lifetime_s=LIFETIMES.refresh_token_s,
            refresh_after_s=LIFETIMES.refresh_identity_after_s,
            master_key=master,
            site_key=site,
            refresh_key=refresh,
            site_id=PUBLISHER,
            privacy_bits=1,
            established_ms=self.issued_ms,
            raw_uid=bytes(range(32)),
            first_level_hash=bytes(range(32, 64)),
            scope=IdentityScope.UID2,
            identity_type=IdentityType.EMAIL,
            random=os.urandom,
        )
        self.advertising = body["advertising_token"]
        self.advertising_expires_ms = body["identity_expires"]
        self.refresh = body["refresh_token"]
        self.refresh_expires_ms = body["refresh_expires"]
        # What an SDK seals as the publisher for a sharing recipient: master and site layer.
        self.sharing_expires_ms = self.issued_ms + LIFETIMES.sharing_token_expiry_s * 1000
        self.sharing = encode_advertising_token(
            AdvertisingToken(
                scope=IdentityScope.UID2,
                identity_type=IdentityType.EMAIL,
                master_key_id=master.id,
                site_key_id=site.id,
                expires_ms=self.sharing_expires_ms,
                created_ms=self.issued_ms,
                site_id=PUBLISHER,
                privacy_bits=1,
                established_ms=self.issued_ms,
                refreshed_ms=self.issued_ms,
                raw_uid=bytes(range(32)),
            ),
            master_key=master,
            site_key=site,
            random=os.urandom,
        )

    def check_points(self) -> dict[int, list[str]]:
        """The last millisecond each token is valid at, and when its keys may first go (in prod
        refresh and sharing tokens both live 30 days: one instant, two checks)."""
        gone_ms = (self.keys[0].expires + RETENTION_S) * 1000
        points: dict[int, list[str]] = {}
        for instant, name in (
            (self.advertising_expires_ms - 1, "advertising"),
            (self.refresh_expires_ms - 1, "refresh"),
            (self.sharing_expires_ms - 1, "sharing"),
            (gone_ms - 1, "kept"),
            (gone_ms, "purged"),
        ):
            points.setdefault(instant, []).append(name)
        return points

    def decode(self, snapshot: Snapshot, text: str) -> AdvertisingToken:
        return decode_advertising_token(
            text,
            master_key=snapshot.lookup_in(MASTER_KEYSET_ID),
            site_key=snapshot.site_key_lookup,
        )

    def check_usable(self, snapshot: Snapshot, now_ms: int, which: str) -> None:
        master, site, _ = self.keys
        if which == "advertising":
            assert self.decode(snapshot, self.advertising).site_id == PUBLISHER
        elif which == "refresh":
            assert now_ms < self.refresh_expires_ms
            refreshed = data_plane.refresh(
                snapshot,
                self.refresh.encode(),
                authenticated=True,
                now_ms=now_ms,
                random=os.urandom,
            )
            assert refreshed.reply.status == "success"
        elif which == "sharing":
            assert self.decode(snapshot, self.sharing).expires_ms == self.sharing_expires_ms
            assert {master.id, site.id} <= _published_ids(snapshot, DSP_CALLER)
            assert {master.id, site.id} <= _published_ids(snapshot, PUBLISHER_CALLER)


def test_a_hundred_days_of_rotation_keep_only_what_tokens_can_still_need(
    store: SqlStore, material: MaterialService, clock: FixedClock
) -> None:
    start_ms = clock.now_ms()
    loaded: Loaded = load_local_snapshot(store, material, clock)
    first = loaded.snapshot
    publisher_keyset = _keyset_of(first, PUBLISHER)
    retired_keyset = next(k.keyset_id for k in first.keysets.values() if k.site_id == RETIRED)
    tokens = Tokens(
        first.master_key(start_ms),
        first.site_key(PUBLISHER, start_ms),
        first.refresh_key(start_ms),
    )
    special = tokens.check_points()
    instants = sorted({*range(start_ms + STEP_MS, start_ms + WORLD_MS + 1, STEP_MS), *special})
    secrets = {key.id: key.secret for key in first.keys_by_id.values()}
    expiries = {key.id: key.expires for key in first.keys_by_id.values()}
    purged_ids: set[int] = set()
    created_ids: list[int] = sorted(secrets)
    checked: set[str] = set()
    for instant in instants:
        clock.at_ms = instant
        before = loaded.snapshot.keys_by_id
        result = material.rotate_keys(actor=ACTOR)
        loaded = load_local_snapshot(store, material, clock, loaded)
        snapshot = loaded.snapshot
        fresh = load_local_snapshot(store, material, clock).snapshot
        assert set(snapshot.keys_by_id) == set(fresh.keys_by_id)
        secrets.update({key.id: key.secret for key in snapshot.keys_by_id.values()})
        expiries.update({key.id: key.expires for key in snapshot.keys_by_id.values()})

        # Created ids keep growing (never one that was used, purged or not).
        new_ids = [info.key_id for info in result.created]
        assert all(key_id > max(created_ids) for key_id in new_ids)
        created_ids += new_ids

        # What went was stored, had been expired for the retention, and is gone everywhere.
        for info in result.purged:
            assert info.key_id in before
            assert info.key_id not in purged_ids
            assert (info.expires + RETENTION_S) * 1000 <= instant
            assert info.key_id not in snapshot.keys_by_id
        purged_ids |= {info.key_id for info in result.purged}
        for caller in (PUBLISHER_CALLER, DSP_CALLER):
            assert not _published_ids(snapshot, caller) & purged_ids

        # What stays is within the retention, and every enabled keyset has its active key.
        assert all((k.expires + RETENTION_S) * 1000 > instant for k in snapshot.keys_by_id.values())
        assert snapshot.master_key(instant).keyset_id == MASTER_KEYSET_ID
        assert snapshot.refresh_key(instant).keyset_id == REFRESH_KEYSET_ID
        assert snapshot.site_key(PUBLISHER, instant).keyset_id == publisher_keyset
        assert snapshot.active_key(FALLBACK_PUBLISHER_KEYSET_ID, instant)

        for which in special.get(instant, []):
            checked.add(which)
            if which in ("advertising", "refresh", "sharing"):
                tokens.check_usable(snapshot, instant, which)
            elif which == "kept":
                assert all(key.id in snapshot.keys_by_id for key in tokens.keys)
                assert result.purged == ()
            else:
                assert {key.id for key in tokens.keys} <= {info.key_id for info in result.purged}
                with pytest.raises(UnknownTokenKey):
                    tokens.decode(snapshot, tokens.advertising)
                with pytest.raises(UnknownTokenKey):
                    tokens.decode(snapshot, tokens.sharing)
                with pytest.raises(RefreshKeyUnknown):
                    data_plane.refresh(
                        snapshot,
                        tokens.refresh.encode(),
                        authenticated=True,
                        now_ms=instant,
                        random=os.urandom,
                    )
    assert checked == {"advertising", "refresh", "sharing", "kept", "purged"}

    # At the end: each keyset holds exactly the keys within the retention, no more.
    end_ms = clock.now_ms()
    with store.read() as rx:
        stored = rx.encryption_keys.list_all()
        events = rx.audit.list_events()
        head = rx.audit.head()
    assert sorted(expiries) == created_ids
    assert purged_ids == {i for i, exp in expiries.items() if (exp + RETENTION_S) * 1000 <= end_ms}
    assert {k.id for k in stored} == set(created_ids) - purged_ids
    by_keyset: dict[int, list[int]] = {}
    for key in stored:
        by_keyset.setdefault(key.keyset_id, []).append(key.id)
    # A key every 23 days made five per enabled keyset; the two that expired by day 69 went.
    enabled = set(first.default_keysets.values()) | {MASTER_KEYSET_ID, REFRESH_KEYSET_ID}
    assert {keyset_id: len(ids) for keyset_id, ids in by_keyset.items()} == dict.fromkeys(
        enabled, 3
    )
    assert retired_keyset not in by_keyset  # disabled: its one key went like any other
    assert len(purged_ids) == 2 * len(enabled) + 1

    # One audit event per purged key, with its times and never its secret.
    deletes = [e for e in events if e.action == "encryption_key.delete"]
    assert sorted(e.before["key_id"] for e in deletes if e.before) == sorted(purged_ids)
    retired_event = next(e for e in deletes if e.target_id == str(retired_keyset))
    assert retired_event.site_id == RETIRED
    assert retired_event.actor == ACTOR.id
    assert retired_event.after is None
    assert retired_event.before is not None
    assert set(retired_event.before) == {
        "key_id",
        "keyset_id",
        "site_id",
        "created",
        "activates",
        "expires",
    }
    shown = "".join(repr(e) for e in events)
    for key_id in purged_ids:
        secret = secrets[key_id]
        for form in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)):
            assert form not in shown
    assert verify_chain(events, recorded_head=head).ok


def test_without_a_retention_every_key_is_kept(store: SqlStore, clock: FixedClock) -> None:
    service = MaterialService(store, KEYRING, _config(None), clock, os.urandom)
    service.initialise(ACTOR)
    for _ in range(20):
        clock.advance(5 * DAY_S * 1000)
        assert service.rotate_keys(actor=ACTOR).purged == ()
    with store.read() as rx:
        assert len(rx.encryption_keys.list_all()) == 3 * 5
        assert not [e for e in rx.audit.list_events() if e.action == "encryption_key.delete"]


def test_successors_are_created_before_old_keys_go_in_one_commit(
    store: SqlStore, clock: FixedClock
) -> None:
    """A store left alone for longer than the retention: one run makes each keyset a key active
    now and deletes every old one, in one unit of work (one change of the sequence)."""
    service = MaterialService(store, KEYRING, _config(RETENTION_S), clock, os.urandom)
    service.initialise(ACTOR)
    with store.read() as rx:
        old = {k.id for k in rx.encryption_keys.list_all()}
    clock.advance((30 * DAY_S + RETENTION_S) * 1000)
    seq = store.change_seq()
    result = service.rotate_keys(actor=ACTOR)
    assert store.change_seq() == seq + 1
    assert {info.key_id for info in result.purged} == old
    assert len(result.created) == 3
    assert all(info.activates * 1000 == clock.now_ms() for info in result.created)
    assert [info.key_id for info in result.purged] == sorted(old)
    body = result.to_json()
    assert [k["key_id"] for k in body["purged"]] == sorted(old)
    assert set(body) == {"at_ms", "created", "keysets_created", "purged", "retention_s"}
    assert body["retention_s"] == RETENTION_S
    with store.read() as rx:
        actions = [e.action for e in rx.audit.list_events()][-6:]
    assert actions == ["encryption_key.create"] * 3 + ["encryption_key.delete"] * 3


@pytest.mark.parametrize("retention", [-1, True, 2.5])
def test_a_material_config_refuses_a_bad_retention(retention: object) -> None:
    with pytest.raises(InvalidInput, match="retention"):
        _config(retention)  # type: ignore[arg-type]
