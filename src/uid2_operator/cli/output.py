"""How commands print: one JSON document with ``--json``, readable text otherwise, and errors.

Errors are one line on stderr (and, with ``--json``, an ``{"error": ...}`` document on stdout,
on one line: after what ``serve --json`` printed before it failed, stdout is still one JSON
document per line),
with exit status 2 for usage and input errors and 1 for everything else (or the status a
``click.ClickException`` carries); never a traceback. The document's ``code`` says what kind of
error it was (``error_document``).
Error text passes through ``safe_message`` first: it is one bounded line, and anything shaped like
a credential or a base64/hex secret is masked, because the offending input may be a pasted key.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import click

from uid2_operator.domain.credential_text import mask_credential_text
from uid2_operator.errors import InvalidInput, MalformedCredential, UID2Error

USAGE_EXIT = 2
FAILURE_EXIT = 1
MAX_MESSAGE_LENGTH = 300
COMMAND_FAILED = "command_failed"
INTERRUPTED = "interrupted"
"""The ``--json`` error code of a command stopped by SIGINT (or SIGTERM while serve starts)."""

_CREDENTIAL = re.compile(r"(UID2|EUID)-[A-Z]-[A-Z]-[0-9]+-[A-Za-z0-9]{6}\.\S*")
_LONG_TOKEN = re.compile(r"[A-Za-z0-9+/_\-]{32,}={0,2}")
_REDACTED = "<redacted>"
_CUT = " ... "


def safe_message(text: str) -> str:
    """One line, at most ``MAX_MESSAGE_LENGTH`` characters (a longer one keeps its start and its
    end), credential-like runs masked."""
    line = " ".join(text.split())
    line = _CREDENTIAL.sub(_REDACTED, line)
    # Credential text by shape, whatever its characters (a random secret lacks a digit, say, about
    # once in 1,500): a key tail, a client secret padded or not, standard or URL-safe; then any
    # other long run that looks random.
    line = mask_credential_text(line, _REDACTED)
    line = _LONG_TOKEN.sub(_mask_random_looking, line)
    if len(line) > MAX_MESSAGE_LENGTH:
        # Cut in the middle: a message ends with its reason ("...: database or disk is full"),
        # and what makes one long is mostly a path or a value in between.
        head = (MAX_MESSAGE_LENGTH - len(_CUT)) // 2
        line = line[:head] + _CUT + line[-(MAX_MESSAGE_LENGTH - len(_CUT) - head) :]
    return line


def os_reason(error: BaseException) -> str:
    """An unexpected error as a message names it: its class, and for an operating-system error
    what the system says (never its file name or any other text, which may quote input), with
    the open-files limit when that is what ran out."""
    name = type(error).__name__
    if not isinstance(error, OSError) or not error.strerror:
        return name
    if error.errno in (errno.EMFILE, errno.ENFILE):
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return f"{name}: {error.strerror}; the open-files limit (ulimit -n) is {soft}"
    return f"{name}: {error.strerror}"


def _mask_random_looking(match: re.Match[str]) -> str:
    """Mask a long run mixing upper case, lower case and digits (base64 of random bytes always
    does; file paths and identifiers rarely do)."""
    run = match.group(0)
    mixed = (
        any(c.isupper() for c in run)
        and any(c.islower() for c in run)
        and any(c.isdigit() for c in run)
    )
    return _REDACTED if mixed else run


def exit_code_for(error: BaseException) -> int:
    if isinstance(error, click.UsageError | InvalidInput | MalformedCredential):
        return USAGE_EXIT
    return FAILURE_EXIT


def error_document(error: BaseException, message: str) -> dict[str, Any]:
    """``{"error": {"code", "message"}}``: the code is the error's own (``UID2Error``), ``usage``
    for a command line click refused, ``command_failed`` for a command that stopped with a
    reason it states (``click.ClickException``: a data directory in use, a port taken, ...), and
    ``internal_error`` only for what nothing anticipated."""
    if isinstance(error, UID2Error):
        code = error.code
    elif isinstance(error, click.UsageError):
        code = "usage"
    elif isinstance(error, click.ClickException):
        code = COMMAND_FAILED
    else:
        code = "internal_error"
    return {"error": {"code": code, "message": message}}


class OutputLost(click.ClickException):
    """Standard output could not be written: full, broken or closed. Whatever the command changed
    stays changed, so the message says that what it meant to show (perhaps a key, a secret or a
    token shown only this once) may be lost."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"could not write to standard output ({reason}); whatever the command changed is "
            "done, but what it printed may be lost, including anything shown only once (a key, "
            "a client secret, an admin token): rotate or reissue it"
        )


STDOUT_CLOSED = "standard output is closed"


def echo(text: str = "") -> None:
    """Print a line on standard output, or raise ``OutputLost`` (never an ``OSError``, and never
    silently nothing, as ``click.echo`` does when there is no standard output)."""
    if sys.stdout is None:
        raise OutputLost(STDOUT_CLOSED)
    try:
        click.echo(text)
    except (OSError, ValueError) as error:
        _discard(sys.stdout)
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "closed"
        raise OutputLost(reason) from None


def _discard(stream: Any) -> None:
    """Point a broken standard stream at /dev/null: what is left in its buffer then goes there,
    so that neither the next write nor the interpreter's own flush at exit fails a second time
    (which would print a traceback of its own, or end the process with exit status 120)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)


def note(text: str) -> None:
    """A line on standard error, written best effort (every line a command writes there: a
    hint, a warning, serve's ``stopped``, the ``Error:`` line): a full or broken standard error
    must not turn a command whose work is done, or a serve that stopped cleanly, into a
    failure, nor change a failing command's exit status or add a second JSON document to its
    standard output."""
    try:
        click.echo(text, err=True)
    except (OSError, ValueError):
        _discard(sys.stderr)


def print_json(document: Any) -> None:
    echo(json.dumps(document, indent=2, ensure_ascii=False))


def print_json_error(document: Any) -> None:
    """An error document (``error_document``), on one line; best effort: standard output may be
    what failed, and the error's line on stderr follows anyway."""
    with contextlib.suppress(OutputLost):
        echo(json.dumps(document, ensure_ascii=False))


def emit(as_json: bool, document: Any, human: Callable[[], None]) -> None:
    """Print ``document`` as JSON, or call ``human`` to print the readable form."""
    if as_json:
        print_json(document)
    else:
        human()


def when(ms: int | None) -> str:
    """Epoch milliseconds as an ISO-8601 UTC time, or '-'. A time no calendar date holds (years
    1-9999; a row changed outside uid2-operator can carry any 64-bit number) is shown as its
    number, so that a listing still shows every row rather than failing on one."""
    if ms is None:
        return "-"
    try:
        shown = datetime.fromtimestamp(ms / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        return f"{ms} ms since the epoch"
    return shown.isoformat(timespec="seconds").replace("+00:00", "Z")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A plain left-aligned table; an empty one prints only '(none)'."""
    cells = [[str(c) for c in row] for row in rows]
    if not cells:
        echo("(none)")
        return
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def fields(pairs: Iterable[tuple[str, object]]) -> None:
    """``label: value`` lines, labels aligned."""
    items = [(label, "-" if value is None else str(value)) for label, value in pairs]
    width = max((len(label) for label, _ in items), default=0)
    for label, value in items:
        echo(f"{label.ljust(width)}  {value}")


def show_once_warning() -> None:
    note("Store these now: they are shown only this once and cannot be retrieved later.")
