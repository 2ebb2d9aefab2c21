"""What every command shares: the global options, the settings, the services and the actor.

The CLI acts as ``cli:<account>``. The account is the operating-system account of the process's
real uid, looked up in the passwd database (``uid<N>`` when the uid has none). ``$LOGNAME``,
``$USER`` and the like are not consulted: anyone can set them to anything, so they name whoever
the caller wants blamed, and the name lands in hash-chained audit rows that cannot be scrubbed.
Login and ``su`` set them to the account anyway, so an ordinary session records the same name as
before. One exception, for the human behind ``sudo``: run as root, the account named by
``$SUDO_USER`` is recorded instead of ``root`` when it is a safe name with a passwd entry (only
root or sudo can set it for a root process, and root could write any row it liked anyway). A
process of another uid ignores ``$SUDO_USER`` (``sudo -u <account>`` records that account), as
that account could set it itself to name someone else.

Whatever its source, the recorded name is at most 64 characters of ``[A-Za-z0-9._@-]`` that hold
no credential text (``credential_text``), as the admin API accepts a caller's request id: nothing
that could forge a line of ``audit list`` output, no non-UTF-8 text the store could not encode, no
API key or admin token put there by mistake. An unsafe account name is recorded as ``uid<N>``;
the command still runs.
"""

from __future__ import annotations

import os
import pwd
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from uid2_operator.bootstrap import Services, check_environment, open_services
from uid2_operator.domain.credential_text import recordable
from uid2_operator.domain.environments import Environment
from uid2_operator.errors import KeyringMissing
from uid2_operator.services.context import Actor
from uid2_operator.settings import KEYRING_FILE, Settings

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class GlobalOptions:
    data_dir: str
    database_url: str | None
    json: bool = False


def global_options() -> GlobalOptions:
    ctx = click.get_current_context()
    obj = ctx.find_object(GlobalOptions)
    return obj if obj is not None else GlobalOptions(data_dir="./data", database_url=None)


_JSON_CHOSEN: ContextVar[bool | None] = ContextVar("uid2_operator_json_chosen", default=None)
"""Whether this invocation prints JSON, once its command's options are parsed; None before."""


