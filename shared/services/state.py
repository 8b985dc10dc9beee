"""A device's state at a time T: its latest event at or before T, from ``events_by_device``.

What an audit asks ("what did we know about this device at 09:30?"). It reads
the dashboard's device-history reader (``shared.ports.dashboard.DeviceHistory``),
one ``(device, day)`` partition at a time from T's day backwards, and stops at
the first day holding an event at or before T. Two shortcuts bound the cost:

* the device's newest event (``device_latest``) answers at once when it is at or
  before T (and inside the look-back, else "not found": the same answer as the
  walk gives once the device reported after T), and a device with no event at all
  (no position in ``device_latest``) is "not found" without a walk; a device whose
  newest event a correction moved to another device has no latest state but still
  its other events, so it is walked like any device whose newest is after T, and
  so is a device whose newest event a correction moved to an earlier time (its
  copy in ``events_by_id`` is no longer at the position's event time: another
  event may lie between the two, and the copy's old row stays in the history);
* the walk covers at most ``lookback_days`` days; an event older than that is
  not found (``docs/api.md``);
* the walk reads one day, then 2, 4 and up to ``parallel`` days at once (an event
  of the day asked about costs one read; a quiet device's year, a few dozen round
  trips), and has a deadline (``deadline_seconds``): past it the answer is
  ``DependencyUnavailable`` (503), not a request held for minutes by a slow store.

Event time decides, whatever order the events arrived in; equal times fall back
to the larger event id, as ``StoredEvent.newer_than`` (and the latest state) do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.domain.rules import Criticality, MeasurementRule
from shared.domain.stored import StoredEvent
from shared.domain.times import day_of, to_ms, to_ms_ceil
from shared.exceptions import DependencyUnavailable
from shared.ports.dashboard import DeviceHistory
from shared.ports.event_reader import EventReader

DEFAULT_LOOKBACK_DAYS = 366
_TIES = 16  # rows read at the newest time of a day, to pick the winner of a tie


class StateService:
    def __init__(self, history: DeviceHistory, reader: EventReader, *,
                 lookback_days: int = DEFAULT_LOOKBACK_DAYS, deadline_seconds: float = 10.0, parallel: int = 8,
                 rules: Sequence[MeasurementRule] = (), monotonic: Callable[[], float] = time.monotonic) -> None:
        self._history = history
        self._critical = Criticality(rules)  # decides the flag of a row written without it, as the change feed does
        self._reader = reader
        self._lookback = lookback_days
        self._deadline = deadline_seconds
        self._monotonic = monotonic
        self._parallel = parallel
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="state")

    def at(self, device_id: str, at: datetime) -> dict[str, Any] | None:
        """The document of the device's latest event with event time at or before ``at``; ``None`` when none."""
        event = self._find(device_id, at)
        return self._critical.decided(event).to_document() if event is not None else None

    def _find(self, device_id: str, at: datetime) -> StoredEvent | None:
        give_up = self._monotonic() + self._deadline
        position = self._reader.newest(device_id)
        if position is None:
            return None
        # Near the start of the calendar (year 1) the look-back stops there: nothing is older.
        start = max(at, _FIRST + timedelta(days=self._lookback)) - timedelta(days=self._lookback)
        newest = position.event
        # A correction to an earlier time leaves the position at the time it was corrected from: that copy is not
        # the device's newest event, and another one may lie between the two times, so only the walk can tell.
        if (newest is not None and position.event_time is not None
                and newest.event_time_ms == to_ms(position.event_time) and newest.event_time_ms <= to_ms(at)):
            # The device's newest event is its latest at or before T, but only inside the look-back, as the walk
            # would find it: older, the answer is "none" whether or not the device reported after T since.
            return newest if newest.event_time_ms >= to_ms_ceil(start) else None
        day = day_of(at)
        days = min(self._lookback, (day - start.date()).days) + 1
        back, width = 0, 1
        while back < days:
            if self._monotonic() > give_up:
                raise DependencyUnavailable("cassandra", f"the state of {device_id!r} was not found within "
                                            f"{self._deadline:g}s ({back} days read back from {day}); Cassandra is "
                                            "slow to answer")
            chunk = range(back, min(back + width, days))
            pages = list(self._pool.map(lambda b: self._history.page(
                device_id, day - timedelta(days=b), start=start, end=at, after=None, limit=_TIES), chunk))
            found = next(((b, rows) for b, rows in zip(chunk, pages, strict=True) if rows), None)
            back, width = chunk.stop, min(2 * width, self._parallel)
            if found is not None:
                back, rows = found
                top_ms = rows[0].event_time_ms
                top = [row for row in rows if row.event_time_ms == top_ms]
                while len(rows) == _TIES and rows[-1].event_time_ms == top_ms:  # a full page ending in the tie
                    rows = self._history.page(device_id, day - timedelta(days=back), start=start, end=at,
                                              after=(top_ms, top[-1].event_id), limit=_TIES)
                    top += [row for row in rows if row.event_time_ms == top_ms]
                winner = top[0]
                for row in top[1:]:
                    if row.newer_than(winner):
                        winner = row
                return winner
        return None


_FIRST = datetime.min.replace(tzinfo=UTC)
