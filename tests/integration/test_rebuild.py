"""``sluice rebuild redis`` against the Cassandra emulator and real Redis.

The reference is what the change feed itself writes: a rebuild after every key
under the prefix was deleted must leave the same keys (full dumps compared), a
killed rebuild resumed must end the same, and a rebuild while ingest and the
change feed run must equal a quiet rebuild of the same log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import redis

from shared import bootstrap
from shared.adapters.cassandra.device_log import _STATEMENTS as _DEVICE_LOG_STATEMENTS
from shared.adapters.cassandra.device_log import CassandraDeviceLog
from shared.adapters.cassandra.query import Queries
from shared.adapters.cassandra.window_reader import CassandraWindowReader
from shared.adapters.redis import RedisChangeSink, RedisLookupCache
from shared.adapters.redis_dashboard import RedisCriticalStream
from shared.adapters.redis_rebuild import RedisCacheBuilder
from shared.domain.events import Event
from shared.domain.stored import StoredEvent
from shared.domain.times import rfc3339, to_ms
from shared.exceptions import ConfigurationError, DependencyUnavailable
from shared.ports.cache import SINCE_ALL
from shared.ports.rebuild import DeviceRow
from shared.services.changefeed import apply_changes
from shared.services.rebuild import GenerationsLeft, RebuildService, TokenBucket
from shared.services.replay import ReplayService
from sluice.__main__ import main
from tests.fixtures.buckets import RecordingBucket
from tests.integration import test_changefeed as cf

ROOT = cf.ROOT
session, keyspace, store, rclient, app_env = cf.session, cf.keyspace, cf.store, cf.rclient, cf.app_env


def cache_for(client: redis.Redis, prefix: str, **kw) -> RedisChangeSink:
    return RedisChangeSink(client, key_prefix=prefix, ttl_seconds=3600, critical_stream_max=10_000,
                           generation_cache_seconds=kw.pop("generation_cache_seconds", 0.0), **kw)


def lookups_for(cache: RedisChangeSink) -> RedisLookupCache:
    """The lookups' view of the same keys (the live generation, pointer not cached)."""
    return RedisLookupCache(cache.connection, key_prefix=cache.key_prefix, stream_shards=cache.stream_shards,
                            critical_per_device_max=cache.critical_cap, generation_cache_seconds=0.0)


def rebuild(session, keyspace: str, cache: RedisChangeSink, **kw):
    builder = RedisCacheBuilder(cache, settle_seconds=kw.pop("settle_seconds", 0.0))
    return RebuildService(CassandraDeviceLog(session, keyspace), builder, **kw).rebuild()


def run_rebuild(service: RebuildService, kind: str, device: str) -> None:
    """A ``full`` rebuild, or one of ``device`` alone (``--devices``)."""
    if kind == "full":
        service.rebuild()
    else:
        service.rebuild_devices([device])


def dump(client: redis.Redis, cache: RedisChangeSink) -> dict:
    """Every key of the live generation, its name without the generation, its value normalized:
    stream entries as sorted event ids (entry ids carry the wall clock), sorted sets without the
    ``#since`` bound (the feed does not write it, a rebuild does), ``e:<id>`` without the feed's notes of the
    copies it applied (``n``, ``u``, ``v``: a lookup's fill is checked against them; a rebuild has no fill to
    race; ``o``: the device of the copy it applied, which a rebuild's ``d`` tells as well), TTLs left out."""
    keys = cache.keys
    out = {}
    for key in client.scan_iter(match=keys.prefix + "*", count=1000):
        name = key.decode()[len(keys.prefix):]
        if name.startswith(("g", "generation", "rebuild:")) and not name.startswith(("d:", "e:")):
            continue
        kind = client.type(key)
        if kind == b"hash":
            fields = client.hgetall(key)
            if name.startswith("e:"):
                fields = {field: value for field, value in fields.items() if field not in (b"n", b"u", b"v", b"o")}
            if fields:
                out[name] = fields
        elif kind == b"zset":
            members = [(m, s) for m, s in client.zrange(key, 0, -1, withscores=True) if not m.startswith(b"#since:")]
            if members:
                out[name] = members
        elif kind == b"stream":
            entries = [fields[b"event_id"] for _, fields in client.xrange(key)]
            out[name] = sorted(entries)
            assert len(entries) == len(set(entries)), "an event is on the stream twice"
        else:
            out[name] = client.get(key)
    return out


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    for key in client.scan_iter(match=prefix + "*", count=1000):
        client.delete(key)


def test_rebuild_after_deleting_every_key_leaves_what_the_feed_wrote(session, keyspace, store, rclient, redis_prefix):
    events = cf.spread(60, devices=7, critical_every=3)
    store.write(events)
    cache = cache_for(rclient, redis_prefix)
    cf.make_service("cosmos", session, keyspace, cache).run()
    before = dump(rclient, cache)
    lookups = {
        d: (lookups_for(cache).get_latest(d), lookups_for(cache).get_critical(d, -(2**53), 100))
        for d in {e.device_id for e in events}
    }
    assert before and any(name.endswith(":crit") for name in before)

    delete_prefix(rclient, redis_prefix)
    assert dump(rclient, cache) == {}
    report = rebuild(session, keyspace, cache)

    assert report.devices == 7 and report.generation == 1
    assert dump(rclient, cache) == before
    for device, (latest, _) in lookups.items():
        assert lookups_for(cache).get_latest(device) == latest
        # the rebuilt list is known complete: the cache answers it itself, exactly as the log does
        assert [json.loads(d)["event_id"] for d in lookups_for(cache).get_critical(device, -(2**53), 100)] == \
            cf.expected_state(events)[1].get(device, [])


def test_a_second_rebuild_replaces_the_first_and_deletes_its_keys(session, keyspace, store, rclient, redis_prefix):
    store.write(cf.spread(20, devices=3))
    cache = cache_for(rclient, redis_prefix)
    first = rebuild(session, keyspace, cache)
    state = dump(rclient, cache)
    second = rebuild(session, keyspace, cache)
    assert (first.generation, second.generation, second.replaced) == (1, 2, 1)
    assert dump(rclient, cache) == state
    assert not list(rclient.scan_iter(match=f"{redis_prefix}g1:*"))


def test_a_generation_left_by_a_failed_deletion_after_the_switch_is_deleted_by_the_next_rebuild(
        session, keyspace, store, rclient, redis_prefix, monkeypatch):
    """The switch records the generation it replaces for deletion in the pointer: when deleting it fails (a
    timeout, a kill), the rebuild reports its switch as done (``GenerationsLeft``) and the next rebuild deletes
    the generation, so no key of a generation other than the live one is left."""
    store.write(cf.spread(30, devices=5, critical_every=2))
    cache = cache_for(rclient, redis_prefix)
    service = RebuildService(CassandraDeviceLog(session, keyspace), RedisCacheBuilder(cache, settle_seconds=0.0))
    service.rebuild()  # generation 1 live

    real_drop = cache.generations.drop
    state = {"killed": False}

    def dies_on_first_drop(generation, patterns, **kw):
        if not state["killed"]:
            state["killed"] = True
            raise DependencyUnavailable("redis", "deleting generation failed: TimeoutError")
        return real_drop(generation, patterns, **kw)

    monkeypatch.setattr(cache.generations, "drop", dies_on_first_drop)
    with pytest.raises(DependencyUnavailable) as failed:
        service.rebuild()
    assert isinstance(failed.value, GenerationsLeft) and failed.value.report.generation == 2
    assert cache.generations.read().live == 2 and cache.generations.retired() == [1]

    service.rebuild()
    live = cache.generations.read().live
    assert live == 3 and cache.generations.retired() == []
    left = sorted({k.decode()[len(redis_prefix):].split(":")[0]
                   for k in rclient.scan_iter(match=f"{redis_prefix}g*:*", count=1000)
                   if not k.decode().startswith(f"{redis_prefix}g{live}:")})
    assert left == []


def _pointer(client: redis.Redis, prefix: str) -> dict:
    return {k.decode(): v.decode() for k, v in client.hgetall(f"{prefix}generation").items()}


