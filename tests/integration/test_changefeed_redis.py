"""The Redis adapters' scripts against a real single Redis and a real Redis Cluster.

Order independence, idempotence, caps, completeness and TTLs; every test runs
on both kinds (``redis_server``), and on the cluster any command whose keys
span slots fails the test.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import redis

from shared.adapters.redis import RedisChangeSink, RedisLookupCache
from shared.adapters.redis.lookup_cache import critical_event_fills, critical_fill, still_current
from shared.domain.stored import StoredEvent, one_copy_each
from shared.exceptions import DependencyUnavailable
from shared.ports.cache import SINCE_ALL, Cached, LatestFound
from shared.services.changefeed import apply_changes
from sluice import launcher
from tests.integration import test_changefeed as changefeed_tests

private_redis = changefeed_tests.private_redis
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def ev(device="d1", seconds=0, critical=False, event_id=None, enqueued: float | None = None) -> StoredEvent:
    return StoredEvent(event_id=event_id or uuid.uuid4(), device_id=device, event_time=NOW + timedelta(seconds=seconds),
                       event_type="t", severity="critical" if critical else "info", critical=critical,
                       measurements={"v": float(seconds)},
                       enqueued_time=None if enqueued is None else NOW + timedelta(seconds=enqueued))


@pytest.fixture
def client(redis_server):
    c = redis_server.client()
    yield c
    c.close()


class Cache:
    """Both adapters on one client and prefix: the change feed's writes and the lookups' reads and fills."""

    def __init__(self, client, *, key_prefix: str, critical_per_device_max: int = 100, **sink_options) -> None:
        self.sink = RedisChangeSink(client, key_prefix=key_prefix, critical_per_device_max=critical_per_device_max,
                                    **sink_options)
        self.lookups = RedisLookupCache(client, key_prefix=key_prefix, critical_per_device_max=critical_per_device_max)
        self.keys = self.sink.keys
        self.apply, self.put_latest = self.sink.apply, self.sink.put_latest

    def __getattr__(self, name):
        return getattr(self.lookups, name)


def stream_ids(client, keys) -> list[str]:
    """Event ids on the critical stream, over all its shards."""
    return [fields[b"event_id"].decode() for key in keys.streams for _, fields in client.xrange(key)]


def state(client, prefix: str) -> dict:
    """Everything under the prefix except stream entry ids (which carry the wall clock)."""
    out = {}
    for key in sorted(client.scan_iter(match=prefix + "*")):
        kind = client.type(key)
        if kind == b"hash":
            out[key] = client.hgetall(key)
        elif kind == b"zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"stream":
            out[key] = sorted(fields[b"event_id"] for _, fields in client.xrange(key))
        else:
            out[key] = client.get(key)
    return out


def test_any_order_and_any_replay_leave_the_same_state(client, redis_prefix):
    same_ms = [ev(seconds=5, event_id=uuid.UUID(int=i)) for i in (3, 9)]  # a tie on time: the larger id wins
    events = [ev(seconds=s, critical=s % 2 == 0) for s in range(5)] + same_ms + [ev("d2", 1, True)]
    states = []
    for attempt in range(4):
        prefix = f"{redis_prefix}{attempt}:"
        cache = Cache(client, key_prefix=prefix, critical_per_device_max=3)
        shuffled = random.Random(attempt).sample(events, len(events))
        for start in range(0, len(shuffled), 3):
            apply_changes(cache, shuffled[start:start + 3], None, list)
        apply_changes(cache, shuffled[:5], None, list)  # a replayed page
        states.append({k.decode().split(":", 3)[-1]: v for k, v in state(client, prefix).items()})
        latest = json.loads(client.hget(cache.keys.latest("d1"), "d"))
        assert latest["event_id"] == str(uuid.UUID(int=9))
        assert len(client.zrange(cache.keys.critical("d1"), 0, -1)) == 3
    assert all(s == states[0] for s in states[1:])


def test_a_resent_event_replaces_its_own_older_copy_as_the_latest_state(client, redis_prefix):
    """At an equal sort key (an event id re-sent with corrected content: same event time, later enqueued time)
    the latest state keeps the copy enqueued later, as ``e:<id>`` and the critical set do (``lua/latest.lua``
    with ``_newer.lua``), whatever the order the writers come in: the change feed in arrival order (one page or
    two), a replay or rebuild in another, a lookup's fill of the older copy afterwards. So
    ``GET /api/devices/{d}/latest`` and ``GET /api/events/{id}`` answer the same document for the event."""
    at = NOW.replace(microsecond=0) - timedelta(minutes=1)
    event_id = uuid.uuid4()
    first = StoredEvent(event_id=event_id, device_id="resent-1", event_time=at, event_type="telemetry",
                        severity="critical", critical=True, measurements={"temperature": 95.0},
                        enqueued_time=at + timedelta(seconds=1))
    resent = StoredEvent(event_id=event_id, device_id="resent-1", event_time=at, event_type="telemetry",
                         severity="critical", critical=True, measurements={"temperature": 20.0},
                         enqueued_time=at + timedelta(seconds=30))
    orders = {"arrival": [[first], [resent]], "reversed": [[resent], [first]], "one page": [[first, resent]],
              "one page, reversed": [[resent, first]]}
    for attempt, (name, pages) in enumerate(orders.items()):
        cache = Cache(client, key_prefix=f"{redis_prefix}{attempt}:")
        for page in pages:
            apply_changes(cache, page, None, list)
        cache.fill_latest("resent-1", first, ttl=60, negative_ttl=5)  # a lookup that read the older copy
        by_id = client.hget(cache.keys.event(event_id), "d").decode()
        latest = client.hget(cache.keys.latest("resent-1"), "d").decode()
        assert json.loads(by_id)["measurements"] == {"temperature": 20.0}, name  # e:<id> keeps the re-sent copy
        assert latest == by_id, f"{name}: the latest state keeps the superseded copy of the same event"


def test_the_feed_drops_a_superseded_copy_a_lookup_cached_and_caches_no_other(client, redis_prefix):
    """For an event that is not critical the feed sends only its enqueued time to ``e:<id>``: a copy a lookup cached
    that was enqueued before it (the id re-sent with other content), or a cached "not found", is dropped, so the
    next lookup reads the stored copy; a copy as new or newer stays (a replay of the older send, or the overlap read
    again, drops nothing); an event nobody looked up gets no document, only the feed's note of the copy it applied,
    which lives a lookup's read or so (``stale_marker_seconds``). One single-key script per event in the page's
    pipeline, so a cluster runs it on the key's node."""
    cache = Cache(client, key_prefix=redis_prefix, ttl_seconds=10_000, stale_marker_seconds=30)
    looked_up, absent, untouched, current = ev(seconds=1), ev(seconds=2), ev(seconds=3), ev(seconds=4)
    cache.fill_event(str(looked_up.event_id), looked_up, ttl=60, negative_ttl=5)
    cache.fill_event(str(absent.event_id), None, ttl=60, negative_ttl=5)  # looked up before it was stored
    cache.fill_event(str(current.event_id), current, ttl=60, negative_ttl=5)
    resent = replace(looked_up, measurements={"v": 42.0}, enqueued_time=NOW + timedelta(seconds=30))
    apply_changes(cache, [current, untouched], None, list)  # the same copy a lookup cached: it stays
    assert cache.get_event(str(current.event_id)).document == current.to_json()
    apply_changes(cache, [resent, absent], None, list)
    assert cache.get_event(str(looked_up.event_id)) is None  # the next lookup reads the re-sent copy
    assert cache.get_event(str(absent.event_id)) is None
    cache.fill_event(str(looked_up.event_id), resent, ttl=60, negative_ttl=5)  # that lookup's fill
    apply_changes(cache, [looked_up], None, list)  # the older send again (a replay): the later copy stays
    assert cache.get_event(str(looked_up.event_id)).document == resent.to_json()
    untouched_key = cache.keys.event(untouched.event_id)
    assert client.hget(untouched_key, "d") is None and 0 < client.ttl(untouched_key) <= 30


