"""Redis reads of the operations page: the fleet-wide critical stream and the cache's hit rate.

Kept apart from the change sink and the lookup cache (``shared.adapters.redis``):
these are read-only. ``RedisCriticalStream.recent`` reads the live generation's
critical stream, which is sharded (``critical:stream:{<shard>}``, one slot each):
one ``XREVRANGE ... COUNT n`` per shard in one pipeline, merged newest first by
entry id. The stream holds the first critical copy of each event the change feed
applied; a correction is not appended. So each entry shown is checked against its
event's ``e:<id>`` (one more pipeline of ``HMGET``, each key its own slot): an event
corrected into one that is not critical is left out, one corrected but critical
still shows its current copy, and an event is shown once.
``RedisCacheStats.hit_rate`` reads ``INFO stats`` (``keyspace_hits`` and
``keyspace_misses``: summed over every node of a cluster, since their statistics
were last reset). Every Redis failure raises ``DependencyUnavailable("redis", ...)``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any, cast

from redis.cluster import RedisCluster

from shared.adapters.redis import Keys, RedisConnection, RedisGenerations, generation_prefix
from shared.adapters.redis.client import Client, calling

logger = logging.getLogger(__name__)


Entry = tuple[bytes, dict[bytes, bytes]]  # a stream entry: its id, its fields


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

    def _keys(self) -> Keys:
        live = self._generations.current().live
        return Keys(generation_prefix(self._generations.prefix, live), self._shards)

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` events of the merged shards whose current copy is critical, each once.

        The newest ``limit`` entries are read and checked; where some are left out, the next ones are read (only
        from the shards that may hold more, from where each stopped) until ``limit`` are shown or the stream ends:
        the newest ``limit + skipped`` entries of the merge are within each shard's newest ``limit + skipped``."""
        with calling("reading the critical stream"):
            keys = self._keys()
        read: list[list[Entry]] = [[] for _ in keys.streams]
        more = [True] * len(keys.streams)  # the shard may hold entries older than those read
        verdicts: dict[tuple[int, bytes], dict[str, Any] | None] = {}  # (shard, entry id) -> what is shown
        wanted = limit
        while True:
            self._read(keys, read, more, wanted)
            top = sorted(((shard, entry) for shard, entries in enumerate(read) for entry in entries),
                         key=lambda item: _entry_order(item[1][0]), reverse=True)[:wanted]
            unchecked = [(shard, entry_id, _document(fields)) for shard, (entry_id, fields) in top
                         if (shard, entry_id) not in verdicts]
            notes = self._notes(keys, [document for _, _, document in unchecked if document is not None])
            for shard, entry_id, document in unchecked:
                verdicts[shard, entry_id] = None if document is None else _current_copy(document, *next(notes))
            events: list[dict[str, Any]] = []
            shown: set[str] = set()
            for shard, (entry_id, _) in top:
                event = verdicts[shard, entry_id]
                if event is not None and str(event.get("event_id")) not in shown:
                    shown.add(str(event.get("event_id")))
                    events.append(event)
            if len(events) >= limit or len(top) < wanted:  # enough, or the whole stream read
                return events[:limit]
            wanted += limit - len(events)

    def _read(self, keys: Keys, read: list[list[Entry]], more: list[bool], wanted: int) -> None:
        """Each shard's entries read on to its newest ``wanted`` (or its end), in one pipeline."""
        asked: list[tuple[int, int]] = []
        with calling("reading the critical stream"):
            pipe = self._connection.client().pipeline(transaction=False)
            for shard, key in enumerate(keys.streams):
                count = wanted - len(read[shard])
                if more[shard] and count > 0:
                    start = b"(" + read[shard][-1][0] if read[shard] else "+"
                    pipe.xrevrange(key, start, "-", count=count)
                    asked.append((shard, count))
            replies = pipe.execute(raise_on_error=True) if asked else []
        for (shard, count), entries in zip(asked, replies, strict=True):
            read[shard].extend(entries)
            more[shard] = len(entries) == count

    def _notes(self, keys: Keys, entries: list[dict[str, Any]]) -> Iterator[list[bytes | None]]:
        """``HMGET e:<id> d n`` of each entry's event, in one pipeline (each key its own slot: one sub-pipeline per
        node on a cluster)."""
        if not entries:
            return iter([])
        with calling(f"reading the current copies of {len(entries)} critical events"):
            pipe = self._connection.client().pipeline(transaction=False)
            for entry in entries:
                pipe.hmget(keys.event(entry.get("event_id")), "d", "n")
            return iter(cast(list[list[bytes | None]], pipe.execute(raise_on_error=True)))


def _document(fields: dict[bytes, bytes]) -> dict[str, Any] | None:
    document = fields.get(b"event")
    return json.loads(document) if document else None


def _current_copy(entry: dict[str, Any], current: bytes | None, noted: bytes | None) -> dict[str, Any] | None:
    """What the feed shows for a stream entry (the critical copy the change feed appended, once per event id): the
    event's current copy where ``e:<id>`` holds one enqueued as late or later (a correction critical again, here or
    under another device id), ``None`` where that copy is not critical or ``e:<id>`` notes a copy enqueued later that
    is not (field ``n``: the change feed dropped the critical copy for it), else the entry as stored (nothing known
    of a later copy: ``e:<id>`` expired or was evicted, or the event never was corrected)."""
    enqueued = entry.get("enqueued_time") or ""
    if current:  # b"": a cached "not found", which says nothing of the stream's copy
        copy: dict[str, Any] = json.loads(current)
        if (copy.get("enqueued_time") or "") >= enqueued:
            return copy if copy.get("critical") is True else None
    elif noted is not None and noted.decode() > enqueued:
        return None
    return entry


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
        # unrounded: rounded to 4 places, 30,000 hits and 1 miss were 1.0, which the page shows as 100 % (no misses)
        return hits / (hits + misses) if hits + misses else None
