"""The ``uid2-operator`` console script.

Importing the command line (``uid2_operator.cli``) loads the web, storage and crypto stacks and
takes a second or so; a Ctrl-C in that time would end the process with a ``KeyboardInterrupt``
traceback, and a SIGTERM or SIGHUP by the signal's default action with no word, where every
other stop of a command is one clean line (and, under ``--json``, one JSON document). So a
Ctrl-C, SIGTERM or SIGHUP the process does not ignore ends it that way: such a signal is noted
while it loads and acted on once it has loaded, before the command starts. Nothing is raised
from the handler: the exception could land in a garbage-collector callback, where it is dropped
and the command would run, and a ``KeyboardInterrupt`` leaving code that an ``exec`` runs (as
``dataclasses`` does at import) makes CPython end the process by SIGINT at exit, whatever exit
status it was given. The handlers in place before are put back first, and the command takes the
signals it handles itself (``serve`` and ``init`` all three).
This module is the entry point of the script and of ``python -m uid2_operator``, and imports
nothing heavy itself.
"""

from __future__ import annotations

import signal
import sys

TYPE_CHECKING = False  # typing itself takes milliseconds to import, before the handlers are in
if TYPE_CHECKING:
    from typing import Any, NoReturn

_INTERRUPTED_EXIT = 1  # as an interrupted command exits (``cli.output.FAILURE_EXIT``)
_INTERRUPTED_DOCUMENT = '{"error": {"code": "interrupted", "message": "aborted"}}\n'
"""What an interrupted command prints under ``--json`` (``cli.output.INTERRUPTED``)."""
_NOTED_WHILE_LOADING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def main() -> None:
    noted: list[int] = []

    def note(signum: int, frame: Any) -> None:
        del frame
        noted.append(signum)

    previous = {
        signum: signal.signal(signum, note)
        for signum in _NOTED_WHILE_LOADING
        if signal.getsignal(signum) is not signal.SIG_IGN
    }
    try:
        try:
            from uid2_operator.cli import main as command_line  # noqa: PLC0415 (interruptible)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    except KeyboardInterrupt:
        _aborted()
    if noted:
        _aborted()
    command_line()


def _aborted() -> NoReturn:
    if "--json" in sys.argv[1:] and sys.stdout is not None:  # nothing is parsed yet
        try:  # best effort: a stdout that is gone must not turn this into a traceback
            sys.stdout.write(_INTERRUPTED_DOCUMENT)
            sys.stdout.flush()
        except OSError:
            pass
    sys.stderr.write("Error: aborted\n")
    sys.exit(_INTERRUPTED_EXIT)