def test_each_critical_event_enters_the_stream_once(client, redis_prefix):
    cache = Cache(client, key_prefix=redis_prefix, critical_stream_max=1000)
    crit = [ev(seconds=i, critical=True) for i in range(5)]
    for _ in range(3):
        apply_changes(cache, crit, None, list)
    ids = stream_ids(client, cache.keys)
    assert sorted(ids) == sorted(str(e.event_id) for e in crit)


def test_a_fill_never_replaces_a_newer_latest_and_a_negative_entry_never_hides_one(client, redis_prefix):
    cache = Cache(client, key_prefix=redis_prefix)
    newer, older = ev(seconds=10), ev(seconds=1)
    apply_changes(cache, [newer], None, list)
    cache.fill_latest("d1", older, ttl=60, negative_ttl=5)
    cache.fill_latest("d1", None, ttl=60, negative_ttl=5)
    assert cache.get_latest("d1").document == newer.to_json()
    cache.fill_latest("d9", None, ttl=60, negative_ttl=5)
    assert cache.get_latest("d9").document is None and client.ttl(cache.keys.latest("d9")) <= 5
    # the feed's write replaces "does not exist" at once, with the long TTL
    apply_changes(cache, [ev("d9", 3)], None, list)
    assert json.loads(cache.get_latest("d9").document)["device_id"] == "d9"
    assert client.ttl(cache.keys.latest("d9")) > 5


def test_a_lookup_fill_never_shortens_the_feeds_ttl(client, redis_prefix):
    cache = Cache(client, key_prefix=redis_prefix, ttl_seconds=10_000)
    crit = ev(critical=True)
    apply_changes(cache, [crit], None, list)
    cache.fill_event(str(crit.event_id), crit, ttl=60, negative_ttl=5)
    cache.fill_critical("d1", [crit], SINCE_ALL, ttl=60)
    assert client.ttl(cache.keys.event(crit.event_id)) > 9000
    assert client.ttl(cache.keys.critical("d1")) > 9000


