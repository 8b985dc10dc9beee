"""Cosmos DB's ``RetryAfterMs`` is waited out on a driver timer, and what the retry policy retries, through the real
cassandra-driver.

The driver asks the retry policy on its one I/O thread, which serves every
connection of the cluster. A policy that slept there held back every other
request's answer for the whole wait: one throttled write stalled a pod's lookups.
These run the real driver against the emulator's injected 429s
(``emulators.cassandra.faults``), on a session from ``build_cluster`` as Sluice
connects everywhere.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from cassandra import DriverException, OperationTimedOut, WriteTimeout
from cassandra.cluster import Session
from cassandra.query import SimpleStatement

from emulators.cassandra.faults import clear_faults, inject_faults
from shared.adapters.cassandra.aio import rows
from shared.adapters.cassandra.event_store import CassandraEventStore
from shared.adapters.cassandra.migrations import apply_migrations
from shared.adapters.cassandra.query import Queries
from shared.adapters.cassandra.reader import CassandraEventReader
from shared.adapters.cassandra.session import build_cluster, connect
from shared.domain.events import DeviceEvent, Event, EventMetadata
from shared.settings import CassandraSettings
from sluice.launcher import Running

pytestmark = pytest.mark.timeout(60)

WAIT_MS = 1500
KEYSPACE = "retry_wait"
READ = f"SELECT v FROM {KEYSPACE}.t"


@pytest.fixture
def session(private_cassandra: Running) -> Iterator[Session]:
    settings = CassandraSettings(hosts=[private_cassandra.host], port=private_cassandra.port, tls=False,
                                 request_timeout_seconds=10, overload_max_wait_seconds=5)
    cluster = build_cluster(settings)
    session = cluster.connect()
    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    session.execute(f"CREATE TABLE IF NOT EXISTS {READ.split(' FROM ')[1]} (k int PRIMARY KEY, v int)")
    session.execute(READ)  # connected, pools warm (system tables are exempt from faults: read a table of ours)
    yield session
    clear_faults(private_cassandra.host, private_cassandra.port)
    cluster.shutdown()


def test_a_throttled_request_waits_without_holding_back_the_others(private_cassandra: Running,
                                                                   session: Session) -> None:
    inject_faults(private_cassandra.host, private_cassandra.port, error="overloaded", count=1,
                  retry_after_ms=WAIT_MS, applies_to="reads")
    throttled_started = time.monotonic()
    throttled = session.execute_async(READ)
    # The 429 comes back at once and the policy starts its wait. (Not observed through the driver: with a policy
    # that sleeps on the I/O thread, that observation would itself wait the sleep out.)
    time.sleep(0.3)
    other_started = time.monotonic()
    session.execute(READ)
    other_took = time.monotonic() - other_started

    assert throttled.result().all() == [], "the throttled request is retried and answered"
    throttled_took = time.monotonic() - throttled_started
    assert throttled_took >= WAIT_MS / 1000 * 0.95, f"the retry came {throttled_took:.3f}s in, before RetryAfterMs"
    assert other_took < WAIT_MS / 1000 / 2, (
        f"a request sent while another waited out its 429 took {other_took:.3f}s: the wait held the I/O thread")


def test_a_request_waiting_out_its_429_when_the_session_shuts_down_fails_at_the_end_of_its_wait(
        private_cassandra: Running, session: Session, caplog: pytest.LogCaptureFixture) -> None:
    """A command whose one request ran out of retries fails and shuts its session down while its other requests
    wait out their RetryAfterMs on driver timers. When such a timer fires, the session's executor refuses the
    retry: the request must fail then, not leave a driver traceback on the timer thread under the command's one
    ``error:`` line and its caller waiting for a timeout that no longer comes."""
    settings = CassandraSettings(hosts=[private_cassandra.host], port=private_cassandra.port, tls=False,
                                 request_timeout_seconds=30, overload_max_wait_seconds=5)
    cluster = build_cluster(settings)
    done = threading.Event()
    outcome: list[BaseException | object] = []
    try:
        own = cluster.connect()
        own.execute(READ)
        inject_faults(private_cassandra.host, private_cassandra.port, error="overloaded", count=1,
                      retry_after_ms=WAIT_MS, applies_to="reads")
        parked = own.execute_async(READ)
        parked.add_callbacks(lambda rows: (outcome.append(rows), done.set()),
                             lambda exc: (outcome.append(exc), done.set()))
        time.sleep(0.3)  # the 429 came back, the retry waits on its timer
        with caplog.at_level(logging.ERROR, logger="cassandra"):
            cluster.shutdown()
            assert done.wait(WAIT_MS / 1000 + 5), "the request never ended after its session shut down"
            time.sleep(0.2)
    finally:
        clear_faults(private_cassandra.host, private_cassandra.port)
        cluster.shutdown()
    [failure] = outcome
    assert isinstance(failure, DriverException) and "shut down" in str(failure), failure
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def test_a_wait_longer_than_the_request_timeout_ends_at_the_timeout(private_cassandra: Running,
                                                                    session: Session) -> None:
    """The request's timeout counts from its start, the wait included: a 4 s RetryAfterMs ends a 0.8 s request."""
    settings = CassandraSettings(hosts=[private_cassandra.host], port=private_cassandra.port, tls=False,
                                 request_timeout_seconds=0.8, overload_max_wait_seconds=5)
    cluster = build_cluster(settings)
    try:
        short = cluster.connect()
        short.execute(READ)
        inject_faults(private_cassandra.host, private_cassandra.port, error="overloaded", count=1,
                      retry_after_ms=4000, applies_to="reads")
        started = time.monotonic()
        with pytest.raises(OperationTimedOut):
            short.execute(READ)
        took = time.monotonic() - started
        assert took < 2.5, f"the request timed out after {took:.2f}s: the timeout was not counted during the wait"
    finally:
        clear_faults(private_cassandra.host, private_cassandra.port)
        cluster.shutdown()


