"""``uid2-operator serve`` end to end: a data directory made with the real CLI, a real server
process, and the official SDK (``uid2_client`` 2.9.0) as the client."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_harness import Database, database_for
from serve_harness import Credential, Prepared, Served, cli, create_key, poll, prepare, served
from uid2_client import (
    BidstreamClient,
    DecryptionStatus,
    IdentityType,
    TokenGenerateInput,
    Uid2PublisherClient,
)

from uid2_operator.domain.salts import (
    LOCAL_BUCKET_COUNT,
    next_utc_midnight,
    rotation_effective_at,
)
from uid2_operator.storage import open_store

pytestmark = pytest.mark.functional

OK_EMAIL = "serve-test@example.com"
GENERATE = "/v2/token/generate"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prepared]:
    with database_for("sqlite", tmp_path_factory.mktemp("serve")) as database:
        yield prepare(database)


@pytest.fixture(scope="module")
def server(prepared: Prepared) -> Iterator[Served]:
    with served(prepared.database, env={"UID2_FLUSH_INTERVAL_S": "0.3"}) as running:
        yield running


def test_sdk_generates_refreshes_and_decrypts_against_serve(
    prepared: Prepared, server: Served
) -> None:
    key = prepared.key
    client = Uid2PublisherClient(server.base_url, key.key, key.secret)
    generated = client.generate_token(TokenGenerateInput.from_email(OK_EMAIL))
    assert generated.is_success()
    identity = generated.get_identity()
    refreshed = client.refresh_token(identity)
    assert refreshed.is_success()
    token = refreshed.get_identity().get_advertising_token()
    assert token != identity.get_advertising_token()
    bidstream = BidstreamClient(server.base_url, key.key, key.secret)
    assert bidstream.refresh().success
    decrypted = bidstream.decrypt_token_into_raw_uid(token, "example.com")
    assert decrypted.status == DecryptionStatus.SUCCESS
    assert decrypted.site_id == prepared.site_id
    assert decrypted.identity_type == IdentityType.Email
    assert len(decrypted.uid) == 44


def test_first_run_prints_the_bootstrap_token_and_next_steps(tmp_path: Path) -> None:
    database = Database("sqlite", tmp_path / "fresh", None)
    with served(
        database,
        env={"UID2_KEY_ROTATION_INTERVAL_S": "0.2"},
        extra_args=("--init-if-new", "--log-level", "info"),
    ) as running:
        assert poll(lambda: any("encryption keys rotated" in x for x in running.lines))
        output = "\n".join(running.lines)
    assert re.search(r"^UID2-A-L-\S+\.\S+$", output, re.MULTILINE), output
    assert "participant create" in output
    assert "key create --site-id" in output
    assert (tmp_path / "fresh" / "uid2.db").exists()


def test_usage_is_flushed_to_the_store_and_shown_by_key_show(
    prepared: Prepared, server: Served
) -> None:
    key = create_key(prepared.database, prepared.site_id, "usage probe")
    poll(lambda: server.call(GENERATE, {"email": OK_EMAIL}, key)[0].status_code == 200)
    before = cli(prepared.database, "key", "show", key.key_id)["usage"].get(GENERATE, 0)
    for _ in range(5):
        response, body = server.call(GENERATE, {"email": OK_EMAIL}, key)
        assert response.status_code == 200, response.text
        assert body is not None
        assert body["status"] == "success"

    def shown() -> dict[str, object] | None:
        view = cli(prepared.database, "key", "show", key.key_id)
        return view if view["usage"].get(GENERATE, 0) >= before + 5 else None

    view = poll(shown)
    assert isinstance(view, dict), "usage never reached the store"
    assert view["last_used_at_ms"] is not None
    assert view["last_used_at_ms"] <= time.time() * 1000


def test_metrics_count_requests_per_endpoint_and_key(prepared: Prepared, server: Served) -> None:
    key = prepared.key
    response, _ = server.call(GENERATE, {"email": OK_EMAIL}, key)
    assert response.status_code == 200
    bad = server.post(GENERATE, b"not an envelope", key.key, "text/plain")
    assert bad.status_code == 400
    text = server.metrics()
    labels = f'endpoint="{GENERATE}",key_id="{key.key_id}"'
    ok = re.search(
        rf'uid2_operator_requests_total\{{{labels},status="200",worker="\d+"\}} (\S+)', text
    )
    assert ok is not None, text
    assert float(ok.group(1)) >= 1
    assert re.search(rf'uid2_operator_requests_total\{{{labels},status="400"', text)
    assert re.search(
        rf'uid2_operator_request_duration_seconds_bucket\{{{labels},le="\+Inf",worker="\d+"\}}',
        text,
    )
    assert "uid2_operator_snapshot_generation" in text
    assert httpx.get(server.base_url + "/no/such/route", timeout=10).status_code == 404
    assert 'endpoint="other"' in server.metrics()


SALT_PROBES = 2000


def _mapped(server: Served, key: Credential, emails: list[str]) -> list[dict[str, Any]]:
    """The ``/v3/identity/map`` entries (``u``, ``p``, ``r``) of ``emails``, in order."""
    response, body = server.call("/v3/identity/map", {"email": emails}, key)
    assert body is not None, response.text
    assert body["status"] == "success", body
    entries: list[dict[str, Any]] = body["body"]["email"]
    assert len(entries) == len(emails)
    assert all(set(entry) == {"u", "p", "r"} for entry in entries), entries[:3]
    return entries


def test_material_commands_reach_the_running_operator(prepared: Prepared, server: Served) -> None:
    key = prepared.key
    opted_out = "serve-optout@example.com"
    response, body = server.call(GENERATE, {"email": opted_out}, key)
    assert body is not None
    assert body["status"] == "success", response.text
    rotated = cli(prepared.database, "keys", "rotate")
    assert "created" in rotated
    probes = [f"salt-probe-{n}@example.com" for n in range(SALT_PROBES)]
    mapped_at = time.time() * 1000
    before = _mapped(server, key, probes)
    assert all(entry["p"] is None for entry in before)  # no bucket has rotated yet
    salts = cli(prepared.database, "salts", "rotate", "--fraction", "0.01")
    # A new table's buckets may all rotate at once: round(0.01 * 2^16) of them do.
    assert salts["bucket_count"] == LOCAL_BUCKET_COUNT == 65536
    assert salts["rotated"] == 655
    effective = salts["effective_at_ms"]
    assert effective % 86_400_000 == 0  # a UTC midnight, more than an hour after the rotation
    assert effective == rotation_effective_at(salts["at_ms"])
    cli(prepared.database, "optout", "add", "--email", opted_out)

    def refused() -> bool:
        _, answer = server.call(GENERATE, {"email": opted_out}, key)
        return answer is not None and answer["status"] == "optout"

    assert poll(refused)
    # The operator now serves the rotated table (the opt-out came after the rotation), and the
    # rotation takes effect at a UTC midnight more than an hour away, never before the time each
    # probe was given as "r": no raw UID changes before it. (Run across the probes' midnight,
    # they keep their raw UIDs with a later "r"; so do the rotated buckets' probes when the
    # rotation ran within the hour before the probes' midnight: their "r" is the next one, when
    # their salt changes. Across the rotation's midnight, about 1 % of the probes, those in
    # rotated buckets, have changed, the old raw UID as previous.)
    after = _mapped(server, key, probes)
    now = time.time() * 1000
    midnight = next_utc_midnight(int(mapped_at))
    if now < midnight and effective == midnight:
        assert after == before
    elif now < effective:
        assert [(e["u"], e["p"]) for e in after] == [(e["u"], e["p"]) for e in before]
        assert all(new["r"] >= old["r"] for old, new in zip(before, after, strict=True))
    else:
        pairs = enumerate(zip(before, after, strict=True))
        changed = [n for n, (old, new) in pairs if old["u"] != new["u"]]
        assert len(changed) <= SALT_PROBES // 10, len(changed)
        assert all(after[n]["p"] == before[n]["u"] for n in changed)
    # the others still get tokens from the reloaded snapshot
    _, answer = server.call(GENERATE, {"email": OK_EMAIL}, key)
    assert answer is not None
    assert answer["status"] == "success"


def test_logout_records_the_optout_in_the_store(prepared: Prepared, server: Served) -> None:
    site = cli(prepared.database, "participant", "create", "--name", "Opt-out service",
               "--type", "data_provider", "--roles", "OPTOUT")["site_id"]  # fmt: skip
    optout_key: Credential = create_key(prepared.database, int(site), "logout", roles="OPTOUT")
    email = "serve-logout@example.com"
    logout = "/v2/token/logout"

    def logged_out() -> bool:
        response, body = server.call(logout, {"email": email}, optout_key)
        return response.status_code == 200 and body is not None and body["status"] == "success"

    assert poll(logged_out)
    _, answer = server.call(GENERATE, {"email": email}, prepared.key)
    assert answer is not None
    assert answer["status"] == "optout"
    store = open_store(f"sqlite:///{prepared.database.sqlite_path}")
    try:

        def stored() -> bool:
            with store.read() as tx:
                events = tx.audit.list_events(action="optout.add")
                return any(e.actor == "operator" for e in events)

        assert poll(stored)
    finally:
        store.close()