def test_a_killed_rebuild_resumes_and_ends_as_a_quiet_one(app_env, session, keyspace, store, rclient, redis_prefix):
    app_env()
    events = cf.spread(90, devices=30, critical_every=3)
    store.write(events)
    cache = cache_for(rclient, redis_prefix)
    rebuild(session, keyspace, cache)
    quiet = dump(rclient, cache)
    live = _pointer(rclient, redis_prefix)["live"]

    command = [sys.executable, "-m", "sluice", "rebuild", "redis", "--page-size", "3", "--max-rps", "15",
               "--no-progress"]
    child = subprocess.Popen(command, cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while "position" not in _pointer(rclient, redis_prefix):
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)
    child.send_signal(signal.SIGKILL)
    child.wait()
    halfway = _pointer(rclient, redis_prefix)
    assert halfway["live"] == live and "building" in halfway  # readers still on the complete generation
    assert dump(rclient, cache) == quiet

    # The killed build's lease is still live: nothing tells it from a running one yet, so it is not taken over.
    early = subprocess.run([*command[:5], "--no-progress"], cwd=ROOT, env=os.environ.copy(), capture_output=True,
                           text=True, timeout=120)
    assert early.returncode == 2 and f"building generation {halfway['building']}" in early.stderr, early.stderr
    rclient.hset(f"{redis_prefix}generation", "lease", 0)  # as if the lease had lapsed (LEASE_SECONDS later)
    done = subprocess.run([*command[:5], "--no-progress"], cwd=ROOT, env=os.environ.copy(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["resumed_from"] == int(halfway["position"])
    assert figures["generation"] == int(halfway["building"])
    assert figures["devices"] < 30  # only what was left
    assert figures["duration_seconds"] > 0 and figures["events_per_second"] > 0
    assert dump(rclient, cache) == quiet


def test_rebuild_under_ingest_load_equals_a_quiet_rebuild(session, keyspace, store, rclient, redis_prefix):
    now = datetime.now(UTC).replace(microsecond=0)
    store.write(cf.spread(60, devices=20, critical_every=3))
    feed_cache = cache_for(rclient, redis_prefix, generation_cache_seconds=0.2)
    feed = cf.make_service("cosmos", session, keyspace, feed_cache)
    feed.run()
    stop = threading.Event()
    written: list = []

    def load() -> None:
        # At most 300 batches of 5 (15 critical events a device, ~100 a stream shard): well within the caps
        # (100 a device, 1,250 a shard), past which the feed's trimming and a rebuild's choice of what to keep
        # differ by design. On a busy machine the rebuild runs longer and an unbounded load passed them.
        i = 0
        while not stop.is_set() and i < 300:
            # distinct event times: on a tie device_latest and the Redis merge may pick different winners
            batch = [cf.make_event(f"dev-{(i + k) % 25}", now - timedelta(seconds=k * 3 + i % 50, milliseconds=i),
                                   severity="critical" if (i + k) % 4 == 0 else "info") for k in range(5)]
            store.write(batch)
            written.extend(batch)
            feed.run()
            i += 1
            stop.wait(0.01)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        report = rebuild(session, keyspace, cache_for(rclient, redis_prefix), page_size=2, max_rps=40,
                         settle_seconds=0.4)
    finally:
        stop.set()
        thread.join()
    feed.run()  # drain what the load wrote last
    assert len(written) > 20 and report.seconds > 1
    # Compare through a reader with no pointer cache: the quiet rebuild below settles for 0 s, so the feed's
    # reader (0.2 s cache) could still be looking at the generation it has just dropped.
    under_load = dump(rclient, cache_for(rclient, redis_prefix))
    rebuild(session, keyspace, cache_for(rclient, redis_prefix))
    assert dump(rclient, cache_for(rclient, redis_prefix)) == under_load


def test_a_critical_event_arriving_during_a_rebuild_is_the_newest_on_the_rebuilt_stream(
        session, keyspace, store, rclient, redis_prefix):
    """The rebuilt stream is in event time order whatever the change feed added to it during the build: a
    critical event that arrives while the rebuild runs is among the stream's most recent entries after the
    switch, as it is on the live generation and after a quiet rebuild."""
    store.write(cf.spread(40, devices=4, critical_every=2))  # 20 critical events, minutes old
    cache = cache_for(rclient, redis_prefix)
    feed = cf.make_service("cosmos", session, keyspace, cache)
    feed.run()
    newest: list = []

    def live_event_arrives(report, fraction) -> None:
        if newest:
            return
        # the rebuild has read every device (one page): a new critical event now reaches only the change feed
        event = cf.make_event("dev-0", datetime.now(UTC), severity="critical")
        store.write([event])
        feed.run()  # to the live and the building generation
        newest.append(str(event.event_id))
        live = RedisCriticalStream(rclient, key_prefix=redis_prefix, stream_shards=cache.stream_shards).recent(1)
        assert [d["event_id"] for d in live] == newest

    builder = RedisCacheBuilder(cache, settle_seconds=0.0)
    RebuildService(CassandraDeviceLog(session, keyspace), builder, page_size=4).rebuild(progress=live_event_arrives)
    assert newest

    stream = RedisCriticalStream(rclient, key_prefix=redis_prefix, stream_shards=cache.stream_shards)
    assert [doc["event_id"] for doc in stream.recent(1)] == newest


def test_a_replay_after_a_rebuild_leaves_the_critical_stream_as_it_was(
        cassandra_emulator, session, keyspace, store, rclient, redis_prefix):
    """A rebuild leaves a stream marker for every critical event it read, as the change feed would have (beyond
    the stream's cap too), so replaying a range of applied events puts no older event on top of the stream."""
    events = cf.spread(40, devices=4, critical_every=2)  # 20 critical events over the last ~10 minutes
    store.write(events)
    cache = cf.make_cache(rclient, redis_prefix, critical_stream_max=8, stream_shards=1,
                          generation_cache_seconds=0.0)
    RebuildService(CassandraDeviceLog(session, keyspace), RedisCacheBuilder(cache, settle_seconds=0.0)).rebuild()
    stream = RedisCriticalStream(rclient, key_prefix=redis_prefix, stream_shards=1)
    before = [d["event_id"] for d in stream.recent(5)]

    reader = CassandraWindowReader(session, cf.cassandra_settings(cassandra_emulator, keyspace))
    start = min(e.timestamp for e in events) - timedelta(minutes=1)
    ReplayService(reader, cache, cf.RULES, None).replay(start, datetime.now(UTC) + timedelta(seconds=1),
                                                        postgres=False)

    assert [d["event_id"] for d in stream.recent(5)] == before


@pytest.mark.timeout(60)
def test_a_replay_after_a_rebuild_with_since_puts_no_older_event_on_top_of_the_stream(
        cassandra_emulator, session, keyspace, store, rclient, redis_prefix):
    """``--since T`` bounds the per-device critical lists only ("older ones are read from Cassandra on demand"). The
    rebuild offered only the events from T to the stream and set stream markers (``critical:seen``) only for them,
    so a replay of the whole range appended every older critical event with an entry id from the clock: the
    dashboard's newest entries became events minutes old, which neither the feed's stream nor a rebuild without
    ``--since`` shows there. Expected: the stream and its markers get every critical event the feed's stream could
    still hold, whatever ``--since``; the lists still start at T."""
    events = cf.spread(40, devices=4, critical_every=2)
    store.write(events)
    cache = cf.make_cache(rclient, redis_prefix, stream_shards=1, generation_cache_seconds=0.0)
    cf.make_service("cosmos", session, keyspace, cache).run()
    cut = sorted(e.timestamp for e in events)[20]
    RebuildService(CassandraDeviceLog(session, keyspace),
                   RedisCacheBuilder(cache, settle_seconds=0.0)).rebuild(since_ms=cf_ms(cut))
    stream = RedisCriticalStream(rclient, key_prefix=redis_prefix, stream_shards=1)
    before = [d["event_id"] for d in stream.recent(5)]
    lookups = lookups_for(cache)
    for device in {e.device_id for e in events}:  # the lists still start at T: before it, the lookups read Cassandra
        assert lookups.get_critical(device, cf_ms(cut), 100) is not None
        assert lookups.get_critical(device, -(2**53), 100) is None

    reader = CassandraWindowReader(session, cf.cassandra_settings(cassandra_emulator, keyspace))
    start = min(e.timestamp for e in events) - timedelta(minutes=1)
    ReplayService(reader, cache, cf.RULES, None).replay(start, datetime.now(UTC) + timedelta(seconds=1),
                                                        postgres=False)

    after = stream.recent(5)
    assert [d["event_id"] for d in after] == before, (
        f"after the replay the newest stream entries are events of {sorted({d['timestamp'] for d in after})}, "
        f"all before the rebuild's --since {cut.isoformat()}")


def test_max_rps_is_charged_every_row_read_the_latest_events_by_id_too(
        session, keyspace, store, rclient, redis_prefix):
    """``--max-rps N`` is "at most N Cassandra rows read per second" (docs/operations.md), but the token bucket was
    charged ``page_size`` per page of ``device_latest`` rows plus the critical rows: the page's ``events_by_id``
    reads (each device's latest event, by id) were never charged, so on a fleet with few critical events a
    rebuild read about twice the rate it was given, and ingest was throttled by the rebuild the option exists to
    make harmless. Measured with a bucket that records every charge instead of sleeping: 300 devices of one
    event each are 600 rows read (300 device_latest + 300 events_by_id)."""

    now = datetime.now(UTC).replace(microsecond=0)
    devices = 300
    store.write([cf.make_event(f"dev-{i:03d}", now - timedelta(seconds=i)) for i in range(devices)])
    cache = cache_for(rclient, redis_prefix)
    log = CassandraDeviceLog(session, keyspace)
    service = RebuildService(log, RedisCacheBuilder(cache, settle_seconds=0), page_size=100, max_rps=100)
    service._limiter = bucket = RecordingBucket(100)
    report = service.rebuild()

    assert report.devices == devices
    rows_read = devices + devices  # device_latest rows + events_by_id rows (no critical events)
    charged = sum(bucket.charged)
    assert charged == rows_read, f"the bucket was charged {charged:.0f} units for {rows_read} rows read"
    assert log.rows_read == rows_read


class _CountingQueries(Queries):
    """The adapter's own ``Queries``, counting the ``events_by_id`` requests (``IN`` reads) it sends."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.event_reads = 0

    def fan_out(self, name, params, what, *, concurrency, budget=None):
        if name == "events":
            self.event_reads += len(params)
        return super().fan_out(name, params, what, concurrency=concurrency, budget=budget)


class _CountingLog(CassandraDeviceLog):
    def __init__(self, session, keyspace: str) -> None:
        super().__init__(session, keyspace)
        self._queries = self.queries = _CountingQueries(session, keyspace, _DEVICE_LOG_STATEMENTS, timeout=10.0,
                                                        fetch_size=1000)


@pytest.mark.parametrize("max_rps", [None, 1000])
def test_a_full_rebuild_reads_the_copies_of_a_pages_critical_rows_at_once(
        session, keyspace, store, rclient, redis_prefix, max_rps):
    """The rebuild read each device's critical rows, then their copies in ``events_by_id`` (which rows a
    correction superseded): two round trips a device on its threads, on Cosmos DB one request more a device with
    any critical row; ``bench rebuild`` spent nearly all its time there. Expected: the copies of a page are read
    together, fewer ``events_by_id`` requests than devices with critical rows, the same rebuilt state, and with
    ``--max-rps`` every row read, those copies too, charged."""
    now = datetime.now(UTC).replace(microsecond=0)
    devices = 40
    store.write([cf.make_event(f"dev-{i:03d}", now - timedelta(seconds=i), severity="critical")
                 for i in range(devices)])
    cache = cache_for(rclient, redis_prefix)
    rebuild(session, keyspace, cache)
    quiet = dump(rclient, cache)
    log = _CountingLog(session, keyspace)
    service = RebuildService(log, RedisCacheBuilder(cache, settle_seconds=0), page_size=20, max_rps=max_rps)
    bucket = RecordingBucket(max_rps)
    if max_rps:
        service._limiter = bucket
    report = service.rebuild()

    assert report.devices == devices and dump(rclient, cache) == quiet
    # the latest events: one request a page; the critical rows' copies: one a page (each under 100 ids)
    assert log.queries.event_reads == 2 * 2 < devices
    if max_rps:
        assert sum(bucket.charged) == log.rows_read == devices * 4  # device_latest, latest, critical row, its copy


def test_devices_are_rebuilt_in_place_even_over_a_wrong_newer_value(session, keyspace, store, rclient, redis_prefix):
    events = cf.spread(30, devices=3, critical_every=2)
    store.write(events)
    cache = cache_for(rclient, redis_prefix)
    rebuild(session, keyspace, cache)
    good = dump(rclient, cache)
    # a buggy release wrote a "newer" state and a stray critical member for dev-0, and dev-1's list vanished
    rclient.hset(cache.keys.latest("dev-0"), mapping={"k": "99999999999999999:x", "d": '{"bogus":true}'})
    rclient.zadd(cache.keys.critical("dev-0"), {'{"bogus":true}': 1})
    rclient.delete(cache.keys.critical("dev-1"))
    untouched = rclient.hgetall(cache.keys.latest("dev-2"))

    service = RebuildService(CassandraDeviceLog(session, keyspace), RedisCacheBuilder(cache, settle_seconds=0))
    report = service.rebuild_devices(["dev-0", "dev-1", "nobody"])

    assert (report.generation, report.devices, report.not_found) == (None, 2, ["nobody"])
    assert dump(rclient, cache) == good
    assert rclient.hgetall(cache.keys.latest("dev-2")) == untouched
    assert not rclient.exists(cache.keys.latest("nobody"))


def test_devices_rebuild_names_a_device_the_log_lacks_and_does_not_count_it_as_rebuilt(
        app_env, store, capsys: pytest.CaptureFixture[str]) -> None:
    """``rebuild redis --devices dev-O`` (a typo: the letter O for the digit 0) found no such device in
    ``device_latest`` and still printed "rebuilt 1 devices", exit 0: the operator was told the repair was done
    while the device meant (``dev-0``) was never touched. An id the log has no device of is named, not counted,
    and the exit status is 1; the devices found are rebuilt as asked."""
    app_env()
    store.write(cf.spread(6, devices=2))  # dev-0 and dev-1

    code = main(["rebuild", "redis", "--devices", "dev-1", "dev-O", "--no-progress"])

    captured = capsys.readouterr()
    assert captured.out.startswith("rebuilt 1 devices, "), captured.out
    figures = json.loads(captured.out.strip().splitlines()[-1])
    assert (figures["devices"], figures["not_found"]) == (1, ["dev-O"]), figures
    assert "'dev-O'" in captured.err, captured.err
    assert code == 1


@pytest.mark.timeout(60)
def test_devices_rebuild_counts_a_device_named_twice_once(app_env, store, capsys: pytest.CaptureFixture[str]) -> None:
    """``rebuild redis --devices dev-1 dev-1`` (an id pasted twice, a shell list with repeats) rebuilt and counted
    each id once per mention: "rebuilt 2 devices" with one such device in the log, a missing id listed twice in
    ``not_found``, and the device cleared and rewritten twice. Each id is rebuilt, counted and listed once."""
    app_env()
    store.write(cf.spread(6, devices=2))  # dev-0 and dev-1

    code = main(["rebuild", "redis", "--devices", "dev-1", "dev-1", "nobody", "nobody", "--no-progress"])

    out = capsys.readouterr().out
    assert out.startswith("rebuilt 1 devices, "), out
    figures = json.loads(out.strip().splitlines()[-1])
    assert (figures["devices"], figures["not_found"]) == (1, ["nobody"]), out
    assert code == 1


def test_devices_rebuild_replaces_a_wrong_event_document_as_a_full_rebuild_does(
        session, keyspace, store, rclient, redis_prefix):
    """``rebuild redis --devices`` cleared only the device's latest state, critical set and member keys, then wrote
    each critical event's ``e:<event id>`` document back with ``fill_event``, a merge that keeps the copy enqueued
    later and, at equal times, the greater text: a wrong document a buggy release cached (same event, same
    enqueued time, a wrong field that sorts greater) was kept. The command said "rebuilt 1 devices" and exited 0,
    and ``GET /events/{id}`` kept serving the wrong copy until its TTL ran out, where a full rebuild (a new
    generation) fixes the same key. The documents of the device's latest event and of each event its keys name
    are deleted as well (none of them were in the full rebuild's dump: only lookups cache them)."""
    events = cf.spread(30, devices=3, critical_every=2)
    store.write(events)
    cache = cache_for(rclient, redis_prefix)
    rebuild(session, keyspace, cache)
    good = dump(rclient, cache)
    critical = next(e for e in events if e.body.device_id == "dev-0" and e.body.severity == "critical")
    key = cache.keys.event(critical.body.event_id)
    right = rclient.hget(key, "d")
    assert right is not None and b"dev-0" in right
    # a buggy release cached a wrong copy of the event: same event, same enqueued time, a wrong event_type; of two
    # copies with one enqueued time the merge keeps the greater text ("z..." > "t..."), i.e. the wrong one
    wrong = right.replace(b'"event_type":"telemetry"', b'"event_type":"zelemetry"')
    assert wrong != right
    rclient.hset(key, "d", wrong)
    latest = json.loads(rclient.hget(cache.keys.latest("dev-0"), "d"))
    cached_latest = cache.keys.event(latest["event_id"])
    # no document of it (the rebuild's notes only: it notes the device of each latest state it writes)
    assert latest["severity"] != "critical" and not rclient.hexists(cached_latest, "d")
    rclient.hset(cached_latest, "d", b'{"bogus":true}')  # a lookup cached the device's latest event, wrongly

    service = RebuildService(CassandraDeviceLog(session, keyspace), RedisCacheBuilder(cache, settle_seconds=0))
    report = service.rebuild_devices(["dev-0"])

    assert report.devices == 1
    assert rclient.hget(key, "d") == right, "GET /events/{id} still serves the wrong copy after --devices"
    assert dump(rclient, cache) == good


def test_devices_rebuild_lists_every_critical_event_the_log_holds_over_a_left_over_member_key(
        session, keyspace, store, rclient, redis_prefix):
    """``rebuild redis --devices`` deletes the device's member keys with its set, and ``fill_critical`` never
    skips an event for a member key whose copy the set does not hold: when Redis held a copy enqueued later than
    the log's (an older copy ingested again later, a dead letter replayed after the re-send), the rebuilt list,
    which claims to be complete, lists the event as a full rebuild of the same log does."""
    now = datetime.now(UTC).replace(microsecond=0)
    event_id = uuid.uuid4()
    at = now - timedelta(minutes=3)
    resent = cf.make_event("dev-r", at, severity="critical", measurements={"temperature": 50.0},
                           enqueued=now - timedelta(seconds=10), event_id=event_id)
    store.write([resent])
    cache = cache_for(rclient, redis_prefix)
    feed = cf.make_service("cosmos", session, keyspace, cache)
    feed.run()
    older = cf.make_event("dev-r", at, severity="critical", measurements={"temperature": 40.0},
                          enqueued=now - timedelta(minutes=2), event_id=event_id)
    store.write([older])  # the log now holds the older copy; Redis keeps the one enqueued later
    feed.run()
    log_ids = [str(e.event_id) for e in CassandraDeviceLog(session, keyspace).critical("dev-r", -(2**53))]
    assert log_ids == [str(event_id)]

    service = RebuildService(CassandraDeviceLog(session, keyspace), RedisCacheBuilder(cache, settle_seconds=0))
    service.rebuild_devices(["dev-r"])

    listed = lookups_for(cache).get_critical("dev-r", -(2**53), 100)
    assert listed is not None  # complete: the lookups answer from Redis
    assert [json.loads(d)["event_id"] for d in listed] == log_ids


def test_a_correction_that_makes_an_event_not_critical_is_not_put_back_as_critical(
        session, keyspace, store, rclient, redis_prefix):
    """An event stored as critical and then corrected (same id, same time, severity info) keeps its old row in
    ``critical_events_by_device``: ingest never deletes one. The device log served that row without checking the
    event's copy in ``events_by_id`` (the lookups' miss path does), so a rebuild listed the corrected event as
    critical again, full or ``--devices``."""
    now = datetime.now(UTC).replace(microsecond=0)
    event_id = uuid.uuid4()
    at = now - timedelta(minutes=3)
    store.write([cf.make_event("dev-u", at, severity="critical", enqueued=now - timedelta(minutes=2),
                               event_id=event_id)])
    store.write([cf.make_event("dev-u", at, severity="info", enqueued=now - timedelta(minutes=1),
                               event_id=event_id)])
    assert [critical for (critical,) in session.execute(
        f"SELECT critical FROM {keyspace}.critical_events_by_device WHERE device_id = 'dev-u'")] == [True]
    log = CassandraDeviceLog(session, keyspace)
    assert log.critical("dev-u", SINCE_ALL) == []

    cache = cache_for(rclient, redis_prefix)
    rebuild(session, keyspace, cache)
    assert lookups_for(cache).get_critical("dev-u", -(2**53), 100) == []
    RebuildService(log, RedisCacheBuilder(cache, settle_seconds=0)).rebuild_devices(["dev-u"])
    assert lookups_for(cache).get_critical("dev-u", -(2**53), 100) == []
    assert json.loads(lookups_for(cache).get_latest("dev-u").document)["severity"] == "info"


def _corrected_then_redelivered(store, device: str) -> tuple[Event, Event]:
    """A critical event of ``device`` corrected to another event time (same id, enqueued later), then the original
    delivered again (at-least-once; docs/enrichment.md: the older copy overwrites ``events_by_id``):
    ``critical_events_by_device`` holds both rows, ``events_by_id`` the older copy. Returns (original, correction)."""
    now = datetime.now(UTC).replace(microsecond=0)
    event_id = uuid.uuid4()
    original = cf.make_event(device, now - timedelta(minutes=30), severity="critical",
                             enqueued=now - timedelta(minutes=20), event_id=event_id)
    correction = cf.make_event(device, now - timedelta(minutes=10), severity="critical",
                               enqueued=now - timedelta(minutes=5), event_id=event_id)
    store.write([original])
    store.write([correction])
    store.write([original])  # delivered again after the correction
    return original, correction


def _listed(sink: RedisChangeSink, device: str) -> list[tuple[str, str]]:
    """The device's critical list as the lookups answer it from Redis: (event id, event time) of each member."""
    answered = lookups_for(sink).get_critical(device, -(2**53), 100)
    assert answered is not None, "a miss: the rebuild wrote no complete list"
    return [(d["event_id"], d["timestamp"]) for d in map(json.loads, answered)]


@pytest.mark.parametrize("kind", ["full", "devices"])
def test_a_correction_then_a_redelivered_original_keeps_the_event_in_the_rebuilt_critical_list(
        kind, session, keyspace, store, rclient, redis_prefix):
    """After a correction to another event time and then the original delivered again, ``events_by_id`` holds the
    older copy, which supersedes neither row (``current_copies``). The lookups' miss collapses rows of one id
    first (``one_copy_each``) and lists the correction, as the change feed's set holds it; the device log did not:
    both copies went to ``fill_event``, the older was refused, and the refusal (keyed by device and event id) took
    the correction too. The rebuilt list was written empty *with its #since sentinel*, so Redis answered "no
    critical events" for good, full or ``--devices``."""
    _, correction = _corrected_then_redelivered(store, "dev-r")
    assert [e.event_time for e in CassandraDeviceLog(session, keyspace).critical("dev-r", SINCE_ALL)] == \
        [correction.timestamp]

    sink = cache_for(rclient, redis_prefix)
    run_rebuild(RebuildService(CassandraDeviceLog(session, keyspace), RedisCacheBuilder(sink, settle_seconds=0)),
                kind, "dev-r")

    # one copy of the event, the one enqueued later (the copy the feed and a lookup's miss keep)
    assert _listed(sink, "dev-r") == [(str(correction.body.event_id), rfc3339(correction.timestamp))]


def test_a_refused_copy_does_not_take_another_copy_of_its_event_out_of_the_rebuilt_set(
        session, keyspace, store, rclient, redis_prefix):
    """``RedisCacheBuilder`` noted ``fill_event``'s refusals by device and event id, so given two copies of one id
    (as the device log gave them before it kept one copy each), refusing the older copy also left the accepted
    correction out of the set. A refusal is the copy's own."""
    _, correction = _corrected_then_redelivered(store, "dev-c")
    log = CassandraDeviceLog(session, keyspace)
    both = log.critical_rows("dev-c", SINCE_ALL)
    assert len(both) == 2  # the correction's row and the original's, as stored

    sink = cache_for(rclient, redis_prefix)
    RedisCacheBuilder(sink, settle_seconds=0).refresh("dev-c", None, both, SINCE_ALL)

    assert _listed(sink, "dev-c") == [(str(correction.body.event_id), rfc3339(correction.timestamp))]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["full", "devices"])
def test_critical_rows_written_without_the_flag_are_rebuilt_as_critical(
        kind, session, keyspace, store, rclient, redis_prefix):
    """A critical event whose rows carry no ``critical`` flag (NULL, as a writer without the column leaves them)
    gets the rules, as the change feed and replay decide it. The rebuild decided only each device's latest state:
    the critical rows went to Redis as read, and ``to_json`` writes a NULL flag as ``"critical": false``, so the
    device's list held the event as not critical and the dashboard's stream hid it."""
    now = datetime.now(UTC).replace(microsecond=0)
    device = f"noflag-{uuid.uuid4().hex[:8]}"
    event = cf.make_event(device, now - timedelta(minutes=3), severity="critical")
    newer = cf.make_event(device, now - timedelta(minutes=1))  # the device's latest: not critical
    store.write([event, newer])
    session.execute(f"DELETE critical FROM {keyspace}.events_by_id WHERE event_id = %s", (event.body.event_id,))
    session.execute(f"DELETE critical FROM {keyspace}.critical_events_by_device "
                    "WHERE device_id = %s AND event_time = %s AND event_id = %s",
                    (device, event.timestamp, event.body.event_id))
    sink = cache_for(rclient, redis_prefix)
    service = RebuildService(CassandraDeviceLog(session, keyspace), RedisCacheBuilder(sink, settle_seconds=0.0),
                             rules=cf.RULES)
    run_rebuild(service, kind, device)

    listed = [json.loads(d) for d in lookups_for(sink).get_critical(device, -(2**53), 100)]
    assert [(d["event_id"], d["critical"]) for d in listed] == [(str(event.body.event_id), True)]
    if kind == "full":
        recent = RedisCriticalStream(rclient, key_prefix=redis_prefix, stream_shards=sink.stream_shards).recent(10)
        assert str(event.body.event_id) in [d["event_id"] for d in recent]


def test_since_bounds_the_critical_lists_and_the_cache_says_so(session, keyspace, store, rclient, redis_prefix):
    events = cf.spread(40, devices=2, critical_every=2)
    store.write(events)
    cut = sorted(e.timestamp for e in events)[20]
    cache = cache_for(rclient, redis_prefix)
    builder = RedisCacheBuilder(cache, settle_seconds=0)
    RebuildService(CassandraDeviceLog(session, keyspace), builder).rebuild(since_ms=cf_ms(cut))
    _, critical = cf.expected_state(events)
    by_id = {str(e.event_id): e for e in events}
    for device, ids in critical.items():
        recent = [i for i in ids if by_id[i].timestamp >= cut]
        assert [json.loads(d)["event_id"] for d in lookups_for(cache).get_critical(device, cf_ms(cut), 100)] == recent
        assert (
            lookups_for(cache).get_critical(device, -(2**53), 100) is None
        )  # older ones: not known here, read Cassandra


def cf_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class _Killed(Exception):
    """Stands for a kill (Ctrl-C, OOM, a pod eviction) after the first saved page."""


@pytest.mark.parametrize(("first", "then"), [("2h", "30m"), ("2h", None), (None, "30m")],
                         ids=["since-changed", "since-dropped", "since-added"])
def test_a_rebuild_run_again_with_another_since_is_refused_naming_both(
    app_env, store, rclient, redis_prefix, capsys, first: str | None, then: str | None
):
    """``rebuild redis`` run again after a kill resumes the build in progress (``--restart`` is the way to start
    over). Run again with another ``--since`` (or without the one it started with) it cannot resume: it refuses,
    naming both values (exit 2), and the build in progress stays as it was, for a run with its own ``--since`` to
    resume. (It used to claim a new generation and drop the half-done one without a word.)"""
    now = datetime.now(UTC)
    app_env()
    store.write(cf.spread(60, devices=30, critical_every=3))
    since = {None: None, "2h": now - timedelta(hours=2), "30m": now - timedelta(minutes=30)}

    def kill(report, fraction: float) -> None:
        raise _Killed

    with pytest.raises(_Killed):
        bootstrap.rebuild_service(page_size=3).rebuild(
            since_ms=to_ms(since[first]) if first else SINCE_ALL, progress=kill)
    halfway = _pointer(rclient, redis_prefix)
    assert "building" in halfway and "position" in halfway

    code = main(["rebuild", "redis", "--no-progress", *(["--since", since[then].isoformat()] if then else [])])

    err = capsys.readouterr().err
    assert code == 2, err
    assert _pointer(rclient, redis_prefix) == halfway  # the build in progress is kept
    named = {key: "no --since" if at is None else f"--since {at.isoformat(timespec='milliseconds')}"
             for key, at in since.items()}
    assert named[first] in err and named[then] in err and "--restart" in err, err
    bootstrap.reset()


class AfterCriticalRead:
    """Our ``DeviceLog`` port over the real Cassandra one: right after the ``read``-th read of ``device``'s critical
    events (of any device's, with ``None``), ``during`` runs (a change reaching the log, and the change feed
    applying it, while the rebuild holds what it read and has not written it yet). A device rebuild reads them
    twice: the ids whose cached documents it deletes, then the state it writes."""

    def __init__(self, log: CassandraDeviceLog, device: str | None, during, *, read: int = 1) -> None:
        self._log, self._device, self._during, self._read, self._reads = log, device, during, read, 0

    @property
    def rows_read(self) -> int:
        return self._log.rows_read

    def devices(self, after: int | None, limit: int) -> list[DeviceRow]:
        return self._log.devices(after, limit)

    def device(self, device_id: str) -> DeviceRow | None:
        return self._log.device(device_id)

    def critical(self, device_id: str, since_ms: int) -> list[StoredEvent]:
        events = self._log.critical(device_id, since_ms)
        if self._device in (None, device_id):
            self._reads += 1
            if self._reads == self._read:
                self._during()
        return events


def _critical_ids(sink: RedisChangeSink, device: str) -> list[str] | None:
    """The device's critical list as the lookups answer it from Redis (``None``: a miss)."""
    answered = lookups_for(sink).get_critical(device, SINCE_ALL, 100)
    return None if answered is None else [json.loads(d)["event_id"] for d in answered]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["full", "devices"])
