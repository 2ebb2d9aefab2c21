"""The ``uid2-operator`` console script.

Importing the command line (``uid2_operator.cli``) loads the web, storage and crypto stacks and
takes a second or so; a Ctrl-C in that time would end the process with a ``KeyboardInterrupt``
traceback, where every other stop of a command is one clean line. This module is the script's
entry point and imports nothing heavy itself.
"""

from __future__ import annotations

import sys

_INTERRUPTED_EXIT = 1  # as an interrupted command exits (``cli.output.FAILURE_EXIT``)


def main() -> None:
    try:
        from uid2_operator.cli import main as command_line  # noqa: PLC0415 (interruptible)
    except KeyboardInterrupt:
        sys.stderr.write("Error: aborted\n")
        sys.exit(_INTERRUPTED_EXIT)
    command_line()
