"""``keys rotate``, ``salts rotate`` and ``optout add``: the service-held material.

``init`` creates the material; each command here does its one change in one unit of work and
refuses, cleanly, a store where ``init`` never ran. Errors end as one line on stderr (and an
``{"error": ...}`` document under ``--json``) with a non-zero status, whether these groups run
under the main command or on their own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from uid2_operator.bootstrap import open_services
from uid2_operator.cli.output import (
    echo,
    emit,
    error_document,
    exit_code_for,
    fields,
    note,
    print_json_error,
    safe_message,
    table,
    when,
)
from uid2_operator.cli.params import AsciiFloatRange
from uid2_operator.cli.runtime import actor, json_option, load_settings, services, wants_json
from uid2_operator.domain.keysets import DAY_S
from uid2_operator.errors import UID2Error
from uid2_operator.serve_settings import ServeSettings
from uid2_operator.services.material import DEFAULT_SALT_FRACTION, MaterialService
from uid2_operator.wire.identity import InputKind

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def material_service() -> Iterator[MaterialService]:
    with services() as opened:
        yield opened.material


def reported(command: F) -> F:
    """Turn a service refusal into the CLI's error form (one safe line, exit status 2 or 1)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UID2Error as error:
            message = safe_message(str(error))
            if wants_json(bool(kwargs.get("as_json"))):
                print_json_error(error_document(error, message))
            note(f"Error: {message}")
            raise click.exceptions.Exit(exit_code_for(error)) from None

    return run  # type: ignore[return-value]


# ------------------------------------------------------------------------------------ keys


@click.group("keys")
def keys() -> None:
    """Encryption keys (master, refresh and site keysets) that seal tokens."""


@keys.command("rotate")
@json_option
@reported
def rotate_keys(as_json: bool) -> None:
    """Create the keys the rotation schedule asks for now (run it at least daily), then delete
    the keys that expired longer ago than UID2_EXPIRED_KEY_RETENTION_S (default: the longest
    token lifetime plus a day), or than the longest token lifetime a serve recorded in the store
    plus a day, whichever is longer. The retention used is shown (``retention_s``).

    A participant created since the last run gets its default keyset and first key in the same
    transaction. Refused before ``init``.
    """
    settings = load_settings()
    retention = ServeSettings.from_env().key_retention_s(settings.environment)
    opened = open_services(settings, expired_key_retention_s=retention)
    try:
        result = opened.material.rotate_keys(actor=actor())
    finally:
        opened.close()
    created = result.created

    def human() -> None:
        for keyset in result.keysets_created:
            echo(f"created keyset {keyset.keyset_id} for site {keyset.site_id}")
        if created:
            table(
                ("key id", "keyset", "site", "activates", "expires"),
                [
                    (
                        k.key_id,
                        k.keyset_id,
                        k.site_id,
                        when(k.activates * 1000),
                        when(k.expires * 1000),
                    )
                    for k in created
                ],
            )
        else:
            echo("No key was due for rotation.")
        count = len(result.purged)
        used = retention if result.retention_s is None else result.retention_s
        echo(
            f"Purged {count} key{'' if count == 1 else 's'} that expired at least "
            f"{_duration(used)} ago."
        )

    emit(wants_json(as_json), result.to_json(), human)


def _duration(seconds: int) -> str:
    """Whole days as days, anything else in seconds."""
    if seconds % DAY_S == 0:
        days = seconds // DAY_S
        return f"{days} day{'' if days == 1 else 's'}"
    return f"{seconds} s"


# ----------------------------------------------------------------------------------- salts


@click.group("salts")
def salts() -> None:
    """The salt buckets raw UIDs are derived with."""


@salts.command("rotate")
@click.option(
    "--fraction",
    type=AsciiFloatRange(0, 1, min_open=True),
    default=DEFAULT_SALT_FRACTION,
    show_default=True,
    help="Share of the buckets to rotate (only buckets whose refresh time has come rotate).",
)
@json_option
@reported
def rotate_salts(fraction: float, as_json: bool) -> None:
    """Give a random share of the buckets new salts, keeping the old ones as previous.

    The new salts take effect at the first UTC midnight more than an hour away: until then every
    raw UID stays the one mappers were given.
    """
    with material_service() as service:
        result = service.rotate_salts(fraction, actor())

    def human() -> None:
        fields(
            [
                ("rotated", f"{result.rotated} of {result.bucket_count} buckets"),
                ("version", result.version),
                ("at", when(result.at_ms)),
                ("takes effect", when(result.effective_at_ms)),
            ]
        )

    emit(wants_json(as_json), result.to_json(), human)


# ---------------------------------------------------------------------------------- optout

_KIND_OPTIONS = (
    ("email", InputKind.EMAIL),
    ("phone", InputKind.PHONE),
    ("email_hash", InputKind.EMAIL_HASH),
    ("phone_hash", InputKind.PHONE_HASH),
)


@click.group("optout")
def optout() -> None:
    """Opt-out records."""


# Each option is repeatable only so that a second value is refused rather than silently kept in
# place of the first (click's way with a single-value option): the command opts out one identity.
@optout.command("add")
@click.option("--email", multiple=True, help="An email address.")
@click.option("--phone", multiple=True, help="A phone number in E.164 form (+ and digits).")
@click.option("--email-hash", multiple=True, help="SHA-256 of a normalised email (base64 or hex).")
@click.option("--phone-hash", multiple=True, help="SHA-256 of a phone number (base64 or hex).")
@json_option
@reported
def add_optout(
    email: tuple[str, ...],
    phone: tuple[str, ...],
    email_hash: tuple[str, ...],
    phone_hash: tuple[str, ...],
    as_json: bool,
) -> None:
    """Opt an identity out: tokens and mappings for it stop at the next snapshot."""
    given = {"email": email, "phone": phone, "email_hash": email_hash, "phone_hash": phone_hash}
    chosen = [(kind, value) for name, kind in _KIND_OPTIONS for value in given[name]]
    if len(chosen) != 1:
        raise click.UsageError(
            "Give exactly one of --email, --phone, --email-hash, --phone-hash, once: "
            "the command opts out one identity"
        )
    kind, value = chosen[0]
    with material_service() as service:
        result = service.add_optout(kind, value, actor())

    def human() -> None:
        fields(
            [
                ("identity type", result.identity_type),
                ("opted out since", when(result.timestamp_ms)),
                ("already opted out", "yes" if result.already_opted_out else "no"),
            ]
        )

    emit(wants_json(as_json), result.to_json(), human)


COMMANDS = (keys, salts, optout)
"""The groups to register on the main command."""
