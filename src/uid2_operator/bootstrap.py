"""The composition root: the one place that reads (and writes) the keyring, opens the store and
wires services.

Nothing here runs on import. Entry points (the CLI, the admin and operator apps) call these
functions with a ``Settings`` and own the lifetime of what they get back. Only this module picks
and opens a storage backend (``open_configured_store``); everything else types against
``storage.interface``.

Services follow the keyring file (``follow_keyring``, ``KeyringFile``): KEK rotation rewrites the
file, and every process (``serve`` and its workers, a command) uses the new keyring within about
a second, no restart; a use case that writes the store looks at the file inside its transaction.
A new file holding another key under a version number the store records a check value for is
not taken up (see ``KeyringFile``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import stat
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, TypeVar

from uid2_operator.clock import Clock, SystemClock, system_random
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.lifecycle import DAY_MS
from uid2_operator.domain.sealing import (
    PEPPER_CHECK,
    Keyring,
    KeyringSource,
    compare_kek_check_values,
    generate_keyring,
    require_keyring,
)
from uid2_operator.errors import (
    InvalidInput,
    KekVersionMissing,
    KeyringError,
    KeyringMissing,
    SchemaOutOfDate,
    StoreUnavailable,
    UID2Error,
)
from uid2_operator.services.admin import AdminService
from uid2_operator.services.credentials import CredentialService
from uid2_operator.services.keyring_rotation import (
    KeyringRotationService,
    StagedKeyring,
    sealed_inventory,
)
from uid2_operator.services.material import MaterialConfig, MaterialService
from uid2_operator.services.sharing import SharingService
from uid2_operator.settings import (
    DB_FILE,
    EnvironmentSource,
    Settings,
    SettingsError,
    recorded_environment,
)
from uid2_operator.storage import open_store, upgrade
from uid2_operator.storage.engines import make_engine, normalise_url, shown_url, sqlite_path
from uid2_operator.storage.interface import ReadTx, Store
from uid2_operator.storage.migrate import current_revision, revision_of
from uid2_operator.wire.aead import RandomBytes

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_PRIVATE_FILE = 0o600
_OTHERS_MAY_ACCESS: Final = 0o006
"""Mode bits that let any user read or change a file (what reading a keyring file warns of)."""
_PRIVATE_DIR = 0o700

KEYRING_FROM_ENVIRONMENT: Final = "environment"
"""What ``keyring_source`` names a keyring given as UID2_KEYRING."""
KEYRING_CHECK_INTERVAL_S: Final = 0.5
"""How often, at most, a ``KeyringFile`` looks at its file (one ``stat``)."""
KEYRING_DEBRIS_AGE_S: Final = 60.0
"""How old a keyring write's temporary file must be before ``sweep_keyring_debris`` removes it."""
_TEMPORARY_SUFFIX: Final = ".tmp"
_TAKEN_UP: Final = "then this process takes it up within about a second"
"""What a running process's refusal of a keyring file holding another key under a version the
store knows says follows the fix (``compare_kek_check_values``)."""


@dataclass(frozen=True, slots=True)
class Services:
    """The wired use cases over one open store. ``close()`` releases its connections."""

    store: Store
    credentials: CredentialService
    admin: AdminService
    settings: Settings
    material: MaterialService
    sharing: SharingService
    keyring: KeyringSource
    """Where every use case takes its keyring (a followed file: ``KeyringFile``)."""

    def close(self) -> None:
        self.store.close()


def load_keyring(settings: Settings) -> Keyring:
    """The keyring from UID2_KEYRING (the JSON itself), else from the keyring file.

    Refuses a missing keyring everywhere, and a development or placeholder one in prod.
    """
    if settings.keyring_json is not None:
        return require_keyring(Keyring.from_json(settings.keyring_json), settings.environment)
    keyring, _ = _read_keyring_file(
        settings.keyring_path.absolute(),
        settings.environment,
        name_file=True,
        given_file=settings.keyring_file is not None,
    )
    return keyring


_FileSignature = tuple[int, int, int, int, int]
"""What tells one keyring file from the next: device, inode, mtime and ctime in ns, size.
``save_keyring`` replaces the file (a new inode), so every rotation step changes it; an edit in
place changes the times, a ``chmod`` the ctime."""
_NO_FILE: Final[_FileSignature] = (-1, -1, -1, -1, -1)
_NOT_READ: Final[_FileSignature] = (-3, -3, -3, -3, -3)
"""The signature of no file: what a ``KeyringFile`` that started with its fallback has read."""


def _signature(status: os.stat_result) -> _FileSignature:
    return (
        status.st_dev,
        status.st_ino,
        status.st_mtime_ns,
        status.st_ctime_ns,
        status.st_size,
    )


def _read_keyring_file(
    path: Path, environment: Environment, *, name_file: bool = False, given_file: bool = False
) -> tuple[Keyring, _FileSignature]:
    """The keyring in ``path`` under ``load_keyring``'s rules, and the signature of the file it
    was read from (taken from the open file, so the two always match).

    A file that does not hold a keyring (empty, not JSON, a key missing) raises ``KeyringError``
    with the bare defect (a followed file's log line names the file), or with ``name_file`` (a
    refusal: ``load_keyring``, a ``KeyringFile``'s first read) naming the file. A file that is
    not there refuses with ``KeyringMissing``: naming the file when it was given
    (``given_file``: UID2_KEYRING_FILE), else saying where a keyring may come from."""
    keyring: Keyring | None
    signature = _NO_FILE
    try:
        with path.open("rb") as handle:
            status = os.fstat(handle.fileno())
            signature = _signature(status)
            text = handle.read().decode("utf-8")
    except FileNotFoundError:
        if given_file:
            raise _no_keyring_file(path, environment) from None
        keyring = None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise KeyringError(f"The keyring file {path} cannot be read: {reason}") from None
    else:
        try:
            keyring = Keyring.from_json(text)
        except KeyringError as exc:
            if not name_file:
                raise
            defect = "it is empty" if not text.strip() else exc.detail
            message = f"The keyring file {path} cannot be used: {defect}"
            if isinstance(exc, KekVersionMissing):
                raise KekVersionMissing(exc.version, message) from None
            raise KeyringError(message) from None
        _warn_if_others_may_read(path, status)
    return require_keyring(keyring, environment), signature