def test_a_lookup_fill_of_a_newer_latest_state_never_shortens_the_feeds_ttl(client, redis_prefix):
    """docs/redis-layout.md ("TTLs"): a fill only extends a TTL. A lookup that read a newer state from Cassandra
    and fills after the change feed put the device's older state back keeps the feed's TTL on the key.
    Was: ``latest.lua`` ran ``EXPIRE key <ttl>`` for any newer state, so the fill cut 7 days to an hour."""
    cache = Cache(client, key_prefix=redis_prefix, ttl_seconds=7 * 24 * 3600)
    older, newer = ev("valve-3", 1), ev("valve-3", 2)
    cache.put_latest([older])  # the change feed puts the device's state back (its key had expired)
    key = cache.keys.latest("valve-3")
    assert client.ttl(key) > 7 * 24 * 3600 - 10
    cache.fill_latest("valve-3", newer, 3600, 5)  # a lookup's fill, read from Cassandra a moment later
    assert json.loads(cache.get_latest("valve-3").document)["event_id"] == str(newer.event_id)
    assert client.ttl(key) > 7 * 24 * 3600 - 10, f"the fill cut the feed's TTL to {client.ttl(key)} s"
    cache.fill_latest("valve-9", newer, 3600, 5)  # a key the fill creates gets the fill's TTL
    assert 3590 < client.ttl(cache.keys.latest("valve-9")) <= 3600


def test_a_correction_after_its_member_key_expired_stays_one_member(client, redis_prefix):
    """A critical event re-sent with a corrected event time is listed once by a critical-events hit, as the miss
    path (``one_copy_each``) lists it, although its ``ce:`` key expired before the set: a lookup fill gives the
    ``ce:`` keys the lookups' TTL (an hour; 1 s here), each later critical event renews the set to the feed's TTL.
    Was: ``_member.lua`` looked for the old copy only among members of the *new* event time, so the correction
    was added beside it and ``GET /devices/{id}/critical`` listed the event twice (old and corrected) for days."""
    cache = Cache(client, key_prefix=redis_prefix, ttl_seconds=600)
    original = ev("pump-7", 10, critical=True, enqueued=10)
    other = ev("pump-7", 5, critical=True, enqueued=5)
    cache.fill_critical("pump-7", [original, other], SINCE_ALL, 1)  # a lookup's miss fills the list
    newer = ev("pump-7", 20, critical=True, enqueued=20)
    apply_changes(cache, [newer], None, list)  # the set's TTL is renewed to the feed's TTL
    time.sleep(2.2)  # the fill's ce keys expire; the set, renewed, does not
    assert not client.exists(cache.keys.member("pump-7", original.event_id))
    assert cache.get_critical("pump-7", SINCE_ALL, 10) is not None  # still complete: a hit
    corrected = replace(original, event_time=NOW + timedelta(seconds=12), enqueued_time=NOW + timedelta(seconds=30))
    apply_changes(cache, [corrected], None, list)
    # what the miss path (Cassandra holds both rows; the lookups collapse them) answers
    expected = [e.to_json() for e in sorted(one_copy_each([newer, corrected, original, other]),
                                            key=lambda e: e.event_time_ms, reverse=True)]
    assert cache.get_critical("pump-7", SINCE_ALL, 10) == expected
    # the superseded copy arriving again (a replay), its ce key gone too, does not replace the correction
    client.delete(cache.keys.member("pump-7", original.event_id))
    apply_changes(cache, [original], None, list)
    cache.fill_critical("pump-7", [original], SINCE_ALL, 60)
    assert cache.get_critical("pump-7", SINCE_ALL, 10) == expected


def test_a_copy_enqueued_earlier_never_replaces_a_later_one_after_the_member_key_expired(client, redis_prefix):
    """At the same event time too, the copy enqueued later stays (``keeps()``), whether or not its ``ce:`` key
    lives. Was: with the key gone, any copy of the same event time replaced the member, an older one included."""
    first = ev("pump-8", 1, critical=True, enqueued=1)
    later = replace(first, enqueued_time=NOW + timedelta(seconds=60), measurements={"v": 2.0})
    for attempt, write in enumerate(("feed", "fill")):
        cache = Cache(client, key_prefix=f"{redis_prefix}{attempt}:")
        apply_changes(cache, [later], None, list)
        cache.fill_critical("pump-8", [later], SINCE_ALL, 60)
        client.delete(cache.keys.member("pump-8", first.event_id))  # expired
        if write == "feed":
            apply_changes(cache, [first], None, list)
        else:
            cache.fill_critical("pump-8", [first], SINCE_ALL, 60)
        assert cache.get_critical("pump-8", SINCE_ALL, 10) == [later.to_json()], write


def test_with_wait_replicas_a_page_is_written_only_once_replicas_acknowledged_it(client, redis_server, redis_prefix):
    """``SLUICE_REDIS_WAIT_REPLICAS``: the session's cluster (a replica per master) acknowledges each master's
    share of a page, whose replies come back in order (a missing latest key is still reported); the machine's
    Redis has no replica, so the page is not reported written and the change feed would keep its position."""
    from shared.exceptions import DependencyUnavailable

    cache = Cache(client, key_prefix=redis_prefix, wait_replicas=1, wait_timeout_ms=200)
    events = [ev(f"w{n}", n, critical=n % 2 == 0) for n in range(12)]
    if not redis_server.cluster:
        with pytest.raises(DependencyUnavailable, match="not acknowledged by 1 replica"):
            cache.apply(events)
        return
    assert cache.apply(events) == sorted(e.device_id for e in events)  # no latest key yet: all reported
    cache.put_latest(events)
    assert cache.apply([ev("w1", 20)]) == []
    assert json.loads(cache.get_latest("w1").document)["measurements"] == {"v": 20.0}
    assert client.zrange(cache.keys.critical("w0"), 0, -1) == [events[0].to_json().encode()]


