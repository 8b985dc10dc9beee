"""``python -m bench rebuild``: events per second rebuilt into Redis from Cassandra.

Against a raw read plus pipelined writes.

Starts a private Cassandra emulator and stores ``--devices`` devices with
``--events`` events each (a share critical) through the real event store. Then,
against the machine's Redis, each under a fresh key prefix:

* **ours**: ``RebuildService.rebuild()`` with the real adapters (``CassandraDeviceLog``,
  ``RedisCacheBuilder``): a new generation, pages of devices, the idempotent
  scripts, the position saved per page, the stream candidates, the switch and the
  old generation's deletion; no rate limit, no settle wait;
* **raw**: the same reads with the driver alone (a paged scan of the devices'
  positions in ``device_latest``, their events from ``events_by_id`` 100 ids a
  request, each device's ``critical_events_by_device`` partition with the driver's
  ``execute_concurrent_with_args`` at the same concurrency, and the copies of the
  page's critical rows in ``events_by_id``, 100 ids a request, keeping one row of
  each event id and leaving out rows a correction superseded, as ours does) and
  plain pipelined writes of the same keys with the same TTLs (what the change feed
  would have left of each, from its event's enqueued time), no script, one pipeline
  per page: ``HSET`` + ``EXPIRE`` of each latest state; ``HSET`` + ``EXPIRE`` of
  each ``e:<id>`` (the owner note ``o`` and the note ``n`` ours leaves with a
  latest state, the document ``d`` of a critical event); ``SET ... EX`` of each
  critical event's member key ``d:{<device>}:ce:<id>``; ``SET ... NX PX`` of its
  stream marker ``critical:seen:{<shard>}:<id>``; ``ZADD`` + ``EXPIRE`` of every
  device's critical set with its ``#since:`` bound (a device without critical
  events too); then, after the last page, per stream shard its newest critical
  events, ``XADD`` with entry ids from the event time, ``MAXLEN ~`` the shard's
  cap, and ``EXPIRE``.

Ours and raw alternate over ``--rounds`` rounds (which goes first alternates), so
load from other processes hits both alike. After each run, before its prefix is
cleared, the keys it left are counted by kind (:func:`inventory`, not timed) and
checked against the figures the run implies (:func:`check`: per device a latest
state, a critical set and a note ``n``; per critical row a member key, a stream
marker, an ``e:<id>`` document, a set member and a stream entry; every key with a
TTL), and both sides' counts must be equal; one line prints them. Events counted:
rows read (one latest row per device plus every critical row). The last line is
``ratio <raw time / our time>`` (best round of each); target >= 0.7.
"""

from __future__ import annotations

import argparse
import random
import re
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import redis
from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent_with_args
from redis.typing import EncodableT

from shared.adapters.cassandra.device_log import CassandraDeviceLog
from shared.adapters.cassandra.event_store import CassandraEventStore
from shared.adapters.cassandra.migrations import apply_migrations
from shared.adapters.cassandra.reader import EVENT_SELECT, stored_event
from shared.adapters.cassandra.session import connect
from shared.adapters.redis import Keys, RedisChangeSink, sort_key
from shared.adapters.redis_rebuild import RedisCacheBuilder
from shared.domain.events import DeviceEvent, Event, EventMetadata
from shared.domain.stored import StoredEvent, one_copy_each
from shared.domain.times import to_ms
from shared.ports.cache import SINCE_ALL
from shared.services.rebuild import RebuildService
from shared.settings import CassandraSettings
from sluice.launcher import python_module, start

PAGE = 200
CONCURRENCY = 8
STREAM_MAX = 10_000
SHARDS = 8
SHARD_MAX = -(-STREAM_MAX // SHARDS)  # each stream shard keeps its own newest, as ours trims each
CAP = 100  # critical events a device's set keeps
TTL = 7 * 24 * 3600
# How long fill_event's note n lives at least (the sink's default is 30 s): longer here, so that the notes of the
# first pages are still there when the keys are counted after a slow run. It changes no command, only an argument.
MARKER = 600


def clear(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=prefix + "*", count=5000))
    for i in range(0, len(keys), 5000):
        client.unlink(*keys[i:i + 5000])


KINDS = {"latest": re.compile(r"d:\{[^}]*\}:latest"), "crit": re.compile(r"d:\{[^}]*\}:crit"),
         "ce": re.compile(r"d:\{[^}]*\}:ce:.+"), "e": re.compile(r"e:.+"),
         "seen": re.compile(r"critical:seen:\{\d+\}:.+"), "stream": re.compile(r"critical:stream:\{\d+\}")}