def test_a_correction_applied_by_the_feed_during_a_rebuild_does_not_leave_a_stale_critical_member(
        session, keyspace, store, rclient, redis_prefix, kind):
    """A critical event corrected to not critical while a rebuild runs, after the rebuild read the device's critical
    events and before it wrote them: the change feed applies the correction to the new generation (whose ``e:<id>``
    holds no critical copy yet, so ``fill_event`` notes no device to clean), then the rebuild adds the superseded
    critical copy to the device's set and marks it complete (``#since``). After the switch (or ``--devices``) the
    lookups list the corrected event as critical from Redis for the TTL, though the log (and the live generation
    before, and a quiet rebuild) says it has none. Expected: the rebuilt set holds no copy the log superseded."""
    now = datetime.now(UTC).replace(microsecond=0)
    device, event_id, at = f"dev-{uuid.uuid4().hex[:8]}", uuid.uuid4(), now - timedelta(minutes=5)
    store.write([cf.make_event(device, at, severity="critical", event_id=event_id,
                               enqueued=now - timedelta(minutes=4))])
    sink = cache_for(rclient, redis_prefix)
    feed = cf.make_service("cosmos", session, keyspace, sink)
    feed.run()
    assert _critical_ids(sink, device) is None  # the feed's set: completeness unknown (no bound yet)
    assert cf.critical_ids(rclient, sink, device) == [str(event_id)]

    def correction_arrives() -> None:
        store.write([cf.make_event(device, at, severity="info", event_id=event_id,
                                   enqueued=now - timedelta(minutes=3))])
        feed.run()  # to the live generation and, during a full rebuild, to the building one

    log = CassandraDeviceLog(session, keyspace)
    service = RebuildService(AfterCriticalRead(log, device, correction_arrives, read=1 if kind == "full" else 2),
                             RedisCacheBuilder(sink, settle_seconds=0.0))
    run_rebuild(service, kind, device)

    assert log.critical(device, SINCE_ALL) == []  # the log: no critical event of the device
    listed = _critical_ids(sink, device)
    assert listed is None or listed == [], (
        f"after the {kind} rebuild the lookups answer {listed} from Redis as the device's complete critical list: "
        f"the event was corrected to not critical")


