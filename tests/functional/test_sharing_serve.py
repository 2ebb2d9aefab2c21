"""Sharing permissions and client-side token generation against a real ``uid2-operator serve``.

Everything is set up the way an administrator would: ``init`` and a publisher A (every client
role) with the CLI, then participants B (a publisher) and C (an advertiser), each with SHARER,
and D (a DSP, ID_READER), their keys, A's sharing choice (site B and every DSP), a keypair and
A's domain and app names through the admin API of the running server. The official
``uid2_client`` SDK then exercises sdk-compat §3 scenarios 12-17, and raw requests built with
``cryptography`` (as a browser SDK would) exercise ``/v2/token/client-generate``. Changes reach
the operator through its store poll, so every check that follows a change waits for it, and the
sharing changes must show in a key refresh within ``CHANGE_WITHIN_S`` of being acknowledged.
The serve logs at ``debug``, so the private-key check searches everything it can log.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from cli_harness import database_for
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from serve_harness import (
    UID2_OPERATOR,
    Credential,
    Prepared,
    Served,
    clean_env,
    cli,
    prepare,
    served,
)
from uid2_client import (
    BidstreamClient,
    DecryptionStatus,
    EncryptionStatus,
    IdentityScope,
    SharingClient,
    TokenGenerateInput,
    Uid2PublisherClient,
)

from uid2_operator.bootstrap import load_keyring
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.keypairs import open_private_key, parse_public_key
from uid2_operator.settings import Settings
from uid2_operator.storage import open_store
from uid2_operator.wire.cstg import BuiltRequest, build_request, open_response, private_key_der
from uid2_operator.wire.keys import CLIENT_GENERATED_PRIVACY_BITS, EncryptionKey
from uid2_operator.wire.tokens import decode_advertising_token

pytestmark = pytest.mark.functional

POLL_S = "0.2"
WAIT_S = 15.0
CHANGE_ALLOWANCE_S = 1.0
"""What ``test_serve_revocation.py`` allows beyond its poll interval (1 s of its 2 s): thread
scheduling, the snapshot build and the checking requests themselves on a busy machine."""
CHANGE_WITHIN_S = 2 * float(POLL_S) + CHANGE_ALLOWANCE_S
"""From a sharing change being acknowledged (the CLI returned, the admin API answered) to the
start of the first key refresh that shows it: the poll that notices the change and the one
after it (a poll that began just before the commit), plus the allowance."""
RAW_UID = base64.b64encode(bytes([0]) + bytes(range(32))).decode()
EMAIL_HASH = base64.b64encode(os.urandom(32)).decode()
ORIGIN = "https://www.publisher-a.com"
APP = "com.publisher.app"
CSTG = "/v2/token/client-generate"
T = TypeVar("T")


@dataclass
class World:
    running: Served
    prepared: Prepared
    creds: dict[str, Credential]
    subscription_id: str
    public_key: str
    disabled_subscription_id: str
    admin_texts: list[str]

    @property
    def token(self) -> str:
        return self.prepared.admin_token

    def admin(self, method: str, path: str, body: Any = None) -> httpx.Response:
        response = self.running.admin(method, path, self.token, body)
        self.admin_texts.append(response.text)
        assert response.status_code < 300, (method, path, response.text)
        return response

    def sharing(self, name: str) -> SharingClient:
        client = SharingClient(self.running.base_url, self.creds[name].key, self.creds[name].secret)
        assert client.refresh().success
        return client

    def bidstream(self, name: str) -> BidstreamClient:
        cred = self.creds[name]
        client = BidstreamClient(self.running.base_url, cred.key, cred.secret)
        assert client.refresh().success
        return client

    def cstg(
        self,
        *,
        subscription_id: str | None = None,
        public_key: str | None = None,
        timestamp: int | None = None,
        app_name: str | None = None,
        origin: str | None = ORIGIN,
        change: Callable[[dict[str, Any]], None] | None = None,
    ) -> tuple[httpx.Response, BuiltRequest]:
        built = build_request(
            parse_public_key(public_key or self.public_key, Environment.LOCAL),
            {"email_hash": EMAIL_HASH},
            timestamp=int(time.time() * 1000) if timestamp is None else timestamp,
            subscription_id=subscription_id or self.subscription_id,
            random=os.urandom,
            app_name=app_name,
        )
        body = dict(built.body)
        if change is not None:
            change(body)
        headers = {"content-type": "application/json"}
        if origin is not None:
            headers["origin"] = origin
        response = httpx.post(
            self.running.base_url + CSTG, content=json.dumps(body), headers=headers, timeout=30
        )
        return response, built


def eventually(check: Callable[[], T | None], what: str) -> T:
    """Poll ``check`` until it returns a value (the operator's snapshot catching up)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        found = check()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def promptly(check: Callable[[], T | None], what: str, committed: float) -> T:
    """Poll ``check`` until it returns a value; no check that still saw the old state may have
    begun later than ``CHANGE_WITHIN_S`` after ``committed`` (``time.monotonic()`` once the
    change was acknowledged). Judged by the last check that missed, not by the one that found
    it: a check is a whole key refresh, slow on a busy machine, and one that began before the
    bound and took long says nothing about the serve."""
    deadline = committed + WAIT_S
    last_miss: float | None = None
    while True:
        sent = time.monotonic()
        found = check()
        if found is not None:
            late = 0.0 if last_miss is None else max(0.0, last_miss - committed)
            assert late <= CHANGE_WITHIN_S, (
                f"{what}: still unchanged {late:.3f} s after the change (> {CHANGE_WITHIN_S} s)"
            )
            return found
        last_miss = sent
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _readable_by(world: World, reader: str, token: str) -> bool | None:
    status = world.sharing(reader).decrypt_token_into_raw_uid(token).status
    if status == DecryptionStatus.SUCCESS:
        return True
    return False if status == DecryptionStatus.NOT_AUTHORIZED_FOR_KEY else None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with database_for("sqlite", tmp_path_factory.mktemp("sharing-serve")) as database:
        prepared = prepare(database, name="Publisher A")
        env = {"UID2_POLL_INTERVAL_S": POLL_S}
        with served(database, env=env, log_level="debug") as running:
            texts: list[str] = []
            world = World(running, prepared, {"A": prepared.key}, "", "", "", texts)
            for name, kind, roles in (
                ("B", "publisher", ["SHARER"]),
                ("C", "advertiser", ["SHARER"]),
                ("D", "dsp", ["ID_READER"]),
            ):
                site = world.admin(
                    "POST", "/participants", {"name": name, "type": kind, "roles": roles}
                ).json()["site_id"]
                issued = world.admin(
                    "POST", "/keys", {"site_id": site, "name": name, "roles": roles}
                ).json()
                world.creds[name] = Credential(
                    issued["key_id"], issued["key"], issued["secret"], site
                )
            a, b = prepared.site_id, world.creds["B"].site_id
            # The serving process gives new participants their keysets; wait for B's.
            eventually(
                lambda: (
                    running.admin("GET", f"/participants/{b}/sharing", world.token)
                    .json()
                    .get("keyset_id")
                ),
                "B's keyset",
            )
            world.admin(
                "PUT",
                f"/participants/{a}/sharing",
                {"mode": "list", "sites": [b], "types": ["dsp"]},
            )
            world.admin("PUT", f"/participants/{b}/sharing", {"mode": "owner_only"})
            world.admin(
                "PUT", f"/participants/{a}/domain-names", {"domain_names": ["publisher-a.com"]}
            )
            world.admin("PUT", f"/participants/{a}/app-names", {"app_names": [APP]})
            pair = world.admin("POST", "/keypairs", {"site_id": a, "name": "web"}).json()
            world.subscription_id, world.public_key = pair["subscription_id"], pair["public_key"]
            off = world.admin("POST", "/keypairs", {"site_id": a, "name": "retired"}).json()
            world.disabled_subscription_id = off["subscription_id"]
            world.admin("POST", f"/keypairs/{off['subscription_id']}/disable", {})
            token = world.sharing("A").encrypt_raw_uid_into_token(RAW_UID).encrypted_data
            eventually(lambda: _readable_by(world, "B", token) or None, "B reading A's tokens")
            eventually(
                lambda: (
                    world.cstg(subscription_id=off["subscription_id"])[0].status_code == 401 or None
                ),
                "the keypairs in the snapshot",
            )
            yield world


# ---------------------------------------------------------------- 12-14 sharing, SDK


def test_same_site_encrypt_then_decrypt(world: World) -> None:
    client = world.sharing("A")
    encrypted = client.encrypt_raw_uid_into_token(RAW_UID)
    assert encrypted.status == EncryptionStatus.SUCCESS
    assert encrypted.encrypted_data.startswith("A4")
    decrypted = client.decrypt_token_into_raw_uid(encrypted.encrypted_data)
    assert decrypted.status == DecryptionStatus.SUCCESS
    assert decrypted.uid == RAW_UID
    assert decrypted.site_id == world.prepared.site_id


def test_a_list_admits_b_and_excludes_c_in_both_directions(world: World) -> None:
    from_a = world.sharing("A").encrypt_raw_uid_into_token(RAW_UID).encrypted_data
    allowed = world.sharing("B").decrypt_token_into_raw_uid(from_a)
    assert allowed.status == DecryptionStatus.SUCCESS
    assert allowed.uid == RAW_UID
    refused = world.sharing("C").decrypt_token_into_raw_uid(from_a)
    assert refused.status == DecryptionStatus.NOT_AUTHORIZED_FOR_KEY
    assert refused.uid is None
    # B shares with nobody: A cannot read what B encrypts, though B can read A's.
    from_b = world.sharing("B").encrypt_raw_uid_into_token(RAW_UID)
    assert from_b.status == EncryptionStatus.SUCCESS
    back = world.sharing("A").decrypt_token_into_raw_uid(from_b.encrypted_data)
    assert back.status == DecryptionStatus.NOT_AUTHORIZED_FOR_KEY


def test_sharing_negatives(world: World) -> None:
    client = world.sharing("A")
    assert client.encrypt_raw_uid_into_token("invalid_raw_uid").status == (
        EncryptionStatus.ENCRYPTION_FAILURE
    )
    assert not client.decrypt_token_into_raw_uid("invalid-token").success
    fresh = SharingClient(world.running.base_url, world.creds["A"].key, world.creds["A"].secret)
    assert fresh.encrypt_raw_uid_into_token(RAW_UID).status == EncryptionStatus.NOT_INITIALIZED


def test_a_sharer_without_generator_starts_shared_with_no_dsp(world: World) -> None:
    """C, an advertiser, holds SHARER only and nobody changed its choice: its keyset was created
    owner-only, so D, a DSP granted nothing, cannot read the raw UIDs C shares (A, a publisher,
    started shared with bidders)."""
    c = world.creds["C"].site_id
    shown = world.admin("GET", f"/participants/{c}/sharing").json()
    assert (shown["mode"], shown["sites"], shown["types"]) == ("owner_only", [], [])
    sent = eventually(
        lambda: world.sharing("C").encrypt_raw_uid_into_token(RAW_UID).encrypted_data or None,
        "C's keyset in the snapshot",
    )
    assert world.sharing("C").decrypt_token_into_raw_uid(sent).uid == RAW_UID
    refused = world.sharing("D").decrypt_token_into_raw_uid(sent)
    assert refused.status == DecryptionStatus.NOT_AUTHORIZED_FOR_KEY
    assert refused.uid is None
    assert _readable_by(world, "B", sent) is False


# ---------------------------------------------------------------- 16-17 expiry, payloads
# (15, sharing token expiry, is in test_sharing_expiry_sdk.py: a 30-day sharing token outlives
# the 30-day keys this server makes, and past the last key's expiry the SDK answers
# KEYS_NOT_SYNCED before it looks at the token.)


def test_advertising_token_expiry_for_a_dsp_admitted_by_type(world: World) -> None:
    cred = world.creds["A"]
    response = Uid2PublisherClient(world.running.base_url, cred.key, cred.secret).generate_token(
        TokenGenerateInput.from_email("sharing-expiry@example.com")
    )
    identity = response.get_identity()
    assert identity is not None
    token = identity.get_advertising_token()
    expires = datetime.fromtimestamp(identity.get_identity_expires() / 1000, UTC)
    dsp = world.bidstream("D")
    early = dsp._decrypt_token_into_raw_uid(token, None, now=expires - timedelta(seconds=1))
    assert early.status == DecryptionStatus.SUCCESS
    assert early.site_id == world.prepared.site_id
    late = dsp._decrypt_token_into_raw_uid(token, None, now=expires + timedelta(seconds=1))
    assert late.status == DecryptionStatus.EXPIRED_TOKEN
    assert late.expiry == expires


def test_key_payload_contract(world: World) -> None:
    keys = world.sharing("A")._keys
    assert keys.get_caller_site_id() == world.prepared.site_id
    assert keys.get_identity_scope() == IdentityScope.UID2
    now = datetime.now(UTC)
    master, default = keys.get_master_key(now), keys.get_default_keyset_key(now)
    assert master is not None
    assert default is not None
    assert master.is_active(now)
    assert default.is_active(now)
    assert isinstance(keys.get_max_sharing_lifetime_seconds(), int)
    dsp_keys = world.bidstream("D")._keys
    assert isinstance(dsp_keys.get_max_bidstream_lifetime_seconds(), int)
    ids = {k.key_id for k in dsp_keys.values()}
    assert {master.key_id, default.key_id} <= ids
    # C is neither listed nor a DSP: it sees the master keys and its own, not A's.
    assert default.key_id not in {k.key_id for k in world.sharing("C")._keys.values()}
    reply, body = world.running.call("/v2/key/bidstream", None, world.creds["D"])
    assert reply.status_code == 200
    assert body is not None
    assert {"id": world.prepared.site_id, "domain_names": ["publisher-a.com"]} in (
        body["body"]["site_data"]
    )
    per_keyset: dict[int, list[int]] = {}
    _, sharing_body = world.running.call("/v2/key/sharing", None, world.creds["A"])
    assert sharing_body is not None
    for key in sharing_body["body"]["keys"]:
        per_keyset.setdefault(key.get("keyset_id", 0), []).append(key["activates"])
    assert all(times == sorted(times) for times in per_keyset.values())


# ---------------------------------------------------------------- client-side generation


def test_a_client_side_request_yields_a_token_a_dsp_decrypts(world: World) -> None:
    response, built = world.cstg()
    assert response.status_code == 200, response.text
    assert "content-type" not in response.headers
    reply = open_response(built.secret, response.content)
    assert reply["status"] == "success"
    token = reply["body"]["advertising_token"]
    dsp = world.bidstream("D")
    decrypted = dsp.decrypt_token_into_raw_uid(token, "publisher-a.com")
    assert decrypted.status == DecryptionStatus.SUCCESS
    assert decrypted.site_id == world.prepared.site_id
    assert decrypted.uid is not None
    # The SDK reads bit 30 for "client side generated" while the operator sets bit 1, so it
    # reports False (sdk-compat §2.5); the privacy bits themselves are 3, read with the DSP's keys.
    assert decrypted.is_client_side_generated is False
    keys = {k.key_id: k.secret for k in dsp._keys.values()}

    def lookup(key_id: int) -> EncryptionKey | None:
        secret = keys.get(key_id)
        return None if secret is None else EncryptionKey(key_id, 0, 0, 0, 2**40, secret)

    parsed = decode_advertising_token(token, master_key=lookup, site_key=lookup)
    assert parsed.privacy_bits == CLIENT_GENERATED_PRIVACY_BITS == 3
    assert len(reply["body"]["refresh_token"]) == 388
    by_app, built_app = world.cstg(app_name=APP.upper(), origin=None)
    assert by_app.status_code == 200
    assert open_response(built_app.secret, by_app.content)["status"] == "success"


def test_a_publisher_generating_only_on_the_client_side_is_read_by_every_dsp(
    world: World,
) -> None:
    """A publisher with no role and no API key, only a keypair: its keyset starts shared with
    bidders as any publisher's does, so a DSP decrypts its client-side tokens."""
    site = world.admin(
        "POST", "/participants", {"name": "Client side only", "type": "publisher", "roles": []}
    ).json()["site_id"]
    world.admin("PUT", f"/participants/{site}/domain-names", {"domain_names": ["cstg-only.com"]})
    pair = world.admin("POST", "/keypairs", {"site_id": site, "name": "web"}).json()
    shown = world.admin("GET", f"/participants/{site}/sharing").json()
    assert shown["mode"] == "bidders"

    def generated() -> tuple[httpx.Response, BuiltRequest] | None:
        response, built = world.cstg(
            subscription_id=pair["subscription_id"],
            public_key=pair["public_key"],
            origin="https://www.cstg-only.com",
        )
        return (response, built) if response.status_code == 200 else None

    response, built = eventually(generated, "the keypair in the snapshot")
    token = open_response(built.secret, response.content)["body"]["advertising_token"]

    def decrypted_by_dsp() -> Any:
        outcome = world.bidstream("D").decrypt_token_into_raw_uid(token, "cstg-only.com")
        return outcome if outcome.status == DecryptionStatus.SUCCESS else None

    decrypted = eventually(decrypted_by_dsp, "the DSP reading the publisher's keys")
    assert decrypted.site_id == site
    assert decrypted.uid is not None


def _refusal(response: httpx.Response) -> tuple[int, str, str]:
    document = response.json()
    return response.status_code, document["status"], document.get("message", "")


def _tamper(body: dict[str, Any]) -> None:
    raw = bytearray(base64.b64decode(body["payload"]))
    raw[0] ^= 1
    body["payload"] = base64.b64encode(bytes(raw)).decode()


def _bad_key(body: dict[str, Any]) -> None:
    body["public_key"] = base64.b64encode(b"\x30\x03\x02\x01\x01").decode()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"origin": "https://evil.example"},
            (403, "invalid_http_origin", "unexpected http origin"),
        ),
        ({"origin": None}, (403, "invalid_http_origin", "unexpected http origin")),
        ({"app_name": "com.other.app"}, (403, "invalid_app_name", "unexpected app name")),
        ({"subscription_id": "Zz9Zz9Zz9Z"}, (400, "client_error", "bad subscription_id")),
        (
            {"timestamp": int(time.time() * 1000) - 2 * 3600 * 1000},
            (400, "client_error", "invalid timestamp: request too old or client clock drift"),
        ),
        ({"change": _tamper}, (400, "client_error", "payload decryption failed")),
        ({"change": _bad_key}, (400, "client_error", "bad public key")),
    ],
)
def test_client_side_refusals_have_the_reference_status(
    world: World, kwargs: dict[str, Any], expected: tuple[int, str, str]
) -> None:
    response, _ = world.cstg(**kwargs)
    assert _refusal(response) == expected


