"""``python -m bench lookups``: lookup latency, ours against threaded and asyncio raw clients, in one run.

Starts a private Cassandra emulator, stores one latest state per device, and
measures ``GET /api/devices/{id}/latest`` three ways, against the machine's Redis:

* **ours**: the app's own ``device_latest`` function (``function_app``), awaited
  on one event loop as the Python worker runs an ``async def`` function: request
  object, parameter parsing, the lookup service through ``shared.bootstrap``,
  ``redis.asyncio`` and the driver's futures, the ``func.HttpResponse``;
* **threads**: today's baseline, the blocking raw clients on one thread per
  concurrent request (redis-py ``HMGET``; on a miss also the driver's
  ``execute`` of the prepared ``SELECT`` of the device's position in
  ``device_latest``, then of its event in ``events_by_id``, and the fill script);
* **asyncio**: the same raw commands with ``redis.asyncio`` and the driver's
  ``execute_async`` awaited on the same loop, without any of our code;
* **socket** (hits only): the floor under any client library, :class:`BareSockets`:
  the ``HMGET`` packed by hiredis and written to a bare asyncio stream (one per call in flight)
  and the reply parsed by hiredis, on the same loop. It shows how much of a hit's
  latency is the machine (the round trip, the loop waking up) and how much the client.

A **hit** is one ``HMGET`` of a cached device; a **miss** finds nothing cached
(the prefix is cleared before each block): ``HMGET``, the Cassandra read, the
fill. Each case runs at concurrency 1 and 32; the sides alternate block by block,
so load from other processes on a shared machine hits all alike. Latency is
per call, from the start of the call to its answer, queueing included.

CHECKS (untimed, after each block): ours answered every call with 200, a body
naming the device asked for and ``X-Cache: hit`` in a hit block, ``miss`` (read
from Cassandra) in a miss block; every raw hit's ``HMGET`` found a document. The
timed calls only note their answers; a block that did other work stops the run.

WARM-UP: each block is set up (Redis cleared, the cache warmed for hits, a
garbage collection, threads started), and the first call after that set-up was
the slowest of the block on every side: at concurrency 1 those eight calls were
eight of the twenty that made the p99. So every thread or task first makes one untimed call of the
same kind for a device of its own (``warmup-NN``, stored like the others), and
the timed calls start together after it.

Targets: hit p99 at concurrency 32 at most 8 ms and at most half the threaded
raw client's; miss p99 at concurrency 32 at most half the threaded raw client's;
hit p99 at concurrency 1 at most 0.3 ms. The last line is ``ratio <threaded raw
hit p99 at c32 / ours>`` (target at least 2.0; issue #23), the line before it
``ratio vs raw asyncio <raw asyncio hit p99 at c32 / ours>``: the same work done by
the bare asyncio clients on the same loop, the closer comparison. Before them, the process CPU per
call of each side for hits at concurrency 1 (``time.process_time`` over the
timed blocks): on this machine a call's latency at concurrency 1 is mostly that
CPU, so it says where the 0.3 ms goes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import azure.functions as func
import hiredis
import redis
import redis.asyncio as aioredis
from redis.connection import parse_url

from bench._stats import percentile
from devhost.cpu_stats import CollectorAccount
from shared import bootstrap
from shared.adapters.cassandra.aio import rows
from shared.adapters.cassandra.event_store import CassandraEventStore
from shared.adapters.cassandra.migrations import apply_migrations
from shared.adapters.cassandra.reader import EVENT_SELECT, stored_event
from shared.adapters.cassandra.session import connect
from shared.adapters.redis import RedisLookupCache, sort_key
from shared.domain.events import DeviceEvent, Event, EventMetadata
from shared.settings import CassandraSettings
from sluice.launcher import python_module, start

if TYPE_CHECKING:
    from shared.adapters.redis.aio import AsyncClient
    from shared.adapters.redis.client import Client

ROOT = Path(__file__).resolve().parent.parent
SIDES = ("ours", "threads", "asyncio")
FLOOR = "socket"


class BareSockets:
    """``HMGET`` on bare asyncio streams, the reply parsed by hiredis: the floor under a client library.

    Only for a plain ``redis://`` URL without credentials (the machine's Redis); :meth:`supports`
    says whether a URL is one. A call takes an idle connection or opens one, and gives it back
    when answered: as many connections as calls were ever in flight at once.
    """

    def __init__(self, url: str) -> None:
        options = parse_url(url)  # type: ignore[no-untyped-call]  # not annotated in redis-py
        self._host, self._port, self._db = options["host"], options["port"], int(options.get("db", 0))
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0

    @staticmethod
    def supports(url: str) -> bool:
        options = parse_url(url)  # type: ignore[no-untyped-call]  # not annotated in redis-py
        return not ({"username", "password", "connection_class"} & options.keys())

    @staticmethod
    def command(*args: str) -> bytes:
        """``args`` as one RESP array of bulk strings (hiredis's own packer, in C)."""
        packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # hiredis.pyi: Tuple[X] for Tuple[X, ...]
        return packed

    async def _call(self, stream: tuple[asyncio.StreamReader, asyncio.StreamWriter], payload: bytes) -> Any:
        reader, writer = stream
        writer.write(payload)
        parser = hiredis.Reader()
        while (reply := parser.gets()) is False:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError(f"Redis {self._host}:{self._port} closed the connection")
            parser.feed(data)
        if isinstance(reply, hiredis.ReplyError):
            raise reply
        return reply

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        stream = await asyncio.open_connection(self._host, self._port)
        self.opened += 1
        if self._db:
            await self._call(stream, self.command("SELECT", str(self._db)))
        return stream

    async def hmget(self, key: str, *fields: str) -> list[bytes | None]:
        stream = self._idle.pop() if self._idle else await self._open()
        try:
            result: list[bytes | None] = await self._call(stream, self.command("HMGET", key, *fields))
        except BaseException:
            stream[1].close()
            raise
        self._idle.append(stream)
        return result

    async def close(self) -> None:
        while self._idle:
            _, writer = self._idle.pop()
            writer.close()
            await writer.wait_closed()


def threaded(call: Callable[[str], object], devices: list[str], concurrency: int,
             warmup: list[str] | None = None) -> list[float]:
    """Latency in ms of ``call(device)`` for each device, spread over ``concurrency`` threads.

    With ``warmup``, each thread first calls once, untimed, for its own device of that list.
    """
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency)

    def worker(chunk: list[str], spare: str | None) -> None:
        mine = []
        if spare is not None:
            call(spare)
        barrier.wait()
        for device in chunk:
            started = time.perf_counter()
            call(device)
            mine.append((time.perf_counter() - started) * 1000)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(devices[i::concurrency], warmup[i] if warmup else None))
               for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