@pytest.mark.timeout(60)
def test_a_rebuild_does_not_bring_back_for_a_full_ttl_what_the_feed_let_expire(
        session, keyspace, store, rclient, redis_prefix):
    """Every key the rebuild writes gets a fresh full ``SLUICE_REDIS_TTL_SECONDS`` whatever the age of the events it
    holds: a device whose events were enqueued two TTLs ago (its keys long expired under the feed) gets its latest
    state, its critical set and member keys, and an ``e:<id>`` document for *every* critical event in its history
    (beyond the per-device cap too, with no ``--since`` all of them) cached for another full TTL. After a rebuild
    Redis holds the whole fleet's history instead of the feed's working set (with ``noeviction`` the rebuild, and
    the change feed writing both generations, run into ``OOM``; with eviction the live keys are evicted). Expected,
    as the rebuild already does for its ``critical:seen`` markers: a key lives what the feed would have left it,
    ``TTL - (now - enqueued time)``, and is not written when that is over."""
    now = datetime.now(UTC).replace(microsecond=0)
    device = f"old-{uuid.uuid4().hex[:8]}"
    ttl = 3600
    events = [cf.make_event(device, now - timedelta(hours=3, seconds=i), severity="critical",
                            enqueued=now - timedelta(hours=2, seconds=i)) for i in range(5)]
    store.write(events)
    sink = cache_for(rclient, redis_prefix, critical_per_device_max=2)
    assert sink._ttl == ttl
    RebuildService(CassandraDeviceLog(session, keyspace), RedisCacheBuilder(sink, settle_seconds=0.0)).rebuild()

    keys = sink.keys
    written = {key: rclient.ttl(key) for key in [
        keys.latest(device), keys.critical(device),
        *(keys.member(device, e.body.event_id) for e in events),
        *(keys.event(e.body.event_id) for e in events)] if rclient.exists(key)}
    assert written == {}, (
        f"events enqueued 2 h ago with a {ttl} s TTL (the feed's keys expired an hour ago): the rebuild left "
        f"{len(written)} keys of them, with TTLs {sorted(set(written.values()))}")


