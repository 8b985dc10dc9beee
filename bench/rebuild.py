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
  plain pipelined writes of the same keys (``HSET`` latest, its event's owner note and the critical
  events, ``ZADD`` the critical sets, ``XADD`` the newest critical events to the
  stream), one pipeline per page.

Ours and raw alternate over ``--rounds`` rounds (which goes first alternates), so
load from other processes hits both alike. Events counted: rows read (one latest
row per device plus every critical row). The last line is ``ratio <raw time /
our time>`` (best round of each); target >= 0.7.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import redis
from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent_with_args

from shared.adapters.cassandra.device_log import CassandraDeviceLog
from shared.adapters.cassandra.event_store import CassandraEventStore
from shared.adapters.cassandra.migrations import apply_migrations
from shared.adapters.cassandra.reader import EVENT_SELECT, stored_event
from shared.adapters.cassandra.session import connect
from shared.adapters.redis import Keys, RedisChangeSink, sort_key
from shared.adapters.redis_rebuild import RedisCacheBuilder
from shared.domain.events import DeviceEvent, Event, EventMetadata
from shared.domain.stored import StoredEvent, one_copy_each
from shared.services.rebuild import RebuildService
from shared.settings import CassandraSettings
from sluice.launcher import python_module, start

PAGE = 200
CONCURRENCY = 8
STREAM_MAX = 10_000


def clear(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=prefix + "*", count=5000))
    for i in range(0, len(keys), 5000):
        client.unlink(*keys[i:i + 5000])


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
    cache = RedisChangeSink(client, key_prefix=prefix, critical_stream_max=STREAM_MAX)
    service = RebuildService(CassandraDeviceLog(session, ks), RedisCacheBuilder(cache, settle_seconds=0),
                             page_size=PAGE, concurrency=CONCURRENCY)
    return service.rebuild().events


def raw(client: redis.Redis, session: Session, ks: str, prefix: str) -> int:
    scan = session.prepare(f"SELECT event_id FROM {ks}.device_latest")
    scan.fetch_size = PAGE
    by_id = session.prepare(f"SELECT {EVENT_SELECT} FROM {ks}.events_by_id WHERE event_id IN ?")
    critical = session.prepare(f"SELECT {EVENT_SELECT} FROM {ks}.critical_events_by_device WHERE device_id = ?")
    rows = 0
    newest: list[tuple[int, str, str, str]] = []
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
        pipe = client.pipeline(transaction=False)
        count = len(page)
        for event, events in zip(page, listed, strict=True):
            pipe.hset(f"{prefix}d:{{{event.device_id}}}:latest", mapping={"k": sort_key(event), "d": event.to_json()})
            # the owner note ours leaves with each latest state (field o of e:<id>), so a later move drops it
            pipe.hset(f"{prefix}e:{event.event_id}", "o", f"{event.enqueued_text()} {event.device_id}")
            docs = {}
            for e in events:
                copy = copies.get(e.event_id)
                if copy is None or copy.device_id != e.device_id or copy.event_time_ms != e.event_time_ms:
                    continue
                doc = e.to_json()
                docs[doc] = e.event_time_ms
                pipe.hset(f"{prefix}e:{e.event_id}", "d", doc)
                newest.append((e.event_time_ms, doc, str(e.event_id), e.device_id))
            if docs:
                pipe.zadd(f"{prefix}d:{{{event.device_id}}}:crit", docs)
            count += len(docs)
        pipe.execute()
        return count

    for row in session.execute(scan):
        positions.append(row.event_id)
        if len(positions) == PAGE:
            rows += flush(positions)
            positions = []
    if positions:
        rows += flush(positions)
    newest.sort()
    pipe = client.pipeline(transaction=False)
    for _, doc, event_id, device in newest[-STREAM_MAX:]:
        pipe.xadd(Keys(prefix).stream(device), {"event_id": event_id, "device_id": device, "event": doc})
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
        sides = [("ours", ours), ("raw", raw)]
        for round_ in range(args.rounds):
            for name, run in (sides if round_ % 2 == 0 else sides[::-1]):
                prefix = f"{base}{name}{round_}:"
                started = time.perf_counter()
                counts[name] = run(client, session, ks, prefix)
                times[name].append(time.perf_counter() - started)
                clear(client, prefix)
        assert counts["ours"] == counts["raw"], counts
        print(f"rebuild: {args.devices:,} devices, {counts['ours']:,} events read (latest + critical rows), "
              f"{args.rounds} rounds; Redis {args.redis_url.rsplit('@', 1)[-1]}, Cassandra emulator {emulator.address}")
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
