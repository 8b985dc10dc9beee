"""``RedisCache``: the change feed's sink and the lookups' cache-aside store, in one layout.

The layout (``docs/redis-layout.md``), every key under ``key_prefix`` and with a TTL:

* ``d:{<device>}:latest``   hash ``k`` (sort key) + ``d`` (JSON document); ``k = ""`` and no ``d`` = "no such device";
* ``d:{<device>}:crit``     sorted set of the device's critical event documents, score = event time (ms), capped,
  plus a sentinel ``#since:<ms>`` (score -inf): the set holds *every* critical event at or after <ms>;
* ``e:<event_id>``          hash ``d`` (document, ``""`` = "no such event") + ``s`` (1 once on the stream);
* ``critical:stream``       stream of recent critical events (``event_id``, ``device_id``, ``event``), capped.

Every write is a Lua script, so it is atomic and needs no WATCH: the latest state
is replaced only by a larger sort key (zero-padded event time, then event id:
the order of ``StoredEvent.newer_than``); set members are the canonical documents;
a critical event is added to the stream only the first time its ``s`` flag is set.
Replays and racing writers therefore converge on the same state. Writes of a page
go out in one pipeline (``EVALSHA``; a missing script is loaded and the page
replayed, which the idempotent scripts allow). Every Redis failure raises
``DependencyUnavailable("redis", ...)``.

Every key above lives in the *live generation* (``shared.adapters.redis_generation``):
the lookups read it, the change feed writes it and, while a rebuild fills a new
generation, that one too.

Scripts touch several keys; the device keys share a hash tag (``{<device>}``), but
the event and stream keys do not, so a clustered Redis (Enterprise, OSS cluster)
is not supported: use a non-clustered tier.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence

import redis
from redis.exceptions import NoScriptError, RedisError

from shared.adapters.redis_generation import RedisGenerations, generation_prefix
from shared.exceptions import DependencyUnavailable
from shared.ports.cache import Cached
from shared.ports.stored import StoredEvent

logger = logging.getLogger(__name__)

_EPOCH_OFFSET = 2**53  # keeps sort keys non-negative and fixed-width (17 digits) for any event time

# Extend a key's TTL, never shorten it (a fill must not cut short what the feed wrote).
_EXTEND = """
local function extend(key, ttl)
  local current = redis.call('TTL', key)
  if current < ttl then redis.call('EXPIRE', key, ttl) end
end
"""

# The per-device critical set carries its own completeness bound as a sentinel member
# "#since:<ms>" with score -inf: every critical event with event time >= ms is in the set.
# Range reads (finite bounds) never return it; it expires and is evicted with the set.
_SENTINEL = """
local function sentinel(zkey)
  local first = redis.call('ZRANGE', zkey, 0, 0)
  if first[1] and string.sub(first[1], 1, 7) == '#since:' then return first[1] end
  return nil
end
local function set_since(zkey, old, ms)
  if old then redis.call('ZREM', zkey, old) end
  redis.call('ZADD', zkey, '-inf', '#since:' .. string.format('%.0f', ms))
end
local function trim(zkey, cap)
  local s = sentinel(zkey)
  local offset = s and 1 or 0
  local n = redis.call('ZCARD', zkey) - offset
  if n > cap then
    local last = offset + n - cap - 1
    local cut = redis.call('ZRANGE', zkey, last, last, 'WITHSCORES')
    redis.call('ZREMRANGEBYRANK', zkey, offset, last)
    if s and tonumber(string.sub(s, 8)) <= tonumber(cut[2]) then
      set_since(zkey, s, tonumber(cut[2]) + 1)
    end
  end
end
"""

# KEYS: latest. ARGV: sort key, document, ttl. Replace only with a newer event.
LATEST = _EXTEND + """
local current = redis.call('HGET', KEYS[1], 'k')
if (not current) or ARGV[1] > current then
  redis.call('HSET', KEYS[1], 'k', ARGV[1], 'd', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
elseif ARGV[1] == current then
  extend(KEYS[1], tonumber(ARGV[3]))
end
return 1
"""

# KEYS: event, device set, stream.
# ARGV: document, score (ms), ttl, per-device cap, stream cap, event id, device id.
# The previous document of the event (a re-sent event differs in its enqueued time) leaves the set first,
# so the set holds one member per event.
CRITICAL = _EXTEND + _SENTINEL + """
local ttl = tonumber(ARGV[3])
local previous = redis.call('HGET', KEYS[1], 'd')
if previous and previous ~= '' and previous ~= ARGV[1] then redis.call('ZREM', KEYS[2], previous) end
redis.call('HSET', KEYS[1], 'd', ARGV[1])
local first = redis.call('HSETNX', KEYS[1], 's', '1')
extend(KEYS[1], ttl)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
trim(KEYS[2], tonumber(ARGV[4]))
extend(KEYS[2], ttl)
if first == 1 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'event_id', ARGV[6], 'device_id', ARGV[7], 'event', ARGV[1])
  extend(KEYS[3], ttl)
