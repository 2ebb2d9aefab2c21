"""The data directory's lock and its record, and the takeover of what a crashed serve left.

The lock belongs to an open file, so a second ``ServeLock.take`` in this very process contends
with the first exactly as a second serve would. ``take_over`` runs against a temporary parent
directory standing in for ``/dev/shm``: a directory it must not touch is made outside it (or
beside the real ones under a name or owner that is not serve's), and each refusal is checked by
what is still there afterwards.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import click
import pytest

from uid2_operator.cli.serve_lock import LOCK_FILE, RUNTIME_PREFIX, ServeLock, take_over
from uid2_operator.serve_settings import RUNTIME_DIR_VARIABLE
from uid2_operator.services.replay_table import KEPT_FILE, TABLE_FILE, ReplayTable

serve = importlib.import_module("uid2_operator.cli.serve")  # the package names its command so

T0 = 1_700_000_000_000
WINDOW_MS = 60_000
SLOTS = 5_000


def _crashed_dir(parent: Path, name: str = RUNTIME_PREFIX + "crashed", *, nonce: int = 1) -> Path:
    """A runtime directory as a serve killed with SIGKILL leaves it: the replay table holding
    one envelope, and a worker's metrics file."""
    made = parent / name
    (made / "metrics").mkdir(parents=True)
    (made / "metrics" / "4242.json").write_text("{}")
    ReplayTable.create(made / TABLE_FILE, max_past_ms=WINDOW_MS, slots=SLOTS)
    with ReplayTable.open(made / TABLE_FILE, max_past_ms=WINDOW_MS) as table:
        assert table.first_use("k", nonce.to_bytes(8, "big"), T0, T0)
    return made


def _seen(table_path: Path, nonce: int) -> bool:
    """True when ``table_path`` refuses the envelope ``_crashed_dir`` recorded with ``nonce``."""
    with ReplayTable.open(table_path, max_past_ms=WINDOW_MS) as table:
        return not table.first_use("k", nonce.to_bytes(8, "big"), T0, T0 + 1_000)


@pytest.fixture
def parent(tmp_path: Path) -> Path:
    made = tmp_path / "shm"
    made.mkdir()
    return made


@pytest.fixture
def ours(parent: Path) -> Path:
    """The runtime directory of the serve taking over."""
    made = parent / (RUNTIME_PREFIX + "ours")
    made.mkdir()
    return made


# ------------------------------------------------------------------------------ the lock