def _warn_if_others_may_read(path: Path, status: os.stat_result) -> None:
    """A WARNING when users other than the owner and the file's group may read or change the
    keyring file (a group may be how a deployment hands it to the service)."""
    mode = stat.S_IMODE(status.st_mode)
    if mode & _OTHERS_MAY_ACCESS:
        log.warning(
            "The keyring file %s can be read or changed by any user (mode %04o); it holds every "
            "key-encryption key and the pepper: chmod 600 it",
            path,
            mode,
        )


def _no_keyring_file(path: Path, environment: Environment) -> KeyringMissing:
    """A refusal naming the keyring file UID2_KEYRING_FILE gives, which is not there, rather than
    only the ways to give one (the variable is set already)."""
    if environment is Environment.PROD:  # init never creates a keyring in prod
        remedy = "prod needs a provisioned one there (its format: docs/credentials.md, The keyring)"
    else:
        remedy = "name the right file with UID2_KEYRING_FILE, or run init to create one"
    return KeyringMissing(f"No keyring: the keyring file {path} does not exist; {remedy}")


def _seen_signature(path: Path) -> _FileSignature:
    """What ``stat`` says of the keyring file now: its signature, ``_NO_FILE``, or one naming
    the error (the directory cannot be searched, say: reading says why)."""
    try:
        return _signature(os.stat(path))
    except FileNotFoundError:
        return _NO_FILE
    except OSError as exc:
        return (-2, exc.errno or 0, -2, -2, -2)


class KeyringFile:
    """The keyring file as it is now: the ``KeyringSource`` of a long-lived process.

    ``current()`` looks at the file (one ``stat``) at most every ``check_interval_s`` on the
    ``monotonic`` clock; ``latest(recorded)``, asked by a use case that writes the store (or a
    snapshot load), looks at once. Either reads the file again only when it changed (see
    ``_FileSignature``: ``save_keyring`` replaces it). The new content must pass
    ``load_keyring``'s rules (in prod, no development or placeholder keyring), and must not hold
    another key under a version number the store records a check value for
    (``compare_kek_check_values``: another instance's keyring copied over this one, an old
    backup whose version N is another key). Content that does not (a file cut short, edited by
    hand into invalid JSON, removed, a development keyring in prod, a contradicting key) is
    logged once as an error naming the file and why, never a key byte or check value, and the
    keyring read before stays in use until the next good write. A version the store does not
    record yet is taken up (``keyring add-version`` records it, then writes the file). The first
    read, at construction, raises as ``load_keyring`` does; its keyring is compared with the
    store by whoever opens the store (``check_store_keyring``).

    The check values come from the callers, never from the store directly: ``latest`` is asked
    inside a write transaction, with the write lock held, and a second connection opened from
    here could wait on that lock (or on a pool of one connection) for ever. Each ``latest``
    passes what its transaction read; the source keeps them (a value once recorded never
    changes) for ``current()`` as well. Until it is given any (a worker before its first
    snapshot load), a new file is compared with nothing. ``open_services`` gives it the values
    at once, once ``check_store_keyring`` has compared and recorded.

    Safe to share between threads: a use case takes one keyring from ``current()`` and uses it
    to its end, whatever the file does meanwhile.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        check_interval_s: float = KEYRING_CHECK_INTERVAL_S,
        fallback: Keyring | None = None,
    ) -> None:
        """``fallback``: the keyring to start with when the file cannot be used now, as a
        process that read it before keeps its keyring (a worker that serve restarts while the
        file is being replaced, given the keyring serve holds); logged once, as a change that
        cannot be used is, and the file is followed from there. Without one, such a file
        raises as ``load_keyring`` does."""
        self._path = settings.keyring_path.absolute()
        self._environment = settings.environment
        self._monotonic = monotonic
        self._interval = check_interval_s
        self._lock = threading.Lock()
        self._refused: _FileSignature | None = None
        seen = _seen_signature(self._path)  # before the read: a change after it is seen later
        try:
            self._keyring, self._loaded = _read_keyring_file(
                self._path,
                self._environment,
                name_file=True,
                given_file=settings.keyring_file is not None,
            )
        except UID2Error as exc:
            if fallback is None:
                raise
            log.error(
                "%s; using the keyring the serving process holds (active version %d) until the "
                "file can be used",
                exc.detail,
                fallback.active_version,
            )
            self._keyring = require_keyring(fallback, self._environment)
            self._loaded, self._refused = _NOT_READ, seen
        self._recorded: dict[int, int] = {}
        """Every KEK check value the callers of ``latest`` read from the store (a value once
        recorded never changes, so what was read once stays true)."""
        self._next_check = monotonic() + check_interval_s

    @property
    def path(self) -> Path:
        return self._path

    def __repr__(self) -> str:
        return f"KeyringFile({str(self._path)!r}, {self._keyring!r})"

    def current(self) -> Keyring:
        if self._monotonic() < self._next_check:
            return self._keyring
        with self._lock:
            now = self._monotonic()
            if now >= self._next_check:
                self._follow()
                self._next_check = self._monotonic() + self._interval
            return self._keyring

    def latest(self, recorded: Mapping[int, int]) -> Keyring:
        """Looks at the file now, whatever the interval (a writer asks inside its transaction),
        refusing new content that contradicts ``recorded``, the check values the caller's
        transaction read (see the class doc). The keyring held may still contradict them (taken
        up before the store recorded that version): the caller compares it
        (``services.kek_check_values.recorded_keyring`` for a write, ``checked_keyring`` for a
        snapshot load)."""
        with self._lock:
            self._recorded = {**self._recorded, **recorded}
            self._follow()
            self._next_check = self._monotonic() + self._interval
            return self._keyring

    def _follow(self) -> None:
        """Take up the file's new content, if it changed and can be used (see the class doc)."""
        seen = _seen_signature(self._path)
        if seen in (self._loaded, self._refused):
            return
        try:
            keyring, signature = _read_keyring_file(self._path, self._environment)
            compare_kek_check_values(keyring, self._recorded, then=_TAKEN_UP)
        except UID2Error as exc:
            log.error(
                "the keyring file %s changed but cannot be used (%s); still using the keyring "
                "read before (active version %d)",
                self._path,
                exc.detail,
                self._keyring.active_version,
            )
            self._refused = seen
            return
        self._loaded, self._refused = signature, None
        if keyring != self._keyring:
            log.warning(
                "keyring reloaded from %s: active version %d, versions %s",
                self._path,
                keyring.active_version,
                ", ".join(map(str, keyring.versions)),
            )
            self._keyring = keyring


