"""Constants shared by the service tests (a unique module name, importable from the tests)."""

from __future__ import annotations

from collections.abc import Callable

from uid2_operator.clock import Clock
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.sealing import Keyring
from uid2_operator.services.context import Actor
from uid2_operator.services.credentials import CredentialService
from uid2_operator.services.material import MaterialService
from uid2_operator.services.snapshot import Lifetimes
from uid2_operator.services.snapshot_loader import Loaded, load_snapshot, operator_identity
from uid2_operator.storage.interface import Store

ACTOR = Actor("cli:tester", request_id="req-1", source="cli")
KEYRING = Keyring({1: bytes(range(64, 96))}, 1, bytes(range(1, 33)))
MakeService = Callable[..., CredentialService]


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
