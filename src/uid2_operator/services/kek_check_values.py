"""The keyring a use case that writes the store seals under, held to the store's KEK check values
inside that use case's own transaction: compared with them, and recorded where they are missing.

The store records a check value per key-encryption key version (``domain.sealing``). A keyring
holding another key under a recorded version is refused before anything is sealed. A version the
store records nothing for is let through, and recorded here, in the same transaction as whatever
the use case then seals under it: a running process that took up a keyring file adding a version
of its own (one copied from another instance, say) makes it known with its first seal under it,
not at the next start of some process. The seal and the record commit together or not at all, so
another instance that later adds a different key under that number is refused
(``compare_kek_check_values``) instead of sealing what this one cannot open, and this one never
seals under a number the store could still give to another key. Nor under a version another
instance dropped (``refuse_dropped_active_version``): a keyring file not yet replaced by the
dropping instance's would seal what no up-to-date instance can open.
"""

from __future__ import annotations

from uid2_operator.domain.sealing import (
    RUN_AGAIN,
    Keyring,
    KeyringSource,
    compare_kek_check_values,
)
from uid2_operator.errors import KeyringError
from uid2_operator.storage.interface import Tx


def recorded_keyring(tx: Tx, source: KeyringSource, *, then: str = RUN_AGAIN) -> Keyring:
    """``source``'s latest keyring (``KeyringSource.latest``) for the write unit of work ``tx``,
    once the store records the check value of every version it holds.

    Refused (``KeyringError``, ``compare_kek_check_values``), writing nothing, when it holds
    another key under a version the store records. The check values of the held versions the
    store has none for are recorded in ``tx`` (``DeploymentRepository.record_kek_check_values``,
    which never overwrites and moves no change sequence), before the caller seals anything, so
    they commit, or roll back, with what it writes. In the usual case, every held version
    recorded already, this is one small read and no write. ``then``: what a refusal says follows
    the fix."""
    recorded = tx.deployment.kek_check_values()
    keyring = source.latest(recorded)
    unrecorded = compare_kek_check_values(keyring, recorded, then=then)
    refuse_dropped_active_version(keyring, tx.deployment.dropped_kek_versions(), then=then)
    if unrecorded:
        # The write lock is held since the read above: no other writer recorded these since.
        tx.deployment.record_kek_check_values(unrecorded)
    return keyring


def refuse_dropped_active_version(
    keyring: Keyring, dropped: frozenset[int], *, then: str = RUN_AGAIN
) -> None:
    """Refuse (``KeyringError``) a keyring whose active version another instance dropped
    (``keyring drop-version``, recorded in the store): this file was not replaced by the
    dropping instance's, and what it sealed now no up-to-date instance could open."""
    if keyring.active_version in dropped:
        version = keyring.active_version
        raise KeyringError(
            f"This keyring's active key-encryption key version {version} was dropped from the "
            "keyring of another instance of this database: copy that instance's keyring file "
            f"here (over this one), {then}"
        )