def test_a_disabled_keypair_and_a_malformed_body_are_refused(world: World) -> None:
    response, _ = world.cstg(subscription_id=world.disabled_subscription_id)
    assert _refusal(response) == (401, "unauthorized", "Unauthorized")
    for body in (b"", b"{", b"[1]", b'{"timestamp": "soon"}'):
        raw = httpx.post(world.running.base_url + CSTG, content=body, timeout=30)
        assert raw.status_code == 400, body
        assert raw.json()["status"] == "client_error"


# ---------------------------------------------------------------- a change through the API


def test_a_permission_change_through_the_admin_api_reaches_the_next_key_refresh(
    world: World,
) -> None:
    a, c = world.prepared.site_id, world.creds["C"].site_id
    before_b = world.sharing("B")  # keys fetched while B is still allowed
    changed = world.admin(
        "PUT", f"/participants/{a}/sharing", {"mode": "list", "sites": [c], "types": ["dsp"]}
    ).json()
    committed = time.monotonic()
    assert changed["changed"] is True
    assert changed["rotated_key_ids"]  # B was removed: A's keys were rotated

    rotated = set(changed["rotated_key_ids"])

    def switched() -> SharingClient | None:
        client = world.sharing("A")
        return client if rotated & {k.key_id for k in client._keys.values()} else None

    sender = promptly(switched, "the rotated keys in A's key refresh", committed)
    token = sender.encrypt_raw_uid_into_token(RAW_UID).encrypted_data
    assert _readable_by(world, "C", token) is True
    # B, refreshed or not, cannot read tokens sealed with the rotated key.
    assert world.sharing("B").decrypt_token_into_raw_uid(token).status == (
        DecryptionStatus.NOT_AUTHORIZED_FOR_KEY
    )
    assert before_b.decrypt_token_into_raw_uid(token).status == (
        DecryptionStatus.NOT_AUTHORIZED_FOR_KEY
    )
    audit = world.admin("GET", "/audit?action=keyset.sharing").json()["events"]
    assert audit[-1]["before"]["sites"] == [world.creds["B"].site_id]
    assert audit[-1]["after"]["sites"] == [c]


