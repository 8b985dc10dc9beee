"""``RedisLookupCache``: the lookups' cache-aside reads and fills (``docs/redis-layout.md``), blocking.

Reads are one command on one key (``HMGET``) or one script on the device's set;
fills are scripts whose keys share the device's slot; a critical fill first sends
one ``fill_event`` per event in one pipeline, then the set's script with the events
``fill_event`` did not refuse (a correction the change feed applied meanwhile). Fills never replace a newer latest
state, never hide a change behind a negative entry, and only extend TTLs.

The lookups themselves use the asyncio twin, ``aio.AsyncRedisLookupCache``; both
build their commands with the functions below. This one serves the tests and
tools that inspect the cache from blocking code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.typing import EncodableT

from shared.adapters.redis.base import Command, ScriptedRedis
from shared.adapters.redis.client import REDIS_ERRORS, Client, RedisConnection, as_text, failed, redirects
from shared.adapters.redis.keys import Keys, sort_key
from shared.domain.stored import StoredEvent
from shared.ports.cache import Cached

Script = tuple[str, list[str], list[EncodableT]]  # script name, keys, arguments


def cached(document: Any, marker: Any) -> Cached | None:
    """What ``HMGET key d k`` says (bytes or ``None`` each): a document, "does not exist" (``d`` empty, or ``k``
    alone), or a miss."""
    if document is not None:
        return Cached(as_text(document) or None)
    if marker is not None:  # latest: "k" = "" without a document
        return Cached(None)
    return None


def latest_fill(keys: Keys, device_id: str, event: StoredEvent | None, ttl: int, negative_ttl: int) -> Script:
    key = keys.latest(device_id)
    if event is None:
        return "negative", [key], ["k", negative_ttl]
    return "latest", [key], [sort_key(event), event.to_json(), ttl]


def event_fill(keys: Keys, event_id: str, event: StoredEvent | None, ttl: int, negative_ttl: int) -> Script:
    key = keys.event(event_id)
    if event is None:
        return "negative", [key], ["d", negative_ttl]
    return "fill_event", [key], [event.to_json(), ttl]


def critical_event_fills(keys: Keys, sha: dict[str, str], events: Sequence[StoredEvent], ttl: int) -> list[Command]:
    """The first pipeline of a critical fill: each event by id (``fill_event``), one slot each."""
    event_sha = sha["fill_event"]
    return [(event_sha, 1, keys.event(event.event_id), event.to_json(), ttl) for event in events]


def still_current(events: Sequence[StoredEvent], replies: Sequence[Any]) -> list[StoredEvent]:
    """The events of :func:`critical_event_fills` that ``fill_event`` did not refuse (0: the change feed applied a
    copy enqueued later, a correction stored after the fill read the store, or a later copy is there)."""
    return [event for event, reply in zip(events, replies, strict=True) if reply != 0]


def critical_fill(keys: Keys, sha: dict[str, str], device_id: str, events: Sequence[StoredEvent],
                  covers_since_ms: int, ttl: int, cap: int) -> Command:
    """The second pipeline of a critical fill: the device's set (one slot), with the events still current.

    Sent after :func:`critical_event_fills` was acknowledged, never with it: an event's ``e:<id>`` then holds the
    critical copy before the set does, so a correction the change feed applies meanwhile finds it there and takes
    the event out of the set (``uncritical.lua``, which leaves a ``#gone:`` marker the fill honours), and one it
    applied already made ``fill_event`` refuse the copy (its note ``n``)."""
    names = [keys.critical(device_id)]
    args: list[object] = [covers_since_ms, ttl, cap]
    for event in events:
        names.append(keys.member(device_id, event.event_id))
        args += [event.event_time_ms, event.to_json(), ttl]
    return (sha["fill_critical"], len(names), *names, *args)


class RedisLookupCache(ScriptedRedis):
    """The ``LookupCache`` reads and fills as blocking calls (see the module docstring)."""

    def __init__(self, connection: RedisConnection | Client, *, key_prefix: str = "sluice:",
                 critical_per_device_max: int = 100, stream_shards: int = 8,
                 generation_cache_seconds: float = 1.0) -> None:
        super().__init__(connection, key_prefix, stream_shards, generation_cache_seconds=generation_cache_seconds)
        self.critical_cap = critical_per_device_max

    def _get_hash_doc(self, key: str, what: str) -> Cached | None:
        try:
            with redirects():
                document, marker = self.client.hmget(key, "d", "k")
        except REDIS_ERRORS as exc:
            self._after(exc)
            raise failed(f"reading {what}", exc) from exc
        return cached(document, marker)

    def get_latest(self, device_id: str) -> Cached | None:
        return self._get_hash_doc(self.keys.latest(device_id), f"the latest state of device {device_id!r}")

    def fill_latest(self, device_id: str, event: StoredEvent | None, ttl: int, negative_ttl: int) -> None:
        self.eval(*latest_fill(self.keys, device_id, event, ttl, negative_ttl),
                  f"caching the latest state of device {device_id!r}")

    def get_event(self, event_id: str) -> Cached | None:
        return self._get_hash_doc(self.keys.event(event_id), f"event {event_id}")

    def fill_event(self, event_id: str, event: StoredEvent | None, ttl: int, negative_ttl: int) -> None:
        self.eval(*event_fill(self.keys, event_id, event, ttl, negative_ttl), f"caching event {event_id}")

    def get_critical(self, device_id: str, since_ms: int, limit: int) -> list[str] | None:
        docs = self.eval("get_critical", [self.keys.critical(device_id)],
                         [since_ms, limit], f"reading the critical events of device {device_id!r}")
        if docs is None:
            return None
        return [doc.decode() for doc in docs]

    def fill_critical(self, device_id: str, events: Sequence[StoredEvent], covers_since_ms: int, ttl: int) -> None:
        what = f"caching the critical events of device {device_id!r}"
        if events:
            events = still_current(events, self.pipeline(critical_event_fills(self.keys, self.sha, events, ttl), what))
        self.pipeline([critical_fill(self.keys, self.sha, device_id, events, covers_since_ms, ttl, self.critical_cap)],
                      what)
