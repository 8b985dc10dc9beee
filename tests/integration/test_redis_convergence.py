"""Redis converges whatever the writers' order: a device rebuild never undoes the change feed, a replay leaves what
the feed left. Each docstring names the interleaving that broke the rule before it held."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from shared.adapters.cassandra.device_log import CassandraDeviceLog
from shared.adapters.redis import RedisLookupCache
from shared.adapters.redis_rebuild import RedisCacheBuilder
from shared.ports.cache import SINCE_ALL
from shared.services.rebuild import RebuildService
from tests.integration import test_changefeed as cf
from tests.integration.test_rebuild import AfterCriticalRead

session, keyspace, store, rclient = cf.session, cf.keyspace, cf.store, cf.rclient


@pytest.mark.parametrize("read", [1, 2], ids=["after-the-ids-read", "after-the-state-read"])
def test_rebuild_devices_keeps_a_change_the_feed_applied_after_the_read(session, keyspace, store, rclient,
                                                                         redis_prefix, read):
    """Rule: Redis is a projection of the log; every change the change feed applied (and moved its position past)
    stays in Redis, and ``rebuild redis --devices`` leaves "what the change feed would have left".

    Was, the interleaving (shared/services/rebuild.py:185-188 with shared/adapters/redis_rebuild.py:162-171):
    1. ``rebuild_devices`` reads pump-1's ``device_latest`` (event A) and its critical events ([A]) from Cassandra;
    2. ingest stores a newer critical event B of pump-1; the change feed applies it to Redis (latest = B, B in
       the critical set) and saves its position past B;
    3. ``refresh`` sends ``UNLINK latest crit`` and then writes the state read in step 1: latest = A, critical
       set = [A] with a ``#since`` sentinel claiming the set is *complete*.
    B is gone from Redis for good: the feed never re-applies it (its position is past B), the latest state has
    moved backwards to A, and the lookups answer pump-1's critical list from the "complete" set without B.
    """
    now = datetime.now(UTC).replace(microsecond=0)
    a = cf.make_event("pump-1", now - timedelta(minutes=5), severity="critical")
    b = cf.make_event("pump-1", now - timedelta(minutes=1), severity="critical")
    store.write([a])
    sink = cf.make_cache(rclient, redis_prefix, generation_cache_seconds=0.0)
    feed = cf.make_service("cosmos", session, keyspace, sink)
    feed.run()  # A in Redis

    def change_feed_meanwhile() -> None:
        store.write([b])
        feed.run()
        assert cf.latest_doc(rclient, sink, "pump-1")["event_id"] == str(b.body.event_id)  # the feed applied B
        assert str(b.body.event_id) in cf.critical_ids(rclient, sink, "pump-1")

    log = AfterCriticalRead(CassandraDeviceLog(session, keyspace), None, change_feed_meanwhile, read=read)
    RebuildService(log, RedisCacheBuilder(sink, settle_seconds=0.0)).rebuild_devices(["pump-1"])

    lookups = RedisLookupCache(sink.connection, key_prefix=redis_prefix, generation_cache_seconds=0.0)
    latest = lookups.get_latest("pump-1")
    latest_id = json.loads(latest.document)["event_id"] if latest is not None and latest.document else None
    answered = lookups.get_critical("pump-1", SINCE_ALL, 100)
    critical = None if answered is None else [json.loads(d)["event_id"] for d in answered]
    # None from get_critical would be a miss (the lookups then read Cassandra): only a wrong *hit* is the bug
    assert (latest_id, critical is None or str(b.body.event_id) in critical) == (str(b.body.event_id), True), (
        f"after rebuild_devices: latest={latest_id} (B={b.body.event_id}, A={a.body.event_id}), critical set "
        f"answered as complete={critical}: the change the feed applied after the rebuild's read is gone")


def test_replay_of_a_resent_event_leaves_what_the_change_feed_left(session, cassandra_emulator, keyspace,
                                                                            store, rclient, redis_prefix):
    """Rule (docs/operations.md "A range to re-derive", shared/services/replay.py, docs/redis-layout.md "Writes:
    idempotent and order-independent"): replaying a range through the change feed's merges leaves what the change
    feed left; the merges converge whatever the order in which pages are applied.

    Was: critical event X is sent with timestamp t2; the change feed applies it. The producer re-sends X
    (same id) with an earlier timestamp t1 (another 5-minute replay chunk); the change feed applies that: the
    device set's member, ``ce:<X>`` and ``e:<X>`` now hold the t1 document (``critical.lua`` drops the previous
    member through the ``ce`` key, ``fill_event`` overwrites). ``sluice replay`` over the range reads the log
    by event time (``events_by_time_bucket`` keeps both rows) and applies t1 then t2: the last write wins in
    ``critical.lua``/``fill_event.lua`` (shared/adapters/redis/lua/critical.lua:8-11, fill_event.lua:4), so
    Redis flips to the t2 document, while ``events_by_id`` (what a lookup miss reads) holds t1. The merge is
    "last applied wins", not a function of the events, so Redis depends on who applied last.
    """
    from shared.adapters.cassandra.window_reader import CassandraWindowReader
    from shared.services.replay import ReplayService
    from tests.integration.test_rebuild import dump

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    t2, t1 = now - timedelta(minutes=2), now - timedelta(minutes=9)
    first = cf.make_event("pump-9", t2, severity="critical", enqueued=now - timedelta(minutes=1, seconds=30))
    resent = cf.make_event("pump-9", t1, severity="critical", enqueued=now - timedelta(minutes=1),
                           event_id=first.body.event_id)
    sink = cf.make_cache(rclient, redis_prefix, generation_cache_seconds=0.0)
    feed = cf.make_service("cosmos", session, keyspace, sink)
    store.write([first])
    feed.run()
    store.write([resent])
    feed.run()
    after_feed = dump(rclient, sink)
    logged = session.execute(f"SELECT event_time FROM {keyspace}.events_by_id WHERE event_id = %s",
                             (first.body.event_id,)).one()
    assert logged.event_time.replace(tzinfo=UTC) == t1  # the log's by-id row is the re-sent one, as the feed left

    reader = CassandraWindowReader(session, cf.cassandra_settings(cassandra_emulator, keyspace))
    ReplayService(reader, sink, cf.RULES, None).replay(now - timedelta(minutes=15), now + timedelta(minutes=1),
                                                       postgres=False)
    after_replay = dump(rclient, sink)
    event_key = f"e:{first.body.event_id}"
    assert after_replay.get(event_key) == after_feed.get(event_key), \
        "replaying the range changed e:<id>: the merge is last-applied-wins, not order-independent"
    assert after_replay == after_feed
