"""Every Cassandra reader fails the same way, and within its timeout (emulator faults, through the real driver).

Faults are server-wide, so these tests arm them on an emulator of their own
(``private_cassandra``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from cassandra.cluster import Session

from emulators.cassandra.faults import clear_faults, inject_faults
from shared.adapters.cassandra.event_store import CassandraEventStore
from shared.adapters.cassandra.feed import FeedPosition, PortableChangeFeed
from shared.adapters.cassandra.migrations import apply_migrations
from shared.adapters.cassandra.reader import CassandraEventReader
from shared.adapters.cassandra.session import build_cluster
from shared.adapters.cassandra.window_reader import CassandraWindowReader
from shared.exceptions import DependencyUnavailable
from shared.settings import CassandraSettings
from sluice.launcher import Running
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