def test_a_second_lock_on_one_data_directory_is_refused_naming_it_and_the_holder(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    with ServeLock.take(data_dir) as held:
        assert held.path == data_dir / LOCK_FILE
        assert held.path.stat().st_mode & 0o777 == 0o600
        assert not os.get_inheritable(held._fd)  # workers never hold the lock
        with pytest.raises(click.ClickException) as refused:
            ServeLock.take(data_dir)
        message = refused.value.message
        assert str(data_dir) in message
        assert f"pid {os.getpid()}" in message
        assert "in use by another uid2-operator serve" in message
    with ServeLock.take(data_dir):  # released: free again
        pass


def test_a_relative_data_directory_is_named_whole_in_the_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with ServeLock.take(Path("./data")), pytest.raises(click.ClickException) as refused:
        ServeLock.take(Path("./data"))
    assert refused.value.message.startswith(
        f"the data directory {(tmp_path / 'data').resolve()} is in use"
    )


def test_the_record_names_the_holder_and_hands_its_runtime_directories_to_the_next(
    tmp_path: Path,
) -> None:
    runtime_dir = str(tmp_path / "shm" / (RUNTIME_PREFIX + "a"))
    with ServeLock.take(tmp_path) as first:
        assert first.left_behind == ()
        first.record([Path(runtime_dir)])
        document = json.loads((tmp_path / LOCK_FILE).read_text())
        assert document == {"pid": os.getpid(), "runtime_dirs": [runtime_dir]}
    # The holder died without emptying the list: the next one is handed it, and keeps it
    # recorded until it records its own.
    with ServeLock.take(tmp_path) as second:
        assert second.left_behind == (runtime_dir,)
        assert json.loads((tmp_path / LOCK_FILE).read_text())["runtime_dirs"] == [runtime_dir]
        second.record([])
    with ServeLock.take(tmp_path) as third:
        assert third.left_behind == ()


@pytest.mark.parametrize(
    "content",
    [
        '{"runtime_dirs": "uid2-operator-a"}',
        '{"runtime_dirs": [1]}',
        "[1]",
        "{",
        "[" * 3000,  # nested past the JSON parser's depth: RecursionError, not ValueError
    ],
)
def test_a_record_that_cannot_be_read_hands_nothing_over(tmp_path: Path, content: str) -> None:
    (tmp_path / LOCK_FILE).write_text(content)
    with ServeLock.take(tmp_path) as lock:
        assert lock.left_behind == ()
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_serve_that_died_between_writing_its_record_and_cutting_it_hands_that_record_over(
    tmp_path: Path,
) -> None:
    longer = [str(tmp_path / "shm" / f"{RUNTIME_PREFIX}{n}") for n in ("a", "b", "c")]
    with ServeLock.take(tmp_path) as first:
        first.record([Path(d) for d in longer])
    old = (tmp_path / LOCK_FILE).read_bytes()
    # The next serve wrote its shorter record over the start of the file, and died before it
    # cut the file to that length: the tail of the longer record is still there.
    new = json.dumps({"pid": 4242, "runtime_dirs": longer[:1]}).encode() + b"\n"
    (tmp_path / LOCK_FILE).write_bytes(new + old[len(new) :])
    with ServeLock.take(tmp_path) as lock:
        assert lock.left_behind == (longer[0],)


def test_a_record_cut_short_of_its_cut_still_hands_the_newer_record_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each record ends its line: a shorter record written over a longer one, with the file not
    # cut after it (the serve died between), is read up to that line's end.
    longer = [str(tmp_path / "shm" / f"{RUNTIME_PREFIX}{'a' * 40}{n}") for n in range(2)]
    newest = str(tmp_path / "shm" / (RUNTIME_PREFIX + "c"))
    with ServeLock.take(tmp_path) as first:
        first.record([Path(d) for d in longer])
        monkeypatch.setattr(os, "ftruncate", lambda _fd, _length: None)
        first.record([Path(newest)])
        monkeypatch.undo()
    with ServeLock.take(tmp_path) as lock:
        assert lock.left_behind == (newest,)


def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_untouched(
    tmp_path: Path,
) -> None:
    target = tmp_path / "precious"
    target.write_text("precious")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / LOCK_FILE).symlink_to(target)
    with pytest.raises(click.ClickException, match="cannot lock the data directory"):
        ServeLock.take(data_dir)
    assert target.read_text() == "precious"


def test_the_lock_file_and_a_new_data_directory_are_private_whatever_the_umask(
    tmp_path: Path,
) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / LOCK_FILE).write_text("")
    (existing / LOCK_FILE).chmod(0o644)
    old = os.umask(0o022)
    try:
        with ServeLock.take(existing):
            assert (existing / LOCK_FILE).stat().st_mode & 0o777 == 0o600
        with ServeLock.take(tmp_path / "new" / "data"):
            assert (tmp_path / "new" / "data").stat().st_mode & 0o777 == 0o700
    finally:
        os.umask(old)


