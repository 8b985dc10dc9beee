"""``bench rebuild``: its raw side writes the keys the rebuild writes.

Against the shared Cassandra emulator and the machine's real Redis: a baseline that wrote fewer keys (no member
keys, no stream markers, no TTLs) than ``RebuildService`` for the same log would print a ratio of different work.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from bench import rebuild
from shared.adapters.cassandra.migrations import apply_migrations
from shared.adapters.cassandra.session import connect
from shared.settings import CassandraSettings
from sluice.launcher import Running


@pytest.fixture
def bench_log(cassandra_emulator: Running) -> Iterator[tuple[Any, str]]:
    """A session on a fresh keyspace holding 30 devices of 5 events each, a share critical, as the bench stores."""
    settings = CassandraSettings(hosts=[cassandra_emulator.host], port=cassandra_emulator.port,
                                 keyspace=f"bench_{uuid.uuid4().hex[:8]}", consistency="ONE")
    session = connect(settings)
    try:
        apply_migrations(session, settings)
        rebuild.populate(session, settings, 30, 5, 0.3)
        yield session, settings.keyspace
    finally:
        session.cluster.shutdown()


def _dump(client: redis.Redis, prefix: str) -> dict[str, tuple[str, object, int]]:
    """Every key under ``prefix`` (ours' generation ``g<n>:`` taken out, its generation pointer left out): its type,
    what it holds, its TTL."""
    keys: dict[str, tuple[str, object, int]] = {}
    for raw_name in client.scan_iter(match=prefix + "*", count=1000):
        name = raw_name.decode()
        rest = re.sub(r"^g\d+:", "", name[len(prefix):])
        if rest == "generation":
            continue
        kind = client.type(name).decode()
        value: object
        if kind == "hash":
            value = client.hgetall(name)
        elif kind == "string":
            value = client.get(name)
        elif kind == "zset":
            value = client.zrange(name, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(name)
        else:
            value = kind
        keys[rest] = (kind, value, client.ttl(name))
    return keys


def test_the_raw_side_writes_the_keys_ours_writes_with_their_ttls(
        bench_log: tuple[Any, str], redis_url: str, redis_prefix: str) -> None:
    """The raw side wrote 817 keys where ours wrote 1,453 on 200 devices: no TTL on any, no member keys
    (``ce:<id>``), no stream markers (``critical:seen``), no note ``n`` in ``e:<id>``, no critical set (nor its
    ``#since:`` bound) for a device without critical events, and its stream untrimmed per shard. Now both leave
    the same keys, holding the same, each with a TTL (the same within a few seconds), and the bench's own count
    of them agrees."""
    session, keyspace = bench_log
    client = redis.Redis.from_url(redis_url)
    try:
        counts = {side: run(client, session, keyspace, f"{redis_prefix}{side}:")
                  for side, run in (("ours", rebuild.ours), ("raw", rebuild.raw))}
        dumps = {side: _dump(client, f"{redis_prefix}{side}:") for side in counts}
        assert counts["ours"] == counts["raw"]
        ours, raw = dumps["ours"], dumps["raw"]
        assert sorted(raw) == sorted(ours)
        assert {name: (kind, value) for name, (kind, value, _) in raw.items()} == {
            name: (kind, value) for name, (kind, value, _) in ours.items()}
        assert all(ttl > 0 for _, _, ttl in [*ours.values(), *raw.values()])
        assert {name for name in ours if abs(ours[name][2] - raw[name][2]) > 5} == set()
        written = {side: rebuild.inventory(client, f"{redis_prefix}{side}:") for side in counts}
    finally:
        client.close()
    assert written["ours"] == written["raw"]
    rebuild.check(written["raw"], 30, counts["raw"] - 30)
    assert written["raw"]["latest"] == 30 and written["raw"]["crit"] == 30 and written["raw"]["seen"] > 0
