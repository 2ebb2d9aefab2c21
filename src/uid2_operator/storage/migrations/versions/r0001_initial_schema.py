"""Initial schema: participants, API keys, sealed client secrets, admin tokens, the audit chain,
per-key usage counters, and the change sequence.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "store_meta",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_store_meta")),
    )
    op.bulk_insert(
        sa.table("store_meta", sa.column("name", sa.String), sa.column("value", sa.BigInteger)),
        [{"name": "change_seq", "value": 0}],
    )

    op.create_table(
        "participants",
        sa.Column("site_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("allowed_roles", sa.String(200), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("contacts", sa.Text(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("site_id", name=op.f("pk_participants")),
    )

    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("roles", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.LargeBinary(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("retires_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("rotated_from", sa.String(64), nullable=True),
        sa.Column("rotated_to", sa.String(64), nullable=True),
        sa.Column("revoked_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("revoked_by", sa.String(200), nullable=True),
        sa.Column("revoked_reason", sa.Text(), nullable=True),
        sa.Column("last_used_at_ms", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["site_id"], ["participants.site_id"], name=op.f("fk_api_keys_site_id_participants")
        ),
        sa.ForeignKeyConstraint(
            ["rotated_from"], ["api_keys.key_id"], name=op.f("fk_api_keys_rotated_from_api_keys")
        ),
        sa.ForeignKeyConstraint(
            ["rotated_to"], ["api_keys.key_id"], name=op.f("fk_api_keys_rotated_to_api_keys")
        ),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_api_keys")),
    )
    op.create_index(
        op.f("ix_api_keys_site_id_created_at_ms"), "api_keys", ["site_id", "created_at_ms"]
    )

    op.create_table(
        "client_secrets",
        sa.Column("secret_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("kek_version", sa.Integer(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("retires_at_ms", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.key_id"], name=op.f("fk_client_secrets_key_id_api_keys")
        ),
        sa.PrimaryKeyConstraint("secret_id", name=op.f("pk_client_secrets")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_client_secrets_key_id"), "client_secrets", ["key_id"])

    op.create_table(
        "admin_tokens",
        sa.Column("token_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("roles", sa.String(200), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("revoked_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("revoked_by", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("token_id", name=op.f("pk_admin_tokens")),
    )

    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target_type", sa.String(32), nullable=False),
        sa.Column("target_id", sa.String(200), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=True),
        sa.Column("before", sa.Text(), nullable=True),
        sa.Column("after", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("source", sa.String(200), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("prev_hash", sa.LargeBinary(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_events")),
    )
    op.create_index(
        op.f("ix_audit_events_target_type_target_id"), "audit_events", ["target_type", "target_id"]
    )
    op.create_index(op.f("ix_audit_events_action"), "audit_events", ["action"])
    op.create_index(op.f("ix_audit_events_site_id"), "audit_events", ["site_id"])

    op.create_table(
        "key_usage",
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("endpoint", sa.String(200), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("last_used_at_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.key_id"], name=op.f("fk_key_usage_key_id_api_keys")
        ),
        sa.PrimaryKeyConstraint("key_id", "endpoint", name=op.f("pk_key_usage")),
    )


def downgrade() -> None:
    for table in (
        "key_usage",
        "audit_events",
        "admin_tokens",
        "client_secrets",
        "api_keys",
        "participants",
        "store_meta",
    ):
        op.drop_table(table)
