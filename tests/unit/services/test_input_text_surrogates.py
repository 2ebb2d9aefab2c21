"""Text arguments holding surrogate code points are refused before they reach the store.

Python decodes invalid UTF-8 bytes on a command line to lone surrogates (and a JSON body can carry
them as ``\\udcff`` escapes); no database encoding can store them, so every text argument refuses
them with InvalidInput naming the argument, and nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from service_fixtures import ACTOR

from uid2_operator.errors import InvalidInput
from uid2_operator.services import inputs
from uid2_operator.services.credentials import CredentialService
from uid2_operator.storage import SqlStore

BAD = "bad\udcff"


@pytest.mark.parametrize("value", [BAD, "\ud800", "x\udfffy", "\udc80" * 3])
def test_text_refuses_surrogates_naming_the_argument(value: str) -> None:
    with pytest.raises(InvalidInput, match=r"^reason must be valid UTF-8 text") as caught:
        inputs.text(value, "reason")
    assert value not in caught.value.detail
    with pytest.raises(InvalidInput, match=r"^name must be valid UTF-8 text"):
        inputs.optional_text(value, "name")
    with pytest.raises(InvalidInput, match=r"^each of contacts must be valid UTF-8 text"):
        inputs.names(["ok@example.com", value], "contacts")
    with pytest.raises(InvalidInput, match=r"^type must be valid UTF-8 text"):
        inputs.participant_type(value)
    with pytest.raises(InvalidInput, match=r"^key_id must be valid UTF-8 text"):
        inputs.credential_id(value, "key_id")


def test_text_keeps_valid_unicode() -> None:
    assert inputs.text("Caf\u00e9 \U0001f600", "name") == "Caf\u00e9 \U0001f600"


Call = Callable[[CredentialService, int, str], Any]

CALLS: dict[str, tuple[Call, str]] = {
    "participant name": (
        lambda s, _site, _k: s.create_participant(ACTOR, name=BAD, type="publisher"),
        "name",
    ),
    "participant contact": (
        lambda s, _site, _k: s.create_participant(
            ACTOR, name="P2", type="publisher", contacts=[f"{BAD}@example.com"]
        ),
        "each of contacts",
    ),
    "key name": (
        lambda s, site, _k: s.create_key(ACTOR, site_id=site, name=BAD, roles=["GENERATOR"]),
        "name",
    ),
    "key rename": (lambda s, _site, kid: s.rename_key(ACTOR, kid, name=BAD), "name"),
    "key revoke reason": (lambda s, _site, kid: s.revoke_key(ACTOR, kid, reason=BAD), "reason"),
}


@pytest.mark.parametrize("case", list(CALLS))
def test_services_refuse_surrogates_and_write_nothing(
    case: str, svc: CredentialService, store: SqlStore
) -> None:
    site = svc.create_participant(ACTOR, name="P", type="publisher", roles=["GENERATOR"]).site_id
    key_id = svc.create_key(ACTOR, site_id=site, name="k", roles=["GENERATOR"]).key_id
    call, what = CALLS[case]
    before = store.change_seq()
    with store.read() as tx:
        events = len(tx.audit.list_events())
    with pytest.raises(InvalidInput, match=f"^{what} must be valid UTF-8 text") as caught:
        call(svc, site, key_id)
    assert BAD not in caught.value.detail
    assert store.change_seq() == before
    with store.read() as tx:
        assert len(tx.audit.list_events()) == events
