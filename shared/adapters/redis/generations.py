"""``RedisGenerations``: which key generation the Redis cache reads and writes, behind one pointer hash.

A rebuild (``sluice rebuild redis``) fills a *new* generation of keys and then
switches the pointer, so no reader ever sees a half-built cache. The pointer is
the hash ``<prefix>generation`` (``docs/redis-layout.md``):

* ``live``      the generation the lookups read and the change feed writes (absent: 0);
* ``building``  the generation a rebuild is filling (absent: none); while it is
  set the change feed writes every change to *both* generations, so a change
  that lands during the rebuild is in the new generation whether or not the
  rebuild's own read saw it;
* ``position``  the rebuild's saved position (see ``shared.services.rebuild``);
* ``since``     the start of the building generation's critical range (ms);
* ``owner``     a random token of the process building it, and ``lease`` (ms, Redis's clock) until when that
  process holds it: set when a build is claimed or resumed, renewed while the build runs (a heartbeat, and with
  each saved position), removed when it fails (:meth:`RedisGenerations.release`, keeping the position); a build
  whose lease is live is no other process's to resume, restart or switch (:class:`Lease`);
* ``drop:<n>``  generation ``n`` is to be deleted: set in the same script that
  replaces it (the switch, or a new build abandoning one), removed once its keys
  are deleted, so a crash in between leaves a record the next rebuild acts on.

Generation 0 is the layout under the bare prefix (what a deployment had before
generations); generation ``n > 0`` puts every key under ``<prefix>g<n>:``.

Readers cache the pointer for ``cache_seconds`` (one ``HMGET`` per second per
process, not one per lookup). A rebuild therefore waits ``2 * cache_seconds``
after setting ``building`` before it reads anything, so every writer already
writes to both generations, and as long again after switching before it deletes
the old generation, so no reader still reads it.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

from redis.cluster import RedisCluster

from shared.adapters.redis.client import Client, RedisConnection, as_text, calling
from shared.exceptions import DependencyUnavailable

_GLOB = re.compile(r"([\\*?\[\]])")


def glob_escape(text: str) -> str:
    """``text`` as a ``SCAN MATCH`` pattern matching only itself: a key prefix may hold ``*``, ``?``, ``[``,
    ``]`` or ``\\``, which a pattern would read as wildcards and so match (and delete) other prefixes' keys."""
    return _GLOB.sub(r"\\\1", text)


@dataclass(frozen=True, slots=True)
class Lease:
    """Another process holds the build of ``generation`` until ``until_ms`` (Redis's clock): the move was refused."""

    generation: int
    until_ms: int


# The lease check every move below starts with: a build another owner's live lease holds is refused, as
# {-1, generation, lease}. ARGV[1]: the caller's token. Redis's own clock, so the processes' clocks do not matter.
_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""
_HELD = _NOW + """
local building = tonumber(redis.call('HGET', KEYS[1], 'building') or '0')
local lease = tonumber(redis.call('HGET', KEYS[1], 'lease') or '0')
if building > 0 and lease > now and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return {-1, building, lease}
end
"""


def lost(generation: int) -> DependencyUnavailable:
    """The error of a rebuild that no longer owns the build of ``generation``."""
    return DependencyUnavailable("redis", f"generation {generation} is no longer being built by this rebuild "
                                          "(another rebuild took it over after its lease lapsed?)")


@dataclass(frozen=True, slots=True)
class Pointer:
    live: int
    building: int | None
    position: str | None
    since_ms: int | None


def generation_prefix(prefix: str, generation: int) -> str:
    """The key prefix of one generation (0: the bare prefix)."""
    return prefix if generation == 0 else f"{prefix}g{generation}:"


