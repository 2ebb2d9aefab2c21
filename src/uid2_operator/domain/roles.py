"""Permissions as data: the roles a credential may carry and what each unlocks.

Client roles are granted to participants' API keys; admin roles to administrators' tokens. Each
credential type has its own enum, so no admin or operator role can ever be granted to a client key.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import TypeVar

from uid2_operator.errors import InvalidInput


class ClientRole(StrEnum):
    GENERATOR = "GENERATOR"
    MAPPER = "MAPPER"
    ID_READER = "ID_READER"  # shown to people as "Bidder"
    SHARER = "SHARER"
    OPTOUT = "OPTOUT"


class AdminRole(StrEnum):
    SUPER_USER = "SUPER_USER"
    MAINTAINER = "MAINTAINER"
    READ_ONLY = "READ_ONLY"


_R = TypeVar("_R", ClientRole, AdminRole)

# How people see client roles (the portal and the docs call ID_READER "Bidder").
CLIENT_ROLE_LABELS: dict[ClientRole, str] = {
    ClientRole.GENERATOR: "Generator",
    ClientRole.MAPPER: "Mapper",
    ClientRole.ID_READER: "Bidder",
    ClientRole.SHARER: "Sharer",
    ClientRole.OPTOUT: "Opt-Out",
}


def parse_client_roles(names: Iterable[str]) -> frozenset[ClientRole]:
    """Role names (trimmed, any case) to client roles; unknown names are refused by name.

    Only the client enum is consulted, so an admin or operator role name can never reach a key.
    """
    return frozenset(_parse(ClientRole, names))


def parse_admin_roles(names: Iterable[str]) -> frozenset[AdminRole]:
    return frozenset(_parse(AdminRole, names))


def _parse(enum: type[_R], names: Iterable[str]) -> list[_R]:
    """The roles named; an unknown one is refused by its place (``roles[1]``), never repeated:
    what was pasted there may be a credential."""
    cleaned = [name.strip().upper() for name in names]
    unknown = [f"roles[{i}]" for i, name in enumerate(cleaned) if name not in enum.__members__]
    if unknown:
        raise InvalidInput(
            f"Unknown role at {', '.join(unknown)}; use {', '.join(enum.__members__)}"
        )
    return [enum[name] for name in cleaned]
