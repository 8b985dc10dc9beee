"""``rebuild redis [--since T] [--devices ...] [--max-rps N]``: rebuild the Redis projection from the Cassandra log.

Every device's latest state, its critical list and the fleet-wide critical
stream are written into a new key generation, then readers switch to it at
once (``shared.services.rebuild``, ``docs/operations.md``). Run it again after a
kill: it resumes from its saved position (``--restart`` starts over). The change
feed keeps running meanwhile. Progress goes to stderr as one line; the figures
(duration, events per second) are printed and logged as one JSON line. Exit
status 0: done; 1: the new generation is live but deleting the one it replaced
failed (the next rebuild deletes it), or a ``--devices`` id is not a device of
the log (named, not counted as rebuilt); 2: the rebuild failed (run it again).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

from shared.domain.times import to_ms
from shared.ports.cache import SINCE_ALL
from sluice.arguments import device_id, past_time, positive_float, positive_int

if TYPE_CHECKING:
    from shared.services.rebuild import RebuildReport


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("rebuild", help="rebuild a projection (Redis) from the Cassandra event log")
    parser.add_argument("target", choices=["redis"], help="the projection to rebuild")
    parser.add_argument("--since", type=past_time, help="critical lists from this time only (default: all)")
    parser.add_argument("--devices", nargs="+", type=device_id, metavar="ID",
                        help="only these devices, in the live generation")
    parser.add_argument("--max-rps", type=positive_float,
                        help="at most this many Cassandra rows read per second (a finite number above 0)")
    parser.add_argument("--page-size", type=positive_int,
                        help="devices per page (one saved position each; default 200; not with --devices)")
    parser.add_argument("--restart", action="store_true",
                        help="start a new generation instead of resuming (not with --devices)")
    parser.add_argument("--no-progress", action="store_true", help="no progress line")
    parser.set_defaults(func=run)


class ProgressLine:
    """One self-overwriting stderr line, at most every ``interval`` seconds."""

    def __init__(self, enabled: bool, interval: float = 0.5) -> None:
        self._enabled = enabled
        self._interval = interval
        self._last = 0.0

    def __call__(self, report: RebuildReport, fraction: float) -> None:
        now = time.monotonic()
        if not self._enabled or now - self._last < self._interval:
            return
        self._last = now
        print(f"\rrebuild redis: {fraction:6.1%}  {report.devices} devices  {report.events} events  "
              f"{report.events_per_second:,.0f} events/s", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self._enabled and self._last:
            print(file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from shared import bootstrap
    from shared.exceptions import ConfigurationError
    from shared.services.rebuild import GenerationsLeft

    if args.devices:
        # a device rebuild rewrites those devices in the live generation: no pages, no saved position to resume
        ignored = [name for name, given in (("--page-size", args.page_size is not None),
                                            ("--restart", args.restart)) if given]
        if ignored:
            raise ConfigurationError(f"{' and '.join(ignored)} do nothing with --devices (it rewrites those devices "
                                     "in the live generation, with no pages or saved position): leave them out")
    service = bootstrap.rebuild_service(max_rps=args.max_rps, page_size=args.page_size or 200)
    since_ms = to_ms(args.since) if args.since else SINCE_ALL
    progress = ProgressLine(not args.no_progress)
    left: GenerationsLeft | None = None
    if args.devices:
        report = service.rebuild_devices(args.devices, since_ms=since_ms, progress=progress)
    else:
        try:
            report = service.rebuild(since_ms=since_ms, resume=not args.restart, progress=progress)
        except GenerationsLeft as exc:  # the switch succeeded: say so, and the deletion that did not
            report, left = exc.report, exc
    progress.done()
    where = f"generation {report.generation} (replaced {report.replaced})" if report.generation is not None \
        else "the live generation"
    print(f"rebuilt {report.devices} devices, {report.events} events into {where} in {report.seconds:.2f} s: "
          f"{report.events_per_second:,.0f} events/s")
    print(json.dumps({"event": "rebuild_finished", **report.fields()}, separators=(",", ":")))
    if report.not_found:
        print(f"warning: no such device in the log (device_latest), so not rebuilt: "
              f"{', '.join(map(repr, report.not_found))}; check the ids (keys Redis held for them were deleted)",
              file=sys.stderr)
    if left is not None:
        print(f"warning: {left}", file=sys.stderr)
    return 1 if left is not None or report.not_found else 0
