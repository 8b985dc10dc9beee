"""``CassandraDelayLog``: ingest's notes of batches stored long after their enqueue (``delayed_batches``).

A note is one row in the partition of the time bucket ingest wrote it in
(``SLUICE_CASSANDRA_BUCKET_SECONDS``), keyed by that time, the Event Hubs
partition and the batch's first sequence number, holding the oldest enqueued
time of the batch's stored events. Enrichment's late scan reads the buckets
written since its last position (``CassandraWindowReader.delayed_since``) and
scans arrivals back to the oldest such time. Notes expire after ``ttl_seconds``:
the scan only looks back over its allowed lateness.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from cassandra.cluster import Session
from cassandra.query import PreparedStatement

from shared.adapters.cassandra.layout import bucket_start, buckets_between
from shared.adapters.cassandra.query import Queries
from shared.adapters.cassandra.rows import stored_time
from shared.exceptions import TransientError
from shared.lazy import Once
from shared.ports.ingest import DelayedBatch

TTL_SECONDS = 7 * 24 * 3600
# The notes written in [start, end) of one bucket; a reader registers it in its Queries under the name "delayed".
DELAYED_SINCE = ("SELECT oldest_enqueued FROM {ks}.delayed_batches "
                 "WHERE bucket = ? AND written_at >= ? AND written_at < ?")


def oldest_noted(queries: Queries, start: datetime, end: datetime, *, bucket_seconds: int, concurrency: int,
                 budget: float | None = None) -> datetime | None:
    """The oldest enqueued time of the batches ingest noted as delayed in ``[start, end)`` (its clock), read with
    ``queries``' ``"delayed"`` statement (:data:`DELAYED_SINCE`), every bucket of the range at once."""
    if end <= start:
        return None
    partitions = [(bucket, start, end) for bucket in buckets_between(start, end, bucket_seconds)]
    results = queries.fan_out("delayed", partitions, f"the delayed batches of [{start.isoformat()}, "
                              f"{end.isoformat()})", concurrency=concurrency, budget=budget)
    oldest = [stored_time(row.oldest_enqueued) for rows in results for row in rows]
    return min(oldest) if oldest else None


class CassandraDelayLog:
    """Implements ``shared.ports.ingest.DelayLog`` on Cassandra / Cosmos DB."""

    def __init__(self, session: Session | Callable[[], Session], keyspace: str, *, bucket_seconds: int,
                 timeout: float = 10.0, ttl_seconds: int = TTL_SECONDS,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        # A callable is called on first use (bootstrap's lazy session), inside ``record``, where a failure to
        # connect is a failed write the ingest service retries or dead-letters.
        self._session_of = session if callable(session) else (lambda: session)
        self._keyspace = keyspace
        self._bucket_seconds = bucket_seconds
        self._timeout = timeout
        self._ttl = ttl_seconds
        self._clock = clock
        self._insert = Once(self._prepare)

    def _prepare(self) -> PreparedStatement:
        statement = self._session_of().prepare(
            f"INSERT INTO {self._keyspace}.delayed_batches (bucket, written_at, eh_partition, first_sequence, "
            "oldest_enqueued, events) VALUES (?, ?, ?, ?, ?, ?) USING TTL ?")
        statement.is_idempotent = True
        return statement

    def record(self, batch: DelayedBatch) -> None:
        now = self._clock()
        values = (bucket_start(now, self._bucket_seconds), now, batch.partition or "",
                  -1 if batch.first_sequence is None else batch.first_sequence, batch.oldest_enqueued, batch.events,
                  self._ttl)
        try:
            self._session_of().execute(self._insert.get(), values, timeout=self._timeout)
        except Exception as exc:  # the driver's errors have no common base beyond Exception
            raise TransientError(f"noting delayed batch {batch.partition}/{batch.first_sequence} (oldest enqueued "
                                 f"{batch.oldest_enqueued.isoformat()}) failed: {type(exc).__name__}: {exc}") from exc
