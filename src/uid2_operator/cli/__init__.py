"""The ``uid2-operator`` command line. Commands are registered explicitly below.

Every failure ends the same way (see ``OperatorGroup.main``): one line on stderr, with ``--json``
also an ``{"error": ...}`` document on stdout, exit status 2 for usage and input errors and 1
otherwise, and never a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from uid2_operator import __version__
from uid2_operator.cli.admin_tokens import admin_token
from uid2_operator.cli.audit import audit
from uid2_operator.cli.database import InitInterrupted, db, init
from uid2_operator.cli.keypairs import PARTICIPANT_COMMANDS, keypair
from uid2_operator.cli.keyring import keyring
from uid2_operator.cli.keys import key
from uid2_operator.cli.material import keys, optout, salts
from uid2_operator.cli.output import (
    FAILURE_EXIT,
    INTERRUPTED,
    STDOUT_CLOSED,
    USAGE_EXIT,
    error_document,
    exit_code_for,
    note,
    os_reason,
    print_json_error,
    safe_message,
)
from uid2_operator.cli.participants import participant
from uid2_operator.cli.runtime import GlobalOptions, json_choice
from uid2_operator.cli.serve import serve
from uid2_operator.cli.sharing import sharing
from uid2_operator.errors import UID2Error

logger = logging.getLogger(__name__)


class OperatorGroup(click.Group):
    """A group whose errors are always one clean line (and a JSON document under ``--json``)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if sys.stdout is None:
            # File descriptor 1 is closed: what a command prints (perhaps a key or a secret shown
            # only once) would vanish without a word, so nothing runs.
            note(
                f"Error: {STDOUT_CLOSED}: nothing this command prints could be read; "
                "redirect it to a file, or to /dev/null to discard it"
            )
            if standalone_mode:
                sys.exit(FAILURE_EXIT)
            return FAILURE_EXIT
        with json_choice(argv) as as_json:
            code = self._run(argv, prog_name, complete_var, as_json, **extra)
        if standalone_mode:
            sys.exit(code)
        return code

    def invoke(self, ctx: click.Context) -> Any:
        # click turns an interruption into ``Abort`` too, but writes an empty line to stderr
        # first; the interruption's one line (``_run``) is all it prints.
        try:
            return super().invoke(ctx)
        except (EOFError, KeyboardInterrupt) as interruption:
            raise click.exceptions.Abort from interruption

    def _run(
        self,
        argv: list[str],
        prog_name: str | None,
        complete_var: str | None,
        as_json: Callable[[], bool],
        **extra: Any,
    ) -> int:
        try:
            result = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
            return result if isinstance(result, int) else 0
        except click.exceptions.NoArgsIsHelpError as error:  # a bare group: show its help
            note(error.format_message())
            if as_json():  # still one document to read
                print_json_error({"error": {"code": "usage", "message": "Missing command."}})
            return USAGE_EXIT
        except click.exceptions.Abort as error:
            message = _aborted(error)
            if as_json():
                print_json_error({"error": {"code": INTERRUPTED, "message": message}})
            note(f"Error: {message}")
            return FAILURE_EXIT
        except (click.ClickException, UID2Error) as error:
            return _report(error, as_json())
        except Exception as error:  # never a traceback; the type is enough to triage
            logger.debug("unexpected error", exc_info=True)
            return _report(error, as_json(), f"internal error ({os_reason(error)})")


def _aborted(error: click.exceptions.Abort) -> str:
    """What an interrupted command says; an interrupted ``init`` says how to finish it."""
    cause = error.__cause__
    if isinstance(cause, InitInterrupted):
        return (
            f"interrupted before init finished setting up the data directory {cause.data_dir}; "
            "run `uid2-operator init` (or `serve --init-if-new`) again with the same options to "
            "finish it"
        )
    return "aborted"


def _report(error: BaseException, as_json: bool, text: str | None = None) -> int:
    if text is None:
        text = error.format_message() if isinstance(error, click.ClickException) else str(error)
    message = safe_message(text)
    code = exit_code_for(error)
    if isinstance(error, click.ClickException) and not isinstance(error, click.UsageError):
        code = error.exit_code
    if as_json:
        print_json_error(error_document(error, message))
    note(f"Error: {message}")
    return code


@click.group(cls=OperatorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="uid2-operator")
@click.option(
    "--data-dir",
    envvar="UID2_DATA_DIR",
    default="./data",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the embedded SQLite database and local key files live.",
)
@click.option(
    "--database-url",
    envvar="UID2_DATABASE_URL",
    default=None,
    help="PostgreSQL URL; the embedded SQLite file under --data-dir is used when absent.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document (any command accepts it)."
)
@click.pass_context
def main(ctx: click.Context, data_dir: str, database_url: str | None, as_json: bool) -> None:
    """UID2 Operator Service and credential administration."""
    ctx.obj = GlobalOptions(data_dir=data_dir, database_url=database_url, json=as_json)


main.add_command(serve)
main.add_command(init)
main.add_command(db)
main.add_command(participant)
main.add_command(key)
main.add_command(audit)
main.add_command(admin_token)
main.add_command(keys)
main.add_command(salts)
main.add_command(optout)
main.add_command(sharing)
main.add_command(keypair)
main.add_command(keyring)
for _command in PARTICIPANT_COMMANDS:
    participant.add_command(_command)