def test_the_completeness_bound_lives_and_dies_with_the_set(client, redis_prefix):
    cache = Cache(client, key_prefix=redis_prefix)
    cache.fill_critical("quiet", [], SINCE_ALL, ttl=60)  # a device without critical events: complete and empty
    assert cache.get_critical("quiet", SINCE_ALL, 5) == []
    client.delete(cache.keys.critical("quiet"))  # evicted or expired: the bound goes with it
    assert cache.get_critical("quiet", SINCE_ALL, 5) is None
    assert list(client.scan_iter(match=redis_prefix + "*")) == []


def test_critical_answers_only_what_is_known_complete(client, redis_prefix):
    cache = Cache(client, key_prefix=redis_prefix, critical_per_device_max=4)
    crit = [ev(seconds=i, critical=True) for i in range(10)]
    apply_changes(cache, crit[:6], None, list)
    assert cache.get_critical("d1", SINCE_ALL, 2) is None  # written by the feed alone: completeness unknown
    cache.fill_critical("d1", crit[:6][::-1], SINCE_ALL, ttl=60)  # the store says: these are all of them
    newest4 = [e.to_json() for e in crit[2:6][::-1]]
    assert cache.get_critical("d1", SINCE_ALL, 4) == newest4  # capped at 4, and 4 asked: exact
    assert cache.get_critical("d1", SINCE_ALL, 5) is None  # the 5th was trimmed: unknown
    assert cache.get_critical("d1", crit[3].event_time_ms, 50) == newest4[:3]  # inside the complete range
    apply_changes(cache, crit[6:], None, list)  # the feed keeps adding; trimming moves the complete range up
    assert cache.get_critical("d1", SINCE_ALL, 4) == [e.to_json() for e in crit[6:][::-1]]
    assert cache.get_critical("d1", crit[5].event_time_ms, 50) is None


def test_scripts_are_reloaded_after_a_script_flush(private_redis):
    _, port = private_redis
    client = redis.Redis(host="127.0.0.1", port=port)
    cache = Cache(client, key_prefix="x:")
    apply_changes(cache, [ev()], None, list)
    client.script_flush()
    apply_changes(cache, [ev(seconds=5)], None, list)
    cache.fill_latest("d2", None, ttl=60, negative_ttl=5)
    assert json.loads(cache.get_latest("d1").document)["measurements"] == {"v": 5.0}
    client.close()


def test_which_copy_of_a_resent_event_stays_does_not_depend_on_its_attributes(client, redis_prefix):
    """``keeps()`` (``_newer.lua``) compares the documents' top-level ``enqueued_time``, decoded: ``"attributes"``
    sorts first in a document and its names are free text, so an attribute ``enqueued_time`` would be found first
    by a text pattern. The superseded copy carries one that sorts after any real enqueued time; the copy enqueued
    later still stays in ``e:<id>``, the latest state and the critical set, in either order of the writers.
    Was: the superseded copy stayed when it was written last."""
    at = NOW.replace(microsecond=0) - timedelta(minutes=1)
    event_id = uuid.uuid4()
    first = StoredEvent(event_id=event_id, device_id="resent-2", event_time=at, event_type="telemetry",
                        severity="critical", critical=True, attributes={"enqueued_time": "9999-12-31T23:59:59Z"},
                        enqueued_time=at + timedelta(seconds=1))
    resent = StoredEvent(event_id=event_id, device_id="resent-2", event_time=at, event_type="telemetry",
                         severity="critical", critical=True, enqueued_time=at + timedelta(seconds=30))
    for attempt, order in enumerate(([first, resent], [resent, first])):
        cache = Cache(client, key_prefix=f"{redis_prefix}{attempt}:")
        for event in order:
            apply_changes(cache, [event], None, list)
        by_id = client.hget(cache.keys.event(event_id), "d").decode()
        members = client.zrangebyscore(cache.keys.critical("resent-2"), "(-inf", "+inf")
        assert json.loads(by_id)["attributes"] == {}, order
        assert client.hget(cache.keys.latest("resent-2"), "d").decode() == by_id
        assert [m.decode() for m in members] == [by_id]


def test_a_re_sent_critical_event_stays_one_member(client, redis_prefix):
    """At-least-once delivery: the same event stored again with a new Event Hubs enqueued time."""
    from dataclasses import replace

    cache = Cache(client, key_prefix=redis_prefix)
    first = ev(critical=True)
    again = replace(first, enqueued_time=NOW + timedelta(minutes=3))
    other = ev(seconds=-5, critical=True)
    for order in ([first, again], [again, first]):
        apply_changes(cache, order[:1], None, list)
        apply_changes(cache, [*order[1:], other], None, list)
        cache.fill_critical("d1", [order[0], other], SINCE_ALL, ttl=60)  # a lookup fill with the other version
        members = [m for m in client.zrangebyscore(cache.keys.critical("d1"), "(-inf", "+inf")]
        assert sorted(json.loads(m)["event_id"] for m in members) == sorted([str(first.event_id), str(other.event_id)])
        assert cache.get_critical("d1", SINCE_ALL, 10) == [m.decode() for m in reversed(members)]
    stream = stream_ids(client, cache.keys)
    assert sorted(stream) == sorted([str(first.event_id), str(other.event_id)])


