"""With ``--json``, a command that stops with a stated reason (``click.ClickException``) reports it
as ``command_failed``, not as an internal error; exit statuses stay what they were."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import click
import pytest

from uid2_operator.cli import main
from uid2_operator.cli.output import FAILURE_EXIT, USAGE_EXIT, error_document, safe_message
from uid2_operator.cli.serve_lock import ServeLock
from uid2_operator.errors import InvalidInput


def test_a_serve_on_a_data_directory_in_use_is_a_failed_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # serve runs in this process here: its core-size limit of 0 could not be raised again.
    serve = importlib.import_module("uid2_operator.cli.serve")
    monkeypatch.setattr(serve, "_no_core_dumps", lambda: None)
    data_dir = tmp_path / "data"
    with ServeLock.take(data_dir):  # another serve holds it
        status = main.main(["--data-dir", str(data_dir), "--json", "serve"], standalone_mode=False)
    out, err = capsys.readouterr()
    assert status == FAILURE_EXIT
    error = json.loads(out)["error"]
    assert error["code"] == "command_failed"
    assert "is in use by another uid2-operator serve" in error["message"]
    assert err.startswith(f"Error: the data directory {data_dir} is in use")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (click.ClickException("cannot listen on 127.0.0.1:8080: Address already in use"),
         "command_failed"),
        (click.UsageError("no such option"), "usage"),
        (InvalidInput("bad value"), InvalidInput.code),
        (RuntimeError("disk on fire"), "internal_error"),
    ],
)  # fmt: skip
def test_each_kind_of_error_has_its_code(error: BaseException, code: str) -> None:
    assert error_document(error, "m") == {"error": {"code": code, "message": "m"}}


def test_exit_statuses_are_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["--json", "no-such-command"], standalone_mode=False) == USAGE_EXIT
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "usage"


@pytest.mark.parametrize(
    "secret",
    [
        "AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGhIjKlMnOpQ=",  # no digit (random base64, at times)
        "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopq=",  # one case only
        "0123456789+/0123456789+/0123456789+/0123456=",  # no letter
    ],
)
def test_a_client_secret_in_a_message_is_masked_whatever_its_characters(secret: str) -> None:
    """click repeats a refused option value ("'...' is not a valid integer"): a client secret
    pasted there must not come back, even when it happens not to mix letters and digits."""
    assert len(secret) == 44
    shown = safe_message(f"Invalid value for '--site-id': '{secret}' is not a valid integer.")
    assert secret not in shown
    assert secret[:-1] not in shown
    assert "<redacted>" in shown


@pytest.mark.parametrize(
    ("argv", "as_json"),
    [
        (["participant", "create", "--name", "--json", "--type", "dsp"], False),  # a value
        (["participant", "create", "--name", "x", "--type", "dsp", "--json"], True),
        (["--json", "participant", "create", "--name", "x", "--type", "dsp"], True),
        (["participant", "create", "--json", "--no-such-option"], True),  # no flag known yet
        (["participant", "list", "--limit", "--json"], False),  # a value that fails to convert
        (["participant", "list", "--limit", "abc", "--json"], True),
        (["participant", "show", "--", "--json"], False),  # an argument
        (["participant", "create", "--name", "--json"], False),  # then an option missing
    ],
)
def test_errors_are_json_exactly_when_the_flag_was_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], as_json: bool
) -> None:
    # Each fails: the data directory was never initialised, or the option does not exist.
    status = main.main(["--data-dir", str(tmp_path / "data"), *argv], standalone_mode=False)
    out, err = capsys.readouterr()
    assert status in (FAILURE_EXIT, USAGE_EXIT)
    assert err.startswith("Error: ")
    if as_json:
        assert json.loads(out)["error"]["message"] in err
    else:
        assert out == ""
