"""``serve --metrics-port``: ports that would be shared are refused before anything starts, a
free port picked for the metrics is never the operator port's number, and serve says where it
answers ``/metrics``."""

from __future__ import annotations

import importlib
import json
import socket
from pathlib import Path

import click
import pytest

from uid2_operator.cli import main
from uid2_operator.cli.output import USAGE_EXIT
from uid2_operator.settings import Settings

serve = importlib.import_module("uid2_operator.cli.serve")  # the package names its command so


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--port", "9100", "--metrics-port", "9100"),
         "Invalid value for '--metrics-port': 9100 is also --port"),
        (("--admin-port", "9100", "--metrics-port", "9100"),
         "Invalid value for '--metrics-port': 9100 is also --admin-port"),
        (("--metrics-port", "8080"),  # --port's default
         "Invalid value for '--metrics-port': 8080 is also --port"),
        (("--metrics-host", "10.0.0.5"), "--metrics-host needs --metrics-port"),
        (("--admin-port", "8080"),  # --port's default, on the same default host
         "Invalid value for '--admin-port': 8080 is also --port"),
        (("--port", "9000", "--admin-port", "9000", "--admin-host", ""),
         "Invalid value for '--admin-port': 9000 is also --port"),
        (("--host", "0.0.0.0", "--port", "9000", "--admin-port", "9000"),  # noqa: S104
         "Invalid value for '--admin-port': 9000 is also --port"),
    ],
)  # fmt: skip
def test_a_metrics_port_of_another_listener_is_a_usage_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    message: str,
) -> None:
    data_dir = tmp_path / "data"
    status = main.main(
        ["--data-dir", str(data_dir), "--json", "serve", *args], standalone_mode=False
    )
    out, err = capsys.readouterr()
    assert status == USAGE_EXIT
    error = json.loads(out)["error"]
    assert error["code"] == "usage"
    assert error["message"].startswith(message)
    assert err.startswith(f"Error: {message}")
    assert not data_dir.exists()  # refused before anything was looked at or made


def test_a_free_metrics_port_that_is_the_operator_ports_number_is_picked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On another interface than the operator port's, the kernel may pick the operator port's
    number for ``--metrics-port 0``: the workers could not tell the two listeners apart."""
    operator, operator_port = serve._reserve_operator_port("127.0.0.1", 0)
    real = serve._reserve_operator_port
    first: list[socket.socket] = []

    def picks_the_operator_port_first(host: str, port: int) -> tuple[socket.socket, int]:
        held, chosen = real(host, port)
        if first:
            return held, chosen
        first.append(held)
        return held, operator_port

    monkeypatch.setattr(serve, "_reserve_operator_port", picks_the_operator_port_first)
    try:
        held, chosen = serve._reserve_metrics_port("127.0.0.1", 0, operator_port)
        try:
            assert chosen != operator_port
            assert held.getsockname()[1] == chosen
            assert first[0].fileno() == -1  # the first pick, held while picking again, let go
        finally:
            held.close()
    finally:
        operator.close()


def test_a_free_metrics_port_is_kept_when_it_is_not_the_operator_ports() -> None:
    operator, operator_port = serve._reserve_operator_port("127.0.0.1", 0)
    try:
        held, chosen = serve._reserve_metrics_port("127.0.0.1", 0, operator_port)
        held.close()
    finally:
        operator.close()
    assert chosen not in (0, operator_port)


def _announced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *, as_json: bool, metrics_url: str | None
) -> str:
    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"))
    serve._announce(
        settings,
        operator_url="http://127.0.0.1:8080",
        admin_url="http://127.0.0.1:8081/admin/api",
        metrics_url=metrics_url,
        workers=2,
        initialised=None,
        as_json=as_json,
    )
    return capsys.readouterr().out


def test_the_operator_line_is_unchanged_when_metrics_are_on_the_operator_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _announced(tmp_path, capsys, as_json=False, metrics_url=None).splitlines()
    assert lines == [
        "operator API: http://127.0.0.1:8080 (2 workers; health: /ops/healthcheck, "
        "metrics: /metrics)",
        "admin API: http://127.0.0.1:8081/admin/api",
    ]
    document = json.loads(_announced(tmp_path, capsys, as_json=True, metrics_url=None))
    assert document["metrics_url"] == "http://127.0.0.1:8080/metrics"


def test_the_operator_line_names_the_metrics_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "http://127.0.0.1:9100/metrics"
    lines = _announced(tmp_path, capsys, as_json=False, metrics_url=url).splitlines()
    assert lines[0] == (
        "operator API: http://127.0.0.1:8080 (2 workers; health: /ops/healthcheck, "
        "metrics: http://127.0.0.1:9100/metrics)"
    )
    document = json.loads(_announced(tmp_path, capsys, as_json=True, metrics_url=url))
    assert document["metrics_url"] == url
    assert document["operator_url"] == "http://127.0.0.1:8080"
    assert document["admin_url"] == "http://127.0.0.1:8081/admin/api"


def test_the_announcer_names_the_metrics_port_on_its_interface(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.from_env({}, data_dir=str(tmp_path / "data"))
    with socket.socket() as worker:
        worker.bind(("127.0.0.1", 0))
        worker.listen()
        port = worker.getsockname()[1]
        listen = serve._Listen("127.0.0.1", port, "127.0.0.1", 0, 1, "warning", "::1", 0)
        announcer = serve._Announcer(as_json=True)
        announcer.where(settings, listen, port, "http://127.0.0.1:1/admin/api", 9100)
        announcer.tick()
    assert announcer.done
    document = json.loads(capsys.readouterr().out)
    assert document["metrics_url"] == "http://[::1]:9100/metrics"
    assert document["operator_url"] == f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("host", "admin_host"),
    [
        ("localhost", "127.0.0.1"),
        ("127.0.0.1", "127.1"),
        ("LOCALHOST", "localhost"),
        ("::1", "0:0:0:0:0:0:0:1"),
        ("0:0:0:0:0:0:0:0", "::1"),
        ("127.0.0.1", ""),
        ("127.0.0.1", "::ffff:127.0.0.1"),
        ("::ffff:0.0.0.0", "127.0.0.1"),
    ],
)
def test_the_same_interface_written_two_ways_is_refused(host: str, admin_host: str) -> None:
    ctx = click.Context(main)
    with pytest.raises(click.BadParameter, match="9000 is also --port"):
        serve._check_admin_port(ctx, host, 9000, admin_host, 9000)


@pytest.mark.parametrize(
    ("host", "admin_host", "port", "admin_port"),
    [
        ("127.0.0.1", "127.0.0.2", 9000, 9000),
        ("127.0.0.1", "::1", 9000, 9000),
        ("127.0.0.1", "no-such-host.invalid", 9000, 9000),  # left for its bind to refuse
        ("127.0.0.1", "127.0.0.1", 0, 0),
    ],
)
def test_the_same_admin_port_number_elsewhere_or_free_is_not_refused(
    host: str, admin_host: str, port: int, admin_port: int
) -> None:
    ctx = click.Context(main)
    assert serve._check_admin_port(ctx, host, port, admin_host, admin_port) is None
