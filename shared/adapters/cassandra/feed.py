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
are absorbed by the idempotent sink, and each page says which range was such a
re-read (``FeedPage.reread``), so that they are not counted again. One page never
reads past ``now``. A row
written later than that (ingest behind: Cassandra down for minutes, a backlog) is
in a batch ingest noted in ``delayed_batches`` (``CassandraDelayLog``, as for
enrichment's late scan): a run that finds a note written since its last read
starts at the note's oldest enqueued time instead (no earlier than the lookback,
and never later than it would start anyway), with its watermark moved back there,
so that re-read is saved page by page and continues across runs; ``noted_until``
in the position says which notes were taken into account already.

``CassandraFeedStateStore`` keeps positions in ``feed_state``; saves are
lightweight transactions (``INSERT ... IF NOT EXISTS`` / ``UPDATE ... IF version = ?``)
so two instances racing cannot move a position backwards.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from cassandra import InvalidRequest, WriteTimeout
from cassandra.cluster import Session
from cassandra.query import SimpleStatement

from shared.adapters.cassandra.delays import DELAYED_SINCE, oldest_noted
from shared.adapters.cassandra.layout import bucket_start
from shared.adapters.cassandra.query import (
    CASSANDRA_ERRORS,
    DEPENDENCY,
    Queries,
    applied,
    describe,
    fetched,
    unavailable,
)
from shared.adapters.cassandra.reader import EVENT_SELECT, stored_event
from shared.adapters.cassandra.rows import stored_time
from shared.domain.times import rfc3339, utc
from shared.exceptions import DependencyUnavailable
from shared.ports.feed import ContinuationRejected, FeedPage, FeedPosition, SavedPosition

logger = logging.getLogger(__name__)


_BY_ARRIVAL = (f"SELECT {EVENT_SELECT} FROM {{ks}}.events_by_arrival_bucket "
               "WHERE bucket = ? AND shard = ? AND enqueued_at >= ? AND enqueued_at < ?")
_FEED_STATE = {
    "load": "SELECT start_time, paging_state, watermark, noted_until, version FROM {ks}.feed_state WHERE name = ?",
    "insert": ("INSERT INTO {ks}.feed_state (name, start_time, paging_state, watermark, noted_until, version, "
               "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"),
    "update": ("UPDATE {ks}.feed_state SET start_time = ?, paging_state = ?, watermark = ?, noted_until = ?, "
               "version = ?, updated_at = ? WHERE name = ? IF version = ?"),
}


