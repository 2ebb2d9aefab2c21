"""``sharing set|show``: who besides a participant may decrypt the tokens it produces.

The choice is explicit: ``--owner-only``, ``--all-bidders`` (every ID_READER caller, the
reference's default for site keysets) or a list (``--allow`` site ids and/or ``--allow-types``
participant types). Narrowing the choice rotates the keyset's keys unless ``--no-rotate`` is given,
so keys a removed reader already downloaded stop opening new tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from uid2_operator.cli.output import emit, fields
from uid2_operator.cli.params import ASCII_INT, INTEGER_TEXT
from uid2_operator.cli.runtime import actor, json_option, parse_list, services, wants_json
from uid2_operator.domain.keysets import SharingMode
from uid2_operator.errors import InvalidInput
from uid2_operator.services.sharing import SharingService, SharingView

MAX_SITE_ID_TEXT = 12


@contextmanager
def sharing_service() -> Iterator[SharingService]:
    """The sharing use cases over the configured store (closed afterwards)."""
    with services() as opened:
        yield opened.sharing


def _site_ids(text: str | None) -> list[int]:
    ids: list[int] = []
    for part in parse_list(text):
        if len(part) > MAX_SITE_ID_TEXT or INTEGER_TEXT.fullmatch(part) is None:
            raise InvalidInput("--allow takes site ids (integers) separated by commas")
        ids.append(int(part))
    return ids


def _emit(as_json: bool, view: SharingView) -> None:
    def human() -> None:
        policy = view.policy
        fields(
            [
                ("site id", view.site_id),
                ("keyset id", view.keyset_id),
                ("sharing", policy.mode.value),
                ("sites", ",".join(map(str, policy.sorted_sites)) or "-"),
                ("types", ",".join(policy.sorted_types) or "-"),
                ("changed", "yes" if view.changed else "no"),
                ("rotated keys", ",".join(map(str, view.rotated_key_ids)) or "-"),
            ]
        )

    emit(wants_json(as_json), view.to_json(), human)


@click.group("sharing")
def sharing() -> None:
    """Sharing permissions: who may decrypt a participant's tokens."""


@sharing.command("set")
@click.option(
    "--site-id", type=ASCII_INT, required=True, help="The participant whose keyset to share."
)
@click.option("--owner-only", is_flag=True, help="Nobody but the participant itself.")
@click.option("--all-bidders", is_flag=True, help="Every caller holding ID_READER (every DSP).")
@click.option("--allow", default=None, help="Site ids allowed, comma-separated.")
@click.option("--allow-types", default=None, help="Participant types allowed, comma-separated.")
@click.option(
    "--no-rotate",
    is_flag=True,
    help="Do not rotate the keyset's keys when the change removes a reader.",
)
@json_option
def set_(  # noqa: PLR0917 (click passes every option positionally)
    site_id: int,
    owner_only: bool,
    all_bidders: bool,
    allow: str | None,
    allow_types: str | None,
    no_rotate: bool,
    as_json: bool,
) -> None:
    """Replace the participant's sharing choice (exactly one of the three)."""
    listed = allow is not None or allow_types is not None
    if owner_only + all_bidders + listed != 1:
        raise click.UsageError(
            "Give exactly one of --owner-only, --all-bidders, --allow/--allow-types"
        )
    if owner_only:
        mode = SharingMode.OWNER_ONLY
    elif all_bidders:
        mode = SharingMode.BIDDERS
    else:
        mode = SharingMode.LIST
    with sharing_service() as service:
        view = service.set_sharing(
            actor(),
            site_id,
            mode=mode.value,
            sites=_site_ids(allow),
            types=parse_list(allow_types),
            rotate=not no_rotate,
        )
    _emit(as_json, view)


@sharing.command("show")
@click.option("--site-id", type=ASCII_INT, required=True, help="The participant.")
@json_option
def show(site_id: int, as_json: bool) -> None:
    """Show the participant's sharing choice."""
    with sharing_service() as service:
        view = service.show_sharing(actor(), site_id)
    _emit(as_json, view)
