"""Alembic migrations for the store, shipped with the package and applied by ``storage.migrate``."""
