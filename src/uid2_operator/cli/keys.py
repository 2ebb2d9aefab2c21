"""``key ...``: API keys and their client secrets."""

from __future__ import annotations

import time

import click

from uid2_operator.cli.output import emit, fields, note, show_once_warning, table, when
from uid2_operator.cli.params import ASCII_INT
from uid2_operator.cli.runtime import actor, json_option, parse_list, services, wants_json
from uid2_operator.domain.participants import MAX_NAME_LENGTH
from uid2_operator.services.credentials import DEFAULT_GRACE_DAYS, MAX_LIST_LIMIT
from uid2_operator.services.views import IssuedKey, IssuedSecret, KeyView

DEFAULT_REVOKE_REASON = "revoked from the command line"


def status(view: KeyView, now_ms: int) -> str:
    """The stored state, qualified by what time has done to it (retired, expired, due)."""
    notes: list[str] = []
    if view.retires_at_ms is not None:
        notes.append("retired" if view.retires_at_ms <= now_ms else "retiring")
    if view.expires_at_ms is not None and view.expires_at_ms <= now_ms:
        notes.append("expired")
    if view.rotation_due:
        notes.append("rotation due")
    return view.state + (f" ({', '.join(notes)})" if notes else "")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _show(view: KeyView) -> None:
    fields(
        [
            ("key id", view.key_id),
            ("site id", view.site_id),
            ("name", view.name),
            ("roles", ",".join(view.roles)),
            ("status", status(view, _now_ms())),
            ("created", f"{when(view.created_at_ms)} by {view.created_by}"),
            ("expires", when(view.expires_at_ms)),
            ("retires", when(view.retires_at_ms)),
            ("rotated from", view.rotated_from),
            ("rotated to", view.rotated_to),
            (
                "revoked",
                None
                if view.revoked_at_ms is None
                else f"{when(view.revoked_at_ms)} by {view.revoked_by}: {view.revoked_reason}",
            ),
            ("last used", when(view.last_used_at_ms)),
            ("usage", ", ".join(f"{e}={n}" for e, n in view.usage.items()) or "-"),
        ]
    )


def _emit_key(as_json: bool, view: KeyView) -> None:
    emit(wants_json(as_json), view.to_json(), lambda: _show(view))


def _emit_issued(as_json: bool, issued: IssuedKey) -> None:
    def human() -> None:
        fields(
            [
                ("key id", issued.key_id),
                ("site id", issued.site_id),
                ("name", issued.name),
                ("roles", ",".join(issued.roles)),
                ("expires", when(issued.expires_at_ms)),
                ("rotated from", issued.key_view.rotated_from),
                ("key", issued.key),
                ("secret", issued.secret),
            ]
        )

    emit(wants_json(as_json), issued.to_json(), human)
    show_once_warning()


@click.group()
def key() -> None:
    """API keys and client secrets."""


@key.command("create")
@click.option("--site-id", type=ASCII_INT, required=True)
@click.option("--name", required=True, help=f"Display name, 1 to {MAX_NAME_LENGTH} characters.")
@click.option("--roles", required=True, help="Comma-separated subset of the participant's roles.")
@click.option("--expires-in-days", type=ASCII_INT, default=None, help="Optional hard expiry.")
@json_option
def create(site_id: int, name: str, roles: str, expires_in_days: int | None, as_json: bool) -> None:
    """Create an API key and its client secret (both shown once)."""
    with services() as svc:
        issued = svc.credentials.create_key(
            actor(),
            site_id=site_id,
            name=name,
            roles=parse_list(roles),
            expires_in_days=expires_in_days,
        )
    _emit_issued(as_json, issued)


@key.command("list")
@click.option("--site-id", type=ASCII_INT, default=None, help="Only this participant's keys.")
@click.option(
    "--limit",
    type=ASCII_INT,
    default=None,
    help=f"At most this many keys (1-{MAX_LIST_LIMIT}; default: every one).",
)
@click.option(
    "--after",
    default=None,
    metavar="KEY_ID",
    help="Start after this key, in the listing's order (by site, then age): the last key id "
    "of the previous page.",
)
@json_option
def list_(site_id: int | None, limit: int | None, after: str | None, as_json: bool) -> None:
    """List API keys (never their text or secrets).

    With --limit, a page at a time: fewer than --limit keys (none, too) means the last page;
    in text, a line on standard error names the --after of the next one.
    """
    with services() as svc:
        page = svc.credentials.key_page(actor(), site_id=site_id, limit=limit, after=after)
    views = page.items
    now = _now_ms()
    emit(
        wants_json(as_json),
        [v.to_json() for v in views],
        lambda: table(
            ["KEY ID", "SITE", "NAME", "ROLES", "STATUS", "LAST USED"],
            [
                [
                    v.key_id,
                    v.site_id,
                    v.name,
                    ",".join(v.roles),
                    status(v, now),
                    when(v.last_used_at_ms),
                ]
                for v in views
            ],
        ),
    )
    if page.more and not wants_json(as_json):
        note(f"More keys follow: --after {views[-1].key_id}")