def follow_keyring(
    settings: Settings,
    *,
    monotonic: Callable[[], float] = time.monotonic,
    fallback: Keyring | None = None,
) -> KeyringSource:
    """The keyring a long-lived process uses: it follows the keyring file (``KeyringFile``,
    starting with ``fallback`` while the file cannot be used); a keyring given as UID2_KEYRING
    is fixed (the environment of a running process cannot change: a new one there takes a
    restart)."""
    if settings.keyring_json is not None:
        return load_keyring(settings)
    return KeyringFile(settings, monotonic=monotonic, fallback=fallback)


def ensure_keyring(settings: Settings, random: RandomBytes = system_random) -> Keyring:
    """``keyring_for_init``'s keyring."""
    return keyring_for_init(settings, random).keyring


@dataclass(frozen=True)
class InitKeyring:
    """The keyring ``init`` goes on with, and whether this run created its file."""

    keyring: Keyring
    created: bool


def keyring_for_init(settings: Settings, random: RandomBytes = system_random) -> InitKeyring:
    """For ``init``: the configured keyring, or a new development one written with mode 0600.

    Never creates one in prod (a generated production keyring is provisioned on purpose, kept
    outside the data directory's backups), and never overwrites an existing file. ``init``
    first checks that the database holds nothing sealed (``require_unsealed_store``). The new
    file appears whole or not at all (``_create_private``): an init interrupted while it writes
    leaves no keyring file, and the next init creates one. A file that cannot be written raises
    ``KeyringError`` naming it.
    """
    if settings.environment is Environment.PROD or settings.keyring_json is not None:
        return InitKeyring(load_keyring(settings), created=False)
    path = settings.keyring_path
    if os.path.islink(path) and not os.path.exists(path):  # neither raises, as Path's may
        # Not "no keyring": creating one would fail on the link, and the next init likewise.
        raise KeyringError(
            f"The keyring file {path.absolute()} is a link to {os.readlink(path)}, which does "
            "not exist: put the keyring there, or remove the link for init to create one"
        )
    if not os.path.exists(path):
        keyring = generate_keyring(random, development=True)
        sweep_keyring_debris(settings)
        try:
            created = _create_private(path, keyring.to_json())
        except OSError as exc:
            raise KeyringError(
                f"The keyring file {path.absolute()} cannot be written: {_reason(exc)}"
            ) from None
        if created:
            return InitKeyring(keyring, created=True)
        # another init won the race: its keyring, which this run did not create
    return InitKeyring(load_keyring(settings), created=False)


def discard_interrupted_keyring(settings: Settings) -> bool:
    """For ``init``, before it looks at the keyring: remove an empty keyring file (0 bytes, a
    regular file, not a link), as an earlier version's ``init`` left it when it was stopped
    between creating the file and writing it, provided the database holds nothing sealed yet
    (it never does after such a stop, since the keyring comes before the material); ``init``
    then creates a new one. True when it removed the file.

    Nothing to do in prod (``init`` never creates a keyring there), for a keyring given as
    UID2_KEYRING, for a file that holds anything, or for a database that holds sealed items or
    is at an earlier schema revision: loading the keyring then refuses the file, naming it.
    """
    path = settings.keyring_path
    if not _empty_keyring_file(settings) or not _holds_nothing_sealed(settings):
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise KeyringError(
            f"The keyring file {path.absolute()} is empty and cannot be removed: {_reason(exc)}"
        ) from None
    log.warning(
        "removed the empty keyring file %s, left by an interrupted init; a new one is created",
        path.absolute(),
    )
    return True


def _empty_keyring_file(settings: Settings) -> bool:
    """True when ``init`` would create a keyring and its file is empty (a regular file)."""
    if settings.environment is Environment.PROD or settings.keyring_json is not None:
        return False
    try:
        found = os.lstat(settings.keyring_path)
    except OSError:
        return False
    return stat.S_ISREG(found.st_mode) and found.st_size == 0


def _holds_nothing_sealed(settings: Settings) -> bool:
    """True for a configured database never migrated, or at this code's schema and holding
    nothing sealed; False for one at an earlier revision (it may hold sealed items)."""
    sealed = _read_store(settings, None, _sealed_count)
    if sealed is None:
        return database_is_new(settings)
    return sealed == 0


def _sealed_count(tx: ReadTx) -> int:
    return sum(counts.total for counts in sealed_inventory(tx).values())


def require_unsealed_store(settings: Settings) -> None:
    """Before a new keyring is made: refuse a database (at the current schema) that already
    holds sealed items, as one does when a new data directory is pointed at a database another
    one initialised. Those items were sealed under a keyring this directory lacks, and a new one
    would seal more beside them that the other directory's processes could not open."""
    store = open_configured_store(settings)
    try:
        with store.read() as tx:
            sealed = _sealed_count(tx)
    finally:
        store.close()
    if sealed:
        raise KeyringMissing(
            f"The database already holds {sealed} item{'' if sealed == 1 else 's'} sealed under "
            f"a keyring, and {settings.keyring_path.absolute()} does not exist: copy that "
            "keyring there (or give it as UID2_KEYRING or UID2_KEYRING_FILE), then run init "
            "again. A new keyring would not open them"
        )


def keyring_source(settings: Settings) -> str:
    """Where ``load_keyring`` reads the keyring: ``"environment"``, or the file's absolute path."""
    if settings.keyring_json is not None:
        return KEYRING_FROM_ENVIRONMENT
    return str(settings.keyring_path.absolute())


def save_keyring(settings: Settings, keyring: Keyring) -> None:
    """Replace the keyring file with ``keyring`` (KEK rotation's ``add-version``/``drop-version``).

    Atomic: the new content goes to a temporary file beside the keyring (mode 0600 whatever the
    umask), is synced, and replaces the keyring with ``os.replace``; then the directory is synced
    so the rename survives a crash. Whatever happens, the file holds the old keyring or the new
    one, never a torn mix: a keyring that no longer parses would strand everything sealed under
    it. A symbolic link is followed, so the keyring it points at is replaced and the link stays.

    Refused (InvalidInput) for a keyring given as UID2_KEYRING: that comes from whatever started
    the process, which no command can rewrite. The rules of ``load_keyring`` apply to what is
    written too: in prod, never a development or placeholder keyring. A file that cannot be
    written raises ``KeyringError`` naming it, with the keyring left as it was.
    """
    stage_keyring(settings, keyring).publish()


