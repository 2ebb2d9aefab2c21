"""A data-plane answer's repr names its status, never what its body carries (tokens, raw UIDs,
the identities they answer for)."""

from __future__ import annotations

from uid2_operator.services.data_plane import RefreshReply, Reply

RAW_UID = "kh5iPP4IG6KF6UeTdp0lF4yX/YdU9OJ+wOHqEhcXa6s="


def test_a_replys_repr_leaves_its_body_out() -> None:
    mapped = Reply(
        "success", {"mapped": [{"identifier": "bob@example.com", "advertising_id": RAW_UID}]}
    )
    shown = repr(mapped)
    assert "success" in shown
    assert RAW_UID not in shown
    assert "bob@example.com" not in shown
    assert mapped.to_mapping()["body"]["mapped"][0]["advertising_id"] == RAW_UID


def test_a_refresh_replys_repr_leaves_its_response_key_out() -> None:
    key = bytes(range(32))
    shown = repr(RefreshReply(Reply("success"), key))
    assert "success" in shown
    assert repr(key)[2:-1] not in shown
    assert key.hex() not in shown
