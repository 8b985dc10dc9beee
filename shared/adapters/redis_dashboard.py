"""Redis reads of the operations page: the fleet-wide critical stream and the cache's hit rate.

Kept apart from the change sink and the lookup cache (``shared.adapters.redis``):
these are read-only. ``RedisCriticalStream.recent`` reads the live generation's
critical stream, which is sharded (``critical:stream:{<shard>}``, one slot each):
one ``XREVRANGE ... COUNT n`` per shard in one pipeline, merged newest first by
entry id. ``RedisCacheStats.hit_rate`` reads ``INFO stats`` (``keyspace_hits``
and ``keyspace_misses``: summed over every node of a cluster, since their
statistics were last reset). Every Redis failure raises ``DependencyUnavailable("redis", ...)``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from redis.cluster import RedisCluster

from shared.adapters.redis import Keys, RedisConnection, RedisGenerations, generation_prefix
from shared.adapters.redis.client import Client, calling

logger = logging.getLogger(__name__)


def _entry_order(entry_id: bytes) -> tuple[int, int]:
    millis, _, seq = entry_id.decode().partition("-")
    return int(millis), int(seq or 0)


class RedisCriticalStream:
    """Implements ``shared.ports.dashboard.CriticalStream``."""

    def __init__(self, connection: RedisConnection | Client, *, key_prefix: str = "sluice:",
                 stream_shards: int = 8) -> None:
        self._connection = connection if isinstance(connection, RedisConnection) else RedisConnection.of(connection)
        self._generations = RedisGenerations(self._connection, key_prefix)  # the stream of the live generation
        self._shards = stream_shards

    def _streams(self) -> list[str]:
        live = self._generations.current().live
        return Keys(generation_prefix(self._generations.prefix, live), self._shards).streams

    def recent(self, limit: int) -> list[dict[str, Any]]:
        with calling("reading the critical stream"):
            streams = self._streams()
            pipe = self._connection.client().pipeline(transaction=False)
            for key in streams:
                pipe.xrevrange(key, "+", "-", count=limit)
            per_shard = pipe.execute(raise_on_error=True)
        entries = sorted((entry for shard in per_shard for entry in shard),
                         key=lambda entry: _entry_order(entry[0]), reverse=True)[:limit]
        events = []
        for _, fields in entries:
            document = fields.get(b"event")
            if document:
                events.append(json.loads(document))
        return events


class RedisCacheStats:
    """Implements ``shared.ports.dashboard.CacheStats``."""

    def __init__(self, connection: RedisConnection | Client) -> None:
        self._connection = connection if isinstance(connection, RedisConnection) else RedisConnection.of(connection)

    def hit_rate(self) -> float | None:
        with calling("INFO stats"):
            client = self._connection.client()
            if isinstance(client, RedisCluster):
                stats = client.info("stats", target_nodes=RedisCluster.PRIMARIES)
                nodes = list(stats.values()) if all(isinstance(v, dict) for v in stats.values()) else [stats]
            else:
                nodes = [client.info("stats")]
        hits = sum(int(node.get("keyspace_hits", 0)) for node in nodes)
        misses = sum(int(node.get("keyspace_misses", 0)) for node in nodes)
        return round(hits / (hits + misses), 4) if hits + misses else None
