"""Material use cases over a migrated SQLite store: initialise, rotate, opt out, load."""

from __future__ import annotations

import base64
import os
from dataclasses import replace
from pathlib import Path

import pytest
from service_fixtures import ACTOR, KEYRING
from sqlalchemy import delete

from uid2_operator.bootstrap import material_config
from uid2_operator.clock import FixedClock
from uid2_operator.domain.audit import verify_chain
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.keysets import (
    DAY_S,
    HOUR_S,
    KeyPolicy,
    SharingMode,
    reserved_keysets,
    site_default_keyset,
)
from uid2_operator.domain.participants import ParticipantType, new_participant
from uid2_operator.domain.roles import ClientRole
from uid2_operator.domain.salts import (
    LOCAL_BUCKET_COUNT,
    generate_salt_table,
    rotation_effective_at,
)
from uid2_operator.domain.sealing import Keyring
from uid2_operator.errors import InvalidInput, NotFound, SealedSecretUnreadable
from uid2_operator.services.material import (
    Material,
    MaterialConfig,
    MaterialService,
)
from uid2_operator.settings import Settings
from uid2_operator.storage import SqlStore, schema
from uid2_operator.wire.identity import InputKind, hash_identity
from uid2_operator.wire.keys import (
    FALLBACK_PUBLISHER_KEYSET_ID,
    MASTER_KEYSET_ID,
    REFRESH_KEYSET_ID,
    active_key,
)
from uid2_operator.wire.raw_uid import DAY_MS, PRODUCTION_BUCKET_COUNT, raw_uid_v2, raw_uid_v3
from uid2_operator.wire.scope import IdentityScope, IdentityType

BUCKETS = 256
CONFIG = MaterialConfig(bucket_count=BUCKETS, chunk_size=64)


@pytest.fixture
def material(store: SqlStore, clock: FixedClock) -> MaterialService:
    return MaterialService(store, KEYRING, CONFIG, clock, os.urandom)


def add_participant(store: SqlStore, site_id: int) -> None:
    with store.transaction() as tx:
        tx.participants.add(
            new_participant(
                site_id=site_id,
                name=f"Site {site_id}",
                type=ParticipantType.PUBLISHER,
                allowed_roles=frozenset({ClientRole.GENERATOR}),
                contacts=[],
                now_ms=1,
            )
        )


def actions(store: SqlStore) -> list[str]:
    with store.read() as rx:
        return [e.action for e in rx.audit.list_events()]


# ------------------------------------------------------------------------------ initialise


def test_initialise_creates_the_reserved_keysets_keys_and_salts(
    material: MaterialService, store: SqlStore, clock: FixedClock
) -> None:
    result = material.initialise(ACTOR)
    assert result.changed
    assert result.salts_created
    assert result.bucket_count == BUCKETS
    assert [k.keyset_id for k in result.keysets_created] == [-1, -2, 2]
    assert [k.key_id for k in result.keys_created] == [1, 2, 3]
    assert store.change_seq() == 1

    loaded = material.load_material()
    assert loaded.change_seq == 1
    assert loaded.salts.bucket_count == BUCKETS
    for keyset_id in (MASTER_KEYSET_ID, REFRESH_KEYSET_ID, FALLBACK_PUBLISHER_KEYSET_ID):
        assert active_key(loaded.keys, clock.now_ms(), keyset_id=keyset_id).keyset_id == keyset_id
    assert actions(store).count("encryption_key.create") == 3
    assert actions(store).count("keyset.create") == 3
    assert "salts.create" in actions(store)
    assert result.to_json()["keys_created"][0]["key_id"] == 1


def test_initialise_is_idempotent(material: MaterialService, store: SqlStore) -> None:
    add_participant(store, 1001)
    material.initialise()
    seq = store.change_seq()
    events = actions(store)
    again = material.initialise()
    assert not again.changed
    assert again.to_json()["keysets_created"] == []
    assert again.bucket_count == BUCKETS
    assert store.change_seq() == seq
    assert actions(store) == events


