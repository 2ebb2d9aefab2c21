"""The usage counters of the keys one page lists, on every backend: ``usage.list_for_keys``
reads them in batches of ids, so a page of more keys than one batch gets every key's counters,
each once, and none of a key it does not name."""

from __future__ import annotations

from store_records import T0, api_key, participant

from uid2_operator.storage import SqlStore

GENERATE, MAP = "/v2/token/generate", "/v3/identity/map"
KEYS = 1001  # a full page (MAX_LIST_LIMIT) and one more: past two IN batches of 500


def test_every_named_keys_counters_and_no_other(store: SqlStore) -> None:
    key_ids = [f"UID2-C-L-1001-k{n:05d}" for n in range(KEYS)]
    with store.transaction() as tx:
        tx.participants.add(participant(1001))
        for key_id in key_ids:
            tx.api_keys.add(api_key(key_id, 1001))
    store.record_usage(
        [(key_id, GENERATE, n + 1, T0 + n) for n, key_id in enumerate(key_ids)]
        + [(key_ids[0], MAP, 7, T0), (key_ids[-1], MAP, 9, T0)]
    )
    named = key_ids[:-1]  # every key but the last
    with store.read() as rx:
        counters = rx.usage.list_for_keys([*named, named[0]])  # a repeated id counts once
    got = [(u.key_id, u.endpoint, u.count) for u in counters]
    expected = [(key_ids[0], MAP, 7)] + [
        (key_id, GENERATE, n + 1) for n, key_id in enumerate(named)
    ]
    assert got == sorted(expected)
    with store.read() as rx:
        assert rx.usage.list_for_keys([]) == []
