"""``CassandraWindowReader``: every event of an event-time range, from every bucket and shard, concurrently.

``events_by_time_bucket`` is partitioned by ``(bucket, shard)`` (see
``shared.domain.timebuckets``): a window ``[start, end)`` is the partitions of every
bucket overlapping it times every shard, each read with a clustering range on
``event_time`` (a bucket may be wider than the window). Partitions are read by up
to ``concurrency`` threads at once, each paging with ``fetch_size`` rows per
request (the driver fetches the next page while iterating). Any failed read fails
the whole window with ``DependencyUnavailable``: a window is never computed from
part of its events. ``events_by_arrival_bucket`` is read the same way by Event
Hubs enqueued time, for the late-event scan.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from cassandra import DriverException
from cassandra.cluster import NoHostAvailable, Session
from cassandra.connection import ConnectionException
from cassandra.query import PreparedStatement

from shared.domain.timebuckets import buckets_between
from shared.exceptions import DependencyUnavailable
from shared.ports.enrichment import Arrival
from shared.ports.stored import StoredEvent
from shared.settings import CassandraSettings

logger = logging.getLogger(__name__)

_BY_TIME = (
    "SELECT event_id, device_id, event_time, enqueued_time, event_type, severity, critical, measurements "
    "FROM {ks}.events_by_time_bucket WHERE bucket = ? AND shard = ? AND event_time >= ? AND event_time < ?"
)
_BY_ARRIVAL = (
    "SELECT event_id, event_time, enqueued_at FROM {ks}.events_by_arrival_bucket "
    "WHERE bucket = ? AND shard = ? AND enqueued_at >= ? AND enqueued_at < ?"
)


def _utc(moment: datetime | None) -> datetime | None:
    """The driver returns naive UTC datetimes; the rest of Sluice uses aware ones."""
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


class CassandraWindowReader:
    """Implements ``shared.ports.enrichment.WindowReader``."""

    def __init__(self, session: Session, settings: CassandraSettings, *, page_size: int = 5000,
                 concurrency: int = 16) -> None:
        self._session = session
        self._settings = settings
        self._page_size = page_size
        self._concurrency = concurrency
        self._prepared: dict[str, PreparedStatement] = {}
        self._lock = threading.Lock()

    def _statement(self, cql: str) -> PreparedStatement:
        with self._lock:
            statement = self._prepared.get(cql)
            if statement is None:
                statement = self._session.prepare(cql.format(ks=self._settings.keyspace))
                statement.is_idempotent = True
                statement.fetch_size = self._page_size
                self._prepared[cql] = statement
        return statement

    def _partitions(self, start: datetime, end: datetime) -> list[tuple[datetime, int]]:
        return [(bucket, shard) for bucket in buckets_between(start, end, self._settings.bucket_seconds)
                for shard in range(self._settings.shards)]

    def read(self, start: datetime, end: datetime) -> list[StoredEvent]:
        statement = self._statement(_BY_TIME)

        def one(partition: tuple[datetime, int]) -> list[StoredEvent]:
            rows = self._session.execute(statement, (*partition, start, end))
            return [
                StoredEvent(
                    event_id=r.event_id, device_id=r.device_id, event_time=_utc(r.event_time),
                    event_type=r.event_type, severity=r.severity, critical=r.critical,
                    measurements=dict(r.measurements) if r.measurements else {},
                    enqueued_time=_utc(r.enqueued_time),
                )
                for r in rows
            ]

        events: list[StoredEvent] = []
        for part in self._map(one, self._partitions(start, end), f"events of [{start.isoformat()}, {end.isoformat()})"):
            events.extend(part)
        return events

    def arrivals(self, start: datetime, end: datetime) -> Iterator[Arrival]:
        if end <= start:
            return iter(())
        statement = self._statement(_BY_ARRIVAL)

        def one(partition: tuple[datetime, int]) -> list[Arrival]:
            rows = self._session.execute(statement, (*partition, start, end))
            return [Arrival(r.event_id, _utc(r.event_time), _utc(r.enqueued_at)) for r in rows]

        def generate() -> Iterator[Arrival]:
            # One bucket at a time keeps memory bounded by a bucket's rows, whatever the range.
            for bucket in buckets_between(start, end, self._settings.bucket_seconds):
                partitions = [(bucket, shard) for shard in range(self._settings.shards)]
                for part in self._map(one, partitions, f"arrivals of bucket {bucket.isoformat()}"):
                    yield from part

        return generate()

    def _map(self, work, partitions: list[tuple[datetime, int]], what: str) -> list:
        workers = max(1, min(self._concurrency, len(partitions)))
        try:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="window-reader") as pool:
                return list(pool.map(work, partitions))
        except (NoHostAvailable, DriverException, ConnectionException, OSError) as exc:
            raise DependencyUnavailable("Cassandra", f"reading the {what} failed: {type(exc).__name__}: {exc}") from exc
