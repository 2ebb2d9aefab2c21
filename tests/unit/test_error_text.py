"""``error_text``: how a log line names an error without its text.

A driver's error text holds the statement's parameters; ``described`` names such an error by its
class and the frames it came through, a project error by its own message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import OperationalError

from uid2_operator.error_text import described, where
from uid2_operator.errors import KeyringError

MARKER = "raw-uid-marker"


def _driver_error() -> OperationalError:
    return OperationalError("SELECT ?", (MARKER,), Exception("database is locked"))


def _raise(error: BaseException) -> None:
    raise error


def _project_function() -> Callable[[BaseException], None]:
    """A function whose frames read as the project's (its file is under ``uid2_operator``), that
    passes its argument to ``_raise``."""
    namespace: dict[str, Any] = {"_raise": _raise}
    source = "def relay(error):\n    _raise(error)\n"
    exec(compile(source, f"{os.sep}uid2_operator{os.sep}relay.py", "exec"), namespace)  # noqa: S102
    relay: Callable[[BaseException], None] = namespace["relay"]
    return relay


RELAY = _project_function()


def _caught(error: BaseException) -> BaseException:
    try:
        RELAY(error)
    except BaseException as caught:  # the error under test, whatever it is
        return caught
    raise AssertionError("not raised")


def test_an_error_not_of_the_project_is_named_by_class_and_frames_never_its_text() -> None:
    error = _caught(_driver_error())
    assert MARKER in str(error)
    text = described(error)
    assert MARKER not in text
    assert re.fullmatch(
        r"OperationalError at test_error_text\.py:\d+ _raise < relay\.py:2 relay", text
    )


def test_a_project_error_is_named_by_its_message() -> None:
    error = _caught(KeyringError("The keyring file /srv/a is unreadable\nmore"))
    assert described(error) == "KeyringError: The keyring file /srv/a is unreadable"


def test_an_error_raised_again_reads_the_same_at_every_raise() -> None:
    """The same object raised through the same calls again and again (its traceback keeps every
    raise's frames) is described the same way each time: a line logged once per change of the
    description is not logged at every raise."""
    error = _driver_error()
    first = where(_caught(error))
    for _ in range(5):
        assert where(_caught(error)) == first
    assert re.fullmatch(r"test_error_text\.py:\d+ _raise < relay\.py:2 relay", first), first