@pytest.mark.timeout(60)
def test_a_rebuild_does_not_bring_back_a_critical_stream_the_feed_let_expire(
        session, keyspace, store, rclient, redis_prefix):
    """The feed's stream shard lives the TTL from its last append (``stream.lua``): critical events enqueued two
    hours ago, TTL one hour, left no shard under the feed, and one enqueued 20 minutes ago started a new shard of
    its own. The rebuild offered every critical event to the stream candidates whatever its age and gave the shard
    a fresh full TTL, so the dashboard showed those long-expired events for another hour. Expected: the shard gets
    what the feed would have left of its TTL (from its most recently enqueued event), holds no event that expired
    with an earlier shard, and is not written when nothing is left."""
    now = datetime.now(UTC).replace(microsecond=0)
    device = f"old-{uuid.uuid4().hex[:8]}"
    events = [cf.make_event(device, now - timedelta(hours=3, seconds=i), severity="critical",
                            enqueued=now - timedelta(hours=2, seconds=i)) for i in range(3)]
    sharded = cache_for(rclient, redis_prefix)
    recent = next(name for name in (f"recent-{uuid.uuid4().hex[:8]}" for _ in range(100))
                  if sharded.keys.shard(name) != sharded.keys.shard(device))
    events.append(cf.make_event(recent, now - timedelta(minutes=30), severity="critical",
                                enqueued=now - timedelta(minutes=20)))
    store.write(events)
    sink = cache_for(rclient, redis_prefix, stream_shards=1)
    assert sink._ttl == 3600
    rebuild(session, keyspace, sink)
    stream = sink.keys.stream(device)
    assert [fields[b"device_id"].decode() for _, fields in rclient.xrange(stream)] == [recent]
    assert 2300 < rclient.ttl(stream) <= 2400  # 40 minutes left: the feed appended 20 minutes ago

    delete_prefix(rclient, redis_prefix)
    rebuild(session, keyspace, sharded)  # the old device's shard alone
    stream = sharded.keys.stream(device)
    on_stream = [fields[b"event_id"].decode() for _, fields in rclient.xrange(stream)]
    assert on_stream == [], (
        f"events enqueued 2 h ago with a 1 h TTL are back on the rebuilt critical stream {stream} "
        f"(TTL {rclient.ttl(stream)} s): {on_stream}")


def _device_on_shard(keys, shard: int, stem: str) -> str:
    return next(f"{stem}-{i}" for i in range(1000) if keys.shard(f"{stem}-{i}") == shard)


@pytest.mark.timeout(60)
def test_a_rebuilt_stream_shard_keeps_its_newest_events_as_the_feeds_shard_does(
        session, keyspace, store, rclient, redis_prefix):
    """Each stream shard holds its own newest ``ceil(MAX / shards)`` critical events: the feed trims each shard on
    its own (``stream.lua``). With ``critical_stream_max=4`` and 2 shards, a busy device on shard 0 with 4 recent
    critical events and a quiet one on shard 1 with 2 older ones: the feed leaves the quiet device's 2 on shard 1.
    The rebuild capped its candidates fleet-wide to the newest 4 first (all shard 0's), then trimmed shard 0 to 2:
    shard 1 came out empty and the dashboard's ``recent(4)`` showed 2 events where the feed's stream shows 4."""
    sink = RedisChangeSink(rclient, key_prefix=redis_prefix, ttl_seconds=3600, critical_stream_max=4,
                           stream_shards=2, generation_cache_seconds=0.0)
    busy, quiet = _device_on_shard(sink.keys, 0, "busy"), _device_on_shard(sink.keys, 1, "quiet")
    now = datetime.now(UTC).replace(microsecond=0)
    events = [cf.make_event(quiet, now - timedelta(minutes=9, seconds=i), severity="critical",
                            enqueued=now - timedelta(minutes=9, seconds=i)) for i in range(2)]
    events += [cf.make_event(busy, now - timedelta(minutes=5, seconds=i), severity="critical",
                             enqueued=now - timedelta(minutes=5, seconds=i)) for i in range(4)]
    store.write(events)
    cf.make_service("cosmos", session, keyspace, sink).run()

    def shard_ids(shard: int) -> set[str]:
        return {fields[b"event_id"].decode() for _, fields in rclient.xrange(sink.keys.streams[shard])}

    def recent() -> list[str]:
        return [e["event_id"] for e in RedisCriticalStream(rclient, key_prefix=redis_prefix,
                                                           stream_shards=2).recent(4)]

    quiet_ids = {str(e.body.event_id) for e in events[:2]}
    assert shard_ids(1) == quiet_ids  # what the change feed leaves on the quiet device's shard
    live_recent = recent()

    delete_prefix(rclient, redis_prefix)
    rebuild(session, keyspace, sink)
    assert shard_ids(1) == quiet_ids, (
        f"the rebuilt shard 1 holds {shard_ids(1)}, the feed's held the quiet device's {quiet_ids}; "
        f"recent(4): feed {live_recent}, rebuild {recent()}")
    assert len(recent()) == 4


