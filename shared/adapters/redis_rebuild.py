"""``RedisCacheBuilder``: the Redis side of ``sluice rebuild redis`` (``shared.ports.rebuild.CacheBuilder``).

Writes go to a pinned generation through the cache's own idempotent scripts
(``LATEST`` for the latest state, ``FILL_CRITICAL`` for a device's complete
critical list with its ``#since`` bound, ``CRITICAL`` for the stream), one
pipeline per page. The fleet-wide stream holds the newest critical events, so
while devices are scanned their critical events are offered to a capped sorted
set of candidates in the building generation (``rebuild:stream``, score = event
time); it is part of the page's pipeline, so it survives a kill with the
position. At the end the candidates go onto the stream oldest first through
``CRITICAL``, whose ``s`` flag skips any event the change feed already put
there, and the pointer switches.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence

from redis.exceptions import NoScriptError, RedisError

from shared.adapters.redis_cache import RedisCache, sort_key
from shared.exceptions import DependencyUnavailable
from shared.ports.rebuild import Build
from shared.ports.stored import StoredEvent

logger = logging.getLogger(__name__)

# Key patterns of one generation (under its prefix), for deleting a replaced one.
GENERATION_PATTERNS = ["d:*", "e:*", "critical:stream", "rebuild:*"]
_CHUNK = 500


class RedisCacheBuilder:
    def __init__(self, cache: RedisCache, *, settle_seconds: float | None = None) -> None:
        self._cache = cache
        self._client = cache._client
        self._generations = cache.generations
        self._settle = 2 * self._generations.cache_seconds if settle_seconds is None else settle_seconds

    def _candidates(self, generation: int) -> str:
        return f"{self._cache.keys_of(generation).prefix}rebuild:stream"

    def _run(self, commands: list[tuple], what: str) -> None:
        def execute() -> None:
            pipe = self._client.pipeline(transaction=False)
            for args in commands:
                pipe.execute_command(*args)
            pipe.execute(raise_on_error=True)

        try:
            try:
                execute()
            except NoScriptError:
                self._cache.load_scripts()
                execute()  # every command is idempotent: replaying the page is safe
        except RedisError as exc:
            raise DependencyUnavailable("redis", f"{what} failed: {type(exc).__name__}: {exc}") from exc

    def begin(self, since_ms: int, *, resume: bool) -> Build:
        pointer = self._generations.read()
        if resume and pointer.building is not None and pointer.since_ms == since_ms:
            build = Build(pointer.building, int(pointer.position) if pointer.position else None, since_ms)
            logger.info("resuming the build of generation %d at %s", build.generation, build.position)
        else:
            abandoned = pointer.building
            pointer = self._generations.start_building(since_ms)
            build = Build(pointer.building, None, since_ms)  # type: ignore[arg-type]
            if abandoned is not None:
                self._generations.drop(abandoned, GENERATION_PATTERNS)
            logger.info("building generation %d (live: %d)", build.generation, pointer.live)
        time.sleep(self._settle)  # every change-feed writer now writes to the building generation too
        return build

    def write(self, generation: int, latest: Sequence[StoredEvent],
              critical: dict[str, Sequence[StoredEvent]], since_ms: int) -> None:
        cache, keys = self._cache, self._cache.keys_of(generation)
        sha, ttl, cap = cache._sha, cache._ttl, cache.critical_cap
        commands: list[tuple] = [("EVALSHA", sha["latest"], 1, keys.latest(e.device_id), sort_key(e), e.to_json(), ttl)
                                 for e in latest]
        candidates: list[object] = []
        for device, events in critical.items():
            for start in range(0, max(len(events), 1), _CHUNK):
                chunk = events[start:start + _CHUNK]
                args: list[object] = [since_ms, ttl, cap]
                for event in chunk:
                    document = event.to_json()
                    args += [event.event_time_ms, document]
                    candidates += [event.event_time_ms, document]
                commands.append(("EVALSHA", sha["fill_critical"], 1 + len(chunk), keys.critical(device),
                                 *(keys.event(e.event_id) for e in chunk), *args))
        if candidates:
            target = self._candidates(generation)
            commands.append(("ZADD", target, *candidates))
            commands.append(("ZREMRANGEBYRANK", target, 0, -(cache._stream_max + 1)))
        self._run(commands, f"writing {len(latest)} devices to generation {generation}")

    def save_position(self, generation: int, position: int) -> None:
        self._generations.save_position(generation, str(position))

    def finish(self, generation: int) -> int:
        cache, keys = self._cache, self._cache.keys_of(generation)
        target = self._candidates(generation)
        try:
            members = self._client.zrange(target, 0, -1, withscores=True)
        except RedisError as exc:
            raise DependencyUnavailable("redis", f"reading the stream candidates failed: {exc}") from exc
        for start in range(0, len(members), _CHUNK):
            commands = []
            for member, score in members[start:start + _CHUNK]:
                document = member.decode()
                parsed = json.loads(document)
                event_id, device = parsed["event_id"], parsed["device_id"]
                commands.append(("EVALSHA", cache._sha["critical"], 3, keys.event(event_id), keys.critical(device),
                                 keys.stream, document, int(score), cache._ttl, cache.critical_cap,
                                 cache._stream_max, event_id, device))
            self._run(commands, f"writing the critical stream of generation {generation}")
        self._run([("UNLINK", target)], "deleting the stream candidates")
        old = self._generations.switch(generation)
        time.sleep(self._settle)  # no reader still reads the old generation
        removed = self._generations.drop(old, GENERATION_PATTERNS)
        logger.info("generation %d is live; deleted %d keys of generation %d", generation, removed, old)
        return old

    def refresh(self, device_id: str, latest: StoredEvent | None, critical: Sequence[StoredEvent],
                since_ms: int) -> None:
        pointer = self._generations.read()
        cache = self._cache
        keys, sha = cache.keys_of(pointer.live), cache._sha
        commands: list[tuple] = [("UNLINK", keys.latest(device_id), keys.critical(device_id))]
        if latest is not None:
            commands.append(("EVALSHA", sha["latest"], 1, keys.latest(device_id), sort_key(latest),
                             latest.to_json(), cache._ttl))
        for start in range(0, max(len(critical), 1), _CHUNK):
            chunk = critical[start:start + _CHUNK]
            args: list[object] = [since_ms, cache._ttl, cache.critical_cap]
            for event in chunk:
                args += [event.event_time_ms, event.to_json()]
            commands.append(("EVALSHA", sha["fill_critical"], 1 + len(chunk), keys.critical(device_id),
                             *(keys.event(e.event_id) for e in chunk), *args))
        self._run(commands, f"rebuilding device {device_id!r}")
