"""Enrichment against real PostgreSQL and the Cassandra emulator (events written by the real event store).

Every figure is checked against an independent computation from the raw events
the test sent (:func:`expected_device_stats`), not against the service's own code.
Time is passed to the service explicitly, so windows close when the test says.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from shared.adapters.cassandra.delays import CassandraDelayLog
from shared.adapters.cassandra.event_store import CassandraEventStore
from shared.adapters.cassandra.migrations import apply_migrations as apply_cassandra
from shared.adapters.cassandra.session import connect
from shared.adapters.cassandra.window_reader import CassandraWindowReader
from shared.adapters.postgres.enrichment_store import PostgresEnrichmentStore
from shared.adapters.postgres.migrations import apply_migrations as apply_postgres
from shared.adapters.postgres.pool import make_pool
from shared.adapters.postgres.reports import PostgresReports, enrichment_status
from shared.adapters.reference import (
    DEVICE_SCHEMA,
    SITE_SCHEMA,
    PostgresReferenceSource,
    read_devices,
    read_sites,
    to_parquet,
    upsert_reference,
)
from shared.domain.enrichment import DeviceRef, ReferenceData, SiteRef, Window, window_of
from shared.domain.events import DeviceEvent, Event, EventMetadata
from shared.domain.rules import MeasurementRule
from shared.domain.stored import StoredEvent
from shared.exceptions import TransientError
from shared.ports.enrichment import Arrival, Reason, WindowInput
from shared.ports.ingest import DelayedBatch
from shared.services.enrichment import EnrichmentRunResult, EnrichmentService
from shared.settings import CassandraSettings, EnrichmentSettings, PostgresSettings
from sluice.launcher import Running
from tests.fixtures.memory import traced
from tests.integration.test_enrichment_sql import assert_device_totals_exact

pytestmark = pytest.mark.timeout(120)

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)  # a window start (5-minute windows)
W = timedelta(minutes=5)
RULES = [MeasurementRule(measurement="temperature", op=">", value=90)]
SITES = [SiteRef("site-a", "Alpha plant", "eu-west", "Europe/Paris", 48.85, 2.35),
         SiteRef("site-b", "Beta yard", "us-east", "America/New_York", 40.7, -74.0)]
DEVICES = [DeviceRef("dev-1", "site-a", "TX-1", "1.0.0", "ops"), DeviceRef("dev-2", "site-a", "TX-1", "1.0.0", "ops"),
           DeviceRef("dev-3", "site-b", "TX-2", "2.1.0", "lab"), DeviceRef("dev-4", "site-zz", "TX-2", "2.1.0", "lab")]


@dataclass
class Stack:
    """The enrichment wired to one keyspace and one database, plus what the test sent."""

    keyspace: str
    dsn: str
    session: object
    store: CassandraEventStore
    pool: object
    service: EnrichmentService
    sent: list[Event]

    def send(self, events: list[Event]) -> None:
        self.store.write(events)
        self.sent.extend(events)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute(sql, params).fetchall()


def make_event(device: str, at: datetime, *, enqueued: datetime | None = None, severity: str = "info",
               measurements: dict | None = None) -> Event:
    body = DeviceEvent.model_validate({
        "event_id": str(uuid.uuid4()), "device_id": device, "event_type": "reading",
        "timestamp": at.isoformat(), "severity": severity,
        "measurements": measurements if measurements is not None else {"temperature": 20.0},
    }, context={"now": at})
    return Event(body, EventMetadata(partition_id="0", offset="1", sequence_number=1,
                                     enqueued_time=enqueued or at + timedelta(seconds=1)))


def random_events(rng: random.Random, start: datetime, span: timedelta, n: int,
                  devices: tuple[str, ...] = ("dev-1", "dev-2", "dev-3", "dev-4", "dev-x")) -> list[Event]:
    out = []
    for _ in range(n):
        at = start + timedelta(milliseconds=rng.randrange(int(span.total_seconds() * 1000)))
        measurements = {"temperature": round(rng.uniform(0, 100), 3)}
        if rng.random() < 0.5:
            measurements["humidity"] = round(rng.uniform(10, 90), 3)
        out.append(make_event(rng.choice(devices), at, severity=rng.choice(["info", "info", "warning", "critical"]),
                              measurements=measurements))
    return out


def enrich_settings(**overrides) -> EnrichmentSettings:
    values = {"window_seconds": 300, "allowed_lateness_seconds": 120, "late_horizon_seconds": 3600,
              "initial_lookback_seconds": 0, "max_windows_per_run": 24, "read_page_size": 100,
              "read_concurrency": 8, **overrides}
    return EnrichmentSettings(**values)


def build_service(stack_session, keyspace: str, cassandra: CassandraSettings, pool, reference=None,
                  **overrides) -> EnrichmentService:
    reader = CassandraWindowReader(stack_session, cassandra, page_size=100, concurrency=8)
    return EnrichmentService(reader, reference or PostgresReferenceSource(pool), PostgresEnrichmentStore(pool),
                             enrich_settings(**overrides), RULES)


@pytest.fixture(scope="module")
def shared_session(cassandra_emulator: Running) -> Iterator[object]:
    """One driver session for the module (connecting and shutting down cost seconds); keyspaces stay per test."""
    session = connect(CassandraSettings(hosts=[cassandra_emulator.host], port=cassandra_emulator.port))
    yield session
    session.cluster.shutdown()


@contextmanager
def stack_at(cassandra_emulator: Running, cassandra_keyspace: str, pg_dsn: str, session, start: datetime = T0
             ) -> Iterator[Stack]:
    """The enrichment on a fresh keyspace and database, its first watermark at ``start``."""
    cassandra = CassandraSettings(hosts=[cassandra_emulator.host], port=cassandra_emulator.port,
                                  keyspace=cassandra_keyspace, shards=4, bucket_seconds=60, consistency="ONE")
    apply_cassandra(session, cassandra)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        apply_postgres(conn)
        upsert_reference(conn, DEVICES, SITES)
    pool = make_pool(pg_dsn, PostgresSettings(host="unused", pool_min_size=1, pool_max_size=2))
    try:
        service = build_service(session, cassandra_keyspace, cassandra, pool)
        PostgresEnrichmentStore(pool).load_state(start)  # the first watermark
        yield Stack(cassandra_keyspace, pg_dsn, session, CassandraEventStore(session, cassandra, RULES), pool,
                    service, [])
    finally:
        pool.close()


@contextmanager
def database_time_zone(dsn: str, zone: str) -> Iterator[None]:
    """``dsn``'s database with ``timezone`` set to ``zone`` for new sessions (as a server or database may be set),
    reset afterwards."""
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("ALTER DATABASE {} SET timezone TO {}").format(
            psycopg.sql.Identifier(str(dbname)), psycopg.sql.Literal(zone)))
    try:
        yield
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("ALTER DATABASE {} RESET timezone").format(
                psycopg.sql.Identifier(str(dbname))))


@pytest.fixture
def stack(cassandra_emulator: Running, cassandra_keyspace: str, pg_dsn: str, shared_session) -> Iterator[Stack]:
    with stack_at(cassandra_emulator, cassandra_keyspace, pg_dsn, shared_session) as built:
        yield built


# --- the independent computation ---


def expected_device_stats(events: list[Event], window_start: datetime) -> dict[str, dict]:
    """Per device figures of one window, computed directly from what was sent."""
    by_device: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        ts = e.body.timestamp.replace(microsecond=e.body.timestamp.microsecond // 1000 * 1000)
        if window_start <= ts < window_start + W:
            by_device[e.device_id].append(e)
    out = {}
    for device, evs in by_device.items():
        evs.sort(key=lambda e: (e.body.timestamp, e.event_id))
        measurements = {}
        for name in sorted({m for e in evs for m in e.body.measurements}):
            values = [e.body.measurements[name] for e in evs if name in e.body.measurements]
            measurements[name] = {"count": len(values), "min": min(values), "max": max(values),
                                  "avg": sum(values) / len(values), "last": values[-1]}
        out[device] = {
            "event_count": len(evs),
            "critical_count": sum(e.body.severity == "critical" or e.body.measurements.get("temperature", 0) > 90
                                  for e in evs),
            "measurements": measurements,
        }
    return out


def stored_device_stats(stack: Stack, window_start: datetime) -> dict[str, dict]:
    rows = stack.query("SELECT device_id, event_count, critical_count, measurements FROM device_window_stats "
                       "WHERE window_start = %s", (window_start,))
    return {d: {"event_count": n, "critical_count": c, "measurements": m} for d, n, c, m in rows}


def assert_stats_match(stored: dict, expected: dict) -> None:
    assert set(stored) == set(expected)
    for device, exp in expected.items():
        got = stored[device]
        assert (got["event_count"], got["critical_count"]) == (exp["event_count"], exp["critical_count"]), device
        assert set(got["measurements"]) == set(exp["measurements"]), device
        for name, figures in exp["measurements"].items():
            for key, value in figures.items():
                assert got["measurements"][name][key] == pytest.approx(value, rel=1e-12), (device, name, key)


def snapshot(stack: Stack) -> dict[str, list[tuple]]:
    return {table: stack.query(f"SELECT * FROM {table} ORDER BY 1, 2")
            for table in ("enriched_events", "device_window_stats", "site_window_stats")}


# --- tests ---


def test_window_figures_match_an_independent_computation(stack: Stack) -> None:
    rng = random.Random(7)
    stack.send(random_events(rng, T0, 3 * W, 300))
    now = T0 + 3 * W + timedelta(minutes=2)  # the third window just closed
    result = stack.service.run(now=now)

    assert [w.window.start for w in result.windows] == [T0, T0 + W, T0 + 2 * W]
    assert stack.query("SELECT watermark FROM enrichment_state") == [(T0 + 3 * W,)]
    for k in range(3):
        start = T0 + k * W
        assert_stats_match(stored_device_stats(stack, start), expected_device_stats(stack.sent, start))
    assert stack.query("SELECT count(*) FROM enriched_events") == [(300,)]

    # reference columns: known devices carry their site; dev-4's site is unknown; dev-x is unknown
    columns = dict((d, (k, s, m, n)) for d, k, s, m, n in stack.query(
        "SELECT DISTINCT device_id, known_device, site_id, model, site_name FROM enriched_events"))
    assert columns["dev-1"] == (True, "site-a", "TX-1", "Alpha plant")
    assert columns["dev-3"] == (True, "site-b", "TX-2", "Beta yard")
    assert columns["dev-4"] == (True, "site-zz", "TX-2", None)
    assert columns["dev-x"] == (False, None, None, None)

    # site figures are the sums of their devices' events
    for k in range(3):
        start = T0 + k * W
        expected = expected_device_stats(stack.sent, start)
        sites = {s: (dc, n, c) for s, dc, n, c in stack.query(
            "SELECT site_id, device_count, event_count, critical_count FROM site_window_stats WHERE window_start = %s",
            (start,))}
        a = [expected[d] for d in ("dev-1", "dev-2") if d in expected]
        assert sites["site-a"] == (len(a), sum(x["event_count"] for x in a), sum(x["critical_count"] for x in a))
        assert sites["site-b"][1] == expected["dev-3"]["event_count"]
        assert "site-zz" in sites and None not in sites

    # unknown devices are counted in the ledger and listed by the report view
    unknown_events = sum(1 for e in stack.sent if e.device_id == "dev-x")
    assert stack.query("SELECT sum(unknown_device_events) FROM enrichment_windows") == [(unknown_events,)]
    assert stack.query("SELECT device_id, event_count FROM report_unknown_devices") == [("dev-x", unknown_events)]


def test_open_windows_wait_and_the_watermark_only_moves_over_closed_ones(stack: Stack) -> None:
    stack.send([make_event("dev-1", T0 + timedelta(seconds=10)), make_event("dev-1", T0 + W + timedelta(seconds=10))])
    result = stack.service.run(now=T0 + W + timedelta(minutes=1))  # window 1 ended, but is within its lateness
    assert result.windows == [] and stack.query("SELECT watermark FROM enrichment_state") == [(T0,)]
    result = stack.service.run(now=T0 + W + timedelta(minutes=2))
    assert [w.window.start for w in result.windows] == [T0]
    assert stack.query("SELECT watermark FROM enrichment_state") == [(T0 + W,)]


def test_rerunning_changes_nothing(stack: Stack) -> None:
    stack.send(random_events(random.Random(3), T0, 2 * W, 120))
    now = T0 + 2 * W + timedelta(minutes=2)
    stack.service.run(now=now)
    before = snapshot(stack)
    time.sleep(0.01)
    stack.service.run(now=now + timedelta(seconds=30))  # nothing new closed: no window written
    stack.service.backfill(T0, T0 + 2 * W)  # every window recomputed from the same events
    assert snapshot(stack) == before  # including enriched_at: no row was rewritten
    assert stack.query("SELECT window_start, runs, reason FROM enrichment_windows ORDER BY 1") == [
        (T0, 2, "backfill"), (T0 + W, 2, "backfill")]


def test_an_event_id_reused_in_a_new_window_moves_there_and_the_rest_of_the_window_is_stored(
        stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    first = make_event("dev-1", T0 + timedelta(seconds=10))
    stack.send([first])
    stack.service.run(now=T0 + W + timedelta(minutes=2))
    assert stack.query("SELECT window_start FROM enriched_events") == [(T0,)]
    # The same id again, with a later timestamp, beside new events: the new window's first enrichment copies its
    # rows straight in, meets the stored id, and must fall back to the upsert without losing the other rows.
    reused = Event(first.body.model_copy(update={"timestamp": T0 + W + timedelta(seconds=20)}), first.metadata)
    others = [make_event("dev-2", T0 + W + timedelta(seconds=s)) for s in (5, 30, 40)]
    stack.send([reused, *others])
    with caplog.at_level(logging.INFO, logger="shared.adapters.postgres.enrichment_store"):
        stack.service.run(now=T0 + 2 * W + timedelta(minutes=2))
    assert "already enriched under another window; reading it again to upsert" in caplog.text
    rows = dict(stack.query("SELECT event_id, window_start FROM enriched_events"))
    assert rows == {first.event_id: T0 + W, **{e.event_id: T0 + W for e in others}}
    assert stored_device_stats(stack, T0 + W)["dev-1"]["event_count"] == 1
    assert stack.query("SELECT window_start, event_count, recompute FROM enrichment_windows ORDER BY 1") == [
        (T0, 1, True), (T0 + W, 4, False)], "the window the event left still counts it, and is marked"
    # the next run computes the window it left again: its older row loses to the moved one, nothing is left
    result = stack.service.run(now=T0 + 2 * W + timedelta(minutes=3))
    assert [(w.window.start, w.reason) for w in result.windows] == [(T0, "late")]
    assert stack.query("SELECT window_start, event_count, recompute FROM enrichment_windows ORDER BY 1") == [
        (T0, 0, False), (T0 + W, 4, False)]
    assert stored_device_stats(stack, T0) == {}
    assert dict(stack.query("SELECT event_id, window_start FROM enriched_events"))[first.event_id] == T0 + W
    assert stack.service.run(now=T0 + 2 * W + timedelta(minutes=4)).windows == [], "settled: nothing more to do"


def _resend_later(stack: Stack) -> Event:
    """Window T0 enriched with one event of dev-1; its id re-sent with a timestamp in T0+W, enriched there."""
    first = make_event("dev-1", T0 + timedelta(seconds=10))
    stack.send([first, make_event("dev-2", T0 + timedelta(seconds=20))])
    stack.service.run(now=T0 + W + timedelta(minutes=2))
    reused = Event(first.body.model_copy(update={"timestamp": T0 + W + timedelta(seconds=20)}), first.metadata)
    stack.send([reused, make_event("dev-2", T0 + W + timedelta(seconds=30))])
    stack.service.run(now=T0 + 2 * W + timedelta(minutes=2))
    return first


def test_every_window_counts_an_event_that_moved_once_in_all(stack: Stack) -> None:
    _resend_later(stack)
    stack.service.run(now=T0 + 2 * W + timedelta(minutes=3))
    enriched = stack.query("SELECT window_start, count(*) FROM enriched_events GROUP BY 1 ORDER BY 1")
    assert enriched == [(T0, 1), (T0 + W, 2)]
    for table in ("device_window_stats", "site_window_stats"):
        figures = stack.query(f"SELECT window_start, sum(event_count)::int FROM {table} GROUP BY 1 ORDER BY 1")
        assert figures == enriched, table
    assert stored_device_stats(stack, T0).keys() == {"dev-2"}, "dev-1's figures of T0 went with its only event"


def test_a_window_an_event_left_stops_counting_it_even_when_read_as_empty(stack: Stack) -> None:
    """The window an event moved out of is marked and computed again, so the event is counted once. When its rows
    have left Cassandra meanwhile (expired: the read is empty), keeping its figures, as an expired window does,
    counted the moved event in both windows for good: it is computed again from the rows PostgreSQL holds for it."""
    _resend_later(stack)
    assert stack.query("SELECT window_start, recompute FROM enrichment_windows ORDER BY 1") == [
        (T0, True), (T0 + W, False)]
    for bucket in (T0 + timedelta(minutes=m) for m in range(5)):  # T0's rows leave Cassandra (TTL, compaction)
        for shard in range(4):
            stack.session.execute(
                f"DELETE FROM {stack.keyspace}.events_by_time_bucket WHERE bucket = %s AND shard = %s",
                (bucket, shard))
    result = stack.service.run(now=T0 + 2 * W + timedelta(minutes=3))
    _assert_t0_counts_dev_2_alone(stack, result)
    assert stack.query("SELECT events_total::int FROM device_totals WHERE device_id = 'dev-1'") == [(1,)]
    assert_device_totals_exact(stack.dsn)
    assert stack.query("SELECT sum(event_count)::int FROM report_site_daily") == [(3,)]


def _assert_t0_counts_dev_2_alone(stack: Stack, result: EnrichmentRunResult) -> None:
    """After T0 was recomputed late for the event that moved out of it: T0 holds and counts dev-2's event alone,
    T0 + W both of its own, the figures and the ledger as enriched_events, T0 no longer marked."""
    assert [(w.window.start, w.reason) for w in result.windows] == [(T0, "late")]
    enriched = stack.query("SELECT window_start, count(*) FROM enriched_events GROUP BY 1 ORDER BY 1")
    assert enriched == [(T0, 1), (T0 + W, 2)]
    for table in ("device_window_stats", "site_window_stats"):
        figures = stack.query(f"SELECT window_start, sum(event_count)::int FROM {table} GROUP BY 1 ORDER BY 1")
        assert figures == enriched, table
    assert stored_device_stats(stack, T0).keys() == {"dev-2"}, "dev-2's event, still in PostgreSQL, still counts"
    assert stack.query("SELECT window_start, event_count, device_count, recompute FROM enrichment_windows "
                       "ORDER BY 1") == [(T0, 1, 1, False), (T0 + W, 2, 2, False)]


def test_a_window_an_event_left_keeps_the_figures_of_its_other_events_when_only_the_moved_row_is_read(
        stack: Stack) -> None:
    """Rows expire from Cassandra by write time, so the marked window's read may hold only the moved id's older row
    (written last) after its other rows expired: that row loses to the moved copy and nothing is left to count.
    Figures of the read alone replaced T0's by nothing (every device and site row deleted, the ledger at 0) while
    enriched_events still held dev-2's row: a marked window is computed from its read and the rows PostgreSQL still
    holds for it, less the moved ones."""
    _resend_later(stack)
    assert stack.query("SELECT window_start, recompute FROM enrichment_windows ORDER BY 1") == [
        (T0, True), (T0 + W, False)]
    (gone, at), = stack.query("SELECT event_id, event_time FROM enriched_events WHERE window_start = %s", (T0,))
    for shard in range(4):  # dev-2's row of T0 expired; dev-1's older row of the moved id is still there
        stack.session.execute(f"DELETE FROM {stack.keyspace}.events_by_time_bucket WHERE bucket = %s AND shard = %s "
                              "AND event_time = %s AND event_id = %s", (T0, shard, at, gone))
    result = stack.service.run(now=T0 + 2 * W + timedelta(minutes=3))
    _assert_t0_counts_dev_2_alone(stack, result)
    assert_device_totals_exact(stack.dsn)


def test_a_late_recompute_that_reads_part_of_a_window_keeps_its_figures_whole(pg: PgStack) -> None:
    """docs/enrichment.md: "each write replaces the window's figures with the same or more complete ones", from one
    reference snapshot. Was: only a window marked `recompute` staged the rows PostgreSQL still holds beside its read,
    so a late recompute whose read missed rows expired from Cassandra replaced the device figures, the ledger count
    and device_totals with the partial read's (2 where enriched_events held 4), and the rows it missed kept the
    reference columns of their first enrichment. Every window with a ledger row now takes the held rows."""
    service = pg.service()
    pg.reader.events += [stored("dev-1", T0 + timedelta(seconds=s), t=float(s)) for s in (10, 20, 30)]
    service.run(now=T0 + W + timedelta(minutes=2))
    assert pg.query("SELECT event_count FROM device_window_stats") == [(3,)]

    with psycopg.connect(pg.dsn, autocommit=True) as conn:  # dev-1 got a new firmware since
        upsert_reference(conn, [replace(DEVICES[0], firmware="1.1.0"), *DEVICES[1:]], SITES)
    del pg.reader.events[0]  # that row has left Cassandra (expired by write time)
    pg.reader.events.append(stored("dev-1", T0 + timedelta(seconds=40), enqueued=T0 + W + timedelta(minutes=3),
                                   t=40.0))  # a late event: the window is recomputed
    result = service.run(now=T0 + W + timedelta(minutes=4))
    assert [w.reason for w in result.windows] == ["late"]

    held = pg.query("SELECT count(*) FROM enriched_events WHERE window_start = %s", (T0,))
    assert held == [(4,)], "enriched events are never deleted"
    assert pg.query("SELECT event_count FROM device_window_stats WHERE window_start = %s", (T0,)) == held
    assert pg.query("SELECT event_count FROM enrichment_windows WHERE window_start = %s", (T0,)) == held
    assert pg.query("SELECT events_total FROM device_totals WHERE device_id = 'dev-1'") == held
    assert pg.query("SELECT DISTINCT firmware FROM enriched_events") == [("1.1.0",)], "one snapshot, not a mix"
    assert_device_totals_exact(pg.dsn)


def test_a_partial_recompute_counts_an_id_re_sent_with_another_device_once(pg: PgStack) -> None:
    """The held rows are matched to the read's by event id alone: an id re-sent with another device and the same
    timestamp (Cassandra keeps the later copy, read here) replaces dev-1's held row instead of counting beside it,
    and dev-1's figures lose that event, while the row the read missed (expired) still counts for dev-1."""
    service = pg.service()
    first = [stored("dev-1", T0 + timedelta(seconds=s), t=float(s)) for s in (10, 20, 30)]
    pg.reader.events += first
    service.run(now=T0 + W + timedelta(minutes=2))

    late = T0 + W + timedelta(minutes=3)
    pg.reader.events[:] = [replace(first[1], device_id="dev-2", enqueued_time=late), first[2]]  # first[0] expired
    result = service.run(now=late + timedelta(minutes=1))
    assert [w.reason for w in result.windows] == ["late"]

    assert pg.query("SELECT device_id FROM enriched_events WHERE event_id = %s", (first[1].event_id,)) == [
        ("dev-2",)]
    assert pg.enriched_counts() == pg.device_counts() == {(T0, "dev-1"): 2, (T0, "dev-2"): 1}
    assert pg.query("SELECT event_count, device_count FROM enrichment_windows") == [(3, 2)]
    assert_device_totals_exact(pg.dsn)