def json_option(command: F) -> F:
    """``--json`` on a command; the same flag before the subcommand counts too."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        is_eager=True,  # noted before another option's value can fail to convert
        callback=_note_json_choice,
        help="Print one JSON document instead of text.",
    )(command)


def _note_json_choice(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    given = ctx.find_object(GlobalOptions)  # the group's options are in place by now
    _JSON_CHOSEN.set(value or (given is not None and given.json))
    return value


@contextmanager
def json_choice(argv: Sequence[str]) -> Iterator[Callable[[], bool]]:
    """For one invocation of the CLI with ``argv``: a function saying whether its errors are
    to be printed as JSON too. The flags as parsed, once the command's were (``--json`` may
    be another option's value: ``--name --json``); before that, whether ``--json`` is among
    the arguments at all (the parse failed: no flag is known yet)."""
    token = _JSON_CHOSEN.set(None)
    try:
        yield lambda: _chosen_or("--json" in argv)
    finally:
        _JSON_CHOSEN.reset(token)


def _chosen_or(fallback: bool) -> bool:
    chosen = _JSON_CHOSEN.get()
    return fallback if chosen is None else chosen


def wants_json(as_json: bool) -> bool:
    return as_json or global_options().json


def load_settings(environment: str | None = None, *, check: bool = True) -> Settings:
    """The settings of this invocation.

    With ``check`` (every command that works on an initialised data directory, so every one but
    ``init``, ``db upgrade`` and ``serve``, which check what applies to them themselves), before
    the command reads or writes anything: a data directory recorded for another environment is
    refused (``check_environment``, as ``init`` refuses it), and a keyring missing from the data
    directory is reported as ``require_data_directory`` says. A database recorded for another
    environment is refused when the store opens (``open_services`` and
    ``keyring_rotation_service`` call ``check_store_environment``), before any write.
    """
    options = global_options()
    settings = Settings.from_env(
        data_dir=options.data_dir,
        database_url=options.database_url,
        environment=environment,
    )
    if check:
        check_environment(settings)
        require_data_directory(settings)
    return settings


def require_data_directory(settings: Settings) -> None:
    """Refuse (``KeyringMissing``) a keyring that should be in the data directory and is not.

    A relative ``--data-dir`` (``./data`` by default) is relative to where the command runs: run
    from elsewhere than ``serve``, a command looks in a directory that is not serve's. The
    message names the directory it looked in (its absolute path) and how to name the right one
    before it suggests ``init``, which would set up a new, unrelated data directory there (it is
    kept short: ``safe_message`` cuts a message at 300 characters). Nothing to say for a keyring
    given as UID2_KEYRING or UID2_KEYRING_FILE: loading it says what is wrong.
    """
    if settings.keyring_json is not None or settings.keyring_file is not None:
        return
    if settings.keyring_path.exists():
        return
    data_dir = settings.data_dir.resolve()
    elsewhere = (
        "Name the one serve uses with --data-dir (or UID2_DATA_DIR), or run from the directory "
        "serve runs in"
    )
    if not data_dir.is_dir():
        raise KeyringMissing(
            f"No keyring: there is no data directory {data_dir}. {elsewhere}; "
            "`uid2-operator init` sets up a new one"
        )
    if settings.environment is Environment.PROD:  # init never creates a keyring in prod
        otherwise = "prod needs a provisioned keyring (UID2_KEYRING or UID2_KEYRING_FILE)"
    else:
        otherwise = "else set UID2_KEYRING or UID2_KEYRING_FILE, or run init to create one"
    raise KeyringMissing(
        f"No keyring: the data directory {data_dir} has no {KEYRING_FILE}. {elsewhere}; {otherwise}"
    )


@contextmanager
def services(settings: Settings | None = None) -> Iterator[Services]:
    """The services over the configured store; ``settings`` (default ``load_settings()``, which
    checks the data directory) must be checked by the caller when given."""
    opened = open_services(settings or load_settings())
    try:
        yield opened
    finally:
        opened.close()


_SAFE_ACCOUNT_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}", re.ASCII)


def safe_account_name(name: str | None) -> str | None:
    """``name`` if it may be recorded in the audit trail, else ``None``: 1 to 64 characters of
    ``[A-Za-z0-9._@-]`` holding no credential text."""
    return recordable(name, _SAFE_ACCOUNT_NAME)


def _sudo_user(environ: Mapping[str, str]) -> str | None:
    """The account ``sudo`` was run from, if ``$SUDO_USER`` is a safe name with a passwd entry."""
    name = safe_account_name(environ.get("SUDO_USER"))
    if name is None:
        return None
    try:
        pwd.getpwnam(name)
    except KeyError:
        return None
    return name


def os_user(uid: int | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The account recorded for a CLI command (see the module's description): by default that of
    this process's real uid and environment."""
    uid = os.getuid() if uid is None else uid
    environ = os.environ if environ is None else environ
    if uid == 0:
        sudo_user = _sudo_user(environ)
        if sudo_user is not None:
            return sudo_user
    try:
        name: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:  # no passwd entry (some containers run under an arbitrary uid)
        name = None
    return safe_account_name(name) or f"uid{uid}"


def actor() -> Actor:
    """The CLI acts as ``cli:<account>``, one request id per invocation."""
    return Actor(id=f"cli:{os_user()}", request_id=uuid.uuid4().hex, source="cli")


def parse_list(value: str | None) -> list[str]:
    """``"A, B,,C"`` -> ``["A", "B", "C"]``; None -> []. Only spaces are trimmed here: a tab or
    a line break is left for the service to refuse, as the admin API refuses it."""
    if value is None:
        return []
    return [part.strip(" ") for part in value.split(",") if part.strip(" ")]
