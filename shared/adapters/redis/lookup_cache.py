"""``RedisLookupCache``: the lookups' cache-aside reads and fills (``docs/redis-layout.md``).

Reads are one command on one key (``HMGET``) or one script on the device's set;
fills are scripts whose keys share the device's slot, plus one ``fill_event`` per
event, sent together in one pipeline. Fills never replace a newer latest
state, never hide a change behind a negative entry, and only extend TTLs.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.adapters.redis.base import Command, ScriptedRedis
from shared.adapters.redis.client import REDIS_ERRORS, Client, RedisConnection, as_text, failed
from shared.adapters.redis.keys import sort_key
from shared.domain.stored import StoredEvent
from shared.ports.cache import Cached


class RedisLookupCache(ScriptedRedis):
    """Implements ``LookupCache`` (``shared.ports.cache``)."""

    def __init__(self, connection: RedisConnection | Client, *, key_prefix: str = "sluice:",
                 critical_per_device_max: int = 100, stream_shards: int = 8,
                 generation_cache_seconds: float = 1.0) -> None:
        super().__init__(connection, key_prefix, stream_shards, generation_cache_seconds=generation_cache_seconds)
        self.critical_cap = critical_per_device_max

    def _get_hash_doc(self, key: str, what: str) -> Cached | None:
        try:
            document, marker = self.client.hmget(key, "d", "k")
        except REDIS_ERRORS as exc:
            self._after(exc)
            raise failed(f"reading {what}", exc) from exc
        if document is not None:
            return Cached(as_text(document) or None)
        if marker is not None:  # latest: "k" = "" without a document
            return Cached(None)
        return None

    def get_latest(self, device_id: str) -> Cached | None:
        return self._get_hash_doc(self.keys.latest(device_id), f"the latest state of device {device_id!r}")

    def fill_latest(self, device_id: str, event: StoredEvent | None, ttl: int, negative_ttl: int) -> None:
        key = self.keys.latest(device_id)
        what = f"caching the latest state of device {device_id!r}"
        if event is None:
            self.eval("negative", [key], ["k", negative_ttl], what)
        else:
            self.eval("latest", [key], [sort_key(event), event.to_json(), ttl], what)

    def get_event(self, event_id: str) -> Cached | None:
        return self._get_hash_doc(self.keys.event(event_id), f"event {event_id}")

    def fill_event(self, event_id: str, event: StoredEvent | None, ttl: int, negative_ttl: int) -> None:
        key = self.keys.event(event_id)
        if event is None:
            self.eval("negative", [key], ["d", negative_ttl], f"caching event {event_id} as missing")
        else:
            self.eval("fill_event", [key], [event.to_json(), ttl], f"caching event {event_id}")

    def get_critical(self, device_id: str, since_ms: int, limit: int) -> list[str] | None:
        docs = self.eval("get_critical", [self.keys.critical(device_id)],
                         [since_ms, limit], f"reading the critical events of device {device_id!r}")
        if docs is None:
            return None
        return [doc.decode() for doc in docs]

    def fill_critical(self, device_id: str, events: Sequence[StoredEvent], covers_since_ms: int, ttl: int) -> None:
        names = self.keys  # one generation for the whole fill
        keys = [names.critical(device_id)]
        args: list[object] = [covers_since_ms, ttl, self.critical_cap]
        by_id: list[Command] = []
        event_sha = self.sha["fill_event"]
        for event in events:
            document = event.to_json()
            keys.append(names.member(device_id, event.event_id))
            args += [event.event_time_ms, document]
            by_id.append((event_sha, 1, names.event(event.event_id), document, ttl))
        self.pipeline([(self.sha["fill_critical"], len(keys), *keys, *args), *by_id],
                      f"caching the critical events of device {device_id!r}")