def stage_keyring(settings: Settings, keyring: Keyring) -> StagedKeyring:
    """``save_keyring`` in two steps, for a change the store records too (KEK rotation): the
    new keyring is written, synced, to a temporary file beside the keyring now, under the same
    rules and refusals; ``publish`` replaces the keyring with it (``os.replace``, then the
    directory is synced), ``discard`` removes it. A process stopped in between leaves the
    keyring as it was and a temporary file that ``sweep_keyring_debris`` removes."""
    if settings.keyring_json is not None:
        raise InvalidInput(
            "The keyring comes from the UID2_KEYRING environment variable and cannot be written; "
            "provision the new keyring JSON there"
        )
    require_keyring(keyring, settings.environment)
    path = settings.keyring_path.resolve()
    sweep_keyring_debris(settings)
    _prove_replaceable(path)
    temporary = _keyring_beside(path, keyring.to_json())

    def publish() -> None:
        _put_in_place(temporary, path)

    def discard() -> None:
        temporary.unlink(missing_ok=True)

    return StagedKeyring(publish, discard)


def _keyring_beside(path: Path, content: str) -> Path:
    """``content`` in a new temporary file beside the keyring file ``path`` (``_write_temporary``);
    KeyringError naming the file when that cannot be written."""
    try:
        return _write_temporary(path, content)
    except OSError as exc:
        raise KeyringError(f"The keyring file {path} cannot be written: {_reason(exc)}") from None


def _put_in_place(temporary: Path, path: Path) -> None:
    """Replace the keyring file ``path`` with ``temporary`` (``os.replace``), then sync the
    directory; KeyringError, ``temporary`` removed and the keyring as it was, when the file
    cannot be replaced."""
    try:
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise KeyringError(
            f"The keyring file {path} cannot be replaced: {_reason(exc)}; the keyring is unchanged"
        ) from None
    # In place: from here a failure only leaves the rename less durable (_replace_private).
    _sync_directory(path, "replaced")


def _prove_replaceable(path: Path) -> None:
    """Replace the keyring file at ``path`` with a copy of itself, so that a file which can be
    read, and written beside, but not replaced (mounted in place, as a container's secret is:
    EBUSY; immutable: EPERM) refuses a change before the store records it, rather than after the
    commit, when the store and the audit trail would hold a change the file never took. The copy
    holds the same bytes, synced before it takes the file's place: whoever reads the file
    meanwhile, or after a crash, reads the same keyring. A file not there yet, or unreadable, is
    left to the change, which refuses it as it reads the keyring."""
    try:
        current = path.read_bytes().decode("utf-8")  # as it is, line ends included
    except (OSError, UnicodeDecodeError):
        return
    _put_in_place(_keyring_beside(path, current), path)


def _reason(exc: OSError) -> str:
    """What an operating-system error says, for a message (its class when it says nothing)."""
    return exc.strerror or type(exc).__name__


def _temporary_names(path: Path) -> re.Pattern[str]:
    """The names ``_write_temporary`` gives its temporary files beside ``path``."""
    return re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}" + re.escape(_TEMPORARY_SUFFIX))


def sweep_keyring_debris(settings: Settings, *, now: float | None = None) -> list[Path]:
    """Remove the temporary files a keyring write cut short by a crash left beside the file.

    Such a file holds a whole keyring (every KEK, the pepper) under a name nothing reads: after
    ``drop-version`` it may be the last copy of a retired key. A file is removed only when its
    name is one ``save_keyring`` gives, it is a regular file (not a link) owned by this user, and
    it was last written more than ``KEYRING_DEBRIS_AGE_S`` ago (a write takes milliseconds, so
    one in progress elsewhere is left alone). Run by every keyring write and when ``serve``
    starts; returns what it removed (each logged as a warning, by name). Nothing to do for a
    keyring given as UID2_KEYRING; a directory that cannot be listed is left as it is.
    """
    if settings.keyring_json is not None:
        return []
    return _sweep_temporaries(settings.keyring_path.resolve(), "the keyring file", now)


def _sweep_temporaries(path: Path, beside: str, now: float | None) -> list[Path]:
    """Remove the temporary files an interrupted write of ``path`` left beside it, as
    ``sweep_keyring_debris`` says; each one removed is logged, as left beside ``beside``."""
    names = _temporary_names(path)
    limit = (time.time() if now is None else now) - KEYRING_DEBRIS_AGE_S
    removed: list[Path] = []
    try:
        entries = [entry for entry in os.scandir(path.parent) if names.fullmatch(entry.name)]
    except OSError:
        return removed
    for entry in entries:
        try:
            status = entry.stat(follow_symlinks=False)
            if (
                stat.S_ISREG(status.st_mode)
                and status.st_uid == os.geteuid()
                and status.st_mtime < limit
            ):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    for debris in removed:
        log.warning("removed %s, left beside %s by an interrupted write", debris, beside)
    return removed


def _replace_private(path: Path, content: str) -> None:
    """Atomically replace ``path`` with ``content``, owner-only (see ``save_keyring``)."""
    temporary = _write_temporary(path, content)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    # The new content is in place: from here a failure only leaves the rename less durable, and
    # reporting the write as failed would be false (for a keyring, the caller's audit event would
    # roll back while every serve took up the new file).
    _sync_directory(path, "replaced")


def _create_private(path: Path, content: str) -> bool:
    """Create ``path`` holding ``content``, owner-only, whole or not at all; False (nothing
    written) when ``path`` exists already. The content goes to a temporary file beside it
    (``_write_temporary``), which is then linked to ``path`` (a link never replaces an existing
    file) and removed; then the directory is synced. Stopped at any point, ``path`` is absent
    or complete: at worst a temporary file is left, which ``sweep_keyring_debris`` removes."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=_PRIVATE_DIR)
    temporary = _write_temporary(path, content)
    try:
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            # A filesystem without hard links (vfat, exFAT, some network shares): created
            # exclusively and then written, as before; an init stopped in between leaves an
            # empty file, which the next init replaces (``discard_interrupted_keyring``).
            return _create_exclusive(path, content)
    finally:
        temporary.unlink(missing_ok=True)
    _sync_directory(path, "created")
    return True


_NO_HARD_LINKS: Final = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
"""What ``link`` fails with where the filesystem has no hard links."""


def _create_exclusive(path: Path, content: str) -> bool:
    """Create ``path`` exclusively, owner-only, then write and sync it; False when it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE_FILE)
    except FileExistsError:
        return False
    try:
        _write_private(fd, content)
    finally:
        os.close(fd)
    _sync_directory(path, "created")
    return True


def _write_private(fd: int, content: str) -> None:
    """Make ``fd`` owner-only whatever the umask, write all of ``content`` (a write may take
    only part of it), and sync it."""
    os.fchmod(fd, _PRIVATE_FILE)
    data = memoryview(content.encode("utf-8"))
    while data:
        data = data[os.write(fd, data) :]
    os.fsync(fd)


