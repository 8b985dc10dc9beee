"""``CassandraEventStore``: every valid event into every event table, idempotently.

Each event becomes upserts keyed by its event id (events_by_id, events_by_device,
the two time-bucketed tables, critical_events_by_device when critical) plus one
write of ``device_latest``, the device's *position*: which event is its newest
(``event_id``, ``event_time``), written ``USING TIMESTAMP`` the event time, so the
newest event wins whatever the arrival order and a replay changes nothing. Within
the same millisecond the timestamp's last three digits grow with the event id.
Readers take the event's content from ``events_by_id`` by that id
(``shared.adapters.cassandra.reader``): two writes with one timestamp (an event
and its correction, re-sent under its id; two events of one device in one
millisecond whose ids give the same three digits) are resolved by Cassandra cell
by cell, by the greater value, so content columns written there would mix the two
copies into a state no device sent, while the position cannot mix (the event time
is the same, the event id one of the two) and ``events_by_id``, written with
ordinary timestamps, holds the later copy. ``device_latest`` is written after
every other row of the batch is acknowledged, so it never names an event
``events_by_id`` lacks; its content columns (still in the schema) are no longer
written. Of a batch only each device's newest event writes ``device_latest``.

Statements are prepared on first use (not in ``__init__``) and marked
idempotent. Every statement is a selection of one event's values (``_VALUES``),
and the payload (measurements, attributes, Event Hubs metadata) goes into four
or five tables. On a driver version ``shared.adapters.cassandra.fast_bind`` was
verified on, each value is serialized once per event, by the column type the
driver reads from the prepared metadata, and its bytes are shared by every
statement that carries it (``PreparedStatement.bind`` would serialize the
measurements map once per table); on any other version, or with
``fast_bind=False``, the driver binds the statements through its public API.
Writes go out concurrently (``query.execute_all``) in UNLOGGED batches of at
most ``batch_rows`` rows. With ``batching="mixed"`` (Cosmos DB) a batch takes any
rows, in event order: Cosmos DB still runs and charges each row as its own
operation, and the driver spends about as much on one batch of 32 rows as on three
or four single-row requests. With ``batching="partition"`` (Apache Cassandra) only rows of
one partition (one device-day of ``events_by_device``, one device of
``device_latest``, one bucket and shard of the time-bucketed tables) share a
batch: one partition is one mutation, so the batch costs the server nothing extra
and saves a request per row. Throttling is retried by the session's
``CosmosRetryPolicy``; what still fails raises ``TransientError`` naming the
events concerned.
"""

from __future__ import annotations

import logging
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, cast

from cassandra.cluster import Session
from cassandra.query import BatchStatement, BatchType, PreparedStatement

from shared.adapters.cassandra import fast_bind as fast_path
from shared.adapters.cassandra.codec import Serializer, serializer
from shared.adapters.cassandra.layout import bucket_start_millis, day_of_millis, shard_of
from shared.adapters.cassandra.query import execute_all
from shared.domain.events import Event
from shared.domain.rules import Criticality, MeasurementRule
from shared.domain.times import to_ms
from shared.exceptions import ConfigurationError, TransientError
from shared.lazy import Once
from shared.settings import CassandraSettings

logger = logging.getLogger(__name__)

_PAYLOAD = ("event_type", "severity", "critical", "measurements", "attributes", "schema_version",
            "eh_partition", "eh_offset", "eh_sequence_number", "enqueued_time")
# One event's values, in the order ``_values`` returns them; a column of the same name holds the value.
_VALUES = ("event_id", "device_id", "event_time", "day", "time_bucket", "shard", "arrival_bucket", "arrival",
           "write_timestamp", *_PAYLOAD)
_INDEX = {name: i for i, name in enumerate(_VALUES)}

Values = list[Any]  # one event's values, in ``_VALUES`` order
Serialized = list[bytes | None]  # the same, serialized for the wire
Row = tuple[Values, Serialized | None]  # a row to plan: serialized on the fast bind path, else None
Work = tuple[Any, Sequence[Any]]  # (statement, parameters) for query.execute_all
Plan = tuple[list[Work], list[tuple[uuid.UUID, ...]]]  # the work, and for each request the event ids it carries