def test_initialise_gives_existing_participants_a_default_keyset(
    material: MaterialService, store: SqlStore, clock: FixedClock
) -> None:
    add_participant(store, 1001)
    add_participant(store, 1002)
    result = material.initialise()
    site_keysets = [k for k in result.keysets_created if k.site_id > 2]
    assert [(k.keyset_id, k.site_id) for k in site_keysets] == [(4, 1001), (5, 1002)]
    assert all(k.sharing is SharingMode.BIDDERS for k in site_keysets)
    loaded = material.load_material()
    assert active_key(loaded.keys, clock.now_ms(), keyset_id=5).keyset_id == 5


def test_ensure_site_keyset_creates_one_usable_keyset_once(
    material: MaterialService, store: SqlStore, clock: FixedClock
) -> None:
    material.initialise()
    add_participant(store, 1001)
    keyset = material.ensure_site_keyset(1001, ACTOR)
    assert (keyset.keyset_id, keyset.site_id, keyset.is_default) == (4, 1001, True)
    seq = store.change_seq()
    assert material.ensure_site_keyset(1001) == keyset
    assert store.change_seq() == seq
    loaded = material.load_material()
    assert active_key(loaded.keys, clock.now_ms(), keyset_id=4).id == 4


@pytest.mark.parametrize("site_id", [True, "1001", None])
def test_ensure_site_keyset_checks_its_argument(material: MaterialService, site_id: object) -> None:
    with pytest.raises(InvalidInput, match="site_id"):
        material.ensure_site_keyset(site_id)  # type: ignore[arg-type]


def test_ensure_site_keyset_needs_a_participant(material: MaterialService) -> None:
    with pytest.raises(NotFound, match="1001"):
        material.ensure_site_keyset(1001)


# ------------------------------------------------------------------------------ keys


def test_rotate_keys_needs_initialised_material(material: MaterialService) -> None:
    with pytest.raises(NotFound, match="run uid2-operator init first"):
        material.rotate_keys()


def test_rotate_keys_follows_the_schedule(
    material: MaterialService, store: SqlStore, clock: FixedClock
) -> None:
    material.initialise()
    seq = store.change_seq()
    assert material.rotate_keys().created == ()
    assert store.change_seq() == seq

    clock.advance(24 * DAY_S * 1000)
    result = material.rotate_keys(actor=ACTOR)
    now_s = clock.now_ms() // 1000
    assert [k.key_id for k in result.created] == [4, 5, 6]
    assert all(k.activates == now_s + HOUR_S for k in result.created)
    assert store.change_seq() == seq + 1
    assert result.to_json()["created"][0]["activates"] == now_s + HOUR_S

    loaded = material.load_material()
    assert active_key(loaded.keys, clock.now_ms(), keyset_id=-1).id == 2  # still the old one
    assert active_key(loaded.keys, (now_s + HOUR_S) * 1000, keyset_id=-1).id == 5


def test_rotate_keys_gives_a_new_participant_its_keyset_in_the_same_commit(
    material: MaterialService, store: SqlStore
) -> None:
    material.initialise()
    add_participant(store, 1001)
    seq = store.change_seq()
    result = material.rotate_keys(actor=ACTOR)
    assert store.change_seq() == seq + 1
    [keyset] = result.keysets_created
    assert keyset.site_id == 1001
    assert [k.keyset_id for k in result.created] == [keyset.keyset_id]
    assert result.to_json()["keysets_created"][0]["site_id"] == 1001
    assert material.rotate_keys().keysets_created == ()


def test_rotate_keys_at_a_given_time(material: MaterialService) -> None:
    material.initialise()
    future = material.rotate_keys(now_ms=FixedClock().now_ms() + 29 * DAY_S * 1000)
    assert len(future.created) == 3


def test_a_short_policy_rotates_often(store: SqlStore, clock: FixedClock) -> None:
    policy = KeyPolicy(lifetime_s=DAY_S, activation_lead_s=60, renew_before_s=HOUR_S)
    service = MaterialService(
        store, KEYRING, MaterialConfig(bucket_count=16, key_policy=policy), clock, os.urandom
    )
    service.initialise()
    ids: list[int] = []
    for _ in range(30):
        clock.advance(HOUR_S * 1000 - 60_000)
        ids += [k.key_id for k in service.rotate_keys().created]
        loaded = service.load_material()
        for keyset_id in (-1, -2, 2):
            active_key(loaded.keys, clock.now_ms(), keyset_id=keyset_id)
    assert ids == sorted(set(ids))
    assert ids[0] == 4