# -- corrections and lookups racing the feed ------------------------------------------------------------------

def stored(device: str = "rv-1", *, critical: bool, enqueued: float, value: float = 1.0) -> StoredEvent:
    """An event at ``NOW``, enqueued ``enqueued`` seconds after it."""
    return StoredEvent(event_id=uuid.uuid4(), device_id=device, event_time=NOW, event_type="alarm",
                       severity="critical" if critical else "info", critical=critical,
                       measurements={"v": value}, enqueued_time=NOW + timedelta(seconds=enqueued))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def master_and_replica(tmp_path):
    """A private master and its replica (never the shared Redis on 6379), in memory only (the replica's copy of
    the master's data lands in ``tmp_path``); yields the master's port and the replica's process (the test pauses
    it, by its pid)."""
    ready = re.compile(r"(?P<ready>Ready to accept)")
    master_port, replica_port = _free_port(), _free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    master = launcher.start("test-redis-master", ["redis-server", "--port", str(master_port), *common],
                            timeout=20, ready=ready)
    replica = launcher.start("test-redis-replica", ["redis-server", "--port", str(replica_port), *common,
                                                    "--replicaof", "127.0.0.1", str(master_port)],
                             timeout=20, ready=ready)
    try:
        probe = redis.Redis(port=replica_port)
        deadline = time.monotonic() + 20
        while probe.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.1)
        probe.close()
        yield master_port, replica
    finally:
        if replica.alive():
            os.kill(replica.process.pid, signal.SIGCONT)
        replica.stop()
        master.stop()


def test_a_correction_no_longer_critical_whose_page_is_written_again_still_leaves_the_critical_list(
        master_and_replica):
    """A critical event corrected into one that is not critical leaves its device's set in a second pipeline,
    sent when the stale command dropped the critical copy. When the first attempt fails after its writes (here its
    replica did not acknowledge them: ``SLUICE_REDIS_WAIT_REPLICAS``), the feed writes the page again, and the
    copy is gone by then: the stale command still says so (field ``u``), so the set is cleaned all the same."""
    master_port, replica = master_and_replica
    client = redis.Redis(port=master_port)
    try:
        sink = RedisChangeSink(client, key_prefix="rv:", wait_replicas=1, wait_timeout_ms=300,
                               generation_cache_seconds=0)
        cache = RedisLookupCache(client, key_prefix="rv:", generation_cache_seconds=0)
        first = stored("pump-7", critical=True, enqueued=0)
        sink.put_latest([first])
        sink.apply([first])
        cache.fill_critical("pump-7", [first], SINCE_ALL, ttl=3600)  # a lookup's miss: the list is complete
        assert cache.get_critical("pump-7", SINCE_ALL, 10) == [first.to_json()]

        corrected = replace(first, severity="info", critical=False, measurements={"v": 0.0},
                            enqueued_time=NOW + timedelta(seconds=5))
        os.kill(replica.process.pid, signal.SIGSTOP)  # the replica lags: WAIT is not acknowledged in time
        with pytest.raises(DependencyUnavailable):
            sink.apply([corrected])
        assert client.ttl(sink.keys.event(first.event_id)) > 3600, "the note went with the copy's TTL"
        os.kill(replica.process.pid, signal.SIGCONT)
        for attempt in range(20):  # the change feed kept its position and writes the page again until acknowledged
            try:
                sink.apply([corrected])
                break
            except DependencyUnavailable:
                assert attempt < 19, "the replica never acknowledged again"
                time.sleep(0.2)
        assert cache.get_critical("pump-7", SINCE_ALL, 10) == [], "the corrected event is still listed as critical"
    finally:
        client.close()


def _first_pipeline_only(cache: Cache, events: list[StoredEvent]) -> None:
    """What a page that failed between its pipelines wrote: the first one (writes, stale drops), not ``uncritical``."""
    commands, _, _ = cache.sink.commands(events)
    cache.sink.pipeline(commands, "the first pipeline of a page that fails after it")


@pytest.mark.parametrize("later", ["not critical", "critical again"])
def test_a_correction_whose_page_failed_half_way_is_finished_by_a_later_copy(client, redis_prefix, later):
    """The page that corrects a critical event into one that is not critical fails between its pipelines; the feed
    writes it again, in Cosmos mode as the row's latest copy, here re-sent meanwhile (enqueued later).
    ``fill_event`` answers every copy from the correction on (field ``u``), so the set loses the superseded copy,
    and a later copy critical again stays (``uncritical.lua`` keeps a copy as new as the time it is sent)."""
    cache = Cache(client, key_prefix=redis_prefix)
    first = stored("pump-7", critical=True, enqueued=0)
    cache.apply([first])
    cache.fill_critical("pump-7", [first], SINCE_ALL, ttl=3600)  # a lookup's miss: the list is complete
    corrected = replace(first, severity="info", critical=False, measurements={"v": 0.0},
                        enqueued_time=NOW + timedelta(seconds=5))
    _first_pipeline_only(cache, [corrected])
    critical = later == "critical again"
    again = replace(corrected, severity="critical" if critical else "info", critical=critical,
                    enqueued_time=NOW + timedelta(seconds=10))
    cache.apply([again])
    assert cache.get_critical("pump-7", SINCE_ALL, 10) == ([again.to_json()] if critical else [])