def _write_temporary(path: Path, content: str) -> Path:
    """A new file beside ``path`` (named as ``_temporary_names`` says), mode 0600 whatever the
    umask, holding ``content``, synced. Removed again when that fails."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMPORARY_SUFFIX)
    temporary = Path(name)
    try:
        try:
            _write_private(fd, content)
        finally:
            os.close(fd)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _sync_directory(path: Path, done: str) -> None:
    """Sync ``path``'s directory, so that the file just ``done`` there survives a crash of the
    machine; a failure is only logged (the file is in place)."""
    try:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        log.warning(
            "the file %s was %s, but its directory could not be synced (%s): this may not "
            "survive a crash of the machine",
            path,
            done,
            exc.strerror or exc,
        )


_CANNOT_CREATE: Final = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
"""How creating a file fails in a directory no file can be created in (read-only, not writable,
immutable)."""


@dataclass(frozen=True, slots=True)
class ConfiguredKeyring:
    """The keyring ``settings`` name, as the KEK rotation use cases read and write it."""

    settings: Settings

    @property
    def source(self) -> str:
        return keyring_source(self.settings)

    @property
    def writable(self) -> bool:
        return self.settings.keyring_json is None

    def load(self) -> Keyring:
        return load_keyring(self.settings)

    def stage(self, keyring: Keyring) -> StagedKeyring:
        return stage_keyring(self.settings, keyring)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive lock (``flock``) on a file beside the keyring, ``.<name>.lock`` (mode
        0600; beside the file a symbolic link points at, so every data directory sharing one
        keyring file shares its lock), held for the block: two keyring changes through the
        same file, from any processes, run one after the other. Nothing to hold for a keyring
        given as UID2_KEYRING, which no change writes, nor where no lock file can be made."""
        if self.settings.keyring_json is not None:
            yield
            return
        path = self.settings.keyring_path.resolve()
        if not os.path.exists(path):  # False too for a path that cannot be looked at
            # A change needs the keyring it changes: refused as a missing or unreadable one
            # (naming the file), before a lock file is made beside nothing.
            load_keyring(self.settings)
        fd = _open_lock(path, path.parent / f".{path.name}.lock")
        if fd is None:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # and with it the lock


def _open_lock(path: Path, lock: Path) -> int | None:
    """The keyring's lock file, opened (made when missing); None where no keyring change can
    write at all, so that none can race: a directory no file can be created in (a read-only
    mount of a provisioned keyring, one not writable or immutable), the lock file missing or
    not. One this process may only read (another user's, on a read-only mount) is locked read
    only: ``flock`` needs no more. Any other failure (a link where the lock should be, no
    descriptor left, a lock it may not even read in a directory it can write) refuses the
    change: it would run unlocked where it can write."""
    try:
        return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        failed = exc
    try:
        return os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        pass
    if failed.errno in _CANNOT_CREATE and not os.access(lock.parent, os.W_OK):
        return None
    raise KeyringError(f"The keyring file {path} cannot be locked: {_reason(failed)}") from None


def check_environment(settings: Settings) -> bool:
    """Refuse a data directory recorded for another environment; True when one is recorded.

    An empty ``environment`` file (an earlier version's ``init`` stopped while writing it)
    records none, as ``Settings.from_env`` reads it: ``init`` then writes it."""
    recorded = recorded_environment(settings.data_dir)
    if recorded is None:
        return False
    if recorded != settings.environment.value:
        given = settings.environment.value
        if settings.environment_source is EnvironmentSource.VARIABLE:
            fix = f"set UID2_ENVIRONMENT to {recorded} or unset it"
        else:
            fix = f"use the {recorded} environment"
        raise InvalidInput(
            f"The data directory was initialised for the {recorded} environment, not {given}: "
            f"{fix}, or give the {given} data directory (--data-dir); the recorded environment "
            "cannot change"
        )
    return True


def record_environment(settings: Settings) -> None:
    """Remember which environment a data directory serves; refuse to change it afterwards.
    ``init`` records it last, once everything else succeeded: a refused first run leaves the
    directory free to be initialised for another environment. The file (mode 0600) is replaced
    whole (``_replace_private``): a run stopped while writing it leaves the one before (none, or
    an empty one), never a part."""
    path = settings.environment_path
    if path.parent.is_dir():  # what a write stopped before its rename left
        _sweep_temporaries(path.resolve(), "the environment file", None)
    if check_environment(settings):
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=_PRIVATE_DIR)
    _replace_private(path, settings.environment.value + "\n")


def store_environment(settings: Settings) -> Environment | None:
    """The environment the configured database records (``DeploymentReader``), read without
    writing anything: None when it records none, or is not at this code's schema (a database
    not yet created or upgraded: whatever opens it for use says so). Raises StoreUnavailable
    for a database that cannot be reached."""
    return _read_store(settings, None, lambda tx: tx.deployment.environment())


def _read_store(settings: Settings, store: Store | None, read: Callable[[ReadTx], _T]) -> _T | None:
    """``read`` in a read unit of ``store``, else of the configured database; None (nothing
    read) for a configured database not at this code's schema (see ``store_environment``)."""
    if store is not None:
        with store.read() as tx:
            return read(tx)
    try:
        configured = open_configured_store(settings)
    except SchemaOutOfDate:
        return None
    try:
        with configured.read() as tx:
            return read(tx)
    finally:
        configured.close()


def check_store_environment(settings: Settings, store: Store | None = None) -> None:
    """Refuse (InvalidInput) a database that is not for ``settings``' environment (``store``,
    else the configured one, read without writing; nothing to check in one not yet created or
    upgraded). Several data directories share one database, each with its own ``environment``
    file: a second one whose file is missing or wrong would otherwise mint keys for another
    environment into the database, and its serve would refuse the database's real keys.

    A database records its environment (``record_store_environment``); one initialised by an
    earlier version records none, and then the ids of its API keys and admin tokens say it when
    they all carry one environment's letter (``UID2-C-I-...``: integ). Nothing to compare with
    one that records none and holds no credential, or whose ids disagree (``init`` and
    ``serve`` record nothing in that one: ``check_store_recordable``)."""
    refusal = _read_store(settings, store, lambda tx: _refusal(settings, tx, recording=False))
    if refusal is not None:
        raise refusal


