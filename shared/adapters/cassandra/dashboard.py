"""Cassandra reads of the operations page: arrival counts, the feed position and device history.

* ``CassandraArrivalStats``: one arrival bucket of ``events_by_arrival_bucket`` is
  exactly ``shards`` partitions; each gets a ``COUNT(*)`` and a few reads of
  ``enqueued_at`` and ``WRITETIME`` (the ingest delay), at most ``sample`` rows in
  all, sent together with ``execute_async``. Never a scan. The sample is spread
  over the bucket: a read with a ``LIMIT`` takes a partition's oldest rows
  (clustering order), so one read per shard would only ever see the first rows
  enqueued in a bucket, never those ingest stored late once it fell behind. Each
  shard's reads start at evenly spaced points of the bucket, staggered from one
  shard to the next (shards split the events by event id, so each is a random
  part of the bucket): the bucket's shards together sample ``shards * slices``
  evenly spaced windows of it.
* ``CassandraFeedPosition``: the change feed's row of ``feed_state``.
* ``CassandraDeviceHistory``: one ``(device_id, day)`` partition of
  ``events_by_device`` per call, newest first, resuming strictly after the last
  row returned (the clustering order is ``event_time DESC, event_id ASC``).

Statements are prepared on first use; every driver failure becomes
``DependencyUnavailable("cassandra", ...)``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import date, datetime

from cassandra.cluster import ResponseFuture, ResultSet, Session

from shared.adapters.cassandra.delays import DELAYED_SINCE, oldest_noted
from shared.adapters.cassandra.query import Queries, translated
from shared.adapters.cassandra.reader import EVENT_SELECT, stored_event
from shared.adapters.cassandra.rows import stored_time
from shared.domain.stored import StoredEvent
from shared.domain.times import to_ms, to_ms_ceil
from shared.ports.dashboard import BucketFigures, BucketRead, Position

logger = logging.getLogger(__name__)

# The fewest windows a bucket's delay sample is spread over, whatever the number of shards (docs/api.md)
MIN_SAMPLE_WINDOWS = 8

_ARRIVAL = "FROM {ks}.events_by_arrival_bucket WHERE bucket = ? AND shard = ? AND enqueued_at >= ?"
_HISTORY = f"SELECT {EVENT_SELECT} FROM {{ks}}.events_by_device WHERE device_id = ? AND day = ?"
_STATEMENTS = {
    "count": "SELECT COUNT(*) " + _ARRIVAL,
    "sample": "SELECT enqueued_at, WRITETIME(device_id) AS written " + _ARRIVAL + " AND enqueued_at < ? LIMIT ?",
    "history": _HISTORY + " AND event_time >= ? AND event_time <= ? LIMIT ?",
    "history_tie": _HISTORY + " AND event_time = ? AND event_id > ? LIMIT ?",
    "feed": "SELECT watermark, updated_at FROM {ks}.feed_state WHERE name = ?",
    "delayed": DELAYED_SINCE,
}


class CassandraArrivalStats:
    """Implements ``shared.ports.dashboard.ArrivalStats``."""

    def __init__(self, session: Callable[[], Session], keyspace: str, *, bucket_seconds: int, shards: int,
                 sample: int = 128, timeout: float = 2.0) -> None:
        """``sample``: the most rows of one shard read for the delays, in ``slices`` reads (at least two per shard,
        and at least ``MIN_SAMPLE_WINDOWS`` for the bucket) of ``sample // slices`` rows each."""
        self._db = Queries(session, keyspace, _STATEMENTS, timeout=timeout)
        self._bucket_seconds = bucket_seconds
        self._shards = shards
        self._slices = max(2, -(-MIN_SAMPLE_WINDOWS // shards))
        self._slice_rows = max(1, sample // self._slices)

    def _windows(self, shard: int, since: int, end: int) -> list[tuple[int, int]]:
        """``[from, to)`` in milliseconds of each sampled read of ``shard`` over ``[since, end)``: the ``k``-th of
        the ``n = shards * slices`` evenly spaced points of the span is where shard ``k % shards`` starts a read,
        which ends where that shard's next one starts (its last at ``end``)."""
        n = self._shards * self._slices
        points = [since + (end - since) * (j * self._shards + shard) // n for j in range(self._slices)]
        return list(zip(points, [*points[1:], end], strict=True))

    @property
    def bucket_seconds(self) -> int:
        return self._bucket_seconds

    def buckets(self, reads: Sequence[BucketRead]) -> list[BucketFigures]:
        futures: list[tuple[int, bool, ResponseFuture]] = []
        with translated(f"reading {len(reads)} arrival buckets"):
            session = self._db.session()
            count, sample = self._db.statement("count"), self._db.statement("sample")
            for index, read in enumerate(reads):
                since = read.since if read.since is not None and read.since > read.start else read.start
                end = to_ms(read.start) + self._bucket_seconds * 1000
                for shard in range(self._shards):
                    futures.append((index, True, session.execute_async(count, (read.start, shard, since),
                                                                       timeout=self._db.timeout)))
                    if read.sample:
                        futures += [(index, False, session.execute_async(
                            sample, (read.start, shard, low, high, self._slice_rows), timeout=self._db.timeout))
                            for low, high in self._windows(shard, to_ms(since), end) if low < high]
            results: list[tuple[int, bool, ResultSet]] = [(index, is_count, future.result())
                                                           for index, is_count, future in futures]
        events = [0] * len(reads)
        delays: list[list[float]] = [[] for _ in reads]
        for index, is_count, rows in results:
            if is_count:
                events[index] += rows.one()[0]
                continue
            for row in rows:
                if row.written is not None and row.enqueued_at is not None:
                    delays[index].append(max(0.0, row.written / 1000.0 - to_ms(row.enqueued_at)))
        return [BucketFigures(read.start, events[i], delays[i]) for i, read in enumerate(reads)]

    def delayed_since(self, start: datetime, end: datetime) -> datetime | None:
        return oldest_noted(self._db, start, end, bucket_seconds=self._bucket_seconds, concurrency=self._shards)


class CassandraFeedPosition:
    """Implements ``shared.ports.dashboard.FeedPositionReader`` on ``feed_state``."""

    def __init__(self, session: Callable[[], Session], keyspace: str, feed_name: str, *, timeout: float = 2.0) -> None:
        self._db = Queries(session, keyspace, _STATEMENTS, timeout=timeout)
        self._name = feed_name

    def change_feed(self) -> Position | None:
        row = self._db.execute("feed", (self._name,), f"feed position {self._name!r}").one()
        if row is None:
            return None
        return Position(stored_time(row.watermark), stored_time(row.updated_at))


class CassandraDeviceHistory:
    """Implements ``shared.ports.dashboard.DeviceHistory`` on ``events_by_device``."""

    def __init__(self, session: Callable[[], Session], keyspace: str, *, timeout: float = 2.0) -> None:
        self._db = Queries(session, keyspace, _STATEMENTS, timeout=timeout)

    def page(self, device_id: str, day: date, *, start: datetime, end: datetime,
             after: tuple[int, uuid.UUID] | None, limit: int) -> list[StoredEvent]:
        what = f"the history of device {device_id!r} on {day.isoformat()}"
        # Bounds in whole milliseconds, as the events are stored: the driver would cut a finer datetime towards zero,
        # taking the millisecond before `start` (or, before 1970, after `end`).
        first, last = to_ms_ceil(start), to_ms(end)
        rows = []
        if after is not None:
            if first <= after[0] <= last:
                rows = self._db.rows("history_tie", (device_id, day, after[0], after[1], limit), what)
            last = min(last, after[0] - 1)
        if len(rows) < limit and last >= first:
            rows += self._db.rows("history", (device_id, day, first, last, limit - len(rows)), what)
        return [stored_event(row) for row in rows]