def test_a_recompute_keeps_the_held_row_with_the_later_event_time_over_an_earlier_copy_read(pg: PgStack) -> None:
    """docs/enrichment.md: the row with the latest event time wins "whatever the read order", and an arrival whose
    id's enriched row has a later event time "loses to it: its window's recompute could change nothing".
    X is enriched at T0+30; a correction of X with an earlier timestamp (T0+10, same window) arrives later; the
    T0+30 copy, written first, expires from Cassandra first. Another late event recomputes the window: the read
    returns only X@T0+10. Was: the held row X@T0+30 was matched by id alone and left out, and the losing copy
    overwrote it (with both copies in the read, or with the correction in another window, X@T0+30 stayed)."""
    service = pg.service()
    x = uuid.uuid4()
    later = stored("dev-1", T0 + timedelta(seconds=30), event_id=x, t=30.0)
    pg.reader.events += [later, stored("dev-2", T0 + timedelta(seconds=20), t=1.0)]
    service.run(now=T0 + W + timedelta(minutes=2))

    late = T0 + W + timedelta(minutes=3)
    pg.reader.events.append(stored("dev-1", T0 + timedelta(seconds=10), event_id=x, enqueued=late, t=10.0))
    pg.reader.events.remove(later)  # expired by write time (written before the correction)
    pg.reader.events.append(stored("dev-2", T0 + timedelta(seconds=40), enqueued=late, t=2.0))  # a late event
    result = service.run(now=late + timedelta(minutes=1))
    assert [w.reason for w in result.windows] == ["late"]

    assert pg.query("SELECT event_time, measurements FROM enriched_events WHERE event_id = %s", (x,)) == [
        (T0 + timedelta(seconds=30), {"t": 30.0})], "the earlier copy replaced the held row with the later event time"
    assert pg.query("SELECT device_id, event_count, first_event_time FROM device_window_stats ORDER BY device_id") == [
        ("dev-1", 1, T0 + timedelta(seconds=30)), ("dev-2", 2, T0 + timedelta(seconds=20))]
    assert_device_totals_exact(pg.dsn)


