"""The change feed service: changed events -> Redis, then the position, page by page.

One run (one timer invocation)::

    load the saved position (or start at now - lookback)
    until the time budget is spent or the feed is caught up:
        read one page after the position                      <- each within the whole read timeout
        write its events to the sink (Redis), pipelined       <- raises: nothing saved, the next run replays
        save the position the page returned, compare-and-set  <- only after the sink acknowledged

Saving after the write means a crash replays at most the last page, which the
sink's idempotent, order-independent writes absorb; the position is never ahead
of the data. The save is compare-and-set on the version loaded: when a second
instance runs at the same time (the timer singleton can lapse), the one that
loses a save stops at once; its writes were the same idempotent writes, so the
cache is correct whoever wins, and a racing instance never moves the position
backwards. (The portable feed moves its own watermark back on purpose when ingest
noted rows stored late: each page of that re-read is saved like any other, so a
re-read longer than one run's budget continues in the next run.)

The budget decides whether another page is *started*; a page started just before
it ends is read (within the read timeout, ``SLUICE_CHANGEFEED_READ_TIMEOUT_SECONDS``),
written and saved like any other, so a run lasts at most the budget plus one page
(its read, its writes and its save; the settings keep the budget and the timeouts
well within host.json's ``functionTimeout``). Cutting the last read to the time
left would make it time out, be reported as Cassandra being down, and lose it.

A continuation the feed rejects (the table was dropped and recreated) restarts
from ``now - lookback`` with a warning: events older than that are not replayed,
and the changes read from there are counted as new.

Metrics count each change once. The portable feed re-reads its overlap window
every run (``FeedPage.reread``); those rows go to the sink again, but only the
ones this process has not counted yet (rows stored after an earlier run read
their range: ingest's latency) are counted and give a delay point
(``_CountedEvents``). Rows of that window read before this process started, or
found by a delay note's re-read further back, are taken as counted. A page whose
position could not be saved is read again by the next run, by either feed: the
changes this process counted of it are remembered until a save succeeds, and
not counted again (a failed write is counted when a later run writes it).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from shared.domain.rules import Criticality, MeasurementRule
from shared.domain.stored import StoredEvent
from shared.ports.cache import ChangeSink, LatestFound, LatestStates
from shared.ports.feed import ChangeFeed, ContinuationRejected, FeedStateStore
from shared.ports.metrics import NO_METRICS, Metrics

logger = logging.getLogger(__name__)


def apply_changes(sink: ChangeSink, events: Sequence[StoredEvent], latest: LatestStates | None,
                  decided: Callable[[Sequence[StoredEvent]], list[StoredEvent]]) -> None:
    """``events`` into the sink; a device whose latest state the cache had lost gets the newer of the store's
    latest state and its newest event here (the event may be older than one the store holds: a late event after
    the key expired must not take its place). A device the store has no state for although it has a position (its
    newest event moved to another device by a correction) gets its newest event here only if that is newer than
    the position: an older one loses to the position in the store too, which serves no state (``LatestFound``).
    Without ``latest`` the event alone is put."""
    missing = sink.apply(events)
    if not missing:
        return
    wanted = set(missing)
    newest: dict[str, StoredEvent] = {}
    for event in events:
        current = newest.get(event.device_id)
        if event.device_id in wanted and (current is None or event.supersedes(current)):
            newest[event.device_id] = event
    found = latest.latest_found(missing) if latest is not None else LatestFound([])
    page = [event for event in newest.values() if not found.below_floor(event)]
    sink.put_latest([*decided(found.states), *page])


class _CountedEvents:
    """Which events of the feed's re-read window this process has counted, so the metrics count each change once.

    A key per event (a hash of its id and enqueued time) is kept while a later run
    may re-read it: from the newest enqueued time seen minus the window's width on,
    about the overlap's worth of events. Complete only from where this process
    started reading (``since``): an event before that in a re-read window was read,
    and counted, by an earlier run or process.
    """

    def __init__(self) -> None:
        self._keys: dict[int, set[int]] = {}  # enqueued second -> keys
        self.since: datetime | None = None

    def run_began(self, reread: tuple[datetime, datetime]) -> None:
        """A run's first page: forget what it will not re-read; on this process's first run, what its re-read
        window holds was counted by an earlier run or process, and everything after it is this process's to count
        (fixed now, not on the first page that has events: a quiet first run must not move it)."""
        self.forget_before(reread[0])
        if self.since is None:
            self.since = reread[1]

    def forget_before(self, start: datetime) -> None:
        """No run will re-read what was enqueued before ``start``: drop it."""
        floor = int(start.timestamp())
        for second in [second for second in self._keys if second < floor]:
            del self._keys[second]
        if self.since is not None and start > self.since:
            self.since = start

    def uncounted(self, events: Sequence[StoredEvent], reread: tuple[datetime, datetime]) -> list[StoredEvent]:
        """The events of a page not counted before, remembered as counted from now on."""
        start, until = reread
        if self.since is None:  # not begun (a caller that skipped run_began): this page's window is the start
            self.since = until
        fresh = []
        newest: datetime | None = None
        for event in events:
            enqueued = event.enqueued_time
            if enqueued is None:
                fresh.append(event)
                continue
            newest = enqueued if newest is None or enqueued > newest else newest
            if enqueued < self.since:
                continue
            keys = self._keys.setdefault(int(enqueued.timestamp()), set())
            key = hash((event.event_id.int, enqueued.timestamp()))
            if key not in keys:
                keys.add(key)
                fresh.append(event)
        if newest is not None:  # the watermark is past ``newest`` once saved: no run re-reads further back
            self.forget_before(newest - (until - start))
        return fresh


@dataclass(frozen=True, slots=True)
class FeedRunResult:
    """What one run did; ``stopped`` says why it ended."""

    pages: int = 0
    events: int = 0
    critical: int = 0
    saves: int = 0
    stopped: str = "caught_up"  # caught_up | budget | lost_race | restarted
    restarted: bool = False


class ChangeFeedService:
    """Copies the event store's changes into the cache (see the module docstring for the order)."""

    def __init__(self, feed: ChangeFeed, sink: ChangeSink, positions: FeedStateStore, *, feed_name: str,
                 rules: Sequence[MeasurementRule] = (), time_budget: float = 20.0, read_timeout: float = 10.0,
                 apply_chunk: int = 1000, clock: Callable[[], datetime] | None = None,
                 monotonic: Callable[[], float] = time.monotonic, metrics: Metrics = NO_METRICS,
                 latest: LatestStates | None = None) -> None:
        self._metrics = metrics
        self._latest = latest
        self._feed = feed
        self._sink = sink
        self._positions = positions
        self._name = feed_name
        self._critical = Criticality(rules)
        self._budget = time_budget
        self._read_timeout = read_timeout
        self._chunk = max(1, apply_chunk)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._monotonic = monotonic
        self._counted = _CountedEvents()
        # The changes counted of pages whose position failed to save (what the next run reads again), until a save
        # succeeds; empty on the ordinary path, so checking it costs one test per page of changes.
        self._unsaved: set[tuple[uuid.UUID, datetime | None]] = set()

    def _decided(self, events: Sequence[StoredEvent]) -> list[StoredEvent]:
        """Each event with ``critical`` decided (rows without the flag get the configured rules)."""
        return self._critical.all_decided(events)

    def run(self) -> FeedRunResult:
        """One invocation. Raises ``DependencyUnavailable`` when Cassandra or Redis fails (position kept)."""
        deadline = self._monotonic() + self._budget
        now = self._clock()
        saved = self._positions.load(self._name)
        if saved is None:
            position, version = self._feed.initial_position(now), 0
            logger.info("change feed %s: no saved position, starting at %s", self._name, position)
        else:
            position, version = self._feed.rewind(saved.position), saved.version
        stored = saved.position if saved is not None else None
        pages = events = critical = saves = 0
        restarted = False
        while True:
            # The budget decides only whether another page is started: each read gets its whole timeout, so the
            # last page of a run that spends its budget is read and saved like the others, instead of timing out
            # as if Cassandra were down (and being thrown away). A run ends within the budget plus one page.
            if self._monotonic() >= deadline:
                stopped = "budget"
                break
            try:
                page = self._feed.read_page(position, now=now, timeout=self._read_timeout)
            except ContinuationRejected as exc:
                if restarted:
                    raise
                restarted = True
                position = self._feed.initial_position(now)
                logger.warning("change feed %s: %s; restarting from the lookback start %s (events changed before "
                               "it are not replayed)", self._name, exc, position.start_time or position.watermark)
                continue
            pages += 1
            if page.reread is not None and pages == 1:
                self._counted.run_began(page.reread)
            if page.events:
                decided = self._decided(page.events)
                for start in range(0, len(decided), self._chunk):
                    apply_changes(self._sink, decided[start:start + self._chunk], self._latest, self._decided)
                events += len(decided)
                page_critical = sum(1 for event in decided if event.critical)
                critical += page_critical
                # Counted after the sink acknowledged them: a failed write is counted when a later run writes it.
                new = decided if page.reread is None else self._counted.uncounted(decided, page.reread)
                if self._unsaved:
                    new = [event for event in new if (event.event_id, event.enqueued_time) not in self._unsaved]
                if new:
                    self._metrics.changefeed_applied(new, sum(1 for event in new if event.critical))
            if stored is None or not stored.same_stored_state(page.position):
                try:
                    new_version = self._positions.save(self._name, page.position, version)
                except Exception:
                    # Written and counted, but the next run reads this page again from the old position.
                    self._unsaved.update((event.event_id, event.enqueued_time) for event in page.events)
                    raise
                self._unsaved.clear()
                if new_version is None:
                    logger.warning("change feed %s: another instance saved the position first (version %d); "
                                   "stopping this run", self._name, version)
                    stopped = "lost_race"
                    break
                version, stored, saves = new_version, page.position, saves + 1
            position = page.position
            if page.caught_up:
                stopped = "caught_up"
                break
        result = FeedRunResult(pages, events, critical, saves, stopped, restarted)
        logger.info("change feed %s: pages=%d events=%d critical=%d saves=%d stopped=%s restarted=%s",
                    self._name, pages, events, critical, saves, stopped, restarted)
        return result
