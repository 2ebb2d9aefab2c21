"""``keypair ...`` and ``participant set-domains|set-app-names``: client-side credentials.

A keypair is a subscription id and a public key string (``UID2-X-<env>-...``) that a publisher
puts in its pages or app; the matching private key stays sealed in the store and is never
printed. Requests made with it are accepted only from the participant's domain names (the
``Origin`` header) or app names.
"""

from __future__ import annotations

import click

from uid2_operator.cli.output import emit, fields, table, when
from uid2_operator.cli.params import ASCII_INT
from uid2_operator.cli.runtime import actor, json_option, parse_list, wants_json
from uid2_operator.cli.sharing import sharing_service
from uid2_operator.services.sharing import KeypairView, SiteOriginsView


def _show(view: KeypairView) -> None:
    fields(
        [
            ("subscription id", view.subscription_id),
            ("site id", view.site_id),
            ("public key", view.public_key),
            ("name", view.name or "-"),
            ("contact", view.contact or "-"),
            ("disabled", "yes" if view.disabled else "no"),
            ("created", when(view.created_at_ms)),
        ]
    )


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _emit(as_json: bool, view: KeypairView) -> None:
    emit(wants_json(as_json), view.to_json(), lambda: _show(view))


@click.group("keypair")
def keypair() -> None:
    """Client-side keypairs (subscription id and public key) for browser and app publishers."""


@keypair.command("create")
@click.option("--site-id", type=ASCII_INT, required=True, help="The participant it belongs to.")
@click.option("--name", default="", help="A label, at most 200 characters.")
@click.option("--contact", default="", help="Who to ask about it.")
@json_option
def create(site_id: int, name: str, contact: str, as_json: bool) -> None:
    """Create a keypair; prints its subscription id and public key (both public)."""
    with sharing_service() as service:
        view = service.create_keypair(actor(), site_id=site_id, name=name, contact=contact)
    _emit(as_json, view)


@keypair.command("list")
@click.option("--site-id", type=ASCII_INT, default=None, help="Only this participant's keypairs.")
@json_option
def list_(site_id: int | None, as_json: bool) -> None:
    """List keypairs (never their private keys)."""
    with sharing_service() as service:
        views = service.list_keypairs(actor(), site_id=site_id)
    emit(
        wants_json(as_json),
        [v.to_json() for v in views],
        lambda: table(
            ["SUBSCRIPTION", "SITE", "NAME", "DISABLED", "PUBLIC KEY"],
            [
                [v.subscription_id, v.site_id, v.name or "-", _yes(v.disabled), v.public_key]
                for v in views
            ],
        ),
    )


@keypair.command("show")
@click.argument("subscription_id")
@json_option
def show(subscription_id: str, as_json: bool) -> None:
    """Show one keypair."""
    with sharing_service() as service:
        view = service.get_keypair(actor(), subscription_id)
    _emit(as_json, view)


@keypair.command("disable")
@click.argument("subscription_id")
@json_option
def disable(subscription_id: str, as_json: bool) -> None:
    """Disable a keypair: its requests get 401 from the operator's next snapshot."""
    with sharing_service() as service:
        view = service.set_keypair_disabled(actor(), subscription_id, True)
    _emit(as_json, view)


@keypair.command("enable")
@click.argument("subscription_id")
@json_option
def enable(subscription_id: str, as_json: bool) -> None:
    """Enable a disabled keypair again."""
    with sharing_service() as service:
        view = service.set_keypair_disabled(actor(), subscription_id, False)
    _emit(as_json, view)


@keypair.command("delete")
@click.argument("subscription_id")
@json_option
def delete(subscription_id: str, as_json: bool) -> None:
    """Delete a keypair and its private key for good (disable it to stop it reversibly)."""
    with sharing_service() as service:
        view = service.delete_keypair(actor(), subscription_id)
    _emit(as_json, view)


# ------------------------------------------------------------------- participant origins


def _emit_origins(as_json: bool, view: SiteOriginsView) -> None:
    def human() -> None:
        fields(
            [
                ("site id", view.site_id),
                ("domain names", ", ".join(view.domain_names) or "-"),
                ("app names", ", ".join(view.app_names) or "-"),
            ]
        )

    emit(wants_json(as_json), view.to_json(), human)


@click.command("set-domains")
@click.option("--site-id", type=ASCII_INT, required=True, help="The participant.")
@click.option(
    "--domains", required=True, help="Registrable domains, comma-separated (empty: none)."
)
@json_option
def set_domains(site_id: int, domains: str, as_json: bool) -> None:
    """Replace the domain names client-side requests may come from (the Origin header)."""
    with sharing_service() as service:
        view = service.set_domain_names(actor(), site_id, parse_list(domains))
    _emit_origins(as_json, view)


@click.command("set-app-names")
@click.option("--site-id", type=ASCII_INT, required=True, help="The participant.")
@click.option("--app-names", required=True, help="App ids, comma-separated (empty: none).")
@json_option
def set_app_names(site_id: int, app_names: str, as_json: bool) -> None:
    """Replace the app names (package names, bundle ids, store ids) requests may name."""
    with sharing_service() as service:
        view = service.set_app_names(actor(), site_id, parse_list(app_names))
    _emit_origins(as_json, view)


@click.command("show-origins")
@click.option("--site-id", type=ASCII_INT, required=True, help="The participant.")
@json_option
def show_origins(site_id: int, as_json: bool) -> None:
    """Show the domain and app names client-side requests may come from."""
    with sharing_service() as service:
        view = service.get_origins(actor(), site_id)
    _emit_origins(as_json, view)


PARTICIPANT_COMMANDS = (set_domains, set_app_names, show_origins)
"""Commands added to the ``participant`` group."""
