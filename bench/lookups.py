"""``python -m bench lookups``: latency of the lookup service (hits and misses, concurrency 1 and 32).

Starts a private Cassandra emulator, stores one latest state per device, and
measures ``LookupService.latest()`` against the machine's Redis:

* **hit**: the device's latest state is in Redis (one ``HMGET``);
* **miss**: nothing cached (the prefix is cleared before each block): Redis miss,
  single-flight, re-check, Cassandra read, fill with TTL + jitter.

Ours and the baseline alternate block by block, so load from other processes on
a shared machine hits both alike.

Each case also runs the raw clients doing the same work, as the baseline: a hit
is ``redis.hmget``; a miss is ``hmget`` + the prepared ``SELECT`` on
``device_latest`` + the same fill script. Targets on this machine: hit p99 <=
5 ms, miss p99 <= 20 ms. The last line ends with ``ratio <r>``: the geometric
mean over the four cases of raw p50 / our p50 (1.0 = no overhead over the
raw clients).
"""

from __future__ import annotations

import argparse
import math
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import redis

from shared.adapters.cassandra.event_store import CassandraEventStore
from shared.adapters.cassandra.migrations import apply_migrations
from shared.adapters.cassandra.reader import CassandraEventReader, stored_event
from shared.adapters.cassandra.session import connect
from shared.adapters.redis import RedisLookupCache, sort_key
from shared.domain.events import DeviceEvent, Event, EventMetadata
from shared.services.lookups import LookupService
from shared.settings import CassandraSettings
from sluice.launcher import python_module, start


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def timed_calls(call: Callable[[str], object], devices: list[str], concurrency: int) -> list[float]:
    """Latency in ms of ``call(device)`` for each device, spread over ``concurrency`` threads."""
    latencies: list[float] = []
    lock = threading.Lock()
    chunks = [devices[i::concurrency] for i in range(concurrency)]
    barrier = threading.Barrier(concurrency)

    def worker(chunk: list[str]) -> None:
        mine = []
        barrier.wait()
        for device in chunk:
            started = time.perf_counter()
            call(device)
            mine.append((time.perf_counter() - started) * 1000)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(chunk,)) for chunk in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def clear(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=prefix + "*", count=5000))
    for i in range(0, len(keys), 5000):
        client.unlink(*keys[i:i + 5000])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench lookups", description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=2000, help="calls per case")
    parser.add_argument("--blocks", type=int, default=8, help="ours and raw alternate over this many blocks per case")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--redis-cluster", action="store_true",
                        help="start a local Redis Cluster (3 masters, 3 replicas) and measure against it")
    args = parser.parse_args(argv)
    local_cluster = None
    if args.redis_cluster:
        import tempfile
        from pathlib import Path

        from sluice.redis_cluster import LocalRedisCluster

        local_cluster = LocalRedisCluster(Path(tempfile.mkdtemp(prefix="bench-redis-cluster-"))).start()
        args.redis_url = local_cluster.url

    emulator = start("cassandra-emulator", python_module("emulators.cassandra", "--host", "127.0.0.1", "--port", "0"),
                     timeout=60)
    if local_cluster is not None:
        from redis.cluster import RedisCluster

        client = RedisCluster.from_url(args.redis_url, socket_timeout=2)
    else:
        client = redis.Redis.from_url(args.redis_url, socket_timeout=2)
    prefix = f"bench-lookups:{uuid.uuid4().hex[:8]}:"
    ks = f"bench_{uuid.uuid4().hex[:8]}"
    settings = CassandraSettings(hosts=[emulator.host], port=emulator.port, keyspace=ks, consistency="ONE")
    session = connect(settings)
    try:
        apply_migrations(session, settings)
        now = datetime.now(UTC)
        devices = [f"device-{i:05d}" for i in range(args.devices)]
        events = [Event(DeviceEvent.model_validate(
            {"event_id": str(uuid.uuid4()), "device_id": d, "event_type": "telemetry",
             "timestamp": (now - timedelta(seconds=i)).isoformat(), "measurements": {"temperature": 21.5 + i % 7}},
            context={"now": now}), EventMetadata(enqueued_time=now)) for i, d in enumerate(devices)]
        store = CassandraEventStore(session, settings)
        for i in range(0, len(events), 500):
            store.write(events[i:i + 500])

        cache = RedisLookupCache(client, key_prefix=prefix)
        cache.load_scripts()
        reader = CassandraEventReader(session, ks, timeout=5)
        service = LookupService(cache, reader, cache_ttl=3600, ttl_jitter=300, negative_ttl=5)
        raw_select = session.prepare(f"SELECT event_id, device_id, event_time, event_type, severity, critical, "
                                     f"measurements, attributes, schema_version, enqueued_time FROM {ks}.device_latest "
                                     "WHERE device_id = ?")
        latest_sha = cache.sha["latest"]

        def raw_hit(device: str) -> None:
            client.hmget(f"{prefix}d:{{{device}}}:latest", "d", "k")

        def raw_miss(device: str) -> None:
            key = f"{prefix}d:{{{device}}}:latest"
            client.hmget(key, "d", "k")
            row = session.execute(raw_select, (device,)).one()
            event = stored_event(row)
            client.evalsha(latest_sha, 1, key, sort_key(event), event.to_json(), 3600)

        def ours(device: str) -> None:
            assert service.latest(device).found

        calls = (devices * (args.calls // len(devices) + 1))[:args.calls]
        results: dict[tuple[str, int, str], list[float]] = {}
        block = max(1, len(calls) // args.blocks)
        for concurrency in (1, 32):
            for kind in ("hit", "miss"):
                sides = [("ours", ours), ("raw", raw_miss if kind == "miss" else raw_hit)]
                for index, first in enumerate(range(0, len(calls), block)):  # ours and raw alternate block by block
                    chunk = calls[first:first + block]
                    for name, call in (sides if index % 2 == 0 else sides[::-1]):
                        clear(client, prefix)
                        if kind == "hit":
                            for d in set(chunk):  # warm: every device of the block cached
                                service.latest(d)
                        samples = timed_calls(call, chunk, concurrency)
                        results.setdefault((kind, concurrency, name), []).extend(samples)
                clear(client, prefix)

        print(f"lookups: LookupService.latest() over {args.devices:,} devices, {args.calls:,} calls per case; "
              f"Redis {args.redis_url.rsplit('@', 1)[-1]}, Cassandra emulator {emulator.address}")
        print(f"{'case':<12}{'who':<6}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'target p99':>12}")
        ratios = []
        verdicts = []
        for kind in ("hit", "miss"):
            target = 5.0 if kind == "hit" else 20.0
            for concurrency in (1, 32):
                p50s = {}
                for name in ("ours", "raw"):
                    samples = results[(kind, concurrency, name)]
                    p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
                    p50s[name] = p50
                    print(
                        f"{kind + ' c=' + str(concurrency):<12}{name:<6}{p50:>9.2f}{p99:>9.2f}"
                        f"{statistics.fmean(samples):>9.2f}"
                        f"{('<= ' + format(target, 'g')) if name == 'ours' else '':>12}"
                    )
                    if name == "ours":
                        verdicts.append(
                            f"{kind} c={concurrency} p99 {p99:.2f} ms {'ok' if p99 <= target else 'MISSED'}"
                        )
                ratios.append(p50s["raw"] / p50s["ours"])
        print("targets: " + "; ".join(verdicts))
        ratio = math.exp(statistics.fmean(math.log(r) for r in ratios))
        print(f"lookups raw/ours p50 latency, geometric mean of 4 cases: ratio {ratio:.2f}")
    finally:
        clear(client, prefix)
        client.close()
        session.cluster.shutdown()
        emulator.stop()
        if local_cluster is not None:
            local_cluster.stop()
    return 0