def test_the_waits_of_many_throttled_requests_overlap(private_cassandra: Running, session: Session) -> None:
    """Four requests throttled at once retry after about one wait, not four waits one after another."""
    inject_faults(private_cassandra.host, private_cassandra.port, error="overloaded", count=4,
                  retry_after_ms=800, applies_to="reads")
    started = time.monotonic()
    futures = [session.execute_async(READ) for _ in range(4)]
    for future in futures:
        future.result()
    took = time.monotonic() - started
    assert 0.75 <= took < 2.4, f"four throttled requests took {took:.2f}s (one wait: 0.8s; four in turn: 3.2s)"


def test_a_write_timeout_of_a_write_not_marked_idempotent_reaches_the_caller(private_cassandra: Running,
                                                                               session: Session) -> None:
    """A list append answered with a write timeout is not sent again by the session's policy: it may have been
    applied, and only the caller can tell whether doing it twice is safe."""
    session.execute(f"CREATE TABLE IF NOT EXISTS {KEYSPACE}.appends (k text PRIMARY KEY, l list<int>)")
    append = SimpleStatement(f"UPDATE {KEYSPACE}.appends SET l = l + [1] WHERE k = 'a'", is_idempotent=False)
    inject_faults(private_cassandra.host, private_cassandra.port, error="write_timeout", count=1,
                  applies_to="writes")
    with pytest.raises(WriteTimeout):
        session.execute(append)


