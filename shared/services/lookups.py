"""The lookup service: cache-aside reads of latest state, critical events and single events.

Each lookup asks Redis first. On a miss it reads Cassandra and fills Redis with a
TTL plus a random jitter (so fills made together do not expire together);
"not found" is cached too, for a short negative TTL, and only where nothing is
cached, so a change written meanwhile is never hidden. Misses on one key are
single-flight within the process: the first request reads Cassandra, concurrent
ones wait for its answer (``flight_wait`` at most, then 503 rather than another
read piled onto a slow store), and the reader re-checks the cache first, so a
burst of misses causes one Cassandra read.

Redis down: the lookup is served from Cassandra (``cache = "bypass"``) with a
warning, and Redis is left alone for ``redis_retry_after_seconds``. Cassandra down
and nothing cached: ``DependencyUnavailable`` (HTTP 503). Every answer carries the
JSON document text straight from the cache or the canonical encoding, so a hit
is served without re-encoding.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import TypeAdapter, ValidationError

from shared.domain.events import DeviceId
from shared.exceptions import DependencyUnavailable, PermanentError
from shared.ports.cache import SINCE_ALL, Cached, LookupCache
from shared.ports.event_reader import EventReader
from shared.ports.stored import StoredEvent, to_ms

logger = logging.getLogger(__name__)

T = TypeVar("T")
CacheStatus = Literal["hit", "miss", "bypass"]

MAX_CRITICAL_LIMIT = 1000


class BadParameter(PermanentError):
    """A request parameter is invalid; ``parameter`` names it (HTTP 400)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.detail = message


