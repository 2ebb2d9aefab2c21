"""The admin API's route table: every route declares its action, and the builder enforces it.

An ``Operation`` is one method on one path with everything the edge needs to know about it: the
domain ``AdminAction`` it performs (which decides the admin roles allowed), the body and query it
accepts, what it returns, and whether the response carries a secret. ``check_operations`` refuses
a table in which any route lacks an action, names an action missing from the domain's table, is
public without being on the short public list, or takes a body on a method that should not; so a
new route is closed until someone says who may call it, and the app cannot even be built otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from uid2_operator.domain.authorization import ADMIN_ACTIONS, AdminAction
from uid2_operator.services.admin import AdminService
from uid2_operator.services.context import Actor
from uid2_operator.services.credentials import CredentialService
from uid2_operator.web.admin_api.bodies import BodySpec, Field, Values

PREFIX = "/admin/api"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
METHODS = WRITE_METHODS | {"GET"}


class Public:
    """The access of a route that needs no admin token. Only ``PUBLIC_PATHS`` may have it."""


PUBLIC: Final = Public()
PUBLIC_PATHS: Final = frozenset({"/health", "/openapi.json"})


class ChangeCounter(Protocol):
    def change_seq(self) -> int: ...


class AdminServices(Protocol):
    """What the admin API needs from the composition root (``bootstrap.Services`` has it)."""

    @property
    def credentials(self) -> CredentialService: ...

    @property
    def admin(self) -> AdminService: ...

    @property
    def store(self) -> ChangeCounter: ...


@dataclass(frozen=True, slots=True)
class Call:
    """One authorised request, as a handler sees it."""

    services: AdminServices
    actor: Actor
    params: Mapping[str, str]
    body: Values
    query: Values

    def site_id(self) -> int:
        """The ``{site_id}`` path parameter as an integer: the app refused any other text before
        the route ran (``bodies.check_path``, against the parameter's declared ``Field``)."""
        return int(self.params["site_id"])


@dataclass(frozen=True, slots=True)
class Reply:
    payload: Any  # JSON-ready
    status: int = 200


Handler = Callable[[Call], Reply]


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str  # below PREFIX, Starlette syntax: "/keys/{key_id}"
    access: AdminAction | Public
    handler: Handler
    operation_id: str
    summary: str
    response: str  # the OpenAPI component schema of the success body
    tag: str
    status: int = 200
    body: BodySpec | None = None  # None: the route takes no body (GET)
    query: tuple[Field, ...] = ()
    # The query string is not read at all, rather than checked against ``query`` (a health probe
    # may add a cache-busting parameter). Such a route declares no query fields.
    query_ignored: bool = False
    discloses_secret: bool = False  # sent once, with Cache-Control: no-store
    errors: tuple[int, ...] = ()  # statuses the route can answer besides auth and 5xx
    path_params: tuple[tuple[str, str], ...] = field(default=())  # (name, description)

    @property
    def full_path(self) -> str:
        return PREFIX + self.path

    @property
    def public(self) -> bool:
        return isinstance(self.access, Public)


class RouteTableError(ValueError):
    """The route table breaks a rule of this module; raised while the app is being built."""


def check_operations(operations: Iterable[Operation]) -> tuple[Operation, ...]:
    """Validate the whole table (see the module docstring); returns it as a tuple."""
    seen: set[tuple[str, str]] = set()
    checked: list[Operation] = []
    for op in operations:
        where = f"{op.method} {op.full_path}"
        if op.method not in METHODS:
            raise RouteTableError(f"{where}: unsupported method")
        if (op.method, op.path) in seen:
            raise RouteTableError(f"{where}: declared twice")
        seen.add((op.method, op.path))
        if isinstance(op.access, Public):
            if op.path not in PUBLIC_PATHS or op.method != "GET":
                raise RouteTableError(f"{where}: only {sorted(PUBLIC_PATHS)} may be public")
        elif not isinstance(op.access, AdminAction):
            raise RouteTableError(f"{where}: no admin action declared (deny by default)")
        elif op.access.value not in ADMIN_ACTIONS:
            raise RouteTableError(f"{where}: action {op.access.value} has no roles")
        if (op.method in WRITE_METHODS) != (op.body is not None):
            raise RouteTableError(f"{where}: write methods take a body spec, GET does not")
        if op.query_ignored and op.query:
            raise RouteTableError(f"{where}: a route that ignores its query string declares none")
        if op.discloses_secret and op.method != "POST":
            raise RouteTableError(f"{where}: secrets are only returned by POST")
        placeholders = set(re.findall(r"{([a-z_]+)}", op.path))
        if placeholders != {name for name, _ in op.path_params}:
            raise RouteTableError(f"{where}: path parameters are not all described")
        checked.append(op)
    return tuple(checked)
