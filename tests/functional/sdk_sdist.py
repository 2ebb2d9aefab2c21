"""The official Python SDK's source distribution, whose own tests run against a real serve.

The ``uid2-client`` 2.9.0 sdist ships integration tests that talk to a live operator when the
``UID2_*`` (or ``EUID_*``) variables name it. It is downloaded from PyPI with pip once per cache
(the pytest cache, or a temporary directory under ``-p no:cacheprovider``) and unpacked there;
nothing of it is copied into the project.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from ci_mode import unavailable

SDK = "uid2-client==2.9.0"
SDIST_DIR = "uid2_client-2.9.0"


def sdk_sdist(cache: Path) -> Path:
    """The SDK's source tree, downloaded with pip once per cache.

    Several test processes may share one cache (``pytest -n``): each downloads and unpacks into
    a directory of its own, and moves the tree into place with one rename, so none ever reads a
    tree another is still writing; a process that finds the tree already in place keeps it and
    drops its own copy."""
    root = cache / SDIST_DIR
    if (root / "tests").is_dir():
        return root
    work = Path(tempfile.mkdtemp(prefix="download-", dir=cache))
    try:
        download = subprocess.run(  # noqa: S603 (pip, fixed arguments)
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--disable-pip-version-check", "--quiet", SDK, "-d", str(work)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )  # fmt: skip
        archives = sorted(work.glob("uid2_client-2.9.0.tar.gz"))
        if download.returncode != 0 or not archives:
            message = f"cannot download the {SDK} sdist: {download.stderr.strip()[-500:]}"
            unavailable(message)
        _extract(archives[0], work)
        if root.is_dir() and not (root / "tests").is_dir():
            shutil.rmtree(root)  # a partial tree, left by a run stopped while unpacking in place
        try:
            (work / SDIST_DIR).rename(root)
        except OSError:
            if not (root / "tests").is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return root


def _extract(archive_path: Path, into: Path) -> None:
    """Unpack the sdist with tarfile's "data" filter where this Python has it (3.11.4 and
    later); on an earlier 3.11, only plain files and directories with relative paths inside
    ``into`` are accepted, and anything else stops the test."""
    with tarfile.open(archive_path) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(into, filter="data")
            return
        members = archive.getmembers()
        for member in members:
            parts = Path(member.name).parts
            if (
                not (member.isfile() or member.isdir())
                or member.name.startswith("/")
                or ".." in parts
            ):
                pytest.fail(f"unexpected entry in the {SDK} sdist: {member.name!r}")
        archive.extractall(into, members=members)  # noqa: S202 (every member checked above)


def run_sdk_tests(source: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    """``python -m unittest -v <args>`` in the SDK's source tree: its exit status and output."""
    result = subprocess.run(  # noqa: S603 (the venv's python, fixed arguments)
        [sys.executable, "-m", "unittest", "-v", *args],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return result.returncode, result.stderr + result.stdout
