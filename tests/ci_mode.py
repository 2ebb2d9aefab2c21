"""What a test does when something it needs is missing (PostgreSQL, the SDK's sdist): skip on a
developer's machine, fail under CI, so that CI can never pass by skipping.

CI is any value of the ``CI`` variable but empty, ``0``, ``false``, ``no`` or ``off`` (in any
case): CI services set it to ``true``, ``True`` or ``1``, and ``.ci/run`` sets ``true`` when
nothing did.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

_NOT_CI = frozenset({"", "0", "false", "no", "off"})


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in _NOT_CI


def unavailable(message: str) -> NoReturn:
    """Skip the test for ``message``, or fail it under CI."""
    if under_ci():
        pytest.fail(message)
    pytest.skip(message)
