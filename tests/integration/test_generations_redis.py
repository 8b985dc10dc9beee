"""Key generations (``sluice rebuild redis``) on the package's adapters, on one Redis and on a Redis Cluster.

While a build runs the change sink writes both generations and the lookups read
the live one; the switch moves the lookups and the dashboard's stream (rebuilt in
event time order) to the new generation, and dropping the old one leaves none
of its keys on any master.
On the cluster the ``redis_server`` fixture fails the test on any ``CROSSSLOT``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from dataclasses import replace
from datetime import timedelta

import pytest
import redis

from shared.adapters.redis import RedisChangeSink, RedisGenerations, RedisLookupCache
from shared.adapters.redis_dashboard import RedisCriticalStream
from shared.adapters.redis_rebuild import RedisCacheBuilder
from shared.exceptions import ConfigurationError, DependencyUnavailable
from shared.ports.cache import SINCE_ALL
from shared.services.changefeed import apply_changes
from tests.integration.test_changefeed_redis import NOW, ev


@pytest.fixture
def client(redis_server):
    c = redis_server.client()
    yield c
    c.close()


def names(client, prefix: str) -> set[str]:
    return {key.decode()[len(prefix):] for key in client.scan_iter(match=prefix + "*", count=1000)}


def test_a_build_writes_both_generations_switches_and_drops_the_old_one_on_every_master(client):
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    sink = RedisChangeSink(client, key_prefix=prefix, ttl_seconds=600, stream_shards=4, generation_cache_seconds=0)
    lookups = RedisLookupCache(client, key_prefix=prefix, stream_shards=4, generation_cache_seconds=0)
    builder = RedisCacheBuilder(sink, settle_seconds=0, clock=NOW.timestamp)
    old = [ev(f"dev-{i}", seconds=i, critical=True) for i in range(20)]  # spread over every master's slots
    apply_changes(sink, old, None, list)
    assert {f"d:{{dev-{i}}}:latest" for i in range(20)} <= names(client, prefix)

    build = builder.begin(SINCE_ALL, resume=False)
    assert build.generation == 1
    during = ev("dev-new", seconds=100, critical=True)
    apply_changes(sink, [during], None, list)  # the change feed during the build: both generations
    assert client.exists(sink.keys_of(0).latest("dev-new")) and client.exists(sink.keys_of(1).latest("dev-new"))
    assert client.exists(sink.keys_of(1).event(during.event_id))
    assert lookups.get_critical("dev-3", SINCE_ALL, 10) is None  # still the live generation 0 (no bound there)

    builder.write(1, old, {e.device_id: [e] for e in old}, SINCE_ALL)
    assert builder.finish(1) == 0
    assert RedisGenerations(client, prefix).read().live == 1
    assert builder.cleanup() == [0]

    left = {name for name in names(client, prefix) if name != "generation"}
    assert left and all(name.startswith("g1:") for name in left), sorted(left)[:5]
    for event in [*old, during]:
        assert json.loads(lookups.get_latest(event.device_id).document)["event_id"] == str(event.event_id)
    for event in old:  # rebuilt lists carry their completeness bound, so the new generation answers them
        assert [json.loads(d)["event_id"] for d in lookups.get_critical(event.device_id, SINCE_ALL, 10)] \
            == [str(event.event_id)]
    recent = RedisCriticalStream(client, key_prefix=prefix, stream_shards=4).recent(100)
    ids = [event["event_id"] for event in recent]
    assert sorted(ids) == sorted(str(e.event_id) for e in [*old, during]) and len(ids) == len(set(ids))
    # the rebuilt shards are in event time order, the feed's entry of the build among them: the newest first
    assert ids == [str(e.event_id) for e in sorted([*old, during], key=lambda e: e.event_time_ms, reverse=True)]


def test_a_killed_build_leaves_the_live_generation_whole_and_a_restart_drops_the_abandoned_one(client):
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    sink = RedisChangeSink(client, key_prefix=prefix, ttl_seconds=600, generation_cache_seconds=0)
    builder = RedisCacheBuilder(sink, settle_seconds=0, clock=NOW.timestamp)
    events = [ev(f"dev-{i}", seconds=i, critical=i % 2 == 0) for i in range(12)]
    apply_changes(sink, events, None, list)
    builder.begin(SINCE_ALL, resume=False)
    builder.write(1, events[:6], {e.device_id: [e] for e in events[:6] if e.critical}, SINCE_ALL)
    assert any(name.startswith("g1:") for name in names(client, prefix))

    restarted = builder.begin(SINCE_ALL, resume=False)  # --restart: a new generation, the abandoned one dropped
    assert restarted.generation == 2
    assert not any(name.startswith("g1:") for name in names(client, prefix))
    assert client.exists(sink.keys_of(0).latest("dev-11"))  # the live generation is untouched
    builder.release(restarted.generation)  # its heartbeat stopped: no thread left renewing after the test


def test_a_running_build_is_refused_to_a_second_rebuild_until_its_lease_lapses_then_taken_over(client):
    """The owner lease (one script on the pointer key, so on the cluster too): while a build's lease is live a
    second builder neither resumes nor restarts it; once it lapses (its process killed) the second takes it over,
    and the first, if it was only slow, can then neither save its position nor switch."""
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    sink = RedisChangeSink(client, key_prefix=prefix, ttl_seconds=600, generation_cache_seconds=0)
    first = RedisCacheBuilder(sink, settle_seconds=0, lease_seconds=1.0)
    second = RedisCacheBuilder(sink, settle_seconds=0, lease_seconds=60.0)
    build = first.begin(SINCE_ALL, resume=False)
    first.save_position(build.generation, -5)
    for resume in (True, False):
        with pytest.raises(ConfigurationError, match=f"building generation {build.generation} .*lease"):
            second.begin(SINCE_ALL, resume=resume)
    first.save_position(build.generation, -4)  # the refusals took nothing from the owner
    time.sleep(1.2)  # the heartbeat renews the lease while its build runs, however long a page takes
    with pytest.raises(ConfigurationError, match=f"building generation {build.generation} .*lease"):
        second.begin(SINCE_ALL, resume=True)
    first._stop_heartbeat()  # as if its process was killed: nothing renews the lease any longer
    time.sleep(1.2)  # the first's lease lapses without a renewal
    taken = second.begin(SINCE_ALL, resume=True)
    assert (taken.generation, taken.position) == (build.generation, -4)
    with pytest.raises(DependencyUnavailable, match=f"generation {build.generation}"):
        first.save_position(build.generation, -3)
    with pytest.raises(DependencyUnavailable, match=f"generation {build.generation}"):
        first.finish(build.generation)
    second.save_position(taken.generation, -3)
    assert second.finish(taken.generation) == 0
    assert sink.generations.read().live == build.generation


def test_a_heartbeat_that_finds_the_build_another_rebuilds_stops_the_build_at_its_next_step(client):
    """The heartbeat renews the lease through the owner-checked renewal; one that finds another owner (a rebuild
    that took the build over while this one's renewals failed) stops, and this build's next write fails with the
    error of a build taken over, rather than go on writing beside the new owner."""
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    sink = RedisChangeSink(client, key_prefix=prefix, ttl_seconds=600, generation_cache_seconds=0)
    builder = RedisCacheBuilder(sink, settle_seconds=0, lease_seconds=0.3)
    build = builder.begin(SINCE_ALL, resume=False)
    client.hset(sink.generations.key, "owner", "another rebuild")
    time.sleep(0.5)  # beats every 0.1 s: the next one finds the other owner
    with pytest.raises(DependencyUnavailable, match=f"generation {build.generation} is no longer being built"):
        builder.write(build.generation, [ev("dev-1")], {}, SINCE_ALL)
    builder.release(build.generation)  # not its own any longer: nothing given up
    assert client.hget(sink.generations.key, "owner") == b"another rebuild"


def test_deleting_a_replaced_generation_touches_only_its_own_keys_whatever_characters_its_prefix_holds(client):
    """A replaced generation is found by ``SCAN MATCH <prefix><pattern>``, the prefix escaped for the glob
    (``glob_escape``): a key prefix may hold ``[``, ``]``, ``*``, ``?`` or ``\\`` (only ``{``/``}`` are refused), and
    another deployment sharing the Redis may use a prefix the unescaped pattern matches. With ``app[1]:`` the old
    generation's keys go and ``app1:``'s stay. Was: ``app[1]:d:*`` matched (and deleted) ``app1:d:...`` and
    missed the generation's own keys, which stayed until their TTL."""
    tag = uuid.uuid4().hex[:8]
    prefix, foreign = f"t{tag}[1]:", f"t{tag}1:"
    foreign_key = f"{foreign}d:{{pump}}:latest"
    client.hset(foreign_key, "d", "another prefix's data")
    client.expire(foreign_key, 600)
    sink = RedisChangeSink(client, key_prefix=prefix, ttl_seconds=600, stream_shards=2, generation_cache_seconds=0)
    event = ev("pump", seconds=1)
    apply_changes(sink, [event], None, list)
    own_old = sink.keys_of(0).latest("pump")
    assert client.exists(own_old)
    builder = RedisCacheBuilder(sink, settle_seconds=0, clock=NOW.timestamp)
    build = builder.begin(SINCE_ALL, resume=False)
    builder.write(build.generation, [event], {}, SINCE_ALL)
    assert builder.finish(build.generation) == 0
    assert builder.cleanup() == [0]
    assert client.exists(foreign_key)
    assert not client.exists(own_old)
    client.unlink(foreign_key)


def test_a_device_rebuild_deletes_its_event_documents_one_slot_at_a_time(client):
    """``rebuild redis --devices`` deletes the device's ``e:<id>`` documents with its keys (so ``fill_event``'s merge
    cannot keep a wrong copy): those of the ids the log gave, of the critical set's members and of the latest
    state's event. Each ``e:<id>`` is its own slot, the device's keys share one: on the cluster no ``CROSSSLOT``,
    and a device's refresh writes the log's copies back over an empty key."""
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    sink = RedisChangeSink(client, key_prefix=prefix, ttl_seconds=600, stream_shards=4, generation_cache_seconds=0)
    builder = RedisCacheBuilder(sink, settle_seconds=0, clock=NOW.timestamp)
    critical = [ev("pump", seconds=i, critical=True) for i in range(6)]
    latest = ev("pump", seconds=10)
    apply_changes(sink, [*critical, latest], None, list)
    keys = sink.keys_of(0)
    only_in_log = ev("pump", seconds=3, critical=True)  # an id the log gives that Redis never held
    documents = [keys.event(e.event_id) for e in [*critical, latest, only_in_log]]
    for key in documents:
        client.hset(key, "d", '{"wrong":true}')

    builder.clear("pump", [str(only_in_log.event_id)])

    assert not any(client.exists(key) for key in documents)
    assert not client.exists(keys.latest("pump"), keys.critical("pump"))
    builder.refresh("pump", latest, critical, SINCE_ALL)
    assert [json.loads(client.hget(keys.event(e.event_id), "d"))["event_id"] for e in critical] \
        == [str(e.event_id) for e in critical]


class _SlowRepliesProxy:
    """A TCP proxy to Redis that forwards requests at once and, while ``slow`` is set, holds each reply for
    ``delay`` seconds before passing it on: a reply late on the way back (a congested network, a client thread
    that gets the CPU late), after Redis already ran the command."""

    def __init__(self, host: str, port: int, delay: float) -> None:
        self.target, self.delay, self.slow = (host, port), delay, False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._sockets += [downstream, upstream]
            threading.Thread(target=self._pump, args=(downstream, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, True), daemon=True).start()

    def _pump(self, source, sink, replies: bool) -> None:
        while True:
            try:
                data = source.recv(65536)
                if not data:
                    return
                if replies and self.slow:
                    time.sleep(self.delay)
                sink.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


def test_the_change_feed_writes_the_building_generation_once_the_rebuild_has_waited_its_two_cache_periods(
        redis_url, redis_prefix):
    """A writer cached the generation pointer from when its reply arrived, not from when Redis read it, so a
    pointer could be ``cache_seconds`` plus the reply's latency old, while the rebuild waits ``2 * cache_seconds``
    after claiming ``building`` and then trusts every change-feed writer to write both generations. A reply held
    back 1.5 s (less than that wait) left the feed writing the live generation only after it; the pointer is now
    dated from when it was asked for."""
    where = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs
    host, port = where.get("host", "127.0.0.1"), int(where.get("port", 6379))
    proxy = _SlowRepliesProxy(host, port, delay=1.5)
    slow_client = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=5)
    direct = redis.Redis.from_url(redis_url)
    try:
        feed = RedisChangeSink(slow_client, key_prefix=redis_prefix, generation_cache_seconds=1.0)
        rebuild = RedisChangeSink(direct, key_prefix=redis_prefix, generation_cache_seconds=1.0)
        slow_client.ping()  # connected (its hand-shake replies are not held)
        proxy.slow = True
        reader = threading.Thread(target=feed.write_keys)  # the feed reads the pointer: Redis answers at once
        reader.start()
        time.sleep(0.2)  # Redis has run the HMGET; its reply is on its way back
        rebuild.generations.start_building(0, "test", 60_000)
        claimed = time.monotonic()
        reader.join()
        proxy.slow = False
        time.sleep(max(0.0, claimed + 2 * rebuild.generations.cache_seconds - time.monotonic()) + 0.05)
        # the rebuild's settle is over: it now reads devices, trusting that every writer writes both generations
        assert len(feed.write_keys()) == 2, "the change feed still writes the live generation only"
    finally:
        slow_client.close()
        direct.close()
        proxy.close()