async def concurrent(call: Callable[[str], Awaitable[object]], devices: list[str], concurrency: int,
                     warmup: list[str] | None = None) -> list[float]:
    """Latency in ms of ``await call(device)`` for each device, ``concurrency`` tasks on the running loop.

    With ``warmup``, each task first calls once, untimed, for its own device of that list, and the
    timed calls start when every task has.
    """
    latencies: list[float] = []
    barrier = asyncio.Barrier(concurrency)

    async def worker(chunk: list[str], spare: str | None) -> None:
        if spare is not None:
            await call(spare)
        await barrier.wait()
        for device in chunk:
            started = time.perf_counter()
            await call(device)
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(worker(devices[i::concurrency], warmup[i] if warmup else None)
                           for i in range(concurrency)))
    return latencies


def sides_of(kind: str, with_floor: bool) -> tuple[str, ...]:
    """The sides measured for ``kind``: the bare socket floor only for hits (a miss needs Cassandra too)."""
    return (*SIDES, FLOOR) if kind == "hit" and with_floor else SIDES


def clear(client: Client, prefix: str) -> None:
    """Delete the run's keys (on every master of a cluster: ``SCAN`` sees one server's keys)."""
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        primaries = client.get_primaries()  # type: ignore[no-untyped-call]  # not annotated in redis-py
        nodes = [client.get_redis_connection(n) for n in primaries]
    else:
        nodes = [client]
    for node in nodes:
        keys = list(node.scan_iter(match=prefix + "*", count=5000))
        for i in range(0, len(keys), 500):
            client.unlink(*keys[i:i + 500])


def configure(emulator_host: str, emulator_port: int, keyspace: str, redis_url: str, prefix: str, *,
              cluster: bool) -> None:
    """The app's settings (``local.settings.sample.json``, pointed at this run's stores), as the host sets them."""
    values = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    for name in [n for n in os.environ if n.startswith("SLUICE_")]:
        del os.environ[name]
    os.environ.update({k: v for k, v in values.items() if v != ""})
    os.environ.update({"SLUICE_CASSANDRA_HOSTS": emulator_host, "SLUICE_CASSANDRA_PORT": str(emulator_port),
                       "SLUICE_CASSANDRA_KEYSPACE": keyspace, "SLUICE_CASSANDRA_CONSISTENCY": "ONE",
                       "SLUICE_REDIS_URL": redis_url, "SLUICE_REDIS_KEY_PREFIX": prefix,
                       "SLUICE_REDIS_CLUSTER": str(cluster).lower(), "SLUICE_LOOKUP_CASSANDRA_TIMEOUT_SECONDS": "5"})
    bootstrap.reset()