class _Timed:
    """Our ``DeviceLog`` port over the real Cassandra one, noting how many rows each call read and when (a fake
    clock: the token bucket's, so every wait the rate limit asks for passes at once)."""

    def __init__(self, log: CassandraDeviceLog, clock) -> None:
        self._log, self._clock, self.reads = log, clock, []

    @property
    def rows_read(self) -> int:
        return self._log.rows_read

    def _timed(self, call, *args):
        before = self._log.rows_read
        result = call(*args)
        self.reads.append((self._clock(), self._log.rows_read - before))
        return result

    def devices(self, after: int | None, limit: int) -> list[DeviceRow]:
        return self._timed(self._log.devices, after, limit)

    def device(self, device_id: str) -> DeviceRow | None:
        return self._timed(self._log.device, device_id)

    def critical(self, device_id: str, since_ms: int) -> list[StoredEvent]:
        return self._timed(self._log.critical, device_id, since_ms)


@pytest.mark.timeout(60)
def test_max_rps_bounds_the_rows_read_in_every_second_not_only_on_average(
        session, keyspace, store, rclient, redis_prefix):
    """``--max-rps N`` is "at most N Cassandra rows read per second" (docs/operations.md), so that a rebuild does not
    take the request units ingest needs; but the token bucket is charged only *after* each read, and a page of
    devices is one read of ``2 x --page-size`` rows (``device_latest`` and the latest events by id): with the
    default page of 200 and ``--max-rps 50`` every page reads 400 rows at once, 8 times the rate (and the bucket's
    one second of burst) within one second, then sleeps (here: pages of 100, ``--max-rps 50``: 200 rows at once).
    Cosmos DB throttles ingest in exactly those seconds. Expected: in any one-second window no more than the
    bucket's burst plus one second's worth (2 x N) rows."""
    now = datetime.now(UTC).replace(microsecond=0)
    store.write([cf.make_event(f"dev-{i:03d}", now - timedelta(seconds=i)) for i in range(200)])
    fake = {"now": 0.0}

    def clock() -> float:
        return fake["now"]

    def sleep(seconds: float) -> None:
        fake["now"] += seconds

    rate = 50
    log = _Timed(CassandraDeviceLog(session, keyspace), clock)
    service = RebuildService(log, RedisCacheBuilder(cache_for(rclient, redis_prefix), settle_seconds=0.0),
                             page_size=100, max_rps=rate, concurrency=1)
    service._limiter = TokenBucket(rate, clock=clock, sleep=sleep)
    report = service.rebuild()

    assert report.devices == 200 and sum(rows for _, rows in log.reads) == 400
    worst = max(sum(rows for at, rows in log.reads if start <= at < start + 1.0) for start, _ in log.reads)
    assert worst <= 2 * rate, (
        f"--max-rps {rate}: {worst} rows read within one second (reads at fake times: "
        f"{[(round(at, 2), rows) for at, rows in log.reads if rows]})")


class _CountingLatest:
    """``LatestStates`` over the real Cassandra reader, counting the devices the change feed asks it for."""

    def __init__(self, reader) -> None:
        self._reader, self.asked = reader, []

    def latest_found(self, device_ids):
        self.asked += list(device_ids)
        return self._reader.latest_found(device_ids)


@pytest.mark.timeout(60)
def test_while_a_rebuild_runs_the_change_feed_does_not_read_every_devices_latest_state_from_cassandra(
        session, keyspace, store, rclient, redis_prefix):
    """docs/redis-layout.md: double writes "cost only the change feed's writes twice while a rebuild runs". But the
    feed writes the building generation's latest state with ``present`` (only where the key exists), and there it
    is missing for every device the rebuild has not reached yet: each is reported as a lost key, and the feed reads
    its ``device_latest`` row and event from Cassandra (``apply_changes`` -> ``latest_found``) and sends a second
    pipeline, for every device of every page, for the whole rebuild (hours on a large fleet), on top of the
    rebuild's own rate-limited reads. Expected: a device whose key the live generation holds costs no read."""
    from shared.adapters.cassandra.reader import CassandraEventReader
    from shared.services.changefeed import apply_changes

    now = datetime.now(UTC).replace(microsecond=0)
    devices = [f"dev-{uuid.uuid4().hex[:6]}-{i}" for i in range(20)]
    first = [cf.make_event(d, now - timedelta(minutes=5)) for d in devices]
    store.write(first)
    sink = cache_for(rclient, redis_prefix)
    reader = CassandraEventReader(session, keyspace, timeout=5)

    def stored(events):  # the change feed's page: the stored rows of the events
        return [reader.event(e.body.event_id) for e in events]

    latest = _CountingLatest(reader)
    apply_changes(sink, stored(first), latest, list)  # a cold cache: every device read once, as documented
    latest.asked.clear()
    second = [cf.make_event(d, now - timedelta(minutes=4)) for d in devices]
    store.write(second)
    apply_changes(sink, stored(second), latest, list)
    assert latest.asked == []  # the keys are there: no read

    builder = RedisCacheBuilder(sink, settle_seconds=0.0)
    build = builder.begin(SINCE_ALL, resume=False)  # a rebuild starts
    third = [cf.make_event(d, now - timedelta(minutes=3)) for d in devices]
    store.write(third)
    apply_changes(sink, stored(third), latest, list)
    assert len(latest.asked) == 0, (
        f"one page of the change feed during a rebuild read the latest state of {len(latest.asked)} of its "
        f"{len(devices)} devices from Cassandra (none before the rebuild started)")
    builder.release(build.generation)  # no heartbeat left renewing after the test


class _StartTimed:
    """Our ``DeviceLog`` port over the real Cassandra one, noting when each read *starts* (the token bucket's fake
    clock) and how many rows it read (reads run on several threads: the log's counter would mix them)."""

    def __init__(self, log: CassandraDeviceLog, clock) -> None:
        self._log, self._clock, self.reads = log, clock, []
        self._lock = threading.Lock()

    @property
    def rows_read(self) -> int:
        return self._log.rows_read

    def _timed(self, call, *args):
        started = self._clock()
        result = call(*args)
        rows = len(result) * 2 if isinstance(result, list) else 2
        with self._lock:
            self.reads.append((started, rows))
        return result

    def devices(self, after, limit):
        return self._timed(self._log.devices, after, limit)

    def device(self, device_id):
        return self._timed(self._log.device, device_id)

    def critical(self, device_id, since_ms):
        return self._timed(self._log.critical, device_id, since_ms)


@pytest.mark.timeout(60)
def test_max_rps_bounds_the_rows_of_every_second_with_concurrent_critical_reads(
        session, keyspace, store, rclient, redis_prefix):
    """No second reads more than 2 x N rows (docs/operations.md, ``--max-rps``; only a device with more than N
    critical rows may go over). With ``--max-rps 50`` and 8 devices of 20 critical events each (40 rows a device:
    its critical rows and their copies by id, fewer than N), the critical reads of a page ran on 8 threads and each
    was charged only after it returned, so all 8 started at once with the bucket already emptied by the page: about
    370 rows were requested within the first second, 7x the rate. Each read now reserves a second's worth before
    it starts and gives back what it did not use."""
    now = datetime.now(UTC).replace(microsecond=0)
    events = [cf.make_event(f"crit-{d}", now - timedelta(minutes=5, seconds=i), severity="critical")
              for d in range(8) for i in range(20)]
    store.write(events)
    fake = {"now": 0.0}
    lock = threading.Lock()

    def clock() -> float:
        return fake["now"]

    def sleep(seconds: float) -> None:
        with lock:
            fake["now"] += seconds

    # A fake sleep returns at once, having moved the one clock on: between a thread's reservation and its read, other
    # threads' sleeps move it too (more often on a loaded machine), though no time passed for that thread. So a read
    # starts, in the simulation, when its thread's last payment to the bucket returned.
    paid = threading.local()

    class Bucket(TokenBucket):
        def acquire(self, units: float = 1.0) -> float:  # paid when called, due once the wait is over
            called = clock()
            waited = super().acquire(units)
            if units > 0:
                paid.at = called + waited
            return waited

        def reserve(self, units: float) -> float:  # returns the clock at the take minus when it was called
            called = clock()
            waited = super().reserve(units)
            paid.at = called + waited
            return waited

    rate = 50
    log = _StartTimed(CassandraDeviceLog(session, keyspace), lambda: getattr(paid, "at", clock()))
    service = RebuildService(log, RedisCacheBuilder(cache_for(rclient, redis_prefix), settle_seconds=0.0),
                             max_rps=rate)
    service._limiter = Bucket(rate, clock=clock, sleep=sleep)
    report = service.rebuild()

    assert report.devices == 8
    worst = max(sum(rows for at, rows in log.reads if start <= at < start + 1.0) for start, _ in log.reads)
    assert worst <= 2 * rate, (
        f"--max-rps {rate}: {worst} rows requested within one second (reads started at fake times: "
        f"{sorted((round(at, 2), rows) for at, rows in log.reads)})")


