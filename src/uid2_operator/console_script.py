"""The ``uid2-operator`` console script.

Importing the command line (``uid2_operator.cli``) loads the web, storage and crypto stacks and
takes a second or so; a Ctrl-C in that time would end the process with a ``KeyboardInterrupt``
traceback, and a SIGTERM or SIGHUP by the signal's default action with no word, where every
other stop of a command is one clean line (and, under ``--json``, one JSON document). So while
it loads, every stop signal the process does not ignore interrupts it as Ctrl-C does; the
handlers in place before are put back once it has loaded, and the command takes the signals it
handles itself (``serve`` and ``init`` all three). This module is the entry point of the script
and of ``python -m uid2_operator``, and imports nothing heavy itself.
"""

from __future__ import annotations

import sys
from typing import Any

from uid2_operator.stop_signals import handle_stop_signals, restore_handlers

_INTERRUPTED_EXIT = 1  # as an interrupted command exits (``cli.output.FAILURE_EXIT``)
_INTERRUPTED_DOCUMENT = '{"error": {"code": "interrupted", "message": "aborted"}}\n'
"""What an interrupted command prints under ``--json`` (``cli.output.INTERRUPTED``)."""


def _interrupt(signum: int, frame: Any) -> None:
    del signum, frame
    raise KeyboardInterrupt


def main() -> None:
    try:
        previous = handle_stop_signals(_interrupt)
        try:
            from uid2_operator.cli import main as command_line  # noqa: PLC0415 (interruptible)
        finally:
            restore_handlers(previous)
    except KeyboardInterrupt:
        if "--json" in sys.argv[1:] and sys.stdout is not None:  # nothing is parsed yet
            try:  # best effort: a stdout that is gone must not turn this into a traceback
                sys.stdout.write(_INTERRUPTED_DOCUMENT)
                sys.stdout.flush()
            except OSError:
                pass
        sys.stderr.write("Error: aborted\n")
        sys.exit(_INTERRUPTED_EXIT)
    command_line()
