"""Constants shared by the service tests (a unique module name, importable from the tests)."""

from __future__ import annotations

from collections.abc import Callable

from uid2_operator.domain.sealing import Keyring
from uid2_operator.services.context import Actor
from uid2_operator.services.credentials import CredentialService

ACTOR = Actor("cli:tester", request_id="req-1", source="cli")
KEYRING = Keyring({1: bytes(range(64, 96))}, 1, bytes(range(1, 33)))
MakeService = Callable[..., CredentialService]
