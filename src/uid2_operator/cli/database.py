"""``init`` and ``db upgrade``: preparing a data directory and its database."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import click

from uid2_operator.bootstrap import (
    InitKeyring,
    adopt_store_environment,
    check_environment,
    check_store_recordable,
    database_backend,
    discard_interrupted_keyring,
    keyring_for_init,
    load_keyring,
    make_keyring_file_private,
    open_services,
    record_environment,
    record_store_environment,
    require_initialised_database,
    require_unsealed_store,
    upgrade_database,
)
from uid2_operator.cli.output import echo, emit, fields, show_once_warning
from uid2_operator.cli.runtime import actor, json_option, load_settings, wants_json
from uid2_operator.domain.environments import Environment
from uid2_operator.errors import KekCheckMismatch
from uid2_operator.settings import EnvironmentSource, Settings
from uid2_operator.stop_signals import (
    StopRequest,
    handle_stop_signals,
    interruptions_quiet,
    restore_handlers,
    stop_signals_held,
)


@click.command()
@click.option(
    "--environment",
    type=click.Choice([e.value for e in Environment]),
    default=None,
    help="The deployment environment this data directory serves (default: UID2_ENVIRONMENT, "
    "else the one recorded at the first init, else the one the database records, else local).",
)
@json_option
def init(environment: str | None, as_json: bool) -> None:
    """Prepare the data directory, keyring, database and encryption material; safe to run again.

    The first run prints a bootstrap admin token (SUPER_USER) once. Outside prod it also creates a
    development keyring (mode 0600); prod needs a provisioned keyring (keyring.json in the data
    directory, UID2_KEYRING or UID2_KEYRING_FILE). The encryption material (master, refresh and
    site keysets with their keys, the salt table of UID2_SALT_BUCKETS buckets and the
    first-level salt) is created as ``serve`` would create it; a rerun creates only what is
    missing.

    The database records the environment too: a new data directory on a database another one
    initialised adopts it (unless --environment or UID2_ENVIRONMENT names one, which must
    match), and init refuses a database recorded for another environment. A database an earlier
    version initialised records none: init records this one, once the rest succeeded, unless
    the ids of the database's API keys and admin tokens name another.
    """

    shown = False

    def deliver(done: Initialised) -> None:
        nonlocal shown
        emit(wants_json(as_json), done.document, done.human)
        if done.token_issued:
            show_once_warning()
        shown = True

    # SIGTERM and SIGHUP interrupt init as SIGINT does: it then says what to do to finish.
    stop = StopRequest()
    previous = handle_stop_signals(stop.interrupt)
    try:
        with interruptions_quiet():
            initialise(environment, deliver, stop)
    except KeyboardInterrupt:
        # Once init has shown what it did, a stop signal held meanwhile (``initialise``) comes
        # too late to change it: init finished, and says so (exit status 0). Any earlier one,
        # reading the settings included, interrupts it.
        if not shown:
            raise
    finally:
        restore_handlers(previous, stop)


@dataclass(frozen=True, slots=True)
class Initialised:
    """What ``init`` did: its ``--json`` document, its readable form, and whether the document
    carries the bootstrap admin token (shown once)."""

    document: dict[str, object]
    human: Callable[[], None]
    token_issued: bool


class InitInterrupted(KeyboardInterrupt):
    """``init`` (or the one ``serve --init-if-new`` runs) was interrupted (SIGINT) before it
    finished: the data directory may hold a keyring and a database but not yet the environment
    file and the bootstrap admin token. Running init again finishes it (it creates only what is
    missing, and issues the token while none exists). A ``KeyboardInterrupt``, so it ends the
    command as any interruption does; the command line names the directory and what to do."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(str(data_dir))
        self.data_dir = data_dir


def initialise(
    environment: str | None,
    deliver: Callable[[Initialised], None],
    stop: StopRequest | None = None,
) -> None:
    """The work of ``init`` (``serve --init-if-new`` runs it too), printing nothing itself: what
    it did goes to ``deliver``, which shows it or keeps it for showing.

    Interrupted, it raises ``InitInterrupted``, except once it has issued the bootstrap admin
    token: the token exists only in this process until it is shown, so from the moment it is
    issued until ``deliver`` returns the stop signals are held (``stop_signals_held``), and one
    that came meanwhile takes effect then, as a plain ``KeyboardInterrupt``. Another error
    raised once ``stop`` interrupted it is the interruption's doing (``StopRequest.interrupted``)
    and ends it the same way."""
    settings = load_settings(environment, check=False)
    delivered = False

    def delivering(done: Initialised) -> None:
        nonlocal delivered
        deliver(done)
        delivered = True

    try:
        _initialise(settings, delivering)
    except (KeyboardInterrupt, Exception) as exc:
        interrupted = isinstance(exc, KeyboardInterrupt) or (stop is not None and stop.interrupted)
        if delivered or not interrupted:
            raise
        raise InitInterrupted(settings.data_dir.resolve()) from None


