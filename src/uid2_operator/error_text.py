"""How a log line names an error it cannot show whole.

A database driver's error text carries the statement's parameters (raw UIDs, first-level hashes,
sealed secrets), and a traceback repeats it; so a line about a failure names the project's own
errors by their class and message, and any other by its class and the frames it came through.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from uid2_operator.errors import UID2Error

DETAIL_CHARS: Final = 300
"""How much of a project error's first line a log line keeps."""


def described(error: BaseException) -> str:
    """An error as a log line may name it: a project error by its class and its own message
    (first line), any other by its class and the frames it came through, never its text (a
    database driver's holds the statement's parameters)."""
    if isinstance(error, UID2Error):
        lines = error.detail.splitlines()
        return f"{type(error).__name__}: {lines[0][:DETAIL_CHARS] if lines else ''}"
    return f"{type(error).__name__} at {where(error)}"


def where(error: BaseException) -> str:
    """The frames ``error`` came through, innermost first, as ``file:line function``: those of
    this project and the one that raised it, without any value, each place once.

    An error raised again (the same object: a stored failure, an item an iterator keeps
    raising) keeps every earlier raise's frames in its traceback; named by them all, it would
    read differently, and longer, at every raise, so a line logged only when its error's
    description changes would be logged every time."""
    frames: list[traceback.FrameSummary] = []
    places: set[tuple[str, int | None, str]] = set()
    for frame in traceback.extract_tb(error.__traceback__):
        place = (frame.filename, frame.lineno, frame.name)
        if place not in places:
            places.add(place)
            frames.append(frame)
    shown = [
        frame
        for n, frame in enumerate(frames)
        if n == len(frames) - 1 or f"{os.sep}uid2_operator{os.sep}" in frame.filename
    ]
    return " < ".join(
        f"{Path(frame.filename).name}:{frame.lineno} {frame.name}" for frame in reversed(shown)
    )


def some_of(ids: Sequence[object], shown: int) -> str:
    """``ids`` for a message or a log line: the first ``shown`` of them, the rest counted."""
    more = len(ids) - shown
    return ", ".join(str(i) for i in ids[:shown]) + (f" and {more} more" if more > 0 else "")
