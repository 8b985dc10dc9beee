"""The event store's fast bind path (``shared.adapters.cassandra.fast_bind``: each value serialized once per event).

These tests hold that shortcut to the driver: for every statement of a plan, the
bytes, routing key and batch children equal what ``PreparedStatement.bind`` makes
of the same parameters, and rows written through it read back as the values
that went in.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import cassandra
import pytest
from cassandra import OperationTimedOut
from cassandra.cluster import Session
from cassandra.query import BatchStatement, BoundStatement

from shared.adapters.cassandra import event_store as event_store_module
from shared.adapters.cassandra import fast_bind
from shared.adapters.cassandra.event_store import CassandraEventStore, write_timestamp
from shared.adapters.cassandra.layout import bucket_start, shard_of
from shared.adapters.cassandra.migrations import apply_migrations
from shared.adapters.cassandra.reader import CassandraEventReader
from shared.adapters.cassandra.session import connect
from shared.adapters.cassandra.window_reader import CassandraWindowReader
from shared.domain.events import DeviceEvent, Event, EventMetadata
from shared.domain.rules import MeasurementRule
from shared.domain.times import rfc3339
from shared.exceptions import TransientError
from shared.settings import CassandraSettings
from sluice.launcher import Running

pytestmark = pytest.mark.timeout(120)

NOW = datetime.now(UTC).replace(microsecond=123456)
RULES = [MeasurementRule(measurement="temperature", op=">", value=90)]


def open_store(emulator: Running, batching: str) -> tuple[Session, CassandraEventStore]:
    """A store in its own keyspace (the tests write the same devices and times), batching as given."""
    settings = CassandraSettings(hosts=[emulator.host], port=emulator.port, keyspace=f"ks_{uuid.uuid4().hex[:12]}",
                                 shards=4, batching=batching)
    session = connect(settings)
    apply_migrations(session, settings)
    return session, CassandraEventStore(session, settings, RULES)


@pytest.fixture(scope="module", params=["mixed", "partition"])
def store(cassandra_emulator: Running, request) -> Iterator[tuple[Session, CassandraEventStore]]:
    """The store in each batching mode (``mixed``, the default, and ``partition``)."""
    session, event_store = open_store(cassandra_emulator, request.param)
    yield session, event_store
    session.cluster.shutdown()


@pytest.fixture(scope="module")
def partition_store(cassandra_emulator: Running) -> Iterator[tuple[Session, CassandraEventStore]]:
    session, event_store = open_store(cassandra_emulator, "partition")
    yield session, event_store
    session.cluster.shutdown()


@pytest.fixture(scope="module")
def mixed_store(cassandra_emulator: Running) -> Iterator[tuple[Session, CassandraEventStore]]:
    session, event_store = open_store(cassandra_emulator, "mixed")
    yield session, event_store
    session.cluster.shutdown()


def events() -> list[Event]:
    """Events that exercise every column: empty maps, missing metadata, critical by rule, one partition twice."""
    def make(device: str, seconds: int, measurements: dict, attributes: dict, meta: EventMetadata, **fields) -> Event:
        body = DeviceEvent.model_validate({
            "event_id": str(uuid.uuid4()), "device_id": device, "event_type": "reading",
            "timestamp": (NOW - timedelta(seconds=seconds)).isoformat(), "measurements": measurements,
            "attributes": attributes, **fields})
        return Event(body, meta)

    full = EventMetadata(partition_id="3", offset="4096", sequence_number=2**40, enqueued_time=NOW,
                         partition_key="dev-a")
    return [
        make("dev-a", 1, {"temperature": 21.5, "humidity": 40.0}, {"site": "north", "fw": "4.2"}, full),
        make("dev-a", 2, {"temperature": 95.0}, {}, full),  # critical by rule; same partition as the first
        make("dev-b", 3, {}, {}, EventMetadata(), severity="critical"),  # no Event Hubs metadata at all
        make("dev-c", 86_400 * 3, {"v": -0.0, "w": 1e308}, {"k": "é ✓"}, full, severity="warning"),
        # sequence number 1 is the very int object of schema_version 1: bigint and int must not share bytes
        make("dev-d", 4, {"t": 1.0}, {}, EventMetadata(partition_id="0", offset="0", sequence_number=1,
                                                       enqueued_time=NOW - timedelta(hours=2))),
    ]


def flatten(work: list[tuple]) -> list:
    """Every bound statement of a plan, batch children in place of their batch."""
    out = []
    for statement, params in work:
        assert params == ()
        if isinstance(statement, BatchStatement):
            out.append(
                (
                    "batch",
                    statement.routing_key,
                    statement.keyspace,
                    [
                        (prepared, query, list(values))
                        for prepared, query, values in statement._statements_and_parameters
                    ],
                )
            )
        else:
            assert isinstance(statement, BoundStatement)
            out.append((statement.prepared_statement.query_id, list(statement.values), list(statement.raw_values),
                        statement.routing_key, statement.keyspace, statement.is_idempotent))
    return out


def driver_store(store: CassandraEventStore) -> CassandraEventStore:
    """The same store on the driver's public bind path (the reference)."""
    return CassandraEventStore(store._session, store._settings, RULES, fast_bind=False)


