"""``audit``: the zero-loss audit. Every sequence number the host checkpointed past was stored or dead-lettered.

Per partition of the ingest hub, from the first event enqueued at or after
``--since`` (or from ``--from-sequence``) up to the host's checkpoint, reads
the ingest ledger (``ingest_audit_runs``, and ``ingest_audit`` where ingest wrote
before migration 5: one Cassandra partition per Event Hubs partition and block of
10,000 sequence numbers; this hub's runs, named ``<namespace>/<hub>/<partition>``,
and those written before runs named their hub) and lists the sequence numbers
that are in neither outcome. Exit status 0 when nothing is missing, 1 when
something is, or when part of the range asked for could not be audited (a
``--since`` older than the hub's retention: the expired records' times are
unknown; ``--from-sequence`` audits from a sequence number instead). A
``--from-sequence`` past every partition's checkpoint audits nothing and is
refused (exit 2). A dead-lettered batch whose ledger entries could not be written
(the store was down) is no gap: its letter under ``batches/`` (or
``replayed/batches/``) of the dead-letter container names its sequence numbers,
which are counted as dead-lettered and printed as a ``dead-lettered batch``.

Connections as the app's: ``EventHubConnection`` (or
``EventHubConnection__fullyQualifiedNamespace``, with ``__credential`` and
``__clientId`` as the host reads them), ``AzureWebJobsStorage`` and the
``SLUICE_CASSANDRA_*`` settings.
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta

from shared.exceptions import ConfigurationError
from sluice.arguments import nonnegative_int, parse_time

_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
SHOWN_GAPS = 20


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("audit", help="list sequence numbers checkpointed past but neither stored nor "
                                   "dead-lettered", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--since", type=since_time,
                       help="a time (ISO 8601 with an offset, e.g. 2026-12-05T17:00:00Z; a bare date is midnight "
                            "UTC) or an age (90s, 15m, 2h, 1d)")
    start.add_argument("--from-sequence", type=nonnegative_int,
                       help="audit every partition from this sequence number")
    parser.set_defaults(func=run)


def since_time(text: str, *, now: datetime | None = None) -> datetime:
    """``--since``: an age before now, or a time as every time option takes it (:func:`parse_time`: a date-time
    without an offset is refused, since in UTC+1 it would audit from an hour later than the operator meant)."""
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(text.strip())
    if match:
        try:
            return now - timedelta(**{_UNITS[match[2]]: int(match[1])})
        except OverflowError:
            raise argparse.ArgumentTypeError(f"{text!r} reaches back before the year 1") from None
    try:
        moment = parse_time(text.strip())
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; or an age like 15m or 2h") from None
    if moment > now:  # no event was enqueued after it: every range would be empty, and "no loss" a false answer
        raise argparse.ArgumentTypeError(f"{text!r} is in the future")
    return moment


def run(args: argparse.Namespace) -> int:
    from shared import bootstrap

    audit = bootstrap.audit_service()
    if audit is None:
        raise ConfigurationError("set EventHubConnection (a connection string) or "
                                 "EventHubConnection__fullyQualifiedNamespace (identity) to audit the ingest hub")
    ingest = bootstrap.settings().ingest
    if args.since is not None and ingest.audit_consumer_group.lower() == ingest.consumer_group.lower():
        raise ConfigurationError(
            f"--since reads one event per partition through SLUICE_INGEST_AUDIT_CONSUMER_GROUP, which is "
            f"{ingest.audit_consumer_group!r}, ingest's own consumer group: the host's receivers own its partitions "
            "and would refuse the reader; set another group ($Default exists on every hub) or use --from-sequence")
    try:
        report = audit.audit(since=args.since, from_sequence=args.from_sequence)
    finally:
        bootstrap.reset()
    print(f"{'partition':>9} {'from':>12} {'to':>12} {'audited':>10} {'missing':>10}")
    for p in report.partitions:
        print(f"{p.partition:>9} {p.first:>12} {p.last:>12} {p.audited:>10} {p.missing:>10}")
    for p in report.partitions:
        for first, last, name in p.letters:
            print(f"dead-lettered batch: partition {p.partition} sequence {first}..{last} ({name}; no ledger run: "
                  f"the store was down)")
        for start, end in p.gaps[:SHOWN_GAPS]:
            print(f"gap: partition {p.partition} sequence {start}" + (f"..{end}" if end != start else ""))
        if len(p.gaps) > SHOWN_GAPS:
            print(f"gap: partition {p.partition}: {len(p.gaps) - SHOWN_GAPS} more gaps")
    for p in report.partitions:
        if p.expired_below is not None:
            print(f"NOT AUDITED: partition {p.partition}: --since {args.since.isoformat()} is older than the oldest "
                  f"event the hub retains; sequence numbers below {p.expired_below} have expired from it, so which "
                  f"of them were enqueued since then cannot be told, and none was audited "
                  f"(`audit --from-sequence 0` audits the ledger from the start)")
    if report.missing:
        print(f"missing {report.missing}: sequence numbers neither stored nor dead-lettered")
    elif not report.whole:
        print("missing 0 in what was audited, but part of the range asked for could not be audited (above): "
              "no verdict on the zero-loss SLO")
    elif not any(p.audited for p in report.partitions):
        # nothing checkpointed since the start asked for (a quiet hub, or a start just now): no evidence either way
        print("missing 0: nothing was checkpointed in the range asked for, so nothing was audited "
              "(no events, or none handed to ingest yet)")
    else:
        print(f"missing 0 of {sum(p.audited for p in report.partitions)} audited: the zero-loss SLO holds")
    return 0 if report.whole and not report.missing else 1
