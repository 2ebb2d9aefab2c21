"""``keyring status|add-version|reseal|drop-version``: rotating the key-encryption keys.

Everything secret at rest is sealed under a key-encryption key (KEK) version of the keyring. The
rotation is three commands (docs/credentials.md, "KEK rotation"): ``add-version``, ``reseal``,
``drop-version`` of the old version. A running ``serve`` follows the keyring file, so nothing is
restarted between them. ``status`` shows, before and after each step, what is sealed under which
version. No command prints key bytes or the pepper: versions and counts only. Refusals end like
every other command's errors (one line on stderr; exit status 2 for a refused request, 1 for a
keyring that cannot open what the store holds); ``drop-version`` is refused
while anything is still sealed under the version, so the keyring never loses a key the store
needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from uid2_operator.bootstrap import keyring_rotation_service, open_configured_store
from uid2_operator.cli.output import emit, fields, table
from uid2_operator.cli.runtime import actor, json_option, load_settings, wants_json
from uid2_operator.services.keyring_rotation import (
    RESEAL_COMMAND,
    SEALED_KINDS,
    KeyringRotationService,
    KeyringStatus,
)


@contextmanager
def rotation_service() -> Iterator[KeyringRotationService]:
    settings = load_settings()
    store = open_configured_store(settings)
    try:
        yield keyring_rotation_service(settings, store)
    finally:
        store.close()


def _versions(versions: tuple[int, ...]) -> str:
    return ", ".join(str(v) for v in versions)


def _serve_follows(what: str) -> None:
    click.echo(
        f"Running `uid2-operator serve` processes that read this keyring file {what} within "
        "about a second (copy the file to any other machine serving this store)."
    )


@click.group("keyring")
def keyring() -> None:
    """Key-encryption key versions: status, add a version, re-seal, drop a version."""


@keyring.command("status")
@json_option
def status(as_json: bool) -> None:
    """The keyring's versions and how many items are sealed under each, per kind."""
    with rotation_service() as service:
        found = service.status()
    missing = found.describe_unknown()
    if missing is not None:
        click.echo(
            f"Warning: items are sealed under versions the keyring lacks ({missing}). They "
            "cannot be opened until those versions are back in the keyring.",
            err=True,
        )
    emit(wants_json(as_json), found.to_json(), lambda: _show_status(found))


def _show_status(found: KeyringStatus) -> None:
    fields(
        [
            ("keyring", found.source),
            ("development", "yes" if found.development else "no"),
            ("active version", found.active_version),
            ("versions", _versions(found.keyring_versions)),
        ]
    )
    click.echo()
    table(
        ("version", "in keyring", *SEALED_KINDS, "total"),
        [
            (
                f"{use.version} (active)" if use.active else use.version,
                "yes" if use.in_keyring else "NO",
                *use.sealed.to_json().values(),
                use.sealed.total,
            )
            for use in found.versions
        ],
    )
    click.echo()
    if found.unknown_versions:
        click.echo(
            f"{found.to_reseal} items are not under the active version {found.active_version}; "
            f"put versions {_versions(found.unknown_versions)} back into the keyring, then run "
            f"`{RESEAL_COMMAND}`."
        )
    elif found.to_reseal:
        click.echo(
            f"{found.to_reseal} items are not under the active version {found.active_version}: "
            f"run `{RESEAL_COMMAND}`."
        )
    else:
        click.echo(f"Every item is sealed under the active version {found.active_version}.")


@keyring.command("add-version")
@json_option
def add_version(as_json: bool) -> None:
    """Add a new random version and make it active (written to the keyring file).

    Older versions stay, so everything sealed under them still opens. A running serve seals new
    items under the new version within about a second; then run ``keyring reseal``.
    """
    with rotation_service() as service:
        change = service.add_version(actor())

    def human() -> None:
        click.echo(
            f"Added key-encryption key version {change.version}; it is now active "
            f"(versions {_versions(change.keyring_versions)})."
        )
        _serve_follows(f"seal with version {change.version}")
        click.echo(f"Then run `{RESEAL_COMMAND}`.")

    emit(wants_json(as_json), change.to_json(), human)


@keyring.command("reseal")
@json_option
def reseal(as_json: bool) -> None:
    """Seal everything that is not under the active version again under it, all at once.

    The secrets themselves do not change: API keys, issued tokens and raw UIDs keep working.
    A second run finds nothing to do.
    """
    with rotation_service() as service:
        result = service.reseal(actor())

    def human() -> None:
        if not result.resealed.total:
            click.echo(
                f"Nothing to re-seal: every item is under the active version "
                f"{result.active_version}."
            )
            return
        click.echo(
            f"Re-sealed {result.resealed.describe()} under version {result.active_version}, "
            f"from versions {_versions(result.from_versions)}."
        )
        click.echo(
            "Nothing is sealed under the older versions now; drop each with "
            "`uid2-operator keyring drop-version VERSION`."
        )

    emit(wants_json(as_json), result.to_json(), human)


@keyring.command("drop-version")
@click.argument("version", type=int)
@json_option
def drop_version(version: int, as_json: bool) -> None:
    """Remove VERSION from the keyring file.

    Refused while anything is sealed under it (run ``keyring reseal`` first) and for the active
    version. A running serve forgets it within about a second.
    """
    with rotation_service() as service:
        change = service.drop_version(version, actor())

    def human() -> None:
        click.echo(
            f"Dropped key-encryption key version {change.version} "
            f"(versions now {_versions(change.keyring_versions)})."
        )
        _serve_follows(f"forget version {change.version}")

    emit(wants_json(as_json), change.to_json(), human)