class RedisGenerations:
    """Reads (cached) and moves the generation pointer of one key prefix."""

    def __init__(self, connection: RedisConnection | Client, prefix: str, *, cache_seconds: float = 1.0) -> None:
        self._connection = connection if isinstance(connection, RedisConnection) else RedisConnection.of(connection)
        self.prefix = prefix
        self.key = f"{prefix}generation"
        self.cache_seconds = cache_seconds
        self._cached: tuple[float, Pointer] | None = None
        self._lock = threading.Lock()

    @property
    def _client(self) -> Client:
        return self._connection.client()

    def read(self) -> Pointer:
        """The pointer as Redis holds it now (uncached)."""
        with calling("reading the generation pointer"):
            live, building, position, since = self._client.hmget(self.key, "live", "building", "position",
                                                                 "since")
        return Pointer(int(live) if live else 0, int(building) if building else None,
                       as_text(position) if position else None, int(since) if since else None)

    def current(self) -> Pointer:
        """The pointer, at most ``cache_seconds`` old."""
        now = time.monotonic()
        cached = self._cached
        if cached is not None and now - cached[0] < self.cache_seconds:
            return cached[1]
        with self._lock:
            asked = time.monotonic()  # Redis read it after this: the pointer is no older than that
            pointer = self.read()
            self._cached = (asked, pointer)
        return pointer

    # -- moves (used by the rebuild only) ------------------------------------------------------
    # Each is one script on the pointer key alone (one slot: it runs on a Redis Cluster too). The owner token and
    # its lease make "a killed build" and "a running build" two different things: only the first may be taken over.
    def start_building(self, since_ms: int, token: str, lease_ms: int) -> Pointer | Lease:
        """Claim a new generation ``max(live, building) + 1`` for ``token`` (atomically) and return the new pointer;
        or, while another owner's lease on the build in progress is live, claim nothing and return that lease.

        A generation that was being built is abandoned: recorded for deletion (:meth:`retired`)."""
        script = _HELD + """
local live = tonumber(redis.call('HGET', KEYS[1], 'live') or '0')
local next = math.max(live, building) + 1
if building > 0 then redis.call('HSET', KEYS[1], 'drop:' .. building, '1') end  -- abandoned: to be deleted
redis.call('HSET', KEYS[1], 'building', next, 'since', ARGV[3], 'owner', ARGV[1], 'lease', now + tonumber(ARGV[2]))
redis.call('HDEL', KEYS[1], 'position')
return {next}
"""
        with calling("claiming a new generation"):
            reply = self._client.eval(script, 1, self.key, token, lease_ms, since_ms)
        if int(reply[0]) < 0:
            return Lease(int(reply[1]), int(reply[2]))
        self._cached = None
        return self.read()

    def resume(self, generation: int, token: str, lease_ms: int) -> Lease | None:
        """Take over the build of ``generation`` for ``token``, unless another owner's lease on it is live (that
        lease is returned). Raises ``DependencyUnavailable`` if ``generation`` is no longer being built."""
        script = _HELD + """
if building ~= tonumber(ARGV[3]) then return {-2} end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease', now + tonumber(ARGV[2]))
return {0}
"""
        with calling("resuming a build"):
            reply = self._client.eval(script, 1, self.key, token, lease_ms, generation)
        if int(reply[0]) == -1:
            return Lease(int(reply[1]), int(reply[2]))
        if int(reply[0]) == -2:
            raise DependencyUnavailable("redis", f"generation {generation} is no longer being built (another rebuild?)")
        return None

    def renew(self, generation: int, position: str | None, token: str, lease_ms: int) -> bool:
        """Record the rebuild's position (``None``: keep it) and renew ``token``'s lease, only while ``generation``
        is still the one being built and ``token`` still owns it; ``False`` (nothing written) when it is not (another
        process took it over after the lease lapsed)."""
        script = _NOW + """
if redis.call('HGET', KEYS[1], 'building') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'lease', now + tonumber(ARGV[3]))
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'position', ARGV[4]) end
return 1
"""
        with calling("saving the rebuild position" if position else "renewing the rebuild's lease"):
            return bool(self._client.eval(script, 1, self.key, str(generation), token, lease_ms, position or ""))

    def save_position(self, generation: int, position: str | None, token: str, lease_ms: int) -> None:
        """:meth:`renew`, raising ``DependencyUnavailable`` when ``token`` no longer owns the build."""
        if not self.renew(generation, position, token, lease_ms):
            raise lost(generation)

    def release(self, generation: int, token: str) -> None:
        """Give up ``token``'s lease on the build of ``generation`` (a rebuild that failed), keeping its position,
        so the next rebuild resumes it at once; nothing when ``token`` does not own it (any more)."""
        script = """
if redis.call('HGET', KEYS[1], 'building') == ARGV[1] and redis.call('HGET', KEYS[1], 'owner') == ARGV[2] then
  redis.call('HDEL', KEYS[1], 'owner', 'lease')
end
return 1
"""
        with calling("releasing the rebuild's lease"):
            self._client.eval(script, 1, self.key, str(generation), token)

    def switch(self, generation: int, token: str) -> int:
        """Make ``generation`` live and stop building, atomically, if ``token`` still owns its build; returns the
        generation it replaced, which the same script records for deletion (:meth:`retired`)."""
        script = """
if redis.call('HGET', KEYS[1], 'building') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then
  return -1
end
local old = tonumber(redis.call('HGET', KEYS[1], 'live') or '0')
redis.call('HSET', KEYS[1], 'live', ARGV[1], 'drop:' .. old, '1')
redis.call('HDEL', KEYS[1], 'building', 'position', 'since', 'owner', 'lease')
return old
"""
        with calling("switching generations"):
            old = self._client.eval(script, 1, self.key, str(generation), token)
        if old < 0:
            raise lost(generation)
        self._cached = None
        return int(old)

    def retired(self) -> list[int]:
        """The generations recorded for deletion that are neither live nor building, oldest first."""
        with calling("reading the generation pointer"):
            fields = self._client.hgetall(self.key)
        pointer = {as_text(name): as_text(value) for name, value in fields.items()}
        in_use = {pointer.get("live", "0"), pointer.get("building")}
        return sorted(int(name[5:]) for name in pointer if name.startswith("drop:") and name[5:] not in in_use)

    def forget(self, generation: int) -> None:
        """Remove the record that ``generation`` is to be deleted (once its keys are)."""
        with calling(f"forgetting generation {generation}"):
            self._client.hdel(self.key, f"drop:{generation}")

    def drop(self, generation: int, patterns: list[str], *, batch: int = 500) -> int:
        """Delete every key of a generation that is neither live nor building (``UNLINK`` in batches).

        ``SCAN`` sees one server's keys only, so on a cluster every master is scanned;
        the cluster client splits each ``UNLINK`` by slot. The prefix is escaped for ``MATCH``: only
        ``patterns`` are globs.
        """
        pointer = self.read()
        if generation in (pointer.live, pointer.building):
            raise ValueError(f"generation {generation} is in use")
        base = glob_escape(generation_prefix(self.prefix, generation))
        removed = 0
        with calling(f"deleting generation {generation}"):
            client = self._client
            if isinstance(client, RedisCluster):
                primaries = client.get_primaries()  # type: ignore[no-untyped-call]  # not annotated in redis-py
                scanners = [client.get_redis_connection(node) for node in primaries]
            else:
                scanners = [client]
            for scanner in scanners:
                for pattern in patterns:
                    keys: list[bytes] = []
                    for key in scanner.scan_iter(match=base + pattern, count=1000):
                        if generation == 0 and key.decode().startswith(f"{self.prefix}g"):
                            continue
                        keys.append(key)
                        if len(keys) >= batch:
                            removed += client.unlink(*keys)
                            keys = []
                    if keys:
                        removed += client.unlink(*keys)
        return removed
