"""Ports of the Redis rebuild: the event log it reads (Cassandra) and the cache generation it fills (Redis).

The order that makes a killed rebuild resumable: write a page of devices to the
building generation, *then* save the position after that page. A kill between
the two rewrites that page, which the idempotent writes absorb.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from shared.domain.stored import StoredEvent


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """One device as the log's device table lists it: its scan position (token), its id and latest event.

    ``latest`` is ``None`` for a device whose position names an event ``events_by_id`` no longer holds for it
    (a correction moved its newest event to another device id): it has no latest state, but its other events,
    critical ones included, are still its own."""

    token: int
    device_id: str
    latest: StoredEvent | None


class DeviceLog(Protocol):
    """The event log, read device by device. Every method raises ``DependencyUnavailable``."""

    @property
    def rows_read(self) -> int:
        """The rows this log has read so far, of every table and page, including reads a method makes that the
        caller cannot see (a device's latest event by id, a page read again): what a rate limit in rows charges."""

    def devices(self, after: int | None, limit: int) -> list[DeviceRow]:
        """Up to ``limit`` devices in scan (token) order, strictly after ``after`` (``None``: from the start):
        every device with a position, those without a latest state too."""

    def device(self, device_id: str) -> DeviceRow | None:
        """One device's row; ``None`` when the log has no position of it (no such device)."""

    def critical(self, device_id: str, since_ms: int) -> list[StoredEvent]:
        """Every critical event of the device with event time at or after ``since_ms``: :meth:`PagedDeviceLog.current`
        of its :meth:`PagedDeviceLog.critical_rows`, for one device."""


@runtime_checkable
class PagedDeviceLog(DeviceLog, Protocol):
    """A ``DeviceLog`` that reads the critical events of a page of devices in two steps, so that the copies that
    decide which rows are current are read once for the whole page, not once per device (a round trip, on Cosmos DB a
    request, per device with any critical row). The full rebuild uses it when the log offers it."""

    def critical_rows(self, device_id: str, since_ms: int) -> list[StoredEvent]:
        """The device's critical rows with event time at or after ``since_ms``, as stored: some may be copies a
        correction superseded (:meth:`current` leaves those out)."""

    def current(self, events_by_device: Mapping[str, Sequence[StoredEvent]]) -> dict[str, list[StoredEvent]]:
        """Each device's rows (from :meth:`critical_rows`), one copy of each event id (the one kept, as Redis keeps
        one member per id: ``one_copy_each``), less those their event's current copy supersedes, the copies of every
        device's rows read together; ``rows_read`` counts them (at most one a row)."""


@dataclass(frozen=True, slots=True)
class Build:
    """A generation being filled: its number, the position saved (``None``: from the start), its since bound."""

    generation: int
    position: int | None
    since_ms: int


class CacheBuilder(Protocol):
    """The Redis side of a rebuild. Every method raises ``DependencyUnavailable``."""

    def in_progress(self) -> Build | None:
        """The build a resume would continue (its generation, saved position and ``since_ms``), if there is one."""

    def begin(self, since_ms: int, *, resume: bool) -> Build:
        """Resume the build in progress with the same ``since_ms`` (when ``resume``), or claim a new generation.

        Returns once every change-feed writer writes to the building generation too."""

    def stream_since_ms(self) -> int:
        """The event time from which the critical stream and its markers may still hold a critical event (what
        the change feed would have left of them): a rebuild with a later ``since_ms`` reads its critical events
        from here, for the stream, so that a replay after it adds no event a replay on the live generation would
        not add."""

    def write(self, generation: int, latest: Sequence[StoredEvent],
              critical: Mapping[str, Sequence[StoredEvent]], since_ms: int) -> None:
        """Write devices' latest states and complete critical lists (from ``since_ms``) to ``generation``,
        and offer their critical events (those before ``since_ms`` too) to the generation's stream candidates,
        with their stream markers. Idempotent."""

    def save_position(self, generation: int, position: int) -> None:
        """Record that every device up to ``position`` is written (called after :meth:`write` returns)."""

    def release(self, generation: int) -> None:
        """Give up this builder's claim on the build of ``generation`` after a failure, keeping its saved position,
        so the next rebuild resumes it at once (nothing if the claim is no longer this builder's). Never raises."""

    def finish(self, generation: int) -> int:
        """Write the critical stream from the candidates, switch readers to ``generation`` atomically, recording
        the generation it replaced for deletion, and wait until no reader reads that one. Returns it."""

    def cleanup(self) -> list[int]:
        """Delete every generation recorded for deletion (replaced, or abandoned by ``begin(resume=False)``);
        a generation whose deletion fails stays recorded for the next call. Returns the generations deleted."""

    def clear(self, device_id: str, event_ids: Collection[str] = ()) -> None:
        """Delete one device's keys in the live generation (``--devices``), before its state is read again, and the
        cached documents of ``event_ids`` and of the events those keys name, so the refresh replaces them."""

    def refresh(self, device_id: str, latest: StoredEvent | None, critical: Sequence[StoredEvent],
                since_ms: int) -> None:
        """Write one device's state, read after :meth:`clear`, into the live generation with the merging scripts:
        a change the feed applied after the read stays (the newer latest state wins, members are only added)."""
