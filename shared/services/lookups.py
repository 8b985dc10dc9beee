"""The lookup service: cache-aside reads of latest state, critical events and single events, on an event loop.

Each lookup asks Redis first. On a miss it reads Cassandra and fills Redis with a
TTL plus a random jitter (so fills made together do not expire together);
"not found" is cached too, for a short negative TTL, and only where nothing is
cached, so a change written meanwhile is never hidden. Misses on one key are
single-flight within the process: the first request reads Cassandra, concurrent
ones await its answer (``flight_wait`` at most, then 503 rather than another
read piled onto a slow store), so a burst of misses causes one Cassandra read.

Redis down (unreachable, timing out, a cluster down): the lookup is served from
Cassandra (``bypass``) with a warning, and Redis is left alone for
``redis_retry_after`` seconds (a circuit breaker). Then one request (the probe)
asks Redis while the others keep bypassing it, so a Redis still hung costs one
request a socket timeout, not every request arriving meanwhile: the probe's
answer closes the breaker, its failure starts another pause (logged at debug:
one warning per outage). A probe cancelled with its request frees the slot for
the next one; a healthy ``health()`` closes the breaker. A command Redis answers
with a refusal (``DependencyRefused``: a full Redis refusing a fill, a read-only
replica) opens no breaker: Redis is up and its entries are still served; the request goes on
as a miss answered from Cassandra, and the refusal is logged at most once per
``REFUSAL_LOG_INTERVAL``.
Cassandra down and nothing cached: ``DependencyUnavailable`` (HTTP 503). Every
answer carries the JSON document text straight from the cache or the canonical
encoding, so a hit is served without re-encoding, and its ``outcome`` (hit, miss,
negative, bypass) for the caller's metrics.

Every method is a coroutine for the worker's one event loop; the flights and the
breaker are plain state of that loop, so no locks.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypeVar

import orjson

from shared.domain.rules import Criticality, MeasurementRule
from shared.domain.stored import StoredEvent, current_copies, one_copy_each
from shared.domain.times import from_ms, to_ms, to_ms_ceil
from shared.domain.times import leap_second as leap_second  # re-exported: functions/parameters.py reads HTTP times
from shared.exceptions import DependencyRefused, DependencyUnavailable
from shared.ports.cache import SINCE_ALL, Cached, LookupCache
from shared.ports.event_reader import AsyncEventReader
from shared.services import health
from shared.services.singleflight import SingleFlight

logger = logging.getLogger(__name__)

V = TypeVar("V")  # what the cache holds
S = TypeVar("S")  # what the store returns

# hit: served from Redis; negative: Redis said "does not exist"; miss: read from Cassandra and cached (or Redis
# refused the fill, or the read); bypass: Redis unavailable, read from Cassandra.
Outcome = Literal["hit", "negative", "miss", "bypass"]

# Seconds between two warnings of Redis refusing a command (a full Redis refuses every fill: one line says it).
REFUSAL_LOG_INTERVAL = 60.0

# The last millisecond a datetime (and so a stored event time) can hold: 9999-12-31T23:59:59.999Z.
_LAST_MS = to_ms(datetime.max.replace(tzinfo=UTC))


@dataclass(frozen=True, slots=True)
class Lookup:
    """An answer: the JSON document (``None``: not found) and how the cache took part."""

    document: str | None
    outcome: Outcome

    @property
    def found(self) -> bool:
        return self.document is not None

    @property
    def cache(self) -> Literal["hit", "miss", "bypass"]:
        """The ``X-Cache`` header's value: a negative entry is a hit."""
        return "hit" if self.outcome == "negative" else self.outcome