def inventory(client: redis.Redis, prefix: str) -> Counter[str]:
    """The keys a side left under ``prefix``, by kind (ours' are under its generation's ``g<n>:``; its generation
    pointer is left out), with what they hold: ``crit members`` (events, finite scores) and ``crit bounds`` (the
    ``#since:`` sentinel, score -inf), ``e n``/``e d`` (``e:<id>`` with its note ``n``/its document ``d``),
    ``stream entries``; ``no ttl``: keys that would never expire; ``other``: keys of no kind above."""
    found: Counter[str] = Counter()
    names = [name.decode() for name in client.scan_iter(match=prefix + "*", count=5000)]
    kinds = []
    for name in names:
        rest = re.sub(r"^g\d+:", "", name[len(prefix):])
        kinds.append(next((kind for kind, pattern in KINDS.items() if pattern.fullmatch(rest)),
                          "pointer" if rest == "generation" else "other"))
    for at in range(0, len(names), 5000):
        pipe = client.pipeline(transaction=False)
        chunk = list(zip(names[at:at + 5000], kinds[at:at + 5000], strict=True))
        for name, kind in chunk:
            pipe.ttl(name)
            if kind == "crit":
                pipe.zcount(name, "(-inf", "+inf")
                pipe.zcount(name, "-inf", "-inf")
            elif kind == "e":
                pipe.hexists(name, "n")
                pipe.hexists(name, "d")
            elif kind == "stream":
                pipe.xlen(name)
        replies = iter(pipe.execute())
        for _, kind in chunk:
            ttl = next(replies)
            if kind == "pointer":  # ours' generation pointer: no cache key
                continue
            found[kind] += 1
            found["no ttl"] += ttl < 0
            if kind == "crit":
                found["crit members"] += next(replies)
                found["crit bounds"] += next(replies)
            elif kind == "e":
                found["e n"] += next(replies)
                found["e d"] += next(replies)
            elif kind == "stream":
                found["stream entries"] += next(replies)
    return found


def check(written: Counter[str], devices: int, critical: int) -> None:
    """What a side wrote against the figures the run implies: per device a latest state, a critical set with its
    bound and the owner note ``n`` of its latest event; per critical row its member key, stream marker,
    ``e:<id>`` document, set member and stream entry; every key with a TTL."""
    expected = {"latest": devices, "crit": devices, "crit bounds": devices, "e n": devices,
                "ce": critical, "seen": critical, "e d": critical, "crit members": critical,
                "stream entries": min(critical, SHARDS * SHARD_MAX), "no ttl": 0, "other": 0}
    wrong = {kind: (written[kind], figure) for kind, figure in expected.items() if written[kind] != figure}
    assert not wrong, f"keys written (kind: (written, expected)): {wrong}"
    assert 0 < written["stream"] <= SHARDS if critical else written["stream"] == 0, written


def populate(session: Session, settings: CassandraSettings, devices: int, per_device: int,
             critical_share: float) -> None:
    rng = random.Random(11)
    now = datetime.now(UTC)
    events = []
    for d in range(devices):
        for _ in range(per_device):
            critical = rng.random() < critical_share
            events.append(Event(DeviceEvent.model_validate(
                {"event_id": str(uuid.uuid4()), "device_id": f"device-{d:05d}", "event_type": "telemetry",
                 "timestamp": (now - timedelta(seconds=rng.randrange(86_400))).isoformat(),
                 "severity": "critical" if critical else "info",
                 "measurements": {"temperature": round(rng.uniform(10, 80), 2)}},
                context={"now": now}), EventMetadata(enqueued_time=now)))
    store = CassandraEventStore(session, settings)
    for i in range(0, len(events), 500):
        store.write(events[i:i + 500])


def ours(client: redis.Redis, session: Session, ks: str, prefix: str) -> int:
    cache = RedisChangeSink(client, key_prefix=prefix, ttl_seconds=TTL, critical_per_device_max=CAP,
                            critical_stream_max=STREAM_MAX, stream_shards=SHARDS, stale_marker_seconds=MARKER)
    service = RebuildService(CassandraDeviceLog(session, ks), RedisCacheBuilder(cache, settle_seconds=0),
                             page_size=PAGE, concurrency=CONCURRENCY)
    return service.rebuild().events


