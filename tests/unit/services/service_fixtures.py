"""Constants and helpers shared by the service tests (a unique module name, importable from the
tests)."""

from __future__ import annotations

import os
from collections.abc import Callable

from uid2_operator.clock import Clock
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.sealing import Keyring
from uid2_operator.errors import EnvelopeDecryptionFailed
from uid2_operator.services.context import Actor
from uid2_operator.services.credentials import CredentialService
from uid2_operator.services.material import MaterialService
from uid2_operator.services.snapshot import Lifetimes
from uid2_operator.services.snapshot_loader import Loaded, load_snapshot, operator_identity
from uid2_operator.storage.interface import Store
from uid2_operator.wire.encoding import b64decode
from uid2_operator.wire.envelope import TimestampWindow, parse_request, seal_request
from uid2_operator.wire.scope import IdentityScope

ACTOR = Actor("cli:tester", request_id="req-1", source="cli")
KEYRING = Keyring({1: bytes(range(64, 96))}, 1, bytes(range(1, 33)))
MakeService = Callable[..., CredentialService]
WINDOW = TimestampWindow(max_past_ms=60_000, max_future_ms=60_000)


def opens(svc: CredentialService, key_text: str, secret_text: str, now_ms: int) -> bool:
    """Seal a request with ``secret_text`` as an SDK would; can the lookup's secrets open it?"""
    body = seal_request(
        b'{"email":"a@example.com"}',
        secret=b64decode(secret_text),
        now_ms=now_ms,
        nonce=os.urandom(8),
        random=os.urandom,
    )
    for secret in svc.resolve_client(key_text).secrets:
        try:
            parse_request(
                body,
                octet_stream=True,
                secret=secret,
                now_ms=now_ms,
                window=WINDOW,
                scope=IdentityScope.UID2,
            )
        except EnvelopeDecryptionFailed:
            continue
        return True
    return False


def load_local_snapshot(
    store: Store, material: MaterialService, clock: Clock, previous: Loaded | None = None
) -> Loaded:
    """What a local-environment worker loads from ``store`` (after ``previous``, if given)."""
    return load_snapshot(
        store,
        KEYRING,
        material,
        identity=operator_identity(Environment.LOCAL),
        lifetimes=Lifetimes(),
        generation=1 if previous is None else previous.snapshot.generation + 1,
        now_ms=clock.now_ms(),
        previous=previous,
    )