# ------------------------------------------------------------------------------ salts


def test_rotate_salts_needs_initialised_material(material: MaterialService) -> None:
    with pytest.raises(NotFound, match="run uid2-operator init first"):
        material.rotate_salts(0.1)


@pytest.mark.parametrize("fraction", [True, "0.1", None, 0, 1.5, -1])
def test_rotate_salts_checks_the_fraction(material: MaterialService, fraction: object) -> None:
    with pytest.raises(InvalidInput, match="fraction"):
        material.rotate_salts(fraction)


def test_rotate_salts_rotates_a_share_and_keeps_previous_salts(
    material: MaterialService, store: SqlStore, clock: FixedClock
) -> None:
    material.initialise()
    before = material.load_material()
    clock.advance(1000)
    now = clock.now_ms()
    result = material.rotate_salts(0.25, ACTOR)
    assert (result.rotated, result.bucket_count, result.version) == (64, BUCKETS, 2)
    assert result.chunks_rewritten <= 4
    effective = rotation_effective_at(now)
    assert result.effective_at_ms == effective
    assert result.to_json()["fraction"] == 0.25
    assert result.to_json()["effective_at_ms"] == effective
    after = material.load_material(before)
    assert after.salts is not before.salts
    # The new salts take effect at a midnight more than an hour away, not when the rotation runs.
    assert all(after.salts.salt(i, now) == before.salts.salt(i, now) for i in range(BUCKETS))
    changed = [
        i for i in range(BUCKETS) if after.salts.salt(i, effective) != before.salts.salt(i, now)
    ]
    assert len(changed) == 64
    for i in changed:
        assert after.salts.previous_salt(i, effective) == before.salts.salt(i, now)
        assert after.salts.bucket(i, effective).last_updated_ms == effective
    assert after.salts.first_level_salt == before.salts.first_level_salt
    assert after.salts.id_secret == before.salts.id_secret
    assert actions(store)[-1] == "salts.rotate"


def test_a_small_rotation_rewrites_only_the_chunks_it_touched(
    material: MaterialService, store: SqlStore, clock: FixedClock
) -> None:
    material.initialise()

    def chunks() -> dict[int, bytes]:
        with store.read() as rx:
            return {chunk.number: chunk.salts.ciphertext for chunk in rx.salts.iter_chunks()}

    before = chunks()
    assert len(before) == BUCKETS // CONFIG.chunk_size > 1
    clock.advance(1000)
    result = material.rotate_salts(1 / BUCKETS, ACTOR)
    assert result.rotated == 1
    after = chunks()
    rewritten = [number for number in before if after[number] != before[number]]
    assert len(rewritten) == result.chunks_rewritten == 1