def test_enrichment_staleness_counts_from_when_the_watermark_last_moved(pg: PgStack) -> None:
    """docs/api.md: `enrichment.staleness_seconds` is the time "since it [the watermark] last moved", read from
    `enrichment_state.updated_at`. Was: every run's save of the late-scan position set `updated_at` too, so a
    watermark that had not moved read as just moved after any run (staleness near 0 while it stood still)."""
    service = pg.service()
    pg.reader.events.append(stored("dev-1", T0 + timedelta(seconds=10), t=1.0))
    service.run(now=T0 + W + timedelta(minutes=2))  # window T0 closes: the watermark moves to T0 + W
    reports = PostgresReports(pg.pool, timeout=5)
    moved = reports.enrichment()
    assert moved is not None and moved.watermark == T0 + W

    time.sleep(0.05)
    result = service.run(now=T0 + W + timedelta(minutes=3))  # no window closes: only the late-scan position moves
    assert result.late_scan_until == T0 + W + timedelta(minutes=3)
    later = reports.enrichment()
    assert later is not None and later.watermark == T0 + W
    assert later.updated_at == moved.updated_at, "the watermark did not move, yet its updated_at did"


def test_enrichment_updated_at_is_when_the_watermark_moved_not_when_its_window_began(pg: PgStack) -> None:
    """docs/api.md: `enrichment.staleness_seconds` is the time since the watermark "last moved"
    (enrichment_state.updated_at, migration 015: "When the watermark last moved"). Was: _ADVANCE stamped it with
    now(), the start of the window's transaction, which holds the advisory-lock wait and the whole Cassandra read:
    a window whose read took 3 s moved the watermark with an updated_at 3 s in the past, so /api/status reported a
    watermark that just moved as 3 s stale (up to SLUICE_ENRICH_STATEMENT_TIMEOUT_SECONDS behind another runner)."""
    pg.reader.events.append(stored("dev-1", T0 + timedelta(seconds=10), t=1.0))
    slow = SlowReader(pg.reader.events, 3.0)
    service = EnrichmentService(slow, pg.reference, pg.store, enrich_settings())
    service.run(now=T0 + W + timedelta(minutes=2))
    [(watermark, updated_at)] = pg.query("SELECT watermark, updated_at FROM enrichment_state")
    assert watermark == T0 + W
    assert slow.read_done is not None
    assert updated_at >= slow.read_done - timedelta(seconds=0.5), (
        f"updated_at {updated_at} is {(slow.read_done - updated_at).total_seconds():.1f} s before the window's read "
        "even ended: the watermark moved after that")


def test_a_later_recompute_of_the_window_an_event_left_keeps_its_latest_row(stack: Stack) -> None:
    # a late event in T0 recomputes it from Cassandra, which still holds the id's older row (keyed by event time):
    # the older row must lose to the moved one, whichever window was computed last
    first = _resend_later(stack)
    late_at = T0 + 2 * W + timedelta(minutes=3)
    stack.send([make_event("dev-2", T0 + timedelta(seconds=30), enqueued=late_at)])
    result = stack.service.run(now=late_at + timedelta(seconds=5))
    assert [(w.window.start, w.reason) for w in result.windows] == [(T0, "late")]
    assert stack.query("SELECT window_start, event_time FROM enriched_events WHERE event_id = %s",
                       (first.event_id,)) == [(T0 + W, T0 + W + timedelta(seconds=20))]
    assert stored_device_stats(stack, T0).keys() == {"dev-2"}
    assert stored_device_stats(stack, T0)["dev-2"]["event_count"] == 2


def test_an_id_re_sent_later_into_a_window_already_enriched_is_found_by_the_late_scan(stack: Stack) -> None:
    first = make_event("dev-1", T0 + timedelta(seconds=10))
    stack.send([first, make_event("dev-2", T0 + W + timedelta(seconds=5))])
    stack.service.run(now=T0 + 2 * W + timedelta(minutes=2))  # T0 and T0+W enriched
    late_at = T0 + 2 * W + timedelta(minutes=3)
    reused = Event(first.body.model_copy(update={"timestamp": T0 + W + timedelta(seconds=20)}),
                   replace(first.metadata, enqueued_time=late_at))
    stack.send([reused])
    result = stack.service.run(now=late_at + timedelta(seconds=5))
    assert [(w.window.start, w.reason) for w in result.windows] == [(T0 + W, "late")]
    assert dict(stack.query("SELECT event_id, window_start FROM enriched_events"))[first.event_id] == T0 + W
    stack.service.run(now=late_at + timedelta(seconds=10))  # the window it left
    assert stored_device_stats(stack, T0) == {}
    assert stored_device_stats(stack, T0 + W)["dev-1"]["event_count"] == 1


def test_an_id_re_sent_late_within_its_own_enriched_window_recomputes_it(stack: Stack) -> None:
    """An id re-sent late with a later timestamp inside the window already holding its row: the late scan must
    not take the id's older row there for the new copy, or PostgreSQL keeps the superseded row (older event time,
    old device, old measurements) and the figures built from it, while Cassandra and Redis hold the newer copy."""
    first = make_event("dev-1", T0 + timedelta(seconds=10), measurements={"temperature": 20.0})
    stack.send([first, make_event("dev-2", T0 + timedelta(seconds=20))])
    stack.service.run(now=T0 + W + timedelta(minutes=2))  # window T0 enriched
    assert stack.query("SELECT event_time FROM enriched_events WHERE event_id = %s",
                       (first.event_id,)) == [(T0 + timedelta(seconds=10),)]
    late_at = T0 + W + timedelta(minutes=3)
    resent = Event(first.body.model_copy(update={"timestamp": T0 + timedelta(seconds=50), "device_id": "dev-3",
                                                  "measurements": {"temperature": 99.0}}),
                   replace(first.metadata, enqueued_time=late_at))
    stack.send([resent])
    result = stack.service.run(now=late_at + timedelta(seconds=5))
    assert [(w.window.start, w.reason) for w in result.windows] == [(T0, "late")], \
        "the window holding a superseded row of a late re-sent id must be recomputed"
    assert stack.query("SELECT device_id, event_time FROM enriched_events WHERE event_id = %s",
                       (first.event_id,)) == [("dev-3", T0 + timedelta(seconds=50))]


def _corrected(original: Event, at: datetime, enqueued: datetime, **changes: object) -> Event:
    """``original`` sent again under its id with the timestamp ``at`` (and ``changes``), enqueued at ``enqueued``."""
    return Event(original.body.model_copy(update={"timestamp": at, **changes}),
                 replace(original.metadata, enqueued_time=enqueued))


def test_arrivals_that_lose_to_a_later_row_never_hold_up_a_genuinely_late_window(
        cassandra_emulator: Running, cassandra_keyspace: str, pg_dsn: str, shared_session) -> None:
    """A device whose clock ran ahead re-sends its readings under their ids with corrected, earlier timestamps, late.
    The latest event time wins, so each corrected row loses to the enriched one in another window and is never
    written in its own: the late scan does not count it as missing there, so its window is not recomputed at all.
    Were it counted, as many such windows as ``max_windows_per_run`` would be the oldest late windows on every run,
    the scan position would never move, and a genuinely late event in a later window would never be enriched.
    Here, with a budget of two windows and two such arrivals, the late event is enriched by the first run after it
    arrives, the windows of the losing arrivals are never recomputed, and the scan position moves on."""
    with stack_at(cassandra_emulator, cassandra_keyspace, pg_dsn, shared_session) as stack:
        service = build_service(stack.session, stack.keyspace, stack.store._settings, stack.pool,
                                max_windows_per_run=2)
        # W1..W4 on time; dev-9's clock is 15 minutes ahead: its two readings land in W4
        x1 = make_event("dev-9", T0 + 3 * W + timedelta(seconds=10))
        x2 = make_event("dev-9", T0 + 3 * W + timedelta(seconds=20))
        stack.send([make_event("dev-1", T0 + timedelta(seconds=5)), make_event("dev-2", T0 + W + timedelta(seconds=5)),
                    make_event("dev-3", T0 + 2 * W + timedelta(seconds=5)), x1, x2])
        now = T0 + 4 * W + timedelta(minutes=2)
        while service.run(now=now).more_pending:
            pass
        assert stack.query("SELECT watermark FROM enrichment_state") == [(T0 + 4 * W,)]

        # dev-9 re-sends both with its corrected clock (W1, W2); a genuinely late reading of dev-3 for W3
        late_at = now + timedelta(minutes=1)
        late = make_event("dev-3", T0 + 2 * W + timedelta(seconds=40), enqueued=late_at)
        stack.send([_corrected(x1, T0 + timedelta(seconds=10), late_at),
                    _corrected(x2, T0 + W + timedelta(seconds=10), late_at), late])
        recomputed: list[datetime] = []
        pending = []
        for minute in range(1, 7):  # the timer, once a minute
            result = service.run(now=late_at + timedelta(minutes=minute, seconds=5))
            recomputed += [w.window.start for w in result.windows if w.reason == "late"]
            pending.append(result.more_pending)

        assert stack.query("SELECT window_start FROM enriched_events WHERE event_id = %s", (late.event_id,)) == \
            [(T0 + 2 * W,)]
        assert recomputed == [T0 + 2 * W], "only the window of the late event is recomputed, once"
        assert not any(pending)
        assert stack.query("SELECT late_scan_until FROM enrichment_state") == [(late_at + timedelta(minutes=6,
                                                                                                    seconds=5),)]
        assert stack.query("SELECT window_start, event_time FROM enriched_events WHERE event_id = ANY(%s) ORDER BY 2",
                           ([x1.event_id, x2.event_id],)) == [(T0 + 3 * W, x1.body.timestamp),
                                                             (T0 + 3 * W, x2.body.timestamp)]
        assert stack.query("SELECT window_start, runs FROM enrichment_windows WHERE window_start < %s ORDER BY 1",
                           (T0 + 2 * W,)) == [(T0, 1), (T0 + W, 1)]


