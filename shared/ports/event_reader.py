"""Port of the lookups' reads from the event store (Cassandra)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from shared.domain.stored import StoredEvent


@dataclass(frozen=True, slots=True)
class Newest:
    """A device's position in ``device_latest`` and the copy of its event in ``events_by_id``.

    ``event_time``: the event time the position was written with (``None`` if the row lacks it); ``event``: the
    event's copy as the latest state reads it (:meth:`EventReader.latest`), ``None`` when a correction moved it to
    another device. A correction to an earlier time loses to the position (written with the event time as write
    timestamp), so the copy's event time can be earlier than the position's: the copy is then not the device's
    newest event, and a newer one of it may be at or before a time the copy is."""

    event_time: datetime | None
    event_id: uuid.UUID
    event: StoredEvent | None


class EventReader(Protocol):
    """Point reads, each bounded by the reader's timeout.

    Every method raises ``DependencyUnavailable`` when the store cannot answer in
    time (the HTTP layer maps that to 503); "not found" is ``None`` or an empty list.
    """

    def latest(self, device_id: str) -> StoredEvent | None:
        """The device's newest event by event time (``device_latest``)."""

    def newest(self, device_id: str) -> Newest | None:
        """The device's position with its event time, and that event's copy (two reads, as :meth:`latest`);
        ``None`` when no event was ever stored for the device (no position in ``device_latest``)."""

    def event(self, event_id: uuid.UUID) -> StoredEvent | None:
        """One event by id (``events_by_id``)."""

    def critical(self, device_id: str, *, since: datetime | None, limit: int) -> list[StoredEvent]:
        """The device's critical events with event time at or after ``since``, newest first, at most ``limit``."""

    def ping(self, timeout: float | None = None) -> None:
        """Return when a data read of the store succeeds within ``timeout`` (the reader's own by default)."""


class AsyncEventReader(Protocol):
    """The lookups' reads as coroutines, for an event loop: the same contract as :class:`EventReader`."""

    async def latest(self, device_id: str) -> StoredEvent | None:
        """The device's newest event by event time."""

    async def event(self, event_id: uuid.UUID) -> StoredEvent | None:
        """One event by id."""

    async def events(self, event_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, StoredEvent]:
        """Events by id, read together (each as :meth:`event` reads it); an id not found is left out."""

    async def critical(self, device_id: str, *, since: datetime | None, limit: int) -> list[StoredEvent]:
        """The device's critical events with event time at or after ``since``, newest first, at most ``limit``."""

    async def ping(self, timeout: float | None = None) -> None:
        """Return when a data read of the store succeeds within ``timeout`` (the reader's own by default)."""
