"""A first sync of ``/v2/identity/buckets`` against a real ``serve``: every bucket, streamed.

The table is made by ``init`` with ``UID2_SALT_BUCKETS`` = 2^14 (four pieces' worth of buckets),
so asking for every change since 1970 lists all of them. The answer is sent chunked, without
``Content-Length``, and the official SDK and a plain HTTP client both read every bucket from it;
an answer that fits one piece is still sent with ``Content-Length``.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from cli_harness import database_for
from sdk_world import run_cli
from serve_harness import Credential, SealedRequest, Served, served
from uid2_client import IdentityMapClient

from uid2_operator.services.data_plane import BUCKETS_PER_PIECE
from uid2_operator.wire.envelope import open_response, unframe_response

pytestmark = pytest.mark.functional

BUCKET_COUNT = 1 << 14
ENV = {"UID2_SALT_BUCKETS": str(BUCKET_COUNT)}
BUCKETS = "/v2/identity/buckets"
SINCE_EVER = {"since_timestamp": "1970-01-01T00:00"}


@pytest.fixture(scope="module")
def mapper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Credential]]:
    """A served store made by ``init`` with 2^14 buckets, and a MAPPER key."""
    assert BUCKET_COUNT > 3 * BUCKETS_PER_PIECE
    with database_for("sqlite", tmp_path_factory.mktemp("buckets")) as database:
        run_cli(database, ENV, "init")
        participant = run_cli(
            database, ENV, "participant", "create", "--name", "Mapper", "--type", "publisher",
            "--roles", "MAPPER",
        )  # fmt: skip
        site = int(participant["site_id"])
        issued = run_cli(
            database, ENV, "key", "create", "--site-id", str(site), "--name", "mapper",
            "--roles", "MAPPER",
        )  # fmt: skip
        cred = Credential(issued["key_id"], issued["key"], issued["secret"], site)
        with served(database, env=ENV) as server:
            yield server, cred


def _post(
    server: Served, cred: Credential, payload: Any, *, binary: bool
) -> tuple[http.client.HTTPResponse, dict[str, Any]]:
    """One sealed POST on a new connection: the response (headers) and its opened answer."""
    request = SealedRequest.of(payload, cred)
    body = unframe_response(request.body, False) if binary else request.body
    url = urlsplit(server.base_url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=60)
    try:
        connection.request(
            "POST",
            BUCKETS,
            body=body,
            headers={
                "authorization": f"Bearer {cred.key}",
                "content-type": "application/octet-stream" if binary else "text/plain",
            },
        )
        response = connection.getresponse()
        content = response.read()
    finally:
        connection.close()
    assert response.status == 200, content[:200]
    opened = open_response(
        unframe_response(content, binary), secret=cred.secret_bytes, nonce=request.nonce
    )
    return response, opened


@pytest.mark.parametrize("binary", [False, True])
def test_a_first_sync_lists_every_bucket_in_a_chunked_answer(
    mapper: tuple[Served, Credential], binary: bool
) -> None:
    server, cred = mapper
    response, opened = _post(server, cred, SINCE_EVER, binary=binary)
    assert response.getheader("content-length") is None
    assert response.getheader("transfer-encoding") == "chunked"
    assert response.getheader("content-type") == (
        "application/octet-stream" if binary else "text/plain"
    )
    assert opened["status"] == "success"
    body = opened["body"]
    assert len(body) == BUCKET_COUNT
    assert len({entry["bucket_id"] for entry in body}) == BUCKET_COUNT
    assert all(set(entry) == {"bucket_id", "last_updated"} for entry in body)
    assert len({entry["last_updated"] for entry in body}) == 1  # init wrote every bucket


def test_the_sdk_reads_every_bucket_of_a_streamed_answer(
    mapper: tuple[Served, Credential],
) -> None:
    server, cred = mapper
    client = IdentityMapClient(server.base_url, cred.key, cred.secret)
    listed = client.get_identity_buckets(datetime(1970, 1, 1, tzinfo=UTC))
    assert listed.is_success()
    assert len(listed.buckets) == BUCKET_COUNT
    _, opened = _post(server, cred, SINCE_EVER, binary=False)
    assert {b.get_bucket_id() for b in listed.buckets} == {e["bucket_id"] for e in opened["body"]}


def test_an_answer_of_one_piece_keeps_its_content_length(
    mapper: tuple[Served, Credential],
) -> None:
    server, cred = mapper
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    response, opened = _post(server, cred, {"since_timestamp": tomorrow}, binary=False)
    assert response.getheader("transfer-encoding") is None
    assert response.getheader("content-length") is not None
    assert opened == {"status": "success", "body": []}
