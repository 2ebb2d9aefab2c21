"""Permissions as data: the roles a credential may carry and what each unlocks.

Client roles are granted to participants' API keys; admin roles to administrators' tokens. Each
credential type has its own enum, so no admin or operator role can ever be granted to a client key.
"""

from __future__ import annotations

from enum import StrEnum


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
