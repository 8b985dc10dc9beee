"""Change feed -> Redis against the Cassandra emulator and real Redis, in both feed modes.

Events are stored by the real ingest adapter (``CassandraEventStore``); runs go
through the timer function the app registers or through ``ChangeFeedService``
built from the real adapters. Helpers here are reused by the lookup tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from azure.functions.timer import TimerRequest
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared import bootstrap
from shared.adapters.cassandra.event_store import CassandraEventStore
from shared.adapters.cassandra.feed import CassandraFeedStateStore, CosmosChangeFeed, PortableChangeFeed
from shared.adapters.cassandra.migrations import MIGRATIONS, apply_migrations
from shared.adapters.cassandra.session import build_cluster
from shared.adapters.redis import RedisChangeSink
from shared.domain.events import DeviceEvent, Event, EventMetadata
from shared.domain.rules import MeasurementRule
from shared.exceptions import DependencyRefused, DependencyUnavailable
from shared.ports.feed import SavedPosition
from shared.services.changefeed import ChangeFeedService
from shared.settings import CassandraSettings
from sluice.launcher import Running, start
from tests.fixtures.functions import HostContext, user_function

ROOT = Path(__file__).resolve().parents[2]
RULES = [MeasurementRule(measurement="temperature", op=">", value=90)]
BUCKET_SECONDS = 60
SHARDS = 2
MODES = ["cosmos", "portable"]


# -- helpers shared with the lookup tests ---------------------------------------------------

def cassandra_settings(emulator: Running, keyspace: str) -> CassandraSettings:
    return CassandraSettings(hosts=[emulator.host], port=emulator.port, keyspace=keyspace, consistency="ONE",
                             bucket_seconds=BUCKET_SECONDS, shards=SHARDS, request_timeout_seconds=5,
                             overload_max_retries=1)


def make_event(device: str, at: datetime, *, severity: str = "info", measurements: dict | None = None,
               enqueued: datetime | None = None, event_id: uuid.UUID | None = None,
               attributes: dict[str, str] | None = None) -> Event:
    body = DeviceEvent.model_validate(
        {"event_id": str(event_id or uuid.uuid4()), "device_id": device, "event_type": "telemetry",
         "timestamp": at.isoformat(), "severity": severity, "measurements": measurements or {},
         "attributes": attributes or {}},
        context={"now": datetime.now(UTC) + timedelta(days=1)},
    )
    return Event(body, EventMetadata(partition_id="0", offset="1", sequence_number=1,
                                     enqueued_time=enqueued or datetime.now(UTC)))


def sample_env(**overrides: str) -> dict[str, str]:
    values = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    env = {k: v for k, v in values.items() if v != ""}
    env.update(overrides)
    return env


@pytest.fixture(scope="module")
def session(cassandra_emulator: Running):
    cluster = build_cluster(cassandra_settings(cassandra_emulator, "system"))
    cluster.schema_metadata_enabled = False  # tests create many keyspaces: skip the driver's schema refreshes
    s = cluster.connect()
    yield s
    cluster.shutdown()


@pytest.fixture
def keyspace(session, cassandra_emulator: Running, cassandra_keyspace: str) -> str:
    apply_migrations(session, cassandra_settings(cassandra_emulator, cassandra_keyspace))
    return cassandra_keyspace


@pytest.fixture
def store(session, cassandra_emulator: Running, keyspace: str) -> CassandraEventStore:
    return CassandraEventStore(session, cassandra_settings(cassandra_emulator, keyspace), RULES)


@pytest.fixture
def rclient(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def make_cache(client: redis.Redis, prefix: str, **kw) -> RedisChangeSink:
    return RedisChangeSink(client, key_prefix=prefix, ttl_seconds=kw.pop("ttl_seconds", 3600), **kw)


def make_feed(mode: str, session, keyspace: str, *, page_size: int = 1000, lookback: int = 900,
              overlap: int = BUCKET_SECONDS):
    if mode == "cosmos":
        return CosmosChangeFeed(session, keyspace, page_size=page_size, lookback_seconds=lookback)
    return PortableChangeFeed(session, keyspace, bucket_seconds=BUCKET_SECONDS, shards=SHARDS,
                              lookback_seconds=lookback, overlap_seconds=overlap, max_span_seconds=3600)


def make_service(mode: str, session, keyspace: str, sink, *, page_size: int = 1000, **kw) -> ChangeFeedService:
    feed = make_feed(mode, session, keyspace, page_size=page_size)
    return ChangeFeedService(feed, sink, CassandraFeedStateStore(session, keyspace), feed_name="events",
                             rules=RULES, time_budget=kw.pop("time_budget", 60), apply_chunk=page_size, **kw)


def spread(count: int, *, devices: int = 3, start: datetime | None = None, critical_every: int = 4) -> list[Event]:
    """``count`` events over ``devices`` devices, enqueued one per 7 s over the last minutes (several buckets)."""
    now = datetime.now(UTC).replace(microsecond=0)
    start = start or now - timedelta(minutes=10)
    return [
        make_event(f"dev-{i % devices}", start + timedelta(seconds=7 * i),
                   severity="critical" if i % critical_every == 0 else "info",
                   enqueued=min(now - timedelta(seconds=1), start + timedelta(seconds=7 * i)))
        for i in range(count)
    ]


def latest_doc(client: redis.Redis, cache: RedisChangeSink, device: str) -> dict | None:
    raw = client.hget(cache.keys.latest(device), "d")
    return json.loads(raw) if raw else None


def critical_ids(client: redis.Redis, cache: RedisChangeSink, device: str) -> list[str]:
    return [json.loads(doc)["event_id"] for doc in client.zrevrange(cache.keys.critical(device), 0, -1)]


def expected_state(events: list[Event]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Newest event id per device, and each device's critical event ids newest first."""
    latest: dict[str, Event] = {}
    critical: dict[str, list[Event]] = {}
    for e in events:
        current = latest.get(e.device_id)
        if current is None or (e.timestamp, str(e.event_id)) > (current.timestamp, str(current.event_id)):
            latest[e.device_id] = e
        if e.body.severity == "critical" or e.body.measurements.get("temperature", 0) > 90:
            critical.setdefault(e.device_id, []).append(e)
    return ({d: str(e.event_id) for d, e in latest.items()},
            {d: [str(e.event_id) for e in sorted(es, key=lambda e: e.timestamp, reverse=True)]
             for d, es in critical.items()})


