"""``CassandraEventStore``: every valid event into every event table, idempotently.

Each event becomes upserts keyed by its event id (events_by_id, events_by_device,
the two time-bucketed tables, critical_events_by_device when critical) plus one
write of ``device_latest`` whose write timestamp is the event time, so the newest
event wins whatever the arrival order and a replay changes nothing. Within the
same millisecond the timestamp's last three digits come from the event id, so
two events of one device in one millisecond never mix their cells.

Statements are prepared on first use (not in ``__init__``) and marked
idempotent; writes go out concurrently (``execute_concurrent``), and events of one
``events_by_device`` partition share an UNLOGGED batch (one partition, so the
batch costs nothing extra). Throttling is retried by the session's
``CosmosRetryPolicy``; what still fails raises ``TransientError`` naming the
events concerned.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent
from cassandra.query import BatchStatement, BatchType, PreparedStatement

from shared.domain.events import Event
from shared.domain.rules import MeasurementRule, is_critical
from shared.domain.timebuckets import bucket_start, day_of, shard_of
from shared.exceptions import TransientError
from shared.settings import CassandraSettings

logger = logging.getLogger(__name__)

_PAYLOAD = (
    "event_type, severity, critical, measurements, attributes, schema_version, "
    "eh_partition, eh_offset, eh_sequence_number, enqueued_time"
)
_STATEMENTS = {
    "by_id": f"INSERT INTO {{ks}}.events_by_id (event_id, device_id, event_time, {_PAYLOAD}) VALUES (?, ?, ?, {', '.join('?' * 10)})",
    "by_device": f"INSERT INTO {{ks}}.events_by_device (device_id, day, event_time, event_id, {_PAYLOAD}) VALUES (?, ?, ?, ?, {', '.join('?' * 10)})",
    "latest": f"INSERT INTO {{ks}}.device_latest (device_id, event_id, event_time, {_PAYLOAD}) VALUES (?, ?, ?, {', '.join('?' * 10)}) USING TIMESTAMP ?",
    "by_time": f"INSERT INTO {{ks}}.events_by_time_bucket (bucket, shard, event_time, event_id, device_id, {_PAYLOAD}) VALUES (?, ?, ?, ?, ?, {', '.join('?' * 10)})",
    "by_arrival": f"INSERT INTO {{ks}}.events_by_arrival_bucket (bucket, shard, enqueued_at, event_id, device_id, event_time, {_PAYLOAD}) VALUES (?, ?, ?, ?, ?, ?, {', '.join('?' * 10)})",
    "critical": f"INSERT INTO {{ks}}.critical_events_by_device (device_id, event_time, event_id, {_PAYLOAD}) VALUES (?, ?, ?, {', '.join('?' * 10)})",
}


def write_timestamp(event: Event) -> int:
    """Microseconds for ``USING TIMESTAMP``: the event time in ms, then 3 digits from the event id."""
    millis = int(event.timestamp.timestamp() * 1000)
    return millis * 1000 + event.event_id.int % 1000


def _millis(moment: datetime) -> datetime:
    """Cassandra keeps milliseconds; truncating here keeps every table's key identical."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


class CassandraEventStore:
    """Implements ``shared.ports.ingest.EventStore`` on Cassandra / Cosmos DB."""

    def __init__(self, session: Session, settings: CassandraSettings, rules: Sequence[MeasurementRule] = ()) -> None:
        self._session = session
        self._settings = settings
        self._rules = tuple(rules)
        self._prepared: dict[str, PreparedStatement] | None = None
        self._lock = threading.Lock()

    def _statements(self) -> dict[str, PreparedStatement]:
        if self._prepared is None:
            with self._lock:
                if self._prepared is None:
                    prepared = {}
                    for name, cql in _STATEMENTS.items():
                        statement = self._session.prepare(cql.format(ks=self._settings.keyspace))
                        statement.is_idempotent = True
                        prepared[name] = statement
                    self._prepared = prepared
        return self._prepared

    def write(self, events: Sequence[Event]) -> None:
        if not events:
            return
        work, owners = self.plan(events)
        results = execute_concurrent(
            self._session, work, concurrency=self._settings.write_concurrency, raise_on_first_error=False
        )
        failures = [(owner, result) for (ok, result), owner in zip(results, owners, strict=True) if not ok]
        if failures:
            ids = sorted({str(event_id) for event_ids, _ in failures for event_id in event_ids})
            first = failures[0][1]
            raise TransientError(
                f"{len(failures)} of {len(work)} Cassandra writes failed for {len(ids)} events "
                f"(first: {type(first).__name__}: {first}); event ids: {', '.join(ids[:20])}"
                + (" ..." if len(ids) > 20 else "")
            )

    def plan(self, events: Sequence[Event]) -> tuple[list[tuple], list[tuple]]:
        """The (statement, parameters) pairs that store ``events``, and for each the event ids it carries."""
        prepared = self._statements()
        cfg = self._settings
        work: list[tuple] = []
        owners: list[tuple] = []
        by_partition: dict[tuple, list[tuple]] = defaultdict(list)
        for event in events:
            body, meta = event.body, event.metadata
            event_time = _millis(body.timestamp)
            arrival = _millis(event.arrival_time.astimezone(UTC))
            critical = is_critical(body.severity, body.measurements, self._rules)
            payload = (
                body.event_type, body.severity, critical, body.measurements or None, body.attributes or None,
                body.schema_version, meta.partition_id, meta.offset, meta.sequence_number,
                _millis(meta.enqueued_time) if meta.enqueued_time else None,
            )
            shard = shard_of(body.event_id, cfg.shards)
            own = (body.event_id,)
            work += [
                (prepared["by_id"], (body.event_id, body.device_id, event_time, *payload)),
                (prepared["latest"], (body.device_id, body.event_id, event_time, *payload, write_timestamp(event))),
                (prepared["by_time"], (bucket_start(event_time, cfg.bucket_seconds), shard, event_time, body.event_id, body.device_id, *payload)),
                (prepared["by_arrival"], (bucket_start(arrival, cfg.bucket_seconds), shard, arrival, body.event_id, body.device_id, event_time, *payload)),
            ]
            owners += [own] * 4
            if critical:
                work.append((prepared["critical"], (body.device_id, event_time, body.event_id, *payload)))
                owners.append(own)
            by_partition[(body.device_id, day_of(event_time))].append(
                (body.event_id, (body.device_id, day_of(event_time), event_time, body.event_id, *payload))
            )
        for rows in by_partition.values():
            if len(rows) == 1:
                work.append((prepared["by_device"], rows[0][1]))
            else:
                batch = BatchStatement(batch_type=BatchType.UNLOGGED)
                batch.is_idempotent = True
                for _, params in rows:
                    batch.add(prepared["by_device"], params)
                work.append((batch, ()))
            owners.append(tuple(event_id for event_id, _ in rows))
        return work, owners