def check_store_recordable(settings: Settings, store: Store) -> None:
    """Before ``init`` or ``serve`` writes anything, refuse (InvalidInput) what
    ``record_store_environment`` would refuse once it has: read only. Beyond
    ``check_store_environment``, a database that records no environment and holds credentials
    is refused to a data directory whose environment is only defaulted (nothing says the
    database's), and so is one whose key and token ids disagree (nothing says it either)."""
    refusal = _read_store(settings, store, lambda tx: _refusal(settings, tx, recording=True))
    if refusal is not None:
        raise refusal


def adopt_store_environment(settings: Settings) -> Settings:
    """For ``init``: ``settings`` with the environment the database records, when theirs was
    only defaulted (no ``--environment``, no UID2_ENVIRONMENT, no ``environment`` file: a new
    data directory on a database another one initialised), marked ``EnvironmentSource.DATABASE``;
    a mismatch with an environment given or recorded is refused (``check_store_recordable``).
    Reads only: nothing is written before the refusal."""

    def adopt(tx: ReadTx) -> Settings:
        recorded = tx.deployment.environment()
        if recorded is not None and settings.environment_source is EnvironmentSource.DEFAULT:
            return replace(
                settings, environment=recorded, environment_source=EnvironmentSource.DATABASE
            )
        refusal = _refusal(settings, tx, recording=True)
        if refusal is not None:
            raise refusal
        return settings

    adopted = _read_store(settings, None, adopt)
    return settings if adopted is None else adopted


def record_store_environment(settings: Settings, store: Store) -> None:
    """Record ``settings.environment`` in the store when it records none yet, in one small
    write transaction that moves no change sequence. Run last, once everything else the
    command does has succeeded (``init`` once the material is in place, before the data
    directory's ``environment`` file and the bootstrap token; ``serve`` at start-up, for a
    store an earlier version initialised, once its material is ready): a refused command
    records nothing, and a recorded environment never changes.

    Refused (InvalidInput), recording nothing, as ``check_store_recordable`` refuses (the
    command checks that before its first write; this checks again, under the write lock): a
    store that records another environment (another data directory's ``init`` got there
    first), or that records none and holds credentials whose ids name another, or disagree,
    or, for an environment only defaulted (``EnvironmentSource.DEFAULT``), any."""
    with store.transaction() as tx:
        refusal = _refusal(settings, tx, recording=True)
        if refusal is None:
            tx.deployment.record_environment(settings.environment)
    if refusal is not None:
        raise refusal


def _refusal(settings: Settings, tx: ReadTx, *, recording: bool) -> InvalidInput | None:
    """Why the store ``tx`` reads is not for ``settings``' environment, or None. ``recording``:
    for a command about to record it (``check_store_recordable``)."""
    recorded = tx.deployment.environment()
    if recorded is settings.environment:
        return None
    letters = tx.deployment.credential_environment_letters()
    if recorded is not None:
        return _environment_mismatch(settings, recorded, _named_by(letters))
    return _unrecorded_refusal(settings, letters, recording=recording)


def _unrecorded_refusal(
    settings: Settings, letters: frozenset[str], *, recording: bool
) -> InvalidInput | None:
    """``_refusal`` for a store that records no environment, whose credential ids carry
    ``letters``."""
    named = _named_by(letters)
    if named is None and len(letters) > 1:
        if not recording:
            return None  # nothing says which environment the store serves
        listed = ", ".join(sorted(letters))
        return InvalidInput(
            f"{_UNRECORDED}, and the ids of its API keys and admin tokens disagree: they carry "
            f"the environment letters {listed}. Nothing says which environment it serves, so "
            f"{settings.environment.value} is not recorded in it"
        )
    if named is None:
        return None  # no credentials (or only ids naming no environment): nothing to go by
    if recording and settings.environment_source is EnvironmentSource.DEFAULT:
        return InvalidInput(
            "The database was initialised by an earlier version, which did not record its "
            "environment, and this data directory records none: run init with --environment "
            "(or UID2_ENVIRONMENT) naming the database's environment"
        )
    if named is settings.environment:
        return None
    return _inferred_mismatch(settings, named)


_UNRECORDED: Final = "The database records no environment (an earlier version initialised it)"


def _named_by(letters: frozenset[str]) -> Environment | None:
    """The environment every stored key and token id names, if they all name the same one."""
    named = {Environment.from_letter(letter) for letter in letters}
    return named.pop() if len(named) == 1 else None


def _inferred_mismatch(settings: Settings, inferred: Environment) -> InvalidInput:
    """The refusal of a database that records no environment, whose credential ids all name
    ``inferred``: both environments, and the fix for where this one came from."""
    given = settings.environment.value
    head = (
        f"{_UNRECORDED}, but its API key and admin token ids carry {inferred}'s letter "
        f"({inferred.letter}), not {given}'s"
    )
    if settings.environment_source is EnvironmentSource.DEFAULT:
        return InvalidInput(
            f"{head} (the default: this data directory records no environment): set "
            f"UID2_ENVIRONMENT={inferred}, or run init --environment {inferred}"
        )
    if settings.environment_source is EnvironmentSource.DATA_DIRECTORY:
        return _not_its_database(head)
    return _set_or_not_its_database(head, inferred, given)


def _environment_mismatch(
    settings: Settings, recorded: Environment, named: Environment | None
) -> InvalidInput:
    """The refusal of a database recorded for ``recorded``, whose credential ids all name
    ``named`` (None: they disagree, or it holds none): both environments, and the fix for where
    this invocation's environment came from (kept short: ``safe_message`` cuts a message at 300
    characters, so a path goes last). A data directory's ``environment`` file is only said to
    be wrong when the database's credentials confirm its record."""
    given = settings.environment.value
    head = f"The database was initialised for the {recorded} environment, not {given}"
    if named is not None and named is not recorded:
        return InvalidInput(
            f"{head}, but its API key and admin token ids carry {named}'s letter "
            f"({named.letter}): its record and its credentials disagree (the record cannot "
            f"change). Make sure which deployment the database is before setting any data "
            f"directory to {recorded}"
        )
    if settings.environment_source is EnvironmentSource.DEFAULT:
        return InvalidInput(
            f"{head} (the default: this data directory records no environment): set "
            f"UID2_ENVIRONMENT={recorded}, or run init, which adopts the database's"
        )
    if settings.environment_source is EnvironmentSource.DATA_DIRECTORY:
        if named is recorded:
            return InvalidInput(
                f"{head}, which this data directory records: give it its own database "
                f"(--database-url), or write {recorded} into "
                f"{settings.environment_path.absolute()}"
            )
        return _not_its_database(head)
    return _set_or_not_its_database(head, recorded, given)


