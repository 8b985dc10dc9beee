"""The pipeline's status for the operations page, computed from the shared stores.

Nothing here is per-process state that another pod would not see: counts come
from ``events_by_arrival_bucket``, positions from ``feed_state`` and
``enrichment_state``, dead letters from Blob storage, the critical feed from the
Redis stream. So any pod gives the same answer.

Every read is bounded: the last ``SERIES_MINUTES`` of arrival buckets (each a
fixed number of shard partitions, counted and sampled, never scanned, all sent
at once), two day
prefixes of dead-letter blobs at most ``DEAD_LETTER_CAP`` long, single rows for
the positions. A bucket closed for longer than its grace (``CLOSED_GRACE``, at
least as long as ingest waits before it notes a batch as stored late) is read once
and kept; only the open ones are read on each call. A bucket kept is read again
once ingest notes a batch stored late (the delay log, ``ArrivalStats.delayed_since``)
whose oldest event is at or before the bucket's end: working off a backlog, ingest
writes into buckets (keyed by Event Hubs enqueued time) that closed minutes ago, and
every such late write is noted, since it comes more than the grace after its enqueue. Each
section fails on its own: a down store, a read that does not answer in time or an
unexpected error makes its section ``{"error": ..., "dependency": ...}``, the rest
is still answered. A section whose previous read is still running (a store that
accepts connections but does not answer) is not started again: it answers with that
error until the read ends, so a hung store holds one thread, never the others'.
Concurrent requests share one computation.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.domain.times import floor, rfc3339
from shared.exceptions import DependencyUnavailable
from shared.ports.dashboard import (
    ArrivalStats,
    BucketFigures,
    BucketRead,
    CacheStats,
    CriticalStream,
    DeadLetterCounter,
    FeedPositionReader,
    LagCounts,
    LagReader,
    Position,
    Reports,
)

logger = logging.getLogger(__name__)

SERIES_MINUTES = 15
DEAD_LETTER_CAP = 10_000
CLOSED_GRACE = timedelta(seconds=90)
# How far back each computation looks for delay notes before the last one's time: the notes are stamped by ingest's
# clock, and a note is written just after its batch's events (position after write).
NOTE_OVERLAP = timedelta(seconds=60)


def p99(values: list[float]) -> float | None:
    """The 99th percentile (nearest rank), ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)], 1)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else rfc3339(moment)


def _age(now: datetime, moment: datetime | None) -> float | None:
    """Seconds from ``moment`` to ``now``, never below 0: a position saved while the page was being read (after
    ``now`` was taken), or stamped by a clock a little ahead, is 0 s old, not -0.1 s."""
    return None if moment is None else max(0.0, round((now - moment).total_seconds(), 1))


# The store each section reads, named in its body when it gives no answer in time (docs/api.md)
_SECTION_DEPENDENCY = {"throughput": "cassandra", "change_feed": "cassandra", "enrichment": "postgres",
                       "dead_letters": "storage", "cache": "redis", "dependencies": "all", "lag": "eventhubs"}