end
return first
"""

# KEYS: latest or event key. ARGV: field, negative ttl. Cache "does not exist" only where nothing is cached.
NEGATIVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], ARGV[1], '')
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: event. ARGV: document, ttl.
FILL_EVENT = _EXTEND + """
redis.call('HSET', KEYS[1], 'd', ARGV[1])
extend(KEYS[1], tonumber(ARGV[2]))
return 1
"""

# KEYS: device set. ARGV: since (ms), limit. Nil when the cache cannot answer exactly.
GET_CRITICAL = _SENTINEL + """
local s = sentinel(KEYS[1])
if not s then return false end
local complete = tonumber(string.sub(s, 8))
local since = tonumber(ARGV[1])
local bound = math.max(complete, since)
local docs = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', string.format('%.0f', bound), 'LIMIT', 0, ARGV[2])
if #docs >= tonumber(ARGV[2]) or complete <= since then return docs end
return false
"""

# KEYS: device set, then each event's key. ARGV: covers-since (ms), ttl, cap, then score/document per event.
FILL_CRITICAL = _EXTEND + _SENTINEL + """
for i = 2, #KEYS do
  local doc = ARGV[2 * i + 1]
  local previous = redis.call('HGET', KEYS[i], 'd')
  if previous and previous ~= '' and previous ~= doc then redis.call('ZREM', KEYS[1], previous) end
  redis.call('HSET', KEYS[i], 'd', doc)
  extend(KEYS[i], tonumber(ARGV[2]))
  redis.call('ZADD', KEYS[1], ARGV[2 * i], doc)
end
local s = sentinel(KEYS[1])
local covers = tonumber(ARGV[1])
if (not s) or covers < tonumber(string.sub(s, 8)) then set_since(KEYS[1], s, covers) end
trim(KEYS[1], tonumber(ARGV[3]))
extend(KEYS[1], tonumber(ARGV[2]))
return 1
"""

SCRIPTS = {"latest": LATEST, "critical": CRITICAL, "negative": NEGATIVE, "fill_event": FILL_EVENT,
           "get_critical": GET_CRITICAL, "fill_critical": FILL_CRITICAL}


def sort_key(event: StoredEvent) -> str:
    """``<17-digit offset ms>:<event id>``: compares as ``StoredEvent.newer_than`` orders."""
    return f"{event.event_time_ms + _EPOCH_OFFSET:017d}:{event.event_id}"


class Keys:
    """Key names under one prefix (see the module docstring)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.stream = f"{prefix}critical:stream"

    def latest(self, device_id: str) -> str:
        return f"{self.prefix}d:{{{device_id}}}:latest"

    def critical(self, device_id: str) -> str:
        return f"{self.prefix}d:{{{device_id}}}:crit"

    def event(self, event_id: object) -> str:
        return f"{self.prefix}e:{event_id}"


