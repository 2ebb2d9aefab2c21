"""Persistence for the control plane: the Store protocol, its SQL backends, and migrations.

``open_store(url)`` picks SQLite or PostgreSQL from the URL; ``upgrade(url)`` brings a database's
schema to the revision this code ships. Callers type against ``storage.interface``.
"""

from __future__ import annotations

from uid2_operator.storage.migrate import current_revision, head_revision, upgrade
from uid2_operator.storage.sql import SqlStore, open_store

__all__ = ["SqlStore", "current_revision", "head_revision", "open_store", "upgrade"]
