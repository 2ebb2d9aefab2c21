"""Taking a store down to an earlier schema revision, as the upgrade tests start from."""

from __future__ import annotations

from alembic import command

from uid2_operator.storage import current_revision
from uid2_operator.storage.engines import make_engine
from uid2_operator.storage.migrate import _config


def downgrade_to(url: str, revision: str) -> None:
    """Downgrade the store at ``url`` to ``revision`` ("base": nothing), in one migration
    transaction, and check it got there."""
    engine, flavour = make_engine(url)
    try:
        with engine.connect() as conn:
            flavour.begin_migration(conn)
            command.downgrade(_config(conn), revision)
            conn.commit()
    finally:
        engine.dispose()
    assert current_revision(url) == (None if revision == "base" else revision)
