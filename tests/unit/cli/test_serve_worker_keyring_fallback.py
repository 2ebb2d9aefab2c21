"""What a worker is handed of serve's keyring never shows a key byte.

serve hands each worker the keyring it holds (its JSON, over the pipe the worker starts from),
for the worker to start with while the keyring file cannot be used. The worker reads it into a
``Keyring`` before anything else holds it: the app factory uvicorn keeps is a ``partial``, whose
repr shows its arguments, and a keyring's repr names its versions only.
"""

from __future__ import annotations

import base64
import importlib
import os
from typing import Any

import pytest

from uid2_operator.domain.sealing import Keyring, generate_keyring

serve = importlib.import_module("uid2_operator.cli.serve")


class _Captured(Exception):
    def __init__(self, app: Any) -> None:
        super().__init__("captured")
        self.app = app


def test_the_worker_factory_holds_the_fallback_as_a_keyring(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keyring = generate_keyring(os.urandom)

    def capture(app: Any, **kwargs: Any) -> None:
        del kwargs
        raise _Captured(app)

    monkeypatch.setattr(serve, "_configure_logging", lambda level: None)
    monkeypatch.setattr(serve.uvicorn, "Config", capture)
    with pytest.raises(_Captured) as captured:
        serve._worker_main(
            "127.0.0.1", 0, None, "warning", os.getppid(), None, False, keyring.to_json()
        )
    factory = captured.value.app
    assert factory.keywords["keyring_fallback"] == keyring
    assert isinstance(factory.keywords["keyring_fallback"], Keyring)
    shown = repr(factory)
    raw = [keyring.kek(v) for v in keyring.versions] + [keyring.pepper]
    for form in [f(b) for b in raw for f in (lambda b: base64.b64encode(b).decode(), bytes.hex)]:
        assert form not in shown