class Collections:
    """The garbage collector's work within each timed block, and a clean start for every block.

    All three sides run in this process, so a young generation filled by one side's
    garbage (the threaded baseline's blocking ``execute`` leaves every request in a
    reference cycle) would be collected during whichever side runs next, and a pause of
    tens of milliseconds at concurrency 32 is the p99 of that side. So each block starts
    with a collection of its own (untimed), and the collections that still fall within a
    side's blocks are that side's, counted (by the dev host's :class:`CollectorAccount`)
    and printed.
    """

    def __init__(self) -> None:
        self.count: Counter[tuple[str, int, str]] = Counter()
        self.seconds: defaultdict[tuple[str, int, str], float] = defaultdict(float)
        self.cpu: defaultdict[tuple[str, int, str], float] = defaultdict(float)  # process CPU s in the timed blocks
        self._account = CollectorAccount()

    @contextmanager
    def block(self, key: tuple[str, int, str]) -> Iterator[None]:
        gc.collect()
        self._account.install()
        before = self._account.snapshot()
        cpu = time.process_time()
        try:
            yield
        finally:
            self.cpu[key] += time.process_time() - cpu
            after = self._account.snapshot()
            self._account.uninstall()
            for generation, figures in after.items():
                self.count[key] += int(figures["collections"] - before[generation]["collections"])
                self.seconds[key] += figures["seconds"] - before[generation]["seconds"]


