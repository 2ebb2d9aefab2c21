"""What every command shares: the global options, the settings, the services and the actor."""

from __future__ import annotations

import getpass
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from uid2_operator.bootstrap import Services, open_services
from uid2_operator.services.context import Actor
from uid2_operator.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class GlobalOptions:
    data_dir: str
    database_url: str | None
    json: bool = False


def global_options() -> GlobalOptions:
    ctx = click.get_current_context()
    obj = ctx.find_object(GlobalOptions)
    return obj if obj is not None else GlobalOptions(data_dir="./data", database_url=None)


def json_option(command: F) -> F:
    """``--json`` on a command; the same flag before the subcommand counts too."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON document instead of text."
    )(command)


def wants_json(as_json: bool) -> bool:
    return as_json or global_options().json


def load_settings(environment: str | None = None) -> Settings:
    options = global_options()
    return Settings.from_env(
        data_dir=options.data_dir,
        database_url=options.database_url,
        environment=environment,
    )


@contextmanager
def services(settings: Settings | None = None) -> Iterator[Services]:
    opened = open_services(settings or load_settings())
    try:
        yield opened
    finally:
        opened.close()


def os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return f"uid{os.getuid()}"


def actor() -> Actor:
    """The CLI acts as ``cli:<os user>``, one request id per invocation."""
    return Actor(id=f"cli:{os_user()}"[:200], request_id=uuid.uuid4().hex, source="cli")


def parse_list(value: str | None) -> list[str]:
    """``"A, B,,C"`` -> ``["A", "B", "C"]``; None -> []."""
    if value is None:
        return []
    return [part.strip() for part in value.split(",") if part.strip()]