def _not_its_database(head: str) -> InvalidInput:
    """The fix for a data directory whose own record is right: another database."""
    return InvalidInput(
        f"{head}, which this data directory records: give it the database of its own "
        f"deployment (--database-url)"
    )


def _set_or_not_its_database(head: str, database: Environment, given: str) -> InvalidInput:
    """The fix for an environment given by option or variable: the database's, or another
    database."""
    return InvalidInput(
        f"{head}: set UID2_ENVIRONMENT (init: --environment) to {database}, or give the "
        f"database of the {given} deployment (--database-url)"
    )


def shown_database_url(settings: Settings) -> str | None:
    """The database URL given (``--database-url``, UID2_DATABASE_URL) as a command run from
    anywhere can use it: its password hidden, a SQLite file as the absolute path it opens
    (percent-encoded, as a URL reads it back); None when the data directory's own SQLite file is
    the database."""
    if settings.database_url is None:
        return None
    path = sqlite_path(settings.database_url)
    if path is not None:
        return f"sqlite:///{urllib.parse.quote(str(path))}"
    return shown_url(normalise_url(settings.database_url))


def database_backend(settings: Settings) -> str:
    """``sqlite`` or ``postgresql``: the backend of the configured database (the embedded file,
    or what a database URL names, a ``sqlite:///`` one included), as the opened store names it."""
    return "postgresql" if sqlite_path(settings.store_url) is None else "sqlite"


