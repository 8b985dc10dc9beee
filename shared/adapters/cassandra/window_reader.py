"""``CassandraWindowReader``: every event of an event-time range, from every bucket and shard, concurrently.

``events_by_time_bucket`` is partitioned by ``(bucket, shard)`` (see
``shared.adapters.cassandra.layout``): a window ``[start, end)`` is the partitions of every
bucket overlapping it times every shard, each read with a clustering range on
``event_time`` (a bucket may be wider than the window). Partitions are read by up
to ``concurrency`` at once (``Queries.fan_out_each``, on the driver's futures), each paging
with ``page_size`` rows per request, every request within the session's request
timeout; :meth:`CassandraWindowReader.read_each` hands the events over page by page, so the
enrichment holds only the pages in flight. Any failed read (throttling left after the
retries included) fails the whole window with ``DependencyUnavailable("cassandra", ...)``:
a window is never computed from part of its events. ``events_by_arrival_bucket`` is read the same way by Event
Hubs enqueued time, for the late-event scan.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from cassandra.cluster import Session

from shared.adapters.cassandra.delays import DELAYED_SINCE, oldest_noted
from shared.adapters.cassandra.layout import buckets_between
from shared.adapters.cassandra.query import Queries
from shared.adapters.cassandra.rows import as_dict, stored_time
from shared.domain.stored import StoredEvent
from shared.domain.times import from_ms, to_ms_ceil
from shared.ports.enrichment import Arrival
from shared.settings import CassandraSettings

logger = logging.getLogger(__name__)

_HALF_MS = timedelta(microseconds=500)

# One partition's events of an event-time range ({ks}: the keyspace), as the enrichment reads them.
BY_TIME = (
    "SELECT event_id, device_id, event_time, enqueued_time, event_type, severity, critical, measurements "
    "FROM {ks}.events_by_time_bucket WHERE bucket = ? AND shard = ? AND event_time >= ? AND event_time < ?"
)


def window_event(r: Any) -> StoredEvent:
    """A row of :data:`BY_TIME` (its timestamps through :func:`stored_time`)."""
    return StoredEvent(
        event_id=r.event_id, device_id=r.device_id, event_time=stored_time(r.event_time), event_type=r.event_type,
        severity=r.severity, critical=r.critical, measurements=as_dict(r.measurements),
        enqueued_time=stored_time(r.enqueued_time),
    )


_STATEMENTS = {
    "by_time": BY_TIME,
    "by_arrival": (
        "SELECT event_id, event_time, enqueued_at FROM {ks}.events_by_arrival_bucket "
        "WHERE bucket = ? AND shard = ? AND enqueued_at >= ? AND enqueued_at < ?"
    ),
    "delayed": DELAYED_SINCE,
}


class CassandraWindowReader:
    """Implements ``shared.ports.enrichment.WindowReader``."""

    def __init__(self, session: Session, settings: CassandraSettings, *, page_size: int = 1000,
                 concurrency: int = 16) -> None:
        self._queries = Queries(session, settings.keyspace, _STATEMENTS, timeout=settings.request_timeout_seconds,
                                fetch_size=page_size)
        self._settings = settings
        self._concurrency = concurrency

    def _partitions(self, buckets: Iterator[datetime] | list[datetime], start: datetime,
                    end: datetime) -> list[tuple[datetime, int, datetime, datetime]]:
        return [(bucket, shard, start, end) for bucket in buckets for shard in range(self._settings.shards)]

    def read(self, start: datetime, end: datetime) -> list[StoredEvent]:
        return [event for page in self.read_each(start, end) for event in page]

    def read_each(self, start: datetime, end: datetime) -> Iterator[list[StoredEvent]]:
        partitions = self._partitions(buckets_between(start, end, self._settings.bucket_seconds), start, end)
        # Each page becomes events as its turn comes and is dropped: a row is about three times the size of its
        # event (the driver keeps each map key decoded and serialized), and only the pages in flight, one per
        # partition up to the reader's concurrency, are held as rows (docs/enrichment.md#memory).
        for rows in self._queries.fan_out_each("by_time", partitions, f"the events of [{start.isoformat()}, "
                                               f"{end.isoformat()})", concurrency=self._concurrency, by_page=True):
            yield [window_event(r) for r in rows]
            del rows

    def delayed_since(self, start: datetime, end: datetime) -> datetime | None:
        """The oldest enqueued time of the batches ingest noted as delayed in ``[start, end)`` (its clock)."""
        return oldest_noted(self._queries, start, end, bucket_seconds=self._settings.bucket_seconds,
                            concurrency=self._concurrency)

    def arrivals(self, start: datetime, end: datetime, *, event_time_before: datetime | None = None
                 ) -> Iterator[Arrival]:
        if end <= start:
            return iter(())
        # The driver reads timestamps as naive UTC: compared as they come, a row of an open window costs no object.
        # A stored event time is a whole millisecond, before the bound if before its first whole millisecond; the
        # driver's value is within a few microseconds of it (stored_time), so half a millisecond earlier is exact.
        before = None if event_time_before is None else (
            from_ms(to_ms_ceil(event_time_before)) - _HALF_MS).replace(tzinfo=None)

        def generate() -> Iterator[Arrival]:
            # One bucket at a time keeps memory bounded by a bucket's rows, whatever the range.
            for bucket in buckets_between(start, end, self._settings.bucket_seconds):
                partitions = self._partitions([bucket], start, end)
                results = self._queries.fan_out("by_arrival", partitions, f"the arrivals of bucket "
                                                f"{bucket.isoformat()}", concurrency=self._concurrency)
                for rows in results:
                    yield from (Arrival(r.event_id, stored_time(r.event_time), stored_time(r.enqueued_at)) for r in rows
                                if before is None or r.event_time < before)

        return generate()
