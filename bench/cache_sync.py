"""``python -m bench cache_sync``: changed rows through ChangeFeedService into Redis vs the raw redis-py pipeline.

Both sides write the same 100,000 changed events (a share of them critical) to
the same Redis, in pages of the same size, with the same ``EVALSHA`` commands
(the sink's scripts), each side under a fresh key prefix:

* **ours**: ``ChangeFeedService.run()`` over an in-memory feed of the rows and an
  in-memory position store (Cassandra is not what is measured here), writing
  through ``RedisChangeSink``: deciding criticality, picking each device's newest
  event, encoding documents, one pipeline per page (and the second ones its replies
  call for), saving the position;
* **raw**: a hand-written loop that builds the same commands per page (same
  documents, same newest-per-device choice, ``latest`` only where the key exists)
  and sends them with ``redis.pipeline(transaction=False)``; then, as the change
  feed does, a second pipeline for what the replies call for: ``uncritical`` for a
  critical copy a correction took from its device, and ``latest`` creating the key
  of each device whose key was missing (on a fresh prefix, every device the first
  time it appears). It reads only the sink's script SHAs and key layout: deciding
  criticality, choosing the newest event, encoding documents and naming keys in
  ``RedisChangeSink`` is measured on our side alone.

The rows go through in slices (``--slices``, 20), ours and raw alternating slice by
slice (and which goes first), so load from other processes on a shared machine
hits both sides alike. Before them each side runs one untimed warm-up slice (the
first slice's rows, under a key prefix of its own), so neither pays for loading
scripts, opening connections or cold code in its first timed slice. Prints both
rates, the spread of the per-slice ratios, and ``ratio <raw time / our time>``
(target >= 0.8). ``--prebuilt`` also times the raw pipeline with every command
built before the clock starts (Redis time alone), for reference.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import redis

from bench._stats import percentile
from shared.adapters.redis import RedisChangeSink, sort_key
from shared.adapters.redis.base import Command
from shared.adapters.redis.change_sink import moves, superseded_here
from shared.adapters.redis.client import Client, as_text
from shared.domain.stored import StoredEvent
from shared.ports.feed import FeedPage, FeedPosition, SavedPosition
from shared.services.changefeed import ChangeFeedService

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class ListFeed:
    def __init__(self, events: list[StoredEvent], page_size: int) -> None:
        self.events, self.page_size = events, page_size

    def initial_position(self, now: datetime) -> FeedPosition:
        return FeedPosition(start_time=now, paging_state=b"0")

    def rewind(self, position: FeedPosition) -> FeedPosition:
        return position

    def read_page(self, position: FeedPosition, *, now: datetime, timeout: float) -> FeedPage:
        start = int(position.paging_state or b"0")
        page = self.events[start:start + self.page_size]
        return FeedPage(page, replace(position, paging_state=str(start + len(page)).encode()), caught_up=not page)


class MemoryPositions:
    def __init__(self) -> None:
        self.saved: SavedPosition | None = None

    def load(self, name: str) -> SavedPosition | None:
        return self.saved

    def save(self, name: str, position: FeedPosition, expected_version: int) -> int | None:
        self.saved = SavedPosition(position, expected_version + 1)
        return expected_version + 1


def make_events(count: int, devices: int, critical_share: float, seed: int = 7) -> list[StoredEvent]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        critical = rng.random() < critical_share
        out.append(StoredEvent(
            event_id=uuid.UUID(int=rng.getrandbits(128), version=4), device_id=f"device-{rng.randrange(devices):05d}",
            event_time=NOW - timedelta(milliseconds=rng.randrange(3_600_000)), event_type="telemetry",
            severity="critical" if critical else "info", critical=critical,
            measurements={"temperature": round(rng.uniform(10, 99), 2), "pressure": round(rng.uniform(0.9, 1.1), 3)},
            attributes={"site": f"site-{i % 17}", "firmware": "1.4.2"}, enqueued_time=NOW))
    return out


def run_ours(client: Client, prefix: str, events: list[StoredEvent], page_size: int, args: argparse.Namespace
             ) -> float:
    sink = RedisChangeSink(client, key_prefix=prefix, critical_per_device_max=args.per_device_max,
                      critical_stream_max=args.stream_max)
    sink.load_scripts()
    service = ChangeFeedService(ListFeed(events, page_size), sink, MemoryPositions(), feed_name="bench",
                                time_budget=3600, apply_chunk=page_size)
    started = time.perf_counter()
    result = service.run()
    elapsed = time.perf_counter() - started
    assert result.events == len(events), result
    return elapsed


class RawPage(NamedTuple):
    """A page's first pipeline as a hand-written sync builds it, and what it needs to read the replies."""

    commands: list[Command]
    fills: list[tuple[int, StoredEvent]]  # the place of each ``fill_event`` command, with its event
    latest: int  # how many ``latest`` commands end ``commands`` (one per device)