def test_an_id_re_sent_late_with_an_earlier_timestamp_within_its_window_does_not_recompute_it(stack: Stack) -> None:
    """An id re-sent late inside the window holding its row, with an *earlier* timestamp: the window's read keeps
    the id's latest row, the one already enriched, so a recompute would change nothing and the late scan does not
    ask for one (it would, on every scan covering the arrival, for nothing)."""
    first = make_event("dev-1", T0 + timedelta(seconds=50), measurements={"temperature": 20.0})
    stack.send([first, make_event("dev-2", T0 + timedelta(seconds=20))])
    stack.service.run(now=T0 + W + timedelta(minutes=2))  # window T0 enriched
    late_at = T0 + W + timedelta(minutes=3)
    stack.send([_corrected(first, T0 + timedelta(seconds=10), late_at, measurements={"temperature": 5.0})])
    recomputed = []
    for seconds in (5, 65, 125, 185):  # runs a minute apart: the first three scans cover the arrival
        result = stack.service.run(now=late_at + timedelta(seconds=seconds))
        recomputed += [w.window.start for w in result.windows]
    assert recomputed == []
    assert stack.query("SELECT event_time, measurements FROM enriched_events WHERE event_id = %s",
                       (first.event_id,)) == [(T0 + timedelta(seconds=50), {"temperature": 20.0})]
    assert stored_device_stats(stack, T0)["dev-1"]["event_count"] == 1


def test_a_window_whose_recompute_cannot_account_for_a_late_arrival_is_named_in_a_warning(
        stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    """A correction re-sent with the same timestamp, then the older copy redelivered (Event Hubs delivers at least
    once): ``events_by_time_bucket`` keeps the copy written last, the older one, while the correction's arrival row
    stays. Once its window is recomputed (here for another late event), the enriched row is the older copy, and
    each scan still covering the correction's arrival finds the window stale and recomputes it again, for nothing.
    The run says so, with a warning naming the window (enough such windows would hold up every other late
    window); the recomputes stop once the arrival has left the scan's overlap."""
    first = make_event("dev-1", T0 + timedelta(seconds=10), measurements={"temperature": 20.0})
    stack.send([first, make_event("dev-2", T0 + timedelta(seconds=20))])
    stack.service.run(now=T0 + W + timedelta(minutes=2))  # window T0 enriched
    late_at = T0 + W + timedelta(minutes=3)
    correction = _corrected(first, first.body.timestamp, late_at, measurements={"temperature": 21.0})
    stack.send([correction])
    assert [w.window.start for w in stack.service.run(now=late_at + timedelta(seconds=5)).windows] == [T0]
    assert stack.query("SELECT measurements FROM enriched_events WHERE event_id = %s",
                       (first.event_id,)) == [({"temperature": 21.0},)]

    stack.send([first, make_event("dev-2", T0 + timedelta(seconds=30), enqueued=late_at + timedelta(seconds=30))])
    recomputed, unsettled = [], []
    with caplog.at_level(logging.WARNING, logger="shared.services.enrichment"):
        for seconds in (40, 100, 160, 220, 280):  # runs a minute apart
            result = stack.service.run(now=late_at + timedelta(seconds=seconds))
            recomputed.append([w.window.start for w in result.windows if w.reason == "late"])
            unsettled.append(result.unsettled_windows)
    # 40: the other late event (settled); 100 and 160: the correction's arrival, still in the overlap; then none
    assert recomputed == [[T0], [T0], [T0], [], []]
    assert unsettled == [0, 1, 1, 0, 0]
    warnings = [r.getMessage() for r in caplog.records if "could not account for" in r.getMessage()]
    assert len(warnings) == 2 and all(str(Window(T0, T0 + W)) in m and m.startswith("1 windows") for m in warnings)
    assert stack.query("SELECT measurements FROM enriched_events WHERE event_id = %s",
                       (first.event_id,)) == [({"temperature": 20.0},)], "what Cassandra holds now: the older copy"


def test_an_event_id_sent_twice_in_one_window_is_stored_once_with_its_latest_row_on_both_paths(
        stack: Stack) -> None:
    first = make_event("dev-1", T0 + timedelta(seconds=50), measurements={"temperature": 95.0})
    again = Event(first.body.model_copy(update={"timestamp": T0 + timedelta(seconds=10),
                                                 "measurements": {"temperature": 10.0}}), first.metadata)
    moved = Event(first.body.model_copy(update={"timestamp": T0 + timedelta(seconds=70), "device_id": "dev-3",
                                                 "measurements": {"temperature": 70.0}}), first.metadata)
    others = [make_event("dev-1", T0 + timedelta(seconds=s), measurements={"temperature": float(s)}) for s in (5, 60)]
    stack.send([first, again, *others])
    stack.service.run(now=T0 + W + timedelta(minutes=2))  # first enrichment: COPY straight into enriched_events
    assert stack.query("SELECT device_id, event_time, measurements FROM enriched_events WHERE event_id = %s",
                       (first.event_id,)) == [("dev-1", T0 + timedelta(seconds=50), {"temperature": 95.0})]
    stats = stored_device_stats(stack, T0)["dev-1"]
    assert (stats["event_count"], stats["critical_count"]) == (3, 1)
    assert stats["measurements"]["temperature"] == {"count": 3, "min": 5.0, "max": 95.0, "avg": 160.0 / 3,
                                                    "last": 60.0}
    before = snapshot(stack)
    stack.service.backfill(T0, T0 + W)  # the upsert path, the same rows: nothing changes
    assert snapshot(stack) == before

    stack.send([moved])  # a later row of the id, in another device: it wins on the upsert path too
    stack.service.backfill(T0, T0 + W)
    assert stack.query("SELECT device_id, event_time, critical FROM enriched_events WHERE event_id = %s",
                       (first.event_id,)) == [("dev-3", T0 + timedelta(seconds=70), False)]
    stats = stored_device_stats(stack, T0)
    assert stats["dev-1"]["event_count"] == 2 and stats["dev-1"]["measurements"]["temperature"]["max"] == 60.0
    assert stats["dev-3"]["event_count"] == 1 and stats["dev-3"]["measurements"]["temperature"]["last"] == 70.0
    assert stack.query("SELECT count(*) FROM enriched_events") == [(3,)]
    assert stack.query("SELECT event_count FROM enrichment_windows") == [(3,)]


def test_a_read_failing_mid_window_writes_nothing_of_it(stack: Stack) -> None:
    from shared.exceptions import DependencyUnavailable

    stack.send(random_events(random.Random(5), T0, W, 300))
    real = CassandraWindowReader(stack.session, stack.store._settings, page_size=50, concurrency=2)

    class FailsAfterTwoPages:  # the real reader, cut off after two pages (as a partition timing out would)
        def __getattr__(self, name: str):
            return getattr(real, name)

        def read_each(self, start: datetime, end: datetime):
            pages = real.read_each(start, end)
            yield next(pages)
            yield next(pages)
            raise DependencyUnavailable("cassandra", "reading the events: timed out")

    service = EnrichmentService(FailsAfterTwoPages(), PostgresReferenceSource(stack.pool),
                                PostgresEnrichmentStore(stack.pool), enrich_settings(), RULES)
    with pytest.raises(DependencyUnavailable, match="timed out"):
        service.run(now=T0 + W + timedelta(minutes=2))
    assert stack.query("SELECT count(*) FROM enriched_events") == [(0,)]
    assert stack.query("SELECT count(*) FROM enrichment_windows") == [(0,)]
    assert stack.query("SELECT watermark FROM enrichment_state") == [(T0,)]
    assert stack.service.run(now=T0 + W + timedelta(minutes=2)).events == 300


def test_a_window_is_enriched_without_holding_its_events(stack: Stack) -> None:
    """Rows stream to PostgreSQL as pages arrive; only the figures' inputs stay (docs/enrichment.md#memory).

    Enriching a window used to hold every event of it, then compute: each event of a window added
    at least its size (about 1.4 KB with 16 measurements) to the peak. Now the peak holds the pages
    in flight, a fixed amount, plus about 8 bytes per value and an id per event.
    """
    names = [f"measurement_{n:02d}" for n in range(16)]
    sizes = {T0: 2000, T0 + W: 8000}
    for start, n in sizes.items():
        stack.send([make_event(f"dev-{i % 4 + 1}", start + timedelta(microseconds=29_000 * i),
                               measurements={name: float(i + k) for k, name in enumerate(names)}) for i in range(n)])
    reader = CassandraWindowReader(stack.session, stack.store._settings, page_size=100, concurrency=2)
    service = EnrichmentService(reader, PostgresReferenceSource(stack.pool), PostgresEnrichmentStore(stack.pool),
                                enrich_settings(), RULES)
    assert [o.events for o in service.backfill(T0, T0 + 2 * W)] == list(sizes.values())  # all prepared, warm

    event_size = traced(lambda: reader.read(T0 + W, T0 + 2 * W))[0] / sizes[T0 + W]
    small, large = (traced(lambda start=start: service.backfill(start, start + W))[1] for start in sizes)
    per_event = (large - small) / (sizes[T0 + W] - sizes[T0])
    assert per_event < 400 < event_size, (f"each event of a window added {per_event:,.0f} bytes to the peak "
                                          f"({small:,} for 2,000 events, {large:,} for 8,000); an event is "
                                          f"{event_size:,.0f}")


def test_late_events_recompute_their_window(stack: Stack) -> None:
    stack.send(random_events(random.Random(5), T0, 2 * W, 60))
    now = T0 + 2 * W + timedelta(minutes=2)
    stack.service.run(now=now)
    untouched = stack.query("SELECT * FROM device_window_stats WHERE window_start = %s ORDER BY 2", (T0 + W,))

    late_at = now + timedelta(minutes=3)
    late = [make_event("dev-1", T0 + timedelta(seconds=30), enqueued=late_at, severity="critical",
                       measurements={"temperature": 99.5}),
            make_event("dev-x", T0 + timedelta(seconds=31), enqueued=late_at)]
    stack.send(late)
    result = stack.service.run(now=late_at + timedelta(seconds=5))

    assert result.late_windows == 1 and [(w.window.start, w.reason) for w in result.windows] == [(T0, "late")]
    assert_stats_match(stored_device_stats(stack, T0), expected_device_stats(stack.sent, T0))
    assert stack.query("SELECT runs, reason FROM enrichment_windows WHERE window_start = %s", (T0,)) == [(2, "late")]
    assert stack.query("SELECT * FROM device_window_stats WHERE window_start = %s ORDER BY 2", (T0 + W,)) == untouched
    # the next run finds nothing more to do
    again = stack.service.run(now=late_at + timedelta(seconds=40))
    assert again.late_windows == 0


def test_an_event_stored_minutes_after_its_enqueue_is_enriched_through_ingests_delay_note(stack: Stack) -> None:
    """Ingest behind by more than the allowed lateness (an outage): the scan's overlap alone misses such an event."""
    stack.send([make_event("dev-1", T0 + timedelta(seconds=5))])
    first = T0 + W + timedelta(minutes=3)
    stack.service.run(now=first)
    delayed = make_event("dev-2", T0 + timedelta(seconds=9), enqueued=T0 + timedelta(seconds=10))
    stack.send([delayed])  # stored only now, long after its enqueue
    noted_at = first + timedelta(seconds=30)
    log = CassandraDelayLog(stack.session, stack.keyspace, bucket_seconds=60, clock=lambda: noted_at)
    log.record(DelayedBatch("0", 42, delayed.metadata.enqueued_time, 1))  # as ingest does after such a batch

    result = stack.service.run(now=first + timedelta(minutes=1))
    assert [(w.window.start, w.reason) for w in result.windows] == [(T0, "late")]
    assert result.delayed_scan_from == delayed.metadata.enqueued_time
    assert_stats_match(stored_device_stats(stack, T0), expected_device_stats(stack.sent, T0))


def test_the_late_scan_keeps_its_overlap_across_a_dst_change_of_the_database_time_zone(
        cassandra_emulator: Running, cassandra_keyspace: str, pg_dsn: str, shared_session) -> None:
    """A database whose ``timezone`` has DST (a per-server/per-database setting, and PGTZ on the client): psycopg
    hands a ``timestamptz`` over in the session's zone, and ``late_scan_until - allowed_lateness`` computed in
    wall-clock time at the spring-forward change (03:00:30 CEST minus 120 s: the non-existent 02:58:30, read as
    +01:00) starts the scan an hour late, so an event stored within the allowed lateness is never found. The pool
    pins the session to UTC, and the store returns its state in UTC."""
    start = datetime(2027, 3, 28, 0, 50, tzinfo=UTC)  # Europe/Paris springs forward at 01:00 UTC that day
    with database_time_zone(pg_dsn, "Europe/Paris"), \
            stack_at(cassandra_emulator, cassandra_keyspace, pg_dsn, shared_session, start) as stack:
        with stack.pool.connection() as conn:
            assert conn.execute("SHOW TimeZone").fetchone() == ("UTC",), "the pool's sessions are in UTC"
        assert PostgresEnrichmentStore(stack.pool).load_state(start).watermark.tzinfo is UTC
        stack.send([make_event("dev-1", start + timedelta(seconds=10))])
        stack.service.run(now=start + W + timedelta(minutes=2))  # [00:50, 00:55) enriched
        stack.service.run(now=datetime(2027, 3, 28, 1, 0, 30, tzinfo=UTC))
        # enqueued at 00:59:40, stored ~55 s later (within the allowed lateness: no delay note), after that run
        late = make_event("dev-2", start + timedelta(seconds=20),
                          enqueued=datetime(2027, 3, 28, 0, 59, 40, tzinfo=UTC))
        stack.send([late])
        recomputed = []
        for minute in (1, 2, 3, 4):  # runs a minute apart, as the timer does
            result = stack.service.run(now=datetime(2027, 3, 28, 1, minute, 30, tzinfo=UTC))
            recomputed += [w.window.start for w in result.windows if w.reason == "late"]
        rows = stack.query("SELECT window_start FROM enriched_events WHERE event_id = %s", (late.event_id,))
        assert recomputed == [start] and len(rows) == 1, \
            "an event enqueued within the allowed lateness of a scan must be found by the next one"


def test_events_later_than_the_horizon_are_counted_not_recomputed(stack: Stack) -> None:
    stack.send([make_event("dev-1", T0 + timedelta(seconds=5))])
    stack.service.run(now=T0 + W + timedelta(minutes=2))
    too_late = T0 + W + timedelta(hours=2)  # horizon is 1 hour
    stack.send([make_event("dev-1", T0 + timedelta(seconds=6), enqueued=too_late)])
    result = stack.service.run(now=too_late + timedelta(seconds=1))
    assert result.too_late_events == 1 and result.late_windows == 0
    assert stack.query("SELECT event_count FROM device_window_stats WHERE window_start = %s", (T0,)) == [(1,)]
    stack.service.backfill(T0, T0 + W)  # the documented way to include them
    assert stack.query("SELECT event_count FROM device_window_stats WHERE window_start = %s", (T0,)) == [(2,)]


def test_a_killed_postgres_connection_mid_window_leaves_the_watermark_and_the_next_run_completes(stack: Stack) -> None:
    stack.send(random_events(random.Random(11), T0, W, 40))
    now = T0 + W + timedelta(minutes=2)

    # Another session locks the watermark row: the window's transaction writes its rows, then waits on the
    # watermark update; the test kills that backend from outside, as a failover or an admin would.
    blocker = psycopg.connect(stack.dsn)
    blocker.execute("SELECT * FROM enrichment_state FOR UPDATE")
    outcome: dict = {}

    def run() -> None:
        try:
            stack.service.run(now=now)
        except Exception as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    killed = False
    deadline = time.monotonic() + 30
    with psycopg.connect(stack.dsn, autocommit=True) as admin:
        while time.monotonic() < deadline and not killed:
            rows = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
                "AND query LIKE '%%UPDATE enrichment_state SET watermark%%'").fetchall()
            for (pid,) in rows:
                killed = admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
            time.sleep(0.05)
    worker.join(30)
    blocker.rollback()
    blocker.close()

    assert killed
    assert isinstance(outcome.get("error"), TransientError)
    assert stack.query("SELECT watermark FROM enrichment_state") == [(T0,)]
    assert stack.query("SELECT count(*) FROM enriched_events") == [(0,)]  # the window's rows were rolled back
    assert stack.query("SELECT count(*) FROM enrichment_windows") == [(0,)]

    result = stack.service.run(now=now)  # the pool replaces the dead connection on borrow
    assert [w.window.start for w in result.windows] == [T0]
    assert stack.query("SELECT watermark FROM enrichment_state") == [(T0 + W,)]
    assert_stats_match(stored_device_stats(stack, T0), expected_device_stats(stack.sent, T0))


