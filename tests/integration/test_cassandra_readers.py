"""Every Cassandra reader fails the same way, and within its timeout (emulator faults, through the real driver).

Faults are server-wide, so these tests arm them on an emulator of their own
(``private_cassandra``).
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from cassandra.cluster import Session

from emulators.cassandra.faults import clear_faults, inject_faults
from shared.adapters.cassandra.device_log import CassandraDeviceLog, device_token
from shared.adapters.cassandra.event_store import CassandraEventStore
from shared.adapters.cassandra.feed import FeedPosition, PortableChangeFeed
from shared.adapters.cassandra.migrations import apply_migrations
from shared.adapters.cassandra.reader import CassandraEventReader
from shared.adapters.cassandra.session import build_cluster
from shared.adapters.cassandra.window_reader import CassandraWindowReader
from shared.exceptions import DependencyUnavailable
from shared.ports.rebuild import DeviceRow
from shared.settings import CassandraSettings
from sluice.launcher import Running
from tests.fixtures.memory import traced
from tests.integration.test_changefeed import make_event

pytestmark = pytest.mark.timeout(60)


def settings(emulator: Running, keyspace: str) -> CassandraSettings:
    # One retry of a throttled request, after at most 10 ms: the tests throttle beyond it.
    return CassandraSettings(hosts=[emulator.host], port=emulator.port, keyspace=keyspace, consistency="ONE",
                             bucket_seconds=60, shards=4, request_timeout_seconds=5, overload_max_retries=1,
                             overload_max_wait_seconds=0.01)


@pytest.fixture
def stored(private_cassandra: Running) -> Iterator[tuple[Session, CassandraSettings, datetime]]:
    """A session on a fresh, migrated keyspace holding a few events of the last minutes."""
    cfg = settings(private_cassandra, f"ks_{uuid.uuid4().hex[:12]}")
    cluster = build_cluster(cfg)
    cluster.schema_metadata_enabled = False
    session = cluster.connect()
    apply_migrations(session, cfg)
    now = datetime.now(UTC)
    CassandraEventStore(session, cfg).write([make_event(f"dev-{i}", now - timedelta(seconds=30 * i),
                                                         enqueued=now - timedelta(seconds=30 * i))
                                             for i in range(6)])
    yield session, cfg, now
    clear_faults(private_cassandra.host, private_cassandra.port)
    cluster.shutdown()


def test_portable_feed_read_page_returns_within_its_timeout_when_cassandra_is_slow(stored, private_cassandra) -> None:
    session, cfg, now = stored
    feed = PortableChangeFeed(session, cfg.keyspace, bucket_seconds=cfg.bucket_seconds, shards=cfg.shards,
                              lookback_seconds=600)
    start = now - timedelta(minutes=5)
    assert feed.read_page(FeedPosition(watermark=start, cursor=start), now=now, timeout=5).events is not None
    inject_faults(private_cassandra.host, private_cassandra.port, error="delay", delay_ms=4000, ratio=1.0,
                  applies_to="reads")
    began = time.monotonic()
    with pytest.raises(DependencyUnavailable) as raised:
        feed.read_page(FeedPosition(watermark=start, cursor=start), now=now, timeout=0.5)
    elapsed = time.monotonic() - began
    assert raised.value.dependency == "cassandra"
    assert elapsed < 1.5, f"read_page took {elapsed:.2f}s with a timeout of 0.5s"


READS: dict[str, Callable[[Session, CassandraSettings, datetime], object]] = {
    "window": lambda s, cfg, now: CassandraWindowReader(s, cfg).read(now - timedelta(minutes=10), now),
    "arrivals": lambda s, cfg, now: list(CassandraWindowReader(s, cfg).arrivals(now - timedelta(minutes=10), now)),
    "lookup": lambda s, cfg, now: CassandraEventReader(s, cfg.keyspace).latest("dev-1"),
    "feed": lambda s, cfg, now: PortableChangeFeed(s, cfg.keyspace, bucket_seconds=cfg.bucket_seconds,
                                                   shards=cfg.shards).read_page(
        FeedPosition(watermark=now - timedelta(minutes=5), cursor=now - timedelta(minutes=5)), now=now, timeout=5),
}


@pytest.mark.parametrize("read", READS)
def test_throttling_beyond_the_retries_is_dependency_unavailable_in_every_reader(stored, private_cassandra,
                                                                                 read: str) -> None:
    session, cfg, now = stored
    READS[read](session, cfg, now)  # prepared and answering
    inject_faults(private_cassandra.host, private_cassandra.port, error="overloaded", ratio=1.0, retry_after_ms=1,
                  applies_to="reads")
    with pytest.raises(DependencyUnavailable) as raised:
        READS[read](session, cfg, now)
    assert raised.value.dependency == "cassandra"
    assert "Overloaded" in str(raised.value)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_fan_out_read_that_finds_cassandra_down_is_dependency_unavailable() -> None:
    """A reader built on a session factory connects and prepares on its first read: with Cassandra down then, a
    fan-out read (window, portable feed, delay notes, the operations page's ``delayed_since``) raises
    ``DependencyUnavailable`` as every other read does, not the driver's ``NoHostAvailable``."""
    from shared.adapters.cassandra.dashboard import CassandraArrivalStats
    from shared.adapters.cassandra.session import connect
    from shared.ports.dashboard import BucketRead

    cfg = CassandraSettings(hosts=["127.0.0.1"], port=_closed_port(), keyspace="ks_down", connect_timeout_seconds=1)
    stats = CassandraArrivalStats(lambda: connect(cfg), cfg.keyspace, bucket_seconds=60, shards=2)
    now = datetime.now(UTC).replace(microsecond=0)

    with pytest.raises(DependencyUnavailable) as raised:  # a plain read
        stats.buckets([BucketRead(now.replace(second=0))])
    assert raised.value.dependency == "cassandra"
    with pytest.raises(DependencyUnavailable) as raised:  # a fan-out
        stats.delayed_since(now - timedelta(minutes=5), now)
    assert raised.value.dependency == "cassandra"


def test_a_window_read_never_holds_every_row_beside_its_events(private_cassandra) -> None:
    """Rows become events partition by partition and are dropped (docs/enrichment.md#memory).

    A window of four one-minute buckets of four shards is 16 partitions, read two at a time.
    Holding every row until all were read, as the reader used to, peaks at the rows plus the
    events; partition by partition, at the events plus a few partitions' rows.
    """
    from shared.adapters.cassandra.window_reader import buckets_between

    cfg = settings(private_cassandra, f"ks_{uuid.uuid4().hex[:12]}")
    cluster = build_cluster(cfg)
    cluster.schema_metadata_enabled = False
    session = cluster.connect()
    try:
        apply_migrations(session, cfg)
        start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=6)
        end = start + timedelta(minutes=4)
        names = [f"measurement_{n:02d}" for n in range(16)]
        events = [make_event(f"dev-{i % 50}", start + timedelta(milliseconds=60 * i), enqueued=start,
                             measurements={name: float(i + n) for n, name in enumerate(names)})
                  for i in range(4000)]
        CassandraEventStore(session, cfg).write(events)
        reader = CassandraWindowReader(session, cfg, concurrency=2)
        assert len(reader.read(start, end)) == 4000  # every statement prepared before measuring

        partitions = reader._partitions(buckets_between(start, end, cfg.bucket_seconds), start, end)
        assert len(partitions) == 16
        rows, _ = traced(lambda: reader._queries.fan_out("by_time", partitions, "the window", concurrency=2))
        held, peak = traced(lambda: reader.read(start, end))
        assert held < rows  # an event is smaller than its row
        assert peak < held + rows / 2, (f"a read of 4,000 events peaked at {peak:,} bytes: its events hold "
                                        f"{held:,}, their rows {rows:,}")
    finally:
        cluster.shutdown()


