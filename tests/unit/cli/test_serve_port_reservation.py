"""The socket serve holds its port with (``_reserve_operator_port``, ``_reserve_metrics_port``)
keeps the port its own while no worker listens on it: the check another serve makes (the same
reservation) is refused, while the workers' own ``SO_REUSEPORT`` sockets join it. A stopped
serve's connections left in TIME_WAIT on the port do not keep the next one from holding it; those
another program left there do not keep serve from starting either (with a warning: the port is
then held less firmly). A worker that cannot bind its port logs one line and exits 1."""

from __future__ import annotations

import importlib
import logging
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

serve = importlib.import_module("uid2_operator.cli.serve")  # the package names its command so

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="SO_REUSEPORT as Linux has it; reads /proc/net/tcp"
)

LOGGER = "uid2_operator.cli.serve"
TIME_WAIT = "06"


def _refused(host: str, port: int) -> str:
    return f"cannot listen on {host}:{port}: Address already in use"


@pytest.fixture
def held() -> Iterator[tuple[socket.socket, int]]:
    sock, port = serve._reserve_operator_port("127.0.0.1", 0)
    try:
        yield sock, port
    finally:
        sock.close()


def _in_time_wait(port: int) -> int:
    """How many IPv4 sockets whose local port is ``port`` are in TIME_WAIT."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(
        1
        for row in rows
        if row.split()[3] == TIME_WAIT and int(row.split()[1].split(":")[1], 16) == port
    )


def _served_and_closed_first(listener: socket.socket, count: int) -> None:
    """``count`` connections the listening side accepts and closes first (TIME_WAIT there)."""
    port = listener.getsockname()[1]
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            accepted.close()
            client.recv(1)


def test_a_held_port_is_refused_to_another_serve_while_no_worker_listens(
    held: tuple[socket.socket, int],
) -> None:
    _, port = held
    with pytest.raises(click.ClickException) as operator:
        serve._reserve_operator_port("127.0.0.1", port)
    with pytest.raises(click.ClickException) as metrics:
        serve._reserve_metrics_port("127.0.0.1", port, port + 1)
    assert operator.value.message == metrics.value.message == _refused("127.0.0.1", port)


def test_a_held_port_is_refused_on_every_interface_too(
    held: tuple[socket.socket, int],
) -> None:
    _, port = held
    with pytest.raises(click.ClickException) as refused:
        serve._reserve_operator_port("0.0.0.0", port)  # noqa: S104 (every interface)
    assert refused.value.message == _refused("0.0.0.0", port)  # noqa: S104


def test_the_workers_join_a_held_port_and_it_stays_held_once_they_are_gone(
    held: tuple[socket.socket, int],
) -> None:
    _, port = held
    workers = [serve._listening("127.0.0.1", port, None) for _ in range(2)]
    try:
        with socket.create_connection(("127.0.0.1", port)):
            pass
    finally:
        for worker in workers:
            worker.close()
    with pytest.raises(click.ClickException, match="Address already in use"):
        serve._reserve_operator_port("127.0.0.1", port)


def test_a_stopped_serves_connections_in_time_wait_do_not_keep_the_next_from_holding_the_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, port = serve._reserve_operator_port("127.0.0.1", 0)
    worker = serve._listening("127.0.0.1", port, None)
    _served_and_closed_first(worker, 5)
    worker.close()
    first.close()
    assert _in_time_wait(port) >= 5
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        again, chosen = serve._reserve_operator_port("127.0.0.1", port)
    try:
        assert chosen == port
        assert not caplog.records
        with pytest.raises(click.ClickException, match="Address already in use"):
            serve._reserve_operator_port("127.0.0.1", port)
    finally:
        again.close()


def test_another_programs_connections_in_time_wait_leave_the_port_held_less_firmly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as program:  # as most programs listen: SO_REUSEADDR alone
        program.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        program.bind(("127.0.0.1", 0))
        program.listen()
        port = program.getsockname()[1]
        _served_and_closed_first(program, 1)
    assert _in_time_wait(port) >= 1
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        held, chosen = serve._reserve_operator_port("127.0.0.1", port)
    try:
        assert chosen == port
        assert [r.getMessage() for r in caplog.records] == [
            f"port {port} held less firmly: connections another program left on it are still in "
            "TIME_WAIT, so while no worker listens another serve may join it"
        ]
        worker = serve._listening("127.0.0.1", port, None)
        worker.close()
    finally:
        held.close()


def test_a_worker_that_cannot_bind_its_port_logs_one_line_and_exits_1(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as program:
        program.bind(("127.0.0.1", 0))
        program.listen()
        port = program.getsockname()[1]
        process = serve._Workers("127.0.0.1", port, 1, None, "warning")._start_one()
        process.join(60)
    assert process.exitcode == 1
    assert capfd.readouterr().err.splitlines() == [
        f"ERROR {LOGGER}: worker {process.pid}: {_refused('127.0.0.1', port)}"
    ]
