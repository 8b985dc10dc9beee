"""``CassandraDeviceLog``: the event log device by device, for the Redis rebuild.

Devices come from ``device_latest`` in token order (``token(device_id) > ?``),
which is both a full scan that pages without a driver paging state and a
position a killed rebuild can resume from: the token of the last device written
(computed here with the driver's own Murmur3, the partitioner Cassandra and
Cosmos DB use). ``device_latest`` gives each device's position only (which event
is its newest); the events themselves come from ``events_by_id``, 100 ids a
request, a page's requests sent together (``reader.py`` says why the content is
not read from ``device_latest``). A device whose position names an event that
table holds for another device (a correction moved its newest event away) is
listed all the same, without a latest state: its critical events are its own.
Critical events come from
``critical_events_by_device``, one partition per device, paged by the driver,
less the rows their event's copy in ``events_by_id`` supersedes (a correction
to another event time, or to an event no longer critical, leaves the old row
there): rows of one event id are first collapsed to the copy Redis keeps
(``one_copy_each``: a correction re-sent under the id beside the row it
corrects), then the ids are read back 100 a request, as the lookups' misses do
(``current_copies``). ``critical`` does both for one device; the full rebuild
reads a page's rows device by device (``critical_rows``) and then the copies of
the whole page's ids at once (``current``): one round of ``IN`` reads a page,
not one a device.
Every row read, of every table and page (a page of devices read again because
none of its devices had an event included), is counted in ``rows_read``: what
the rebuild's rate limit charges.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from cassandra.cluster import Session
from cassandra.murmur3 import murmur3

from shared.adapters.cassandra.query import Queries
from shared.adapters.cassandra.reader import (
    EVENT_SELECT,
    POSITION_SELECT,
    latest_event,
    latest_events,
    positions,
    stored_event,
)
from shared.domain.stored import StoredEvent, current_copies, one_copy_each
from shared.domain.times import from_ms
from shared.ports.cache import SINCE_ALL
from shared.ports.rebuild import DeviceRow

_STATEMENTS = {
    "first": f"SELECT {POSITION_SELECT} FROM {{ks}}.device_latest LIMIT ?",
    "after": f"SELECT {POSITION_SELECT} FROM {{ks}}.device_latest WHERE token(device_id) > ? LIMIT ?",
    "device": f"SELECT {POSITION_SELECT} FROM {{ks}}.device_latest WHERE device_id = ?",
    "event": f"SELECT {EVENT_SELECT} FROM {{ks}}.events_by_id WHERE event_id = ?",
    "events": f"SELECT {EVENT_SELECT} FROM {{ks}}.events_by_id WHERE event_id IN ?",
    "critical_all": f"SELECT {EVENT_SELECT} FROM {{ks}}.critical_events_by_device WHERE device_id = ?",
    "critical": f"SELECT {EVENT_SELECT} FROM {{ks}}.critical_events_by_device WHERE device_id = ? AND event_time >= ?",
}


# Event ids per request of a page's events (as the lookups' IN reads: ``reader.latest_many``), and such requests
# in flight at once.
_IDS_PER_READ = 100
_EVENT_READS = 4


def device_token(device_id: str) -> int:
    """The Murmur3 partitioner's token of a ``device_latest`` row."""
    token: int = murmur3(device_id.encode())
    return token


class CassandraDeviceLog:
    """Implements ``shared.ports.rebuild.DeviceLog``."""

    def __init__(self, session: Session | Callable[[], Session], keyspace: str, *, timeout: float = 10.0,
                 page_size: int = 1000) -> None:
        self._queries = Queries(session, keyspace, _STATEMENTS, timeout=timeout, fetch_size=page_size)
        self._read = 0
        self._lock = threading.Lock()  # the rebuild reads devices' critical events on several threads

    @property
    def rows_read(self) -> int:
        return self._read

    def _counted(self, rows: list[Any]) -> list[Any]:
        with self._lock:
            self._read += len(rows)
        return rows

    def _rows(self, name: str, params: tuple[Any, ...], what: str) -> list[Any]:
        return self._counted(self._queries.rows(name, params, what))

    def devices(self, after: int | None, limit: int) -> list[DeviceRow]:
        # Every device with a position, one whose event events_by_id does not give (see reader.latest_event: a
        # correction moved it to another device) with no latest state, as its critical events are still its own.
        # A page of only rows naming no event is not the end of the scan, so the next page is read.
        while True:
            if after is None:
                rows = self._rows("first", (limit,), "the first devices")
            else:
                rows = self._rows("after", (after, limit), f"the devices after token {after}")
            devices = positions(rows)
            ids = list(set(devices.values()))
            chunks = [(ids[start:start + _IDS_PER_READ],) for start in range(0, len(ids), _IDS_PER_READ)]
            pages = [self._counted(page) for page in self._queries.fan_out(
                "events", chunks, f"the latest events of {len(ids)} devices", concurrency=_EVENT_READS)]
            latest = dict(latest_events(devices, (row for page in pages for row in page)))
            found = [DeviceRow(device_token(device_id), device_id, latest.get(device_id)) for device_id in devices]
            if found or len(rows) < limit:
                return found
            after = device_token(rows[-1].device_id)

    def device(self, device_id: str) -> DeviceRow | None:
        rows = self._rows("device", (device_id,), f"device {device_id!r}")
        if not rows or rows[0].event_id is None:
            return None
        event_id = rows[0].event_id
        found = self._rows("event", (event_id,), f"event {event_id}, the latest of device {device_id!r}")
        return DeviceRow(device_token(device_id), device_id, latest_event(device_id, event_id,
                                                                          found[0] if found else None))

    def critical(self, device_id: str, since_ms: int) -> list[StoredEvent]:
        return self.current({device_id: self.critical_rows(device_id, since_ms)})[device_id]

    def critical_rows(self, device_id: str, since_ms: int) -> list[StoredEvent]:
        what = f"the critical events of device {device_id!r}"
        if since_ms <= SINCE_ALL:
            rows = self._rows("critical_all", (device_id,), what)
        else:
            rows = self._rows("critical", (device_id, from_ms(since_ms)), what)
        return [stored_event(row) for row in rows]

    def current(self, events_by_device: Mapping[str, Sequence[StoredEvent]]) -> dict[str, list[StoredEvent]]:
        what = (f"the critical events of device {next(iter(events_by_device))!r}" if len(events_by_device) == 1
                else f"the critical events of {len(events_by_device)} devices")
        copies = self._events({event.event_id for events in events_by_device.values() for event in events}, what)
        # Rows of one id (a correction re-sent under it with another event time, maybe followed by the original
        # delivered again, whose older copy events_by_id then holds) are collapsed to the copy Redis keeps first, as
        # the lookups' misses do: neither row is superseded by that older copy, and both would reach the builder.
        return {device_id: current_copies(one_copy_each(events), copies)
                for device_id, events in events_by_device.items()}

    def _events(self, event_ids: Collection[uuid.UUID], what: str) -> dict[uuid.UUID, StoredEvent]:
        """The ``events_by_id`` copies of ``event_ids``: ``IN`` reads of 100 ids, a few in flight, rows counted."""
        ids = list(event_ids)
        chunks = [(ids[start:start + _IDS_PER_READ],) for start in range(0, len(ids), _IDS_PER_READ)]
        pages = self._queries.fan_out("events", chunks, f"the stored copies of {what}", concurrency=_EVENT_READS)
        return {row.event_id: stored_event(row) for page in pages for row in self._counted(page)}
