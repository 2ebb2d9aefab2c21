"""The largest identity map answer on a real ``uid2-operator serve --workers 1``.

    .venv/bin/python bench/map_answer.py [--version v3|v2] [--emails 50000] [--seconds 5]
        [--json out.json]

As ``buckets_answer.py`` (its data directory, key and serve): health checks on one connection
while the worker is idle, then one sealed ``POST /v3/identity/map`` (or ``/v2/identity/map``)
of ``--emails`` short e-mail addresses, as many as a request under the 1 MiB body limit holds by
default, sent from a thread while health checks on another connection are timed until the whole
answer is read. The answer is opened and its entries counted (a count other than the inputs'
ends the run with an error, after the figures).

It prints the answer's time and µs per identity, its size on the wire, the health check's
p50/p99/max idle and during the answer, their p99 ratio, and the worker's memory. Nothing is
asserted.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Final

from buckets_answer import SealedCall, measure, report, serving_prepared, us_per

PATHS: Final = {"v3": "/v3/identity/map", "v2": "/v2/identity/map"}


def emails(count: int) -> list[str]:
    """``count`` distinct short addresses (about 13 bytes of JSON each)."""
    return [f"u{n}@x.io" for n in range(count)]


def entries(version: str, body: Any) -> int:
    """How many inputs ``body`` answers for."""
    if version == "v3":
        return len(body["email"])
    return len(body["mapped"]) + len(body.get("unmapped", []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", choices=sorted(PATHS), default="v3")
    parser.add_argument("--emails", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", dest="json_path", type=Path, default=None)
    args = parser.parse_args()

    with serving_prepared({}) as (port, issued, worker):
        call = SealedCall(
            port,
            issued["key"],
            issued["secret"],
            PATHS[args.version],
            {"email": emails(args.emails)},
        )
        measured = measure(port, call, worker, args.seconds)
    answered = entries(args.version, call.opened["body"])
    figures: dict[str, Any] = {
        "path": PATHS[args.version],
        "emails": args.emails,
        "prepare_s": issued["prepare_s"],
        "ready_s": issued["ready_s"],
        "identities_answered": answered,
        **measured,
        "answer_us_per_identity": us_per(measured, answered),
    }
    report(figures, args.json_path)
    if answered != args.emails:
        raise SystemExit(f"{answered} identities answered, not {args.emails}")


if __name__ == "__main__":
    main()