def test_a_position_naming_an_event_events_by_id_does_not_give_reads_as_no_state(stored, caplog) -> None:
    """device_latest is read for the position only, the event from events_by_id. A position naming an event that
    table lacks (written before ingest wrote device_latest last) or holds for another device (a correction moved
    it) reads as no state, logged; the rebuild's log still lists such a device, without a latest state (its
    critical events are its own), in the scan as in a read of one device."""
    session, cfg, _ = stored
    reader = CassandraEventReader(session, cfg.keyspace)
    taken = reader.latest("dev-1")
    assert taken is not None
    dangling = {f"lost-{i}": uuid.uuid4() for i in range(4)} | {"other": taken.event_id}
    at = datetime.now(UTC).replace(microsecond=123000)
    for device, event_id in dangling.items():
        session.execute(f"INSERT INTO {cfg.keyspace}.device_latest (device_id, event_id, event_time) "
                        "VALUES (%s, %s, %s)", (device, event_id, at))
    log = CassandraDeviceLog(session, cfg.keyspace)
    ordered = sorted([*dangling, *(f"dev-{i}" for i in range(6))], key=device_token)
    # A page of only dangling devices comes before the scan's last device: the scan must go on past it
    assert min(map(device_token, dangling)) < max(device_token(f"dev-{i}") for i in range(6))

    assert reader.latest("lost-0") is None and reader.latest("other") is None
    assert log.device("other") == DeviceRow(device_token("other"), "other", None)
    assert log.device("nobody") is None
    assert [e.device_id for e in reader.latest_many(["lost-1", "dev-2", "other"])] == ["dev-2"]
    # the change feed's read: such a device's position is its floor (a late event at or before it is no state)
    found = reader.latest_found(["lost-1", "dev-2", "other"])
    assert [e.device_id for e in found.states] == ["dev-2"]
    assert found.floors == {"lost-1": (at, dangling["lost-1"]), "other": (at, taken.event_id)}
    position, scanned = None, []
    while rows := log.devices(position, 1):  # as the rebuild pages: a page of one device
        scanned += [(row.device_id, None if row.latest is None else row.latest.device_id) for row in rows]
        position = rows[-1].token
    assert scanned == [(device, device if device.startswith("dev-") else None) for device in ordered]
    assert "which events_by_id lacks" in caplog.text and "holds for device 'dev-1'" in caplog.text