@pytest.fixture
def paged(private_cassandra: Running) -> Iterator[tuple[Session, Queries]]:
    """Four rows read two a page, on a session that allows one retry of a throttled request."""
    settings = CassandraSettings(hosts=[private_cassandra.host], port=private_cassandra.port, tls=False,
                                 consistency="ONE", overload_max_retries=1, overload_max_wait_seconds=0.01)
    cluster = build_cluster(settings)
    cluster.schema_metadata_enabled = False
    session = cluster.connect()
    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    session.execute(f"CREATE TABLE IF NOT EXISTS {KEYSPACE}.pages (k text, c int, PRIMARY KEY (k, c))")
    for c in range(4):
        session.execute(f"INSERT INTO {KEYSPACE}.pages (k, c) VALUES ('a', {c})")
    queries = Queries(session, KEYSPACE, {"all": "SELECT c FROM {ks}.pages WHERE k = ?"}, timeout=5.0, fetch_size=2)
    queries.statement("all")  # prepared before any fault is armed
    yield session, queries
    clear_faults(private_cassandra.host, private_cassandra.port)
    cluster.shutdown()


def throttle_next_read(emulator: Running) -> None:
    inject_faults(emulator.host, emulator.port, count=1, retry_after_ms=1, applies_to="reads")


def test_each_page_of_a_paged_read_gets_its_own_throttling_retries(private_cassandra: Running, paged) -> None:
    """The driver counts a request's retries across the pages it fetches on it; every page is a request of its own
    on the wire, and gets its own retries (here one): a long read under throttling does not fail at its first 429
    past the bound anywhere in it."""
    _, queries = paged
    throttle_next_read(private_cassandra)
    result = queries.execute("all", ("a",), "the pages")  # page 1: throttled once, retried
    assert [row.c for row in result.current_rows] == [0, 1]

    throttle_next_read(private_cassandra)
    assert [row.c for row in result] == [0, 1, 2, 3]  # page 2: throttled once, retried
    assert [row.c for row in queries.rows("all", ("a",), "the pages")] == [0, 1, 2, 3]


def test_each_page_of_an_awaited_read_gets_its_own_throttling_retries(private_cassandra: Running, paged) -> None:
    """The same for a read awaited on an event loop (``aio.rows``: the lookups' reads)."""
    session, queries = paged
    throttle_next_read(private_cassandra)
    future = session.execute_async(queries.statement("all"), ("a",), timeout=5.0)
    assert [row.c for row in future.result().current_rows] == [0, 1]  # page 1: throttled once, retried

    throttle_next_read(private_cassandra)
    found = asyncio.run(rows(future))  # page 2: throttled once, retried

    assert [row.c for row in found] == [0, 1, 2, 3]


# --- Unavailable retried once; a timeout during a 429's wait fails that request only ---


def _event(device: str = "dev-r", *, seconds_ago: int = 1, measurements: dict | None = None) -> Event:
    body = DeviceEvent.model_validate({
        "event_id": str(uuid.uuid4()), "device_id": device, "event_type": "reading",
        "timestamp": (datetime.now(UTC) - timedelta(seconds=seconds_ago)).isoformat(),
        "measurements": measurements or {"t": 1.0}})
    return Event(body, EventMetadata(partition_id="0", offset="1", sequence_number=1,
                                     enqueued_time=datetime.now(UTC)))


@pytest.fixture
def event_store(private_cassandra: Running) -> Iterator[tuple[Session, CassandraSettings, CassandraEventStore]]:
    settings = CassandraSettings(hosts=[private_cassandra.host], port=private_cassandra.port,
                                 keyspace=f"ks_{uuid.uuid4().hex[:12]}", shards=2, request_timeout_seconds=5)
    session = connect(settings)
    apply_migrations(session, settings)
    writer = CassandraEventStore(session, settings)
    writer.write([_event()])  # prepared and warm before any fault is armed
    yield session, settings, writer
    clear_faults(private_cassandra.host, private_cassandra.port)
    session.cluster.shutdown()


