"""Re-derive every projection of an event-time range from the log: ``sluice replay --from T --to T``.

Redis: the range is read from the event log window by window (the enrichment's
``WindowReader``, every bucket and shard, page by page) and applied, a chunk at a
time as the pages arrive, through the change feed's
own sink, the idempotent merges (``shared.ports.cache.ChangeSink``), so a replay
leaves what the change feed would have left, and writes to the building
generation too while a rebuild runs. PostgreSQL: the windows are re-enriched by
``sluice backfill``'s path (``EnrichmentService.backfill``). Neither the change
feed's position nor the enrichment watermark moves.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from shared.domain.rules import Criticality, MeasurementRule
from shared.domain.stored import StoredEvent
from shared.ports.cache import ChangeSink, LatestStates
from shared.ports.enrichment import WindowReader
from shared.services.changefeed import apply_changes
from shared.services.enrichment import check_range, default_max_windows

if TYPE_CHECKING:
    from shared.services.enrichment import WindowOutcome

logger = logging.getLogger(__name__)


class Backfill(Protocol):
    def backfill(self, start: datetime, end: datetime, *, on_window: Callable[[WindowOutcome], None] | None = None,
                 max_windows: int | None = None) -> list[WindowOutcome]: ...


@dataclass(slots=True)
class ReplayReport:
    redis_events: int = 0
    windows: int = 0
    window_events: int = 0
    seconds: float = 0.0

    def fields(self) -> dict[str, object]:
        return {"redis_events": self.redis_events, "windows": self.windows, "window_events": self.window_events,
                "duration_seconds": round(self.seconds, 3)}


class ReplayService:
    def __init__(self, reader: WindowReader, sink: ChangeSink, rules: Sequence[MeasurementRule],
                 enrichment: Backfill | None, *, chunk: timedelta = timedelta(minutes=5),
                 apply_chunk: int = 1000, latest: LatestStates | None = None, window_seconds: int = 300,
                 max_future_skew: timedelta = timedelta(minutes=5),
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._reader = reader
        self._window_seconds = window_seconds  # the enrichment's: a range is bounded in its windows
        self._max_future_skew = max_future_skew
        self._clock = clock
        self._latest = latest
        self._sink = sink
        self._critical = Criticality(rules)
        self._enrichment = enrichment
        self._step = chunk
        self._apply_chunk = apply_chunk

    def _decided(self, events: Sequence[StoredEvent]) -> list[StoredEvent]:
        """Each event with ``critical`` decided (rows without the flag get the configured rules)."""
        return self._critical.all_decided(events)

    def _apply(self, events: list[StoredEvent], report: ReplayReport) -> None:
        apply_changes(self._sink, events, self._latest, self._decided)
        report.redis_events += len(events)

    def replay(self, start: datetime, end: datetime, *, redis: bool = True, postgres: bool = True,
               on_progress: Callable[[str, float], None] | None = None, max_windows: int | None = None
               ) -> ReplayReport:
        """Re-derive ``[start, end)``: Redis first, then the PostgreSQL windows. A range ending after any event can
        be, or of more than ``max_windows`` enrichment windows (default: 366 days' worth), is refused
        (``PermanentError``, :func:`~shared.services.enrichment.check_range`) before anything is read."""
        if end <= start:
            raise ValueError(f"replay end {end.isoformat()} is not after start {start.isoformat()}")
        max_windows = max_windows or default_max_windows(self._window_seconds)
        check_range(start, end, now=self._clock(), window_seconds=self._window_seconds,
                    max_future_skew=self._max_future_skew, max_windows=max_windows)
        started = time.monotonic()
        report = ReplayReport()
        if redis:
            moment = start
            while moment < end:
                upper = min(end, moment + self._step)
                # Applied as the pages arrive, a chunk at a time: the sink's writes do not depend on their order
                # (the newest event of a device wins), so nothing waits for the rest of the range.
                pending: list[StoredEvent] = []
                for page in self._reader.read_each(moment, upper):
                    pending.extend(self._decided(page))
                    while len(pending) >= self._apply_chunk:
                        self._apply(pending[:self._apply_chunk], report)
                        del pending[:self._apply_chunk]
                if pending:
                    self._apply(pending, report)
                moment = upper
                if on_progress is not None:
                    on_progress("redis", (moment - start) / (end - start))
        if postgres and self._enrichment is not None:
            def window(outcome: WindowOutcome) -> None:
                report.windows += 1
                report.window_events += outcome.events

            self._enrichment.backfill(start, end, on_window=window, max_windows=max_windows)
        report.seconds = time.monotonic() - started
        logger.info("replay finished %s", json.dumps({"event": "replay_finished", "from": start.isoformat(),
                                                      "to": end.isoformat(), **report.fields()}))
        return report