class StatusService:
    """``status()`` for ``/api/status``, ``critical(limit)`` for ``/api/critical``."""

    def __init__(self, arrivals: ArrivalStats, feed: FeedPositionReader, reports: Reports,
                 dead_letters: DeadLetterCounter, cache: CacheStats, critical: CriticalStream, lag: LagReader,
                 health: Callable[[], tuple[bool, dict[str, Any]]], *, cache_seconds: float = 1.0,
                 section_timeout: float = 3.0, closed_grace: timedelta = CLOSED_GRACE,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._arrivals = arrivals
        self._feed = feed
        self._reports = reports
        self._dead_letters = dead_letters
        self._cache = cache
        self._critical = critical
        self._lag = lag
        self._health = health
        self._cache_seconds = cache_seconds
        self._section_timeout = section_timeout
        self._clock = clock
        self._monotonic = monotonic
        self._closed: dict[datetime, BucketFigures] = {}
        self._closed_grace = closed_grace
        self._notes_read_until: datetime | None = None  # the end of the last read of the delay notes
        self._lock = threading.Lock()
        self._computing = threading.Lock()  # one computation at a time; concurrent callers take its result
        self._last: tuple[float, dict[str, Any]] | None = None
        self._running: dict[str, tuple[float, Future[dict[str, Any]]]] = {}  # a section's read still in flight
        self._pool = ThreadPoolExecutor(max_workers=len(_SECTION_DEPENDENCY), thread_name_prefix="status")

    # -- /api/critical -----------------------------------------------------------------
    def critical(self, limit: int) -> dict[str, Any]:
        return {"events": self._critical.recent(limit)}

    # -- /api/status -------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The status document (``docs/api.md``); computed at most once per ``cache_seconds`` per process."""
        with self._computing:
            with self._lock:
                if self._last is not None and self._monotonic() - self._last[0] < self._cache_seconds:
                    return self._last[1]
            body = self._compute()
            with self._lock:
                self._last = (self._monotonic(), body)
            return body

    def _compute(self) -> dict[str, Any]:
        now = self._clock()
        sections = {
            "throughput": lambda: self._throughput(now),
            "change_feed": lambda: self._position(now, self._feed.change_feed()),
            "enrichment": lambda: self._position(now, self._reports.enrichment()),
            "dead_letters": lambda: self._dead_letter_section(now),
            "cache": lambda: {"hit_rate": self._cache.hit_rate()},
            "dependencies": self._dependencies,
            "lag": self._lag_section,
        }
        started = self._monotonic()
        futures: dict[str, Future[dict[str, Any]]] = {}
        body: dict[str, Any] = {"generated_at": _iso(now)}
        for name, work in sections.items():
            previous = self._running.get(name)
            if previous is not None and not previous[1].done():
                body[name] = {"error": f"the previous read has given no answer for {started - previous[0]:.0f}s",
                              "dependency": _SECTION_DEPENDENCY[name]}
                continue
            futures[name] = self._pool.submit(work)
            self._running[name] = (started, futures[name])
        deadline = started + self._section_timeout
        for name, future in futures.items():
            try:
                body[name] = future.result(timeout=max(0.0, deadline - self._monotonic()))
            except FutureTimeout:
                logger.warning("status section %s gave no answer within %.1fs", name, self._section_timeout)
                body[name] = {"error": f"no answer within {self._section_timeout:g}s",
                              "dependency": _SECTION_DEPENDENCY[name]}
            except DependencyUnavailable as exc:
                logger.warning("status section %s failed: %s", name, exc)
                body[name] = {"error": str(exc), "dependency": exc.dependency}
            except Exception as exc:  # a bug or an unforeseen store error: this section says so, the others answer
                logger.exception("status section %s failed unexpectedly", name)
                body[name] = {"error": f"failed unexpectedly: {type(exc).__name__}",
                              "dependency": _SECTION_DEPENDENCY[name]}
        return {key: body[key] for key in ("generated_at", *sections)}

    def _lag_section(self) -> dict[str, Any]:
        lag = self._lag.lag()  # the counts and the unreadable partitions of one reading, never of two
        if lag is None:
            return {"status": "not_configured", "partitions": None, "total": None}
        if lag.unreadable:  # KEDA's scaler fails on these checkpoints: no count of theirs is a lag
            return {"status": "checkpoint_unreadable", "partitions": lag.partitions, "total": lag.total,
                    "unreadable": lag.unreadable}
        return {"status": "ok", "partitions": lag.partitions, "total": lag.total}

    def _dependencies(self) -> dict[str, Any]:
        healthy, health = self._health()
        return {"status": "up" if healthy else "down", **health["dependencies"]}

    def _position(self, now: datetime, position: Position | None) -> dict[str, Any]:
        if position is None:
            return {"watermark": None, "updated_at": None, "staleness_seconds": None, "freshness_seconds": None}
        return {"watermark": _iso(position.watermark), "updated_at": _iso(position.updated_at),
                "staleness_seconds": _age(now, position.updated_at),
                "freshness_seconds": _age(now, position.watermark)}

    def _dead_letter_section(self, now: datetime) -> dict[str, Any]:
        count, capped = self._dead_letters.count_since(now - timedelta(hours=1), cap=DEAD_LETTER_CAP)
        return {"last_hour": count, "capped": capped}

    def _throughput(self, now: datetime) -> dict[str, Any]:
        seconds = self._arrivals.bucket_seconds
        width = timedelta(seconds=seconds)
        current = floor(now, seconds)
        count = max(1, (SERIES_MINUTES * 60) // seconds)
        starts = [current - width * i for i in range(count, -1, -1)]
        with self._lock:
            read_until = self._notes_read_until
        # Batches ingest stored late since the last computation: the kept buckets they may have written into
        # (from the one holding their oldest event on) are read again. Before the first, nothing is kept.
        noted = self._arrivals.delayed_since(read_until - NOTE_OVERLAP, now) if read_until is not None else None
        with self._lock:
            if noted is not None:
                for start in [start for start in self._closed if start + width > noted]:
                    del self._closed[start]
            self._notes_read_until = now
            kept = {start: self._closed[start] for start in starts if start in self._closed}
        cuts = [now - timedelta(seconds=60), now - timedelta(seconds=300)]
        reads = [BucketRead(start) for start in starts if start not in kept]
        reads += [BucketRead(floor(cut, seconds), cut, sample=False) for cut in cuts]
        figures = self._arrivals.buckets(reads)  # one round trip for every open bucket and both cut buckets
        fresh = {f.start: f for f in figures[:len(reads) - len(cuts)]}
        with self._lock:
            for start, bucket in fresh.items():
                if start + width + self._closed_grace <= now:
                    self._closed[start] = bucket
            for old in [b for b in self._closed if b < starts[0]]:
                del self._closed[old]
        buckets = [kept.get(start) or fresh[start] for start in starts]

        def since(partial: BucketFigures) -> int:
            """The events of the cut bucket from the cut on, and of every bucket after it."""
            return partial.events + sum(b.events for b in buckets if b.start > partial.start)

        last_minute, last_5 = (since(partial) for partial in figures[-len(cuts):])
        recent = [d for b in buckets[-2:] for d in b.delays_ms]
        elapsed = {b.start: min(width, max(timedelta(seconds=1), now - b.start)).total_seconds() for b in buckets}
        return {
            "events_last_minute": last_minute,
            "events_last_5_minutes": last_5,
            "events_per_second": round(last_minute / 60, 2),
            "delay_p99_ms": p99(recent),
            "bucket_seconds": seconds,
            "series": [
                {
                    "start": _iso(b.start),
                    "events": b.events,
                    "events_per_second": round(b.events / elapsed[b.start], 2),
                    "delay_p99_ms": p99(list(b.delays_ms)),
                }
                for b in buckets
            ],
        }


class NoLagReader:
    """``LagReader`` for a deployment without one: the status says lag is not configured."""

    def lag(self) -> LagCounts | None:
        return None