def upgrade_database(settings: Settings, *, earlier: bool = True) -> str:
    """Apply the shipped migrations to the configured database; returns the schema revision.
    With ``earlier`` off (``init``), a database an earlier version set up is refused, untouched
    (``upgrade``).

    A SQLite file (the embedded one, or one a database URL names) is created owner-only (0600,
    whatever the umask; SQLite gives its journal files the same mode), the embedded one in a data
    directory made 0700: it holds hashes of every key
    and everything sealed under the keyring. An existing file (and its -wal/-shm journals) owned
    by this user is set to 0600 as well, so a file some earlier run left with the umask's mode is
    made private by the next init or upgrade."""
    if settings.database_url is None:
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True, mode=_PRIVATE_DIR)
        except OSError as exc:
            raise SettingsError(
                f"The data directory {settings.data_dir.absolute()} cannot be created: "
                f"{_reason(exc)}"
            ) from None
    db_path = sqlite_path(settings.store_url)  # the file SQLite opens, a URL's one included
    if db_path is not None:
        try:
            fd = os.open(db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            _make_sqlite_files_private(db_path)
        except OSError:
            pass  # no such directory, say: the upgrade reports it (StoreUnavailable)
        else:
            os.fchmod(fd, _PRIVATE_FILE)
            os.close(fd)
    return upgrade(settings.store_url, earlier=earlier)


def _make_sqlite_files_private(db_path: Path) -> None:
    """Set the SQLite file and its journals, where present and owned by this user, to 0600."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        _make_file_private(db_path.with_name(db_path.name + suffix))


def make_keyring_file_private(settings: Settings) -> None:
    """For ``init``: a keyring file it is given (provisioned by hand, say) that any user may read
    or change made as private as the one it writes (0600), as the SQLite file beside it is
    (``upgrade_database``), when this user owns it. A file only its group may also read is left
    as it is (a group may be how a deployment hands it to the service), as is one whose mode
    cannot be changed (a read-only mount): reading that one warns."""
    if settings.keyring_json is None:
        with contextlib.suppress(OSError):
            _make_file_private(settings.keyring_path, only_if=_OTHERS_MAY_ACCESS)


def _make_file_private(path: Path, *, only_if: int | None = None) -> None:
    """Set ``path`` (a link's target) to 0600 when it is a regular file this user owns whose
    mode is not 0600 (and, with ``only_if``, has one of those bits)."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return
    mode = stat.S_IMODE(found.st_mode)
    if (
        stat.S_ISREG(found.st_mode)
        and found.st_uid == os.getuid()
        and mode != _PRIVATE_FILE
        and (only_if is None or mode & only_if)
    ):
        os.chmod(path, _PRIVATE_FILE)


def open_configured_store(settings: Settings, *, check_schema: bool = True) -> Store:
    """The configured store (PostgreSQL when a database URL is set, else the SQLite file).

    ``check_schema`` (default) refuses a database not at this code's schema revision
    (SchemaOutOfDate); without it nothing connects until the store is first used.
    """
    return open_store(settings.store_url, check_schema=check_schema)


def database_is_new(settings: Settings) -> bool:
    """True when the configured database was never migrated (no schema revision at all);
    SchemaOutOfDate for a revision this code does not ship (a newer version's)."""
    return current_revision(settings.store_url) is None


def bootstrap_token_missing(settings: Settings) -> bool:
    """True when the configured store (at this code's schema) holds no admin token at all: the
    bootstrap token ``init`` issues last was never issued (its ``init`` failed at that step),
    and no one can administer the store until ``init`` runs again. A revoked token still counts:
    the bootstrap token is issued only while none exists. SchemaOutOfDate as ``open_store``."""
    store = open_store(settings.store_url)
    try:
        with store.read() as rx:
            return not rx.admin_tokens.list_all()
    finally:
        store.close()


def material_config(
    settings: Settings, *, expired_key_retention_s: int | None = None
) -> MaterialConfig:
    """The material configuration every command and process uses for ``settings``.

    ``expired_key_retention_s`` (``ServeSettings.key_retention_s``, read by the commands that
    run the key rotation schedule: ``serve`` and ``keys rotate``) lets ``rotate_keys`` delete
    keys expired at least that long ago (longer when a serve recorded a longer token lifetime in
    the store); None (every other command) keeps every key.
    """
    return MaterialConfig(
        bucket_count=settings.salt_bucket_count,
        identity_scope=settings.identity_scope,
        identity_v3=settings.identity_v3,
        expired_key_retention_s=expired_key_retention_s,
    )


def material_service(
    settings: Settings,
    store: Store,
    keyring: KeyringSource,
    clock: Clock | None = None,
    random: RandomBytes | None = None,
    *,
    expired_key_retention_s: int | None = None,
) -> MaterialService:
    """The material use cases over ``store`` with ``material_config(settings, ...)``."""
    return MaterialService(
        store,
        keyring,
        material_config(settings, expired_key_retention_s=expired_key_retention_s),
        SystemClock() if clock is None else clock,
        system_random if random is None else random,
    )


def open_services(
    settings: Settings,
    *,
    clock: Clock | None = None,
    random: RandomBytes | None = None,
    keyring: KeyringSource | None = None,
    expired_key_retention_s: int | None = None,
) -> Services:
    """Load the keyring, open the store (refusing an out-of-date schema, one recorded for
    another environment: ``check_store_environment``, and a keyring holding another key under a
    version number the store knows: ``check_store_keyring``) and wire the services.

    ``keyring`` defaults to the configured keyring, followed (``follow_keyring``): every service
    asks it once per use case, and a use case that writes asks inside its transaction for the
    file as it is then, so a command that runs while the keyring rotates seals under a version
    the keyring still holds. ``expired_key_retention_s``: see ``material_config``."""
    ring: KeyringSource = follow_keyring(settings) if keyring is None else keyring
    require_keyring(ring.current(), settings.environment)
    store = open_configured_store(settings)
    try:
        check_store_environment(settings, store)
        recorded = check_store_keyring(store, ring.current())
        # A followed file now knows what the store records: from here on it refuses a new file
        # that contradicts it, for ``current()`` too (an admin process may read for a long
        # while before its first write).
        ring.latest(recorded)
    except BaseException:
        store.close()
        raise
    now = SystemClock() if clock is None else clock
    rand = system_random if random is None else random
    material = material_service(
        settings, store, ring, now, rand, expired_key_retention_s=expired_key_retention_s
    )
    return Services(
        store=store,
        credentials=CredentialService(
            store,
            ring,
            settings.environment,
            now,
            rand,
            rotation_age_ms=settings.rotation_age_days * DAY_MS,
            scope=settings.identity_scope,
        ),
        admin=AdminService(store, ring, settings.environment, now, rand),
        settings=settings,
        keyring=ring,
        material=material,
        sharing=SharingService(
            store,
            ring,
            settings.environment,
            now,
            rand,
            material=material,
            scope=settings.identity_scope,
        ),
    )


def check_store_keyring(store: Store, keyring: Keyring) -> Mapping[int, int]:
    """Refuse (KeyringError) a keyring holding another key under a version number ``store``
    records a check value for (``compare_kek_check_values``), and record the check values of
    the versions it holds that the store has none for. Returns the check values the store
    records once that is done (those it could not record left out), for a keyring source that
    follows a file (``KeyringFile``).

    Run by ``open_services``, so by ``init``, by every other command that opens the services and
    by ``serve`` at start-up, before their first write: ``init`` records its keyring this way
    (``keyring add-version`` records each version it adds itself). A store an earlier version
    wrote records none, so the first process of this version to open it records those of its
    keyring: trust on first use. Only reads when the store records every held version already;
    else one small write transaction that moves no change sequence, comparing again under the
    write lock (of two processes recording one version, the first wins and the other is
    refused)."""
    with store.read() as rx:
        recorded = rx.deployment.kek_check_values()
    unrecorded = compare_kek_check_values(keyring, recorded)
    if not unrecorded:
        return recorded
    try:
        with store.transaction() as tx:
            written = tx.deployment.kek_check_values()
            unrecorded = compare_kek_check_values(keyring, written)
            if unrecorded:
                written = tx.deployment.record_kek_check_values(unrecorded)
    except StoreUnavailable as exc:
        # A store that can be read but not written (a read-only copy, a lock held elsewhere):
        # the keyring was compared with what is recorded, and a read-only command must still
        # work; the values are recorded by the next process that can write.
        versions = [str(version) for version in sorted(unrecorded) if version != PEPPER_CHECK]
        named = [] if PEPPER_CHECK not in unrecorded else ["the pepper"]
        if versions:
            named.append(f"key-encryption key version(s) {', '.join(versions)}")
        log.warning("check values of %s not recorded: %s", " and ".join(named), exc.detail)
        return recorded
    return written


def keyring_rotation_service(
    settings: Settings,
    store: Store,
    *,
    clock: Clock | None = None,
    random: RandomBytes | None = None,
) -> KeyringRotationService:
    """The KEK rotation use cases over ``store`` and the keyring ``settings`` name; a store
    recorded for another environment is refused first (``check_store_environment``). Each use
    case compares the keyring with the store's check values itself, in its unit of work."""
    check_store_environment(settings, store)
    return KeyringRotationService(
        store,
        ConfiguredKeyring(settings),
        SystemClock() if clock is None else clock,
        system_random if random is None else random,
    )


_ELSEWHERE = "Name the one serve uses with --data-dir (or UID2_DATA_DIR)"
_INIT_NEW = "`uid2-operator init` sets up a new one"


def require_initialised_database(settings: Settings) -> None:
    """Refuse (``SchemaOutOfDate``, exit status 1), before anything is created, a database
    ``init`` never set up: with the embedded SQLite default, a data directory that does not exist
    or holds no database file (named by its absolute path, as the other commands name a missing
    data directory); a SQLite file a database URL names that does not exist; a database with no
    schema revision at all (an empty PostgreSQL schema, an empty file). A database URL's data
    directory plays no part: the upgrade neither reads nor writes it."""
    if settings.database_url is None:
        data_dir = settings.data_dir.resolve()
        if not data_dir.is_dir():
            raise SchemaOutOfDate(
                f"No database: there is no data directory {data_dir}. {_ELSEWHERE}, or run from "
                f"the directory serve runs in; {_INIT_NEW}"
            )
        if not (data_dir / DB_FILE).exists():
            raise SchemaOutOfDate(
                f"No database: the data directory {data_dir} has no {DB_FILE}. {_ELSEWHERE}, or "
                f"its database with --database-url (or UID2_DATABASE_URL); {_INIT_NEW}"
            )
    path = sqlite_path(settings.store_url)
    if path is not None and not path.exists():
        raise SchemaOutOfDate(
            f"No database: the SQLite file {path} does not exist. Check --database-url (or "
            f"UID2_DATABASE_URL); {_INIT_NEW}"
        )
    if path is not None and path.is_file() and path.stat().st_size == 0:
        revision = None  # an empty file (an interrupted init's): nothing to read, nor to write
        shown = f"sqlite:///{path}"
    else:
        engine, _ = make_engine(settings.store_url, must_exist=True)  # never creates the file
        try:
            revision = revision_of(engine)  # refuses a newer version's revision as such
            shown = shown_url(engine.url)
        finally:
            engine.dispose()
    if revision is None:
        raise SchemaOutOfDate(
            f"The database at {shown} was never initialised (it has no schema revision): "
            "`uid2-operator init` sets it up; db upgrade upgrades only a database init set up"
        )