def _moved_before_a_build(client, *, critical: bool):
    """Critical event X of pump-7 re-sent under pump-8 (still critical, or not and with a newer pump-8 event: then X
    is nobody's latest state nor in any list), applied before a rebuild starts; then the rebuild begins and the
    change feed writes X's original copy again (a replay of its range, a page read again, a retry after an outage).
    The live generation's e:<id> refuses it (the later copy there: ``d`` or the note ``n``); the building
    generation's e:<id> knows nothing of the move."""
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    sink = RedisChangeSink(client, key_prefix=prefix, generation_cache_seconds=0)
    lookups = RedisLookupCache(client, key_prefix=prefix, generation_cache_seconds=0)
    builder = RedisCacheBuilder(sink, settle_seconds=0, clock=lambda: (NOW + timedelta(minutes=5)).timestamp())
    older = ev("pump-7", seconds=-60, critical=True, enqueued=-60)  # another critical event of pump-7, its own
    original = ev("pump-7", critical=True, enqueued=0)
    moved = replace(original, device_id="pump-8", enqueued_time=NOW + timedelta(seconds=5))
    if not critical:
        moved = replace(moved, severity="info", critical=False)
    newer = ev("pump-8", seconds=30, enqueued=30)
    apply_changes(sink, [older, original], None, list)
    apply_changes(sink, [moved] if critical else [moved, newer], None, list)
    lookups.fill_critical("pump-7", [older], SINCE_ALL, ttl=3600)  # a lookup's miss: complete
    build = builder.begin(SINCE_ALL, resume=False)
    apply_changes(sink, [original], None, list)  # the original's page written again while the rebuild runs
    return lookups, builder, build.generation, older, original, moved, newer


