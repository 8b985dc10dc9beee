"""The enrichment service: closed event-time windows from Cassandra + reference data -> PostgreSQL.

One run (timer, ``python -m sluice enrich run``):

1. load the reference data once (PostgreSQL tables or Parquet in Blob storage), if
   steps 2 and 3 find any window to enrich (most runs find none);
2. **late events**: read ``events_by_arrival_bucket`` from the late-scan position
   (minus the allowed lateness, to catch rows ingest wrote after an earlier scan
   read their arrival time; further back, to the oldest enqueued time of any batch
   ingest noted as stored late since then, ``WindowReader.delayed_since``, within
   ``late_horizon``) up to now. An event whose window is already behind
   the watermark, that arrived within ``late_horizon`` of its window's end and
   has no enriched row (nor loses to one of its id with a later event time:
   its recompute could change nothing), makes its window be recomputed (reason
   ``late``); the run then warns of any such window its recompute left still
   missing an arrival (:meth:`EnrichmentService._check_settled`). The
   check is by event id, not by comparing an enqueued time with an enriched-at
   time: Event Hubs' and PostgreSQL's clocks differ, and an event enqueued before
   a window was enriched may reach Cassandra after it;
3. **scheduled**: every closed window from the watermark on, oldest first, at
   most ``max_windows_per_run``; each moves the watermark in its own transaction;
4. only after every late window is written, the late-scan position moves to the
   time the scan stopped (position after write: a failure rescans, idempotently).

Only windows with a ledger row count as enriched: windows before the first
watermark (``initial_lookback``) were never enriched, so they are not "late";
``backfill`` covers them. An enriched window keeps the width it was enriched
with: a late event finds it in the ledger by its event time, and the windows
planned after a change of ``window_seconds`` (scheduled, backfill: :meth:`plan`)
keep the enriched ones as they are and take the new width only in between.

A window is always recomputed from *all* its events, so each write replaces the
window's figures with the same or more complete ones; re-running one changes no
row. A failure stops the run with ``TransientError``: windows already committed
stay, the watermark stays at the last of them, and the next run resumes there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice, takewhile

from shared.domain.enrichment import (
    EnrichedWindow,
    ReferenceData,
    Window,
    plan_count,
    planned_windows,
    window_count,
    window_of,
)
from shared.domain.rules import MeasurementRule
from shared.exceptions import PermanentError
from shared.ports.enrichment import (
    Arrival,
    EnrichmentState,
    EnrichmentStore,
    Reason,
    ReferenceSource,
    WindowInput,
    WindowReader,
)
from shared.ports.metrics import NO_METRICS, Metrics
from shared.settings import EnrichmentSettings

logger = logging.getLogger(__name__)

DEFAULT_RANGE_DAYS = 366  # the widest backfill or replay taken without --max-windows, in days' worth of windows


def default_max_windows(window_seconds: int) -> int:
    """The most windows of ``window_seconds`` a backfill or replay covers unless told more: 366 days' worth."""
    return -(-DEFAULT_RANGE_DAYS * 86400 // window_seconds)


def check_range(start: datetime, end: datetime, *, now: datetime, window_seconds: int, max_future_skew: timedelta,
                max_windows: int, names: tuple[str, str] = ("end", "max_windows")) -> int:
    """Refuse (``PermanentError``) a range ``[start, end)`` no run could finish or that could hold nothing more;
    return how many windows of ``window_seconds`` it covers (by arithmetic: nothing is built).

    * ``end`` later than ``now`` plus ``max_future_skew`` (how far ahead of its enqueue ingest takes an event's
      timestamp) plus one window: the windows after that hold no event (``9999-12-31``, "from then on", would
      otherwise plan, read or walk windows for millennia);
    * more than ``max_windows`` windows (a start year typed 0026 for 2026): the message gives the count and the
      option that raises the bound (``names``: how the caller calls ``end`` and the bound).
    """
    end_name, bound_name = names
    width = timedelta(seconds=window_seconds)
    latest = now + max_future_skew + width
    if end > latest:
        raise PermanentError(
            f"{end_name} {end.isoformat()} is after now ({now.isoformat()}) plus the events' largest future skew "
            f"({max_future_skew.total_seconds():g} s, SLUICE_INGEST_MAX_FUTURE_SKEW_SECONDS) and one window "
            f"({window_seconds} s): no window after {latest.isoformat()} can hold an event")
    count = window_count(start, end, window_seconds)
    if count > max_windows:
        raise PermanentError(
            f"[{start.isoformat()}, {end.isoformat()}) covers {count:,} windows of {window_seconds} s, more than "
            f"{bound_name} {max_windows:,} (default: {DEFAULT_RANGE_DAYS} days' worth); check the range, or set "
            f"{bound_name} to {count} or more to run it")
    return count


@dataclass(frozen=True, slots=True)
class WindowOutcome:
    window: Window
    reason: Reason
    events: int
    devices: int
    unknown_devices: int
    unknown_device_events: int


@dataclass(slots=True)
class EnrichmentRunResult:
    """What one run did."""

    windows: list[WindowOutcome] = field(default_factory=list)
    late_windows: int = 0
    too_late_events: int = 0
    watermark: datetime | None = None
    late_scan_until: datetime | None = None
    delayed_scan_from: datetime | None = None  # where the late scan started, when ingest noted delayed batches
    unsettled_windows: int = 0  # windows recomputed as late whose late arrivals the recompute could not account for
    more_pending: bool = False

    @property
    def events(self) -> int:
        return sum(w.events for w in self.windows)


class EnrichmentService:
    def __init__(
        self,
        reader: WindowReader,
        reference: ReferenceSource,
        store: EnrichmentStore,
        settings: EnrichmentSettings,
        rules: Sequence[MeasurementRule] = (),
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: Metrics = NO_METRICS,
        max_future_skew: timedelta = timedelta(minutes=5),
    ) -> None:
        self._metrics = metrics
        self._max_future_skew = max_future_skew  # SLUICE_INGEST_MAX_FUTURE_SKEW_SECONDS: no event is later than that
        self._reader = reader
        self._reference = reference
        self._store = store
        self._settings = settings
        self._rules = tuple(rules)
        self._clock = clock

    @property
    def window_seconds(self) -> int:
        return self._settings.window_seconds

    def run(self, now: datetime | None = None) -> EnrichmentRunResult:
        """Enrich late and closed windows (see the module docstring); raises ``TransientError`` on failure.

        The run's figures (windows enriched, recomputed, failed; duration; watermark) go to the metrics port
        once, at the end, whether it succeeded or not.
        """
        began = time.perf_counter()
        result = EnrichmentRunResult()
        try:
            result = self._run(now, result)
        except Exception:
            self._record(result, began, failed=1)
            raise
        self._record(result, began, failed=0)
        return result

    def _record(self, result: EnrichmentRunResult, began: float, *, failed: int) -> None:
        recomputed = sum(1 for w in result.windows if w.reason != "scheduled")
        self._metrics.enrich_run(enriched=len(result.windows) - recomputed, recomputed=recomputed, failed=failed,
                                 seconds=time.perf_counter() - began, watermark=result.watermark)

    def _run(self, now: datetime | None, result: EnrichmentRunResult) -> EnrichmentRunResult:
        cfg = self._settings
        now = now or self._clock()
        lateness = timedelta(seconds=cfg.allowed_lateness_seconds)
        try:  # what the run looks back to from now: the first watermark, and the late scan's horizon
            initial = window_of(now - timedelta(seconds=cfg.initial_lookback_seconds), cfg.window_seconds).start
            now - timedelta(seconds=cfg.late_horizon_seconds) - lateness
        except OverflowError:
            raise PermanentError(
                f"now {now.isoformat()} is too early: the enrichment looks back from it "
                f"{cfg.initial_lookback_seconds} s (SLUICE_ENRICH_INITIAL_LOOKBACK_SECONDS) and "
                f"{cfg.late_horizon_seconds + cfg.allowed_lateness_seconds} s (the late horizon and the allowed "
                "lateness), which would pass 0001-01-01") from None
        state = self._store.load_state(initial)
        result.watermark, result.late_scan_until = state.watermark, state.late_scan_until

        late, complete, late_arrivals = self._late_windows(state, now, result)
        # The windows from the watermark on: of the current width, but never overlapping an enriched one (after a
        # change of SLUICE_ENRICH_WINDOW_SECONDS, the first one runs from the watermark to the next boundary).
        # Most runs find none closed: the ledger is read only when the first one is.
        first = Window(state.watermark, window_of(state.watermark, cfg.window_seconds).end)
        # (Closed windows are a prefix of the plan; one more than the budget tells whether more are pending.)
        closed = list(islice(takewhile(lambda w: w.closed(now, lateness), self.plan(state.watermark, now)),
                             cfg.max_windows_per_run + 1)) if first.closed(now, lateness) else []
        scheduled = closed[:cfg.max_windows_per_run]
        # Most runs find no window to enrich (a run a minute, windows of five): the reference data, a read of
        # every device, is loaded only for a run that has one, and once for all of them.
        reference = self._reference.load() if late or scheduled else ReferenceData.of([], [])

        # each as it is written, as the scheduled ones: a failure after some leaves their outcomes counted
        self._enrich_all(late, reference, "late", advance_watermark=False, on_window=result.windows.append)
        result.late_windows = len(late)
        self._check_settled(late_arrivals, result)

        def advanced(outcome: WindowOutcome) -> None:
            result.windows.append(outcome)
            result.watermark = outcome.window.end

        self._enrich_all(scheduled, reference, "scheduled", advance_watermark=True, on_window=advanced)
        result.more_pending = len(closed) > len(scheduled) or not complete

        if complete and now > state.late_scan_until:
            self._store.save_late_scan(now)
            result.late_scan_until = now
        logger.info(
            "enrichment run: %d windows (%d late), %d events, watermark %s, late scan until %s%s",
            len(result.windows), result.late_windows, result.events, result.watermark, result.late_scan_until,
            ", more pending" if result.more_pending else "",
        )
        return result

    def _late_windows(
        self, state: EnrichmentState, now: datetime, result: EnrichmentRunResult
    ) -> tuple[list[Window], bool, list[Arrival]]:
        """Enriched windows some of whose events have no enriched row in them yet, or that an event moved out of
        since; whether the list is complete; and the arrivals that made the listed windows late."""
        cfg = self._settings
        horizon = timedelta(seconds=cfg.late_horizon_seconds)
        scan_from = state.late_scan_until - timedelta(seconds=cfg.allowed_lateness_seconds)
        # Ingest notes a batch it stored long after its enqueue (DelayLog): scan back to its oldest event, within the
        # horizon, or an event stored later than the allowed lateness after its enqueue would fall behind every scan.
        delayed = self._reader.delayed_since(scan_from, now)
        # Never later than the scan would start anyway: after an outage longer than the horizon, the horizon is
        # after scan_from, and starting there would skip the arrivals in between for good.
        if delayed is not None and delayed < scan_from and now - horizon < scan_from:
            scan_from = max(delayed, now - horizon)
            result.delayed_scan_from = scan_from
            logger.info("ingest stored batches late (oldest enqueued %s): the late scan starts there", delayed)
        # A window ending at or before the watermark holds only events before it: the reader drops the rest. Each
        # arrival is looked up in the ledger on its own (both rows of an id re-sent with another timestamp name
        # their window), by its event time: its window is the one it was enriched in, whatever width that was.
        arrivals = list(self._reader.arrivals(scan_from, now, event_time_before=state.watermark))
        stale: dict[Window, list[Arrival]] = {}
        for arrival, window in self._store.stale_windows(arrivals) if arrivals else []:
            if arrival.enqueued_at - window.end > horizon:
                result.too_late_events += 1
            else:
                stale.setdefault(window, []).append(arrival)
        late = set(stale)
        if result.too_late_events:
            logger.warning("%d events arrived more than %s after their window; backfill their range to include them",
                           result.too_late_events, horizon)
        if late:
            logger.info("late events: %d enriched windows miss events that arrived since", len(late))
        moved = set(self._store.windows_to_recompute()) - late
        if moved:
            logger.info("%d enriched windows count events that moved to another window since", len(moved))
        windows = sorted(late | moved)[:cfg.max_windows_per_run]
        return windows, len(late | moved) == len(windows), [a for w in windows for a in stale.get(w, ())]

    def _check_settled(self, arrivals: list[Arrival], result: EnrichmentRunResult) -> None:
        """Warn about windows just recomputed as late whose late arrivals they still do not account for.

        A recompute settles every arrival the late scan flags (a late event, an id re-sent with a later timestamp
        or a later copy), unless Cassandra no longer holds that arrival's copy: an older copy of an id redelivered
        after a correction re-sent with the same timestamp overwrites it in ``events_by_time_bucket``, while the
        correction's arrival row stays. Each scan covering such an arrival recomputes its window again, for
        nothing; enough of them (``max_windows_per_run``) would hold up every later late window. One more probe
        of the arrivals of this run's late windows (few), after their recompute, names them.
        """
        recomputed = {w.window for w in result.windows if w.reason == "late"}
        unsettled = sorted({w for _, w in self._store.stale_windows(arrivals) if w in recomputed}) if arrivals else []
        result.unsettled_windows = len(unsettled)
        if unsettled:
            logger.warning("%d windows recomputed as late still miss arrivals the recompute could not account for "
                           "(Cassandra holds another copy of their ids: an older copy redelivered?); each scan "
                           "covering those arrivals recomputes them again: %s", len(unsettled),
                           ", ".join(map(str, unsettled)))

    def enrich(self, window: Window, reference: ReferenceData, reason: Reason, *, advance_watermark: bool
               ) -> WindowOutcome:
        """Read, compute and write one window (one store transaction, the rows streamed as they are read)."""
        source = WindowInput(window, lambda: self._reader.read_each(window.start, window.end), reference,
                             self._rules)
        return _outcome(self._store.write_window(source, reason, advance_watermark=advance_watermark), reason)

    def _enrich_all(self, windows: Iterable[Window], reference: ReferenceData, reason: Reason, *,
                    advance_watermark: bool, on_window: Callable[[WindowOutcome], None] | None = None
                    ) -> list[WindowOutcome]:
        """Write ``windows`` in order, one transaction each; the first failure stops the loop and propagates.

        Each window's rows go to PostgreSQL as its pages arrive from Cassandra (the
        reader keeps the next pages in flight meanwhile), so the two overlap within
        a window, and only the figures' inputs are held, not the window.
        """
        outcomes: list[WindowOutcome] = []
        for window in windows:
            outcome = self.enrich(window, reference, reason, advance_watermark=advance_watermark)
            outcomes.append(outcome)
            if on_window is not None:
                on_window(outcome)
        return outcomes

    def check_range(self, start: datetime, end: datetime, *, max_windows: int | None = None,
                    names: tuple[str, str] = ("end", "max_windows")) -> int:
        """:func:`check_range` with this service's clock, window width and future skew; ``max_windows`` defaults to
        :func:`default_max_windows`."""
        width = self._settings.window_seconds
        return check_range(start, end, now=self._clock(), window_seconds=width, max_future_skew=self._max_future_skew,
                           max_windows=max_windows or default_max_windows(width), names=names)

    def backfill(self, start: datetime, end: datetime, *, on_window: Callable[[WindowOutcome], None] | None = None,
                 max_windows: int | None = None) -> list[WindowOutcome]:
        """Re-enrich every window overlapping ``[start, end)`` from the Cassandra event log.

        The watermark is not moved (windows past it are enriched again, harmlessly,
        when they close); reference data is loaded once, now. A range ending after
        any event can be, or of more than ``max_windows`` windows, is refused
        (``PermanentError``, :meth:`check_range`) before anything is read.
        """
        if end <= start:
            raise ValueError(f"backfill end {end.isoformat()} is not after start {start.isoformat()}")
        self.check_range(start, end, max_windows=max_windows)
        reference = self._reference.load()
        return self._enrich_all(self.plan(start, end), reference, "backfill", advance_watermark=False,
                                on_window=on_window)

    def plan(self, start: datetime, end: datetime) -> Iterator[Window]:
        """The windows covering ``[start, end)``, one at a time: the enriched ones as the ledger holds them (whatever
        width they were enriched with), windows of the current width in between
        (:func:`~shared.domain.enrichment.planned_windows`)."""
        width = self._settings.window_seconds
        enriched = self._store.enriched_windows(window_of(start, width).start, end)
        return planned_windows(start, end, width, enriched)

    def plan_count(self, start: datetime, end: datetime) -> int:
        """How many windows :meth:`plan` gives for ``[start, end)``, counted without building them."""
        width = self._settings.window_seconds
        return plan_count(start, end, width, self._store.enriched_windows(window_of(start, width).start, end))


def _outcome(enriched: EnrichedWindow, reason: Reason) -> WindowOutcome:
    unknown = enriched.unknown_devices
    if unknown:
        logger.warning("window %s: %d events of %d devices without reference data (e.g. %s)",
                       enriched.window, enriched.unknown_device_events, len(unknown), ", ".join(unknown[:5]))
    return WindowOutcome(enriched.window, reason, enriched.events, len(enriched.devices), len(unknown),
                         enriched.unknown_device_events)
