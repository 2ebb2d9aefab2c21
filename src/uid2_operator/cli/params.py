"""Parameter types for the command line's numbers, written in ASCII only.

Python's ``int`` and ``float`` read the digits of every script (Arabic-Indic, full-width, ...)
as 0-9, and also underscores (``1_000``) and surrounding whitespace; ``float`` reads ``nan`` and
``inf`` too. A site id or version taken from a mangled source must not silently name another
one, so these types take an integer only as an optional ``-`` followed by the ASCII digits
``0-9``, and a fraction only as such digits with an optional ``.`` part and exponent. Anything
else is click's usage error naming the option (exit status 2). Bounds are click's, unchanged; a
``-`` where no negative value is allowed is refused by the range check.
"""

from __future__ import annotations

import re
from typing import Any, NoReturn

import click

from uid2_operator.settings import DECIMAL_TEXT

INTEGER_TEXT = re.compile(r"-?[0-9]+")
"""An integer in ASCII digits, with an optional ``-``: what every integer parameter takes."""


def _refuse(
    kind: click.ParamType[Any], value: Any, param: click.Parameter | None, ctx: click.Context | None
) -> NoReturn:
    """Click's own refusal of text that is no number, word for word (``'x' is not a valid
    integer.``): scripts that read the message see the one they always saw."""
    kind.fail(f"{value!r} is not a valid {kind.name}.", param, ctx)


def _require_integer_text(
    kind: click.ParamType[Any], value: Any, param: click.Parameter | None, ctx: click.Context | None
) -> None:
    """Refuse ``value`` unless it is ASCII integer text or an ``int`` (a default in the code)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return
    if isinstance(value, str) and INTEGER_TEXT.fullmatch(value) is not None:
        return
    _refuse(kind, value, param, ctx)


def _require_decimal_text(
    kind: click.ParamType[Any], value: Any, param: click.Parameter | None, ctx: click.Context | None
) -> None:
    """Refuse ``value`` unless it is ASCII decimal text or a number (a default in the code)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return
    if isinstance(value, str) and DECIMAL_TEXT.fullmatch(value) is not None:
        return
    _refuse(kind, value, param, ctx)


class AsciiInt(click.types.IntParamType):
    """An integer in ASCII digits with an optional leading ``-``: ``type=int`` without the
    other scripts' digits, underscores and whitespace."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        _require_integer_text(self, value, param, ctx)
        return super().convert(value, param, ctx)


class AsciiIntRange(click.IntRange):
    """``click.IntRange`` (the same bounds, openness and clamping) over :class:`AsciiInt`'s
    text."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        _require_integer_text(self, value, param, ctx)
        return super().convert(value, param, ctx)


class AsciiFloatRange(click.FloatRange):
    """``click.FloatRange`` over ASCII decimal text: no other script's digits, no underscores,
    no whitespace, no ``nan`` or ``inf`` (``nan`` compares false with both bounds, so the range
    check alone lets it through)."""

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        _require_decimal_text(self, value, param, ctx)
        return super().convert(value, param, ctx)


ASCII_INT = AsciiInt()
"""The instance commands use, as ``click.INT`` is for ``type=int``."""
