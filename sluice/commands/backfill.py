"""``backfill --start T --end T``: re-enrich every window overlapping ``[start, end)`` from the Cassandra event log.

Reprocessing in the Kappa style: the events in Cassandra are the log, the
PostgreSQL tables a view of it. Each window is recomputed in its own transaction
with today's reference data (so a backfill is how reference corrections and
events later than the late horizon reach older windows); re-running a backfill
changes nothing. The watermark is not moved. Progress is shown with a rich bar.

Refused before anything is read (exit 2, naming the value): an ``--end`` after
now plus the events' largest future skew and one window (no later window holds an
event: ``--end 9999-12-31`` would plan windows for millennia), and a range of more
windows than ``--max-windows`` (default: 366 days' worth; a start year typed 0026).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from shared.exceptions import PermanentError
from sluice.arguments import parse_time, positive_int

if TYPE_CHECKING:
    from shared.services.enrichment import WindowOutcome


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("backfill", help="re-enrich a time range from the Cassandra event log")
    parser.add_argument("--start", type=parse_time, required=True, help="start (inclusive), e.g. 2026-11-23T00:00:00Z")
    parser.add_argument("--end", type=parse_time, required=True,
                        help="end (exclusive), at most now plus the events' future skew and one window")
    parser.add_argument("--max-windows", type=positive_int, default=None,
                        help="refuse a range of more windows than this (default: 366 days' worth of "
                             "SLUICE_ENRICH_WINDOW_SECONDS windows)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs and CI)")
    parser.set_defaults(func=run)


def checked_range(start: datetime, end: datetime, max_windows: int | None, names: tuple[str, str]) -> int:
    """Refuse, before any connection and in the options' words (``names``: the start's and the end's), a range that
    is reversed or that no run could finish (:func:`shared.services.enrichment.check_range`); return the bound of
    windows it was held to (``max_windows``, or the default)."""
    from shared import bootstrap
    from shared.services.enrichment import check_range, default_max_windows

    start_name, end_name = names
    if end <= start:
        raise PermanentError(f"{end_name} {end.isoformat()} must be after {start_name} {start.isoformat()}")
    cfg = bootstrap.settings()
    width = cfg.enrichment.window_seconds
    bound = max_windows or default_max_windows(width)
    check_range(start, end, now=datetime.now(UTC), window_seconds=width,
                max_future_skew=timedelta(seconds=cfg.ingest.max_future_skew_seconds), max_windows=bound,
                names=(end_name, "--max-windows"))
    return bound


def run(args: argparse.Namespace) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from shared import bootstrap

    max_windows = checked_range(args.start, args.end, args.max_windows, ("--start", "--end"))
    service = bootstrap.enrichment_service()
    total = service.plan_count(args.start, args.end)
    events = unknown = 0
    with Progress(TextColumn("backfill"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[events]} events"),
                  TimeElapsedColumn(), TimeRemainingColumn(), disable=args.no_progress) as progress:
        task = progress.add_task("windows", total=total, events=0)

        def advance(outcome: WindowOutcome) -> None:
            nonlocal events, unknown
            events += outcome.events
            unknown += outcome.unknown_device_events
            progress.update(task, advance=1, events=events)

        outcomes = service.backfill(args.start, args.end, on_window=advance, max_windows=max_windows)
    print(f"backfilled {len(outcomes)} windows from {args.start.isoformat()} to {args.end.isoformat()}: "
          f"{events} events ({unknown} of unknown devices)")
    return 0