@pytest.mark.parametrize("half_way", [False, True], ids=["at once", "page written again"])
@pytest.mark.parametrize("critical", [False, True], ids=["not critical", "critical"])
def test_a_correction_to_another_device_leaves_the_old_devices_critical_set(client, redis_prefix, critical,
                                                                            half_way):
    """An event id re-sent under another device id, critical or not: the old device's set loses its copy (each
    device's keys in their own slot, so the feed cleans it in a second pipeline, from ``fill_event``'s answer,
    which a page written again after failing between the two still gets), and the new device's set holds the event
    only if it is critical."""
    cache = Cache(client, key_prefix=redis_prefix)
    first = stored("pump-7", critical=True, enqueued=0)
    cache.apply([first])
    cache.fill_critical("pump-7", [first], SINCE_ALL, ttl=3600)  # a lookup's miss: the list is complete
    moved = replace(first, device_id="pump-8", severity="critical" if critical else "info", critical=critical,
                    enqueued_time=NOW + timedelta(seconds=5))
    if half_way:
        _first_pipeline_only(cache, [moved])
    cache.apply([moved])
    assert cache.get_critical("pump-7", SINCE_ALL, 10) == []
    members = client.zrange(cache.keys.critical("pump-8"), 0, -1)
    assert [m.decode() for m in members] == ([moved.to_json()] if critical else [])


class _NoLatestState:
    """``LatestStates`` of a store whose positions name events now stored for other devices: no state at all."""

    def latest_found(self, device_ids):
        return LatestFound([])


@pytest.mark.parametrize("critical", [False, True], ids=["not critical", "critical"])
@pytest.mark.parametrize("order", ["applied in turn", "one page", "original read again"])
def test_an_event_moved_to_another_device_is_no_longer_the_old_devices_latest_state(client, redis_prefix, critical,
                                                                                     order):
    """The store has no latest state for a device whose newest event a correction moved to another device id, and
    a rebuild writes none: the old device's ``latest`` goes (``unlatest.lua``, from ``fill_event``'s field ``o``),
    whether the feed applies the original and the correction in turn, in one page (the old device's key missing:
    not put back from the page), or reads the original again after the correction (the portable feed's overlap),
    also when a page is written again. The new device's latest state is the correction."""
    cache = Cache(client, key_prefix=redis_prefix)
    original = stored("pump-7", critical=critical, enqueued=0)
    moved = replace(original, device_id="pump-8", enqueued_time=NOW + timedelta(seconds=5))
    pages = {"applied in turn": [[original], [moved]], "one page": [[original, moved]],
             "original read again": [[original], [moved], [original, moved], [original]]}[order]
    for page in pages:
        apply_changes(cache.sink, page, _NoLatestState(), list)
    assert client.hget(cache.keys.latest("pump-7"), "d") is None
    assert client.hget(cache.keys.latest("pump-8"), "d") == moved.to_json().encode()


@pytest.mark.parametrize("critical", [False, True], ids=["not critical", "critical"])
@pytest.mark.parametrize("again", ["the same page", "its latest copy only"])
def test_an_event_moved_twice_in_a_page_whose_unlatest_failed_leaves_both_old_devices_when_written_again(
        client, redis_prefix, monkeypatch, critical, again):
    """A page moving an event on twice (pump-7 -> pump-8 -> pump-9) fails in the second pipeline, which carries
    ``unlatest``; ``fill_event`` has rewritten ``o`` by then. Written again (the portable feed: the same page; the
    Cosmos feed: the row's latest copy only), the move each copy made is answered from field ``m``, and neither
    old device keeps the event as its latest state."""
    cache = Cache(client, key_prefix=redis_prefix)
    original = stored("pump-7", critical=critical, enqueued=0)
    apply_changes(cache.sink, [original], _NoLatestState(), list)
    second = replace(original, device_id="pump-8", enqueued_time=NOW + timedelta(seconds=5))
    third = replace(original, device_id="pump-9", enqueued_time=NOW + timedelta(seconds=9))
    send, failed = cache.sink._send, []

    def unlatest_fails_once(commands):
        if not failed and any(command[0] == cache.sink.sha["unlatest"] for command in commands):
            failed.append(commands)
            raise redis.ConnectionError("Connection reset by peer")
        return send(commands)

    monkeypatch.setattr(cache.sink, "_send", unlatest_fails_once)
    with pytest.raises(DependencyUnavailable):
        apply_changes(cache.sink, [second, third], _NoLatestState(), list)
    assert failed
    page = [second, third] if again == "the same page" else [third]
    apply_changes(cache.sink, page, _NoLatestState(), list)
    assert client.hget(cache.keys.latest("pump-7"), "d") is None
    assert client.hget(cache.keys.latest("pump-8"), "d") is None
    assert client.hget(cache.keys.latest("pump-9"), "d") == third.to_json().encode()


def test_a_correction_back_to_the_old_device_stays_its_latest_state(client, redis_prefix):
    """An event moved to another device and then back (a later copy under the first device again) is that device's
    latest state again: only a copy enqueued before the one under the other device is dropped."""
    cache = Cache(client, key_prefix=redis_prefix)
    original = stored("pump-7", critical=False, enqueued=0)
    moved = replace(original, device_id="pump-8", enqueued_time=NOW + timedelta(seconds=5))
    back = replace(original, enqueued_time=NOW + timedelta(seconds=9))
    for page in ([original], [moved], [back], [moved]):
        apply_changes(cache.sink, page, _NoLatestState(), list)
    assert client.hget(cache.keys.latest("pump-7"), "d") == back.to_json().encode()


