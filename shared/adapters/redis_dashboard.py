"""Redis reads of the operations page: the fleet-wide critical stream and the cache's hit rate.

Kept apart from ``RedisCache`` (the change feed's writer and the lookups' cache):
these are read-only. ``RedisCriticalStream.recent`` is one ``XREVRANGE ... COUNT n``
of the stream the change feed appends to (``docs/redis-layout.md``);
``RedisCacheStats.hit_rate`` reads ``INFO stats`` (``keyspace_hits`` and
``keyspace_misses``: the whole server's, since its statistics were last reset).
Every Redis failure raises ``DependencyUnavailable("redis", ...)``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from redis.exceptions import RedisError

from shared.adapters.redis_generation import RedisGenerations, generation_prefix
from shared.exceptions import DependencyUnavailable

logger = logging.getLogger(__name__)


class RedisCriticalStream:
    """Implements ``shared.ports.dashboard.CriticalStream``."""

    def __init__(self, client: redis.Redis, *, key_prefix: str = "sluice:") -> None:
        self._client = client
        self._generations = RedisGenerations(client, key_prefix)  # the stream of the live generation

    @property
    def _key(self) -> str:
        return generation_prefix(self._generations.prefix, self._generations.current().live) + "critical:stream"

    def recent(self, limit: int) -> list[dict[str, Any]]:
        try:
            entries = self._client.xrevrange(self._key, "+", "-", count=limit)
        except RedisError as exc:
            raise DependencyUnavailable("redis", f"reading the critical stream failed: {type(exc).__name__}: {exc}") \
                from exc
        events = []
        for _, fields in entries:
            document = fields.get(b"event")
            if document:
                events.append(json.loads(document))
        return events


class RedisCacheStats:
    """Implements ``shared.ports.dashboard.CacheStats``."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def hit_rate(self) -> float | None:
        try:
            stats = self._client.info("stats")
        except RedisError as exc:
            raise DependencyUnavailable("redis", f"INFO stats failed: {type(exc).__name__}: {exc}") from exc
        hits, misses = int(stats.get("keyspace_hits", 0)), int(stats.get("keyspace_misses", 0))
        return round(hits / (hits + misses), 4) if hits + misses else None