class LookupService:
    """Cache-aside lookups over a ``LookupCache`` (Redis) and an ``AsyncEventReader`` (Cassandra)."""

    def __init__(self, cache: LookupCache, reader: AsyncEventReader, *, cache_ttl: int = 3600,
                 ttl_jitter: int = 300, negative_ttl: int = 5, critical_default_limit: int = 20,
                 critical_cap: int = 100, redis_retry_after: float = 5.0, flight_wait: float = 5.0,
                 health_timeout: float = 1.0, health_opened: health.Opened | None = None,
                 rules: Sequence[MeasurementRule] = (), monotonic: Callable[[], float] = time.monotonic) -> None:
        self._cache = cache
        self._reader = reader
        self._critical = Criticality(rules)
        self._ttl = cache_ttl
        self._jitter = ttl_jitter
        self._negative_ttl = negative_ttl
        self.critical_default_limit = critical_default_limit
        self._critical_cap = critical_cap
        self._retry_after = redis_retry_after
        self._health = health.Health({"redis": cache.ping, "cassandra": lambda: reader.ping(timeout=health_timeout)},
                                     timeout=health_timeout, opened=health_opened)
        self._monotonic = monotonic
        self._flights = SingleFlight(flight_wait)
        # The circuit breaker: None while closed, else when its pause ends (then one request at a time probes).
        self._redis_down_until: float | None = None
        self._redis_probing = False
        self._refusal_logged_at: float | None = None
        self._refusals_held = 0

    # -- Redis behind a breaker ------------------------------------------------------
    def _ttl_now(self) -> int:
        return self._ttl + (random.randint(0, self._jitter) if self._jitter else 0)

    def _redis_usable(self) -> bool:
        """The breaker is closed: Redis is asked (and filled)."""
        return self._redis_down_until is None

    def _redis_turn(self) -> Literal["closed", "probe", "bypass"]:
        """How this request may use Redis: ``closed`` asks it; ``probe`` asks it as the one request probing after the
        pause (it then calls ``_redis_probed``); ``bypass`` leaves it alone (paused, or another request probing)."""
        if self._redis_down_until is None:
            return "closed"
        if self._redis_probing or self._monotonic() < self._redis_down_until:
            return "bypass"
        self._redis_probing = True
        return "probe"

    def _redis_probed(self, answered: bool) -> None:
        """The probe is over: Redis answered (closes the breaker), or not (failed, or cancelled: the next request
        after the pause probes)."""
        self._redis_probing = False
        if answered and self._redis_down_until is not None:
            self._redis_down_until = None
            logger.info("Redis answers again; the lookups use the cache again")

    def _redis_failed(self, exc: DependencyUnavailable, doing: str) -> None:
        """Redis failed a command: an outage opens the breaker (or, open, starts another pause) with a warning
        once per opening; a refusal (the server up, saying no to this command: ``DependencyRefused``) is only
        logged, so the entries Redis still serves stay hits."""
        if isinstance(exc, DependencyRefused):
            self._redis_refused(exc, doing)
            return
        was_open = self._redis_down_until is not None
        self._redis_down_until = self._monotonic() + self._retry_after
        if was_open:
            logger.debug("Redis still failing while %s (%s); cache bypassed for %.1fs more",
                         doing, exc, self._retry_after)
        else:
            logger.warning("Redis failed while %s (%s); serving from Cassandra, cache bypassed for %.1fs "
                           "(then one request at a time probes it)", doing, exc, self._retry_after)

    def _redis_refused(self, exc: DependencyRefused, doing: str) -> None:
        """A warning at most once per ``REFUSAL_LOG_INTERVAL`` (a full Redis refuses every fill), the next one
        saying how many were held back meanwhile."""
        now = self._monotonic()
        if self._refusal_logged_at is not None and now - self._refusal_logged_at < REFUSAL_LOG_INTERVAL:
            self._refusals_held += 1
            return
        held, self._refusals_held, self._refusal_logged_at = self._refusals_held, 0, now
        logger.warning("Redis refused a command while %s (%s); answered from Cassandra, the cache stays in use%s",
                       doing, exc,
                       f" ({held} more refusals in the last {REFUSAL_LOG_INTERVAL:.0f} s were not logged)"
                       if held else "")

    async def _from_cache(self, get: Callable[[], Awaitable[V | None]], what: str) -> V | None:
        """The cache's answer; ``None`` on a miss, when Redis is (or just went) down, or refused the read.

        With the breaker open only the probe asks Redis; a refusal answers it too (Redis is up)."""
        turn = self._redis_turn()
        if turn == "bypass":
            return None
        answered = False
        try:
            value = await get()
            answered = True
            return value
        except DependencyUnavailable as exc:
            answered = isinstance(exc, DependencyRefused)
            self._redis_failed(exc, f"reading {what}")
            return None
        finally:
            if turn == "probe":  # the probe: released however it ended (a cancelled request included)
                self._redis_probed(answered)

    async def get_or_load(self, key: Hashable, what: str, get: Callable[[], Awaitable[V | None]],
                          read: Callable[[], Awaitable[S]], fill: Callable[[S], Awaitable[None]],
                          present: Callable[[S], V]) -> tuple[V, Outcome]:
        """Cache-aside: ``get()`` from Redis, else one ``read()`` per key in flight, ``fill()``-ed back.

        Returns the value and the outcome ("hit", "miss" or "bypass"). ``present``
        turns what the store returned into what the cache would have held. No
        re-check of the cache inside the flight: a request joins a flight without
        awaiting anything after its miss, so a second read needs a miss answered
        just before a fill landed and resumed just after its flight ended; rare and
        harmless (fills are idempotent), unlike a round trip added to every miss.
        """
        hit = await self._from_cache(get, what)
        if hit is not None:
            return hit, "hit"
        asked_redis = self._redis_usable()

        async def load() -> tuple[V, Outcome]:
            filling = self._redis_usable()
            value = await read()
            if filling:
                try:
                    await fill(value)
                except DependencyUnavailable as exc:
                    self._redis_failed(exc, f"filling {what}")
            return present(value), "miss" if filling else "bypass"

        value, outcome = await self._flights.do(key, what, load)
        return value, outcome if asked_redis else "bypass"

    # -- the critical flag (rows written before it existed get the rules, as the change feed decides them) -------
    async def _read_latest(self, device_id: str) -> StoredEvent | None:
        event = await self._reader.latest(device_id)
        return self._critical.decided(event) if event is not None else None

    async def _read_event(self, event_id: uuid.UUID) -> StoredEvent | None:
        event = await self._reader.event(event_id)
        return self._critical.decided(event) if event is not None else None

    # -- lookups ------------------------------------------------------------------------
    async def _document(self, key: tuple[str, str], what: str, get: Callable[[], Awaitable[Cached | None]],
                        read: Callable[[], Awaitable[StoredEvent | None]],
                        fill: Callable[[StoredEvent | None], Awaitable[None]]) -> Lookup:
        cached, outcome = await self.get_or_load(key, what, get, read, fill, _as_cached)
        if outcome == "hit" and cached.document is None:
            return Lookup(None, "negative")
        return Lookup(cached.document, outcome)

    async def latest(self, device_id: str) -> Lookup:
        cache = self._cache
        return await self._document(
            ("latest", device_id), f"the latest state of {device_id!r}",
            lambda: cache.get_latest(device_id),
            lambda: self._read_latest(device_id),
            lambda event: cache.fill_latest(device_id, event, self._ttl_now(), self._negative_ttl))

    async def event(self, event_id: uuid.UUID) -> Lookup:
        key, cache = str(event_id), self._cache
        return await self._document(
            ("event", key), f"event {key}",
            lambda: cache.get_event(key),
            lambda: self._read_event(event_id),
            lambda event: cache.fill_event(key, event, self._ttl_now(), self._negative_ttl))

    async def critical(self, device_id: str, *, since: datetime | None = None, limit: int | None = None) -> Lookup:
        """``{"device_id", "events": [...newest first]}``; ``document=None`` when the device is unknown.

        A device without a latest state is unknown only when it has no critical events either: a correction that
        moved its newest event to another device leaves it without one (docs/data-model.md) while it still has
        its other events. Such a list, when empty, is cached for the negative TTL only, so probing unknown
        devices leaves nothing in Redis for longer than their negative latest entries.
        """
        limit = limit or self.critical_default_limit
        # Event times are whole milliseconds: an event is at or after `since` when it is at or after `since` rounded
        # up, the bound both Redis (its score) and Cassandra (which cuts a bound value to milliseconds, and would
        # take the millisecond before) are asked with. After 9999-12-31T23:59:59.999Z no event can be (nor a datetime).
        since_ms = SINCE_ALL if since is None else to_ms_ceil(since)
        what = f"the critical events of {device_id!r}"
        try:
            device = await self.latest(device_id)
        except DependencyUnavailable:
            # Cassandra failed the latest state, whose entry expired or was evicted before the critical set (each
            # has its own TTL jitter, and the feed renews them on different events). A cached list naming events is
            # the answer whatever that state is (a device without one lists its events too); an empty one is not:
            # it is a 404 for an unknown device, so without the latest state it stays a 503.
            if since_ms <= _LAST_MS and (cached := await self._from_cache(
                    lambda: self._cache.get_critical(device_id, since_ms, limit), what)):
                return Lookup(_critical_body(device_id, cached), "hit")
            raise
        if since_ms > _LAST_MS:
            return Lookup(_critical_body(device_id, []), device.outcome) if device.found else device
        if since is not None:
            since = from_ms(since_ms)
        want = max(limit, self._critical_cap)
        # Rows of one event id re-sent with another event time (a correction) are collapsed to the copy Redis keeps
        # (one_copy_each), so a miss lists what the hit after its fill lists. A row whose event has a copy outside
        # the rows read (a correction to an older time than they reach, or before `since`; a correction no longer
        # critical) is superseded too: the rows' ids are read from events_by_id, which holds each event's current
        # copy, in one batched read, and a row that copy is kept over is left out (current_copies). A quarter more
        # rows than wanted are read, so dropping superseded copies shortens the page below `limit` only when more
        # than `want - limit + want // 4` of the rows read are (a later request then reads again, for the same
        # answer).
        fetch = want + want // 4

        async def read() -> tuple[int, list[StoredEvent]]:
            rows = await self._reader.critical(device_id, since=since, limit=fetch)
            # every critical event at or after `covers` was read (all of them when fewer than asked for came back)
            covers = since_ms if len(rows) < fetch else rows[-1].event_time_ms + 1
            # Rows without the flag decided before copies are compared (Redis compares the documents the change feed
            # wrote, decided), and those the rules do not find critical left out after, as the feed and the rebuild
            # leave them out of the list (the table holds no row flagged false: ingest writes it for critical ones).
            events = one_copy_each(self._critical.all_decided(rows))
            copies = await self._reader.events([event.event_id for event in events])
            current = current_copies(events, {key: self._critical.decided(copy) for key, copy in copies.items()})
            return covers, [event for event in current if event.critical]

        async def fill(found: tuple[int, list[StoredEvent]]) -> None:
            covers, events = found
            ttl = self._ttl_now() if device.found or events else self._negative_ttl
            await self._cache.fill_critical(device_id, events, covers, ttl)

        docs, outcome = await self.get_or_load(
            ("critical", device_id, since_ms, limit, device.found), what,
            lambda: self._cache.get_critical(device_id, since_ms, limit),
            read, fill, lambda found: [event.to_json() for event in found[1][:limit]])
        if not device.found and not docs:
            return Lookup(None, "negative" if outcome == "hit" else outcome)
        return Lookup(_critical_body(device_id, docs), outcome)

    # -- health ------------------------------------------------------------------------
    async def health(self) -> health.Report:
        """``(healthy, body)``: Redis and Cassandra checked at once, each within the health timeout."""
        healthy, body = await self._health()
        if healthy and not self._redis_usable():
            self._redis_down_until = None  # Redis answers again: stop bypassing it (a running probe just ends)
            logger.info("Redis answers the health check again; the lookups use the cache again")
        return healthy, body


def _critical_body(device_id: str, docs: list[str]) -> str:
    return orjson.dumps({"device_id": device_id, "events": [orjson.Fragment(doc) for doc in docs]}).decode()


def _as_cached(event: StoredEvent | None) -> Cached:
    return Cached(event.to_json() if event is not None else None)