@pytest.mark.parametrize("correction", ["not critical", "another device"])
def test_a_critical_fill_landing_after_the_feed_applied_a_correction_leaves_the_superseded_copy_out(
        client, redis_prefix, correction):
    """A lookup's critical miss read the critical copy from the store; a correction is stored and the feed applies
    it between the fill's two pipelines (by id, then the set). ``e:<id>`` held the copy the first pipeline wrote,
    so the feed sends ``uncritical``, which finds no member yet and leaves the correction's time in the member key
    (``#gone:``, for the feed's stale marker seconds); the fill's set script leaves the older copy out. A later copy
    critical again replaces the marker; a superseded copy written again (a replayed page) stays out."""
    cache = Cache(client, key_prefix=redis_prefix, stale_marker_seconds=30)
    first = stored("pump-7", critical=True, enqueued=0)
    lookups = cache.lookups
    by_id = lookups.pipeline(critical_event_fills(cache.keys, lookups.sha, [first], 3600), "the fill's first pipeline")
    assert still_current([first], by_id) == [first]
    corrected = (replace(first, severity="info", critical=False, enqueued_time=NOW + timedelta(seconds=5))
                 if correction == "not critical" else
                 replace(first, device_id="pump-8", enqueued_time=NOW + timedelta(seconds=5)))
    cache.apply([corrected])
    member = cache.keys.member("pump-7", first.event_id)
    assert 0 < client.ttl(member) <= 30
    lookups.pipeline([critical_fill(cache.keys, lookups.sha, "pump-7", [first], SINCE_ALL, 3600, 100)],
                     "the fill's second pipeline")
    assert cache.get_critical("pump-7", SINCE_ALL, 10) == [], "the superseded critical copy is back in the set"
    cache.apply([first])  # the page of the first copy written again: it stays out
    assert cache.get_critical("pump-7", SINCE_ALL, 10) == []
    again = replace(first, measurements={"v": 3.0}, enqueued_time=NOW + timedelta(seconds=10))
    cache.apply([again])
    assert cache.get_critical("pump-7", SINCE_ALL, 10) == [again.to_json()]
    assert client.ttl(member) > 30


@pytest.mark.parametrize("correction", ["not critical", "another device"])
def test_a_replay_after_a_correction_does_not_put_the_superseded_copy_back_in_the_critical_list(
        client, redis_prefix, correction):
    """A critical event corrected to another event time (not critical, or under another device id) leaves its
    device's set, but the ``#gone:`` marker lives only the stale marker seconds. A ``sluice replay`` of the
    original's range afterwards (the log still holds its row at its old time), or a feed retry after a long outage,
    writes the superseded copy again: ``critical.lua`` finds no marker and adds it back, so ``fill_event``, which
    refuses it (note ``n``, or the later copy in ``d``), answers the later copy's enqueued time and the feed takes
    it out again (``uncritical.lua``): the lookups do not list it as critical from Redis for the TTL."""
    cache = Cache(client, key_prefix=redis_prefix, stale_marker_seconds=1)
    first = stored("pump-7", critical=True, enqueued=0)
    cache.apply([first])
    cache.fill_critical("pump-7", [first], SINCE_ALL, ttl=3600)  # a lookup's miss: the list is complete
    assert cache.get_critical("pump-7", SINCE_ALL, 10) == [first.to_json()]
    later = NOW + timedelta(seconds=5)
    corrected = (replace(first, event_time=NOW + timedelta(minutes=10), severity="info", critical=False,
                         enqueued_time=later) if correction == "not critical" else
                 replace(first, device_id="pump-8", event_time=NOW + timedelta(minutes=10), enqueued_time=later))
    cache.apply([corrected])
    assert cache.get_critical("pump-7", SINCE_ALL, 10) == []
    member = cache.keys.member("pump-7", first.event_id)
    deadline = time.monotonic() + 5
    while client.exists(member) and time.monotonic() < deadline:  # the #gone: marker expires (30 s in production)
        time.sleep(0.1)
    assert not client.exists(member)

    cache.apply([first])  # the replay's page: the original copy, at its old event time
    listed = cache.get_critical("pump-7", SINCE_ALL, 10)
    assert listed == [], (
        f"after the replay the lookups answer {[json.loads(d)['event_id'] for d in listed]} from Redis as pump-7's "
        f"complete critical list; the event was corrected ({correction})")
    assert client.get(member) == f"#gone:{corrected.enqueued_text()}".encode()  # a fill in flight honours it too
    assert [m.decode() for m in client.zrange(cache.keys.critical("pump-8"), 0, -1)] == (
        [corrected.to_json()] if correction == "another device" else [])