def test_rotate_salts_just_before_midnight_takes_effect_at_the_midnight_after(
    material: MaterialService, clock: FixedClock
) -> None:
    material.initialise()
    before = material.load_material()
    midnight = (clock.now_ms() // DAY_MS + 1) * DAY_MS
    clock.at_ms = midnight - 2000  # 23:59:58: the table could reach workers after midnight
    result = material.rotate_salts(1.0)
    assert result.rotated == BUCKETS
    assert result.effective_at_ms == result.to_json()["effective_at_ms"] == midnight + DAY_MS
    after = material.load_material(before).salts
    old = before.salts
    for now in (midnight - 2000, midnight, midnight + 60_000, midnight + DAY_MS - 1):
        assert all(after.salt(i, now) == old.salt(i, now) for i in range(BUCKETS)), now
        assert all(after.previous_salt(i, now) is None for i in range(BUCKETS)), now
        assert list(after.updated_since(midnight - 2000, now)) == [], now
    effective = midnight + DAY_MS
    assert all(after.salt(i, effective) != old.salt(i, effective) for i in range(BUCKETS))
    assert {i for i, _ in after.updated_since(midnight - 2000, effective)} == set(range(BUCKETS))


def test_a_second_rotation_the_same_day_changes_nothing(
    material: MaterialService, store: SqlStore
) -> None:
    material.initialise()
    material.rotate_salts(1.0)
    seq = store.change_seq()
    again = material.rotate_salts(1.0)
    assert (again.rotated, again.version, again.chunks_rewritten) == (0, 2, 0)
    assert again.effective_at_ms is None
    assert store.change_seq() == seq


def test_salts_keep_the_size_they_were_created_with(store: SqlStore, clock: FixedClock) -> None:
    MaterialService(store, KEYRING, CONFIG, clock, os.urandom).initialise()
    bigger = MaterialService(
        store, KEYRING, MaterialConfig(bucket_count=512, chunk_size=128), clock, os.urandom
    )
    with pytest.raises(InvalidInput, match="fixed once the table exists: set it back to 256"):
        bigger.initialise()
    bigger.rotate_salts(0.5)
    assert bigger.load_material().salts.bucket_count == BUCKETS


# ------------------------------------------------------------------------------ opt-outs


def test_add_optout_needs_initialised_material(material: MaterialService) -> None:
    with pytest.raises(NotFound, match="run uid2-operator init first"):
        material.add_optout("email", "someone@example.com")


def test_add_optout_records_the_flh_time_and_current_raw_uid(
    material: MaterialService, store: SqlStore, clock: FixedClock
) -> None:
    material.initialise()
    result = material.add_optout("email", "Some.One@example.com", ACTOR)
    assert (result.identity_type, result.timestamp_ms, result.already_opted_out) == (
        "email",
        clock.now_ms(),
        False,
    )
    loaded = material.load_material()
    salts = loaded.salts
    flh = salts.first_level_hash(hash_identity("some.one@example.com"))
    [record] = loaded.optouts
    assert record.first_level_hash == flh
    expected = raw_uid_v2(flh, salts.salt(salts.index_of(flh), clock.now_ms()))
    assert result.advertising_id == record.advertising_id == base64.b64encode(expected).decode()
    assert result.to_json()["advertising_id"] == result.advertising_id
    assert actions(store)[-1] == "optout.add"
    with store.read() as rx:
        event = rx.audit.last()
    assert event is not None
    assert "some.one" not in str(event).lower()


def test_a_repeated_optout_moves_its_time_forward(
    material: MaterialService, clock: FixedClock
) -> None:
    material.initialise()
    material.add_optout(InputKind.PHONE, "+12025550123")
    clock.advance(5000)
    again = material.add_optout("phone", "+12025550123")
    assert again.already_opted_out
    assert again.timestamp_ms == clock.now_ms()
    assert [r.timestamp_ms for r in material.load_material().optouts] == [clock.now_ms()]


@pytest.mark.parametrize(
    ("kind", "value", "state"),
    [
        ("email", "validate@example.com", "never opted out"),
        ("phone", "+12345678901", "never opted out"),
        ("email", " OptOut@Example.com", "always opted out"),  # normalised as requests are
        ("phone", "+00000000000", "always opted out"),
        ("email", "refresh-optout@example.com", "opted out at refresh only"),
        ("phone_hash", hash_identity("+00000000002").hex(), "opted out at refresh only"),
    ],
)
def test_an_optout_for_a_built_in_test_identity_is_refused_recording_nothing(
    material: MaterialService, store: SqlStore, kind: str, value: str, state: str
) -> None:
    material.initialise()
    before = actions(store)
    with pytest.raises(InvalidInput) as refused:
        material.add_optout(kind, value)
    assert refused.value.detail == (
        f"This {kind} is a built-in test identity, {state} whatever is recorded: an opt-out for "
        "it would change nothing"
    )
    assert value not in refused.value.detail
    assert len(material.load_material().optouts) == 0
    assert actions(store) == before


def test_optouts_by_hash_match_optouts_by_value(material: MaterialService) -> None:
    material.initialise()
    digest = hash_identity("+12025550123")
    material.add_optout("phone_hash", digest.hex())
    assert material.add_optout("phone", "+12025550123").already_opted_out
    email_hash = base64.b64encode(hash_identity("a@example.com")).decode()
    material.add_optout(InputKind.EMAIL_HASH, email_hash)
    assert material.add_optout("email", "A@example.com").already_opted_out


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        ("email", "secret-person-at-example.com", "Invalid email"),
        ("phone", "555-secret", "Invalid phone"),
        ("phone", 15550123, "Invalid phone"),
        ("fax", "+12025550123", "one of email"),
        (["email"], "a@example.com", "one of email"),
    ],
)
def test_add_optout_refuses_bad_input_without_echoing_it(
    material: MaterialService, kind: object, value: object, message: str
) -> None:
    material.initialise()
    with pytest.raises(InvalidInput, match=message) as caught:
        material.add_optout(kind, value)
    assert "secret" not in str(caught.value)


