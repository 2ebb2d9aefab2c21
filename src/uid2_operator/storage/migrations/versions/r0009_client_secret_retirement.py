"""Client secrets are indexed by when they retire, for the deletion of those no request can use
any more (past their overlap, or their key's): the store now deletes them, in the commit that
stops them or with serve's key rotation schedule, and hands a reader every live secret of each key
written since the sequence it read at, so that a secret deleted in the commit that retired it
leaves the reader too.

A process of an earlier version, which reads only the secrets written since, would keep accepting
such a secret: at this revision, which it does not ship, it refuses the database instead.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_client_secrets_retires_at_ms"), "client_secrets", ["retires_at_ms"])


def downgrade() -> None:
    op.drop_index(op.f("ix_client_secrets_retires_at_ms"), table_name="client_secrets")
