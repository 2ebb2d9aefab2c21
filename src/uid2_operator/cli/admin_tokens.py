"""``admin-token ...``: administrators' bearer tokens for the admin API."""

from __future__ import annotations

import click

from uid2_operator.cli.output import emit, fields, show_once_warning, table, when
from uid2_operator.cli.runtime import actor, json_option, parse_list, services, wants_json
from uid2_operator.domain.roles import AdminRole
from uid2_operator.services.views import AdminTokenView

_ROLES = ", ".join(r.value for r in AdminRole)


@click.group("admin-token")
def admin_token() -> None:
    """Admin API tokens."""


@admin_token.command("create")
@click.option("--name", required=True)
@click.option("--roles", required=True, help=f"Comma-separated: {_ROLES}.")
@json_option
def create(name: str, roles: str, as_json: bool) -> None:
    """Create an admin token (shown once)."""
    with services() as svc:
        issued = svc.admin.create_admin_token(actor(), name=name, roles=parse_list(roles))
    emit(
        wants_json(as_json),
        issued.to_json(),
        lambda: fields(
            [
                ("token id", issued.token_id),
                ("name", issued.name),
                ("roles", ",".join(issued.roles)),
                ("token", issued.token),
            ]
        ),
    )
    show_once_warning()


def _row(view: AdminTokenView) -> list[object]:
    state = "active" if view.revoked_at_ms is None else f"revoked {when(view.revoked_at_ms)}"
    return [view.token_id, view.name, ",".join(view.roles), when(view.created_at_ms), state]


@admin_token.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List admin tokens (never their text)."""
    with services() as svc:
        views = svc.admin.list_admin_tokens(actor())
    emit(
        wants_json(as_json),
        [v.to_json() for v in views],
        lambda: table(["TOKEN ID", "NAME", "ROLES", "CREATED", "STATE"], map(_row, views)),
    )


@admin_token.command("revoke")
@click.argument("token_id")
@json_option
def revoke(token_id: str, as_json: bool) -> None:
    """Revoke an admin token for good."""
    with services() as svc:
        view = svc.admin.revoke_admin_token(actor(), token_id)
    emit(
        wants_json(as_json),
        view.to_json(),
        lambda: table(["TOKEN ID", "NAME", "ROLES", "CREATED", "STATE"], [_row(view)]),
    )
