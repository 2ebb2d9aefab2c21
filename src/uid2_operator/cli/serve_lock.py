"""One ``serve`` per data directory, and the runtime directory a crashed one left behind.

The lock. ``ServeLock.take`` holds an exclusive ``flock`` on ``<data dir>/serve.lock`` (mode
0600) for the whole life of a serve, taken before it binds a port or writes anything, and
without waiting: a second serve on the same data directory stops at once with a message naming
the directory and the pid of the serve that holds it. Two serves on one data directory would
fight over ``replay-table.kept`` and run the material upkeep twice. The kernel drops the lock
when its holder dies, however it dies (SIGKILL, the OOM killer), so a crash never leaves a stale
lock behind, as a pid file would. The file is never removed: a process that opened it just
before a removal would lock a file nobody else sees. Worker processes do not inherit it.

The record. The locked file also says which serve holds it and which runtime directories (see
``cli/serve.py``) that serve made and has not removed yet: one JSON object, ``{"pid": ...,
"runtime_dirs": [...]}``, rewritten in place. A serve that stops cleanly removes its runtime
directory and empties the list; one that dies leaves it. The next serve reads the record when
it takes the lock (``ServeLock.left_behind``) and takes the directories over (``take_over``):
the replay table in the newest one goes on serving (``replay_table.adopt``), and every one of
them is removed, metrics files of dead workers included.

The record is only a hint: it may have been edited, or copied with the data directory while
its serve still runs. A recorded path is removed only when it is exactly a directory under the
parent serve makes runtime directories in (``runtime_parent``), named with the serve prefix,
owned by this user, not a symlink, and in use by no serve: every serve holds an exclusive
``flock`` on its own runtime directory for as long as it runs (``ServeLock.hold``), which the
kernel drops when it dies, and the takeover holds it while it works. Anything else is left
alone and logged. The removal itself does not follow symlinks either.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

import click

from uid2_operator.services import replay_table

log = logging.getLogger(__name__)

LOCK_FILE: Final = "serve.lock"
"""The file in the data directory that serve locks and writes its record to."""
RUNTIME_PREFIX: Final = "uid2-operator-"
"""How the name of every runtime directory of serve starts."""
_RECORD_LIMIT: Final = 1 << 16
_PRIVATE_DIR: Final = 0o700
_PRIVATE_FILE: Final = 0o600


def runtime_parent() -> Path:
    """Where serve makes its runtime directories: ``/dev/shm`` (memory) where the machine has a
    usable one, else the temporary directory."""
    shm = Path("/dev/shm")  # noqa: S108 (mkdtemp makes a new 0700 directory with a random name)
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(tempfile.gettempdir())


class ServeLock:
    """The lock a serve holds on its data directory, and the record in it (module docstring)."""

    def __init__(self, path: Path, fd: int, left_behind: tuple[str, ...]) -> None:
        """Use ``take``."""
        self.path = path
        self._fd = fd
        self._held: list[int] = []
        self.left_behind = left_behind
        """The runtime directories the previous holder recorded and did not remove (it died),
        oldest first, as recorded: check each before use (``take_over`` does)."""

    @classmethod
    def take(cls, data_dir: Path) -> ServeLock:
        """Lock ``data_dir`` (made, mode 0700, when missing) for this process, or stop with a
        message when another serve holds it. The record then names this process and, until
        this serve records its own (``record``), still the directories left behind."""
        path = data_dir / LOCK_FILE
        shown = data_dir.resolve()  # named as every other message names it, whatever the cwd
        try:
            data_dir.mkdir(parents=True, exist_ok=True, mode=_PRIVATE_DIR)
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(path, flags, _PRIVATE_FILE)
        except OSError as exc:
            raise click.ClickException(
                f"cannot lock the data directory {shown}: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_record(fd).get("pid")
            os.close(fd)
            pid = f"pid {holder}" if isinstance(holder, int) else "pid unknown"
            raise click.ClickException(
                f"the data directory {shown} is in use by another uid2-operator serve "
                f"({pid}); stop that one first, or give this one another --data-dir"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise click.ClickException(
                f"cannot lock the data directory {shown}: {exc.strerror or exc}"
            ) from None
        try:
            os.fchmod(fd, _PRIVATE_FILE)
            lock = cls(path, fd, _runtime_dirs(_read_record(fd), path))
            lock.record(lock.left_behind)
        except OSError as exc:
            os.close(fd)
            raise click.ClickException(
                f"cannot write the lock file {path}: {exc.strerror or exc}"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        return lock

    def record(self, runtime_dirs: Sequence[str | Path]) -> None:
        """Write the record: this process and ``runtime_dirs``, the runtime directories that are
        to be taken over should it die now."""
        document = {"pid": os.getpid(), "runtime_dirs": [str(d) for d in runtime_dirs]}
        content = json.dumps(document).encode() + b"\n"  # one line: see ``_read_record``
        os.pwrite(self._fd, content, 0)
        os.ftruncate(self._fd, len(content))

    def hold(self, runtime_dir: Path) -> None:
        """Mark ``runtime_dir``, just made by this serve, as in use until ``release``: a serve
        whose record names it (one on a copy of this data directory) then leaves it alone."""
        claim = _claim(runtime_dir)
        if claim is None:  # only a serve holding the directory's lock could hold it
            raise OSError(f"{runtime_dir} is in use by another process")
        self._held.append(claim)

    def release(self) -> None:
        """Close the file, which drops the lock (the file itself stays: module docstring), and
        let go of the runtime directories held."""
        for claim in self._held:
            os.close(claim)
        self._held.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ServeLock:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()


def _read_record(fd: int) -> dict[str, object]:
    """The record in the lock file; empty when there is none or it cannot be read.

    Only the first line counts: ``record`` writes one line over the old record, then cuts the
    file to its length, and a serve that died between the two left the tail of a longer record
    after it."""
    raw = os.pread(fd, _RECORD_LIMIT, 0).split(b"\n", 1)[0]
    try:
        document = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError):  # an edited record, nested past the parser's depth
        return {}
    return document if isinstance(document, dict) else {}


def _runtime_dirs(record: dict[str, object], path: Path) -> tuple[str, ...]:
    listed = record.get("runtime_dirs", [])
    if not isinstance(listed, list) or not all(isinstance(entry, str) for entry in listed):
        log.warning("%s holds no list of runtime directories this serve can read; ignored", path)
        return ()
    return tuple(listed)


@dataclass(frozen=True, slots=True)
class TakeOver:
    """What ``take_over`` did: the directory whose replay table was adopted (None: none was),
    the directories removed, and why each directory left alone was left alone."""

    adopted: Path | None = None
    removed: tuple[Path, ...] = ()
    left_alone: tuple[str, ...] = ()


def take_over(
    recorded: Sequence[str], table: Path, *, parent: Path, max_past_ms: int, slots: int
) -> TakeOver:
    """Take over the runtime directories a serve that died left behind (``recorded``, oldest
    first): the replay table of the newest one that has a usable one (``replay_table.adopt``:
    same window and size) is put in place at ``table``, in this serve's own runtime directory,
    and every recorded directory is removed, whole. Only directories checked by
    ``_runtime_dir`` are touched (``parent``: where this serve makes its own), and only while
    no running serve holds them (a copy of a running serve's data directory names its own)."""
    adopted: Path | None = None
    removed: list[Path] = []
    left_alone: list[str] = []
    for entry in reversed(recorded):
        found = _runtime_dir(entry, parent)
        if isinstance(found, str):
            left_alone.append(found)
            continue
        if found is None or found == table.parent:
            continue
        try:
            claim = _claim(found)
        except FileNotFoundError:
            continue
        except OSError as exc:
            left_alone.append(f"{found} cannot be examined ({exc.strerror or exc}); left alone")
            continue
        if claim is None:
            left_alone.append(f"{found} is in use by a running serve; left alone")
            continue
        try:
            adopted, gone = _take_over_one(found, table, adopted, max_past_ms, slots)
        finally:
            os.close(claim)
        if isinstance(gone, str):
            left_alone.append(gone)
        else:
            removed.append(gone)
    return TakeOver(adopted, tuple(removed), tuple(left_alone))


def _take_over_one(
    found: Path, table: Path, adopted: Path | None, max_past_ms: int, slots: int
) -> tuple[Path | None, Path | str]:
    """``found``'s replay table put at ``table`` unless one was already (``adopted``), then
    ``found`` removed: the directory adopted so far, and ``found`` or why it stays."""
    if adopted is None:
        try:
            reason = replay_table.adopt(
                found / replay_table.TABLE_FILE, table, max_past_ms=max_past_ms, slots=slots
            )
        except OSError as exc:
            reason = f"cannot link it: {exc.strerror or exc}"
        if reason is None:
            adopted = found
        else:
            log.info("replay table in %s not taken over: %s", found, reason)
    try:
        shutil.rmtree(found)
    except OSError as exc:
        return adopted, f"{found} could not be removed: {exc.strerror or exc}"
    return adopted, found


def _claim(path: Path) -> int | None:
    """An open descriptor of the directory ``path`` with its exclusive ``flock`` held, or None
    when a running serve holds it. Not inherited by the workers serve starts."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _runtime_dir(entry: str, parent: Path) -> Path | str | None:
    """``entry`` as a runtime directory that may be taken over and removed; None when it no
    longer exists; else why it is left alone."""
    path = Path(entry)
    if (
        str(path) != entry
        or not path.is_absolute()
        or path.parent != parent
        or not path.name.startswith(RUNTIME_PREFIX)
    ):
        return f"{entry!r} is not a runtime directory of serve in {parent}; left alone"
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return f"{entry!r} cannot be examined ({exc}); left alone"
    if not stat.S_ISDIR(found.st_mode):
        return f"{entry} is not a directory; left alone"
    if found.st_uid != os.getuid():
        return f"{entry} belongs to another user; left alone"
    return path