def test_optout_raw_uids_follow_the_identity_v3_setting(store: SqlStore, clock: FixedClock) -> None:
    config = MaterialConfig(bucket_count=16, identity_scope=IdentityScope.EUID, identity_v3=True)
    service = MaterialService(store, KEYRING, config, clock, os.urandom)
    service.initialise()
    result = service.add_optout("phone", "+12025550123")
    salts = service.load_material().salts
    flh = salts.first_level_hash(hash_identity("+12025550123"))
    expected = raw_uid_v3(
        flh, salts.salt(salts.index_of(flh), clock.now_ms()), IdentityScope.EUID, IdentityType.PHONE
    )
    assert result.advertising_id == base64.b64encode(expected).decode()


def test_an_optout_records_the_raw_uid_in_effect_while_a_rotation_is_pending(
    store: SqlStore, clock: FixedClock
) -> None:
    service = MaterialService(store, KEYRING, MaterialConfig(bucket_count=16), clock, os.urandom)
    service.initialise()
    flh = service.load_material().salts.first_level_hash(hash_identity("someone@example.com"))
    clock.advance(1000)
    rotated_at = clock.now_ms()
    before = service.add_optout("email", "someone@example.com").advertising_id
    assert service.rotate_salts(1.0).rotated == 16
    salts = service.load_material().salts
    index = salts.index_of(flh)
    clock.at_ms = rotation_effective_at(rotated_at) - 1
    assert service.add_optout("email", "someone@example.com").advertising_id == before
    clock.advance(1)  # the rotation's midnight: the new salt is in effect
    after = service.add_optout("email", "someone@example.com").advertising_id
    assert after != before
    assert after == base64.b64encode(raw_uid_v2(flh, salts.salt(index, clock.now_ms()))).decode()
    # one record, answering for both raw UIDs (/v2/optout/status), each from its first opt-out
    with store.read() as rx:
        record = rx.optouts.get(flh)
    assert record is not None
    assert record.advertising_id_times() == {before: rotated_at, after: clock.now_ms()}


# ------------------------------------------------------------------------------ loading


def test_load_material_needs_initialised_material(material: MaterialService) -> None:
    with pytest.raises(NotFound, match="run uid2-operator init first"):
        material.load_material()


def test_load_material_reuses_an_unchanged_salt_table(
    material: MaterialService, clock: FixedClock
) -> None:
    material.initialise()
    first = material.load_material()
    material.add_optout("email", "a@example.com")
    clock.advance(24 * DAY_S * 1000)
    material.rotate_keys()
    second = material.load_material(first)
    assert second.salts is first.salts
    assert second.builtins is first.builtins
    assert second.change_seq == first.change_seq + 2
    assert len(second.optouts) == 1
    assert len(second.keys) == 6
    fresh = material.load_material()
    assert fresh.salts is not first.salts
    assert fresh.builtins == first.builtins


def test_load_material_rereads_salts_of_a_reinitialised_store(material: MaterialService) -> None:
    material.initialise()
    first = material.load_material()
    # Same version number, other secrets: a restored or re-created store must be reloaded.
    stranger = generate_salt_table(first.salts.bucket_count, 0, os.urandom)
    other = Material(
        first.change_seq, first.keysets, first.keys, stranger, first.optouts, first.builtins
    )
    again = material.load_material(other)
    assert again.salts is not stranger
    assert again.salts.first_level_salt == first.salts.first_level_salt
    assert again.builtins == first.builtins


def test_initialise_completes_partly_created_material(
    material: MaterialService, store: SqlStore
) -> None:
    with store.transaction() as tx:
        tx.keysets.add(reserved_keysets(1)[0])
    result = material.initialise()
    assert [k.keyset_id for k in result.keysets_created] == [-2, 2]
    assert len(result.keys_created) == 3


def test_a_missing_salt_chunk_is_reported(material: MaterialService, store: SqlStore) -> None:
    material.initialise()
    with store.engine.begin() as conn:
        conn.execute(delete(schema.salt_chunks))
    with pytest.raises(NotFound, match="run uid2-operator init first"):
        material.add_optout("email", "a@example.com")