def test_an_unavailable_answer_is_retried_once_as_the_retry_policy_documents(private_cassandra: Running,
                                                                              event_store) -> None:
    """CosmosRetryPolicy documents "on read timeouts and Unavailable (nothing was written): retries once", but it
    answered Unavailable with RETRY_NEXT_HOST: on a one-endpoint Cosmos account (or one-node cluster) there is no
    next host, so a single Unavailable failed the ingest batch at once (NoHostAvailable -> TransientError)."""
    session, settings, writer = event_store
    inject_faults(private_cassandra.host, private_cassandra.port, error="unavailable", count=1, applies_to="writes")
    batch = [_event("dev-unavailable")]
    writer.write(batch)  # raises TransientError today: the Unavailable was never retried
    reader = CassandraEventReader(session, settings.keyspace)
    assert reader.event(batch[0].event_id) is not None


def test_a_read_answered_unavailable_once_is_retried(private_cassandra: Running, event_store) -> None:
    """The lookups' point reads: one Unavailable answer (nothing read, nothing written) reached the caller as
    DependencyUnavailable (an HTTP 503) instead of being retried once, for the same reason."""
    session, settings, writer = event_store
    batch = [_event("dev-unavailable-read")]
    writer.write(batch)
    reader = CassandraEventReader(session, settings.keyspace, timeout=5.0)
    reader.event(batch[0].event_id)  # prepared
    inject_faults(private_cassandra.host, private_cassandra.port, error="unavailable", count=1, applies_to="reads")
    found = reader.event(batch[0].event_id)
    assert found is not None and found.event_id == batch[0].event_id


def test_a_request_timing_out_during_its_429_wait_does_not_steal_another_requests_answer(
        private_cassandra: Running) -> None:
    """delay_retries held a throttled request's retry on a timer while its ResponseFuture still named the stream id
    of the answered 429, which the connection had freed and may hand to another request. When the request's timeout
    fired during the wait, the driver's _on_timeout popped that stream id from the connection: it removed the
    *other* request's callback, so that request's answer was dropped and it failed with OperationTimedOut although
    the server answered (a write applied but reported failed, a lookup 503). Only the throttled request times out."""
    settings = CassandraSettings(hosts=[private_cassandra.host], port=private_cassandra.port, tls=False,
                                 request_timeout_seconds=10, overload_max_wait_seconds=30)
    cluster = build_cluster(settings)
    cluster.schema_metadata_enabled = False
    try:
        session = cluster.connect()
        keyspace = f"ks_{uuid.uuid4().hex[:12]}"
        session.execute(f"CREATE KEYSPACE {keyspace} WITH replication = "
                        "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        session.execute(f"CREATE TABLE {keyspace}.t (k int PRIMARY KEY, v int)")
        read = session.prepare(f"SELECT v FROM {keyspace}.t WHERE k = 1")
        write = session.prepare(f"INSERT INTO {keyspace}.t (k, v) VALUES (2, 2)")
        write.is_idempotent = True
        session.execute(read)
        inject_faults(private_cassandra.host, private_cassandra.port, error="overloaded", count=1,
                      retry_after_ms=20_000, applies_to="reads")
        throttled = session.execute_async(read, timeout=3.0)
        connection, stream = throttled._connection, throttled._req_id  # set when the request is sent
        deadline = time.monotonic() + 2
        while stream not in connection.request_ids and time.monotonic() < deadline:
            time.sleep(0.005)  # the 429 answered: its stream id is free again
        assert stream in connection.request_ids
        while connection.request_ids[0] != stream:  # cheap reads until the freed stream id is the next one given out
            session.execute(read)
        inject_faults(private_cassandra.host, private_cassandra.port, error="delay", count=1, delay_ms=3000,
                      applies_to="writes")
        other = session.execute_async(write, timeout=8.0)
        assert other._req_id == stream  # precondition: the innocent write holds the freed stream id
        assert time.monotonic() < deadline + 1, "set-up too slow: the throttled request already timed out"
        other.result()  # answered by the server after 3 s; today: OperationTimedOut after 8 s
        assert session.execute(f"SELECT v FROM {keyspace}.t WHERE k = 2").one() is not None
    finally:
        clear_faults(private_cassandra.host, private_cassandra.port)
        cluster.shutdown()