class RedisCache:
    """Implements ``ChangeSink`` and ``LookupCache`` (``shared.ports.cache``) on one Redis."""

    def __init__(self, client: redis.Redis, *, key_prefix: str = "sluice:", ttl_seconds: int = 7 * 24 * 3600,
                 critical_per_device_max: int = 100, critical_stream_max: int = 10_000,
                 generation_cache_seconds: float = 1.0) -> None:
        self._client = client
        self.key_prefix = key_prefix
        self.generations = RedisGenerations(client, key_prefix, cache_seconds=generation_cache_seconds)
        self._keys: dict[int, Keys] = {}
        self._ttl = ttl_seconds
        self.critical_cap = critical_per_device_max
        self._stream_max = critical_stream_max
        self._sha = {name: hashlib.sha1(body.encode()).hexdigest() for name, body in SCRIPTS.items()}

    # -- generations ----------------------------------------------------------------
    def keys_of(self, generation: int) -> Keys:
        keys = self._keys.get(generation)
        if keys is None:
            keys = self._keys[generation] = Keys(generation_prefix(self.key_prefix, generation))
        return keys

    @property
    def keys(self) -> Keys:
        """The keys of the generation the lookups read: the live one."""
        return self.keys_of(self.generations.current().live)

    def _write_keys(self) -> list[Keys]:
        """Where changes go: the live generation and, while a rebuild runs, the one it builds."""
        pointer = self.generations.current()
        if pointer.building is None:
            return [self.keys_of(pointer.live)]
        return [self.keys_of(pointer.live), self.keys_of(pointer.building)]

    # -- plumbing -------------------------------------------------------------------
    def _failed(self, what: str, exc: Exception) -> DependencyUnavailable:
        return DependencyUnavailable("redis", f"{what} failed: {type(exc).__name__}: {exc}")

    def load_scripts(self) -> None:
        """Load every script (done on demand after ``NOSCRIPT``; also useful at start-up)."""
        for name, body in SCRIPTS.items():
            loaded = self._client.script_load(body)
            if loaded != self._sha[name]:
                raise RuntimeError(f"Redis returned SHA {loaded} for script {name}, expected {self._sha[name]}")

    def _eval(self, name: str, keys: Sequence[str], args: Sequence[object], what: str):
        try:
            try:
                return self._client.evalsha(self._sha[name], len(keys), *keys, *args)
            except NoScriptError:
                self.load_scripts()
                return self._client.evalsha(self._sha[name], len(keys), *keys, *args)
        except RedisError as exc:
            raise self._failed(what, exc) from exc

    # -- ChangeSink ------------------------------------------------------------------
    def commands(self, events: Sequence[StoredEvent]) -> list[tuple]:
        """The ``EVALSHA`` argument tuples that apply ``events`` (the newest event per device sets its latest)."""
        newest: dict[str, StoredEvent] = {}
        commands: list[tuple] = []
        ttl = self._ttl
        generations = self._write_keys()
        latest_sha, critical_sha = self._sha["latest"], self._sha["critical"]
        documents: dict[uuid.UUID, str] = {}
        for event in events:
            current = newest.get(event.device_id)
            if current is None or event.newer_than(current):
                newest[event.device_id] = event
            if event.critical:
                device = event.device_id
                documents[event.event_id] = document = event.to_json()
                for keys in generations:
                    commands.append((critical_sha, 3, keys.event(event.event_id), keys.critical(device), keys.stream,
                                     document, event.event_time_ms, ttl,
                                     self.critical_cap, self._stream_max, str(event.event_id), device))
        for device, event in newest.items():
            document = documents.get(event.event_id) or event.to_json()
            for keys in generations:
                commands.append((latest_sha, 1, keys.latest(device), sort_key(event), document, ttl))
        return commands

    def apply(self, events: Sequence[StoredEvent]) -> None:
        if not events:
            return
        commands = self.commands(events)
        try:
            try:
                self._execute(commands)
            except NoScriptError:
                self.load_scripts()
                self._execute(commands)  # the scripts are idempotent: replaying the page is safe
        except RedisError as exc:
            raise self._failed(f"writing {len(events)} changed events", exc) from exc

    def _execute(self, commands: list[tuple]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for args in commands:
            pipe.execute_command("EVALSHA", *args)
        pipe.execute(raise_on_error=True)

    # -- LookupCache -----------------------------------------------------------------
    def _get_hash_doc(self, key: str, what: str) -> Cached | None:
        try:
            document, marker = self._client.hmget(key, "d", "k")
        except RedisError as exc:
            raise self._failed(f"reading {what}", exc) from exc
        if document is not None:
            return Cached(None if document == b"" else document.decode())
        if marker is not None:  # latest: "k" = "" without a document
            return Cached(None)
        return None

    def get_latest(self, device_id: str) -> Cached | None:
        return self._get_hash_doc(self.keys.latest(device_id), f"the latest state of device {device_id!r}")

    def fill_latest(self, device_id: str, event: StoredEvent | None, ttl: int, negative_ttl: int) -> None:
        key = self.keys.latest(device_id)
        what = f"caching the latest state of device {device_id!r}"
        if event is None:
            self._eval("negative", [key], ["k", negative_ttl], what)
        else:
            self._eval("latest", [key], [sort_key(event), event.to_json(), ttl], what)

    def get_event(self, event_id: str) -> Cached | None:
        return self._get_hash_doc(self.keys.event(event_id), f"event {event_id}")

    def fill_event(self, event_id: str, event: StoredEvent | None, ttl: int, negative_ttl: int) -> None:
        key = self.keys.event(event_id)
        if event is None:
            self._eval("negative", [key], ["d", negative_ttl], f"caching event {event_id} as missing")
        else:
            self._eval("fill_event", [key], [event.to_json(), ttl], f"caching event {event_id}")

    def get_critical(self, device_id: str, since_ms: int, limit: int) -> list[str] | None:
        docs = self._eval("get_critical", [self.keys.critical(device_id)],
                          [since_ms, limit], f"reading the critical events of device {device_id!r}")
        if docs is None:
            return None
        return [doc.decode() for doc in docs]

    def fill_critical(self, device_id: str, events: Sequence[StoredEvent], covers_since_ms: int, ttl: int) -> None:
        keys = [self.keys.critical(device_id)]
        args: list[object] = [covers_since_ms, ttl, self.critical_cap]
        for event in events:
            keys.append(self.keys.event(event.event_id))
            args += [event.event_time_ms, event.to_json()]
        self._eval("fill_critical", keys, args,
                   f"caching the critical events of device {device_id!r}")

    def ping(self) -> None:
        try:
            self._client.ping()
        except RedisError as exc:
            raise self._failed("PING", exc) from exc
