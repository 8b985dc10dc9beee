"""The change feed readers and the compare-and-set position store, on Cassandra.

``CosmosChangeFeed`` reads Cosmos DB's change feed of ``events_by_id``::

    SELECT ... FROM ks.events_by_id WHERE COSMOS_CHANGEFEED_START_TIME() = '<start>'

The start time stays fixed for the life of a continuation and the paging state
*is* the continuation. The feed always returns a paging state (even for an empty
page), so the driver's auto-paging would never end: each call executes one page
and reads ``current_rows`` / ``paging_state``, never iterates the result set. An
empty page means caught up (or throttled: the next run continues from the same
place). A paging state the server refuses (``InvalidRequest``: the table was
dropped and recreated, or the token is corrupt) raises ``ContinuationRejected``.

``PortableChangeFeed`` is for Apache Cassandra, which has no change feed. It reads
``events_by_arrival_bucket`` (bucketed by Event Hubs enqueued time, which is fixed
per event) one bucket per page, every shard of the bucket concurrently. The
stored state is a watermark: each run starts ``overlap`` before it, so a row
written up to ``overlap`` after its enqueued time is still seen; rows read twice
are absorbed by the idempotent sink. One page never reads past ``now``.

``CassandraFeedStateStore`` keeps positions in ``feed_state``; saves are
lightweight transactions (``INSERT ... IF NOT EXISTS`` / ``UPDATE ... IF version = ?``)
so two instances racing cannot move a position backwards.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from cassandra import InvalidRequest, WriteTimeout
from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent
from cassandra.query import PreparedStatement, SimpleStatement

from shared.adapters.cassandra.reader import CASSANDRA_ERRORS, EVENT_SELECT, describe, stored_event
from shared.domain.timebuckets import bucket_start
from shared.exceptions import DependencyUnavailable
from shared.lazy import Once
from shared.ports.feed import ContinuationRejected, FeedPage, FeedPosition, SavedPosition

logger = logging.getLogger(__name__)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class CosmosChangeFeed:
    """Implements ``shared.ports.feed.ChangeFeed`` on the Cosmos DB change feed of ``events_by_id``."""

    def __init__(self, session: Session, keyspace: str, *, page_size: int = 1000, lookback_seconds: int = 3600,
                 table: str = "events_by_id") -> None:
        self._session = session
        self._cql = f"SELECT {EVENT_SELECT} FROM {keyspace}.{table} WHERE COSMOS_CHANGEFEED_START_TIME() = '{{start}}'"
        self._page_size = page_size
        self._lookback = timedelta(seconds=lookback_seconds)

    def initial_position(self, now: datetime) -> FeedPosition:
        return FeedPosition(start_time=_utc(now) - self._lookback)  # type: ignore[operator]

    def rewind(self, position: FeedPosition) -> FeedPosition:
        return position

    def read_page(self, position: FeedPosition, *, now: datetime, timeout: float) -> FeedPage:
        start = position.start_time or self.initial_position(now).start_time
        assert start is not None
        # The format of Microsoft's samples: 'yyyy-MM-dd HH:mm:ss' in UTC (whole seconds, rounded down).
        statement = SimpleStatement(self._cql.format(start=start.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")),
                                    fetch_size=self._page_size)
        statement.is_idempotent = True
        try:
            result = self._session.execute(statement, paging_state=position.paging_state, timeout=timeout)
        except InvalidRequest as exc:
            if position.paging_state is not None:
                raise ContinuationRejected(f"the change feed refused the saved continuation: {exc}") from exc
            raise DependencyUnavailable("cassandra", f"change feed query refused: {exc}") from exc
        except CASSANDRA_ERRORS as exc:
            raise DependencyUnavailable("cassandra", f"reading the change feed failed: {describe(exc)}") from exc
        rows = result.current_rows  # one page: never iterate the ResultSet (the feed pages forever)
        paging_state = result.paging_state
        if paging_state is None:  # Cosmos always returns one; without it we cannot move on safely
            logger.warning("change feed page without a paging state; keeping the previous continuation")
            paging_state = position.paging_state
        events = [stored_event(row) for row in rows]
        return FeedPage(events, FeedPosition(start_time=start, paging_state=paging_state), caught_up=not events)


class PortableChangeFeed:
    """Implements ``shared.ports.feed.ChangeFeed`` on ``events_by_arrival_bucket`` (any Cassandra)."""

    def __init__(self, session: Session, keyspace: str, *, bucket_seconds: int, shards: int,
                 lookback_seconds: int = 3600, overlap_seconds: int = 60, max_span_seconds: int = 3600,
                 concurrency: int = 16) -> None:
        self._session = session
        self._keyspace = keyspace
        self._bucket_seconds = bucket_seconds
        self._shards = shards
        self._lookback = timedelta(seconds=lookback_seconds)
        self._overlap = timedelta(seconds=overlap_seconds)
        self._max_span = timedelta(seconds=max_span_seconds)
        self._concurrency = concurrency
        self._statement = Once(self._prepare)

    def _prepare(self) -> PreparedStatement:
        statement = self._session.prepare(
            f"SELECT {EVENT_SELECT} FROM {self._keyspace}.events_by_arrival_bucket "
            "WHERE bucket = ? AND shard = ? AND enqueued_at >= ? AND enqueued_at < ?"
        )
        statement.is_idempotent = True
        return statement

    def initial_position(self, now: datetime) -> FeedPosition:
        start = _utc(now) - self._lookback  # type: ignore[operator]
        return FeedPosition(watermark=start, cursor=start)

    def rewind(self, position: FeedPosition) -> FeedPosition:
        if position.watermark is None:  # e.g. a position saved in cosmos mode: start at the lookback
            return FeedPosition()
        watermark = _utc(position.watermark)
        return FeedPosition(watermark=watermark, cursor=watermark - self._overlap)  # type: ignore[operator]

    def read_page(self, position: FeedPosition, *, now: datetime, timeout: float) -> FeedPage:
        """Every row enqueued in ``[cursor, end)``, where ``end`` is the cursor's bucket end, capped at ``now``.

        The watermark after the page is ``max(watermark, end)``: re-reading the
        overlap never moves it back. A run stops at its horizon, fixed on its first
        page: ``now``, or ``max_span`` past the watermark it started from, so a
        far-behind feed advances in bounded steps.
        """
        now = _utc(now)  # type: ignore[assignment]
        watermark = _utc(position.watermark) or self.initial_position(now).watermark
        cursor = _utc(position.cursor) or watermark
        assert watermark is not None and cursor is not None
        horizon = _utc(position.horizon) or min(now, max(watermark, cursor) + self._max_span)
        if cursor >= horizon:
            return FeedPage([], FeedPosition(watermark=watermark, cursor=cursor, horizon=horizon), caught_up=True)
        bucket = bucket_start(cursor, self._bucket_seconds)
        end = min(bucket + timedelta(seconds=self._bucket_seconds), horizon)
        statement = self._statement.get()
        work = [(statement, (bucket, shard, cursor, end)) for shard in range(self._shards)]
        try:
            results = execute_concurrent(self._session, work, concurrency=self._concurrency,
                                         raise_on_first_error=True, results_generator=False)
        except CASSANDRA_ERRORS as exc:
            raise DependencyUnavailable("cassandra", f"reading arrival bucket {_iso(bucket)} failed: "
                                                     f"{describe(exc)}") from exc
        events = [stored_event(row) for _, rows in results for row in rows]
        events.sort(key=lambda e: (e.enqueued_time or e.event_time, str(e.event_id)))
        after = FeedPosition(watermark=max(watermark, end), cursor=end, horizon=horizon)
        return FeedPage(events, after, caught_up=end >= horizon)


class CassandraFeedStateStore:
    """Implements ``shared.ports.feed.FeedStateStore`` on ``feed_state`` with lightweight transactions."""

    def __init__(self, session: Session, keyspace: str, *, timeout: float = 10.0) -> None:
        self._session = session
        self._keyspace = keyspace
        self._timeout = timeout
        self._statements = Once(self._prepare)

    def _prepare(self) -> dict[str, PreparedStatement]:
        ks = self._keyspace
        return {
            "load": self._session.prepare(
                f"SELECT start_time, paging_state, watermark, version FROM {ks}.feed_state WHERE name = ?"),
            "insert": self._session.prepare(
                f"INSERT INTO {ks}.feed_state (name, start_time, paging_state, watermark, version, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS"),
            "update": self._session.prepare(
                f"UPDATE {ks}.feed_state SET start_time = ?, paging_state = ?, watermark = ?, version = ?, "
                "updated_at = ? WHERE name = ? IF version = ?"),
        }

    def load(self, name: str) -> SavedPosition | None:
        try:
            row = self._session.execute(self._statements.get()["load"], (name,), timeout=self._timeout).one()
        except CASSANDRA_ERRORS as exc:
            raise DependencyUnavailable("cassandra", f"loading feed position {name!r} failed: {describe(exc)}") from exc
        if row is None:
            return None
        position = FeedPosition(start_time=_utc(row.start_time), paging_state=row.paging_state,
                                watermark=_utc(row.watermark))
        return SavedPosition(position, row.version or 0)

    def save(self, name: str, position: FeedPosition, expected_version: int) -> int | None:
        new_version = expected_version + 1
        values = (position.start_time, position.paging_state, position.watermark, new_version, datetime.now(UTC))
        statements = self._statements.get()
        try:
            if expected_version == 0:
                result = self._session.execute(statements["insert"], (name, *values), timeout=self._timeout)
            else:
                result = self._session.execute(statements["update"], (*values, name, expected_version),
                                               timeout=self._timeout)
        except WriteTimeout as exc:
            raise DependencyUnavailable("cassandra", f"saving feed position {name!r}: outcome unknown "
                                                     f"({describe(exc)})") from exc
        except CASSANDRA_ERRORS as exc:
            raise DependencyUnavailable("cassandra", f"saving feed position {name!r} failed: {describe(exc)}") from exc
        if not result.was_applied:
            return None
        return new_version
