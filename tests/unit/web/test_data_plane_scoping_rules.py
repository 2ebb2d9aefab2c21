"""Rules of the data plane that a token or caller could otherwise slip past, each against the
test world's snapshot, with a genuine request beside it that passes:

- the outer layer of an advertising token opens only with a master key, and its site layer with
  no master or refresh key (the reference takes any key id for either; a holder of a shared site
  key could then forge tokens);
- a refresh token of the other identity scope is refused, and one established before the
  oldest refreshable instant is answered as an opt-out, as the reference does;
- the key endpoints refuse a caller of a reserved site id (``operator-api.md``: site id > 2).
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from operator_harness import build_world_snapshot

from uid2_operator.clock import FixedClock
from uid2_operator.errors import InvalidClientSite, InvalidRequest, InvalidTokenPresented
from uid2_operator.services import data_plane
from uid2_operator.services.snapshot import OLDEST_REFRESHABLE_ESTABLISHED_MS, Caller, Snapshot
from uid2_operator.wire.keys import MASTER_KEYSET_ID, REFRESH_KEYSET_ID, EncryptionKey
from uid2_operator.wire.refresh import unwrap_refresh_envelope
from uid2_operator.wire.tokens import (
    AdvertisingToken,
    IdentityScope,
    decode_advertising_token,
    decode_refresh_token,
    encode_advertising_token_v4,
    encode_refresh_token,
)

EMAIL = "scoped@example.com"
NOW_MS = FixedClock().now_ms()


@pytest.fixture(name="world")
def world_fixture() -> tuple[Snapshot, Caller]:
    snapshot, creds = build_world_snapshot(NOW_MS)
    return snapshot, snapshot.clients[creds["A"].key_id].caller


def _generated(world: tuple[Snapshot, Caller]) -> dict[str, str]:
    snapshot, caller = world
    reply = data_plane.generate(snapshot, caller, {"email": EMAIL}, NOW_MS, os.urandom)
    assert reply.status == "success"
    return reply.body  # type: ignore[return-value]


def _active(snapshot: Snapshot, keyset_id: int) -> EncryptionKey:
    now_s = NOW_MS // 1000
    return next(
        k
        for k in snapshot.keys_by_id.values()
        if k.keyset_id == keyset_id and k.activates <= now_s < k.expires
    )


def _decoded(snapshot: Snapshot, text: str) -> AdvertisingToken:
    every = snapshot.keys_by_id.get
    return decode_advertising_token(text, master_key=every, site_key=every)


def _validate(world: tuple[Snapshot, Caller], token: str) -> object:
    snapshot, caller = world
    reply = data_plane.validate(snapshot, caller, {"email": EMAIL, "token": token}, NOW_MS)
    return reply.body


def test_a_genuine_token_validates(world: tuple[Snapshot, Caller]) -> None:
    assert _validate(world, _generated(world)["advertising_token"]) is True


def test_a_token_whose_outer_layer_is_sealed_with_a_site_key_is_invalid(
    world: tuple[Snapshot, Caller],
) -> None:
    snapshot, _caller = world
    token = _decoded(snapshot, _generated(world)["advertising_token"])
    site_key = snapshot.keys_by_id[token.site_key_id]
    assert site_key.keyset_id != MASTER_KEYSET_ID
    forged = encode_advertising_token_v4(
        replace(token, master_key_id=site_key.id),
        master_key=site_key,
        site_key=site_key,
        random=os.urandom,
    )
    with pytest.raises(InvalidRequest, match=r"^Invalid token$"):
        _validate(world, forged)


@pytest.mark.parametrize("keyset_id", [MASTER_KEYSET_ID, REFRESH_KEYSET_ID])
def test_a_token_whose_site_layer_is_sealed_with_a_reserved_key_is_invalid(
    world: tuple[Snapshot, Caller], keyset_id: int
) -> None:
    snapshot, _caller = world
    token = _decoded(snapshot, _generated(world)["advertising_token"])
    reserved = _active(snapshot, keyset_id)
    forged = encode_advertising_token_v4(
        replace(token, site_key_id=reserved.id),
        master_key=snapshot.keys_by_id[token.master_key_id],
        site_key=reserved,
        random=os.urandom,
    )
    # Not "Unauthorised to validate token": the site layer does not open at all.
    with pytest.raises(InvalidRequest, match=r"^Invalid token$"):
        _validate(world, forged)
    assert snapshot.site_key_lookup(reserved.id) is None
    assert snapshot.site_key_lookup(token.site_key_id) is not None


def _inner_refresh(snapshot: Snapshot, refresh_token: str) -> str:
    return unwrap_refresh_envelope(
        refresh_token, snapshot.lookup_in(REFRESH_KEYSET_ID)
    ).refresh_token


def _refresh(snapshot: Snapshot, text: str) -> data_plane.RefreshReply:
    return data_plane.refresh(
        snapshot, text.encode(), authenticated=True, now_ms=NOW_MS, random=os.urandom
    )


def _resealed(snapshot: Snapshot, inner: str, **changes: object) -> str:
    lookup = snapshot.lookup_in(REFRESH_KEYSET_ID)
    token = decode_refresh_token(inner, key_lookup=lookup)
    key = lookup(token.key_id)
    assert key is not None
    return encode_refresh_token(replace(token, **changes), key=key, random=os.urandom)


def test_a_refresh_token_of_the_other_scope_is_invalid(world: tuple[Snapshot, Caller]) -> None:
    snapshot, _caller = world
    inner = _inner_refresh(snapshot, _generated(world)["refresh_token"])
    assert _refresh(snapshot, _resealed(snapshot, inner)).reply.status == "success"
    assert snapshot.identity.scope is IdentityScope.UID2
    with pytest.raises(InvalidTokenPresented):
        _refresh(snapshot, _resealed(snapshot, inner, scope=IdentityScope.EUID))


def test_a_refresh_token_established_before_the_oldest_refreshable_instant_is_an_optout(
    world: tuple[Snapshot, Caller],
) -> None:
    snapshot, _caller = world
    inner = _inner_refresh(snapshot, _generated(world)["refresh_token"])
    early = OLDEST_REFRESHABLE_ESTABLISHED_MS - 1
    assert _refresh(snapshot, _resealed(snapshot, inner)).reply.status == "success"
    assert _refresh(snapshot, _resealed(snapshot, inner, established_ms=early)).reply.status == (
        "optout"
    )


@pytest.mark.parametrize("endpoint", ["key_latest", "key_sharing", "key_bidstream"])
@pytest.mark.parametrize("site_id", [1, 2])
def test_the_key_endpoints_refuse_a_caller_of_a_reserved_site(
    world: tuple[Snapshot, Caller], endpoint: str, site_id: int
) -> None:
    snapshot, caller = world
    handler = getattr(data_plane, endpoint)
    assert handler(snapshot, caller).status == "success"
    with pytest.raises(InvalidClientSite, match=f"Unexpected client site id {site_id}"):
        handler(snapshot, replace(caller, site_id=site_id))
