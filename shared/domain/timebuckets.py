"""How events are spread over Cassandra partitions by time.

Two tables are bucketed by time (see docs/data-model.md):

* ``events_by_time_bucket``: by the event's own timestamp, for enrichment windows;
* ``events_by_arrival_bucket``: by the Event Hubs enqueued time, for the portable
  change feed and for spotting late events. The enqueued time is fixed per event,
  so a replayed batch lands on the same rows.

A bucket is the start of a fixed ``bucket_seconds`` span (UTC); each bucket is split
over ``shards`` partitions by a stable hash of the event id, so one busy minute
does not become one hot partition. Readers scan every shard of a bucket.
Changing ``bucket_seconds`` or ``shards`` once data exists hides older rows from
readers: both are fixed at the first migration (see the ``sluice_meta`` table).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from functools import cache

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def bucket_start(moment: datetime, bucket_seconds: int) -> datetime:
    """The start of the bucket holding ``moment`` (an aware datetime), in UTC."""
    utc = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
    return utc - (utc - EPOCH) % _span(bucket_seconds)  # exact: timedelta arithmetic is integral


@cache
def _span(seconds: int) -> timedelta:
    return timedelta(seconds=seconds)


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


def day_of(moment: datetime) -> date:
    """The UTC day of ``moment``: the second part of ``events_by_device``'s partition key."""
    return (moment if moment.tzinfo is UTC else moment.astimezone(UTC)).date()


# The same on milliseconds since the epoch, as Cassandra keeps a timestamp and the event store binds it.

def milliseconds(moment: datetime) -> int:
    """Whole milliseconds since the epoch (towards the past); a naive moment is UTC, as the CQL driver reads it."""
    aware = moment.tzinfo is UTC or moment.utcoffset() is not None
    return (moment - (EPOCH if aware else _NAIVE_EPOCH)) // _MILLISECOND


def bucket_start_millis(millis: int, bucket_seconds: int) -> int:
    """:func:`bucket_start` of the moment ``millis``, in milliseconds since the epoch."""
    return millis - millis % (bucket_seconds * 1000)


def day_of_millis(millis: int) -> date:
    """:func:`day_of` the moment ``millis``."""
    return date.fromordinal(_EPOCH_ORDINAL + millis // 86_400_000)


_EPOCH_ORDINAL = EPOCH.toordinal()
_NAIVE_EPOCH = EPOCH.replace(tzinfo=None)
_MILLISECOND = timedelta(milliseconds=1)
