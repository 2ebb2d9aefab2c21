"""serve says where it listens once a worker accepts connections, whatever the wildcard it was
given, and never holds up its loop (and so its upkeep) waiting for one."""

from __future__ import annotations

import importlib
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from uid2_operator.settings import Settings
from uid2_operator.storage.engines import sqlite_path

serve = importlib.import_module("uid2_operator.cli.serve")  # the package names its command so


def test_the_ipv6_wildcard_is_found_accepting_over_ipv4_when_ipv6_loopback_is_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::", 0))
    listener.listen()
    port = listener.getsockname()[1]
    real = socket.create_connection
    tried: list[str] = []

    def without_ipv6_loopback(address: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
        tried.append(address[0])
        if address[0] == "::1":
            raise OSError(99, "Cannot assign requested address")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", without_ipv6_loopback)
    try:
        assert serve._accepting("::", port)
    finally:
        listener.close()
    assert tried == ["::1", "127.0.0.1"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_nothing_is_announced_until_a_worker_accepts_and_a_long_wait_is_a_warning(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"))
    port = _free_port()
    listen = serve._Listen("127.0.0.1", port, "127.0.0.1", 0, 1, "warning")
    announcer = serve._Announcer(as_json=True)
    announcer.where(settings, listen, port, "http://127.0.0.1:1/admin/api")
    announcer.tick()  # returns at once: nothing listens
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(serve, "_ANNOUNCE_WARNING_S", -1)
    with caplog.at_level(logging.WARNING):
        announcer.tick()
        announcer.tick()
    assert [r.getMessage() for r in caplog.records].count(
        f"no worker accepts connections on port {port} yet after -1 s"
    ) == 1
    assert not announcer.done

    with socket.socket() as worker:
        worker.bind(("127.0.0.1", port))
        worker.listen()
        announcer.tick()
        announcer.tick()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert announcer.done
    assert '"operator_url": "http://127.0.0.1:' in lines[0]


def test_a_failure_before_the_announcement_prints_only_an_issued_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    quiet = serve._Announcer(as_json=True)
    quiet.stopped()  # nothing initialised
    assert capsys.readouterr().out == ""
    issued = serve._Announcer(as_json=True)
    issued.initialised = serve.Initialised({"admin_token": "UID2-A-L-0-x.y"}, lambda: None, True)
    issued.stopped()
    assert capsys.readouterr().out == '{"init": {"admin_token": "UID2-A-L-0-x.y"}}\n'
    text = serve._Announcer(as_json=False)
    text.initialised = issued.initialised  # printed in full at init time already
    text.stopped()
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("data", None),  # the default, where the README's commands run
        ("mydata", "{cwd}/mydata"),
        ("with space", "'{cwd}/with space'"),
        ("{cwd}/elsewhere", "{cwd}/elsewhere"),
    ],
)
def test_next_steps_name_the_data_directory_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str, shown: str | None
) -> None:
    """They are to be run in another terminal, which may be in another directory."""
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({}, data_dir=given.format(cwd=tmp_path))
    steps = serve._next_steps(settings, "http://127.0.0.1:8081")
    commands = [line.strip() for line in steps.splitlines() if "uid2-operator" in line]
    assert len(commands) == 2
    prefix = "uid2-operator" if shown is None else f"uid2-operator --data-dir {shown}"
    for command in commands:
        assert command.startswith(prefix.format(cwd=tmp_path) + " "), command


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:hunter2@db.example/uid2", "'postgresql+psycopg://u:***@db.example/uid2'"),
        ("postgresql://db.example/uid2", "postgresql+psycopg://db.example/uid2"),
        ("sqlite:////srv/uid2/other.db", "sqlite:////srv/uid2/other.db"),
        # A relative file is the one serve opened, from where it ran; a decoded character is
        # encoded again, as a URL reads it.
        ("sqlite:///rel/store.db", "sqlite:///{cwd}/rel/store.db"),
        ("sqlite:////srv/uid2/q%3Fx%25.db", "sqlite:////srv/uid2/q%3Fx%25.db"),
    ],
)
def test_next_steps_name_a_database_given_by_url_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, shown: str
) -> None:
    """Without it they would find no database in the data directory, and `init` (what the error
    then advises) would set up a second store whose keys this serve refuses."""
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({}, data_dir=str(tmp_path / "d"), database_url=url)
    steps = serve._next_steps(settings, "http://127.0.0.1:8081")
    commands = [line.strip() for line in steps.splitlines() if "uid2-operator " in line]
    assert len(commands) == 2
    shown = shown.format(cwd=tmp_path)
    for command in commands:
        assert command.startswith(
            f"uid2-operator --data-dir {tmp_path / 'd'} --database-url {shown} "
        ), command
    if url.startswith("sqlite"):  # the URL shown names the file serve opened
        assert sqlite_path(shown) == sqlite_path(url)
    assert "hunter2" not in steps
    assert "UID2_DATABASE_URL" in steps