def test_a_reference_change_shows_in_the_next_windows(stack: Stack) -> None:
    stack.send([make_event("dev-1", T0 + timedelta(seconds=5)), make_event("dev-9", T0 + timedelta(seconds=6))])
    stack.service.run(now=T0 + W + timedelta(minutes=2))
    with psycopg.connect(stack.dsn) as conn:  # dev-1 moves to site-b with new firmware; dev-9 gets registered
        upsert_reference(conn, [DeviceRef("dev-1", "site-b", "TX-1", "1.1.0", "ops"),
                                DeviceRef("dev-9", "site-a", "TX-3", "3.0.0", "ops")], None)
    stack.send([make_event("dev-1", T0 + W + timedelta(seconds=5)), make_event("dev-9", T0 + W + timedelta(seconds=6))])
    stack.service.run(now=T0 + 2 * W + timedelta(minutes=2))

    rows = stack.query(
        "SELECT window_start, device_id, known_device, site_id, firmware FROM enriched_events ORDER BY 1, 2"
    )
    assert rows == [(T0, "dev-1", True, "site-a", "1.0.0"), (T0, "dev-9", False, None, None),
                    (T0 + W, "dev-1", True, "site-b", "1.1.0"), (T0 + W, "dev-9", True, "site-a", "3.0.0")]
    assert stack.query("SELECT device_id, now_known FROM report_unknown_devices") == [("dev-9", True)]

    # a backfill applies today's reference data to the old window, and its old site figures go away
    stack.service.backfill(T0, T0 + W)
    assert stack.query("SELECT site_id, event_count FROM site_window_stats WHERE window_start = %s ORDER BY 1",
                       (T0,)) == [("site-a", 1), ("site-b", 1)]
    assert stack.query("SELECT count(*) FROM report_unknown_devices") == [(0,)]


def test_max_windows_per_run_resumes_where_it_stopped(stack: Stack) -> None:
    stack.send(random_events(random.Random(1), T0, 4 * W, 40))
    service = build_service(stack.session, stack.keyspace, stack.store._settings, stack.pool, max_windows_per_run=3)
    now = T0 + 4 * W + timedelta(minutes=2)
    first = service.run(now=now)
    assert len(first.windows) == 3 and first.more_pending
    second = service.run(now=now)
    assert [w.window.start for w in second.windows] == [T0 + 3 * W] and not second.more_pending
    assert stack.query("SELECT count(*) FROM enriched_events") == [(40,)]


def test_the_window_reader_pages_every_shard_and_keeps_to_the_window(cassandra_emulator: Running,
                                                                    cassandra_keyspace: str, shared_session) -> None:
    # buckets (10 minutes) wider than the window (5 minutes): the clustering range must cut them
    cassandra = CassandraSettings(hosts=[cassandra_emulator.host], port=cassandra_emulator.port,
                                  keyspace=cassandra_keyspace, shards=3, bucket_seconds=600, consistency="ONE")
    session = shared_session
    apply_cassandra(session, cassandra)
    events = random_events(random.Random(9), T0, 2 * W, 150)
    CassandraEventStore(session, cassandra, RULES).write(events)
    reader = CassandraWindowReader(session, cassandra, page_size=7, concurrency=2)  # many pages per partition
    read = reader.read(T0 + W, T0 + 2 * W)
    wanted = {e.event_id for e in events if e.body.timestamp >= T0 + W}
    assert len(read) == len(wanted) and {e.event_id for e in read} == wanted
    sample = next(e for e in events if e.event_id == read[0].event_id)
    assert read[0].measurements == sample.body.measurements and read[0].event_time.tzinfo is not None
    arrivals = list(reader.arrivals(T0, T0 + 3 * W))
    assert sorted(a.event_id for a in arrivals) == sorted(e.event_id for e in events)
    # The late scan's filter: only events before the watermark, compared to the millisecond Cassandra keeps.
    before = T0 + W + timedelta(milliseconds=12_345)
    early = list(reader.arrivals(T0, T0 + 3 * W, event_time_before=before))
    assert sorted(a.event_id for a in early) == sorted(e.event_id for e in events if e.body.timestamp < before)
    assert 0 < len(early) < len(events) and all(a.event_time < before and a.event_time.tzinfo for a in early)