@key.command("show")
@click.argument("key_id")
@json_option
def show(key_id: str, as_json: bool) -> None:
    """Show one API key."""
    with services() as svc:
        view = svc.credentials.get_key(actor(), key_id)
    _emit_key(as_json, view)


@key.command("rename")
@click.argument("key_id")
@click.option("--name", required=True, help=f"New name, 1 to {MAX_NAME_LENGTH} characters.")
@json_option
def rename(key_id: str, name: str, as_json: bool) -> None:
    """Rename an API key."""
    with services() as svc:
        view = svc.credentials.rename_key(actor(), key_id, name=name)
    _emit_key(as_json, view)


@key.command("set-roles")
@click.argument("key_id")
@click.option("--roles", required=True, help="Comma-separated subset of the participant's roles.")
@json_option
def set_roles(key_id: str, roles: str, as_json: bool) -> None:
    """Replace an API key's roles."""
    with services() as svc:
        view = svc.credentials.set_key_roles(actor(), key_id, roles=parse_list(roles))
    _emit_key(as_json, view)


@key.command("disable")
@click.argument("key_id")
@json_option
def disable(key_id: str, as_json: bool) -> None:
    """Disable an API key (reversible)."""
    with services() as svc:
        view = svc.credentials.disable_key(actor(), key_id)
    _emit_key(as_json, view)


@key.command("enable")
@click.argument("key_id")
@json_option
def enable(key_id: str, as_json: bool) -> None:
    """Enable a disabled API key."""
    with services() as svc:
        view = svc.credentials.enable_key(actor(), key_id)
    _emit_key(as_json, view)


@key.command("revoke")
@click.argument("key_id")
@click.option("--reason", default=DEFAULT_REVOKE_REASON, show_default=True)
@json_option
def revoke(key_id: str, reason: str, as_json: bool) -> None:
    """Revoke an API key for good (kept as a tombstone)."""
    with services() as svc:
        view = svc.credentials.revoke_key(actor(), key_id, reason=reason)
    _emit_key(as_json, view)


@key.command("rotate")
@click.argument("key_id")
@click.option(
    "--grace-days",
    type=ASCII_INT,
    default=DEFAULT_GRACE_DAYS,
    show_default=True,
    help="How long the old key keeps working; 0 retires it now.",
)
@click.option(
    "--name",
    default=None,
    help=f"The successor's name, 1 to {MAX_NAME_LENGTH} characters (default: the old key's).",
)
@json_option
def rotate(key_id: str, grace_days: int, name: str | None, as_json: bool) -> None:
    """Issue a successor key (same roles, new secret); prints the successor once."""
    with services() as svc:
        issued = svc.credentials.rotate_key(actor(), key_id, grace_days=grace_days, name=name)
    _emit_issued(as_json, issued)


@key.command("retire-now")
@click.argument("key_id")
@json_option
def retire_now(key_id: str, as_json: bool) -> None:
    """End a rotated key's grace window now (its successor keeps working)."""
    with services() as svc:
        view = svc.credentials.retire_key_now(actor(), key_id)
    _emit_key(as_json, view)


@key.command("rotate-secret")
@click.argument("key_id")
@click.option(
    "--grace-days",
    type=ASCII_INT,
    default=DEFAULT_GRACE_DAYS,
    show_default=True,
    help="How long the previous secret keeps working; 0 stops it now.",
)
@json_option
def rotate_secret(key_id: str, grace_days: int, as_json: bool) -> None:
    """Issue a new client secret for the same key; prints it once."""
    with services() as svc:
        issued = svc.credentials.rotate_secret(actor(), key_id, grace_days=grace_days)

    def human(secret: IssuedSecret = issued) -> None:
        fields(
            [
                ("key id", secret.key_id),
                ("previous secret retires", when(secret.previous_secret_retires_at_ms)),
                ("secret", secret.secret),
            ]
        )

    emit(wants_json(as_json), issued.to_json(), human)
    show_once_warning()