def test_a_critical_fill_after_the_feed_applied_a_correction_to_a_copy_it_never_saw(client, redis_prefix):
    """The correction reached the feed before the critical copy did (the feed reads a row's current copy only), so
    no set and no ``e:<id>`` held a critical copy; a lookup that read that copy before the correction was stored
    fills after. ``fill_event`` refuses the copy (note ``n``), and the set is filled without it."""
    cache = Cache(client, key_prefix=redis_prefix, stale_marker_seconds=30)
    first = stored("pump-7", critical=True, enqueued=0)
    cache.apply([replace(first, severity="info", critical=False, enqueued_time=NOW + timedelta(seconds=5))])
    cache.fill_critical("pump-7", [first], SINCE_ALL, ttl=3600)
    assert cache.get_critical("pump-7", SINCE_ALL, 10) == []


def test_the_critical_feed_shows_each_events_current_copy_once(client, redis_prefix):
    """The fleet-wide stream keeps each event's first critical copy (appended once per id and shard); the feed
    checks its entries against ``e:<id>``: a correction no longer critical is left out and older entries, read on
    from the shards that hold more, fill the list; a correction still critical shows its current content, once,
    also when it moved to a device of another shard."""
    from shared.adapters.redis_dashboard import RedisCriticalStream

    cache = Cache(client, key_prefix=redis_prefix, stream_shards=4)
    stream = RedisCriticalStream(client, key_prefix=redis_prefix, stream_shards=4)
    keys = cache.keys
    [a, b, c] = [ev("feed-1", seconds=s, critical=True, enqueued=s) for s in (1, 2, 3)]
    for event in (a, b, c):
        cache.apply([event])  # one page each: the stream's entries in that order
    assert [e["event_id"] for e in stream.recent(2)] == [str(c.event_id), str(b.event_id)]
    cache.apply([replace(c, severity="info", critical=False, enqueued_time=NOW + timedelta(seconds=10))])
    assert [e["event_id"] for e in stream.recent(2)] == [str(b.event_id), str(a.event_id)]
    elsewhere = next(d for d in (f"feed-{i}" for i in range(2, 100)) if keys.shard(d) != keys.shard("feed-1"))
    moved = replace(b, device_id=elsewhere, measurements={"v": 9.0}, enqueued_time=NOW + timedelta(seconds=11))
    cache.apply([moved])
    assert stream.recent(10) == [json.loads(moved.to_json()), json.loads(a.to_json())]


def test_an_event_never_corrected_costs_one_pipeline_per_page(client, redis_prefix, monkeypatch):
    """Only a correction that leaves a critical set costs the second pipeline: a page of new events, and one of
    re-sends (at-least-once delivery) of the same events, are one pipeline each."""
    cache = Cache(client, key_prefix=redis_prefix)
    sent: list[str] = []
    pipeline = cache.sink.pipeline
    monkeypatch.setattr(cache.sink, "pipeline", lambda commands, what, **kw: sent.append(what) or pipeline(
        commands, what, **kw))
    page = [stored("pump-7", critical=True, enqueued=0), stored("pump-7", critical=False, enqueued=0)]
    cache.apply(page)
    cache.apply([replace(e, enqueued_time=NOW + timedelta(seconds=5)) for e in page])
    assert len(sent) == 2, sent


def test_a_lookup_fill_landing_after_the_feed_applied_a_resent_event_does_not_cache_the_superseded_copy(
        client, redis_prefix):
    """A lookup reads copy A of an event from the store; the re-sent copy B is stored and the feed applies it,
    with nothing cached yet; then the lookup's fill of A lands. Without a trace of B it cached A for the lookups'
    TTL (an hour). The feed's stale command notes B's enqueued time (field ``n``, for a while longer than a
    lookup's read), and the fill of the older copy is refused."""
    cache = Cache(client, key_prefix=redis_prefix, stale_marker_seconds=30)
    first = stored(critical=False, enqueued=0, value=1.0)
    resent = replace(first, measurements={"v": 2.0}, enqueued_time=NOW + timedelta(seconds=5))
    event_id = str(first.event_id)

    assert cache.get_event(event_id) is None  # the lookup misses and reads copy A from the store
    cache.apply([resent])  # B is stored and the change feed applies it
    cache.fill_event(event_id, first, ttl=3600, negative_ttl=5)  # the lookup's fill of A lands after
    assert cache.get_event(event_id) is None, "the superseded copy is cached after the feed applied the re-send"
    assert 0 < client.ttl(cache.keys.event(first.event_id)) <= 30  # the note only lives a lookup's read or so
    cache.fill_event(event_id, resent, ttl=3600, negative_ttl=5)  # the next lookup caches what the store holds
    assert cache.get_event(event_id) == Cached(resent.to_json())


def test_a_negative_fill_landing_after_the_feed_applied_the_event_does_not_hide_it(client, redis_prefix):
    """The same race with "not found": a lookup that read nothing just before the event was stored cached "not
    found" after the feed applied the event, and the event answered 404 for the negative TTL. The feed's note makes
    the key exist, and ``negative.lua`` caches "not found" only where nothing is."""
    cache = Cache(client, key_prefix=redis_prefix)
    applied = stored(critical=False, enqueued=0)
    event_id = str(applied.event_id)

    assert cache.get_event(event_id) is None  # the lookup misses; the store does not hold the event yet
    cache.apply([applied])  # ingest stores it, the change feed applies it
    cache.fill_event(event_id, None, ttl=3600, negative_ttl=60)  # the lookup's "not found" lands after
    assert cache.get_event(event_id) is None, "an event the change feed applied is cached as 'not found'"