@dataclass(frozen=True)
class _Insert:
    """One INSERT: its table and, per column, the value of ``_VALUES`` it takes (the column's name by default)."""

    table: str
    columns: tuple[str, ...]
    values: dict[str, str]
    using_timestamp: str | None = None

    def cql(self, keyspace: str) -> str:
        marks = ", ".join("?" * len(self.columns))
        using = " USING TIMESTAMP ?" if self.using_timestamp else ""
        return f"INSERT INTO {keyspace}.{self.table} ({', '.join(self.columns)}) VALUES ({marks}){using}"

    def picks(self) -> tuple[int, ...]:
        """The position in ``_VALUES`` of each bind variable."""
        names = [self.values.get(c, c) for c in self.columns] + ([self.using_timestamp] if self.using_timestamp else [])
        return tuple(_INDEX[name] for name in names)


_INSERTS = {
    "by_id": _Insert("events_by_id", ("event_id", "device_id", "event_time", *_PAYLOAD), {}),
    "by_device": _Insert("events_by_device", ("device_id", "day", "event_time", "event_id", *_PAYLOAD), {}),
    # The position only: which event is the device's newest. Its content is read from events_by_id (see the
    # module docstring): content cells written with a shared timestamp would mix two copies of an event.
    "latest": _Insert("device_latest", ("device_id", "event_id", "event_time"), {}, using_timestamp="write_timestamp"),
    "by_time": _Insert("events_by_time_bucket", ("bucket", "shard", "event_time", "event_id", "device_id", *_PAYLOAD),
                       {"bucket": "time_bucket"}),
    "by_arrival": _Insert("events_by_arrival_bucket",
                          ("bucket", "shard", "enqueued_at", "event_id", "device_id", "event_time", *_PAYLOAD),
                          {"bucket": "arrival_bucket", "enqueued_at": "arrival"}),
    "critical": _Insert("critical_events_by_device", ("device_id", "event_time", "event_id", *_PAYLOAD), {}),
}


def write_timestamp(event: Event) -> int:
    """Microseconds for ``USING TIMESTAMP``: the event time in ms, then 3 digits from the event id."""
    return _write_timestamp(to_ms(event.timestamp), event.event_id)


def _write_timestamp(millis: int, event_id: uuid.UUID) -> int:
    # The digits grow with the event id (its leading bits, scaled to 0-999), so within a millisecond the greater
    # event id wins, as everywhere else (Redis's sort key, the lookups, enrichment's `last`).
    return millis * 1000 + (event_id.int * 1000 >> 128)