def driver_bound(work: list[tuple]) -> list:
    """The same plan bound by the driver: ``PreparedStatement.bind`` for each statement and batch child."""
    out = []
    for statement, params in work:
        if isinstance(statement, BatchStatement):
            out.append(("batch", statement.routing_key, statement.keyspace,
                        list(statement._statements_and_parameters)))
        else:
            bound = statement.bind(params)
            out.append((bound.prepared_statement.query_id, bound.values, list(bound.raw_values), bound.routing_key,
                        bound.keyspace, bound.is_idempotent))
    return out


def test_each_statement_carries_the_bytes_the_driver_would_bind(store) -> None:
    _, event_store = store
    batch = events()
    ours, our_owners = event_store.plan(batch)
    drivers, driver_owners = driver_store(event_store).plan(batch)
    assert our_owners == driver_owners
    assert flatten(ours) == driver_bound(drivers)


def rows_of(batch: list[Event], settings: CassandraSettings) -> list[tuple]:
    """Each row the events make, as (table, partition key), computed here from the events, in event order: of
    device_latest, only each device's newest event's (write timestamp, then event id)."""
    newest = {e.body.device_id: e for e in sorted(batch, key=lambda e: (write_timestamp(e), e.event_id.int))}
    rows = []
    for event in batch:
        body, meta = event.body, event.metadata
        at = body.timestamp.replace(microsecond=body.timestamp.microsecond // 1000 * 1000)
        arrival = (meta.enqueued_time or at).replace(microsecond=(meta.enqueued_time or at).microsecond // 1000 * 1000)
        shard = shard_of(body.event_id, settings.shards)
        rows += [("by_id", body.event_id), *([("latest", body.device_id)] if newest[body.device_id] is event else []),
                 ("by_time", bucket_start(at, settings.bucket_seconds), shard),
                 ("by_arrival", bucket_start(arrival, settings.bucket_seconds), shard),
                 ("by_device", body.device_id, at.date())]
        if body.severity == "critical" or body.measurements.get("temperature", 0) > 90:
            rows.append(("critical", body.device_id))
    return rows


def test_partition_batching_sends_one_request_per_table_and_partition(partition_store) -> None:
    _, event_store = partition_store
    batch = events()
    ours, _ = event_store.plan(batch)
    partitions: dict[tuple, int] = {}
    for key in rows_of(batch, event_store._settings):
        partitions[key] = partitions.get(key, 0) + 1
    assert len(ours) == len(partitions)
    batches = [s for s, _ in ours if isinstance(s, BatchStatement)]
    assert sorted(len(b._statements_and_parameters) for b in batches) == sorted(n for n in partitions.values() if n > 1)
    assert len(batches) >= 1  # dev-a's two events share their device-day (device_latest takes the newest only)


def test_the_installed_driver_takes_the_fast_path_and_any_other_version_the_public_one(
        partition_store, monkeypatch) -> None:
    """A driver upgrade lands on the public path until this module's tests pass on it and the version is added."""
    session, event_store = partition_store
    assert fast_bind.SUPPORTED, f"cassandra-driver {cassandra.__version__} is not in VERIFIED_DRIVER_VERSIONS"
    [first, *_] = event_store.plan(events())[0]
    assert isinstance(first[0], BoundStatement) and first[1] == ()
    monkeypatch.setattr(fast_bind, "SUPPORTED", False)
    other = CassandraEventStore(session, event_store._settings, RULES)
    work, _ = other.plan(events())
    assert all(not isinstance(statement, BoundStatement) and (isinstance(statement, BatchStatement) or params)
               for statement, params in work)


def test_rows_written_through_the_binder_read_back_as_the_events(store) -> None:
    session, event_store = store
    batch = events()
    event_store.write(batch)
    keyspace = event_store._settings.keyspace
    for event in batch:
        row = session.execute(f"SELECT * FROM {keyspace}.events_by_id WHERE event_id = %s", (event.event_id,)).one()
        body, meta = event.body, event.metadata
        assert row.device_id == body.device_id
        assert row.event_time == body.timestamp.replace(microsecond=body.timestamp.microsecond // 1000 * 1000,
                                                        tzinfo=None)
        assert (row.measurements or {}) == body.measurements and (row.attributes or {}) == body.attributes
        assert row.critical == (body.severity == "critical" or body.measurements.get("temperature", 0) > 90)
        assert (row.eh_partition, row.eh_offset, row.eh_sequence_number) == (
            meta.partition_id, meta.offset, meta.sequence_number)
        event_time = row.event_time.replace(tzinfo=UTC)
        arrival = (meta.enqueued_time or body.timestamp).replace(microsecond=0)  # whole seconds: same bucket
        shard = shard_of(body.event_id, event_store._settings.shards)
        seconds = event_store._settings.bucket_seconds
        for table, moment, column in (("events_by_time_bucket", event_time, "event_time"),
                                      ("events_by_arrival_bucket", arrival, "enqueued_at")):
            found = session.execute(
                f"SELECT event_id, {column} FROM {keyspace}.{table} WHERE bucket = %s AND shard = %s",
                (bucket_start(moment, seconds), shard),
            ).all()
            assert event.event_id in {r.event_id for r in found}, (table, event.device_id)
    latest = {r.device_id: r for r in session.execute(
        f"SELECT device_id, event_id, writetime(event_id) AS written, severity, measurements FROM "
        f"{keyspace}.device_latest")}
    newest_a = max(batch[:2], key=lambda e: e.timestamp)
    assert latest["dev-a"].event_id == newest_a.event_id
    assert latest["dev-a"].written == write_timestamp(newest_a)
    # The position only: readers take the content from events_by_id (reader.py)
    assert all(r.severity is None and r.measurements is None for r in latest.values())
    by_device = session.execute(f"SELECT event_id FROM {keyspace}.events_by_device WHERE device_id = 'dev-a' "
                                f"AND day = %s", (NOW.date(),)).all()
    assert {r.event_id for r in by_device} == {batch[0].event_id, batch[1].event_id}


def test_mixed_batching_cuts_every_row_in_event_order_into_capped_batches(mixed_store) -> None:
    """Any tables and partitions share a batch; every row is planned once; a batch names only its own events."""
    _, event_store = mixed_store
    batch = events() + events() + events()  # 15 events, 6 critical: 81 rows
    expected = rows_of(batch, event_store._settings)
    small = CassandraEventStore(event_store._session, event_store._settings.model_copy(update={"batch_rows": 8}), RULES)
    work, owners = small.plan(batch)
    sizes = [len(s._statements_and_parameters) if isinstance(s, BatchStatement) else 1 for s, _ in work]
    latest = [name for name, *_ in expected].count("latest")  # cut on their own, after the others
    rest = len(expected) - latest
    assert latest < 8 and sizes == [8] * (rest // 8) + [rest % 8] + [latest]
    names = {small._statements.get().inserts[name].statement.query_id: name for name in
             ("by_id", "latest", "by_time", "by_arrival", "by_device", "critical")}
    planned = []
    for (statement, _), owner in zip(work, owners, strict=True):
        children = ([(names[query_id], values) for _, query_id, values in statement._statements_and_parameters]
                    if isinstance(statement, BatchStatement)
                    else [(names[statement.prepared_statement.query_id], statement.values)])
        tables = {name for name, _ in children}
        event_ids = {uuid.UUID(bytes=values[_event_id_column(name)]) for name, values in children}
        assert set(owner) == event_ids
        if tables != {"latest"}:
            assert "latest" not in tables and (len(tables) > 1 or len(children) == 1)  # tables mixed in one request
            assert len(owner) <= 3  # an event has 4-5 rows here: a batch of 8 spans few events
        planned += [name for name, _ in children]
    assert sorted(planned) == sorted(name for name, *_ in expected)
    assert sum(len(o) for o in owners) < 2 * len(batch)


def _event_id_column(name: str) -> int:
    """Where the event id is among a table's bind variables (the order of the event store's INSERTs)."""
    return {"by_id": 0, "latest": 1, "by_time": 3, "by_arrival": 3, "by_device": 3, "critical": 2}[name]


def test_a_busy_partition_is_split_into_capped_batches_and_every_row_lands(partition_store) -> None:
    session, event_store = partition_store
    base = NOW.replace(second=0, microsecond=0) - timedelta(minutes=2)  # all in one bucket, one day
    chatty = [Event(DeviceEvent.model_validate({
        "event_id": str(uuid.uuid4()), "device_id": "dev-chatty", "event_type": "reading",
        "timestamp": (base + timedelta(milliseconds=10 * n)).isoformat(), "measurements": {"t": float(n)}}),
        EventMetadata(partition_id="1", offset=str(n), sequence_number=n, enqueued_time=base)) for n in range(70)]
    work, owners = event_store.plan(chatty)
    device_batches = [b for b, _ in work if isinstance(b, BatchStatement)
                      and b._statements_and_parameters[0][1] == event_store._statements.get().inserts[
                          "by_device"].statement.query_id]
    assert event_store._settings.batch_rows == 32
    assert [len(b._statements_and_parameters) for b in device_batches] == [32, 32, 6]
    assert max(len(o) for o in owners) == 32
    # four tables a row each, none critical, and device_latest the newest event's only: every row planned once
    assert sum(len(o) for o in owners) == 4 * len(chatty) + 1
    assert all(len(set(o)) == len(o) for o in owners)
    event_store.write(chatty)
    keyspace = event_store._settings.keyspace
    stored = session.execute(f"SELECT event_id FROM {keyspace}.events_by_device WHERE device_id = 'dev-chatty' "
                             f"AND day = %s", (base.date(),)).all()
    assert {r.event_id for r in stored} == {e.event_id for e in chatty}
    latest = session.execute(f"SELECT event_id FROM {keyspace}.device_latest WHERE device_id = 'dev-chatty'").one()
    assert latest.event_id == chatty[-1].event_id


def test_batch_rows_of_one_sends_every_row_on_its_own(store) -> None:
    session, event_store = store
    unbatched = CassandraEventStore(session, event_store._settings.model_copy(update={"batch_rows": 1}), RULES)
    batch = events()
    work, owners = unbatched.plan(batch)
    assert not any(isinstance(statement, BatchStatement) for statement, _ in work)
    assert len(work) == len(rows_of(batch, unbatched._settings)) == 5 * len(batch) + 2 - 1  # 2 critical; dev-a twice
    assert all(len(o) == 1 for o in owners)
    assert flatten(work) == driver_bound(driver_store(unbatched).plan(batch)[0])


def _same_write_timestamp_digits() -> tuple[uuid.UUID, uuid.UUID]:
    """Two event ids whose three write timestamp digits are equal (ids this close share their leading bits)."""
    first = uuid.UUID("5b7e3c52-6a0e-4f57-9d7b-2f3f3f0d6a11")
    return first, uuid.UUID(int=first.int - 1000)


def test_two_events_of_one_millisecond_stored_together_leave_one_whole_event_in_device_latest(store) -> None:
    # With equal write timestamps Cassandra keeps the greater value cell by cell: device_latest held the event id of
    # one event with the event type and measurements of the other, a state no device sent. Of a batch only the
    # device's newest event (write timestamp, then event id) writes it.
    session, event_store = store
    at = NOW.replace(microsecond=123000)
    a, b = _same_write_timestamp_digits()
    device = f"dev-{uuid.uuid4().hex[:8]}"

    def make(event_id: uuid.UUID, event_type: str, measurements: dict) -> Event:
        return Event(DeviceEvent.model_validate({"event_id": str(event_id), "device_id": device,
                                                 "event_type": event_type, "timestamp": at.isoformat(),
                                                 "measurements": measurements}),
                     EventMetadata(partition_id="0", sequence_number=1, enqueued_time=at))

    first, second = make(a, "aaa", {"t": 1.0}), make(b, "zzz", {"u": 2.0})
    assert write_timestamp(first) == write_timestamp(second)
    reader = CassandraEventReader(session, event_store._settings.keyspace)
    for batch in ([first, second], [second, first]):
        event_store.write(batch)
        state = reader.latest(device)
        assert state is not None
        assert (state.event_id, state.event_type, dict(state.measurements)) == (a, "aaa", {"t": 1.0})  # a > b


def _query_ids(work: list[tuple]) -> set[bytes]:
    """The prepared statements a plan's requests run (a batch's children's)."""
    return {query_id for statement, _ in work for query_id in (
        [query_id for _, query_id, _ in statement._statements_and_parameters] if isinstance(statement, BatchStatement)
        else [statement.prepared_statement.query_id])}


def test_device_latest_is_written_only_once_every_other_row_is(store, monkeypatch) -> None:
    """Readers take a latest state's content from events_by_id by the event id device_latest names: device_latest
    never names an event that table lacks. Its rows go out last, and not at all when another row failed (the
    batch is retried whole, or dead-lettered without having moved any device's position)."""
    session, event_store = store
    latest = event_store._statements.get().inserts["latest"].statement.query_id
    stored, positions = event_store.plan_phases(events())
    assert latest not in _query_ids(stored[0]) and _query_ids(positions[0]) == {latest}
    sent: list[list[tuple]] = []

    def one_write_fails(session: Session, work: list[tuple], *, concurrency: int) -> list[tuple[bool, object]]:
        sent.append(list(work))
        return [(False, OperationTimedOut("injected")), *real(session, work[1:], concurrency=concurrency)]

    real = event_store_module.execute_all
    monkeypatch.setattr(event_store_module, "execute_all", one_write_fails)
    device = f"dev-{uuid.uuid4().hex[:8]}"
    batch = [Event(e.body.model_copy(update={"device_id": device}), e.metadata) for e in events()]
    with pytest.raises(TransientError):
        event_store.write(batch)
    assert len(sent) == 1 and latest not in _query_ids(sent[0])
    assert session.execute(f"SELECT event_id FROM {event_store._settings.keyspace}.device_latest "
                           "WHERE device_id = %s", (device,)).one() is None


def test_a_value_of_the_wrong_type_is_refused_naming_the_event_and_the_column(store) -> None:
    _, event_store = store
    [good, *_] = events()
    wrong = Event(DeviceEvent.model_construct(**{**dict(good.body), "device_id": 42}), good.metadata)
    with pytest.raises(TypeError, match=rf"event {good.event_id}: device_id 42 is not a (varchar|text)"):
        event_store.plan([wrong])


def test_a_naive_enqueued_time_is_utc_in_the_arrival_bucket_as_in_the_column(store, monkeypatch) -> None:
    """The driver binds a naive datetime as UTC; the arrival bucket must not read it in the worker's time zone."""
    _, event_store = store
    [event, *_] = events()
    aware = event.metadata.enqueued_time
    naive = Event(event.body, replace(event.metadata, enqueued_time=aware.replace(tzinfo=None)))
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert flatten(event_store.plan([naive])[0]) == flatten(event_store.plan([event])[0])
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_statements_custom_payload_reaches_its_batches(store) -> None:
    session, event_store = store
    payload = {"tag": b"fleet-north"}
    tagged = CassandraEventStore(session, event_store._settings, RULES)
    tagged._statements.get().inserts["by_device"].statement.custom_payload = payload
    same_day = [event for event in events() if event.device_id == "dev-a"]
    work, _ = tagged.plan(same_day)
    by_device = tagged._statements.get().inserts["by_device"].statement.query_id
    batches = [s for s, _ in work if isinstance(s, BatchStatement)
               and any(query_id == by_device for _, query_id, _ in s._statements_and_parameters)]
    assert batches and all(batch.custom_payload == payload for batch in batches)
    assert flatten(work) == driver_bound(driver_store(tagged).plan(same_day)[0])


def old_event(timestamp: str, device: str) -> Event:
    body = DeviceEvent.model_validate({
        "event_id": str(uuid.uuid4()), "device_id": device, "event_type": "reading", "timestamp": timestamp,
        "measurements": {"t": 1.5}, "attributes": {"site": "north"}})
    return Event(body, EventMetadata(partition_id="0", offset="1", sequence_number=1,
                                     enqueued_time=datetime(2026, 11, 23, 12, tzinfo=UTC)))


@pytest.mark.parametrize("timestamp", ["1500-06-01T12:00:00.123Z", "0800-01-01T00:00:00.001Z"])
def test_an_event_of_any_age_reads_back_at_the_millisecond_it_was_stored_with(mixed_store, timestamp: str) -> None:
    """Any age in the past is accepted and stored to the millisecond (docs/events.md); the driver decodes a
    timestamp through a float of seconds, which before about 1700 is a few microseconds off (12:00:00.122999)."""
    session, event_store = mixed_store
    event = old_event(timestamp, "dev-old")
    event_store.write([event])

    stored = CassandraEventReader(session, event_store._settings.keyspace).event(event.event_id)

    assert stored is not None
    assert stored.event_time == event.body.timestamp
    assert rfc3339(stored.event_time) == rfc3339(event.body.timestamp)


def test_the_window_reader_and_the_late_scan_take_an_old_event_at_its_stored_millisecond(mixed_store) -> None:
    """The enrichment's reads: an event of 1500 is in its window at the millisecond its device sent, and the late
    scan's ``event_time_before`` bound compares with that millisecond."""
    session, event_store = mixed_store
    event = old_event("1500-06-01T12:00:30.123Z", "dev-window")
    event_store.write([event])
    reader = CassandraWindowReader(session, event_store._settings)
    start, sent = datetime(1500, 6, 1, 12, tzinfo=UTC), event.body.timestamp

    found = [e for e in reader.read(start, start + timedelta(minutes=1)) if e.event_id == event.event_id]
    assert len(found) == 1
    assert found[0].event_time == sent

    enqueued = event.metadata.enqueued_time
    assert enqueued is not None

    def arrived(before: datetime) -> list[datetime]:
        return [a.event_time for a in reader.arrivals(enqueued - timedelta(minutes=1), enqueued + timedelta(minutes=1),
                                                      event_time_before=before) if a.event_id == event.event_id]
    assert arrived(sent + timedelta(milliseconds=1)) == [sent]
    assert arrived(sent + timedelta(microseconds=1)) == [sent]
    assert arrived(sent) == []