def test_an_unreachable_cassandra_fails_the_window_instead_of_returning_part_of_it() -> None:
    from shared.exceptions import DependencyUnavailable
    from tests.fixtures.cassandra import start_cassandra_emulator

    running = start_cassandra_emulator()
    cassandra = CassandraSettings(hosts=[running.host], port=running.port, keyspace="ks_down", shards=2,
                                  consistency="ONE", request_timeout_seconds=2, connect_timeout_seconds=2)
    session = connect(cassandra)
    try:
        apply_cassandra(session, cassandra)
        reader = CassandraWindowReader(session, cassandra, page_size=10, concurrency=2)
        assert reader.read(T0, T0 + W) == []
        running.kill()
        with pytest.raises(DependencyUnavailable, match="cassandra unavailable: reading the events of"):
            reader.read(T0, T0 + W)
    finally:
        session.cluster.shutdown()
        running.stop()


def test_a_statement_timeout_is_a_transient_error_and_writes_nothing(stack: Stack) -> None:
    stack.send(random_events(random.Random(2), T0, W, 20))
    store = PostgresEnrichmentStore(stack.pool, statement_timeout_seconds=0.5)
    service = EnrichmentService(CassandraWindowReader(stack.session, stack.store._settings, page_size=100),
                                PostgresReferenceSource(stack.pool), store, enrich_settings(), RULES)
    with psycopg.connect(stack.dsn) as blocker:
        blocker.execute("SELECT * FROM enrichment_state FOR UPDATE")  # the watermark update waits past the timeout
        with pytest.raises(TransientError, match="timed out during the enrichment of window"):
            service.run(now=T0 + W + timedelta(minutes=2))
    assert stack.query("SELECT watermark FROM enrichment_state") == [(T0,)]
    assert stack.query("SELECT count(*) FROM enriched_events") == [(0,)]
    assert len(service.run(now=T0 + W + timedelta(minutes=2)).windows) == 1


def test_a_slow_read_is_not_a_postgresql_timeout_but_a_lock_wait_is(stack: Stack) -> None:
    """The rows stream into COPY as they are read, so the COPY lasts as long as the read: statement_timeout
    must not time Cassandra (a slow read would fail the same window every run), while lock_timeout still
    bounds what PostgreSQL waits for."""
    events = random_events(random.Random(6), T0, W, 50)
    stack.send(events)
    real = CassandraWindowReader(stack.session, stack.store._settings, page_size=10, concurrency=2)

    class Slow:  # the real reader, a page every 0.1 s
        def __getattr__(self, name: str):
            return getattr(real, name)

        def read_each(self, start: datetime, end: datetime):
            for page in real.read_each(start, end):
                time.sleep(0.1)
                yield page

    store = PostgresEnrichmentStore(stack.pool, statement_timeout_seconds=0.5)
    service = EnrichmentService(Slow(), PostgresReferenceSource(stack.pool), store, enrich_settings(), RULES)
    with psycopg.connect(stack.dsn) as blocker:  # inserting one of the window's ids, not committed yet
        blocker.execute("INSERT INTO enriched_events (event_id, window_start, device_id, event_time, event_type, "
                        "severity, critical, measurements, known_device) VALUES (%s, %s, 'x', %s, 'r', 'info', "
                        "false, '{}', false)", (events[0].event_id, T0, T0))
        started = time.monotonic()
        with pytest.raises(TransientError, match="lock timeout"):
            service.run(now=T0 + W + timedelta(minutes=2))
        assert time.monotonic() - started < 30
        blocker.rollback()
    assert stack.query("SELECT count(*) FROM enriched_events") == [(0,)]
    started = time.monotonic()
    assert service.run(now=T0 + W + timedelta(minutes=2)).events == 50
    assert time.monotonic() - started > 1.0  # 20 partitions (5 buckets, 4 shards), 0.1 s each: over twice the timeout
    assert stack.query("SELECT watermark FROM enrichment_state") == [(T0 + W,)]


def test_prepared_statements_survive_the_staging_tables_being_recreated(stack: Stack) -> None:
    """With server-side prepared statements on (prepare_threshold=0: from the first use), every window's
    statements name temporary tables dropped at the previous commit; PostgreSQL must re-plan, not fail."""
    stack.send(random_events(random.Random(8), T0, 6 * W, 60))
    with make_pool(stack.dsn, PostgresSettings(host="unused", pool_min_size=1, pool_max_size=1,
                                               prepare_threshold=0)) as pool:
        service = EnrichmentService(CassandraWindowReader(stack.session, stack.store._settings, page_size=100),
                                    PostgresReferenceSource(pool), PostgresEnrichmentStore(pool), enrich_settings(),
                                    RULES)
        assert len(service.run(now=T0 + 6 * W + timedelta(minutes=2)).windows) == 6
        service.backfill(T0, T0 + 6 * W)
        with pool.connection() as conn:
            prepared = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
    assert prepared > 0
    assert stack.query("SELECT count(*) FROM enriched_events") == [(60,)]
    for k in range(6):
        assert_stats_match(stored_device_stats(stack, T0 + k * W), expected_device_stats(stack.sent, T0 + k * W))


# --- with an in-memory window reader: the test decides which rows a read and an arrival scan return, in which order


class MemoryReader:
    """``WindowReader`` over a list of rows, as ``events_by_time_bucket`` / ``events_by_arrival_bucket`` hold them.

    Arrivals come in enqueued-time order, as the real reader hands them over (bucket by bucket, each partition
    clustered by ``enqueued_at``)."""

    def __init__(self) -> None:
        self.events: list[StoredEvent] = []

    def delayed_since(self, start: datetime, end: datetime) -> datetime | None:
        return None

    def read(self, start: datetime, end: datetime) -> list[StoredEvent]:
        return [e for e in self.events if start <= e.event_time < end]

    def read_each(self, start: datetime, end: datetime) -> Iterator[list[StoredEvent]]:
        events = self.read(start, end)
        for i in range(0, len(events), 3):
            yield events[i:i + 3]

    def arrivals(self, start: datetime, end: datetime, *, event_time_before: datetime | None = None
                 ) -> Iterator[Arrival]:
        for e in sorted(self.events, key=lambda e: (e.enqueued_time, e.event_id.int)):
            if start <= e.enqueued_time < end and (event_time_before is None or e.event_time < event_time_before):
                yield Arrival(e.event_id, e.event_time, e.enqueued_time)


class SlowReader(MemoryReader):
    """A :class:`MemoryReader` over ``events`` whose window reads take ``delay`` seconds, as a big window's read
    from Cassandra does (or a wait for another runner's window under the advisory lock)."""

    def __init__(self, events: list[StoredEvent], delay: float) -> None:
        super().__init__()
        self.events, self.delay = events, delay
        self.read_done: datetime | None = None

    def read_each(self, start: datetime, end: datetime) -> Iterator[list[StoredEvent]]:
        time.sleep(self.delay)
        yield from super().read_each(start, end)
        self.read_done = datetime.now(UTC)


def stored(device: str, at: datetime, *, enqueued: datetime | None = None, event_id: uuid.UUID | None = None,
           **measurements: float) -> StoredEvent:
    return StoredEvent(event_id or uuid.uuid4(), device, at, "reading", "info", False, measurements,
                       enqueued_time=enqueued or at + timedelta(seconds=1))


class PgStack:
    """The real store, reference source and migrations on a fresh database; the reader in memory."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        with psycopg.connect(dsn, autocommit=True) as conn:
            apply_postgres(conn)
            upsert_reference(conn, DEVICES, SITES)
        self.pool = make_pool(dsn, PostgresSettings(host="unused", pool_min_size=1, pool_max_size=4))
        self.store = PostgresEnrichmentStore(self.pool, statement_timeout_seconds=60)
        self.store.load_state(T0)  # the first watermark: T0
        self.reader = MemoryReader()
        self.reference = PostgresReferenceSource(self.pool)

    def service(self, **overrides: object) -> EnrichmentService:
        return EnrichmentService(self.reader, self.reference, self.store, enrich_settings(**overrides))

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute(sql, params).fetchall()

    def device_counts(self) -> dict[tuple[datetime, str], int]:
        return {(start, device): n for start, device, n in
                self.query("SELECT window_start, device_id, event_count FROM device_window_stats")}

    def enriched_counts(self) -> dict[tuple[datetime, str], int]:
        return {(start, device): n for start, device, n in
                self.query("SELECT window_start, device_id, count(*) FROM enriched_events GROUP BY 1, 2")}

    def ledger(self) -> list[tuple[datetime, datetime]]:
        return self.query("SELECT window_start, window_end FROM enrichment_windows ORDER BY 1")


@pytest.fixture
def pg(pg_dsn: str) -> Iterator[PgStack]:
    s = PgStack(pg_dsn)
    yield s
    s.pool.close()


def test_both_rows_of_a_re_sent_id_arriving_late_the_latest_event_time_wins_whatever_the_enqueue_order(
        pg: PgStack) -> None:
    """Every late arrival names its own window, so when both rows of an id re-sent with another timestamp arrive
    late in one scan, both windows are recomputed, whichever row Event Hubs enqueued last: the id's enriched row is
    the one with the later event time, in its window, and only that window's figures count it."""
    service = pg.service()
    pg.reader.events += [stored("dev-1", T0 + timedelta(seconds=10), t=1.0),
                         stored("dev-1", T0 + W + timedelta(seconds=10), t=1.0)]
    service.run(now=T0 + 2 * W + timedelta(minutes=2))  # both windows enriched, watermark T0 + 2W
    assert pg.query("SELECT watermark FROM enrichment_state") == [(T0 + 2 * W,)]

    resent = uuid.uuid4()
    late = T0 + 2 * W + timedelta(minutes=3)
    # The row with the LATER event time (window T0+W) reaches Event Hubs first, the corrected earlier one after it.
    pg.reader.events += [stored("dev-2", T0 + W + timedelta(seconds=30), enqueued=late, event_id=resent, t=200.0),
                         stored("dev-2", T0 + timedelta(seconds=30), enqueued=late + timedelta(seconds=5),
                                event_id=resent, t=100.0)]
    for minutes in (4, 5, 6, 10):
        service.run(now=T0 + 2 * W + timedelta(minutes=minutes))

    rows = pg.query("SELECT window_start, event_time, measurements FROM enriched_events WHERE event_id = %s",
                    (resent,))
    assert rows == [(T0 + W, T0 + W + timedelta(seconds=30), {"t": 200.0})]
    counts = pg.device_counts()
    assert counts.get((T0 + W, "dev-2")) == 1 and (T0, "dev-2") not in counts


