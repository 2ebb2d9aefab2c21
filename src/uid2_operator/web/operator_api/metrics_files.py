"""The metrics files through which the workers of one serve report each other's figures.

A Prometheus scrape of the operator port reaches one worker process (the kernel picks one
``SO_REUSEPORT`` socket per connection), and each worker counts only the requests it answered.
So that any one scrape reports the whole serve, every worker writes its figures
(``metrics.WorkerFigures``: request counts, latency buckets, gauges, process figures) to its
own file in the serve's private runtime directory, and a worker answering a scrape reads the
other workers' files and reports them beside its own live figures, each under its ``worker``
label.

Why files, and why this way:

- The request path stays as it was: a request updates two plain dicts on the event loop.
  Figures are copied and written by ``MetricsPublisher``, an asyncio task, at most once per
  ``PUBLISH_INTERVAL_S`` and only when they changed. The snapshot's confirmed-age gauge moves
  every second, so a worker that holds a snapshot rewrites its file about once a second even
  when idle (one small file in memory). Other workers' figures in a scrape are therefore up to
  that interval old.
- A worker answering a scrape first publishes its own figures (when they changed), and
  reports exactly the figures it published (read once: its CPU seconds move between two
  reads), so the figures it reports are the ones its file then holds. Without that, a counter
  could seem to go backwards when two scrapes close together land on different workers: the
  first reporting a worker's live count, the second that worker's older file; Prometheus reads
  a decrease as a counter reset.
- A file is written whole under a temporary name and renamed over the old one
  (``os.replace``), so a reader sees the previous file or the new one, never a mix. The runtime
  directory is in memory (``/dev/shm``) where the machine has one, so writing costs no disk I/O.
- The format is JSON with a version number (``FORMAT_VERSION``), checked field by field when
  read: no code is ever loaded from a file. A file that is missing, cut short, malformed, of
  another version or of other latency buckets is skipped, and logged once: the scrape still
  answers 200 with what it could read.
- Only what the ``/metrics`` answer shows goes in: endpoints, public API key ids, statuses,
  counts, seconds and gauge values. A key id containing a ``.`` (the separator in front of an
  API key's secret part) is never written.
- A worker removes its file when it stops cleanly; the serving process removes the file of a
  worker it restarts or stops (``remove_worker_files``), so a dead worker's figures do not
  linger in other workers' answers.

Files are ``<runtime dir>/metrics/<pid>.json``; the reader trusts the name only as far as the
content agrees (the ``worker`` inside must match the name).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from uid2_operator.web.operator_api.metrics import LATENCY_BUCKETS, WorkerFigures

log = logging.getLogger(__name__)

FORMAT_VERSION: Final = 1
PUBLISH_INTERVAL_S: Final = 1.0
METRICS_DIR: Final = "metrics"
_SUFFIX: Final = ".json"
_PRIVATE_FILE: Final = 0o600
_NAME: Final = re.compile(r"([1-9][0-9]*)\.json")
_FIELDS: Final = frozenset({"format", "worker", "buckets", "requests", "latency", "gauges"})
_SERIES_LENGTH: Final = len(LATENCY_BUCKETS) + 1  # per-bucket counts and the +Inf count


def metrics_dir(runtime_dir: Path) -> Path:
    return runtime_dir / METRICS_DIR


def worker_file(runtime_dir: Path, worker: str | int) -> Path:
    """The file of worker ``worker`` (its process id)."""
    return metrics_dir(runtime_dir) / f"{worker}{_SUFFIX}"


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def remove_worker_files(runtime_dir: Path, worker: str | int) -> None:
    """Remove what worker ``worker`` published (its file and a temporary it may have left); for
    the serving process when a worker exited, and for the worker itself when it stops."""
    path = worker_file(runtime_dir, worker)
    for name in (path, _temporary(path)):
        with contextlib.suppress(FileNotFoundError):
            name.unlink()


# ----------------------------------------------------------------------------- the format


def encode(figures: WorkerFigures) -> bytes:
    """The file's content for ``figures`` (compact JSON).

    Series whose key id contains a ``.`` are left out: a public key id never has one, and a
    full API key always does, so a key that reached the counters by mistake stops here. So are
    gauges that are not finite, which JSON cannot carry."""
    requests = [
        [endpoint, key_id, status, count]
        for (endpoint, key_id, status), count in sorted(figures.counts.items())
        if "." not in key_id
    ]
    latency = [
        [endpoint, key_id, [round(n) for n in series[:_SERIES_LENGTH]], series[-1]]
        for (endpoint, key_id), series in sorted(figures.latency.items())
        if "." not in key_id
    ]
    document = {
        "format": FORMAT_VERSION,
        "worker": figures.worker,
        "buckets": list(LATENCY_BUCKETS),
        "requests": requests,
        "latency": latency,
        "gauges": {k: v for k, v in sorted(figures.gauges.items()) if math.isfinite(v)},
    }
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def decode(data: bytes, worker: str) -> WorkerFigures:
    """The figures in a file named for ``worker``; ValueError says why a file is unusable."""
    try:
        document = json.loads(data, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    if document.get("format") != FORMAT_VERSION:
        raise ValueError(f"format {document.get('format')!r}, expected {FORMAT_VERSION}")
    if set(document) != _FIELDS:
        raise ValueError(f"fields {sorted(document)}")
    if document["worker"] != worker:
        raise ValueError(f"written by worker {document['worker']!r}, named for {worker}")
    if document["buckets"] != list(LATENCY_BUCKETS):
        raise ValueError("other latency buckets")
    return WorkerFigures(
        worker,
        _requests(document["requests"]),
        _latency(document["latency"]),
        _gauges(document["gauges"]),
    )


def _requests(value: Any) -> dict[tuple[str, str, int], int]:
    counts: dict[tuple[str, str, int], int] = {}
    for endpoint, key_id, status, count in _rows(value, 4, "requests"):
        label = (_text(endpoint), _text(key_id), _count(status))
        if label in counts:
            raise ValueError(f"series {label} twice")
        counts[label] = _count(count)
    return counts


def _latency(value: Any) -> dict[tuple[str, str], list[float]]:
    latency: dict[tuple[str, str], list[float]] = {}
    for endpoint, key_id, buckets, total in _rows(value, 4, "latency"):
        key = (_text(endpoint), _text(key_id))
        if key in latency:
            raise ValueError(f"series {key} twice")
        if not isinstance(buckets, list) or len(buckets) != _SERIES_LENGTH:
            raise ValueError("a latency series of the wrong length")
        latency[key] = [float(_count(n)) for n in buckets] + [_seconds(total)]
    return latency


def _gauges(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ValueError("gauges are not an object")
    return {_text(name): _number(figure) for name, figure in value.items()}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a figure")


def _rows(value: Any, width: int, what: str) -> list[list[Any]]:
    if not isinstance(value, list) or not all(
        isinstance(row, list) and len(row) == width for row in value
    ):
        raise ValueError(f"{what} are not rows of {width}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a count")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


def _seconds(value: Any) -> float:
    seconds = _number(value)
    if seconds < 0:
        raise ValueError(f"{value!r} is not a duration")
    return seconds


# ----------------------------------------------------------------------------- the files


class MetricsFiles:
    """One worker's view of ``<runtime dir>/metrics``: its own file, written, and the other
    workers' files, read. Used on the event loop thread only.

    Reading keeps each file's last decoded figures with the identity of the file they came from
    (inode, modification time, size): a rename always brings a new inode, so an unchanged file
    is not parsed again on the next scrape. A file that cannot be used is logged once, not on
    every scrape, and again only after it was once read well."""

    __slots__ = ("_dir", "_path", "_read", "_reported", "worker")

    def __init__(self, runtime_dir: Path, worker: str) -> None:
        if not _NAME.fullmatch(f"{worker}{_SUFFIX}"):
            raise ValueError(f"a worker is named by its process id, not {worker!r}")
        self.worker = worker
        self._dir = metrics_dir(runtime_dir)
        self._path = worker_file(runtime_dir, worker)
        self._read: dict[str, tuple[tuple[int, int, int], WorkerFigures | None]] = {}
        self._reported: set[str] = set()

    @property
    def path(self) -> Path:
        return self._path

    def write(self, figures: WorkerFigures) -> None:
        """Replace this worker's file with ``figures`` (OSError when the directory is gone).

        The metrics directory is created here (mode 0700, inside the serve's 0700 runtime
        directory) but never the runtime directory itself: when serve has removed that, nothing
        should bring it back."""
        data = encode(figures)
        self._dir.mkdir(mode=0o700, exist_ok=True)
        temporary = _temporary(self._path)
        # readable by this user alone, like everything else in the runtime directory (a
        # temporary left by a killed worker may have another mode: set it again)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _PRIVATE_FILE)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(fd, _PRIVATE_FILE)
            out.write(data)
        os.replace(temporary, self._path)

    def remove(self) -> None:
        remove_worker_files(self._dir.parent, self.worker)

    def peers(self) -> list[WorkerFigures]:
        """The figures of every other worker whose file can be read now, by worker."""
        try:
            entries = sorted(entry.name for entry in os.scandir(self._dir))
        except FileNotFoundError:
            return []  # no worker has published yet
        except OSError as exc:
            self._skip(str(self._dir), f"cannot list it: {exc.strerror}")
            return []
        found: list[WorkerFigures] = []
        present: set[str] = set()
        for name in entries:
            matched = _NAME.fullmatch(name)
            if matched is None or matched.group(1) == self.worker:
                continue
            present.add(name)
            figures = self._load(name, matched.group(1))
            if figures is not None:
                found.append(figures)
        for gone in set(self._read) - present:
            del self._read[gone]
        self._reported &= present | {str(self._dir)}
        return found

    def _load(self, name: str, worker: str) -> WorkerFigures | None:
        try:
            with (self._dir / name).open("rb") as source:
                stat = os.fstat(source.fileno())
                identity = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
                known = self._read.get(name)
                if known is not None and known[0] == identity:
                    return known[1]
                data = source.read()
        except FileNotFoundError:
            # removed since the listing (its worker stopped), or a link to nothing
            self._skip(name, "it is gone", logging.INFO)
            return None
        except OSError as exc:
            self._skip(name, f"cannot read it: {exc.strerror}")
            return None
        try:
            figures: WorkerFigures | None = decode(data, worker)
        except ValueError as exc:
            self._skip(name, str(exc))
            figures = None
        else:
            self._reported.discard(name)
        self._read[name] = (identity, figures)
        return figures

    def _skip(self, name: str, reason: str, level: int = logging.WARNING) -> None:
        if name not in self._reported:
            self._reported.add(name)
            log.log(level, "metrics of another worker skipped (%s): %s", name, reason)


# ----------------------------------------------------------------------------- publishing


class MetricsPublisher:
    """Writes this worker's figures to its file when they changed: from ``run`` (an asyncio
    task, every ``interval_s``), when this worker is scraped (the collector hands ``publish``
    the figures it is about to report: ``MetricsCollector.publish_to``), and once more when it
    stops; ``close`` removes the file.

    ``read`` copies the figures (``MetricsCollector.figures``) on the event loop thread, where
    they are counted; comparing them with the last published copy is what keeps an idle worker
    from writing. A failed write is logged once and retried on the next tick."""

    __slots__ = ("_failing", "_files", "_interval_s", "_last", "_read", "_stop")

    def __init__(
        self,
        files: MetricsFiles,
        read: Callable[[], WorkerFigures],
        *,
        interval_s: float = PUBLISH_INTERVAL_S,
    ) -> None:
        self._files = files
        self._read = read
        self._interval_s = interval_s
        self._last: WorkerFigures | None = None
        self._failing = False
        self._stop = asyncio.Event()

    @property
    def files(self) -> MetricsFiles:
        return self._files

    def publish(self, figures: WorkerFigures | None = None) -> bool:
        """Write ``figures`` (default: read them now) if they changed since the last write; True
        when written."""
        if figures is None:
            figures = self._read()
        if figures == self._last:
            return False
        try:
            self._files.write(figures)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning("cannot publish this worker's metrics: %s", exc)
            return False
        self._failing = False
        self._last = figures
        return True

    async def run(self) -> None:
        """Publish now, then every ``interval_s`` until ``stop``."""
        while not self._stop.is_set():
            self.publish()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self._interval_s)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Remove this worker's file: a worker that stopped has nothing more to report."""
        self._files.remove()