@pytest.mark.timeout(60)
def test_an_event_the_feed_applies_while_the_rebuild_holds_its_device_is_kept_as_latest(
        session, keyspace, store, rclient, redis_prefix):
    """An event the change feed applies after the rebuild read a device and before it wrote it: the building
    generation has no latest key for the device yet, and the feed reports only the live generation's misses. Were
    its building write sent with ``present`` (only where the key exists), it would be skipped unreported and the
    rebuild would then write the older state it read, served after the switch until the device sends again.
    Expected: the rebuilt latest state is the device's newest."""
    now = datetime.now(UTC).replace(microsecond=0)
    device = f"dev-{uuid.uuid4().hex[:8]}"
    store.write([cf.make_event(device, now - timedelta(minutes=5), severity="critical")])
    sink = cache_for(rclient, redis_prefix)
    feed = cf.make_service("cosmos", session, keyspace, sink)
    feed.run()
    newer = cf.make_event(device, now - timedelta(minutes=1))

    def newer_event_arrives() -> None:
        store.write([newer])
        feed.run()  # to the live generation and the building one

    log = CassandraDeviceLog(session, keyspace)
    RebuildService(AfterCriticalRead(log, device, newer_event_arrives),
                   RedisCacheBuilder(sink, settle_seconds=0.0)).rebuild()

    cached = lookups_for(sink).get_latest(device)
    assert cached is not None and cached.document is not None
    served = json.loads(cached.document)["event_id"]
    assert served == str(newer.body.event_id), (
        f"after the rebuild Redis serves {served} as the latest state of {device}; the log's newest is "
        f"{newer.body.event_id}, which the change feed applied during the rebuild")


def _moved_away(store, now: datetime) -> tuple[str, str, StoredEvent, uuid.UUID]:
    """Device ``old`` with a critical event and a newer one, which a correction then moved to device ``new``:
    ``old`` keeps its ``device_latest`` position and its alarm, but has no latest state."""
    old, new = f"dev-{uuid.uuid4().hex[:8]}", f"dev-{uuid.uuid4().hex[:8]}"
    alarm = cf.make_event(old, now - timedelta(minutes=8), severity="critical", enqueued=now - timedelta(minutes=7))
    moved_id = uuid.uuid4()
    store.write([alarm, cf.make_event(old, now - timedelta(minutes=5), event_id=moved_id,
                                      enqueued=now - timedelta(minutes=4))])
    store.write([cf.make_event(new, now - timedelta(minutes=5), event_id=moved_id,
                               enqueued=now - timedelta(seconds=2))])  # the correction: another device id
    return old, new, alarm.body, moved_id


def _stream_ids(rclient, cache: RedisChangeSink, limit: int = 50) -> list[str]:
    stream = RedisCriticalStream(rclient, key_prefix=cache.key_prefix, stream_shards=cache.stream_shards)
    return [doc["event_id"] for doc in stream.recent(limit)]


@pytest.mark.timeout(60)
def test_full_rebuild_keeps_the_critical_events_of_a_device_whose_newest_event_moved(
        session, keyspace, store, rclient, redis_prefix):
    """docs/redis-layout.md: a rebuild equals what the change feed writes; the rebuilt stream holds the candidates
    the feed's shard would still hold, with a marker per critical event. A device whose newest event a correction
    moved to another device has no latest state, and the full rebuild skipped the device altogether: its critical
    events vanished from the stream and got no marker (a replay would append them again). Expected: the device
    gets no latest state, but its critical list, stream entries and markers."""
    now = datetime.now(UTC).replace(microsecond=0)
    old, _, alarm, _ = _moved_away(store, now)
    cache = cache_for(rclient, redis_prefix)
    cf.make_service("cosmos", session, keyspace, cache).run()
    assert str(alarm.event_id) in _stream_ids(rclient, cache)  # the feed's stream lists the alarm

    rebuild(session, keyspace, cache)

    assert str(alarm.event_id) in _stream_ids(rclient, cache), "the rebuilt stream lost the old device's alarm"
    assert rclient.exists(cache.keys.seen(old, alarm.event_id)), "no stream marker: a replay would append it again"
    assert _critical_ids(cache, old) == [str(alarm.event_id)]
    assert cf.latest_doc(rclient, cache, old) is None


@pytest.mark.timeout(60)
def test_devices_rebuild_does_not_call_a_device_whose_newest_event_moved_no_device_of_the_log(
        session, keyspace, store, rclient, redis_prefix):
    """docs/operations.md: ``rebuild redis --devices`` exits 1 when "a --devices id is no device of the log". A
    device whose newest event a correction moved to another device still has its ``device_latest`` position and
    its other events, and the rebuild rewrote its critical list, yet it was listed as not found ("check the ids",
    exit 1) and not counted as rebuilt."""
    now = datetime.now(UTC).replace(microsecond=0)
    old, _, alarm, _ = _moved_away(store, now)
    cache = cache_for(rclient, redis_prefix)

    report = RebuildService(CassandraDeviceLog(session, keyspace),
                            RedisCacheBuilder(cache, settle_seconds=0.0)).rebuild_devices([old])

    assert _critical_ids(cache, old) == [str(alarm.event_id)]  # the device was rebuilt from the log ...
    assert report.not_found == [] and report.devices == 1  # ... so it is no unknown id
    assert cf.latest_doc(rclient, cache, old) is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("note", ["kept", "expired"])
def test_a_move_the_feed_applies_during_a_rebuild_does_not_leave_the_old_devices_latest_in_the_new_generation(
        session, keyspace, store, rclient, redis_prefix, note):
    """docs/redis-layout.md ("Why the result equals a quiet rebuild"): a change the feed applies after the rebuild
    wrote a device reaches the building generation through the same merges. A correction that moves a
    non-critical event to another device makes the feed drop the old device's latest state where ``e:<id>``
    notes the old device (field ``o``); the rebuild wrote the old device's state into the building generation
    without that note, so the state stayed there, and after the switch ``/latest`` served the moved copy although
    the store, and a quiet rebuild, have none. With the building generation's note gone (``expired``: it lives
    the stale marker seconds from the rebuild's write) the live generation's answer drops it there too."""
    from shared.adapters.cassandra.reader import CassandraEventReader

    now = datetime.now(UTC).replace(microsecond=0)
    old, new = f"dev-{uuid.uuid4().hex[:8]}", f"dev-{uuid.uuid4().hex[:8]}"
    moved_id = uuid.uuid4()
    store.write([cf.make_event(old, now - timedelta(minutes=5), event_id=moved_id,
                               enqueued=now - timedelta(seconds=3))]
                + [cf.make_event(f"dev-other-{i}", now - timedelta(minutes=6), enqueued=now - timedelta(minutes=6))
                   for i in range(4)])
    cache = cache_for(rclient, redis_prefix)
    feed = cf.make_service("cosmos", session, keyspace, cache)
    feed.run()
    assert cf.latest_doc(rclient, cache, old)["event_id"] == str(moved_id)
    corrected: list[int] = []

    def correction_arrives(report, fraction) -> None:
        building = cache.generations.read().building
        if corrected or not rclient.exists(cache.keys_of(building).latest(old)):
            return
        # the rebuild has written the old device: the correction now reaches the building generation via the feed
        if note == "expired":
            rclient.delete(cache.keys_of(building).event(moved_id))
        store.write([cf.make_event(new, now - timedelta(minutes=5), event_id=moved_id,
                                   enqueued=datetime.now(UTC) - timedelta(seconds=1))])
        feed.run()
        assert cf.latest_doc(rclient, cache, old) is None  # the live generation dropped it
        corrected.append(building)

    RebuildService(CassandraDeviceLog(session, keyspace), RedisCacheBuilder(cache, settle_seconds=0.0),
                   page_size=1).rebuild(progress=correction_arrives)
    assert corrected and cache.generations.read().live == corrected[0]

    assert CassandraEventReader(session, keyspace, timeout=5).latest(old) is None
    assert cf.latest_doc(rclient, cache, new)["event_id"] == str(moved_id)
    assert cf.latest_doc(rclient, cache, old) is None, "the rebuilt generation serves the moved copy as /latest"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["full", "devices"])
def test_a_move_the_feed_applies_while_the_rebuild_holds_the_old_device_does_not_leave_its_latest(
        session, keyspace, store, rclient, redis_prefix, kind):
    """The reverse order: the rebuild read the old device's latest state, the feed then applies the correction that
    moves the event to another device (nothing to drop yet where the rebuild writes), then the rebuild writes the
    state it read. Expected: the rebuild, which notes the event's device in ``e:<id>`` with the state, is told of
    the move there and drops the state, so the result equals a quiet rebuild."""
    now = datetime.now(UTC).replace(microsecond=0)
    old, new = f"dev-{uuid.uuid4().hex[:8]}", f"dev-{uuid.uuid4().hex[:8]}"
    moved_id = uuid.uuid4()
    store.write([cf.make_event(old, now - timedelta(minutes=5), event_id=moved_id,
                               enqueued=now - timedelta(seconds=3))])
    cache = cache_for(rclient, redis_prefix)
    feed = cf.make_service("cosmos", session, keyspace, cache)
    feed.run()

    def correction_arrives() -> None:
        store.write([cf.make_event(new, now - timedelta(minutes=5), event_id=moved_id,
                                   enqueued=datetime.now(UTC) - timedelta(seconds=1))])
        feed.run()

    log = CassandraDeviceLog(session, keyspace)
    service = RebuildService(AfterCriticalRead(log, old, correction_arrives, read=1 if kind == "full" else 2),
                             RedisCacheBuilder(cache, settle_seconds=0.0))
    run_rebuild(service, kind, old)

    assert log.device(old) is not None and log.device(old).latest is None  # type: ignore[union-attr]
    assert cf.latest_doc(rclient, cache, old) is None, f"after the {kind} rebuild Redis serves the moved copy"


class PausedAfterFirstPage:
    """The real device log; the second page read waits until ``release`` is set (a rebuild still running)."""

    def __init__(self, log: CassandraDeviceLog) -> None:
        self._log, self._pages = log, 0
        self.waiting, self.release = threading.Event(), threading.Event()

    @property
    def rows_read(self) -> int:
        return self._log.rows_read

    def devices(self, after: int | None, limit: int) -> list[DeviceRow]:
        self._pages += 1
        if self._pages == 2:
            self.waiting.set()
            self.release.wait(30)
        return self._log.devices(after, limit)

    def device(self, device_id: str) -> DeviceRow | None:
        return self._log.device(device_id)

    def critical(self, device_id: str, since_ms: int):
        return self._log.critical(device_id, since_ms)


