"""``keyring status|add-version|activate-version|reseal|drop-version``: rotating the
key-encryption keys.

Everything secret at rest is sealed under a key-encryption key (KEK) version of the keyring. The
rotation is three commands (docs/credentials.md, "KEK rotation"): ``add-version``, ``reseal``,
``drop-version`` of the old version. With several keyring files (several data directories, on
one machine or several), the new version is added inactive (``add-version --inactive``), the
file copied over every other keyring file, and only then made active (``activate-version``), so
nothing is sealed under a version some process cannot open. A running ``serve`` follows the
keyring file, so nothing is restarted between them. ``status`` shows, before and after each step,
what is sealed under which version. No command prints key bytes or the pepper: versions and
counts only. Refusals end like every other command's errors (one line on stderr; exit status 2
for a refused request, 1 for a keyring that cannot open what the store holds); ``drop-version``
is refused while anything is still sealed under the version, so the keyring never loses a key
the store needs, and ``activate-version`` while the store holds items sealed under a version the
keyring lacks (another keyring file is ahead of this one).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from uid2_operator.bootstrap import keyring_rotation_service, open_configured_store
from uid2_operator.cli.output import echo, emit, fields, note, table
from uid2_operator.cli.params import ASCII_INT
from uid2_operator.cli.runtime import actor, json_option, load_settings, wants_json
from uid2_operator.services.keyring_rotation import (
    ACTIVATE_COMMAND,
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


_EVERY_OTHER_FILE = "every other keyring file: each data directory, on this machine or another"


def _serve_follows(what: str) -> None:
    echo(
        f"Running `uid2-operator serve` processes that read this keyring file {what} within "
        f"about a second (copy the file to {_EVERY_OTHER_FILE})."
    )


@click.group("keyring")
def keyring() -> None:
    """Key-encryption key versions: status, add, activate, re-seal, drop a version."""


@keyring.command("status")
@json_option
def status(as_json: bool) -> None:
    """The keyring's versions and how many items are sealed under each, per kind."""
    with rotation_service() as service:
        found = service.status()
    missing = found.describe_unknown()
    if missing is not None:
        note(
            f"Warning: items are sealed under versions the keyring lacks ({missing}). They "
            "cannot be opened until those versions are back in the keyring."
        )
    if found.active_version_dropped:
        note(
            f"Warning: the active version {found.active_version} was dropped from the keyring "
            "of another instance of this database: nothing can be sealed through this file. "
            "Copy that instance's keyring file here (over this one)."
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
    echo()
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
    echo()
    if found.active_version_dropped:
        echo(
            f"The active version {found.active_version} was dropped by another instance: copy "
            "its keyring file here (over this one) before anything else."
        )
    elif found.unknown_versions:
        echo(
            f"{found.to_reseal} items are not under the active version {found.active_version}; "
            f"put versions {_versions(found.unknown_versions)} back into the keyring, then run "
            f"`{RESEAL_COMMAND}`."
        )
    elif found.to_reseal:
        echo(
            f"{found.to_reseal} items are not under the active version {found.active_version}: "
            f"run `{RESEAL_COMMAND}`."
        )
    else:
        echo(f"Every item is sealed under the active version {found.active_version}.")


@keyring.command("add-version")
@click.option(
    "--inactive",
    is_flag=True,
    help="Add the version without making it active; `keyring activate-version` does that.",
)
@json_option
def add_version(inactive: bool, as_json: bool) -> None:
    """Add a new random version to the keyring file, active at once unless --inactive.

    Older versions stay, so everything sealed under them still opens. A running serve seals new
    items under the new version within about a second; then run ``keyring reseal``.

    With several keyring files (each data directory has its own, on this machine or another),
    use ``--inactive``: nothing is sealed under the new version yet. Copy the file over every
    other keyring file, then, a second later, run ``keyring activate-version`` on each.
    """
    with rotation_service() as service:
        change = service.add_version(actor(), activate=not inactive)

    def human() -> None:
        versions = _versions(change.keyring_versions)
        if change.active:
            echo(
                f"Added key-encryption key version {change.version}; it is now active "
                f"(versions {versions})."
            )
            _serve_follows(f"seal with version {change.version}")
            echo(
                "Until it reaches them, their processes cannot open what is sealed under version "
                f"{change.version} (`keyring add-version --inactive` avoids that gap)."
            )
            echo(f"Then run `{RESEAL_COMMAND}`.")
            return
        echo(
            f"Added key-encryption key version {change.version}, not active: new items are "
            f"still sealed under version {change.active_version} (versions {versions})."
        )
        echo(
            f"Copy this file to {_EVERY_OTHER_FILE}. Running `uid2-operator serve` processes "
            "take it up within about a second."
        )
        echo(
            f"A second after the last copy, run `{ACTIVATE_COMMAND} {change.version}` on each "
            f"keyring file, then `{RESEAL_COMMAND}`."
        )

    emit(wants_json(as_json), change.to_json(), human)


@keyring.command("activate-version")
@click.argument("version", type=ASCII_INT)
@json_option
def activate_version(version: int, as_json: bool) -> None:
    """Make VERSION, which the keyring file holds, the active one: new items are sealed under it.

    Refused for a version the file lacks, and while the store holds items sealed under a version
    the file lacks (another keyring file is ahead of this one: copy it here). Nothing changes when
    VERSION already is active. A running serve seals under it within about a second.
    """
    with rotation_service() as service:
        change = service.activate_version(version, actor())

    def human() -> None:
        if not change.changed:
            echo(
                f"Key-encryption key version {change.version} is already active "
                f"(versions {_versions(change.keyring_versions)}); nothing changed."
            )
            return
        echo(
            f"Key-encryption key version {change.version} is now active, instead of version "
            f"{change.previous_version} (versions {_versions(change.keyring_versions)})."
        )
        echo(
            "Running `uid2-operator serve` processes that read this keyring file seal with "
            f"version {change.version} within about a second. Activate it in every other "
            "keyring file too (each data directory, on this machine or another), or copy this "
            f"file there; then run `{RESEAL_COMMAND}`."
        )

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
            echo(
                f"Nothing to re-seal: every item is under the active version "
                f"{result.active_version}."
            )
            return
        echo(
            f"Re-sealed {result.resealed.describe()} under version {result.active_version}, "
            f"from versions {_versions(result.from_versions)}."
        )
        echo(
            "Nothing is sealed under the older versions now; drop each with "
            "`uid2-operator keyring drop-version VERSION`."
        )

    emit(wants_json(as_json), result.to_json(), human)


@keyring.command("drop-version")
@click.argument("version", type=ASCII_INT)
@json_option
def drop_version(version: int, as_json: bool) -> None:
    """Remove VERSION from the keyring file.

    Refused while anything is sealed under it (run ``keyring reseal`` first) and for the active
    version. A running serve forgets it within about a second.
    """
    with rotation_service() as service:
        change = service.drop_version(version, actor())

    def human() -> None:
        echo(
            f"Dropped key-encryption key version {change.version} "
            f"(versions now {_versions(change.keyring_versions)})."
        )
        _serve_follows(f"forget version {change.version}")

    emit(wants_json(as_json), change.to_json(), human)
