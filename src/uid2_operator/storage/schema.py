"""The tables, as SQLAlchemy Core metadata: one schema for SQLite and PostgreSQL.

This is the schema the code expects; the Alembic revisions in ``migrations/`` must produce exactly
this (a test compares them on both backends). Conventions:

- times are epoch milliseconds in BIGINT columns (``*_ms``);
- hashes, sealed secrets and audit chain links are raw bytes (LargeBinary: BLOB / BYTEA);
- role sets are stored as their sorted names joined by ',' (stable, greppable, diffable);
- JSON documents (contacts, audit before/after) are compact JSON text with sorted keys;
- no table carries plaintext credentials: only keyed hashes and sealed (encrypted) secrets.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

CHANGE_SEQ = "change_seq"
"""The ``store_meta`` row counting committed control-plane changes."""

metadata = MetaData(naming_convention=NAMING_CONVENTION)

store_meta = Table(
    "store_meta",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

change_marks = Table(
    "change_marks",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("mark", LargeBinary, nullable=False),
)
"""A random mark for each of the last ``MARKS_KEPT`` committed change sequences (revision
0008), written by the commit that moves the sequence: a reader that recorded the mark of the
sequence it read at knows whether the store still holds that very commit (``Store.mark_of``)."""

MARKS_KEPT = 100_000
"""How many change sequences keep their mark: a reader behind by more reads everything again."""

MARK_BYTES = 16

ENVIRONMENT = "environment"
"""The ``store_meta`` row naming the deployment environment the store was initialised for, as
the code ``ENVIRONMENT_CODES`` gives it (``store_meta`` holds integers). Written once (by
``init``, or by the first ``init`` or ``serve`` of this version on a store an earlier one
initialised) and never changed: every data directory on the store must serve that environment."""

ENVIRONMENT_CODES = {"local": 1, "integ": 2, "prod": 3}
"""The ``ENVIRONMENT`` row's value for each environment name; stable, never reused."""

KEK_VERSION_MAX = "kek_version_max"
"""The ``store_meta`` row holding the highest key-encryption key version any keyring file on
this store was given (``keyring add-version``, active or not); it only rises. Several keyring
files share one store, and a version added inactive seals nothing, so only this row tells the
next file that the number is taken. A store from an earlier version has no row (read as 0)."""

KEK_CHECK_PREFIX = "kek_check_"
"""The ``store_meta`` rows ``kek_check_<N>`` holding the check value of key-encryption key
version N (``domain.sealing.kek_check_value``: 63 bits of HMAC-SHA256 under the key, so it fits
the signed 64-bit value and reveals nothing of the key). Written once per version, by the first
process that uses a keyring holding it (``init``, ``keyring add-version``, or any process that
opens the services: on a store from an earlier version, which has no rows, trust on first use),
and never changed: a keyring holding another key under a recorded version is refused. A row
stays when its version is dropped, so the number cannot come back with another key.
``kek_check_name`` spells a row's name; a name with this prefix not followed by a version as it
spells one (``kek_check_07``, say) is not one of these rows."""


KEK_DROPPED_PREFIX = "kek_dropped_"
"""The ``store_meta`` rows ``kek_dropped_<N>`` (value: when, epoch ms) for each key-encryption
key version ``keyring drop-version`` dropped: a keyring file still holding it as its active
version (one not yet replaced by the dropping instance's) must seal nothing under it, which
no up-to-date instance could open."""

PEPPER_CHECK_NAME = "pepper_check"
"""The ``store_meta`` row holding the check value of the keyring's pepper
(``domain.sealing.pepper_check_value``), recorded and compared as the KEK versions' are: read
and written as check value ``PEPPER_CHECK`` (0) beside theirs."""


def kek_check_name(version: int) -> str:
    """The ``store_meta`` name of KEK version ``version``'s check value row (the pepper's for
    0, ``domain.sealing.PEPPER_CHECK``)."""
    return PEPPER_CHECK_NAME if version == 0 else f"{KEK_CHECK_PREFIX}{version}"


