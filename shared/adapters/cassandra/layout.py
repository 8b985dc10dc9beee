"""How events are spread over Cassandra partitions by time (see docs/data-model.md).

Two tables are bucketed by time:

* ``events_by_time_bucket``: by the event's own timestamp, for enrichment windows;
* ``events_by_arrival_bucket``: by the Event Hubs enqueued time, for the portable
  change feed and for spotting late events. The enqueued time is fixed per event,
  so a replayed batch lands on the same rows.

A bucket is the start of a fixed ``bucket_seconds`` span (UTC); each bucket is split
over ``shards`` partitions by a stable hash of the event id, so one busy minute
does not become one hot partition. Readers scan every shard of a bucket.
``events_by_device`` is partitioned by device and UTC day.
Changing ``bucket_seconds`` or ``shards`` once data exists hides older rows from
readers: both are fixed at the first migration (see the ``sluice_meta`` table).
The ``*_millis`` forms work on milliseconds since the epoch, as the event store
binds timestamps.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta

from shared.domain.times import EPOCH, day_of, floor

__all__ = ["bucket_start", "bucket_start_millis", "buckets_between", "day_of", "day_of_millis", "shard_of"]

bucket_start = floor  # the start of the bucket holding a moment, in UTC


def buckets_between(start: datetime, end: datetime, bucket_seconds: int) -> Iterator[datetime]:
    """Every bucket start that overlaps ``[start, end)``."""
    current = bucket_start(start, bucket_seconds)
    step = timedelta(seconds=bucket_seconds)
    while current < end:
        yield current
        current += step


def shard_of(event_id: uuid.UUID, shards: int) -> int:
    """A stable shard for an event id (its low 64 bits modulo ``shards``)."""
    return (event_id.int & 0xFFFF_FFFF_FFFF_FFFF) % shards


def bucket_start_millis(millis: int, bucket_seconds: int) -> int:
    """:func:`bucket_start` of the moment ``millis``, in milliseconds since the epoch."""
    return millis - millis % (bucket_seconds * 1000)


def day_of_millis(millis: int) -> date:
    """:func:`day_of` the moment ``millis``."""
    return date.fromordinal(_EPOCH_ORDINAL + millis // 86_400_000)


_EPOCH_ORDINAL = EPOCH.toordinal()