def test_material_opens_only_with_its_keyring(store: SqlStore, clock: FixedClock) -> None:
    MaterialService(store, KEYRING, CONFIG, clock, os.urandom).initialise()
    stranger = Keyring({1: bytes(32 * [7])}, 1, bytes(32 * [8]))
    with pytest.raises(SealedSecretUnreadable):
        MaterialService(store, stranger, CONFIG, clock, os.urandom).load_material()


def test_no_secret_reaches_the_database_file_or_a_repr(
    material: MaterialService, db_path: Path
) -> None:
    material.initialise()
    loaded = material.load_material()
    data = db_path.read_bytes() + Path(f"{db_path}-wal").read_bytes()
    secrets = [k.secret for k in loaded.keys] + [
        base64.b64decode(loaded.salts.salt(i, FixedClock().now_ms())) for i in range(0, BUCKETS, 17)
    ]
    texts = [loaded.salts.first_level_salt, loaded.salts.id_secret]
    assert all(secret not in data for secret in secrets)
    assert all(text.encode() not in data for text in texts)
    shown = repr(loaded)
    assert shown == str(loaded)
    assert "keys=3" in shown
    assert all(text not in shown for text in texts)
    assert all(repr(s)[2:-1] not in shown and s.hex() not in shown for s in secrets)


def test_environment_sizes(tmp_path: Path) -> None:
    local = Settings.from_env({}, data_dir=str(tmp_path))
    assert material_config(local).bucket_count == LOCAL_BUCKET_COUNT
    for environment in (Environment.INTEG, Environment.PROD):
        settings = Settings.from_env(
            {"UID2_IDENTITY_SCOPE": "euid"}, data_dir=str(tmp_path), environment=environment.value
        )
        config = material_config(settings)
        assert config.bucket_count == PRODUCTION_BUCKET_COUNT
        assert config.identity_scope is IdentityScope.EUID
    tuned = Settings.from_env({"UID2_SALT_BUCKETS": "4096"}, data_dir=str(tmp_path))
    assert material_config(tuned).bucket_count == 4096
    assert MaterialService(None, KEYRING, CONFIG, FixedClock(), os.urandom).config is CONFIG  # type: ignore[arg-type]


def test_only_the_rotation_commands_set_an_expired_key_retention(tmp_path: Path) -> None:
    settings = Settings.from_env({}, data_dir=str(tmp_path))
    assert material_config(settings).expired_key_retention_s is None  # every other command
    chosen = material_config(settings, expired_key_retention_s=40 * DAY_S)
    assert chosen.expired_key_retention_s == 40 * DAY_S
    assert chosen.bucket_count == material_config(settings).bucket_count


def test_the_bucket_count_is_fixed_once_the_salt_table_exists(
    material: MaterialService, store: SqlStore, clock: FixedClock
) -> None:
    material.initialise(ACTOR)
    other = MaterialService(
        store, KEYRING, replace(CONFIG, bucket_count=CONFIG.bucket_count * 2), clock, os.urandom
    )
    add_participant(store, 1001)  # something for a rerun to create, were it allowed
    with store.read() as rx:
        seq = rx.change_seq()
    with pytest.raises(InvalidInput, match=f"created with {CONFIG.bucket_count} buckets"):
        other.initialise(ACTOR)
    with store.read() as rx:
        assert rx.change_seq() == seq
        assert site_default_keyset(rx.keysets.list_all(), 1001) is None
        header = rx.salts.header()
    assert header is not None
    assert header.bucket_count == CONFIG.bucket_count
    assert material.initialise(ACTOR).bucket_count == CONFIG.bucket_count


def test_the_audit_chain_of_material_changes_verifies(
    material: MaterialService, store: SqlStore, clock: FixedClock
) -> None:
    add_participant(store, 1001)
    material.initialise(ACTOR)
    material.rotate_salts(0.5, ACTOR)
    material.add_optout("email", "a@example.com", ACTOR)
    clock.advance(25 * DAY_S * 1000)
    material.rotate_keys(actor=ACTOR)
    with store.read() as rx:
        events = rx.audit.list_events()
    assert verify_chain(events).ok
    assert {e.actor for e in events} == {ACTOR.id}
