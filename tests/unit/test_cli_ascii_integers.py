"""The command line's integer (and fraction) options take ASCII digits only.

Python's ``int`` reads other scripts' digits, underscores and surrounding whitespace; a site id
typed from a mangled source must be refused (usage error, exit status 2, naming the option)
instead of silently naming another participant. Every refusal here happens while click parses
the command line, before any store is opened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import click
import pytest
from click.testing import CliRunner

from uid2_operator.cli import main
from uid2_operator.cli.params import ASCII_INT, AsciiFloatRange, AsciiInt, AsciiIntRange

ARABIC_INDIC_THREE = "\u0663"
FULLWIDTH_FIVE = "\uff15"
ARABIC_INDIC_FIVE = "\u0665"

NOT_ASCII_INTEGERS = (
    ARABIC_INDIC_THREE,
    FULLWIDTH_FIVE,
    f"1{ARABIC_INDIC_THREE}",
    "\u00b3",  # superscript three
    "1_000",
    " 3",
    "3 ",
    "3\n",
    "\t3",
    "+3",
    "--3",
    "",
    "-",
    "3.0",
    "0x10",
    "1e3",
)


@dataclass(frozen=True)
class Case:
    """One integer (or fraction) parameter of one command, with the text to fill in."""

    path: tuple[str, ...]
    args: tuple[str, ...]
    label: str
    param: str
    ascii_text: str = "3"
    expected: float = 3
    refused_text: str = ARABIC_INDIC_THREE

    def argv(self, text: str) -> list[str]:
        return [*self.path, *(text if arg == "{}" else arg for arg in self.args)]

    def __str__(self) -> str:
        return f"{' '.join(self.path)} {self.label}"


CASES = (
    # participant
    Case(("participant", "create"), ("--name", "n", "--type", "publisher", "--site-id", "{}"),
         "--site-id", "site_id"),
    Case(("participant", "show"), ("{}",), "SITE_ID", "site_id"),
    Case(("participant", "disable"), ("{}",), "SITE_ID", "site_id", refused_text=FULLWIDTH_FIVE),
    Case(("participant", "enable"), ("{}",), "SITE_ID", "site_id"),
    Case(("participant", "set-roles"), ("{}", "--roles", "GENERATOR"), "SITE_ID", "site_id"),
    Case(("participant", "set-domains"), ("--site-id", "{}", "--domains", "example.com"),
         "--site-id", "site_id"),
    Case(("participant", "set-app-names"), ("--site-id", "{}", "--app-names", "com.example"),
         "--site-id", "site_id"),
    Case(("participant", "show-origins"), ("--site-id", "{}"), "--site-id", "site_id"),
    # key
    Case(("key", "create"), ("--site-id", "{}", "--name", "n", "--roles", "GENERATOR"),
         "--site-id", "site_id", refused_text=FULLWIDTH_FIVE),
    Case(("key", "create"),
         ("--site-id", "3", "--name", "n", "--roles", "GENERATOR", "--expires-in-days", "{}"),
         "--expires-in-days", "expires_in_days"),
    Case(("key", "list"), ("--site-id", "{}"), "--site-id", "site_id"),
    Case(("key", "rotate"), ("UID2-C-L-3-abcdef", "--grace-days", "{}"), "--grace-days",
         "grace_days", refused_text="1_0"),
    Case(("key", "rotate-secret"), ("UID2-C-L-3-abcdef", "--grace-days", "{}"), "--grace-days",
         "grace_days"),
    # keypair
    Case(("keypair", "create"), ("--site-id", "{}"), "--site-id", "site_id"),
    Case(("keypair", "list"), ("--site-id", "{}"), "--site-id", "site_id"),
    # keyring
    Case(("keyring", "activate-version"), ("{}",), "VERSION", "version"),
    Case(("keyring", "drop-version"), ("{}",), "VERSION", "version", refused_text=" 3"),
    # audit
    Case(("audit", "list"), ("--limit", "{}"), "--limit", "limit"),
    Case(("audit", "list"), ("--since", "{}"), "--since", "since_seq"),
    Case(("audit", "adopt"), ("--through", "{}"), "--through", "through_seq"),
    # serve
    Case(("serve",), ("--port", "{}"), "--port", "port", "8080", 8080, "8_080"),
    Case(("serve",), ("--admin-port", "{}"), "--admin-port", "admin_port", "8081", 8081),
    Case(("serve",), ("--metrics-port", "{}"), "--metrics-port", "metrics_port", "9090", 9090),
    Case(("serve",), ("--workers", "{}"), "--workers", "workers"),
    # sharing
    Case(("sharing", "set"), ("--site-id", "{}", "--owner-only"), "--site-id", "site_id"),
    Case(("sharing", "set"), ("--site-id", "{}", "--allow", "4,5"), "--site-id", "site_id"),
    Case(("sharing", "show"), ("--site-id", "{}"), "--site-id", "site_id", refused_text="+3"),
    # salts
    Case(("salts", "rotate"), ("--fraction", "{}"), "--fraction", "fraction", "0.5", 0.5,
         f"0.{ARABIC_INDIC_FIVE}"),
    Case(("salts", "rotate"), ("--fraction", "{}"), "--fraction", "fraction", "1e-1", 0.1,
         "nan"),
)  # fmt: skip


def _command(path: tuple[str, ...]) -> click.Command:
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        found = command.get_command(click.Context(command), name)
        assert found is not None, name
        command = found
    return command


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_command_refuses_a_number_not_in_ascii_digits(
    case: Case, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data_dir = tmp_path_factory.mktemp("unused") / "data"

    result = CliRunner().invoke(main, ["--data-dir", str(data_dir), *case.argv(case.refused_text)])

    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith(f"Error: Invalid value for '{case.label}': ")
    assert f"{case.refused_text!r} is not a valid " in result.stderr
    assert not data_dir.exists()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_command_still_reads_a_number_in_ascii_digits(case: Case) -> None:
    command = _command(case.path)

    with command.make_context(case.path[-1], case.argv(case.ascii_text)[len(case.path) :]) as ctx:
        value = ctx.params[case.param]

    assert value == case.expected
    assert type(value) is type(case.expected)


def test_json_output_names_the_option_of_a_refused_site_id() -> None:
    result = CliRunner().invoke(main, ["--json", "key", "list", "--site-id", FULLWIDTH_FIVE])

    assert result.exit_code == 2
    assert "Invalid value for '--site-id'" in result.stdout
    assert '"usage"' in result.stdout


def test_sharing_allow_list_is_parsed_as_before() -> None:
    argv = ["--site-id", "3", "--allow", "4,5", "--allow-types", "dsp"]

    with _command(("sharing", "set")).make_context("set", argv) as ctx:
        assert ctx.params["site_id"] == 3
        assert ctx.params["allow"] == "4,5"


@pytest.mark.parametrize("text", NOT_ASCII_INTEGERS)
def test_ascii_int_refuses_anything_but_ascii_digits(text: str) -> None:
    with pytest.raises(click.BadParameter, match=r"is not a valid integer[.]"):
        ASCII_INT.convert(text, None, None)


@pytest.mark.parametrize("text", NOT_ASCII_INTEGERS)
def test_ascii_int_range_refuses_anything_but_ascii_digits(text: str) -> None:
    with pytest.raises(click.BadParameter, match=r"is not a valid integer range[.]"):
        AsciiIntRange(0).convert(text, None, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("7", 7), ("-7", -7), ("007", 7), ("2147483647", 2147483647), ("-0", 0)],
)
def test_ascii_int_reads_ascii_digits_with_an_optional_minus(text: str, expected: int) -> None:
    assert AsciiInt().convert(text, None, None) == expected


def test_ascii_int_passes_a_default_written_as_an_int() -> None:
    assert ASCII_INT.convert(14, None, None) == 14
    assert AsciiIntRange(1, 256).convert(1, None, None) == 1


def test_ascii_int_refuses_more_digits_than_python_reads() -> None:
    with pytest.raises(click.BadParameter):
        ASCII_INT.convert("9" * 5000, None, None)


def test_ascii_int_range_keeps_its_bounds() -> None:
    workers = AsciiIntRange(1, 256)
    assert workers.convert("256", None, None) == 256
    for text in ("0", "257", "-1"):
        with pytest.raises(click.BadParameter, match="not in the range 1<=x<=256"):
            workers.convert(text, None, None)
    assert AsciiIntRange(0, 10, min_open=True, clamp=True).convert("-4", None, None) == 1


@pytest.mark.parametrize(
    "text",
    [
        "nan",
        "NaN",
        "-nan",
        "inf",
        "-inf",
        "Infinity",
        f"0.{ARABIC_INDIC_FIVE}",
        f"{FULLWIDTH_FIVE}e-1",
        "0.5_0",
        " 0.5",
        "0.5 ",
        "+0.5",
        "0x1p-1",
        ".",
        "",
        "e1",
        "1e",
    ],
)
def test_ascii_float_range_refuses_anything_but_an_ascii_decimal(text: str) -> None:
    with pytest.raises(click.BadParameter, match=r"is not a valid float range[.]"):
        AsciiFloatRange(0, 1, min_open=True).convert(text, None, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", 1.0), ("0.05", 0.05), (".5", 0.5), ("1.", 1.0), ("5e-1", 0.5), ("2.5E-1", 0.25)],
)
def test_ascii_float_range_reads_an_ascii_decimal(text: str, expected: float) -> None:
    assert AsciiFloatRange(0, 1, min_open=True).convert(text, None, None) == expected


def test_ascii_float_range_keeps_its_bounds_and_defaults() -> None:
    fraction = AsciiFloatRange(0, 1, min_open=True)
    assert fraction.convert(0.05, None, None) == 0.05
    for text in ("0", "1.5", "-0.5", "1e999"):
        with pytest.raises(click.BadParameter, match="not in the range 0<x<=1"):
            fraction.convert(text, None, None)
    assert math.isclose(fraction.convert("1e-9", None, None), 1e-9)