def test_after_the_window_is_shortened_a_late_event_recomputes_the_window_it_was_enriched_in(pg: PgStack) -> None:
    """The late scan finds an event's window in the ledger by its event time, whatever width that window was
    enriched with, and recomputes it at that width: after SLUICE_ENRICH_WINDOW_SECONDS goes from 300 s to 60 s (as
    docs/enrichment.md#memory allows), a late event of an enriched 300 s window is enriched in it, and every figure
    of that window keeps counting all its events; the ledger row keeps its 300 s."""
    pg.reader.events += [stored("dev-1", T0 + timedelta(seconds=30), t=1.0),
                         stored("dev-2", T0 + timedelta(minutes=3), t=2.0)]
    pg.service().run(now=T0 + W + timedelta(minutes=2))  # [10:00, 10:05) enriched with 5-minute windows
    assert pg.device_counts() == {(T0, "dev-1"): 1, (T0, "dev-2"): 1}

    shorter = pg.service(window_seconds=60)
    arrived = T0 + W + timedelta(minutes=2, seconds=30)
    in_the_middle = stored("dev-2", T0 + timedelta(minutes=3, seconds=30), enqueued=arrived, t=6.0)
    in_the_first_minute = stored("dev-1", T0 + timedelta(seconds=10), enqueued=arrived, t=5.0)
    pg.reader.events += [in_the_middle, in_the_first_minute]
    results = [shorter.run(now=T0 + W + timedelta(minutes=m)) for m in (3, 4, 5)]

    assert [(w.window, w.reason) for w in results[0].windows if w.reason == "late"] == [(Window(T0, T0 + W), "late")]
    assert sum(r.too_late_events for r in results) == 0
    assert dict(pg.query("SELECT event_id, window_start FROM enriched_events WHERE event_id = ANY(%s)",
                         ([in_the_middle.event_id, in_the_first_minute.event_id],))) == {
        in_the_middle.event_id: T0, in_the_first_minute.event_id: T0}
    assert {k: n for k, n in pg.device_counts().items() if k[0] < T0 + W} == {(T0, "dev-1"): 2, (T0, "dev-2"): 2}
    assert pg.enriched_counts() == {(T0, "dev-1"): 2, (T0, "dev-2"): 2}
    assert pg.ledger()[0] == (T0, T0 + W)


def test_after_a_width_change_new_windows_start_where_the_enriched_ones_end_and_never_overlap_them(
        pg: PgStack) -> None:
    """From the watermark on, windows take the new width, aligned to the epoch; when the watermark is not on a
    boundary of it, the first runs from the watermark to the next boundary, so no event falls in a gap or in two
    windows. A backfill over the change recomputes the enriched windows at their own width and fills the rest
    with windows of the new one."""
    pg.reader.events += [stored("dev-1", T0 + timedelta(minutes=m, seconds=20), t=float(m)) for m in range(16)]
    pg.service().run(now=T0 + W + timedelta(minutes=2))  # [10:00, 10:05) with 5-minute windows
    wider = pg.service(window_seconds=240)  # 10:05 is not a multiple of 4 minutes: the next boundary is 10:08
    wider.run(now=T0 + 3 * W + timedelta(minutes=2))
    minute = timedelta(minutes=1)
    assert pg.ledger() == [(T0, T0 + W), (T0 + W, T0 + 8 * minute), (T0 + 8 * minute, T0 + 12 * minute)]
    assert pg.query("SELECT watermark FROM enrichment_state") == [(T0 + 12 * minute,)]
    assert pg.query("SELECT window_start, event_count FROM enrichment_windows ORDER BY 1") == [
        (T0, 5), (T0 + W, 3), (T0 + 8 * minute, 4)]

    outcomes = wider.backfill(T0, T0 + 16 * minute)
    assert [(o.window.start, o.window.end, o.events) for o in outcomes] == [
        (T0, T0 + W, 5), (T0 + W, T0 + 8 * minute, 3), (T0 + 8 * minute, T0 + 12 * minute, 4),
        (T0 + 12 * minute, T0 + 16 * minute, 4)]
    assert sum(pg.device_counts().values()) == 16 == pg.query("SELECT count(*) FROM enriched_events")[0][0]


def test_a_window_overlapping_an_enriched_window_of_another_width_is_refused(pg: PgStack) -> None:
    """The store's last line: a window planned before another writer enriched an overlapping one (a pod with the
    old width, during a roll-out) is not written, so no event is counted by two windows; the next run plans again."""
    pg.reader.events.append(stored("dev-1", T0 + timedelta(minutes=3), t=1.0))
    pg.service().run(now=T0 + W + timedelta(minutes=2))
    source = WindowInput(Window(T0 + timedelta(minutes=2), T0 + timedelta(minutes=4)),
                         lambda: pg.reader.read_each(T0, T0 + W), pg.reference.load())
    with pytest.raises(TransientError, match="overlaps the enriched windows"):
        pg.store.write_window(source, "backfill", advance_watermark=False)
    assert pg.ledger() == [(T0, T0 + W)] and pg.device_counts() == {(T0, "dev-1"): 1}


