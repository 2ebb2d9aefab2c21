"""Deployment environments. A credential is minted for one environment and refused in any other."""

from __future__ import annotations

from enum import StrEnum


class Environment(StrEnum):
    LOCAL = "local"
    INTEG = "integ"
    PROD = "prod"

    @property
    def letter(self) -> str:
        """The letter API keys carry for this environment (``UID2-C-<letter>-...``)."""
        return {"local": "L", "integ": "I", "prod": "P"}[self.value]

    @classmethod
    def from_letter(cls, letter: str) -> Environment | None:
        for env in cls:
            if env.letter == letter:
                return env
        return None