# ---------------------------------------------------------------- a change through the CLI


def test_a_sharing_change_with_the_cli_reaches_the_running_serve(world: World) -> None:
    database = world.prepared.database
    b, c = world.creds["B"].site_id, world.creds["C"].site_id
    token = world.sharing("B").encrypt_raw_uid_into_token(RAW_UID).encrypted_data
    assert _readable_by(world, "C", token) is False  # B shares with nobody so far
    try:
        widened = cli(database, "sharing", "set", "--site-id", str(b), "--allow", str(c))
        committed = time.monotonic()
        assert (widened["mode"], widened["sites"], widened["changed"]) == ("list", [c], True)
        assert widened["rotated_key_ids"] == []  # nobody lost access: no rotation
        promptly(lambda: _readable_by(world, "C", token) or None, "C reading B's tokens", committed)
        assert world.sharing("C").decrypt_token_into_raw_uid(token).uid == RAW_UID
        assert _readable_by(world, "A", token) is False  # A is not on B's list
    finally:
        narrowed = cli(database, "sharing", "set", "--site-id", str(b), "--owner-only")
        committed = time.monotonic()
    assert (narrowed["mode"], narrowed["changed"]) == ("owner_only", True)
    rotated = set(narrowed["rotated_key_ids"])
    assert rotated  # C was removed: B's keys were rotated
    # Once the serve has the change, C's next key refresh no longer holds B's keys at all.
    promptly(
        lambda: _readable_by(world, "C", token) is False or None, "C losing B's keys", committed
    )

    def switched() -> SharingClient | None:
        client = world.sharing("B")
        return client if rotated & {k.key_id for k in client._keys.values()} else None

    fresh = promptly(switched, "B's rotated keys", committed).encrypt_raw_uid_into_token(RAW_UID)
    assert fresh.status == EncryptionStatus.SUCCESS
    refused = world.sharing("C").decrypt_token_into_raw_uid(fresh.encrypted_data)
    assert refused.status == DecryptionStatus.NOT_AUTHORIZED_FOR_KEY
    assert world.sharing("B").decrypt_token_into_raw_uid(fresh.encrypted_data).uid == RAW_UID


