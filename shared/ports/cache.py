"""Ports of the Redis cache: what the change feed writes and what the lookups read and fill.

The layout behind them is in ``docs/redis-layout.md``. Every write is idempotent
and order-independent: the latest state is replaced only by a newer event (event
time, then event id), sets are keyed by event id, so replaying a page or two
writers racing leave the same state as one clean pass.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from shared.domain.stored import StoredEvent
from shared.domain.times import to_ms

# A since-bound meaning "from the beginning" (milliseconds since the epoch).
SINCE_ALL = -(2**53)


@dataclass(frozen=True, slots=True)
class Cached:
    """A cache entry: the JSON document, or ``None`` when the cache holds "does not exist"."""

    document: str | None


class ChangeSink(Protocol):
    """Where the change feed puts changed events (Redis)."""

    def apply(self, events: Sequence[StoredEvent]) -> list[str]:
        """Update each device's latest state and record the critical events, or raise.

        ``critical`` is already decided on every event given. Idempotent and
        order-independent (see the module docstring). Returns when every write is
        acknowledged; raises ``DependencyUnavailable`` otherwise, after which
        some writes may have landed (a replay repairs that).

        A device whose latest state is not in the cache (expired, evicted, never
        written) is left without one and returned: the cache cannot tell whether
        the event is the device's newest, so the caller puts the store's latest
        state with :meth:`put_latest`.
        """

    def put_latest(self, events: Sequence[StoredEvent]) -> None:
        """Each event as its device's latest state unless the cache holds a newer one (a missing one is
        created); raises ``DependencyUnavailable`` when the cache fails."""


@dataclass(frozen=True, slots=True)
class LatestFound:
    """What the store says of devices whose latest state the cache lost (:meth:`LatestStates.latest_found`).

    ``states``: the newest event of each device that has one. ``floors``: device -> (event time, event id) of a
    position that names no latest state of the device (its event was moved to another device id by a correction,
    docs/data-model.md): the device has none, and an event of it at or before that position (event time, then
    event id) is none either, as it loses to the position in the store."""

    states: list[StoredEvent]
    floors: dict[str, tuple[datetime, uuid.UUID]] = field(default_factory=dict)

    def below_floor(self, event: StoredEvent) -> bool:
        """Whether ``event`` is at or before its device's floor: the store would not make it the latest state."""
        floor = self.floors.get(event.device_id)
        if floor is None:
            return False
        at, event_id = to_ms(floor[0]), str(floor[1])
        mine = event.event_time_ms
        return mine < at or (mine == at and str(event.event_id) <= event_id)


class LatestStates(Protocol):
    """The store's latest state of devices (``device_latest``), for a cache that lost them."""

    def latest_found(self, device_ids: Sequence[str]) -> LatestFound:
        """The newest event of each device that has one, and the position of each whose position names no state
        of it; raises ``DependencyUnavailable`` on failure."""


class LookupCache(Protocol):
    """The cache-aside side of Redis, awaited on the lookups' event loop.

    Every method raises ``DependencyUnavailable`` when Redis fails.
    """

    async def get_latest(self, device_id: str) -> Cached | None:
        """The cached latest state of a device; ``None`` on a miss."""

    async def fill_latest(self, device_id: str, event: StoredEvent | None, ttl: int, negative_ttl: int) -> None:
        """Cache the latest state read from the store, unless the cache already holds a newer one.

        ``event=None`` caches "no such device" for ``negative_ttl`` seconds, only
        where nothing is cached (a change written meanwhile is never hidden).
        """

    async def get_event(self, event_id: str) -> Cached | None:
        """The cached event; ``None`` on a miss."""

    async def fill_event(self, event_id: str, event: StoredEvent | None, ttl: int, negative_ttl: int) -> None:
        """Cache an event read from the store (``None``: "no such event", only where nothing is cached)."""

    async def get_critical(self, device_id: str, since_ms: int, limit: int) -> list[str] | None:
        """Up to ``limit`` critical event documents at or after ``since_ms``, newest first.

        ``None`` when the cache cannot answer exactly: nothing cached, or the
        cached set is not known to be complete over the range asked for.
        """

    async def fill_critical(self, device_id: str, events: Sequence[StoredEvent], covers_since_ms: int,
                            ttl: int) -> None:
        """Cache critical events of a device read from the store.

        ``events`` holds *every* critical event of the device with event time at
        or after ``covers_since_ms`` (``SINCE_ALL``: all of them). The cache merges
        them with what it holds and from then on answers exactly for ranges it
        knows to be complete, however the per-device cap trims the set.
        """

    async def ping(self) -> None:
        """Return when Redis answers, raise ``DependencyUnavailable`` otherwise."""