def raw_commands(cache: RedisChangeSink, page: list[StoredEvent], ttl: int, per_device: int,
                 stream: int) -> RawPage:
    """What a hand-written sync would send for a page: the sink's scripts and key layout, the same documents and
    newest-per-device choice, written out here (not ``RedisChangeSink.commands``: its cost is what ours measures).

    Keys are the live generation's: the bench's fresh prefixes have no rebuild running, so the sink writes to that
    one generation alone."""
    sha = cache.sha
    latest_sha, critical_sha, stream_sha, event_sha = sha["latest"], sha["critical"], sha["stream"], sha["fill_event"]
    prefix = cache.keys.prefix
    shards = cache.keys.stream_shards
    shard_max = -(-stream // shards)
    newest: dict[str, StoredEvent] = {}
    documents: dict[int, str] = {}  # by id(event): a critical event's document serves its latest too
    fills: list[tuple[int, StoredEvent]] = []
    commands: list[Command] = []
    for e in page:
        current = newest.get(e.device_id)
        if current is None or e.supersedes(current):
            newest[e.device_id] = e
        if e.critical:
            documents[id(e)] = document = e.to_json()
            tag = f"{prefix}d:{{{e.device_id}}}"
            shard = zlib.crc32(e.device_id.encode()) % shards
            commands.append((critical_sha, 2, f"{tag}:ce:{e.event_id}", f"{tag}:crit",
                             document, e.event_time_ms, ttl, per_device))
            commands.append((stream_sha, 2, f"{prefix}critical:stream:{{{shard}}}",
                             f"{prefix}critical:seen:{{{shard}}}:{e.event_id}",
                             ttl, shard_max, str(e.event_id), e.device_id, document))
            fills.append((len(commands), e))
            commands.append((event_sha, 1, f"{prefix}e:{e.event_id}", document, ttl, "feed", e.device_id,
                             e.enqueued_text()))
        else:  # drops a copy a lookup cached of an older send of this id, and notes this one's enqueued time
            fills.append((len(commands), e))
            commands.append((event_sha, 1, f"{prefix}e:{e.event_id}", e.enqueued_text(), "", "stale",
                             cache.stale_marker_seconds, e.device_id))
    for device, e in newest.items():  # "present": only where the key exists (a missing one is put below)
        commands.append((latest_sha, 1, f"{prefix}d:{{{device}}}:latest", sort_key(e),
                         documents.get(id(e)) or e.to_json(), ttl, "present"))
    return RawPage(commands, fills, len(newest))


def send(client: Client, commands: Sequence[Command]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command("EVALSHA", *command)
    replies: list[Any] = pipe.execute()
    return replies


def send_page(client: Client, cache: RedisChangeSink, page: RawPage) -> int:
    """``page`` as the change feed sends it, in plain redis-py pipelines; the number of commands sent.

    Its commands in one; then, where ``fill_event`` answered devices (a list of them, or 2: the event's own; a
    correction took a critical copy away from that device) or a time (a string: it refused this critical copy, a
    copy enqueued at that time superseded it), one of ``uncritical`` taking the copy out of each device's set, with
    the newest superseding copy's enqueued time (and, for a refused copy, ``fill_event`` in its ``stale`` mode with
    that time, which drops it by id where a generation stored it); then, where ``latest`` answered 0 (the key was
    missing), one putting that device's newest event of the page (the bench's change feed has no store to read a
    newer one from): the same ``latest`` without ``present``."""
    replies = send(client, page.commands)
    sent = len(page.commands)
    prefix = cache.keys.prefix
    leaving: dict[str, tuple[str, str]] = {}  # member key -> its set's key, the newest superseding enqueued time
    moved: dict[tuple[str, str], str] = {}  # (latest key, event id) -> the moved copy's enqueued time
    moved_from: set[str] = set()
    refused: dict[str, str] = {}  # e:<id> key -> the enqueued time of the copy that superseded a refused copy
    for at, e in page.fills:
        away, reply = moves(replies[at])  # {{device, time, ...}, reply}: moved
        for device, enqueued in away:
            target = (f"{prefix}d:{{{device}}}:latest", str(e.event_id))
            if target not in moved or moved[target] < enqueued:
                moved[target] = enqueued
            if superseded_here(device, enqueued, e):
                moved_from.add(device)
        if isinstance(reply, bytes | str):
            devices = [(e.device_id, as_text(reply))]
            key = f"{prefix}e:{e.event_id}"
            if key not in refused or refused[key] < as_text(reply):
                refused[key] = as_text(reply)
        else:
            own = e.enqueued_text()
            devices = ([(as_text(d), own) for d in reply] if isinstance(reply, list)
                       else [(e.device_id, own)] if reply == 2 else [])
        for device, enqueued in devices:
            member = f"{prefix}d:{{{device}}}:ce:{e.event_id}"
            if member not in leaving or leaving[member][1] < enqueued:
                leaving[member] = (f"{prefix}d:{{{device}}}:crit", enqueued)
    if leaving or moved:
        uncritical, unlatest = cache.sha["uncritical"], cache.sha["unlatest"]
        superseded: list[Command] = [(uncritical, 2, member, key, enqueued, cache.stale_marker_seconds)
                                     for member, (key, enqueued) in leaving.items()]
        superseded += [(unlatest, 1, key, event_id, enqueued) for (key, event_id), enqueued in moved.items()]
        superseded += [(cache.sha["fill_event"], 1, key, later, "", "stale", cache.stale_marker_seconds)
                       for key, later in refused.items()]
        sent += len(superseded)
        send(client, superseded)
    latest = page.commands[len(page.commands) - page.latest:]
    missing = [command[:-1] for command, reply in zip(latest, replies[len(replies) - page.latest:], strict=True)
               if reply == 0 and str(command[2]).removeprefix(f"{prefix}d:{{").removesuffix("}:latest")
               not in moved_from]
    if missing:
        sent += len(missing)
        send(client, missing)
    return sent


def run_raw(client: Client, prefix: str, events: list[StoredEvent], page_size: int, args: argparse.Namespace,
            prebuilt: bool = False) -> float:
    cache = RedisChangeSink(client, key_prefix=prefix)
    cache.load_scripts()
    # raw_commands writes the live generation alone, as the sink does while no rebuild runs (none does here)
    assert len(cache.write_keys()) == 1, f"a key generation is being built under {prefix!r}"
    ttl = 7 * 24 * 3600
    pages = [events[i:i + page_size] for i in range(0, len(events), page_size)]
    if prebuilt:
        built = [raw_commands(cache, page, ttl, args.per_device_max, args.stream_max) for page in pages]
        started = time.perf_counter()
        for raw in built:
            send_page(client, cache, raw)
        return time.perf_counter() - started
    started = time.perf_counter()
    for page in pages:
        send_page(client, cache, raw_commands(cache, page, ttl, args.per_device_max, args.stream_max))
    return time.perf_counter() - started


def cleanup(client: Client, prefix: str) -> None:
    batch = []
    for key in client.scan_iter(match=prefix + "*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench cache_sync", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=2_000)
    parser.add_argument("--critical-share", type=float, default=0.1)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--per-device-max", type=int, default=100)
    parser.add_argument("--stream-max", type=int, default=10_000)
    parser.add_argument("--slices", type=int, default=20,
                        help="the rows go through in this many slices, ours and raw alternating slice by slice, "
                             "so load from other processes hits both sides alike")
    parser.add_argument("--prebuilt", action="store_true", help="also time raw with commands built in advance")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--redis-cluster", action="store_true",
                        help="start a local Redis Cluster (3 masters, 3 replicas) and measure against it with "
                             "RedisCluster on both sides")
    args = parser.parse_args(argv)

    local_cluster = None
    client: Client
    if args.redis_cluster:
        import tempfile
        from pathlib import Path

        from redis.cluster import RedisCluster

        from sluice.redis_cluster import LocalRedisCluster

        local_cluster = LocalRedisCluster(Path(tempfile.mkdtemp(prefix="bench-redis-cluster-"))).start()
        args.redis_url = local_cluster.url
        client = RedisCluster.from_url(args.redis_url)
    else:
        client = redis.Redis.from_url(args.redis_url)
    client.ping()
    events = make_events(args.events, args.devices, args.critical_share)
    critical = sum(1 for e in events if e.critical)
    print(f"cache_sync: {len(events):,} changed rows, {args.devices:,} devices, {critical:,} critical, "
          f"pages of {args.page_size}, {args.slices} alternating slices, Redis {args.redis_url.rsplit('@', 1)[-1]}")
    run = uuid.uuid4().hex[:8]
    prefixes = {name: f"bench-cache-sync:{run}:{name}:" for name in ("ours", "raw", "prebuilt", "warm-up")}
    totals = {"ours": 0.0, "raw": 0.0, "prebuilt": 0.0}
    per_slice: list[float] = []
    step = -(-len(events) // args.slices)
    try:
        # One untimed slice per side first (scripts loaded, connections open, code warm), each under a prefix of
        # its own below the warm-up one: the timed slices still start from empty prefixes, as before.
        for name, runner in (("ours", run_ours), ("raw", run_raw)):
            runner(client, f"{prefixes['warm-up']}{name}:", events[:step], args.page_size, args)
        for index, start in enumerate(range(0, len(events), step)):
            chunk = events[start:start + step]
            sides = [("ours", run_ours), ("raw", run_raw)]
            if index % 2:
                sides.reverse()
            took = {}
            for name, runner in sides:
                took[name] = runner(client, prefixes[name], chunk, args.page_size, args)
                totals[name] += took[name]
            per_slice.append(took["raw"] / took["ours"])
            if args.prebuilt:
                totals["prebuilt"] += run_raw(client, prefixes["prebuilt"], chunk, args.page_size, args, prebuilt=True)
    finally:
        for prefix in prefixes.values():
            cleanup(client, prefix)
        client.close()
        if local_cluster is not None:
            local_cluster.stop()
    ours, raw = totals["ours"], totals["raw"]
    print(f"ours (ChangeFeedService -> RedisChangeSink): {len(events) / ours:>10,.0f} rows/s  ({ours:.2f}s)")
    print(f"raw  (redis-py pipelines, same commands): {len(events) / raw:>10,.0f} rows/s  ({raw:.2f}s)")
    if args.prebuilt:
        prebuilt = totals["prebuilt"]
        print(f"raw, commands prebuilt (Redis alone):    {len(events) / prebuilt:>10,.0f} rows/s  ({prebuilt:.2f}s; "
              f"ours/prebuilt {prebuilt / ours:.2f})")
    ordered = sorted(per_slice)
    print(f"per-slice raw/ours: min {ordered[0]:.2f}, median {percentile(ordered, 0.5):.2f}, max {ordered[-1]:.2f}")
    ratio = raw / ours
    print(f"cache_sync ours/raw throughput ratio {ratio:.2f} (target >= 0.8): ratio {ratio:.2f}")
    return 0