_DEVICE_ID = TypeAdapter(DeviceId)
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_LIMIT = re.compile(r"^[0-9]{1,9}$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def parse_device_id(value: str | None) -> str:
    try:
        return _DEVICE_ID.validate_python(value)
    except ValidationError:
        raise BadParameter("device_id", f"must be 1-128 characters of A-Z a-z 0-9 . _ : -, got {value!r}") from None


def parse_event_id(value: str | None) -> uuid.UUID:
    if value is None or not _UUID.match(value):
        raise BadParameter("event_id", f"must be a UUID such as 1b4e28ba-2fa1-11d2-883f-0016d3cca427, got {value!r}")
    return uuid.UUID(value)


def parse_limit(value: str | None, default: int) -> int:
    if value is None or value == "":
        return default
    if not _LIMIT.match(value) or not 1 <= int(value) <= MAX_CRITICAL_LIMIT:
        raise BadParameter("limit", f"must be an integer from 1 to {MAX_CRITICAL_LIMIT}, got {value!r}")
    return int(value)


def parse_since(value: str | None) -> datetime | None:
    if value is None or value == "":
        return None
    problem = f"must be an RFC 3339 time with an offset, e.g. 2026-11-23T09:30:00Z; got {value!r}"
    if not _RFC3339.match(value):
        raise BadParameter("since", problem)
    text = value.upper().replace(" ", "T")
    if "." in text:  # Python parses at most microseconds
        head, _, tail = text.partition(".")
        fraction = re.match(r"\d+", tail)  # the pattern guarantees digits, then the offset
        assert fraction is not None
        text = f"{head}.{fraction.group()[:6].ljust(6, '0')}{tail[fraction.end():]}"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise BadParameter("since", problem) from None


@dataclass(frozen=True, slots=True)
class Lookup:
    """An answer: the JSON document (``None``: not found) and how the cache took part."""

    document: str | None
    cache: CacheStatus

    @property
    def found(self) -> bool:
        return self.document is not None


class SingleFlight:
    """At most one call per key at a time in this process; concurrent callers share its outcome."""

    def __init__(self, wait_seconds: float) -> None:
        self._wait = wait_seconds
        self._lock = threading.Lock()
        self._flights: dict[Any, Future] = {}

    def do(self, key: Any, call: Callable[[], T]) -> T:
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = Future()
        assert flight is not None
        if not leader:
            try:
                return flight.result(timeout=self._wait)
            except FutureTimeout:
                # The read in flight is stuck: piling more reads onto a slow store is what single flight is
                # there to prevent, so this request gives up (HTTP 503) instead of reading too.
                raise DependencyUnavailable(
                    "cassandra", f"no answer for {key[0]} {key[1]!r} within {self._wait:g}s (read in progress)"
                ) from None
        try:
            value = call()
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        else:
            flight.set_result(value)
            return value
        finally:
            with self._lock:
                self._flights.pop(key, None)


class LookupService:
    """Cache-aside lookups over a ``LookupCache`` (Redis) and an ``EventReader`` (Cassandra)."""

    def __init__(self, cache: LookupCache, reader: EventReader, *, cache_ttl: int = 3600, ttl_jitter: int = 300,
                 negative_ttl: int = 5, critical_default_limit: int = 20, critical_cap: int = 100,
                 redis_retry_after: float = 5.0, flight_wait: float = 5.0, health_timeout: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._cache = cache
        self._reader = reader
        self._ttl = cache_ttl
        self._jitter = ttl_jitter
        self._negative_ttl = negative_ttl
        self.critical_default_limit = critical_default_limit
        self._critical_cap = critical_cap
        self._retry_after = redis_retry_after
        self._health_timeout = health_timeout
        self._monotonic = monotonic
        self._flights = SingleFlight(flight_wait)
        self._redis_down_until = 0.0
        self._pool: ThreadPoolExecutor | None = None

    # -- Redis with a breaker --------------------------------------------------------
    def _ttl_now(self) -> int:
        return self._ttl + (random.randint(0, self._jitter) if self._jitter else 0)

    def _redis_usable(self) -> bool:
        return self._monotonic() >= self._redis_down_until

    def _redis_failed(self, exc: DependencyUnavailable, doing: str) -> None:
        self._redis_down_until = self._monotonic() + self._retry_after
        logger.warning("Redis failed while %s (%s); serving from Cassandra, cache bypassed for %.1fs",
                       doing, exc, self._retry_after)

    def _cached(self, get: Callable[[], T], doing: str) -> tuple[T | None, bool]:
        """``(value, usable)``: the cache's answer, or ``(None, False)`` when Redis is (or just went) down."""
        if not self._redis_usable():
            return None, False
        try:
            return get(), True
        except DependencyUnavailable as exc:
            self._redis_failed(exc, doing)
            return None, False

    def _fill(self, fill: Callable[[], None], doing: str) -> None:
        try:
            fill()
        except DependencyUnavailable as exc:
            self._redis_failed(exc, doing)

    def _aside(self, key: tuple, get: Callable[[], Cached | None], read: Callable[[], StoredEvent | None],
               fill: Callable[[StoredEvent | None], None], doing: str) -> Lookup:
        hit, usable = self._cached(get, doing)
        if hit is not None:
            return Lookup(hit.document, "hit")

        def load() -> Lookup:
            if usable:  # re-check: a flight that just finished may have filled the cache
                again, still_usable = self._cached(get, doing)
                if again is not None:
                    return Lookup(again.document, "hit")
            else:
                still_usable = False
            event = read()
            if still_usable:
                self._fill(lambda: fill(event), f"filling {doing}")
            return Lookup(event.to_json() if event else None, "miss" if still_usable else "bypass")

        result = self._flights.do(key, load)
        if not usable and result.cache != "bypass":
            return Lookup(result.document, "bypass")
        return result

    # -- lookups ------------------------------------------------------------------------
    def latest(self, device_id: str) -> Lookup:
        return self._aside(
            ("latest", device_id),
            lambda: self._cache.get_latest(device_id),
            lambda: self._reader.latest(device_id),
            lambda event: self._cache.fill_latest(device_id, event, self._ttl_now(), self._negative_ttl),
            f"the latest state of {device_id!r}",
        )

    def event(self, event_id: uuid.UUID) -> Lookup:
        key = str(event_id)
        return self._aside(
            ("event", key),
            lambda: self._cache.get_event(key),
            lambda: self._reader.event(event_id),
            lambda event: self._cache.fill_event(key, event, self._ttl_now(), self._negative_ttl),
            f"event {key}",
        )

    def critical(self, device_id: str, *, since: datetime | None = None, limit: int | None = None) -> Lookup:
        """``{"device_id", "events": [...newest first]}``; ``document=None`` when the device is unknown."""
        limit = limit or self.critical_default_limit
        device = self.latest(device_id)
        if not device.found:
            return Lookup(None, device.cache)
        since_ms = to_ms(since) if since is not None else SINCE_ALL
        doing = f"the critical events of {device_id!r}"
        docs, usable = self._cached(lambda: self._cache.get_critical(device_id, since_ms, limit), doing)
        if docs is not None:
            return Lookup(self._critical_document(device_id, docs), "hit")

        def load() -> tuple[list[str], CacheStatus]:
            still_usable = usable
            if usable:
                again, still_usable = self._cached(lambda: self._cache.get_critical(device_id, since_ms, limit), doing)
                if again is not None:
                    return again, "hit"
            want = max(limit, self._critical_cap)
            events = self._reader.critical(device_id, since=since, limit=want)
            if still_usable:
                covers = since_ms if len(events) < want else events[-1].event_time_ms + 1
                self._fill(lambda: self._cache.fill_critical(device_id, events, covers, self._ttl_now()),
                           f"filling {doing}")
            return [event.to_json() for event in events[:limit]], "miss" if still_usable else "bypass"

        docs, status = self._flights.do(("critical", device_id, since_ms, limit), load)
        return Lookup(self._critical_document(device_id, docs), status if usable else "bypass")

    @staticmethod
    def _critical_document(device_id: str, docs: list[str]) -> str:
        return '{"device_id":' + json.dumps(device_id) + ',"events":[' + ",".join(docs) + "]}"

    # -- health ------------------------------------------------------------------------
    def health(self) -> tuple[bool, dict[str, Any]]:
        """``(healthy, body)``: each dependency checked concurrently within the health timeout."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="health")
        checks = {"redis": lambda: self._cache.ping(),
                  "cassandra": lambda: self._reader.ping(timeout=self._health_timeout)}
        started = time.perf_counter()
        futures = {name: self._pool.submit(_timed, check) for name, check in checks.items()}
        deadline = started + self._health_timeout
        dependencies: dict[str, Any] = {}
        for name, future in futures.items():
            try:
                elapsed = future.result(timeout=max(0.0, deadline - time.perf_counter()))
                dependencies[name] = {"status": "up", "latency_ms": round(elapsed * 1000, 2)}
            except FutureTimeout:
                dependencies[name] = {"status": "down", "error": f"no answer within {self._health_timeout:g}s"}
            except DependencyUnavailable as exc:
                dependencies[name] = {"status": "down", "error": str(exc)}
        healthy = all(d["status"] == "up" for d in dependencies.values())
        if healthy and not self._redis_usable():
            self._redis_down_until = 0.0  # Redis answers again: stop bypassing it
        return healthy, {"status": "ok" if healthy else "unavailable", "dependencies": dependencies}


def _timed(check: Callable[[], None]) -> float:
    started = time.perf_counter()
    check()
    return time.perf_counter() - started