def test_a_data_directory_that_cannot_hold_the_lock_is_a_clear_error(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises(click.ClickException, match="cannot lock the data directory"):
        ServeLock.take(not_a_directory)


# ------------------------------------------------------------------------------ the takeover


def test_the_crashed_serves_table_is_taken_over_and_its_directory_removed(
    parent: Path, ours: Path
) -> None:
    crashed = _crashed_dir(parent)
    done = take_over(
        [str(crashed)], ours / TABLE_FILE, parent=parent, max_past_ms=WINDOW_MS, slots=SLOTS
    )
    assert done.adopted == crashed
    assert done.removed == (crashed,)
    assert done.left_alone == ()
    assert not crashed.exists()
    assert _seen(ours / TABLE_FILE, 1)


def test_the_newest_usable_table_is_taken_and_every_recorded_directory_removed(
    parent: Path, ours: Path
) -> None:
    older = _crashed_dir(parent, RUNTIME_PREFIX + "older", nonce=1)
    newer = _crashed_dir(parent, RUNTIME_PREFIX + "newer", nonce=2)
    done = take_over(
        [str(older), str(newer)],
        ours / TABLE_FILE,
        parent=parent,
        max_past_ms=WINDOW_MS,
        slots=SLOTS,
    )
    assert done.adopted == newer
    assert not older.exists()
    assert not newer.exists()
    assert _seen(ours / TABLE_FILE, 2)
    assert not _seen(ours / TABLE_FILE, 1)


@pytest.mark.parametrize(("slots", "window_ms"), [(SLOTS + 1, WINDOW_MS), (SLOTS, WINDOW_MS + 1)])
def test_a_table_of_another_size_or_window_is_not_taken_but_its_directory_is_removed(
    parent: Path, ours: Path, slots: int, window_ms: int
) -> None:
    crashed = _crashed_dir(parent)
    done = take_over(
        [str(crashed)], ours / TABLE_FILE, parent=parent, max_past_ms=window_ms, slots=slots
    )
    assert done.adopted is None
    assert done.removed == (crashed,)
    assert not crashed.exists()
    assert not (ours / TABLE_FILE).exists()


def test_a_table_that_is_a_symlink_is_not_taken(tmp_path: Path, parent: Path, ours: Path) -> None:
    elsewhere = _crashed_dir(tmp_path, "elsewhere")
    crashed = parent / (RUNTIME_PREFIX + "crashed")
    crashed.mkdir()
    (crashed / TABLE_FILE).symlink_to(elsewhere / TABLE_FILE)
    done = take_over(
        [str(crashed)], ours / TABLE_FILE, parent=parent, max_past_ms=WINDOW_MS, slots=SLOTS
    )
    assert done.adopted is None
    assert not crashed.exists()
    assert (elsewhere / TABLE_FILE).is_file()
    assert not (ours / TABLE_FILE).exists()


def test_a_directory_a_running_serve_holds_is_left_alone_until_it_stops(
    tmp_path: Path, parent: Path, ours: Path
) -> None:
    # Its record names it in a copy of its data directory too: a serve there must not take
    # away the table and metrics of one still running.
    running = _crashed_dir(parent, RUNTIME_PREFIX + "running")
    with ServeLock.take(tmp_path / "data") as holder:
        holder.hold(running)
        done = take_over(
            [str(running)], ours / TABLE_FILE, parent=parent, max_past_ms=WINDOW_MS, slots=SLOTS
        )
        assert done == type(done)(
            left_alone=(f"{running} is in use by a running serve; left alone",)
        )
        assert _untouched(running)
        assert not (ours / TABLE_FILE).exists()
    # Stopped without cleaning up (the kernel drops the hold of a serve that dies).
    done = take_over(
        [str(running)], ours / TABLE_FILE, parent=parent, max_past_ms=WINDOW_MS, slots=SLOTS
    )
    assert (done.adopted, done.removed) == (running, (running,))


def _untouched(path: Path) -> bool:
    """``path`` still holds what ``_crashed_dir`` put there (through a symlink too)."""
    return (path / TABLE_FILE).is_file() and (path / "metrics" / "4242.json").is_file()


def test_a_symlink_in_the_parent_is_left_alone_and_nothing_behind_it_removed(
    tmp_path: Path, parent: Path, ours: Path
) -> None:
    victim = _crashed_dir(tmp_path, "victim")
    link = parent / (RUNTIME_PREFIX + "link")
    link.symlink_to(victim, target_is_directory=True)
    done = take_over(
        [str(link)], ours / TABLE_FILE, parent=parent, max_past_ms=WINDOW_MS, slots=SLOTS
    )
    assert done == type(done)(left_alone=(f"{link} is not a directory; left alone",))
    assert link.is_symlink()
    assert _untouched(victim)
    assert not (ours / TABLE_FILE).exists()


def test_a_directory_outside_the_parent_or_not_named_as_serve_names_them_is_left_alone(
    tmp_path: Path, parent: Path, ours: Path
) -> None:
    outside = _crashed_dir(tmp_path, RUNTIME_PREFIX + "outside")
    unprefixed = _crashed_dir(parent, "precious")
    nested = _crashed_dir(parent / (RUNTIME_PREFIX + "x"), RUNTIME_PREFIX + "nested")
    recorded = [
        str(outside),
        str(unprefixed),
        str(nested),
        f"{parent}/{RUNTIME_PREFIX}x/../precious",  # climbs out of a serve-named directory
        f"{parent}//{RUNTIME_PREFIX}x",  # not exactly the path it names
        f"{RUNTIME_PREFIX}x",  # relative
        f"{parent}/{RUNTIME_PREFIX}nul\0",
    ]
    done = take_over(recorded, ours / TABLE_FILE, parent=parent, max_past_ms=WINDOW_MS, slots=SLOTS)
    assert done.adopted is None
    assert done.removed == ()
    assert len(done.left_alone) == len(recorded)
    assert all(reason.endswith("left alone") for reason in done.left_alone)
    assert _untouched(outside)
    assert _untouched(unprefixed)
    assert _untouched(nested)
    assert not (ours / TABLE_FILE).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_directory_of_another_user_is_left_alone(parent: Path, ours: Path) -> None:
    foreign = _crashed_dir(parent, RUNTIME_PREFIX + "foreign")
    os.chown(foreign, 65534, 65534)
    done = take_over(
        [str(foreign)], ours / TABLE_FILE, parent=parent, max_past_ms=WINDOW_MS, slots=SLOTS
    )
    assert done.left_alone == (f"{foreign} belongs to another user; left alone",)
    assert _untouched(foreign)


def test_a_directory_already_gone_or_this_serves_own_is_skipped(parent: Path, ours: Path) -> None:
    (ours / "metrics").mkdir()
    gone = parent / (RUNTIME_PREFIX + "gone")
    done = take_over(
        [str(gone), str(ours)], ours / TABLE_FILE, parent=parent, max_past_ms=WINDOW_MS, slots=SLOTS
    )
    assert done == type(done)()
    assert (ours / "metrics").is_dir()


# ------------------------------------------------------------------------------ in serve


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Serve's table settings for these tests; the runtime directories made are removed."""
    monkeypatch.delenv(RUNTIME_DIR_VARIABLE, raising=False)
    monkeypatch.setenv("UID2_REPLAY_TABLE_ENTRIES", str(SLOTS))
    monkeypatch.setenv("UID2_REQUEST_MAX_AGE_MS", str(WINDOW_MS))
    yield monkeypatch
    made = os.environ.get(RUNTIME_DIR_VARIABLE)
    if made:
        shutil.rmtree(made, ignore_errors=True)


def test_serve_after_a_crash_takes_the_crashed_table_over_rather_than_an_older_kept_one(
    environ: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A clean stop kept a table holding envelope 1 ...
    earlier = serve._share_runtime_dir(tmp_path)
    with ReplayTable.open(earlier / TABLE_FILE, max_past_ms=WINDOW_MS) as table:
        assert table.first_use("k", (1).to_bytes(8, "big"), T0, T0)
    serve._retire_runtime_dir(earlier, tmp_path)
    # ... and a later serve that never took it back (it died at once) answered envelope 2.
    with ServeLock.take(tmp_path) as lock:
        crashed = serve._share_runtime_dir(tmp_path / "elsewhere", lock)
        with ReplayTable.open(crashed / TABLE_FILE, max_past_ms=WINDOW_MS) as table:
            assert table.first_use("k", (2).to_bytes(8, "big"), T0, T0)
    assert (tmp_path / KEPT_FILE).exists()
    with ServeLock.take(tmp_path) as lock:
        assert lock.left_behind == (str(crashed),)
        runtime_dir = serve._share_runtime_dir(tmp_path, lock)
        assert not crashed.exists()
        assert not (tmp_path / KEPT_FILE).exists()  # older than the table taken over
        assert _seen(runtime_dir / TABLE_FILE, 2)
        assert not _seen(runtime_dir / TABLE_FILE, 1)
        assert json.loads(lock.path.read_text())["runtime_dirs"] == [str(runtime_dir)]
        serve._retire_runtime_dir(runtime_dir, tmp_path, lock)
        assert json.loads(lock.path.read_text())["runtime_dirs"] == []


def test_a_serve_on_a_copy_of_a_running_serves_data_directory_leaves_its_runtime_alone(
    environ: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    with ServeLock.take(first) as running:
        theirs = serve._share_runtime_dir(first, running)
        with ReplayTable.open(theirs / TABLE_FILE, max_past_ms=WINDOW_MS) as table:
            assert table.first_use("k", (1).to_bytes(8, "big"), T0, T0)
        shutil.copytree(first, tmp_path / "copy")  # its serve.lock record with it
        with ServeLock.take(tmp_path / "copy") as lock:
            assert lock.left_behind == (str(theirs),)
            ours = serve._share_runtime_dir(tmp_path / "copy", lock)
            assert _seen(theirs / TABLE_FILE, 1)  # still there, still theirs
            assert not _seen(ours / TABLE_FILE, 1)  # not shared with the copy's serve
            assert json.loads(lock.path.read_text())["runtime_dirs"] == [str(ours)]
            serve._retire_runtime_dir(ours, tmp_path / "copy", lock)
        serve._retire_runtime_dir(theirs, first, running)
    assert not theirs.exists()


def test_a_table_a_killed_serve_did_not_finish_keeping_is_removed_at_the_next_start(
    environ: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Killed while it copied its table into the data directory, under a name of its own: each
    # such kill left another file, as large as the table, for good.
    unfinished = [tmp_path / f".{KEPT_FILE}.{pid}.new" for pid in (4242, 4343)]
    for path in unfinished:
        path.write_bytes(b"\x01" * 4096)
    other = tmp_path / f".{KEPT_FILE}.new"  # not a name keep() writes: left alone
    other.write_bytes(b"")
    with ServeLock.take(tmp_path) as lock:
        runtime_dir = serve._share_runtime_dir(tmp_path, lock)
        assert not any(path.exists() for path in unfinished)
        assert other.exists()
        serve._retire_runtime_dir(runtime_dir, tmp_path, lock)
    assert (tmp_path / KEPT_FILE).exists()
    assert not list(tmp_path.glob(f".{KEPT_FILE}.*.new"))  # the clean stop left none behind
    assert caplog.text.count("a killed serve did not finish keeping") == 2


def test_a_kept_table_that_cannot_be_removed_does_not_cost_the_table_taken_over(
    environ: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    earlier = serve._share_runtime_dir(tmp_path)
    serve._retire_runtime_dir(earlier, tmp_path)  # a clean stop kept a table
    kept = tmp_path / KEPT_FILE
    with ServeLock.take(tmp_path) as lock:
        crashed = serve._share_runtime_dir(tmp_path / "elsewhere", lock)
        with ReplayTable.open(crashed / TABLE_FILE, max_past_ms=WINDOW_MS) as table:
            assert table.first_use("k", (2).to_bytes(8, "big"), T0, T0)
    real_unlink = Path.unlink

    def unlink(path: Path, missing_ok: bool = False) -> None:
        if path == kept:
            raise PermissionError(13, "Permission denied")
        real_unlink(path, missing_ok=missing_ok)

    environ.setattr(Path, "unlink", unlink)
    with ServeLock.take(tmp_path) as lock:
        runtime_dir = serve._share_runtime_dir(tmp_path, lock)
        assert _seen(runtime_dir / TABLE_FILE, 2)  # taken over, and serving
        assert not crashed.exists()
        assert kept.exists()
        assert f"cannot remove {kept}" in caplog.text
        serve._retire_runtime_dir(runtime_dir, tmp_path, lock)


def test_a_worker_whose_serve_is_gone_is_told_to_exit() -> None:
    server = SimpleNamespace(should_exit=False)
    serve._exit_with_parent(server, os.getppid() + 1_000_000)  # never this process's parent
    assert server.should_exit
