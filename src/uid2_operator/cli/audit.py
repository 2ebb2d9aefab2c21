"""``audit ...``: reading, verifying and adopting into the hash-chained audit trail."""

from __future__ import annotations

import time

import click

from uid2_operator.cli.output import emit, fields, note, table, when
from uid2_operator.cli.params import AsciiIntRange
from uid2_operator.cli.runtime import actor, json_option, services, wants_json
from uid2_operator.domain.authorization import AUDIT_TARGET_TYPES
from uid2_operator.services.audit_trail import adopt_rows_past_head
from uid2_operator.services.credentials import (
    MAX_AUDIT_LIMIT,
    MAX_AUDIT_SITE_ID,
    MIN_AUDIT_SITE_ID,
)


@click.group()
def audit() -> None:
    """The audit trail."""


@audit.command("list")
@click.option("--limit", type=AsciiIntRange(1, MAX_AUDIT_LIMIT), default=100, show_default=True)
@click.option(
    "--since",
    "since_seq",
    type=AsciiIntRange(0),
    default=None,
    help="Only events after this sequence number (to page).",
)
@click.option(
    "--target",
    "target_id",
    default=None,
    help="Only events whose target id is this, whatever the target's type (a key id, a token "
    "id, a subscription id, a site id, a keyset id, ...; keyset ids and site ids overlap: add "
    "--target-type, or use --site-id for everything about a participant).",
)
@click.option(
    "--target-type",
    "target_type",
    type=click.Choice(AUDIT_TARGET_TYPES),
    default=None,
    help="Only events whose target is of this type.",
)
@click.option(
    "--site-id",
    "site_id",
    type=AsciiIntRange(MIN_AUDIT_SITE_ID, MAX_AUDIT_SITE_ID),
    default=None,
    help="Only events about this participant: itself, its keys, keyset and keypairs.",
)
@click.option("--action", default=None, help="Only this action, e.g. key.rotate.")
@json_option
def list_(  # noqa: PLR0917 (click passes every option positionally)
    limit: int,
    since_seq: int | None,
    target_id: str | None,
    target_type: str | None,
    site_id: int | None,
    action: str | None,
    as_json: bool,
) -> None:
    """List audit events, oldest first."""
    with services() as svc:
        events = svc.credentials.list_audit(
            actor(),
            since_seq=since_seq,
            target_id=target_id,
            action=action,
            limit=limit,
            target_type=target_type,
            site_id=site_id,
        )
    emit(
        wants_json(as_json),
        [e.to_json() for e in events],
        lambda: table(
            ["SEQ", "AT", "ACTOR", "ACTION", "TARGET", "OUTCOME"],
            [[e.seq, when(e.at_ms), e.actor, e.action, e.target_id, e.outcome] for e in events],
        ),
    )


@audit.command("verify")
@json_option
def verify(as_json: bool) -> None:
    """Check the hash chain; exits 1 when a row was edited, inserted or deleted."""
    with services() as svc:
        verdict = svc.credentials.verify_audit(actor())

    def human() -> None:
        fields(
            [
                ("chain", "intact" if verdict.ok else "BROKEN"),
                ("events checked", verdict.checked),
                ("first bad seq", verdict.first_bad_seq),
                ("reason", verdict.reason),
                ("head seq", verdict.head_seq),
                ("head hash", verdict.head_hash),
            ]
        )

    emit(wants_json(as_json), verdict.to_json(), human)
    if not verdict.ok:
        note(f"Error: the audit chain is broken at seq {verdict.first_bad_seq}")
        raise click.exceptions.Exit(1)


@audit.command("adopt")
@click.option(
    "--through",
    "through_seq",
    type=AsciiIntRange(1),
    required=True,
    help="The chain's last row (the head seq `audit verify` reports): every row past the "
    "recorded head up to it is adopted.",
)
@json_option
def adopt(through_seq: int, as_json: bool) -> None:
    """Make audit rows an earlier version appended past the recorded head part of the chain.

    Stop every process of the earlier version first, then review the rows: `audit verify` names
    the recorded head's seq in its reason, and `audit list --since <that seq>` lists them.
    Refused, changing nothing, when a row does not link to the one before it.
    """
    with services() as svc:
        adopted = adopt_rows_past_head(
            svc.store, actor(), through_seq=through_seq, at_ms=time.time_ns() // 1_000_000
        )

    def human() -> None:
        fields(
            [
                ("adopted from seq", adopted.from_seq),
                ("adopted through seq", adopted.through_seq),
                ("rows adopted", adopted.count),
                ("head seq", adopted.head.seq),
                ("head hash", adopted.head.hash.hex()),
            ]
        )

    emit(wants_json(as_json), adopted.to_json(), human)