def _rebuilding(service: RebuildService) -> tuple[threading.Thread, dict[str, object]]:
    """``service.rebuild()`` started on a thread of its own; its ``report``, or its ``error``, lands in the dict."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["report"] = service.rebuild()
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


@pytest.mark.timeout(90)
def test_a_second_rebuild_while_one_runs_is_refused_not_silently_joined(session, keyspace, store, rclient,
                                                                        redis_prefix):
    """Two ``rebuild redis`` at once (a retried Job while the first pod still runs, two operators): the second
    must not "resume" the running build's generation (both would read the rest of the log, twice the --max-rps
    budget, and whichever ended second would fail after writing into the live generation). It is refused up
    front, naming the running build, and the first one finishes."""
    store.write(cf.spread(40, devices=10, critical_every=3))
    sink = cache_for(rclient, redis_prefix)
    first_log = PausedAfterFirstPage(CassandraDeviceLog(session, keyspace))
    first = RebuildService(first_log, RedisCacheBuilder(sink, settle_seconds=0.0), page_size=3)
    thread, outcome = _rebuilding(first)
    try:
        assert first_log.waiting.wait(30), "the first rebuild never reached its second page"
        second = RebuildService(CassandraDeviceLog(session, keyspace),
                                RedisCacheBuilder(cache_for(rclient, redis_prefix), settle_seconds=0.0), page_size=3)
        refused: list[str] = []
        report = None
        for resume in (True, False):  # neither resuming it nor --restart takes a build another process runs
            try:
                report = second.rebuild(resume=resume)
            except ConfigurationError as exc:
                refused.append(str(exc))  # refused: what we expect
    finally:
        first_log.release.set()
        thread.join(60)
    assert report is None, (
        f"a second rebuild started while generation {report.generation} was being built was not refused: it "
        f"joined that build (resumed_from={report.resumed_from}) and switched to it; the first then failed with "
        f"{outcome.get('error')!r}")
    assert all("building generation" in message and "lease" in message for message in refused), refused
    assert "error" not in outcome, f"the first rebuild failed after the second was refused: {outcome['error']!r}"


class _MemoryLog:
    """An in-memory ``DeviceLog``: each device's latest event, and its critical events; from page ``fail_on_page``
    on, reading the devices times out (Cassandra gone mid-build)."""

    def __init__(self, critical: dict[str, list[StoredEvent]], *, fail_on_page: int | None = None) -> None:
        self._devices = sorted(critical.items())
        self._pages, self._fail_on_page = 0, fail_on_page
        self.rows_read = 0

    def devices(self, after: int | None, limit: int) -> list[DeviceRow]:
        self._pages += 1
        if self._fail_on_page is not None and self._pages >= self._fail_on_page:
            raise DependencyUnavailable("Cassandra", "reading the devices: timed out")
        start = 0 if after is None else after + 1
        rows = [DeviceRow(index, device, replace(events[0], critical=False, severity="info", event_id=uuid.uuid4()))
                for index, (device, events) in enumerate(self._devices) if index >= start][:limit]
        self.rows_read += 2 * len(rows)
        return rows

    def device(self, device_id: str) -> DeviceRow | None:
        return None

    def critical(self, device_id: str, since_ms: int) -> list[StoredEvent]:
        events = dict(self._devices)[device_id]
        self.rows_read += len(events)
        return list(events)


@pytest.mark.timeout(60)
def test_a_rebuild_whose_page_outlasts_its_lease_keeps_the_build_from_a_second_rebuild(rclient, redis_prefix):
    """A page's length is not bounded by the lease: with ``--max-rps N`` a device's critical rows are charged after
    they are read (the token bucket sleeps for the deficit), so one device of more than lease x N critical rows
    makes its page outlast the lease. A heartbeat renews the lease while the build runs, so a second rebuild
    started meanwhile is refused and the first finishes. (Renewed only with each saved position, the lease lapsed
    mid-page: the second took the build over, switched to it, and the first failed at its next step.)
    At scale: lease 1 s, --max-rps 10, one device of 30 critical rows, a page of about 3 s."""
    now = datetime.now(UTC)
    log = _MemoryLog({"dev-many": [_critical("dev-many", now - timedelta(minutes=i + 1)) for i in range(30)]})
    first = RebuildService(log, RedisCacheBuilder(cache_for(rclient, redis_prefix), settle_seconds=0.0,
                                                  lease_seconds=1.0), max_rps=10)
    heartbeats = {t for t in threading.enumerate() if t.name.startswith("rebuild-lease")}
    thread, outcome = _rebuilding(first)
    taken = None
    try:
        deadline = time.monotonic() + 10
        while rclient.hget(f"{redis_prefix}generation", "owner") is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(1.5)  # past the lease; the first rebuild is still in its first page (rate-limited)
        assert thread.is_alive()
        second = RebuildService(_MemoryLog({}), RedisCacheBuilder(cache_for(rclient, redis_prefix),
                                                                  settle_seconds=0.0, lease_seconds=1.0))
        with pytest.raises(ConfigurationError, match=r"building generation 1 .*lease"):
            taken = second.rebuild()
    finally:
        thread.join(30)
    assert taken is None and "error" not in outcome, outcome.get("error")
    assert not thread.is_alive() and outcome["report"].generation == 1  # type: ignore[attr-defined]
    assert {t for t in threading.enumerate() if t.name.startswith("rebuild-lease")} <= heartbeats, "one left running"


def test_a_rebuild_that_failed_gives_up_its_lease_so_running_it_again_resumes_at_once(rclient, redis_prefix):
    """A rebuild that fails (Cassandra times out mid-build; exit 2, "run it again") gives up its lease on the way
    out and keeps its position: the next run resumes the build at once rather than being refused for the lease's
    120 s as if another rebuild ran. (A killed rebuild cannot give it up: that one waits for the lease to lapse.)"""
    now = datetime.now(UTC)
    devices = {f"dev-{i}": [_critical(f"dev-{i}", now - timedelta(minutes=1))] for i in range(6)}
    heartbeats = {t for t in threading.enumerate() if t.name.startswith("rebuild-lease")}
    failing = RebuildService(_MemoryLog(devices, fail_on_page=2),
                             RedisCacheBuilder(cache_for(rclient, redis_prefix), settle_seconds=0.0), page_size=2)
    with pytest.raises(DependencyUnavailable, match="timed out"):
        failing.rebuild()
    pointer = _pointer(rclient, redis_prefix)
    assert (pointer.get("building"), pointer.get("position")) == ("1", "1") and "lease" not in pointer, pointer
    assert {t for t in threading.enumerate() if t.name.startswith("rebuild-lease")} <= heartbeats, "one left running"

    report = RebuildService(_MemoryLog(devices), RedisCacheBuilder(cache_for(rclient, redis_prefix),
                                                                   settle_seconds=0.0), page_size=2).rebuild()
    assert (report.generation, report.resumed_from, report.devices) == (1, 1, 4)


def _critical(device: str, at: datetime) -> StoredEvent:
    return StoredEvent(event_id=uuid.uuid4(), device_id=device, event_time=at, event_type="t", severity="critical",
                       critical=True, measurements={"v": 1.0}, enqueued_time=datetime.now(UTC))


def test_after_a_rebuild_a_newer_critical_event_is_not_shown_below_an_older_one_of_another_shard(
        rclient, redis_prefix):
    """The rebuilt stream's entry ids are event times. A critical event dated a few minutes ahead (a device clock
    ahead, within SLUICE_INGEST_MAX_FUTURE_SKEW_SECONDS) makes its shard's last id lie in the future, so every
    entry the feed appends there after the switch (``XADD *``) gets an id at that future time, and the dashboard,
    which merges the shards newest first by entry id, shows them above newer events of every other shard until the
    clock catches up. Expected: an event that is newer in event time and in arrival is shown first."""
    sink = RedisChangeSink(rclient, key_prefix=redis_prefix, ttl_seconds=600, stream_shards=4,
                           generation_cache_seconds=0)
    keys = sink.keys_of(0)
    devices = [f"dev-{uuid.uuid4().hex[:6]}" for _ in range(40)]
    dev_a = devices[0]
    dev_b = next(d for d in devices if keys.shard(d) != keys.shard(dev_a))
    now = datetime.now(UTC)
    ahead = _critical(dev_a, now + timedelta(minutes=4))  # accepted by ingest: within the 5 min future skew
    apply_changes(sink, [ahead], None, list)
    builder = RedisCacheBuilder(sink, settle_seconds=0)
    build = builder.begin(SINCE_ALL, resume=False)
    builder.write(build.generation, [ahead], {dev_a: [ahead]}, SINCE_ALL)
    builder.finish(build.generation)

    first = _critical(dev_a, datetime.now(UTC))  # the feed after the switch: an event of dev_a...
    apply_changes(sink, [first], None, list)
    time.sleep(0.01)
    later = _critical(dev_b, datetime.now(UTC))  # ...then a newer one of dev_b, on another shard
    apply_changes(sink, [later], None, list)

    shown = [e["event_id"] for e in RedisCriticalStream(rclient, key_prefix=redis_prefix, stream_shards=4).recent(10)]
    assert shown.index(str(later.event_id)) < shown.index(str(first.event_id)), (
        f"the dashboard shows {first.event_id} (older, arrived first) above {later.event_id}: entries appended to "
        f"the shard after the rebuild got ids at the future event time {ahead.event_time.isoformat()}")