def _cli_run(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    """``uid2-operator <args>`` with its standard output and error kept (fails on non-zero)."""
    result = subprocess.run(  # noqa: S603 (our own command)
        [UID2_OPERATOR, *world.prepared.database.cli_args(), *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def _private_key_forms(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """Every text form the private key could be written in, named: its PKCS#8 DER (what the
    store seals; ``UID2-Y-<env>-`` plus its base64 in the reference, its PEM body once line
    breaks are removed), its SEC1 DER, and its 32-byte scalar, each as base64 (standard and
    URL-safe, padding dropped), hex in either case and Python's ``repr`` of the bytes; and the
    scalar as a decimal number."""
    pkcs8 = private_key_der(key)
    sec1 = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    value = key.private_numbers().private_value
    forms = {"scalar (decimal)": str(value)}
    for name, raw in (("PKCS#8", pkcs8), ("SEC1", sec1), ("scalar", value.to_bytes(32, "big"))):
        forms |= {
            f"{name} (base64)": base64.b64encode(raw).decode().rstrip("="),
            f"{name} (url-safe base64)": base64.urlsafe_b64encode(raw).decode().rstrip("="),
            f"{name} (hex)": raw.hex(),
            f"{name} (HEX)": raw.hex().upper(),
            f"{name} (repr)": repr(raw)[2:-1],
        }
    return forms


def _stored_private_keys(world: World) -> dict[str, tuple[ec.EllipticCurvePrivateKey, bytes]]:
    """Subscription id -> (its private key, its public key as stored) for every keypair."""
    settings = Settings(data_dir=world.prepared.database.data_dir)
    store = open_store(settings.store_url)
    try:
        with store.read() as rx:
            stored = rx.keypairs.list_all()
    finally:
        store.close()
    keyring = load_keyring(settings)
    return {k.subscription_id: (open_private_key(keyring, k), k.public_key) for k in stored}


def _cstg_status(world: World, subscription_id: str, public_key: str, texts: list[str]) -> int:
    response, _ = world.cstg(subscription_id=subscription_id, public_key=public_key)
    texts.append(response.text)
    return response.status_code


def test_the_private_key_is_in_no_response_log_or_database_file(world: World) -> None:
    """Every keypair path runs against the serve logging at ``debug`` (creation through the CLI
    and the admin API, client-side generation, disabling and enabling, each reaching the
    serve's snapshot), then no private key is in any reply, any line the serve or the CLI
    printed, or the database file."""
    a = str(world.prepared.site_id)
    texts: list[str] = []  # every reply and every CLI output, beside the serve's lines
    admin_made = world.admin(
        "POST", "/keypairs", {"site_id": world.prepared.site_id, "name": "admin"}
    ).json()
    created = _cli_run(world, "--json", "keypair", "create", "--site-id", a, "--name", "cli")
    texts += [created.stdout, created.stderr]
    cli_made = json.loads(created.stdout)
    for pair in (admin_made, cli_made):
        ident, public = pair["subscription_id"], pair["public_key"]
        eventually(
            lambda: _cstg_status(world, ident, public, texts) == 200 or None,  # noqa: B023
            f"keypair {ident} in the snapshot",
        )
        for args in (("keypair", "show", ident), ("--json", "keypair", "show", ident)):
            shown = _cli_run(world, *args)
            texts += [shown.stdout, shown.stderr]
        world.admin("GET", f"/keypairs/{ident}")
    for args in (("keypair", "list"), ("--json", "keypair", "list", "--site-id", a)):
        listed = _cli_run(world, *args)
        texts += [listed.stdout, listed.stderr]
    cli_id, cli_public = cli_made["subscription_id"], cli_made["public_key"]
    disabled = _cli_run(world, "--json", "keypair", "disable", cli_id)
    texts += [disabled.stdout, disabled.stderr]
    eventually(
        lambda: _cstg_status(world, cli_id, cli_public, texts) == 401 or None,
        "the disabled keypair refused",
    )
    world.admin("POST", f"/keypairs/{cli_id}/enable", {})
    eventually(
        lambda: _cstg_status(world, cli_id, cli_public, texts) == 200 or None,
        "the enabled keypair accepted again",
    )
    world.admin("GET", "/keypairs")
    world.admin("GET", "/audit")

    lines = list(world.running.lines)
    # Below warning reaches the lines: the admin API's enabling of the keypair, logged at info.
    assert any(line.startswith("INFO ") and cli_id in line for line in lines)
    stored = _stored_private_keys(world)
    assert {admin_made["subscription_id"], cli_id, world.subscription_id} <= stored.keys()
    haystack = "\n".join([*world.admin_texts, *texts, *lines])
    unbroken = re.sub(r"\s+|\\n", "", haystack)  # a PEM body, or text wrapped across lines
    found = [
        f"{name} of {ident}"
        for ident, (key, _) in stored.items()
        for name, form in _private_key_forms(key).items()
        if form in haystack or form in unbroken
    ]
    assert found == []
    assert cli_public in haystack  # the search does find what is there
    raw = b"".join(p.read_bytes() for p in Path(world.prepared.database.data_dir).glob("uid2.db*"))
    for ident, (key, public_key) in stored.items():
        scalar = key.private_numbers().private_value.to_bytes(32, "big")
        assert private_key_der(key) not in raw, ident
        assert scalar not in raw, ident
        assert public_key in raw, ident  # the search does find what is there
