"""Encryption material and opt-outs: keysets, sealed encryption keys, the chunked salt table and
its sealed secrets, opt-out records, and the encryption key id sequence.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

_META = sa.table("store_meta", sa.column("name", sa.String), sa.column("value", sa.BigInteger))


def upgrade() -> None:
    op.bulk_insert(_META, [{"name": "encryption_key_id", "value": 0}])

    op.create_table(
        "keysets",
        sa.Column("keyset_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("sharing", sa.String(16), nullable=False),
        sa.Column("allowed_sites", sa.Text(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("keyset_id", name=op.f("pk_keysets")),
    )
    op.create_index(op.f("ix_keysets_site_id"), "keysets", ["site_id"])

    op.create_table(
        "encryption_keys",
        sa.Column("key_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("keyset_id", sa.Integer(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("activates_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("kek_version", sa.Integer(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["keyset_id"],
            ["keysets.keyset_id"],
            name=op.f("fk_encryption_keys_keyset_id_keysets"),
        ),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_encryption_keys")),
    )
    op.create_index(op.f("ix_encryption_keys_keyset_id"), "encryption_keys", ["keyset_id"])

    op.create_table(
        "salt_tables",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("bucket_count", sa.Integer(), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("id_prefix", sa.String(32), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("first_level_salt_kek_version", sa.Integer(), nullable=False),
        sa.Column("first_level_salt_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("id_secret_kek_version", sa.Integer(), nullable=False),
        sa.Column("id_secret_ciphertext", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_salt_tables")),
    )

    op.create_table(
        "salt_chunks",
        sa.Column("chunk", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("first_bucket", sa.Integer(), nullable=False),
        sa.Column("bucket_count", sa.Integer(), nullable=False),
        sa.Column("kek_version", sa.Integer(), nullable=False),
        sa.Column("salts", sa.LargeBinary(), nullable=False),
        sa.Column("has_previous", sa.LargeBinary(), nullable=False),
        sa.Column("last_updated", sa.LargeBinary(), nullable=False),
        sa.Column("refresh_from", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("chunk", name=op.f("pk_salt_chunks")),
    )

    op.create_table(
        "optouts",
        sa.Column("first_level_hash", sa.LargeBinary(), nullable=False),
        sa.Column("advertising_id", sa.String(64), nullable=True),
        sa.Column("timestamp_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("first_level_hash", name=op.f("pk_optouts")),
    )


def downgrade() -> None:
    for table in ("optouts", "salt_chunks", "salt_tables", "encryption_keys", "keysets"):
        op.drop_table(table)
    op.execute(_META.delete().where(_META.c.name == "encryption_key_id"))