def assert_redis_matches(client: redis.Redis, cache: RedisChangeSink, events: list[Event]) -> None:
    latest, critical = expected_state(events)
    for device, event_id in latest.items():
        assert latest_doc(client, cache, device)["event_id"] == event_id, device
        assert critical_ids(client, cache, device) == critical.get(device, []), device
    stream_ids = [fields[b"event_id"].decode() for key in cache.keys.streams for _, fields in client.xrange(key)]
    assert sorted(stream_ids) == sorted(i for ids in critical.values() for i in ids)  # each critical event once


class CountingSink:
    """Wraps the real sink, records what it applied, and can fail on demand before a given call."""

    def __init__(self, inner: RedisChangeSink, before_call=None) -> None:
        self.inner = inner
        self.applied: list[str] = []
        self.calls = 0
        self.before_call = before_call

    def apply(self, events) -> list[str]:
        self.calls += 1
        if self.before_call:
            self.before_call(self.calls)
        missing = self.inner.apply(events)
        self.applied += [str(e.event_id) for e in events]
        return missing

    def put_latest(self, events) -> None:
        self.inner.put_latest(events)


# -- the registered timer function -----------------------------------------------------------

@pytest.fixture
def app_env(monkeypatch, cassandra_emulator: Running, keyspace: str, redis_url: str, redis_prefix: str):
    """Point the app's settings at the emulator keyspace and this test's Redis prefix (bootstrap reset around)."""
    def configure(**overrides: str) -> None:
        env = sample_env(**{
            "SLUICE_CASSANDRA_HOSTS": cassandra_emulator.host, "SLUICE_CASSANDRA_PORT": str(cassandra_emulator.port),
            "SLUICE_CASSANDRA_KEYSPACE": keyspace, "SLUICE_CASSANDRA_CONSISTENCY": "ONE",
            "SLUICE_CASSANDRA_BUCKET_SECONDS": str(BUCKET_SECONDS), "SLUICE_CASSANDRA_SHARDS": str(SHARDS),
            "SLUICE_REDIS_URL": redis_url, "SLUICE_REDIS_KEY_PREFIX": redis_prefix,
            "SLUICE_CRITICAL_RULES": json.dumps([r.model_dump() for r in RULES]),
            "SLUICE_CHANGEFEED_LOOKBACK_SECONDS": "900", **overrides})
        for name in [n for n in os.environ if n.startswith("SLUICE_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        bootstrap.reset()

    yield configure
    bootstrap.reset()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
def test_timer_run_puts_critical_events_and_latest_state_in_redis(mode, app_env, store, rclient, redis_prefix):
    app_env(SLUICE_CHANGEFEED_MODE=mode)
    now = datetime.now(UTC).replace(microsecond=0)
    events = [
        make_event("pump-1", now - timedelta(minutes=5), severity="info", measurements={"temperature": 20.5}),
        make_event("pump-1", now - timedelta(minutes=4), severity="critical"),
        make_event("pump-1", now - timedelta(minutes=3), severity="warning", measurements={"temperature": 95.0}),
        make_event("pump-1", now - timedelta(minutes=2), severity="info", measurements={"temperature": 30.0}),
        make_event("fan-7", now - timedelta(minutes=1), severity="warning", measurements={"rpm": 1200.0}),
    ]
    store.write(events)

    user_function("changefeed")(TimerRequest(past_due=False), HostContext("changefeed"))

    cache = make_cache(rclient, redis_prefix)
    pump_latest = latest_doc(rclient, cache, "pump-1")
    assert pump_latest["event_id"] == str(events[3].event_id)
    assert pump_latest["measurements"] == {"temperature": 30.0} and pump_latest["critical"] is False
    # critical by severity and by the temperature rule, newest first; the info/warning ones are absent
    assert critical_ids(rclient, cache, "pump-1") == [str(events[2].event_id), str(events[1].event_id)]
    assert json.loads(rclient.hget(cache.keys.event(events[1].event_id), "d"))["severity"] == "critical"
    # the others get no document by id, only the feed's short-lived note of the copy it applied
    assert [rclient.hget(cache.keys.event(events[n].event_id), "d") for n in (0, 3)] == [None, None]
    # non-critical device: latest state only
    assert latest_doc(rclient, cache, "fan-7")["event_id"] == str(events[4].event_id)
    assert rclient.exists(cache.keys.critical("fan-7")) == 0
    stream = [fields[b"event_id"].decode() for key in cache.keys.streams for _, fields in rclient.xrange(key)]
    assert sorted(stream) == sorted([str(events[1].event_id), str(events[2].event_id)])
    # every key has a TTL
    keys = list(rclient.scan_iter(match=redis_prefix + "*"))
    assert keys and all(0 < rclient.ttl(k) <= 7 * 24 * 3600 for k in keys)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
def test_out_of_order_arrivals_keep_the_newest_as_latest(mode, session, keyspace, store, rclient, redis_prefix):
    cache = make_cache(rclient, redis_prefix)
    now = datetime.now(UTC).replace(microsecond=0)
    newest = make_event("d1", now - timedelta(minutes=1), enqueued=now - timedelta(minutes=3))
    older = make_event("d1", now - timedelta(minutes=9), enqueued=now - timedelta(minutes=2))
    oldest = make_event("d1", now - timedelta(minutes=10), enqueued=now - timedelta(seconds=30))
    store.write([newest, older])  # one page: the older arrives after the newer
    make_service(mode, session, keyspace, cache).run()
    assert latest_doc(rclient, cache, "d1")["event_id"] == str(newest.event_id)
    store.write([oldest])  # a later run with an even older event
    make_service(mode, session, keyspace, cache).run()
    assert latest_doc(rclient, cache, "d1")["event_id"] == str(newest.event_id)


class Crash(Exception):
    """Stands for the process dying between the Redis write and the position save."""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", MODES)
def test_continuation_survives_a_restart_without_gap_or_more_than_one_page_again(
        mode, session, keyspace, store, rclient, redis_prefix):
    cache = make_cache(rclient, redis_prefix)
    events = spread(40)
    store.write(events)
    page_size = 6

    crashed = CountingSink(cache)
    service = make_service(mode, session, keyspace, crashed, page_size=page_size)
    real_save = service._positions.save
    saved: list[tuple[int, object]] = []  # (events applied when saved, position)

    def save_or_crash(name, position, version):  # after 13+ events, the process "dies" before the save
        if len(crashed.applied) >= 13:
            raise Crash
        saved.append((len(crashed.applied), position))
        return real_save(name, position, version)

    service._positions.save = save_or_crash
    with pytest.raises(Crash):
        service.run()
    first = list(crashed.applied)
    covered, last_position = saved[-1]
    unsaved = set(first[covered:])  # written to Redis, but the position covering them was never saved
    assert covered > 0 and unsaved

    resumed = CountingSink(cache)  # a new process: new feed, new position store, same Cassandra and Redis
    make_service(mode, session, keyspace, resumed, page_size=page_size).run()

    assert set(first) | set(resumed.applied) == {str(e.event_id) for e in events}  # no gap
    again = {i for i in resumed.applied if i in set(first)}
    if mode == "cosmos":
        assert again == unsaved  # exactly the page whose save was lost
    else:  # plus, by design, the overlap window before the saved watermark
        overlap_start = last_position.watermark - timedelta(seconds=BUCKET_SECONDS)
        in_overlap = {str(e.event_id) for e in events if e.metadata.enqueued_time >= overlap_start}
        assert unsaved <= again <= unsaved | in_overlap
    assert_redis_matches(rclient, cache, events)


def _bucket(event: Event) -> int:
    return int(event.metadata.enqueued_time.timestamp()) // BUCKET_SECONDS


# -- Redis failing mid-run --------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_redis() -> Iterator[tuple[Running, int]]:
    """A throw-away redis-server (never the shared one on 6379), in memory only."""
    import re

    port = _free_port()
    running = start(
        "private-redis",
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        timeout=20,
        ready=re.compile(r"(?P<ready>Ready to accept)"),
    )
    yield running, port
    if running.alive():
        os.kill(running.process.pid, signal.SIGCONT)
    running.stop()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", MODES)
def test_redis_failure_mid_run_keeps_the_continuation_and_the_next_run_writes_everything(
        mode, session, keyspace, store, private_redis):
    server, port = private_redis
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5, socket_connect_timeout=0.5,
                         retry=Retry(NoBackoff(), 0))
    cache = make_cache(client, "t:")
    events = spread(40)
    store.write(events)
    positions = CassandraFeedStateStore(session, keyspace)

    at_freeze: list[SavedPosition | None] = []

    def freeze_redis_on_third_write(call: int) -> None:
        if call == 3:
            at_freeze.append(positions.load("events"))
            os.kill(server.process.pid, signal.SIGSTOP)  # Redis stops answering mid-run

    failing = CountingSink(cache, before_call=freeze_redis_on_third_write)
    service = make_service(mode, session, keyspace, failing, page_size=6)
    with pytest.raises(DependencyUnavailable) as raised:
        service.run()
    assert raised.value.dependency == "redis"
    assert at_freeze[0] is not None and at_freeze[0].version >= 1
    assert positions.load("events") == at_freeze[0]  # not moved past the page Redis did not take

    os.kill(server.process.pid, signal.SIGCONT)
    done = CountingSink(cache)
    make_service(mode, session, keyspace, done, page_size=6).run()
    assert set(failing.applied) | set(done.applied) == {str(e.event_id) for e in events}
    assert set(failing.applied).isdisjoint(done.applied) or mode == "portable"  # portable re-reads its overlap
    assert_redis_matches(client, cache, events)
    client.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", MODES)
def test_a_write_redis_refuses_mid_run_keeps_the_continuation_and_the_next_run_writes_everything(
        mode, session, keyspace, store, private_redis):
    """A Redis that answers but refuses writes (full, ``maxmemory-policy noeviction``: ``OOM``) stops the run as an
    outage does: the refusal is a ``DependencyUnavailable`` (``DependencyRefused``, which the lookups' breaker does
    not open on), raised before the page's position is saved; once Redis takes writes again the next run writes
    every event."""
    _server, port = private_redis
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    cache = make_cache(client, "t:")
    events = spread(40)
    store.write(events)
    positions = CassandraFeedStateStore(session, keyspace)

    at_refusal: list[SavedPosition | None] = []

    def fill_redis_on_third_write(call: int) -> None:
        if call == 3:
            at_refusal.append(positions.load("events"))
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", "1")  # full: every write refused from now on, reads still answered

    failing = CountingSink(cache, before_call=fill_redis_on_third_write)
    try:
        with pytest.raises(DependencyRefused) as raised:
            make_service(mode, session, keyspace, failing, page_size=6).run()
    finally:
        client.config_set("maxmemory", "0")
    assert isinstance(raised.value, DependencyUnavailable) and raised.value.dependency == "redis"
    assert "OutOfMemoryError" in str(raised.value)
    assert at_refusal[0] is not None and at_refusal[0].version >= 1
    assert positions.load("events") == at_refusal[0]  # not moved past the page Redis refused

    done = CountingSink(cache)
    make_service(mode, session, keyspace, done, page_size=6).run()
    assert set(failing.applied) | set(done.applied) == {str(e.event_id) for e in events}
    assert_redis_matches(client, cache, events)
    client.close()


# -- two instances at once ----------------------------------------------------------------------

@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", MODES)
def test_two_runs_at_once_leave_a_correct_state(mode, session, keyspace, store, rclient, redis_prefix):
    cache = make_cache(rclient, redis_prefix, critical_per_device_max=5)
    events = spread(60, devices=4, critical_every=2)
    store.write(events)
    outcomes: list[object] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        service = make_service(mode, session, keyspace, cache, page_size=5)
        barrier.wait()
        try:
            outcomes.append(service.run())
        except Exception as exc:  # collected and asserted below
            outcomes.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(not isinstance(o, Exception) for o in outcomes), outcomes
    # a third run brings everything up to date whoever won; then the state is exactly one clean pass
    make_service(mode, session, keyspace, cache, page_size=5).run()
    latest, critical = expected_state(events)
    for device, event_id in latest.items():
        assert latest_doc(rclient, cache, device)["event_id"] == event_id
        assert critical_ids(rclient, cache, device) == critical.get(device, [])[:5]  # capped per device
    stream = [f[b"event_id"].decode() for key in cache.keys.streams for _, f in rclient.xrange(key)]
    assert sorted(stream) == sorted(i for ids in critical.values() for i in ids)  # no duplicates from the race


# -- a rejected continuation (Cosmos mode only: the portable feed has none) ---------------------

@pytest.mark.timeout(60)
def test_rejected_continuation_restarts_from_the_lookback_with_a_warning(
        session, keyspace, store, rclient, redis_prefix, caplog):
    cache = make_cache(rclient, redis_prefix)
    store.write(spread(5))
    make_service("cosmos", session, keyspace, cache).run()
    # the table is dropped and recreated: the saved paging state belongs to a table that no longer exists
    session.execute(f"DROP TABLE {keyspace}.events_by_id")
    by_id = next(s for s in MIGRATIONS[0].statements if ".events_by_id (" in s)
    session.execute(by_id.format(ks=keyspace))
    after = make_event("reborn", datetime.now(UTC) - timedelta(seconds=5), severity="critical")
    store.write([after])

    result = make_service("cosmos", session, keyspace, cache).run()
    assert result.restarted
    assert "restarting from the lookback" in caplog.text
    assert latest_doc(rclient, cache, "reborn")["event_id"] == str(after.event_id)
    assert critical_ids(rclient, cache, "reborn") == [str(after.event_id)]


@pytest.mark.timeout(60)
def test_timer_run_with_redis_unreachable_fails_visibly_and_saves_nothing(app_env, session, keyspace, store):
    app_env(SLUICE_REDIS_URL=f"redis://127.0.0.1:{_free_port()}/0", SLUICE_REDIS_SOCKET_TIMEOUT_SECONDS="0.5")
    store.write(spread(3))
    with pytest.raises(DependencyUnavailable) as raised:
        user_function("changefeed")(TimerRequest(past_due=True), HostContext("changefeed"))
    assert raised.value.dependency == "redis"
    assert CassandraFeedStateStore(session, keyspace).load("events_by_id") is None


@pytest.mark.timeout(60)
def test_portable_feed_advances_a_far_behind_watermark_in_bounded_steps(
    session, keyspace, store, rclient, redis_prefix
):
    cache = make_cache(rclient, redis_prefix)
    events = spread(30)  # enqueued over ~3.5 minutes, starting 10 minutes ago
    store.write(events)
    feed = PortableChangeFeed(session, keyspace, bucket_seconds=BUCKET_SECONDS, shards=SHARDS, lookback_seconds=900,
                              overlap_seconds=0, max_span_seconds=240)
    positions = CassandraFeedStateStore(session, keyspace)
    seen = CountingSink(cache)
    first_run = ChangeFeedService(feed, seen, positions, feed_name="events", rules=RULES)
    first_run.run()
    first = positions.load("events").position.watermark
    runs = 1
    while len(set(seen.applied)) < len(events) and runs < 10:
        before = positions.load("events").position.watermark
        ChangeFeedService(feed, seen, positions, feed_name="events", rules=RULES).run()
        after = positions.load("events").position.watermark
        assert timedelta(0) < after - before <= timedelta(seconds=240)  # never more than max_span per run
        runs += 1
    assert first - timedelta(seconds=240) <= datetime.now(UTC) - timedelta(seconds=900) <= first
    assert runs >= 3 and set(seen.applied) == {str(e.event_id) for e in events}
    assert_redis_matches(rclient, cache, events)


@pytest.mark.timeout(60)
def test_a_run_that_spends_its_budget_stops_cleanly_with_its_last_page_saved(
        session, keyspace, store, rclient, redis_prefix):
    """A healthy run that reaches its time budget mid catch-up (after an outage, a backlog) must stop with
    ``stopped="budget"``, not time out its last read for want of budget, report Cassandra as down
    (``DependencyUnavailable``) and throw the page away: the budget decides whether a page is started, and a
    started page gets the whole read timeout."""
    store.write(spread(30))  # ~3.5 minutes of arrivals, 10 minutes ago: several pages (buckets) to catch up on
    # the run's clock: the budget is nearly spent when the second page is asked for (1 us left), as at the end of
    # any run that spends its budget reading pages that take longer than what is left
    ticks = iter([0.0, 0.0, 20.0 - 1e-6])
    service = make_service("portable", session, keyspace, CountingSink(make_cache(rclient, redis_prefix)),
                           time_budget=20.0, monotonic=lambda: next(ticks, 100.0))
    result = service.run()  # raised DependencyUnavailable when the last read was given only the time left
    assert result.stopped == "budget" and result.pages == 2 and result.saves == 2, "the last page is kept"
    assert CassandraFeedStateStore(session, keyspace).load("events") is not None, "the first page's position is saved"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
def test_throttled_reads_are_retried_and_a_read_outage_keeps_the_position(
        mode, cassandra_emulator, session, keyspace, store, rclient, redis_prefix):
    from emulators.cassandra.faults import clear_faults, inject_faults

    cache = make_cache(rclient, redis_prefix)
    events = spread(12)
    store.write(events)
    host, port = cassandra_emulator.host, cassandra_emulator.port
    positions = CassandraFeedStateStore(session, keyspace)
    try:
        inject_faults(host, port, error="overloaded", count=1, retry_after_ms=5, applies_to="reads")
        make_service(mode, session, keyspace, cache).run()  # Cosmos 429s: retried by the session's policy
        assert_redis_matches(rclient, cache, events)
        saved = positions.load("events")

        later = [make_event("late-1", datetime.now(UTC) - timedelta(seconds=2), severity="critical")]
        store.write(later)
        inject_faults(host, port, error="read_timeout", ratio=1.0, applies_to="reads")
        with pytest.raises(DependencyUnavailable) as raised:
            make_service(mode, session, keyspace, cache).run()
        assert raised.value.dependency == "cassandra"
    finally:
        clear_faults(host, port)
    assert positions.load("events") == saved  # nothing read, nothing saved
    make_service(mode, session, keyspace, cache).run()
    assert_redis_matches(rclient, cache, events + later)


@pytest.mark.timeout(60)
def test_portable_feed_reads_back_to_a_batch_ingest_noted_as_stored_late(session, keyspace, store, rclient,
                                                                          redis_prefix):
    # Ingest fell behind: a batch enqueued five minutes ago is stored only now, after the feed's watermark passed
    # its enqueue time by more than the overlap. Its note makes the next run read from there.
    from shared.adapters.cassandra.delays import CassandraDelayLog
    from shared.ports.ingest import DelayedBatch

    cache = make_cache(rclient, redis_prefix)
    positions = CassandraFeedStateStore(session, keyspace)
    feed = PortableChangeFeed(session, keyspace, bucket_seconds=BUCKET_SECONDS, shards=SHARDS, lookback_seconds=900,
                              overlap_seconds=30, max_span_seconds=3600)
    seen = CountingSink(cache)
    ChangeFeedService(feed, seen, positions, feed_name="events", rules=RULES).run()  # caught up: watermark = now
    enqueued = datetime.now(UTC) - timedelta(minutes=5)
    late = [make_event(f"late-{i}", enqueued - timedelta(seconds=i), enqueued=enqueued) for i in range(3)]
    store.write(late)
    ChangeFeedService(feed, seen, positions, feed_name="events", rules=RULES).run()
    assert not set(seen.applied) & {str(e.event_id) for e in late}, "beyond the overlap, and no note yet"
    CassandraDelayLog(session, keyspace, bucket_seconds=BUCKET_SECONDS).record(
        DelayedBatch("0", 1, enqueued, len(late)))
    # A run reads the notes written before its start, in whole milliseconds: one written in the very millisecond a
    # run starts is the next run's (which re-reads the overlap). The next tick comes later than this.
    time.sleep(0.01)
    ChangeFeedService(feed, seen, positions, feed_name="events", rules=RULES).run()
    assert {str(e.event_id) for e in late} <= set(seen.applied)
    assert_redis_matches(rclient, cache, late)


@pytest.mark.timeout(120)
def test_portable_feed_behind_by_more_than_the_lookback_never_skips_events_because_of_a_delay_note(
        session, keyspace, store, rclient, redis_prefix) -> None:
    """A delay note only ever moves the portable feed's read cursor back, never forward.

    A feed behind by more than the lookback (Redis or the function app was down for over an hour) has its cursor
    before ``now - lookback``; a note older than the cursor must leave it there (``PortableChangeFeed.read_page``),
    or every event enqueued between the saved watermark and ``now - lookback`` would be skipped for good (the
    watermark then passes them). So the run reads every arrival from the saved watermark (minus the overlap) on,
    and the critical event enqueued 1h55m ago reaches Redis.
    """
    from shared.adapters.cassandra.delays import CassandraDelayLog
    from shared.ports.feed import FeedPosition
    from shared.ports.ingest import DelayedBatch

    now = datetime.now(UTC)
    watermark = now - timedelta(hours=2)
    positions = CassandraFeedStateStore(session, keyspace)
    assert positions.save("events", FeedPosition(watermark=watermark), 0) == 1
    missed_at = watermark + timedelta(minutes=5)
    behind = make_event("behind-1", missed_at, severity="critical", enqueued=missed_at)
    store.write([behind])
    # ingest noted a batch stored late (an outage): written a moment ago, its oldest event enqueued long before
    CassandraDelayLog(session, keyspace, bucket_seconds=BUCKET_SECONDS,
                      clock=lambda: now - timedelta(seconds=20)).record(
        DelayedBatch("0", 1, watermark - timedelta(minutes=10), 1))
    feed = PortableChangeFeed(session, keyspace, bucket_seconds=BUCKET_SECONDS, shards=SHARDS, lookback_seconds=900,
                              overlap_seconds=30, max_span_seconds=3 * 3600)
    seen = CountingSink(make_cache(rclient, redis_prefix))
    for _ in range(3):
        ChangeFeedService(feed, seen, positions, feed_name="events", rules=RULES, time_budget=60).run()
    assert str(behind.event_id) in seen.applied, "an event enqueued after the saved watermark was skipped"


class _Ticks:
    """A monotonic clock for ``ChangeFeedService``: one second per reading, so a run's budget allows a fixed
    number of pages whatever the machine's speed (a stand-in for pages that are slow because they are large)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.mark.timeout(120)
def test_portable_feed_catching_up_a_delay_note_makes_progress_across_runs(session, keyspace, store, rclient,
                                                                             redis_prefix) -> None:
    """A re-read that a delay note started continues across runs until it is done.

    The note makes a run start at the note's oldest enqueued time (``PortableChangeFeed.read_page``); when one
    run's time budget cannot read from there to the saved watermark (exactly when notes are written: a backlog,
    big pages), the next run must not start over at the same note, or every run re-reads the same first pages
    and the feed never advances (nothing enqueued after the watermark reaches Redis). So the note moves the
    watermark back with the cursor (each page of the re-read is saved after its writes) and the position records
    the notes taken into account (``noted_until``, the overlap behind the run that read them: a note may become
    visible late): an event enqueued after the old watermark is applied after a bounded number of runs.
    """
    from shared.adapters.cassandra.delays import CassandraDelayLog
    from shared.ports.feed import FeedPosition
    from shared.ports.ingest import DelayedBatch

    now = datetime.now(UTC)
    watermark = now - timedelta(minutes=2)
    positions = CassandraFeedStateStore(session, keyspace)
    assert positions.save("events", FeedPosition(watermark=watermark), 0) == 1
    fresh_at = now - timedelta(seconds=30)
    fresh = make_event("fresh-1", fresh_at, severity="critical", enqueued=fresh_at)
    store.write([fresh])
    CassandraDelayLog(session, keyspace, bucket_seconds=BUCKET_SECONDS,
                      clock=lambda: now - timedelta(seconds=20)).record(
        DelayedBatch("0", 1, now - timedelta(minutes=12), 1))
    feed = PortableChangeFeed(session, keyspace, bucket_seconds=BUCKET_SECONDS, shards=SHARDS, lookback_seconds=900,
                              overlap_seconds=30, max_span_seconds=3600)
    seen = CountingSink(make_cache(rclient, redis_prefix))
    for run in range(12):  # 3 pages a run, 36 in all: three times what the ~13 buckets from the note to now need
        # a run every 5 s: the note is read again while it is within the overlap (30 s) of a run, then no more
        ChangeFeedService(feed, seen, positions, feed_name="events", rules=RULES, time_budget=4.0,
                          read_timeout=10.0, monotonic=_Ticks(),
                          clock=lambda run=run: now + timedelta(seconds=5 * run)).run()
        if str(fresh.event_id) in seen.applied:
            break
    assert str(fresh.event_id) in seen.applied, "the feed restarts at the same note every run and never advances"


@pytest.mark.timeout(120)
def test_a_delay_note_written_just_before_a_noting_run_is_not_missed(session, keyspace, store, rclient,
                                                                      redis_prefix) -> None:
    """A note's ``written_at`` is ingest's clock read before its insert (a 10 s timeout), so a note may become
    visible only after a run that looked for notes written at that time (a slow insert, exactly when batches are
    late; ingest's clock a few seconds behind). Notes stamped within the overlap before a run are read again by the
    next one, so such a note's rows, enqueued long before, still reach Redis."""
    from shared.adapters.cassandra.delays import CassandraDelayLog
    from shared.ports.feed import FeedPosition
    from shared.ports.ingest import DelayedBatch

    positions = CassandraFeedStateStore(session, keyspace)
    feed = PortableChangeFeed(session, keyspace, bucket_seconds=BUCKET_SECONDS, shards=SHARDS, lookback_seconds=900,
                              overlap_seconds=30, max_span_seconds=3600)
    seen = CountingSink(make_cache(rclient, redis_prefix))
    t0 = datetime.now(UTC)
    assert positions.save("events", FeedPosition(watermark=t0 - timedelta(seconds=10)), 0) == 1
    # a first late batch, noted and read by run 1 (its rows lie within the overlap: nothing special)
    CassandraDelayLog(session, keyspace, bucket_seconds=BUCKET_SECONDS, clock=lambda: t0 - timedelta(seconds=2)).record(
        DelayedBatch("0", 1, t0 - timedelta(seconds=20), 1))
    ChangeFeedService(feed, seen, positions, feed_name="events", rules=RULES, clock=lambda: t0).run()
    # a second late batch, enqueued 3 min ago; its note is stamped 10 s before run 1 but lands after it
    enqueued = t0 - timedelta(minutes=3)
    late = [make_event(f"late-{n}", enqueued, enqueued=enqueued) for n in range(2)]
    store.write(late)
    CassandraDelayLog(session, keyspace, bucket_seconds=BUCKET_SECONDS,
                      clock=lambda: t0 - timedelta(seconds=10)).record(DelayedBatch("1", 7, enqueued, len(late)))
    for n in range(1, 4):
        ChangeFeedService(feed, seen, positions, feed_name="events", rules=RULES,
                          clock=lambda n=n: t0 + timedelta(seconds=2 * n)).run()
    missing = {str(e.body.event_id) for e in late} - set(seen.applied)
    assert not missing, f"rows of a noted late batch never applied: {sorted(missing)}"


# -- corrections that leave a critical set ------------------------------------------------------

@pytest.mark.timeout(60)
def test_a_correction_whose_page_failed_and_is_read_as_a_later_copy_still_leaves_the_critical_set(
        session, keyspace, store, rclient, redis_prefix) -> None:
    """A correction that makes a critical event not critical leaves the device's set in a second pipeline. When the
    page fails after the first (here: ``WAIT`` not acknowledged), ``fill_event`` has dropped the critical copy
    already, and the retried run, in Cosmos mode, reads the latest copy only: the correction re-sent meanwhile,
    enqueued later. It answered only the exact enqueued time it noted (``u``), so the set kept the event for good;
    now every copy from ``u`` on is answered."""
    now = datetime.now(UTC).replace(microsecond=0)
    event_id, at = uuid.uuid4(), now - timedelta(minutes=5)
    device = f"dev-{uuid.uuid4().hex[:8]}"
    store.write([make_event(device, at, severity="critical", measurements={"temperature": 95.0}, event_id=event_id,
                            enqueued=now - timedelta(minutes=4))])
    cache = make_cache(rclient, redis_prefix)
    make_service("cosmos", session, keyspace, cache).run()
    assert critical_ids(rclient, cache, device) == [str(event_id)]

    store.write([make_event(device, at, measurements={"temperature": 20.0}, event_id=event_id,
                            enqueued=now - timedelta(minutes=3))])
    waiting = make_cache(rclient, redis_prefix, wait_replicas=1, wait_timeout_ms=10)  # no replica: not durable
    with pytest.raises(DependencyUnavailable):
        make_service("cosmos", session, keyspace, waiting).run()

    store.write([make_event(device, at, measurements={"temperature": 20.0}, event_id=event_id,
                            enqueued=now - timedelta(minutes=2))])  # the correction re-sent before the next run
    make_service("cosmos", session, keyspace, cache).run()
    assert critical_ids(rclient, cache, device) == []


@pytest.mark.timeout(60)
def test_a_correction_to_another_device_leaves_the_old_devices_critical_set(session, keyspace, store, rclient,
                                                                            redis_prefix) -> None:
    """An event id re-sent under another device id: Cassandra's answer for the old device leaves the superseded
    row out (``current_copies``), and the feed used to write only the new device's keys, so the old device's set
    kept the critical copy; a miss filled the set and marked it complete, and every later hit listed the event.
    Now ``fill_event`` answers the device of the critical copy it dropped and the feed cleans that device's set."""
    from shared.adapters.cassandra.reader import CassandraEventReader
    from shared.adapters.redis import RedisLookupCache
    from shared.ports.cache import SINCE_ALL
    from shared.services.lookups import current_copies

    now = datetime.now(UTC).replace(microsecond=0)
    event_id, at = uuid.uuid4(), now - timedelta(minutes=5)
    old, new = f"dev-{uuid.uuid4().hex[:8]}", f"dev-{uuid.uuid4().hex[:8]}"
    store.write([make_event(old, at, severity="critical", measurements={"temperature": 95.0}, event_id=event_id,
                            enqueued=now - timedelta(minutes=4))])
    cache = make_cache(rclient, redis_prefix)
    make_service("cosmos", session, keyspace, cache).run()
    assert critical_ids(rclient, cache, old) == [str(event_id)]

    store.write([make_event(new, at, measurements={"temperature": 20.0}, event_id=event_id,
                            enqueued=now - timedelta(minutes=3))])
    make_service("cosmos", session, keyspace, cache).run()

    # what a lookup of the old device's critical events does on a miss: Cassandra's current rows, then the fill
    reader = CassandraEventReader(session, keyspace, timeout=5)
    rows = reader.critical(old, since=None, limit=125)
    current = current_copies(rows, {row.event_id: reader.event(row.event_id) for row in rows})
    assert current == []  # Cassandra: the old device has no critical event any more
    lookups = RedisLookupCache(rclient, key_prefix=redis_prefix)
    lookups.fill_critical(old, current, SINCE_ALL, 3600)
    assert lookups.get_critical(old, SINCE_ALL, 10) == []


def _moved_to_another_device(mode, session, keyspace, store, rclient, redis_prefix):
    """An event of one device, fed to Redis as its latest state, then re-sent under another device id (stored, not
    fed yet, within the next runs' overlap): the cache, the event id, its event time, the old and the new device."""
    now = datetime.now(UTC).replace(microsecond=0)
    event_id, at = uuid.uuid4(), now - timedelta(minutes=5)
    old, new = f"dev-{uuid.uuid4().hex[:8]}", f"dev-{uuid.uuid4().hex[:8]}"
    store.write([make_event(old, at, measurements={"temperature": 20.0}, event_id=event_id,
                            enqueued=now - timedelta(minutes=4))])
    cache = make_cache(rclient, redis_prefix)
    make_service(mode, session, keyspace, cache).run()
    assert latest_doc(rclient, cache, old)["event_id"] == str(event_id)

    store.write([make_event(new, at, measurements={"temperature": 21.0}, event_id=event_id,
                            enqueued=datetime.now(UTC) - timedelta(seconds=1))])  # within the next runs' overlap
    return cache, event_id, at, old, new


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
def test_a_correction_to_another_device_does_not_leave_the_event_as_the_old_devices_latest_state(
        mode, session, keyspace, store, rclient, redis_prefix) -> None:
    """docs/redis-layout.md: Redis converges to what a clean pass or a rebuild leaves. A device whose newest event
    is re-sent under another device id has no latest state in the store (docs/data-model.md), and a rebuild writes
    none; the feed used to write only the new device's ``latest``, so the old device's kept the superseded copy for
    the feed's TTL and ``/latest`` served it. Now ``fill_event`` answers the old device and the feed drops its state
    (``unlatest.lua``); in portable mode the next run reads the original again (its overlap) without putting it
    back."""
    from shared.adapters.cassandra.reader import CassandraEventReader

    cache, event_id, _, old, new = _moved_to_another_device(mode, session, keyspace, store, rclient, redis_prefix)
    assert make_service(mode, session, keyspace, cache).run().events >= 1
    make_service(mode, session, keyspace, cache).run()  # portable: the overlap read again
    assert latest_doc(rclient, cache, new)["event_id"] == str(event_id)
    assert CassandraEventReader(session, keyspace, timeout=5).latest(old) is None
    assert latest_doc(rclient, cache, old) is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("resent", [False, True], ids=["same-copy", "resent-later"])
@pytest.mark.parametrize("mode", MODES)
def test_a_correction_to_another_device_whose_unlatest_failed_drops_the_old_state_when_written_again(
        mode, resent, session, keyspace, store, rclient, redis_prefix, monkeypatch) -> None:
    """The old device's ``latest`` goes in the sink's second pipeline (``unlatest.lua``). When that pipeline fails,
    the run keeps its position and the next one writes the page again, but ``fill_event`` had already rewritten its
    field ``o`` to the new device's copy, so it answered no move the second time and the old device's state kept
    the moved copy for the feed's TTL while the store had none. The move is now kept beside ``o`` (``m``) and
    answered to the page written again, also as the correction re-sent meanwhile (Cosmos mode reads only a row's
    latest version), as ``v``/``u`` are."""
    from shared.adapters.cassandra.reader import CassandraEventReader

    cache, event_id, at, old, new = _moved_to_another_device(mode, session, keyspace, store, rclient, redis_prefix)
    send, failures = cache._send, []

    def second_pipeline_times_out(commands):  # the pipeline carrying unlatest fails once, as a timeout would
        if not failures and any(command[0] == cache.sha["unlatest"] for command in commands):
            failures.append(commands)
            raise redis.TimeoutError("Timeout reading from socket")
        return send(commands)

    monkeypatch.setattr(cache, "_send", second_pipeline_times_out)
    with pytest.raises(DependencyUnavailable):
        make_service(mode, session, keyspace, cache).run()
    assert failures, "the correction's run sent no unlatest"
    if resent:  # the correction re-sent before the next run
        store.write([make_event(new, at, measurements={"temperature": 21.0}, event_id=event_id,
                                enqueued=datetime.now(UTC) - timedelta(milliseconds=500))])
    make_service(mode, session, keyspace, cache).run()  # the page written again

    assert CassandraEventReader(session, keyspace, timeout=5).latest(old) is None
    assert latest_doc(rclient, cache, old) is None
    assert latest_doc(rclient, cache, new)["event_id"] == str(event_id)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", MODES)
def test_a_late_older_event_of_the_device_an_event_moved_away_from_is_not_put_as_its_latest_state(
        mode, session, keyspace, store, rclient, redis_prefix) -> None:
    """After a correction moved a device's newest event to another device id, the store has no latest state for the
    old device (its position still names the event) and the feed dropped its ``latest``. A late event of the old
    device, older than the moved one, loses to that position in the store: still no state there (docs/api.md: 404
    until the device sends a newer event). The feed finds the key missing and asks the store, which used to leave
    the device out of its answer, so ``put_latest`` wrote the late event alone and Redis served it. Now the store
    answers the position as the device's floor (``LatestFound``), and a page event at or before it is not put
    (``tests/unit/test_changefeed_service.py``: one newer than it is)."""
    from shared.adapters.cassandra.reader import CassandraEventReader

    reader = CassandraEventReader(session, keyspace, timeout=5)
    cache, event_id, at, old, new = _moved_to_another_device(mode, session, keyspace, store, rclient, redis_prefix)
    make_service(mode, session, keyspace, cache, latest=reader).run()
    assert latest_doc(rclient, cache, old) is None  # unlatest.lua, as the store: no state

    late = make_event(old, at - timedelta(minutes=1), enqueued=datetime.now(UTC) - timedelta(milliseconds=500))
    store.write([late])
    assert reader.latest(old) is None, "the store still has no latest state for the old device"
    make_service(mode, session, keyspace, cache, latest=reader).run()
    assert latest_doc(rclient, cache, old) is None, "Redis serves the late event as the old device's latest state"
    assert latest_doc(rclient, cache, new)["event_id"] == str(event_id)
