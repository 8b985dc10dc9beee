"""``replay --from T --to T``: re-derive Redis and the PostgreSQL windows of an event-time range from the log.

The change feed's position and the enrichment watermark stay where they are
(``shared.services.replay``). ``--only`` limits it to one projection.

Refused before anything is read (exit 2, naming the value): a ``--to`` after now
plus the events' largest future skew and one enrichment window (no later window
holds an event: ``--to 9999-12-31`` would walk the log for millennia), and a range
of more enrichment windows than ``--max-windows`` (default: 366 days' worth).
"""

from __future__ import annotations

import argparse
import json
import sys

from sluice.arguments import parse_time, positive_int


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("replay", help="re-derive every projection of a time range from the event log")
    parser.add_argument("--from", dest="start", type=parse_time, required=True, help="start (inclusive), event time")
    parser.add_argument("--to", dest="end", type=parse_time, required=True,
                        help="end (exclusive), event time, at most now plus the events' future skew and one window")
    parser.add_argument("--max-windows", type=positive_int, default=None,
                        help="refuse a range of more enrichment windows than this (default: 366 days' worth of "
                             "SLUICE_ENRICH_WINDOW_SECONDS windows)")
    parser.add_argument("--only", choices=["redis", "postgres"], help="one projection only")
    parser.add_argument("--no-progress", action="store_true", help="no progress line")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shared import bootstrap
    from sluice.commands.backfill import checked_range

    max_windows = checked_range(args.start, args.end, args.max_windows, ("--from", "--to"))
    redis, postgres = args.only in (None, "redis"), args.only in (None, "postgres")
    service = bootstrap.replay_service(postgres=postgres)

    def progress(what: str, fraction: float) -> None:
        if not args.no_progress:
            print(f"\rreplay {what}: {fraction:6.1%}", end="", file=sys.stderr, flush=True)

    report = service.replay(args.start, args.end, redis=redis, postgres=postgres, on_progress=progress,
                            max_windows=max_windows)
    if not args.no_progress:
        print(file=sys.stderr)
    print(f"replayed {args.start.isoformat()} to {args.end.isoformat()}: {report.redis_events} events to Redis, "
          f"{report.windows} windows ({report.window_events} events) to PostgreSQL in {report.seconds:.2f} s")
    print(json.dumps({"event": "replay_finished", **report.fields()}, separators=(",", ":")))
    return 0
