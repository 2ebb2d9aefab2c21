"""Sharing and client-side credentials: the participant types a keyset is shared with, the
domain and app names of each participant, and client-side keypairs (private keys sealed).

Existing keysets keep their sharing mode and sites (a site keyset stays shared with bidders, as
it was created); they list no participant types. Existing participants have no domain or app
names, so no client-side request is accepted for them until names are set.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("keysets") as batch:
        batch.add_column(sa.Column("allowed_types", sa.Text(), nullable=False, server_default="[]"))
    with op.batch_alter_table("participants") as batch:
        batch.add_column(sa.Column("domain_names", sa.Text(), nullable=False, server_default="[]"))
        batch.add_column(sa.Column("app_names", sa.Text(), nullable=False, server_default="[]"))

    op.create_table(
        "client_side_keypairs",
        sa.Column("subscription_id", sa.String(32), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("kek_version", sa.Integer(), nullable=False),
        sa.Column("private_key_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("contact", sa.String(254), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["participants.site_id"],
            name=op.f("fk_client_side_keypairs_site_id_participants"),
        ),
        sa.PrimaryKeyConstraint("subscription_id", name=op.f("pk_client_side_keypairs")),
    )
    op.create_index(op.f("ix_client_side_keypairs_site_id"), "client_side_keypairs", ["site_id"])


def downgrade() -> None:
    op.drop_table("client_side_keypairs")
    # In place on SQLite too (ALTER TABLE DROP COLUMN, SQLite 3.35 and later): a batch
    # operation copies the table and drops the original, which the keys and secrets of a
    # store holding any (and a keyset's encryption keys) refer to.
    op.drop_column("participants", "app_names")
    op.drop_column("participants", "domain_names")
    op.drop_column("keysets", "allowed_types")