def raw(client: redis.Redis, session: Session, ks: str, prefix: str) -> int:
    scan = session.prepare(f"SELECT event_id FROM {ks}.device_latest")
    scan.fetch_size = PAGE
    by_id = session.prepare(f"SELECT {EVENT_SELECT} FROM {ks}.events_by_id WHERE event_id IN ?")
    critical = session.prepare(f"SELECT {EVENT_SELECT} FROM {ks}.critical_events_by_device WHERE device_id = ?")
    keys = Keys(prefix, SHARDS)
    rows = 0
    # per stream shard: (event time, event id, device, document) of each critical event, and its latest enqueued time
    offered: dict[int, list[tuple[int, str, str, str]]] = {}
    renewed: dict[int, int] = {}
    positions: list[uuid.UUID] = []

    def flush(positions: list[uuid.UUID]) -> int:
        chunks = [(positions[i:i + 100],) for i in range(0, len(positions), 100)]
        page: list[StoredEvent] = []
        for ok, result in execute_concurrent_with_args(session, by_id, chunks, concurrency=4):
            assert ok, result
            page += [stored_event(row) for row in result]
        results = execute_concurrent_with_args(session, critical, [(e.device_id,) for e in page],
                                               concurrency=CONCURRENCY)
        listed: list[list[StoredEvent]] = []
        for ok, result in results:
            assert ok, result
            # one copy of each event id (a correction re-sent beside the row it corrects), as ours keeps
            listed.append(one_copy_each([stored_event(row) for row in result]))
        # the rows' copies in events_by_id, read once for the page: a row a correction superseded is left out
        ids = list({e.event_id for events in listed for e in events})
        copies: dict[uuid.UUID, StoredEvent] = {}
        for ok, result in execute_concurrent_with_args(session, by_id, [(ids[i:i + 100],)
                                                                        for i in range(0, len(ids), 100)],
                                                       concurrency=4):
            assert ok, result
            copies.update((row.event_id, stored_event(row)) for row in result)
        now_ms = int(time.time() * 1000)

        def remaining_ms(event: StoredEvent) -> int:  # what the change feed would have left of a key's TTL
            enqueued = to_ms(event.enqueued_time) if event.enqueued_time else event.event_time_ms
            return enqueued + TTL * 1000 - now_ms

        def left(event: StoredEvent) -> int:  # the same in seconds, at most the TTL (a clock ahead), as ours
            return min(TTL, remaining_ms(event) // 1000)

        pipe = client.pipeline(transaction=False)
        # e:<id>: its fields and TTL, one HSET and one EXPIRE each
        by_id_fields: dict[str, dict[EncodableT, EncodableT]] = {}
        by_id_ttl: dict[str, int] = {}
        count = len(page)
        for event, events in zip(page, listed, strict=True):
            device = event.device_id
            latest_left = left(event)
            if latest_left > 0:
                pipe.hset(keys.latest(device), mapping={"k": sort_key(event), "d": event.to_json()})
                pipe.expire(keys.latest(device), latest_left)
                # the owner note and enqueued note ours leaves with each latest state (fields o and n of e:<id>)
                enqueued = event.enqueued_text()
                by_id_fields.setdefault(keys.event(event.event_id), {}).update(
                    {"n": enqueued, "o": f"{enqueued} {device}"})
                by_id_ttl[keys.event(event.event_id)] = max(by_id_ttl.get(keys.event(event.event_id), 0), MARKER)
            current = []
            for e in events:
                copy = copies.get(e.event_id)
                if copy is None or copy.device_id != e.device_id or copy.event_time_ms != e.event_time_ms:
                    continue
                current.append(e)
                doc = e.to_json()
                shard = keys.shard(device)
                offered.setdefault(shard, []).append((e.event_time_ms, str(e.event_id), device, doc))
                enqueued_ms = to_ms(e.enqueued_time) if e.enqueued_time else e.event_time_ms
                renewed[shard] = max(renewed.get(shard, enqueued_ms), enqueued_ms)
                if remaining_ms(e) > 0:  # the stream marker, as the change feed would have left it
                    pipe.set(keys.seen(device, e.event_id), "1", nx=True, px=remaining_ms(e))
            count += len(current)
            newest_first = sorted(current, key=lambda e: e.event_time_ms, reverse=True)
            kept = newest_first[:CAP]
            covers = SINCE_ALL if len(newest_first) <= CAP else kept[-1].event_time_ms + 1
            set_left = max((left(e) for e in current), default=latest_left)
            if set_left <= 0:
                continue
            members: dict[str, float] = {f"#since:{covers}": float("-inf")}  # the set's completeness bound
            for e in kept:
                doc, member_left = e.to_json(), left(e)
                members[doc] = e.event_time_ms
                by_id_fields.setdefault(keys.event(e.event_id), {})["d"] = doc
                by_id_ttl[keys.event(e.event_id)] = max(by_id_ttl.get(keys.event(e.event_id), 0), member_left, MARKER)
                if member_left > 0:
                    pipe.set(keys.member(device, e.event_id), doc, ex=member_left)
            pipe.zadd(keys.critical(device), members)
            pipe.expire(keys.critical(device), set_left)
        for key, fields in by_id_fields.items():
            pipe.hset(key, mapping=fields)
            pipe.expire(key, by_id_ttl[key])
        pipe.execute()
        return count

    for row in session.execute(scan):
        positions.append(row.event_id)
        if len(positions) == PAGE:
            rows += flush(positions)
            positions = []
    if positions:
        rows += flush(positions)
    # each shard: its newest critical events, oldest first, entry ids from the event time, the shard's TTL as ours
    now_ms = int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    for shard, entries in offered.items():
        shard_left = min(TTL, (renewed[shard] + TTL * 1000 - now_ms) // 1000)
        if shard_left <= 0:
            continue
        stream = keys.streams[shard]
        for at, event_id, device, doc in sorted(entries)[-SHARD_MAX:]:
            pipe.xadd(stream, {"event_id": event_id, "device_id": device, "event": doc}, id=f"{max(at, 0)}-*",
                      maxlen=SHARD_MAX, approximate=True)
        pipe.expire(stream, shard_left)
    pipe.execute()
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench rebuild", description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--events", type=int, default=10, help="events per device")
    parser.add_argument("--critical-share", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)

    emulator = start("cassandra-emulator", python_module("emulators.cassandra", "--host", "127.0.0.1", "--port", "0"),
                     timeout=60)
    client = redis.Redis.from_url(args.redis_url, socket_timeout=5)
    base = f"bench-rebuild:{uuid.uuid4().hex[:8]}:"
    ks = f"bench_{uuid.uuid4().hex[:8]}"
    settings = CassandraSettings(
        hosts=[emulator.host], port=emulator.port, keyspace=ks, consistency="ONE")
    session = connect(settings)
    try:
        apply_migrations(session, settings)
        populate(session, settings, args.devices, args.events, args.critical_share)
        times: dict[str, list[float]] = {"ours": [], "raw": []}
        counts: dict[str, int] = {}
        written: dict[str, Counter[str]] = {}
        sides = [("ours", ours), ("raw", raw)]
        for round_ in range(args.rounds):
            for name, run in (sides if round_ % 2 == 0 else sides[::-1]):
                prefix = f"{base}{name}{round_}:"
                started = time.perf_counter()
                counts[name] = run(client, session, ks, prefix)
                times[name].append(time.perf_counter() - started)
                written[name] = inventory(client, prefix)  # before the prefix is cleared; not timed
                check(written[name], args.devices, counts[name] - args.devices)
                clear(client, prefix)
            assert counts["ours"] == counts["raw"], counts
            assert written["ours"] == written["raw"], written
        print(f"rebuild: {args.devices:,} devices, {counts['ours']:,} events read (latest + critical rows), "
              f"{args.rounds} rounds; Redis {args.redis_url.rsplit('@', 1)[-1]}, Cassandra emulator {emulator.address}")
        keys = written["ours"]
        print(f"keys each side wrote (all with a TTL): {keys['latest']:,} latest, {keys['crit']:,} crit "
              f"({keys['crit members']:,} members + {keys['crit bounds']:,} #since bounds), {keys['ce']:,} ce:<id>, "
              f"{keys['e']:,} e:<id> ({keys['e n']:,} with n, {keys['e d']:,} with d), {keys['seen']:,} "
              f"critical:seen, {keys['stream']:,} streams ({keys['stream entries']:,} entries)")
        for name in ("ours", "raw"):
            best = min(times[name])
            print(f"{name:<5} best {best:7.2f} s  {counts[name] / best:10,.0f} events/s  "
                  f"(rounds: {', '.join(f'{t:.2f}' for t in times[name])})")
        print(
            f"rebuild raw time / our time (best of {args.rounds}): ratio {min(times['raw']) / min(times['ours']):.2f}"
        )
    finally:
        clear(client, base)
        client.close()
        session.cluster.shutdown()
        emulator.stop()
    return 0
