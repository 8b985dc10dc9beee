"""Ports of the operations page: bounded reads of what the shared stores already hold.

Every read here is bounded by construction (a fixed number of partitions, a
``LIMIT``, a capped listing), so ``/api/status`` costs the same whatever the
fleet's size and however many pods answer it. Every adapter raises
``DependencyUnavailable`` when its store cannot answer.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

from shared.domain.stored import StoredEvent


@dataclass(frozen=True, slots=True)
class BucketFigures:
    """One arrival bucket: events stored in it (by Event Hubs enqueued time) and the sampled ingest delay.

    ``delays_ms`` are ``write time - enqueued time`` of at most a fixed sample of the bucket's rows, spread over
    the bucket (not only its first rows).
    """

    start: datetime
    events: int
    delays_ms: Sequence[float]


@dataclass(frozen=True, slots=True)
class BucketRead:
    """The arrival bucket starting at ``start``, only rows at or after ``since`` when given; ``sample``: also
    sample its ingest delays."""

    start: datetime
    since: datetime | None = None
    sample: bool = True


class ArrivalStats(Protocol):
    def buckets(self, reads: Sequence[BucketRead]) -> list[BucketFigures]:
        """Figures of each read, in order. Reads exactly each bucket's shards (a count, and a few sampled reads
        over parts of the bucket when asked, per shard), all at once."""

    @property
    def bucket_seconds(self) -> int: ...

    def delayed_since(self, start: datetime, end: datetime) -> datetime | None:
        """The oldest enqueued time of the batches ingest noted in ``[start, end)`` (its clock) as stored long after
        their enqueue (the delay log); None when it noted none."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where a stage stands: ``watermark`` (data covered up to), ``updated_at`` (when it last moved)."""

    watermark: datetime | None
    updated_at: datetime | None


class FeedPositionReader(Protocol):
    def change_feed(self) -> Position | None:
        """The change feed's saved position (``None`` before its first run)."""


class DeadLetterCounter(Protocol):
    def count_since(self, since: datetime, *, cap: int) -> tuple[int, bool]:
        """``(count, capped)``: dead letters written at or after ``since``, counting at most ``cap`` blobs."""


class CacheStats(Protocol):
    def hit_rate(self) -> float | None:
        """The cache's hit ratio (0 to 1) since its statistics were last reset; ``None`` before any read."""


class CriticalStream(Protocol):
    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` events of the fleet-wide critical stream, newest first, as event documents: each
        event once, as its current copy, leaving out events a correction made not critical."""


@dataclass(frozen=True, slots=True)
class LagCounts:
    """One reading of the Event Hubs lag: ``partitions``, events not yet processed per partition, and
    ``unreadable``, partition -> why the autoscaler cannot read its checkpoint. A partition is in one or the
    other, never both: where the autoscaler cannot read the checkpoint it counts nothing."""

    partitions: dict[str, int]
    unreadable: dict[str, str]

    @property
    def total(self) -> int:
        return sum(self.partitions.values())


class LagReader(Protocol):
    def lag(self) -> LagCounts | None:
        """The counts and the unreadable partitions, both from one reading; ``None`` when no reader is
        configured."""


@dataclass(frozen=True, slots=True)
class HistoryCursor:
    """A position in a device's history, newest first: the day partition, then the last row returned on it
    (``None``: start of that day's partition)."""

    day: date
    after: tuple[int, uuid.UUID] | None


class DeviceHistory(Protocol):
    def page(self, device_id: str, day: date, *, start: datetime, end: datetime,
             after: tuple[int, uuid.UUID] | None, limit: int) -> list[StoredEvent]:
        """At most ``limit`` events of one ``(device_id, day)`` partition with ``start <= event_time <= end``,
        newest first (event time descending, then event id ascending), strictly after ``after``
        (``(event time ms, event id)`` of the last row already returned)."""


class Reports(Protocol):
    def site_daily(self, *, site_id: str | None, day_from: date | None, day_to: date | None,
                   limit: int) -> list[dict[str, Any]]:
        """Rows of ``report_site_daily``, newest day first."""

    def device_health(self, *, site_id: str | None, health: str | None, limit: int) -> list[dict[str, Any]]:
        """Rows of ``report_device_health``, most recently seen first."""

    def enrichment(self) -> Position | None:
        """The enrichment watermark (``None`` before its first run)."""
