"""The store contract for the environment letters of stored credential ids (every backend).

A store an earlier version initialised records no environment; the letter in the ids of its
API keys (``UID2-C-L-...``) and admin tokens (``UID2-A-I-...``) is what says which one it
serves. The store reads the distinct letters, revoked credentials included, in a read unit.
"""

from __future__ import annotations

from store_records import T0, admin_token, api_key, participant

from uid2_operator.domain.credentials import KeyState
from uid2_operator.storage import SqlStore


def _letters(store: SqlStore) -> frozenset[str]:
    with store.read() as rx:
        return rx.deployment.credential_environment_letters()


def test_a_store_without_credentials_has_no_letters(store: SqlStore) -> None:
    assert _letters(store) == frozenset()
    with store.transaction() as tx:
        tx.participants.add(participant(1001))
    assert _letters(store) == frozenset()


def test_the_letters_of_api_key_ids_are_read_once_each(store: SqlStore) -> None:
    with store.transaction() as tx:
        tx.participants.add(participant(1001))
        tx.participants.add(participant(2002))
        tx.api_keys.add(api_key("UID2-C-I-1001-abcDE1", 1001))
        tx.api_keys.add(api_key("UID2-C-I-2002-abcDE2", 2002))
        tx.api_keys.add(
            api_key("UID2-C-I-2002-abcDE3", 2002, state=KeyState.REVOKED, revoked_at_ms=T0)
        )
    assert _letters(store) == frozenset({"I"})


def test_admin_token_ids_count_too(store: SqlStore) -> None:
    with store.transaction() as tx:
        tx.admin_tokens.add(admin_token("UID2-A-P-0-tokEN1"))
    assert _letters(store) == frozenset({"P"})


def test_ids_of_several_environments_give_every_letter(store: SqlStore) -> None:
    with store.transaction() as tx:
        tx.participants.add(participant(1001))
        tx.api_keys.add(api_key("UID2-C-L-1001-abcDE1", 1001))
        tx.admin_tokens.add(admin_token("UID2-A-I-0-tokEN1"))
        tx.admin_tokens.add(admin_token("UID2-A-L-0-tokEN2"))
    assert _letters(store) == frozenset({"L", "I"})
    with store.transaction() as tx:  # a write unit reads them as well
        assert tx.deployment.credential_environment_letters() == frozenset({"L", "I"})
