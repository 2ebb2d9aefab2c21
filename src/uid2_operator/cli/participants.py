"""``participant ...``: the sites that hold API keys, and the roles they may grant."""

from __future__ import annotations

import click

from uid2_operator.cli.output import emit, fields, note, table, when
from uid2_operator.cli.params import ASCII_INT
from uid2_operator.cli.runtime import actor, json_option, parse_list, services, wants_json
from uid2_operator.domain.participants import MAX_NAME_LENGTH, ParticipantType
from uid2_operator.services.credentials import MAX_LIST_LIMIT
from uid2_operator.services.views import ParticipantView

_TYPES = ", ".join(t.value for t in ParticipantType)


def _show(view: ParticipantView) -> None:
    fields(
        [
            ("site id", view.site_id),
            ("name", view.name),
            ("type", view.type),
            ("roles", ",".join(view.roles) or "-"),
            ("enabled", "yes" if view.enabled else "no"),
            ("contacts", ", ".join(view.contacts) or "-"),
            ("created", when(view.created_at_ms)),
            ("updated", when(view.updated_at_ms)),
        ]
    )


def _emit(as_json: bool, view: ParticipantView) -> None:
    emit(wants_json(as_json), view.to_json(), lambda: _show(view))


@click.group()
def participant() -> None:
    """Participants (sites)."""


@participant.command("create")
@click.option("--name", required=True, help=f"Display name, 1 to {MAX_NAME_LENGTH} characters.")
@click.option("--type", "type_", required=True, help=f"One of: {_TYPES}.")
@click.option(
    "--site-id",
    type=ASCII_INT,
    default=None,
    help="Default: one above the highest site id, or the lowest free id above 2 once the "
    "highest allowed is taken.",
)
@click.option("--roles", default=None, help="Roles its keys may hold, comma-separated.")
@click.option("--contact", "contacts", multiple=True, help="Contact e-mail (repeatable).")
@json_option
def create(  # noqa: PLR0917 (click passes every option positionally)
    name: str,
    type_: str,
    site_id: int | None,
    roles: str | None,
    contacts: tuple[str, ...],
    as_json: bool,
) -> None:
    """Create a participant."""
    with services() as svc:
        view = svc.credentials.create_participant(
            actor(),
            name=name,
            type=type_,
            site_id=site_id,
            roles=parse_list(roles),
            contacts=list(contacts),
        )
    _emit(as_json, view)


@participant.command("list")
@click.option(
    "--limit",
    type=ASCII_INT,
    default=None,
    help=f"At most this many participants (1-{MAX_LIST_LIMIT}; default: every one).",
)
@click.option(
    "--after",
    type=ASCII_INT,
    default=None,
    metavar="SITE_ID",
    help="Start after this site id: the last site id of the previous page.",
)
@json_option
def list_(limit: int | None, after: int | None, as_json: bool) -> None:
    """List participants, by site id.

    With --limit, a page at a time: fewer than --limit participants (none, too) means the last
    page; in text, a line on standard error names the --after of the next one.
    """
    with services() as svc:
        page = svc.credentials.participant_page(actor(), limit=limit, after=after)
    views = page.items
    emit(
        wants_json(as_json),
        [v.to_json() for v in views],
        lambda: table(
            ["SITE", "NAME", "TYPE", "ROLES", "ENABLED"],
            [
                [v.site_id, v.name, v.type, ",".join(v.roles) or "-", "yes" if v.enabled else "no"]
                for v in views
            ],
        ),
    )
    if page.more and not wants_json(as_json):
        note(f"More participants follow: --after {views[-1].site_id}")


@participant.command("show")
@click.argument("site_id", type=ASCII_INT)
@json_option
def show(site_id: int, as_json: bool) -> None:
    """Show one participant."""
    with services() as svc:
        view = svc.credentials.get_participant(actor(), site_id)
    _emit(as_json, view)


@participant.command("disable")
@click.argument("site_id", type=ASCII_INT)
@json_option
def disable(site_id: int, as_json: bool) -> None:
    """Disable a participant: every one of its keys stops working at once."""
    with services() as svc:
        view = svc.credentials.set_participant_enabled(actor(), site_id, False)
    _emit(as_json, view)


@participant.command("enable")
@click.argument("site_id", type=ASCII_INT)
@json_option
def enable(site_id: int, as_json: bool) -> None:
    """Enable a participant again."""
    with services() as svc:
        view = svc.credentials.set_participant_enabled(actor(), site_id, True)
    _emit(as_json, view)


@participant.command("set-roles")
@click.argument("site_id", type=ASCII_INT)
@click.option("--roles", required=True, help="Roles its keys may hold, comma-separated.")
@json_option
def set_roles(site_id: int, roles: str, as_json: bool) -> None:
    """Change the roles a participant may grant (refused while a live key holds a removed one)."""
    with services() as svc:
        view = svc.credentials.set_participant_roles(actor(), site_id, parse_list(roles))
    _emit(as_json, view)
