"""Cassandra reads of the operations page: arrival counts, the feed position and device history.

* ``CassandraArrivalStats``: one arrival bucket of ``events_by_arrival_bucket`` is
  exactly ``shards`` partitions; each gets a ``COUNT(*)`` and a read of at most
  ``sample`` rows' ``enqueued_at`` and ``WRITETIME`` (the ingest delay), sent
  together with ``execute_async``. Never a scan.
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
from datetime import UTC, date, datetime, timedelta

from cassandra.cluster import ResponseFuture, Session
from cassandra.query import PreparedStatement

from shared.adapters.cassandra.reader import CASSANDRA_ERRORS, EVENT_SELECT, describe, stored_event
from shared.exceptions import DependencyUnavailable
from shared.lazy import Once
from shared.ports.dashboard import BucketFigures, BucketRead, Position
from shared.ports.stored import StoredEvent

logger = logging.getLogger(__name__)

_ARRIVAL = "FROM {ks}.events_by_arrival_bucket WHERE bucket = ? AND shard = ? AND enqueued_at >= ?"
_HISTORY = f"SELECT {EVENT_SELECT} FROM {{ks}}.events_by_device WHERE device_id = ? AND day = ?"
_STATEMENTS = {
    "count": "SELECT COUNT(*) " + _ARRIVAL,
    "sample": "SELECT enqueued_at, WRITETIME(device_id) AS written " + _ARRIVAL + " LIMIT ?",
    "history": _HISTORY + " AND event_time >= ? AND event_time <= ? LIMIT ?",
    "history_tie": _HISTORY + " AND event_time = ? AND event_id > ? LIMIT ?",
    "feed": "SELECT watermark, updated_at FROM {ks}.feed_state WHERE name = ?",
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


class _Prepared:
    def __init__(self, session: Callable[[], Session], keyspace: str, timeout: float) -> None:
        self._connect = session
        self._keyspace = keyspace
        self.timeout = timeout
        self._statements = Once(self._prepare)

    def _prepare(self) -> dict[str, PreparedStatement]:
        session = self._connect()
        prepared = {}
        for name, cql in _STATEMENTS.items():
            statement = session.prepare(cql.format(ks=self._keyspace))
            statement.is_idempotent = True
            prepared[name] = statement
        return prepared

    def session(self) -> Session:
        return self._connect()

    def __getitem__(self, name: str) -> PreparedStatement:
        return self._statements.get()[name]


class CassandraArrivalStats:
    """Implements ``shared.ports.dashboard.ArrivalStats``."""

    def __init__(self, session: Callable[[], Session], keyspace: str, *, bucket_seconds: int, shards: int,
                 sample: int = 128, timeout: float = 2.0) -> None:
        self._db = _Prepared(session, keyspace, timeout)
        self._bucket_seconds = bucket_seconds
        self._shards = shards
        self._sample = sample

    @property
    def bucket_seconds(self) -> int:
        return self._bucket_seconds

    def buckets(self, reads: Sequence[BucketRead]) -> list[BucketFigures]:
        session = self._db.session()
        count, sample = self._db["count"], self._db["sample"]
        futures: list[tuple[int, bool, ResponseFuture]] = []
        try:
            for index, read in enumerate(reads):
                since = read.since if read.since is not None and read.since > read.start else read.start
                for shard in range(self._shards):
                    futures.append((index, True, session.execute_async(count, (read.start, shard, since),
                                                                       timeout=self._db.timeout)))
                    if read.sample:
                        futures.append((index, False, session.execute_async(
                            sample, (read.start, shard, since, self._sample), timeout=self._db.timeout)))
            results = [(index, is_count, future.result()) for index, is_count, future in futures]
        except CASSANDRA_ERRORS as exc:
            raise _failed(f"reading {len(reads)} arrival buckets", exc) from exc
        events = [0] * len(reads)
        delays: list[list[float]] = [[] for _ in reads]
        for index, is_count, rows in results:
            if is_count:
                events[index] += rows.one()[0]
                continue
            for row in rows:
                if row.written is not None and row.enqueued_at is not None:
                    enqueued_us = (_utc(row.enqueued_at) - _EPOCH) // timedelta(microseconds=1)
                    delays[index].append(max(0.0, (row.written - enqueued_us) / 1000.0))
        return [BucketFigures(read.start, events[i], delays[i]) for i, read in enumerate(reads)]


class CassandraFeedPosition:
    """Implements ``shared.ports.dashboard.FeedPositionReader`` on ``feed_state``."""

    def __init__(self, session: Callable[[], Session], keyspace: str, feed_name: str, *, timeout: float = 2.0) -> None:
        self._db = _Prepared(session, keyspace, timeout)
        self._name = feed_name

    def change_feed(self) -> Position | None:
        try:
            row = self._db.session().execute(self._db["feed"], (self._name,), timeout=self._db.timeout).one()
        except CASSANDRA_ERRORS as exc:
            raise _failed(f"reading feed position {self._name!r}", exc) from exc
        if row is None:
            return None
        return Position(_utc(row.watermark), _utc(row.updated_at))


class CassandraDeviceHistory:
    """Implements ``shared.ports.dashboard.DeviceHistory`` on ``events_by_device``."""

    def __init__(self, session: Callable[[], Session], keyspace: str, *, timeout: float = 2.0) -> None:
        self._db = _Prepared(session, keyspace, timeout)

    def page(self, device_id: str, day: date, *, start: datetime, end: datetime,
             after: tuple[int, uuid.UUID] | None, limit: int) -> list[StoredEvent]:
        what = f"the history of device {device_id!r} on {day.isoformat()}"
        try:
            session = self._db.session()
            rows = []
            if after is not None:
                at = _EPOCH + timedelta(milliseconds=after[0])
                rows = list(session.execute(self._db["history_tie"], (device_id, day, at, after[1], limit),
                                            timeout=self._db.timeout))
                end = min(end, at - timedelta(milliseconds=1))
            if len(rows) < limit and end >= start:
                rows += list(session.execute(self._db["history"], (device_id, day, start, end, limit - len(rows)),
                                             timeout=self._db.timeout))
        except CASSANDRA_ERRORS as exc:
            raise _failed("reading " + what, exc) from exc
        return [stored_event(row) for row in rows]


def _failed(what: str, exc: BaseException) -> DependencyUnavailable:
    return DependencyUnavailable("cassandra", f"{what} failed: {describe(exc)}")