# ``change_seq`` on ``participants``, ``api_keys`` and ``client_secrets``: the change sequence of
# the commit that last wrote the row (every write but a usage flush's ``last_used_at_ms``), so
# that a snapshot reload reads only the rows written since the sequence it last read at. The
# server default 0 is only for the upgrade that added it: every insert and update sets it.

participants = Table(
    "participants",
    metadata,
    Column("site_id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(200), nullable=False),
    Column("type", String(32), nullable=False),
    Column("allowed_roles", String(200), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("contacts", Text, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
    # Where client-side token requests may come from: JSON lists, sorted (domain.origins rules).
    Column("domain_names", Text, nullable=False, server_default="[]"),
    Column("app_names", Text, nullable=False, server_default="[]"),
    # The change sequence of the commit that last wrote the row (see above).
    Column("change_seq", BigInteger, nullable=False, server_default="0"),
    Index(None, "change_seq"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(64), primary_key=True),
    Column("site_id", Integer, ForeignKey("participants.site_id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("roles", String(200), nullable=False),
    Column("state", String(16), nullable=False),
    Column("key_hash", LargeBinary, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger),
    Column("retires_at_ms", BigInteger),
    Column("rotated_from", String(64), ForeignKey("api_keys.key_id")),
    Column("rotated_to", String(64), ForeignKey("api_keys.key_id")),
    Column("revoked_at_ms", BigInteger),
    Column("revoked_by", String(200)),
    Column("revoked_reason", Text),
    Column("last_used_at_ms", BigInteger),
    Column("change_seq", BigInteger, nullable=False, server_default="0"),
    Index(None, "site_id", "created_at_ms"),
    Index(None, "change_seq"),
)

client_secrets = Table(
    "client_secrets",
    metadata,
    # AUTOINCREMENT on SQLite: ids are never reused after a purge, so "highest is newest" holds.
    Column("secret_id", Integer, primary_key=True, autoincrement=True),
    Column("key_id", String(64), ForeignKey("api_keys.key_id"), nullable=False, index=True),
    Column("kek_version", Integer, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("retires_at_ms", BigInteger),
    Column("change_seq", BigInteger, nullable=False, server_default="0"),
    Index(None, "change_seq"),
    Index(None, "retires_at_ms"),  # revision 0009: the deletion of retired secrets
    sqlite_autoincrement=True,
)

admin_tokens = Table(
    "admin_tokens",
    metadata,
    Column("token_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("roles", String(200), nullable=False),
    Column("token_hash", LargeBinary, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("revoked_at_ms", BigInteger),
    Column("revoked_by", String(200)),
)

# No foreign keys: the trail must outlive (and be able to name) anything it refers to.
audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target_type", String(32), nullable=False),
    Column("target_id", String(200), nullable=False),
    Column("site_id", Integer),
    Column("before", Text),
    Column("after", Text),
    Column("request_id", String(128)),
    Column("source", String(200)),
    Column("outcome", String(16), nullable=False),
    Column("prev_hash", LargeBinary, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    Index(None, "target_type", "target_id"),
    Index(None, "action"),
    Index(None, "site_id"),
)

AUDIT_HEAD_SEQ = "audit_head_seq"
"""The ``store_meta`` row holding the seq of the audit chain's last event, written with it."""

AUDIT_HEAD_HASH = tuple(f"audit_head_hash_{i}" for i in range(4))
"""The ``store_meta`` rows holding that event's 32-byte hash, as four signed 64-bit big-endian
words (``store_meta`` holds integers). With ``AUDIT_HEAD_SEQ`` they anchor the chain's end."""

key_usage = Table(
    "key_usage",
    metadata,
    Column("key_id", String(64), ForeignKey("api_keys.key_id"), primary_key=True),
    Column("endpoint", String(200), primary_key=True),
    Column("count", BigInteger, nullable=False),
    Column("last_used_at_ms", BigInteger, nullable=False),
)

# ------------------------------------------------------------ encryption keys, salts, opt-outs

KEY_ID_SEQ = "encryption_key_id"
"""The ``store_meta`` row holding the last encryption key id handed out (ids are never reused)."""

LONGEST_LIFETIME = "token_lifetime_max_s"
"""The ``store_meta`` row holding the longest token lifetime (seconds) any serve issued tokens
with; it only rises, and every key purge keeps keys at least that long past their expiry."""

# Site ids here include the service's own (-1, -2, 2), which are not participants: no foreign key.
keysets = Table(
    "keysets",
    metadata,
    Column("keyset_id", Integer, primary_key=True, autoincrement=False),
    Column("site_id", Integer, nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("is_default", Boolean, nullable=False),
    Column("sharing", String(16), nullable=False),
    Column("allowed_sites", Text, nullable=False),  # JSON list of site ids, sorted
    Column("created_at_ms", BigInteger, nullable=False),
    # Participant types a ``list`` keyset is shared with: JSON list of type names, sorted.
    Column("allowed_types", Text, nullable=False, server_default="[]"),
)

# Times are whole seconds (the keys' own unit) stored as milliseconds, like every other time.
encryption_keys = Table(
    "encryption_keys",
    metadata,
    Column("key_id", BigInteger, primary_key=True, autoincrement=False),
    Column("keyset_id", Integer, ForeignKey("keysets.keyset_id"), nullable=False, index=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("activates_at_ms", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
    Column("kek_version", Integer, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
)

# One row: the salt table's layout and version, its first-level salt and bucket-id secret sealed.
salt_tables = Table(
    "salt_tables",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("bucket_count", Integer, nullable=False),
    Column("chunk_size", Integer, nullable=False),
    Column("id_prefix", String(32), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
    Column("first_level_salt_kek_version", Integer, nullable=False),
    Column("first_level_salt_ciphertext", LargeBinary, nullable=False),
    Column("id_secret_kek_version", Integer, nullable=False),
    Column("id_secret_ciphertext", LargeBinary, nullable=False),
)

# ``chunk_size`` consecutive buckets per row: salts sealed, int64 columns little-endian.
salt_chunks = Table(
    "salt_chunks",
    metadata,
    Column("chunk", Integer, primary_key=True, autoincrement=False),
    Column("first_bucket", Integer, nullable=False),
    Column("bucket_count", Integer, nullable=False),
    Column("kek_version", Integer, nullable=False),
    Column("salts", LargeBinary, nullable=False),
    Column("has_previous", LargeBinary, nullable=False),
    Column("last_updated", LargeBinary, nullable=False),
    Column("refresh_from", LargeBinary, nullable=False),
)

# ``change_seq``: the store's change sequence as the commit that last wrote the row left it.
# Writes are serialised and bump the sequence as they commit, so a reader that has seen every
# row up to sequence N finds everything written since by ``change_seq > N`` (``optouts.since``).
# ``earlier_advertising_ids``: the record's earlier raw UIDs with their first opt-out times
# (``OptOutRecord.earlier_advertising_ids``), as JSON ``[["<raw UID>", <ms>], ...]`` sorted by raw
# UID; NULL when there are none (most rows). At most ``MAX_EARLIER_ADVERTISING_IDS`` + 1 pairs.
optouts = Table(
    "optouts",
    metadata,
    Column("first_level_hash", LargeBinary, primary_key=True),
    Column("advertising_id", String(64)),
    Column("timestamp_ms", BigInteger, nullable=False),
    Column("change_seq", BigInteger, nullable=False),
    Column("earlier_advertising_ids", Text),
    Index(None, "change_seq"),
)

# ------------------------------------------------------------------ client-side keypairs

# A deleted keypair's row is removed (its sealed private key with it); the audit trail keeps its
# subscription id and public key. The private key is sealed exactly like other material
# (``domain.material_sealing``, label ``cstg_private_key``, bound to the subscription id).
client_side_keypairs = Table(
    "client_side_keypairs",
    metadata,
    Column("subscription_id", String(32), primary_key=True),
    Column("site_id", Integer, ForeignKey("participants.site_id"), nullable=False, index=True),
    Column("public_key", LargeBinary, nullable=False),  # SubjectPublicKeyInfo DER
    Column("kek_version", Integer, nullable=False),
    Column("private_key_ciphertext", LargeBinary, nullable=False),
    Column("name", String(200), nullable=False),
    Column("contact", String(254), nullable=False),
    Column("disabled", Boolean, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
)