class CosmosChangeFeed:
    """Implements ``shared.ports.feed.ChangeFeed`` on the Cosmos DB change feed of ``events_by_id``."""

    def __init__(self, session: Session, keyspace: str, *, page_size: int = 1000, lookback_seconds: int = 3600,
                 table: str = "events_by_id") -> None:
        self._session = session
        self._cql = f"SELECT {EVENT_SELECT} FROM {keyspace}.{table} WHERE COSMOS_CHANGEFEED_START_TIME() = '{{start}}'"
        self._page_size = page_size
        self._lookback = timedelta(seconds=lookback_seconds)

    def initial_position(self, now: datetime) -> FeedPosition:
        return FeedPosition(start_time=utc(now) - self._lookback)

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
            result = fetched(self._session.execute_async(statement, paging_state=position.paging_state,
                                                          timeout=timeout))
        except InvalidRequest as exc:
            if position.paging_state is not None:
                raise ContinuationRejected(f"the change feed refused the saved continuation: {exc}") from exc
            raise DependencyUnavailable(DEPENDENCY, f"change feed query refused: {exc}") from exc
        except CASSANDRA_ERRORS as exc:
            raise unavailable("reading the change feed", exc) from exc
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
                 concurrency: int = 16, timeout: float = 10.0) -> None:
        self._queries = Queries(session, keyspace, {"bucket": _BY_ARRIVAL, "delayed": DELAYED_SINCE}, timeout=timeout)
        self._bucket_seconds = bucket_seconds
        self._shards = shards
        self._lookback = timedelta(seconds=lookback_seconds)
        self._overlap = timedelta(seconds=overlap_seconds)
        self._max_span = timedelta(seconds=max_span_seconds)
        self._concurrency = concurrency

    def initial_position(self, now: datetime) -> FeedPosition:
        start = utc(now) - self._lookback
        return FeedPosition(watermark=start, cursor=start)

    def rewind(self, position: FeedPosition) -> FeedPosition:
        if position.watermark is None:  # e.g. a position saved in cosmos mode: start at the lookback
            return FeedPosition()
        watermark = utc(position.watermark)
        return FeedPosition(watermark=watermark, cursor=watermark - self._overlap,
                            noted_until=utc(position.noted_until), reread_until=watermark)

    def read_page(self, position: FeedPosition, *, now: datetime, timeout: float) -> FeedPage:
        """Every row enqueued in ``[cursor, end)``, where ``end`` is the cursor's bucket end, capped at ``now``.

        The watermark after the page is ``max(watermark, end)``: re-reading the
        overlap never moves it back. A run stops at its horizon, fixed on its first
        page: ``now``, or ``max_span`` past the watermark it started from, so a
        far-behind feed advances in bounded steps. The shards are read concurrently,
        all within ``timeout``: a slow store raises ``DependencyUnavailable`` then.

        A run's first page also reads ingest's delay notes written since the last
        ones taken into account (``noted_until``, or the watermark minus the overlap).
        A note older than the cursor moves the cursor *and the watermark* back to it
        (the rows it notes were not read yet, so nothing from there on is known to be
        read), so each page of the re-read moves the watermark and is saved, and the
        next run continues where this one stopped; ``noted_until`` moves past the
        note once it is older than the overlap. Notes written within the overlap
        before a run are read again by the next one: a note is stamped with ingest's
        clock before its insert (which may take up to its timeout, 10 s) and may become
        visible only after a run has looked, and ingest's clock may be behind ours. A
        note read again within that minute may send a run back to it once more.
        """
        now = utc(now)
        watermark = utc(position.watermark) or self.initial_position(now).watermark
        cursor = utc(position.cursor) or watermark
        noted_until = utc(position.noted_until)
        horizon = utc(position.horizon)
        assert watermark is not None and cursor is not None
        # What earlier runs read already: the overlap the rewind went back over. A delay note below moves the
        # cursor further back, but not this: the rows it re-reads were counted when first read. A first run re-reads
        # nothing (its cursor starts at the watermark), but the window is still the overlap wide, ending there: its
        # width is how far back the next run will re-read, which is how long a counted row must be remembered.
        reread_until = utc(position.reread_until)
        reread_end = reread_until or watermark
        reread = (reread_end - self._overlap, reread_end)
        if horizon is None:  # a run's first page: did ingest store rows after the last read covered them?
            horizon = min(now, max(watermark, cursor) + self._max_span)
            since = watermark - self._overlap if noted_until is None else max(noted_until, watermark - self._overlap)
            noted = self._delayed_since(since, now, timeout)
            if noted is not None:
                noted_until = max(since, now - self._overlap)
            # Back to the note, no earlier than the lookback, and never forward: a feed behind by more than the
            # lookback has its cursor before ``now - lookback`` already, and must not skip what lies in between.
            if noted is not None and (back := max(noted, now - self._lookback)) < cursor:
                cursor = watermark = back
                logger.info("change feed: ingest stored batches late (oldest enqueued %s); reading from %s",
                            rfc3339(noted), rfc3339(cursor))
        if cursor >= horizon:
            return FeedPage([], FeedPosition(watermark=watermark, cursor=cursor, horizon=horizon,
                                             noted_until=noted_until, reread_until=reread_until),
                            caught_up=True, reread=reread)
        bucket = bucket_start(cursor, self._bucket_seconds)
        end = min(bucket + timedelta(seconds=self._bucket_seconds), horizon)
        partitions = [(bucket, shard, cursor, end) for shard in range(self._shards)]
        results = self._queries.fan_out("bucket", partitions, f"arrival bucket {rfc3339(bucket)}",
                                        concurrency=self._concurrency, budget=timeout)
        events = [stored_event(row) for rows in results for row in rows]
        events.sort(key=lambda e: (e.enqueued_time or e.event_time, str(e.event_id)))
        after = FeedPosition(watermark=max(watermark, end), cursor=end, horizon=horizon, noted_until=noted_until,
                             reread_until=reread_until)
        return FeedPage(events, after, caught_up=end >= horizon, reread=reread)

    def _delayed_since(self, start: datetime, end: datetime, timeout: float) -> datetime | None:
        return oldest_noted(self._queries, start, end, bucket_seconds=self._bucket_seconds,
                            concurrency=self._concurrency, budget=timeout)


class CassandraFeedStateStore:
    """Implements ``shared.ports.feed.FeedStateStore`` on ``feed_state`` with lightweight transactions."""

    def __init__(self, session: Session, keyspace: str, *, timeout: float = 10.0) -> None:
        # Not idempotent: a compare-and-set retried after a write timeout could apply twice.
        self._queries = Queries(session, keyspace, _FEED_STATE, timeout=timeout, idempotent=False)

    def load(self, name: str) -> SavedPosition | None:
        row = self._queries.execute("load", (name,), f"feed position {name!r}").one()
        if row is None:
            return None
        position = FeedPosition(start_time=stored_time(row.start_time), paging_state=row.paging_state,
                                watermark=stored_time(row.watermark), noted_until=stored_time(row.noted_until))
        return SavedPosition(position, row.version or 0)

    def save(self, name: str, position: FeedPosition, expected_version: int) -> int | None:
        new_version = expected_version + 1
        values = (position.start_time, position.paging_state, position.watermark, position.noted_until, new_version,
                  datetime.now(UTC))
        session, timeout = self._queries.session(), self._queries.timeout
        try:
            if expected_version == 0:
                result = session.execute(self._queries.statement("insert"), (name, *values), timeout=timeout)
            else:
                result = session.execute(self._queries.statement("update"), (*values, name, expected_version),
                                         timeout=timeout)
        except WriteTimeout as exc:
            raise DependencyUnavailable(DEPENDENCY, f"saving feed position {name!r}: outcome unknown "
                                                    f"({describe(exc)})") from exc
        except CASSANDRA_ERRORS as exc:
            raise unavailable(f"saving feed position {name!r}", exc) from exc
        if not applied(result):
            return None
        return new_version