def test_a_superseded_critical_copy_the_feed_writes_into_a_building_generation_does_not_survive_the_switch(client):
    """The live generation refused the copy and the feed took it out of pump-7's set there (``uncritical``); the
    building generation accepted it, ``critical.lua`` put it in pump-7's set, and ``uncritical`` went only to the
    generation whose reply asked for it (unlike ``unlatest``, sent to every generation written). The rebuild then
    wrote pump-7's set from the store (without X) over it and marked it complete: after the switch /critical of
    pump-7 listed X. Now each ``uncritical`` goes to every generation written."""
    lookups, builder, generation, older, _, moved, _ = _moved_before_a_build(client, critical=True)
    assert lookups.get_critical("pump-7", SINCE_ALL, 10) == [older.to_json()], "the live generation"
    # what the rebuild reads from the store: pump-7 has no latest state (its position names X, now pump-8's); its
    # critical rows without X (current_copies); pump-8's newest event and critical list are X
    builder.write(generation, [moved], {"pump-7": [older], "pump-8": [moved]}, SINCE_ALL)
    builder.finish(generation)
    assert lookups.get_critical("pump-8", SINCE_ALL, 10) == [moved.to_json()]
    assert lookups.get_critical("pump-7", SINCE_ALL, 10) == [older.to_json()], (
        "after the switch pump-7's critical list still holds the copy the correction moved to pump-8")


def test_a_superseded_copy_the_feed_writes_into_a_building_generation_is_not_served_by_id_after_the_switch(client):
    """X moved to pump-8 and made not critical: the live generation's e:<id> refuses the original (note ``n``); the
    building generation's was empty, so ``fill_event`` stored the superseded copy as ``d`` with the feed's TTL
    (days), and nothing the rebuild writes touches e:<id> of an event in no list: after the switch GET
    /events/<id> served the pump-7 copy. Now a copy one generation refuses is dropped from every generation
    written (``fill_event`` in its ``stale`` mode with the later copy's time, in the same second pipeline)."""
    lookups, builder, generation, _, original, moved, newer = _moved_before_a_build(client, critical=False)
    assert lookups.get_event(str(original.event_id)) is None, "the live generation"
    builder.write(generation, [newer], {}, SINCE_ALL)  # the store: pump-8's newest is `newer`; no critical list
    builder.finish(generation)
    cached = lookups.get_event(str(original.event_id))
    assert cached is None or cached.document == moved.to_json(), f"after the switch Redis serves {cached}"