def check_block(kind: str, side: str, called: list[str], answers: list[tuple[str, str | None, bytes]],
                empty: list[str]) -> None:
    """Raise unless ``side``'s block of ``kind`` did the work it is timed for, ``called`` being its devices.

    Ours: one answer per call, each naming the device asked for, ``X-Cache: hit`` in a hit block (served
    from Redis) and ``miss`` in a miss block (read from Cassandra, then cached); a block of distinct devices
    after the cache was cleared has no other answer. The raw clients' hits: every ``HMGET`` found a document.
    """
    if side == "ours":
        if sorted(device for device, _, _ in answers) != sorted(called):
            raise RuntimeError(f"ours answered {len(answers)} calls of {len(called)} in a {kind} block")
        wrong = Counter(cache for _, cache, _ in answers if cache != kind)
        if wrong:
            raise RuntimeError(f"ours in a {kind} block answered X-Cache {dict(wrong)}")
        for device, _, body in answers:
            named = json.loads(body).get("device_id")
            if named != device:
                raise RuntimeError(f"ours answered device {named!r} for {device!r}")
    elif empty:
        raise RuntimeError(f"{side}: HMGET found no document for {len(empty)} of {len(called)} cached devices "
                           f"({empty[0]}, ...) in a {kind} block")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench lookups", description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=2000, help="calls per case and side")
    parser.add_argument("--blocks", type=int, default=8, help="the sides alternate over this many blocks per case")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--redis-cluster", action="store_true",
                        help="start a local Redis Cluster (3 masters, 3 replicas) and measure against it")
    args = parser.parse_args(argv)
    if max(1, args.calls // args.blocks) > args.devices:  # a device twice in a miss block: a hit the second time
        parser.error(f"--calls / --blocks ({args.calls // args.blocks}) must not exceed --devices ({args.devices})")
    local_cluster = None
    if args.redis_cluster:
        import tempfile

        from sluice.redis_cluster import LocalRedisCluster

        local_cluster = LocalRedisCluster(Path(tempfile.mkdtemp(prefix="bench-redis-cluster-"))).start()
        args.redis_url = local_cluster.url

    emulator = start("cassandra-emulator", python_module("emulators.cassandra", "--host", "127.0.0.1", "--port", "0"),
                     timeout=60)
    if local_cluster is not None:
        from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
        from redis.cluster import RedisCluster

        client: Client = RedisCluster.from_url(args.redis_url, socket_timeout=2)
        aclient: AsyncClient = AsyncRedisCluster.from_url(args.redis_url, socket_timeout=2)
    else:
        client = redis.Redis.from_url(args.redis_url, socket_timeout=2)
        aclient = aioredis.Redis.from_url(args.redis_url, socket_timeout=2)
    # The floor needs one server and no credentials: the machine's own Redis, not a cluster.
    floor = BareSockets(args.redis_url) if local_cluster is None and BareSockets.supports(args.redis_url) else None
    prefix = f"bench-lookups:{uuid.uuid4().hex[:8]}:"
    ks = f"bench_{uuid.uuid4().hex[:8]}"
    settings = CassandraSettings(
        hosts=[emulator.host], port=emulator.port, keyspace=ks, consistency="ONE")
    session = connect(settings)
    loop = asyncio.new_event_loop()  # the worker's one loop: ours and the raw asyncio clients share it
    try:
        apply_migrations(session, settings)
        now = datetime.now(UTC)
        devices = [f"device-{i:05d}" for i in range(args.devices)]
        # One per thread or task: its untimed first call of every block (see WARM-UP in the docstring).
        spares = [f"warmup-{i:02d}" for i in range(32)]
        events = [Event(DeviceEvent.model_validate(
            {"event_id": str(uuid.uuid4()), "device_id": d, "event_type": "telemetry",
             "timestamp": (now - timedelta(seconds=i)).isoformat(), "measurements": {"temperature": 21.5 + i % 7}},
            context={"now": now}), EventMetadata(enqueued_time=now)) for i, d in enumerate(devices + spares)]
        store = CassandraEventStore(session, settings)
        for i in range(0, len(events), 500):
            store.write(events[i:i + 500])

        configure(emulator.host, emulator.port, ks, args.redis_url, prefix, cluster=local_cluster is not None)
        from function_app import app

        handler = next(f for f in app.get_functions() if f.get_function_name() == "device_latest").get_user_function()
        cache = RedisLookupCache(client, key_prefix=prefix)
        cache.load_scripts()
        latest_sha = cache.sha["latest"]
        # A latest state is the device's position in device_latest, then its event from events_by_id (reader.py).
        position = session.prepare(f"SELECT event_id FROM {ks}.device_latest WHERE device_id = ?")
        select = session.prepare(f"SELECT {EVENT_SELECT} FROM {ks}.events_by_id WHERE event_id = ?")

        # What each side answered in the block being timed, checked after it (see check_block): ours keeps its
        # answer (the X-Cache header, the body) and the raw hits note a device whose HMGET found no document, so
        # a broken path cannot print a good ratio, and the timed calls do no more than an append.
        answers: list[tuple[str, str | None, bytes]] = []
        empty: list[str] = []

        async def ours(device: str) -> None:
            request = func.HttpRequest("GET", f"http://localhost/api/devices/{device}/latest",
                                       route_params={"device_id": device}, body=b"")
            response = await handler(request)
            assert response.status_code == 200, response.get_body()
            answers.append((device, response.headers.get("X-Cache"), response.get_body()))

        def threads_hit(device: str) -> None:
            if not client.hmget(f"{prefix}d:{{{device}}}:latest", "d", "k")[0]:
                empty.append(device)

        def threads_miss(device: str) -> None:
            key = f"{prefix}d:{{{device}}}:latest"
            client.hmget(key, "d", "k")
            event = stored_event(session.execute(select, (session.execute(position, (device,)).one().event_id,)).one())
            client.evalsha(latest_sha, 1, key, sort_key(event), event.to_json(), 3600)

        async def asyncio_hit(device: str) -> None:
            if not (await aclient.hmget(f"{prefix}d:{{{device}}}:latest", "d", "k"))[0]:
                empty.append(device)

        async def socket_hit(device: str) -> None:
            assert floor is not None
            if not (await floor.hmget(f"{prefix}d:{{{device}}}:latest", "d", "k"))[0]:
                empty.append(device)

        async def asyncio_miss(device: str) -> None:
            key = f"{prefix}d:{{{device}}}:latest"
            await aclient.hmget(key, "d", "k")
            [newest] = await rows(session.execute_async(position, (device,)))
            event = stored_event((await rows(session.execute_async(select, (newest.event_id,))))[0])
            await aclient.evalsha(latest_sha, 1, key, sort_key(event), event.to_json(), 3600)

        loop.run_until_complete(ours(devices[0]))  # connect and prepare before measuring
        collections = Collections()
        calls = (devices * (args.calls // len(devices) + 1))[:args.calls]
        results: dict[tuple[str, int, str], list[float]] = {}
        block = max(1, len(calls) // args.blocks)
        for concurrency in (1, 32):
            for kind in ("hit", "miss"):
                def threads_run(chunk: list[str], c: int, k: str = kind) -> list[float]:
                    return threaded(threads_hit if k == "hit" else threads_miss, chunk, c, spares)

                def asyncio_run(chunk: list[str], c: int, k: str = kind) -> list[float]:
                    return loop.run_until_complete(
                        concurrent(asyncio_hit if k == "hit" else asyncio_miss, chunk, c, spares))

                runs: dict[str, Callable[[list[str], int], list[float]]] = {
                    "ours": lambda chunk, c: loop.run_until_complete(concurrent(ours, chunk, c, spares)),
                    "threads": threads_run,
                    "asyncio": asyncio_run,
                    FLOOR: lambda chunk, c: loop.run_until_complete(concurrent(socket_hit, chunk, c, spares))}
                sides = sides_of(kind, floor is not None)
                for index, first in enumerate(range(0, len(calls), block)):
                    chunk = calls[first:first + block]
                    turn = index % len(sides)
                    order = sides[turn:] + sides[:turn]  # each side goes first in turn
                    for name in order:
                        clear(client, prefix)
                        if kind == "hit":  # warm: every device of the block cached
                            loop.run_until_complete(concurrent(ours, sorted(set(chunk)) + spares, 32))
                        answers.clear()
                        empty.clear()
                        with collections.block((kind, concurrency, name)):
                            samples = runs[name](chunk, concurrency)
                        check_block(kind, name, chunk + spares[:concurrency], answers, empty)
                        results.setdefault((kind, concurrency, name), []).extend(samples)
                clear(client, prefix)

        redis_kind = "Redis Cluster" if local_cluster else "Redis"
        print(f"lookups: GET /api/devices/{{id}}/latest over {args.devices:,} devices, {args.calls:,} calls per case "
              f"and side; {redis_kind} {args.redis_url.rsplit('@', 1)[-1]}, Cassandra emulator {emulator.address}")
        print(f"{'case':<12}{'who':<9}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
        p99 = {}
        for kind in ("hit", "miss"):
            for concurrency in (1, 32):
                for name in sides_of(kind, floor is not None):
                    samples = results[(kind, concurrency, name)]
                    p99[(kind, concurrency, name)] = percentile(samples, 0.99)
                    print(
                        f"{kind + ' c=' + str(concurrency):<12}{name:<9}{percentile(samples, 0.5):>9.3f}"
                        f"{p99[(kind, concurrency, name)]:>9.3f}{statistics.fmean(samples):>9.3f}"
                    )
        print("garbage collections within the timed blocks (count, ms): " + "; ".join(
            f"{kind} c={c} " + ", ".join(f"{name} {collections.count[(kind, c, name)]} "
                                        f"{collections.seconds[(kind, c, name)] * 1000:.0f}"
                                        for name in sides_of(kind, floor is not None))
            for kind in ("hit", "miss") for c in (1, 32)))
        print("process CPU per call, hit c=1, us: " + ", ".join(
            f"{name} {collections.cpu[('hit', 1, name)] / len(results[('hit', 1, name)]) * 1e6:.0f}"
            for name in sides_of("hit", floor is not None))
            + ("" if floor is not None else f" ({FLOOR}: only against one Redis without credentials)"))
        checks = [
            ("hit c=32 p99 <= 8 ms", p99[("hit", 32, "ours")] <= 8.0),
            ("hit c=32 p99 <= threads/2", p99[("hit", 32, "ours")] <= p99[("hit", 32, "threads")] / 2),
            ("miss c=32 p99 <= threads/2", p99[("miss", 32, "ours")] <= p99[("miss", 32, "threads")] / 2),
            ("hit c=1 p99 <= 0.3 ms", p99[("hit", 1, "ours")] <= 0.3),
        ]
        print("targets: " + "; ".join(f"{what} {'ok' if ok else 'MISSED'}" for what, ok in checks))
        print(f"ratio vs raw asyncio {p99[('hit', 32, 'asyncio')] / p99[('hit', 32, 'ours')]:.2f}")
        print(f"ratio {p99[('hit', 32, 'threads')] / p99[('hit', 32, 'ours')]:.2f}")
    finally:
        clear(client, prefix)
        client.close()
        loop.run_until_complete(aclient.aclose())
        if floor is not None:
            loop.run_until_complete(floor.close())
        bootstrap.reset()
        loop.close()
        session.cluster.shutdown()
        emulator.stop()
        if local_cluster is not None:
            local_cluster.stop()
    return 0