def _initialise(settings: Settings, deliver: Callable[[Initialised], None]) -> None:
    check_environment(settings)
    # Before anything else, so every step runs for the database's environment: a new data
    # directory adopts it, a mismatch is refused before any write.
    settings = adopt_store_environment(settings)
    adopted = settings.environment_source is EnvironmentSource.DATABASE
    discard_interrupted_keyring(settings)  # an empty file an interrupted init left: made anew
    make_keyring_file_private(settings)  # before it is read, so only what init cannot fix warns
    # os.path: False too for a path that cannot be looked at (too long, no permission), which
    # the steps below then refuse naming the file, where Path.exists would raise
    keyring_present = settings.keyring_json is not None or os.path.exists(settings.keyring_path)
    if keyring_present or settings.environment is Environment.PROD:
        load_keyring(settings)  # a missing or unusable keyring stops init before any write
    # A database an earlier version set up is refused, untouched: the checks above could not
    # read it, and upgrading it is `db upgrade`'s alone, once that version's processes stopped.
    revision = upgrade_database(settings, earlier=False)
    if not keyring_present:
        require_unsealed_store(settings)
    init_keyring = keyring_for_init(settings)
    try:
        _set_up(settings, init_keyring, revision, adopted, deliver)
    except KekCheckMismatch:
        if not init_keyring.created:
            raise
        # Another init set the empty database up meanwhile, with a keyring of its own: the one
        # this run made sealed nothing here. It stays: once it existed, another init (of another
        # database, through a shared keyring file) may have sealed under it.
        raise KekCheckMismatch(
            "Another init set up this database at the same time, with a keyring of its own: "
            f"copy that data directory's keyring file over {settings.keyring_path.absolute()} "
            "(made by this run, never used by this database), then run init again"
        ) from None


def _set_up(
    settings: Settings,
    init_keyring: InitKeyring,
    revision: str,
    adopted: bool,
    deliver: Callable[[Initialised], None],
) -> None:
    keyring = init_keyring.keyring
    with ExitStack() as held:
        opened = open_services(settings, keyring=keyring)
        try:
            # Refused before anything is sealed (a database upgraded just now was not read above).
            check_store_recordable(settings, opened.store)
            who = actor()
            # The material first: it refuses a keyring that does not open the store's, and a salt
            # bucket count that is not the table's. Then the database's environment (a new one:
            # this one), so a refused run records none, and the data directory's. The token last,
            # once nothing else can fail: a run that stops before it has not issued (and so cannot
            # lose) the token, which is shown only once.
            material = opened.material.initialise(who)
            record_store_environment(settings, opened.store)
            record_environment(settings)
            # From here the run finishes: the token, once issued, is held here alone until shown.
            held.enter_context(stop_signals_held())
            issued = opened.admin.bootstrap_token(who)
            backend = opened.store.backend
        finally:
            opened.close()
        data_dir = settings.data_dir.resolve()  # a relative one depends on where the command runs
        document: dict[str, object] = {
            "data_dir": str(data_dir),
            "database": backend,
            "environment": settings.environment.value,
            "environment_adopted": adopted,
            "schema_revision": revision,
            "keyring_created": init_keyring.created,
            "material_created": material.changed,
            "salt_buckets": material.bucket_count,
            # Always present: null when this run issued none (a rerun, or a database whose bootstrap
            # token an earlier init issued).
            "admin_token_id": None if issued is None else issued.token_id,
            "admin_token": None if issued is None else issued.token,
        }

        def human() -> None:
            fields(
                [
                    ("data directory", data_dir),
                    ("database", backend),
                    (
                        "environment",
                        f"{settings.environment.value} (adopted from the database)"
                        if adopted
                        else settings.environment.value,
                    ),
                    ("schema revision", revision),
                    ("keyring", "created (development)" if init_keyring.created else "present"),
                    (
                        "encryption material",
                        f"{'created' if material.salts_created else 'present'} "
                        f"({material.bucket_count} salt buckets)",
                    ),
                ]
            )
            if issued is not None:
                echo(f"bootstrap admin token ({issued.token_id}, SUPER_USER):")
                echo(issued.token)
            else:
                echo("already initialised; no new admin token")

        deliver(Initialised(document, human, issued is not None))


@click.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@json_option
def db_upgrade(as_json: bool) -> None:
    """Apply the shipped migrations (a no-op when the schema is current).

    Only to a database ``init`` set up: a data directory or database that does not exist, or a
    database with no schema at all, is refused and nothing is created (``init`` sets up a new
    one).
    """
    settings = load_settings(check=False)  # no keyring needed, nor the environment
    require_initialised_database(settings)
    revision = upgrade_database(settings)
    backend = database_backend(settings)
    emit(
        wants_json(as_json),
        {"schema_revision": revision, "database": backend},
        lambda: echo(f"{backend} schema at revision {revision}"),
    )