def _wait_for_lock_wait(dsn: str, *needles: str, timeout: float = 20.0) -> None:
    """Until a backend runs a statement containing one of ``needles`` and waits on a heavyweight lock."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                               "AND wait_event_type = 'Lock' AND query LIKE ANY(%s)",
                               ([f"%{needle}%" for needle in needles],)).fetchone()
            if row and row[0]:
                return
            time.sleep(0.05)
    raise AssertionError(f"no backend waited on a lock in {needles!r}")


def test_two_writers_take_turns_so_a_window_recomputed_meanwhile_keeps_the_row_another_took_over(
        pg: PgStack) -> None:
    """Writers of one pipeline (the timer and a backfill, two pods) take one transaction-scoped advisory lock, so
    their windows are written one after the other: writer A writes W2, which takes the id X over from W1 (X's later
    row is in W2), updates X's enriched row and marks W1 to be recomputed; writer B, writing W1 meanwhile, waits for
    A's commit and then sees X's later row: it leaves X out of W1, and keeps W1's recompute mark until it has.

    The interleaving is pinned by holding the row lock of W1's ledger row from a third connection (A then waits
    at the recompute mark, after its upsert of X): only a way to make the natural race of two pods deterministic.
    """
    x = uuid.uuid4()
    w1, w2 = Window(T0, T0 + W), Window(T0 + W, T0 + 2 * W)
    service = pg.service()
    pg.reader.events += [stored("dev-1", T0 + timedelta(seconds=5), event_id=x, t=1.0),
                         stored("dev-1", T0 + timedelta(seconds=50), t=3.0),
                         stored("dev-2", T0 + W + timedelta(seconds=5), t=4.0)]
    service.run(now=T0 + W + timedelta(minutes=2))  # W1 enriched; X in W1
    # X re-sent on time with a later timestamp, in W2 (enqueued a second after it), before W2 closes
    pg.reader.events.append(stored("dev-1", T0 + W + timedelta(seconds=40), event_id=x, t=2.0))
    for minutes in range(3, 7):  # the timer runs every minute; W2 is still open
        service.run(now=T0 + W + timedelta(minutes=minutes))
    # 10:12: W2 closes. Pod A enriches it (scheduled); pod B (a backfill of W1, or W1's own recompute) writes W1.
    reference = pg.reference.load()
    errors: list[BaseException] = []

    def write(window: Window) -> None:
        try:
            source = WindowInput(window, lambda: pg.reader.read_each(window.start, window.end), reference)
            scheduled = window == w2
            pg.store.write_window(source, "scheduled" if scheduled else "backfill", advance_watermark=scheduled)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    with psycopg.connect(pg.dsn) as blocker:
        blocker.execute("SELECT 1 FROM enrichment_windows WHERE window_start = %s FOR UPDATE", (w1.start,))
        a = threading.Thread(target=write, args=(w2,))
        a.start()
        _wait_for_lock_wait(pg.dsn, "UPDATE enrichment_windows SET recompute")  # A updated X, not committed
        b = threading.Thread(target=write, args=(w1,))
        b.start()
        # B waits: on the pipeline's lock (or, were it a lock per window, on X's row, having read X as still in W1)
        _wait_for_lock_wait(pg.dsn, "pg_advisory_xact_lock", "INSERT INTO enriched_events")
        blocker.rollback()  # A goes on and commits; then B
    a.join(30)
    b.join(30)
    assert not errors, errors

    pg.store.save_late_scan(T0 + 2 * W + timedelta(minutes=2))  # as pod A's run ends
    assert pg.query("SELECT watermark FROM enrichment_state") == [(w2.end,)]
    for minutes in range(3, 8):  # the timer goes on
        service.run(now=T0 + 2 * W + timedelta(minutes=minutes))

    assert pg.query("SELECT window_start, event_time FROM enriched_events WHERE event_id = %s", (x,)) == \
        [(w2.start, T0 + W + timedelta(seconds=40))], "the earlier row of X overwrote the later one"
    total_dev1 = sum(n for (_, d), n in pg.device_counts().items() if d == "dev-1")
    assert total_dev1 == 2, f"dev-1 sent 2 distinct events, its figures count {total_dev1}"


def test_an_id_read_twice_with_a_large_integral_measurement_does_not_break_the_window(pg: PgStack) -> None:
    """When an event id is read twice in a window, the rows of the devices involved are read back from PostgreSQL,
    and jsonb prints an integral double without exponent (1e20 as ``100000000000000000000``) and orders keys by
    length first, where Cassandra's map (and so the held row) has them sorted. Read back as an ``int``, the value
    became the measurement's ``last`` and orjson refused it past 64 bits (``TypeError``, not transient): the window
    failed at every run and the watermark stopped there. Any double from 2**64 up is integral."""
    window = Window(T0, T0 + W)
    twice = uuid.uuid4()
    pg.reader.events += [  # every event carries the same two measurements, in Cassandra's (sorted) key order
        stored("dev-1", T0 + timedelta(seconds=10), event_id=twice, humidity=40.0, temp=20.0),  # read first
        stored("dev-1", T0 + timedelta(seconds=20), event_id=twice, humidity=41.0, temp=21.0),  # re-sent, later
        stored("dev-1", T0 + timedelta(seconds=30), humidity=42.0, temp=1e20),  # the device's latest event
    ]
    source = WindowInput(window, lambda: pg.reader.read_each(window.start, window.end), pg.reference.load())
    pg.store.write_window(source, "backfill", advance_watermark=True)
    rows = pg.query("SELECT (measurements -> 'temp' ->> 'last')::float8, (measurements -> 'temp' ->> 'count')::int "
                    "FROM device_window_stats WHERE device_id = 'dev-1'")
    assert rows == [(1e20, 2)]


def test_a_window_read_as_empty_keeps_its_ledger_counts_with_its_figures(pg: PgStack) -> None:
    """A window read as empty (its events expired from Cassandra, a restored keyspace) keeps its rows and figures,
    as docs/enrichment.md says; its ledger row was still overwritten with ``event_count = 0, device_count = 0``, so
    ``sluice enrich status`` reported the window's events gone while every figure and reporting view still counted
    them. Only ``runs``, ``last_enriched_at`` and ``reason`` move."""
    window = Window(T0, T0 + W)

    def write(reason: Reason, *, advance: bool) -> None:
        source = WindowInput(window, lambda: pg.reader.read_each(window.start, window.end), pg.reference.load())
        pg.store.write_window(source, reason, advance_watermark=advance)

    pg.reader.events += [stored("dev-1", T0 + timedelta(seconds=s), t=1.0) for s in (10, 20, 30)]
    write("scheduled", advance=True)
    assert pg.query("SELECT event_count FROM enrichment_windows") == [(3,)]
    pg.reader.events.clear()  # the window's events are no longer in Cassandra
    write("backfill", advance=False)
    figures = pg.query("SELECT sum(event_count)::int FROM device_window_stats WHERE window_start = %s", (T0,))
    assert figures == [(3,)]  # kept, as documented
    assert pg.query("SELECT event_count, device_count, runs, reason FROM enrichment_windows") == [
        (3, 1, 2, "backfill")]
    with psycopg.connect(pg.dsn) as conn:
        assert enrichment_status(conn)["events"] == 3


def test_report_site_daily_cuts_local_days_with_the_parquet_reference_source(pg: PgStack) -> None:
    """With ``SLUICE_ENRICH_REFERENCE_SOURCE=parquet`` the enrichment knows every site's time zone, but the views
    took it only from the ``sites`` table, which that mode never fills: every site's days were cut in UTC, so a New
    York site's evening events were reported on the next day. A site ``sites`` does not list has its days cut in
    the zone its windows were enriched with (``site_window_stats.site_timezone``)."""
    with psycopg.connect(pg.dsn) as conn:  # parquet mode: the reference data lives in the blobs only
        conn.execute("DELETE FROM devices")
        conn.execute("DELETE FROM sites")
    reference = ReferenceData.of(read_devices(to_parquet(DEVICES, DEVICE_SCHEMA)),
                                 read_sites(to_parquet(SITES, SITE_SCHEMA)))
    start = T0.replace(hour=3)  # 2026-11-20 03:00 UTC = 22:00 on the 19th in New York
    window = Window(start, start + W)
    pg.reader.events.append(stored("dev-3", start + timedelta(seconds=10), t=1.0))  # dev-3 is at site-b (New York)
    pg.store.write_window(WindowInput(window, lambda: pg.reader.read_each(window.start, window.end), reference),
                          "backfill", advance_watermark=False)
    assert pg.query("SELECT site_timezone FROM enriched_events") == [("America/New_York",)]
    assert pg.query("SELECT timezone, local_day::text FROM report_site_daily WHERE site_id = 'site-b'") == [
        ("America/New_York", "2026-11-19")]
    assert pg.query("SELECT local_day::text FROM report_site_measurement_daily WHERE site_id = 'site-b'") == [
        ("2026-11-19",)]


def _parquet_reference(pg: PgStack, devices: list[DeviceRef] = DEVICES) -> ReferenceData:
    """``SLUICE_ENRICH_REFERENCE_SOURCE=parquet``: ``devices`` and ``sites`` empty, the reference data read from
    blobs (``devices`` as the devices blob)."""
    with psycopg.connect(pg.dsn) as conn:
        conn.execute("DELETE FROM devices")
        conn.execute("DELETE FROM sites")
    return ReferenceData.of(read_devices(to_parquet(devices, DEVICE_SCHEMA)),
                            read_sites(to_parquet(SITES, SITE_SCHEMA)))


def _backfill(pg: PgStack, window: Window, reference: ReferenceData) -> None:
    pg.store.write_window(WindowInput(window, lambda: pg.reader.read_each(window.start, window.end), reference),
                          "backfill", advance_watermark=False)


def test_report_device_health_shows_model_and_firmware_with_the_parquet_reference_source(pg: PgStack) -> None:
    """With ``SLUICE_ENRICH_REFERENCE_SOURCE=parquet`` ``report_device_health.model`` / ``firmware`` came from the
    ``devices`` table only, which that mode never fills: every device showed NULL although its enriched rows held
    them. A device ``devices`` does not list shows those of its latest window enriched with a reference row (016)."""
    reference = _parquet_reference(pg)
    pg.reader.events.append(stored("dev-1", T0 + timedelta(seconds=10), t=1.0))
    _backfill(pg, Window(T0, T0 + W), reference)
    assert pg.query("SELECT model, firmware FROM enriched_events") == [("TX-1", "1.0.0")]
    assert pg.query("SELECT model, firmware FROM report_device_health WHERE device_id = 'dev-1'") == [
        ("TX-1", "1.0.0")]
    assert_device_totals_exact(pg.dsn)


def test_report_unknown_devices_now_known_with_the_parquet_reference_source(pg: PgStack) -> None:
    """``report_unknown_devices.now_known`` was whether the ``devices`` table lists the device, so with
    ``SLUICE_ENRICH_REFERENCE_SOURCE=parquet`` a device added to the devices blob stayed ``now_known = false`` for
    good and ``sluice enrich unknown-devices`` never said to backfill it. A later window enriched with a reference
    row for it makes it known (016)."""
    pg.reader.events.append(stored("dev-new", T0 + timedelta(seconds=10), t=1.0))
    _backfill(pg, Window(T0, T0 + W), _parquet_reference(pg))
    assert pg.query("SELECT device_id, now_known FROM report_unknown_devices") == [("dev-new", False)]
    added = [*DEVICES, DeviceRef("dev-new", "site-a", "TX-9", "9.0", "ops")]  # added to the blob
    pg.reader.events.append(stored("dev-new", T0 + W + timedelta(seconds=10), t=1.0))
    _backfill(pg, Window(T0 + W, T0 + 2 * W), _parquet_reference(pg, added))
    assert pg.query("SELECT known_device FROM device_window_stats ORDER BY window_start") == [(False,), (True,)]
    assert pg.query("SELECT device_id, now_known FROM report_unknown_devices") == [("dev-new", True)]
    removed = [d for d in added if d.device_id != "dev-new"]  # removed again: unknown in a later window
    pg.reader.events.append(stored("dev-new", T0 + 2 * W + timedelta(seconds=10), t=1.0))
    _backfill(pg, Window(T0 + 2 * W, T0 + 3 * W), _parquet_reference(pg, removed))
    assert pg.query("SELECT device_id, now_known FROM report_unknown_devices") == [("dev-new", False)]
    assert pg.query("SELECT model, firmware FROM report_device_health WHERE device_id = 'dev-new'") == [
        ("TX-9", "9.0")]  # as in its latest window enriched with a reference row


def test_device_totals_follow_every_change_of_the_window_figures(pg: PgStack) -> None:
    """``device_totals`` (010) is kept by statement triggers on ``device_window_stats``: after each kind of write the
    real store makes (new windows, a late recompute whose events moved to another device and window, a window left
    with no rows, devices becoming known and unknown, a TRUNCATE) it equals an aggregate of every window, and
    ``report_device_health`` equals the old view that computed one. Windows lie around the real clock, so the
    24-hour columns count some windows and not others."""
    base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)
    base -= timedelta(minutes=base.minute % 5)
    w_old, w1, w2, w3, w4 = (Window(s, s + W) for s in (base - timedelta(days=2), base, base + W, base + 2 * W,
                                                         base + 3 * W))

    def event(device: str, window: Window, second: int, *, critical: bool = False,
              event_id: uuid.UUID | None = None) -> StoredEvent:
        at = window.start + timedelta(seconds=second)
        return StoredEvent(event_id or uuid.uuid4(), device, at, "reading", "critical" if critical else "info",
                           critical, {"t": float(second)}, enqueued_time=at + timedelta(seconds=1))

    def write(*windows: Window) -> None:
        for window in windows:
            source = WindowInput(window, lambda w=window: pg.reader.read_each(w.start, w.end), pg.reference.load())
            pg.store.write_window(source, "backfill", advance_watermark=False)

    def totals() -> dict[str, tuple]:
        return {d: (n, known, events, critical) for d, n, known, events, critical in pg.query(
            "SELECT device_id, windows, known_windows, events_total, critical_total FROM device_totals")}

    moved, emptied = uuid.uuid4(), uuid.uuid4()
    pg.reader.events += [event("dev-1", w_old, 10), event("dev-1", w_old, 20, critical=True), event("dev-x", w_old, 30),
                         event("dev-1", w1, 10), event("dev-2", w1, 20), event("dev-2", w1, 30, critical=True),
                         event("dev-x", w1, 40), event("dev-3", w1, 50, event_id=moved),
                         event("dev-2", w2, 10), event("dev-4", w3, 10, event_id=emptied)]
    write(w_old, w1, w2, w3)  # new windows (COPY, then the upsert of the figures)
    assert_device_totals_exact(pg.dsn)
    assert totals()["dev-3"] == (1, 1, 1, 0)

    # The id sent by dev-3 in w1 is re-sent by dev-1 later, in w2, with a late event of dev-2 for w1: w2 takes it
    # over (an insert of dev-1's row), w1 is recomputed (dev-3's row deleted, dev-2's updated).
    pg.reader.events += [event("dev-1", w2, 40, event_id=moved), event("dev-2", w1, 45, critical=True)]
    write(w2, w1)
    assert pg.query("SELECT recompute FROM enrichment_windows WHERE window_start = %s", (w1.start,)) == [(False,)]
    view = {row[0]: row for row in assert_device_totals_exact(pg.dsn)}
    assert "dev-3" not in view and totals()["dev-3"] == (0, 0, 0, 0)
    assert view["dev-2"][6:11] == (4, 2, 2, 4, 2)  # events_24h, critical_24h, active_windows_24h, totals

    # w3's only event moves to w4: recomputed, w3 has no rows left
    pg.reader.events.append(event("dev-2", w4, 5, event_id=emptied))
    write(w4, w3)
    assert pg.query("SELECT count(*) FROM device_window_stats WHERE window_start = %s", (w3.start,)) == [(0,)]
    assert_device_totals_exact(pg.dsn)
    assert totals()["dev-4"] == (0, 0, 0, 0)

    # dev-x gets a reference row, dev-2 loses its own: the windows written again flip known_device (updates)
    with psycopg.connect(pg.dsn) as conn:
        conn.execute("INSERT INTO devices (device_id, site_id, model, firmware) VALUES ('dev-x', 'site-b', 'TX-9', "
                     "'9')")
        conn.execute("DELETE FROM devices WHERE device_id = 'dev-2'")
    write(w_old, w1)
    view = {row[0]: row for row in assert_device_totals_exact(pg.dsn)}
    assert totals()["dev-x"] == (2, 2, 2, 0) and view["dev-x"][1:4] == (True, "site-b", "TX-9")
    assert totals()["dev-2"][:2] == (3, 2)  # w1 now unknown; w2 and w4 still known

    with psycopg.connect(pg.dsn) as conn:
        conn.execute("TRUNCATE device_window_stats")
    assert totals() == {}
    assert assert_device_totals_exact(pg.dsn) == []
    write(w2)
    assert set(totals()) == {"dev-1", "dev-2"}
    assert_device_totals_exact(pg.dsn)


def test_device_health_is_critical_for_a_critical_event_within_the_last_24_hours(pg: PgStack) -> None:
    """``critical`` when the device sent a critical event in the last 24 hours (docs/reporting.md). The view counted
    the windows that *started* in the last 24 hours, so a critical event 23h58m ago in the window that started just
    over 24 hours ago was left out, and with daily windows a whole day was: the window holding the mark counts."""
    while True:  # the 24-hour mark must fall inside a window, at least a minute before its last event
        now = datetime.now(UTC)
        day_ago = now - timedelta(hours=24)
        start = window_of(day_ago, 300).start
        if start < day_ago < start + timedelta(seconds=299) - timedelta(seconds=60):
            break
        time.sleep(1)
    critical_at = start + timedelta(seconds=299)  # more than a minute inside the last 24 hours
    pg.reader.events += [
        StoredEvent(uuid.uuid4(), "dev-1", critical_at, "reading", "critical", True, {"t": 1.0},
                    enqueued_time=critical_at),
        stored("dev-1", now - timedelta(minutes=10), t=2.0),
    ]
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("UPDATE enrichment_state SET watermark = %s, late_scan_until = %s", (start, start))
    pg.service(max_windows_per_run=1000).run(now=now)
    assert pg.query("SELECT sum(critical_count)::int FROM device_window_stats") == [(1,)]
    assert pg.query("SELECT %s > now() - interval '24 hours'", (critical_at,)) == [(True,)]  # still within 24 h
    assert pg.query("SELECT events_24h, critical_24h, active_windows_24h, health FROM report_device_health "
                    "WHERE device_id = 'dev-1'") == [(2, 1, 2, "critical")]
    assert_device_totals_exact(pg.dsn)
