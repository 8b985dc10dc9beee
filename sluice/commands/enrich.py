"""``enrich``: run the enrichment once now, list unknown devices, show the watermark.

* ``enrich run [--now T]``: what the timer does (late windows, then every closed
  window after the watermark, at most ``SLUICE_ENRICH_MAX_WINDOWS_PER_RUN``);
  ``--until-done`` repeats while windows remain;
* ``enrich unknown-devices [--limit N]``: devices whose events were enriched
  without reference data (add them, then ``backfill`` their windows);
* ``enrich status``: watermark, late-scan position and ledger totals.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

from sluice.arguments import past_time, positive_int

# How far back from its time a run looks, with the largest late horizon, allowed lateness and window the settings
# allow (shared.settings.EnrichmentSettings): a --now closer than that to 0001-01-01 leaves nothing to look back to.
# (The initial lookback has no bound: the run refuses a time it cannot look back from, EnrichmentService._run.)
_LOOKBACK_BOUND = timedelta(days=30 + 7 + 1)


def run_time(text: str) -> datetime:
    """:func:`~sluice.arguments.past_time`, at least the largest look-back of a run after 0001-01-01."""
    moment = past_time(text)
    if moment - datetime.min.replace(tzinfo=UTC) < _LOOKBACK_BOUND:
        raise argparse.ArgumentTypeError(
            f"{text!r} is too early: a run looks back from it (late horizon, allowed lateness, a window: up to "
            f"{_LOOKBACK_BOUND.days} days), which would pass 0001-01-01")
    return moment


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("enrich", help="run the enrichment now, list unknown devices, show status")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run_parser = actions.add_parser("run", help="one enrichment run now (as the timer does)")
    run_parser.add_argument("--now", type=run_time,
                            help="pretend the time is T, not after now (RFC 3339; default: now)")
    run_parser.add_argument("--until-done", action="store_true", help="repeat while closed windows remain")
    run_parser.set_defaults(func=run)
    unknown = actions.add_parser("unknown-devices", help="devices enriched without reference data")
    unknown.add_argument("--limit", type=positive_int, default=None, help="at most this many devices")
    unknown.set_defaults(func=list_unknown)
    status_parser = actions.add_parser("status", help="watermark, late-scan position, ledger totals")
    status_parser.set_defaults(func=status)


def run(args: argparse.Namespace) -> int:
    from shared import bootstrap

    service = bootstrap.enrichment_service()
    while True:
        result = service.run(now=args.now)
        print(f"enriched {len(result.windows)} windows ({result.late_windows} late), {result.events} events; "
              f"watermark {result.watermark.isoformat() if result.watermark else '-'}"
              + ("; more pending" if result.more_pending else ""))
        if result.too_late_events:
            print(f"{result.too_late_events} events arrived after the late horizon: backfill their range")
        if not (args.until_done and result.more_pending and result.windows):
            return 0


def list_unknown(args: argparse.Namespace) -> int:
    from shared import bootstrap
    from shared.adapters.postgres.reports import unknown_devices

    with bootstrap.postgres_pool().connection() as conn:
        rows = unknown_devices(conn, limit=args.limit)
    if not rows:
        print("no unknown devices")
        return 0
    print(f"{'device_id':<32} {'events':>10} {'windows':>8}  {'first_seen':<25} {'last_seen':<25} now_known")
    for r in rows:
        print(f"{r.device_id:<32} {r.event_count:>10} {r.windows:>8}  {r.first_seen.isoformat():<25} "
              f"{r.last_seen.isoformat():<25} {'yes' if r.now_known else 'no'}")
    return 0


def status(args: argparse.Namespace) -> int:
    from shared import bootstrap
    from shared.adapters.postgres.reports import enrichment_status

    with bootstrap.postgres_pool().connection() as conn:
        values = enrichment_status(conn)
    for name, value in values.items():
        print(f"{name}: {value.isoformat() if hasattr(value, 'isoformat') else value}")
    return 0
