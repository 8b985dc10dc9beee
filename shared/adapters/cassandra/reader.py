"""``CassandraEventReader``: the lookups' point reads, each bounded by a timeout.

Reads ``device_latest``, ``events_by_id`` and ``critical_events_by_device``
through :class:`~shared.adapters.cassandra.query.Queries` (prepared on first use,
never in ``__init__``). Every driver failure (timeout, no host, throttling left
after the session's retries) becomes ``DependencyUnavailable("cassandra", ...)``,
which the HTTP layer turns into a 503.
:func:`stored_event` converts a row of any event table; the change feed readers
use it too.

A device's latest state is two reads: its position in ``device_latest`` (which
event is its newest: :data:`POSITION_SELECT`), then that event from
``events_by_id`` (:func:`latest_event`). ``device_latest`` is written with the
event time as write timestamp, and an event and its correction (or two events of
one millisecond whose ids give the same timestamp digits) tie: Cassandra then keeps
the greater value cell by cell, so only the position is read there, which cannot
mix; ``events_by_id`` holds the later copy of an event. See
``shared.adapters.cassandra.event_store``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from cassandra.cluster import ResponseFuture, Session

from shared.adapters.cassandra.query import CASSANDRA_ERRORS, Queries, describe
from shared.adapters.cassandra.rows import as_dict, stored_time
from shared.domain.stored import StoredEvent
from shared.domain.times import utc
from shared.ports.cache import LatestFound
from shared.ports.event_reader import Newest
from shared.ports.ingest import StoredCopy

logger = logging.getLogger(__name__)

# Columns every reader selects, in this order (see migrations.EVENT_COLUMNS).
EVENT_SELECT = (
    "event_id, device_id, event_time, event_type, severity, critical, measurements, attributes, "
    "schema_version, enqueued_time"
)

# What readers take from device_latest: the device's position (which event is its newest), never its content.
POSITION_SELECT = "device_id, event_id"

_STATEMENTS = {
    "latest": f"SELECT {POSITION_SELECT} FROM {{ks}}.device_latest WHERE device_id = ?",
    "event": f"SELECT {EVENT_SELECT} FROM {{ks}}.events_by_id WHERE event_id = ?",
    # Many partitions in one request: the asyncio reader coalesces concurrent point reads (aio.py).
    "latest_in": f"SELECT {POSITION_SELECT} FROM {{ks}}.device_latest WHERE device_id IN ?",
    # The change feed's (latest_found): with the position's event time, the floor of a device it names no state of.
    "positions_in": f"SELECT {POSITION_SELECT}, event_time FROM {{ks}}.device_latest WHERE device_id IN ?",
    "event_in": f"SELECT {EVENT_SELECT} FROM {{ks}}.events_by_id WHERE event_id IN ?",
    "critical": f"SELECT {EVENT_SELECT} FROM {{ks}}.critical_events_by_device WHERE device_id = ? LIMIT ?",
    "critical_since": (
        f"SELECT {EVENT_SELECT} FROM {{ks}}.critical_events_by_device WHERE device_id = ? AND event_time >= ? LIMIT ?"
    ),
}

__all__ = ["CASSANDRA_ERRORS", "EVENT_SELECT", "HEALTH_PROBE_DEVICE", "POSITION_SELECT", "CassandraEventReader",
           "CassandraStoredCopies", "describe", "latest_event", "latest_events", "positions", "stored_event"]


# Not a valid device id (docs/events.md), so never written: the health probe's read finds nothing, cheaply.
HEALTH_PROBE_DEVICE = "#sluice-health-probe"


def stored_event(row: Any) -> StoredEvent:
    """A row selected with :data:`EVENT_SELECT` (its timestamps through :func:`stored_time`)."""
    return StoredEvent(
        event_id=row.event_id,
        device_id=row.device_id,
        event_time=stored_time(row.event_time),
        event_type=row.event_type,
        severity=row.severity,
        critical=row.critical,
        measurements=as_dict(row.measurements),
        attributes=as_dict(row.attributes),
        schema_version=row.schema_version if row.schema_version is not None else 1,
        enqueued_time=stored_time(row.enqueued_time),
    )


def latest_event(device_id: str, event_id: uuid.UUID, row: Any | None) -> StoredEvent | None:
    """The device's latest state: ``row``, the ``events_by_id`` row of the event its ``device_latest`` names.

    ``None`` when that row is missing or now belongs to another device (a correction re-sent under the id with
    another device id): ingest writes ``device_latest`` after ``events_by_id``, so neither happens but for a
    position written before it did, or an id re-used across devices; logged, as the store disagrees with itself.
    """
    if row is None or row.device_id != device_id:
        logger.warning("device_latest of %r names event %s, which events_by_id %s", device_id, event_id,
                       "lacks" if row is None else f"holds for device {row.device_id!r}")
        return None
    return stored_event(row)


def positions(rows: Iterable[Any]) -> dict[str, uuid.UUID]:
    """Device id -> the event id its ``device_latest`` row names (a row naming none left out)."""
    return {row.device_id: row.event_id for row in rows if row.event_id is not None}


def latest_events(devices: Mapping[str, uuid.UUID], event_rows: Iterable[Any]) -> list[tuple[str, StoredEvent]]:
    """``(device id, latest state)`` of each of ``devices`` (:func:`positions`) from the ``events_by_id`` rows of
    their event ids; a device whose event is not among them is left out (:func:`latest_event`)."""
    by_id = {row.event_id: row for row in event_rows}
    found = ((device_id, latest_event(device_id, event_id, by_id.get(event_id)))
             for device_id, event_id in devices.items())
    return [(device_id, event) for device_id, event in found if event is not None]


class CassandraEventReader:
    """Implements ``shared.ports.event_reader.EventReader``."""

    def __init__(self, session: Session | Callable[[], Session], keyspace: str, *, timeout: float = 2.0) -> None:
        # A factory lets the first lookup find Cassandra down and answer 503, instead of failing at start-up.
        self._queries = Queries(session, keyspace, _STATEMENTS, timeout=timeout)

    @property
    def opened(self) -> bool:
        """Whether the session is connected and the reads prepared (the health check's "connecting" ends there)."""
        return self._queries.opened

    @property
    def timeout(self) -> float:
        """Each read's timeout, unless the read names its own."""
        return self._queries.timeout

    def connect(self) -> None:
        """Connect the session, if not done yet (blocks)."""
        self._queries.session()

    def prepare(self) -> None:
        """Connect and prepare the reads, if not done yet (blocks)."""
        self._queries.open()

    def _rows(self, name: str, params: tuple[Any, ...], what: str, *, timeout: float | None = None) -> list[Any]:
        return self._queries.rows(name, params, what, timeout=timeout)

    def start(self, name: str, params: tuple[Any, ...], *, timeout: float | None = None) -> ResponseFuture:
        """Send one of the reads without waiting (``aio.py`` awaits it on an event loop); raises driver errors."""
        queries = self._queries
        return queries.session().execute_async(queries.statement(name), params, timeout=timeout or queries.timeout)

    def latest(self, device_id: str) -> StoredEvent | None:
        """The device's position in ``device_latest``, then that event from ``events_by_id`` (two reads)."""
        rows = self._rows("latest", (device_id,), f"the latest state of device {device_id!r}")
        if not rows or rows[0].event_id is None:
            return None
        event_id = rows[0].event_id
        found = self._rows("event", (event_id,), f"event {event_id}, the latest of device {device_id!r}")
        return latest_event(device_id, event_id, found[0] if found else None)

    def newest(self, device_id: str) -> Newest | None:
        """The position with its event time (the change feed's ``positions_in``, one partition: the lookups'
        ``latest`` reads no more than it did), then that event from ``events_by_id`` (two reads)."""
        rows = self._rows("positions_in", ([device_id],), f"the position of device {device_id!r}")
        if not rows or rows[0].event_id is None:
            return None
        row = rows[0]
        found = self._rows("event", (row.event_id,), f"event {row.event_id}, the latest of device {device_id!r}")
        return Newest(stored_time(row.event_time), row.event_id,
                      latest_event(device_id, row.event_id, found[0] if found else None))

    def latest_many(self, device_ids: Sequence[str]) -> list[StoredEvent]:
        """The latest states of :meth:`latest_found`."""
        return self.latest_found(device_ids).states

    def latest_found(self, device_ids: Sequence[str]) -> LatestFound:
        """``LatestStates``: the positions of ``device_ids`` in ``device_latest``, then their events from
        ``events_by_id``, 100 partitions a request. A device whose position names an event ``events_by_id`` holds
        for another device (moved there by a correction) has no state; its position's event time and event id
        are its floor: a late event of it at or before them loses to the position in the store too."""
        found = LatestFound([])
        for start in range(0, len(device_ids), 100):
            chunk = list(device_ids[start:start + 100])
            rows = self._rows("positions_in", (chunk,), f"the latest state of {len(chunk)} devices")
            devices = positions(rows)
            if not devices:
                continue
            events = self._rows("event_in", (list(set(devices.values())),),
                                f"the latest events of {len(devices)} devices")
            states = latest_events(devices, events)
            found.states.extend(event for _, event in states)
            stated = {device_id for device_id, _ in states}
            found.floors.update((row.device_id, (stored_time(row.event_time), row.event_id)) for row in rows
                                if row.device_id in devices and row.device_id not in stated
                                and row.event_time is not None)
        return found

    def event(self, event_id: uuid.UUID) -> StoredEvent | None:
        rows = self._rows("event", (event_id,), f"event {event_id}")
        return stored_event(rows[0]) if rows else None

    def critical(self, device_id: str, *, since: datetime | None, limit: int) -> list[StoredEvent]:
        what = f"the critical events of device {device_id!r}"
        if since is None:
            rows = self._rows("critical", (device_id, limit), what)
        else:
            rows = self._rows("critical_since", (device_id, utc(since), limit), what)
        return [stored_event(row) for row in rows]

    def ping(self, timeout: float | None = None) -> None:
        # The lookups' own path (the prepared point read of device_latest, at their consistency) for a device that
        # cannot exist: it answers only if the keyspace and table are there and a data read succeeds. A system.local
        # query would answer while every data read times out or is throttled.
        self._rows("latest", (HEALTH_PROBE_DEVICE,), "the health probe's point read", timeout=timeout)


class CassandraStoredCopies:
    """Implements ``shared.ports.ingest.StoredCopies``: the Event Hubs position of each stored copy in
    ``events_by_id``, 100 ids a request. For ``deadletter replay`` only (its own statement, so the lookups prepare
    nothing more)."""

    def __init__(self, session: Session | Callable[[], Session], keyspace: str, *, timeout: float = 2.0) -> None:
        self._queries = Queries(session, keyspace, {
            "copies_in": "SELECT event_id, enqueued_time, eh_sequence_number FROM {ks}.events_by_id "
                         "WHERE event_id IN ?"}, timeout=timeout)

    def copies(self, event_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, StoredCopy]:
        found: dict[uuid.UUID, StoredCopy] = {}
        ids = list(dict.fromkeys(event_ids))
        for start in range(0, len(ids), 100):
            chunk = ids[start:start + 100]
            for row in self._queries.rows("copies_in", (chunk,), f"the stored copies of {len(chunk)} events"):
                found[row.event_id] = StoredCopy(stored_time(row.enqueued_time), row.eh_sequence_number)
        return found