@dataclass(frozen=True)
class _Prepared:
    """A prepared INSERT and where its bind variables and its partition key come from."""

    statement: PreparedStatement
    picks: tuple[int, ...]
    # The bind variables of one event's values (a tuple: every INSERT has several columns), and its partition
    # key (a tuple, or the value itself for a one-column key: either serves as a dictionary key).
    _pick: itemgetter[Any] = field(init=False, repr=False, compare=False)
    partition: itemgetter[Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The partition key's bind variables, as the server's prepared metadata gives them; without them (a server
        # that does not say) the whole row is the key, so no two rows share a batch.
        key = self.statement.routing_key_indexes or range(len(self.picks))
        object.__setattr__(self, "_pick", itemgetter(*self.picks))
        object.__setattr__(self, "partition", itemgetter(*(self.picks[i] for i in key)))

    def pair(self, values: Values, serialized: Serialized | None) -> Work:
        """``(statement, parameters)`` for ``query.execute_all`` and ``BatchStatement.add``.

        With ``serialized`` bytes: a statement bound as ``PreparedStatement.bind``
        would bind it, and no parameters; without: the prepared statement and its
        parameters, for the driver to bind.
        """
        pick = self._pick
        if serialized is None:
            return self.statement, list(pick(values))
        return fast_path.bound(self.statement, pick(serialized), pick(values)), ()

    def add_to(self, batch: BatchStatement, rows: list[Row]) -> None:
        """Append this INSERT for ``rows`` (each ``(values, serialized)``, as :meth:`pair` takes them) to ``batch``.

        The first row goes in through ``BatchStatement.add``, which gives the
        batch its routing key and keyspace (if it has none yet) and this
        statement's custom payload. Serialized rows after it go in through
        :func:`fast_path.add_rows`; unbound ones through ``add``.
        """
        (values, serialized), *rest = rows
        batch.add(*self.pair(values, serialized))
        if serialized is None:  # unbound rows, for the driver to bind: only ``add`` does that
            for values, serialized in rest:
                batch.add(*self.pair(values, serialized))
            return
        pick = self._pick
        fast_path.add_rows(batch, self.statement, (pick(cast(Serialized, serialized)) for _, serialized in rest))


def _unlogged() -> BatchStatement:
    batch = BatchStatement(batch_type=BatchType.UNLOGGED)
    batch.is_idempotent = True
    return batch


class CassandraEventStore:
    """Implements ``shared.ports.ingest.EventStore`` on Cassandra / Cosmos DB."""

    def __init__(self, session: Session, settings: CassandraSettings, rules: Sequence[MeasurementRule] = (), *,
                 fast_bind: bool = True) -> None:
        """``fast_bind=False`` always binds through the driver's public API (the reference the binding test uses)."""
        self._fast_bind = fast_bind and fast_path.SUPPORTED
        self._session = session
        self._settings = settings
        self._critical = Criticality(rules)
        self._statements = Once(self._prepare)

    def _prepare(self) -> _Statements:
        prepared = {}
        for name, insert in _INSERTS.items():
            statement = self._session.prepare(insert.cql(self._settings.keyspace))
            statement.is_idempotent = True
            prepared[name] = _Prepared(statement, insert.picks())
        return _Statements.of(prepared)

    def write(self, events: Sequence[Event]) -> None:
        """Every row of ``events``; ``device_latest`` only once every other row is written.

        ``device_latest`` names an event whose content readers take from
        ``events_by_id``: written after it, it never names an event that table lacks
        (a batch that fails part way is retried whole, or dead-lettered without having
        moved any device's position).
        """
        if not events:
            return
        for work, owners in self.plan_phases(events):
            self._execute(work, owners)

    def _execute(self, work: list[Work], owners: list[tuple[uuid.UUID, ...]]) -> None:
        results = execute_all(self._session, work, concurrency=self._settings.write_concurrency)
        failures = [(owner, result) for (ok, result), owner in zip(results, owners, strict=True) if not ok]
        if failures:
            ids = sorted({str(event_id) for event_ids, _ in failures for event_id in event_ids})
            first = failures[0][1]
            raise TransientError(
                f"{len(failures)} of {len(work)} Cassandra writes failed for {len(ids)} events "
                f"(first: {type(first).__name__}: {first}); event ids: {', '.join(ids[:20])}"
                + (" ..." if len(ids) > 20 else "")
            )

    def plan(self, events: Sequence[Event]) -> Plan:
        """The (statement, parameters) pairs that store ``events``, and for each the event ids it carries.

        On the fast bind path every statement comes back bound, with empty
        parameters; on the public path, as prepared statement and parameter list,
        for the driver to bind. Rows are grouped into batches as
        ``SLUICE_CASSANDRA_BATCHING`` says: ``mixed``, any rows; ``partition``,
        only rows of one partition. The ``device_latest`` rows come last, in
        requests of their own (:meth:`plan_phases`).
        """
        (work, owners), (latest_work, latest_owners) = self.plan_phases(events)
        return work + latest_work, owners + latest_owners

    def plan_phases(self, events: Sequence[Event]) -> tuple[Plan, Plan]:
        """:meth:`plan` in its two phases: every table but ``device_latest``, then ``device_latest``."""
        statements = self._statements.get()
        bind = self._fast_bind and statements.serializable
        serialize = statements.serialize
        rows: list[Row] = []
        for event in events:
            values = self._values(event)
            rows.append((values, serialize(values, event) if bind else None))
        event_ids = [values[_EVENT_ID] for values, _ in rows]
        newest = sorted(_newest_per_device(rows))
        if self._settings.batching == "mixed":
            return self._plan_mixed(statements, rows, event_ids, newest)
        return self._plan_by_partition(statements, rows, event_ids, newest)

    def _plan_mixed(self, statements: _Statements, rows: list[Row], event_ids: list[uuid.UUID],
                    newest: list[int]) -> tuple[Plan, Plan]:
        """Every row in event order, cut into requests of ``batch_rows`` rows whatever their tables and partitions.

        On Cosmos DB each row of a batch is still its own operation, charged its own
        request units; the batch saves the client (and the network) a request per row,
        which is most of what a write costs the driver. An event's rows mostly share a
        batch, so a failed batch names few events. The ``device_latest`` rows are cut
        the same way after the others, into requests of their own.
        """
        inserts = statements.inserts
        tables = [inserts[name] for name in ("by_id", "by_time", "by_arrival", "by_device")]
        critical = inserts["critical"]
        order: list[tuple[_Prepared, int]] = []
        for position, (values, _) in enumerate(rows):
            order.extend((insert, position) for insert in tables)
            if values[_CRITICAL]:
                order.append((critical, position))
        latest = inserts["latest"]
        return (self._cut(order, rows, event_ids),
                self._cut([(latest, position) for position in newest], rows, event_ids))

    def _cut(self, order: list[tuple[_Prepared, int]], rows: list[Row],
             event_ids: list[uuid.UUID]) -> Plan:
        work: list[Work] = []
        owners: list[tuple[uuid.UUID, ...]] = []
        size = self._settings.batch_rows
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            if len(chunk) == 1:
                insert, position = chunk[0]
                work.append(insert.pair(*rows[position]))
            else:
                # The rows of one INSERT follow each other in the batch. Order within an unlogged batch changes
                # nothing: every row is an upsert of its own key, device_latest's decided by its write timestamp.
                by_insert: dict[bytes, tuple[_Prepared, list[Row]]] = {}
                for insert, position in chunk:
                    by_insert.setdefault(insert.statement.query_id, (insert, []))[1].append(rows[position])
                batch = _unlogged()
                for insert, members in by_insert.values():
                    insert.add_to(batch, members)
                work.append((batch, ()))
            owners.append(tuple(dict.fromkeys(event_ids[position] for _, position in chunk)))
        return work, owners

    def _plan_by_partition(self, statements: _Statements, rows: list[Row], event_ids: list[uuid.UUID],
                           newest: list[int]) -> tuple[Plan, Plan]:
        """events_by_id row by row, every other table's rows in batches of one partition each; device_latest
        (one row per device: only each device's newest event writes it) after them."""
        by_id = statements.inserts["by_id"]
        # Every other table groups its rows by partition: per table, partition key -> the positions of the events
        # whose rows it holds, in the order the events came. events_by_id has one row per partition (event ids are
        # unique in a batch), so it is not grouped.
        tables: list[tuple[_Prepared, dict[Any, list[int]]]] = [
            (statements.inserts[name], {}) for name in ("by_time", "by_arrival", "by_device")]
        critical: tuple[_Prepared, dict[Any, list[int]]] = (statements.inserts["critical"], {})
        work: list[Work] = []
        owners: list[tuple[uuid.UUID, ...]] = []
        for position, row in enumerate(rows):
            values = row[0]
            work.append(by_id.pair(*row))
            owners.append((values[_EVENT_ID],))
            for insert, partitions in (*tables, *((critical,) if values[_CRITICAL] else ())):
                key = insert.partition(values)
                members = partitions.get(key)
                if members is None:
                    partitions[key] = [position]
                else:
                    members.append(position)
        # Cassandra applies a single-partition batch as one mutation (no batch-size warning or failure threshold
        # applies to it, CASSANDRA-10876); the cap keeps requests small enough to spread over the connection pool,
        # and a throttled one cheap to retry.
        size = self._settings.batch_rows
        for insert, partitions in (*tables, critical):
            for members in partitions.values():
                for start in range(0, len(members), size):
                    chunk = members[start:start + size]
                    if len(chunk) == 1:
                        work.append(insert.pair(*rows[chunk[0]]))
                    else:
                        batch = _unlogged()
                        insert.add_to(batch, [rows[position] for position in chunk])
                        work.append((batch, ()))
                    owners.append(tuple(map(event_ids.__getitem__, chunk)))
        latest = statements.inserts["latest"]
        return (work, owners), ([latest.pair(*rows[position]) for position in newest],
                                [(event_ids[position],) for position in newest])

    def _values(self, event: Event) -> Values:
        """The event's values in ``_VALUES`` order: keys, buckets, write timestamp, then the payload.

        Timestamps are whole milliseconds since the epoch, which is what Cassandra
        keeps and how the driver binds an int to a timestamp column: every table's
        key holds the same millisecond, and buckets and days are integer arithmetic.
        """
        body, meta, cfg = event.body, event.metadata, self._settings
        event_id = body.event_id
        at = to_ms(body.timestamp)
        enqueued = None if meta.enqueued_time is None else to_ms(meta.enqueued_time)
        arrival = at if enqueued is None else enqueued
        return [
            event_id,
            body.device_id,
            at,
            day_of_millis(at),
            bucket_start_millis(at, cfg.bucket_seconds),
            shard_of(event_id, cfg.shards),
            bucket_start_millis(arrival, cfg.bucket_seconds),
            arrival,
            _write_timestamp(at, event_id),
            body.event_type,
            body.severity,
            self._critical(body.severity, body.measurements),
            body.measurements or None,
            body.attributes or None,
            body.schema_version,
            meta.partition_id,
            meta.offset,
            meta.sequence_number,
            enqueued,
        ]


_CRITICAL = _INDEX["critical"]
_EVENT_ID = _INDEX["event_id"]
_DEVICE_ID = _INDEX["device_id"]
_WRITE_TIMESTAMP = _INDEX["write_timestamp"]


def _newest_per_device(rows: list[Row]) -> set[int]:
    """The position of each device's newest event (write timestamp, then event id): the only ``device_latest``
    row of the batch worth writing. An older one would lose to it anyway (or, of one millisecond with the same
    three digits, share its timestamp and leave the winner to Cassandra's tie rule)."""
    newest: dict[str, tuple[int, int, int]] = {}
    for position, (values, _) in enumerate(rows):
        key = (values[_WRITE_TIMESTAMP], values[_EVENT_ID].int, position)
        best = newest.get(values[_DEVICE_ID])
        if best is None or key > best:
            newest[values[_DEVICE_ID]] = key
    return {position for _, _, position in newest.values()}


@dataclass(frozen=True)
class _Statements:
    """The prepared INSERTs, and a serializer for each of an event's values, by the prepared metadata's CQL type."""

    inserts: dict[str, _Prepared]
    types: tuple[Any, ...]  # the driver's CQL type classes
    serializers: tuple[Serializer, ...]
    serializable: bool

    @classmethod
    def of(cls, inserts: dict[str, _Prepared]) -> _Statements:
        types: dict[int, Any] = {}
        for name, prepared in inserts.items():
            for pick, column in zip(prepared.picks, prepared.statement.column_metadata, strict=True):
                known = types.setdefault(pick, column.type)
                if known.cql_parameterized_type() != column.type.cql_parameterized_type():
                    raise ConfigurationError(
                        f"{_VALUES[pick]} is {known.cql_parameterized_type()} in one table and "
                        f"{column.type.cql_parameterized_type()} in {_INSERTS[name].table}: the keyspace's schema is "
                        "not the one `python -m sluice migrate cassandra` creates")
        protocol_version = next(iter(inserts.values())).statement.protocol_version
        ordered = tuple(types[i] for i in range(len(_VALUES)))
        # Encrypted columns are left to the driver, which knows how to encrypt them.
        serializable = all(p.statement.column_encryption_policy is None for p in inserts.values())
        return cls(inserts, ordered, tuple(serializer(t, protocol_version) for t in ordered), serializable)

    def serialize(self, values: Values, event: Event) -> Serialized:
        """Each value's bytes as the driver's ``bind`` would make them (``None`` stays null)."""
        try:
            return [None if value is None else serialize(value)
                    for value, serialize in zip(values, self.serializers, strict=True)]
        except (AttributeError, TypeError, struct.error):
            for name, value, serialize, cql_type in zip(_VALUES, values, self.serializers, self.types, strict=True):
                try:
                    if value is not None:
                        serialize(value)
                except (AttributeError, TypeError, struct.error) as exc:
                    raise TypeError(f"event {event.event_id}: {name} {value!r} is not a "
                                    f"{cql_type.cql_parameterized_type()} ({exc})") from exc
            raise
