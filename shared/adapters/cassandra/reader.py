"""``CassandraEventReader``: the lookups' point reads, each bounded by a timeout.

Reads ``device_latest``, ``events_by_id`` and ``critical_events_by_device`` with
prepared statements (prepared on first use, never in ``__init__``). Every driver
failure (timeout, no host, throttling left after the session's retries) becomes
``DependencyUnavailable("cassandra", ...)``, which the HTTP layer turns into a 503.
:func:`stored_event` converts a row of any event table; the change feed readers
use it too.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cassandra import DriverException
from cassandra.cluster import NoHostAvailable, ResponseFuture, Session
from cassandra.protocol import ErrorMessage
from cassandra.query import PreparedStatement

from shared.exceptions import DependencyUnavailable
from shared.lazy import Once
from shared.ports.stored import StoredEvent

logger = logging.getLogger(__name__)

# Columns every reader selects, in this order (see migrations.EVENT_COLUMNS).
EVENT_SELECT = (
    "event_id, device_id, event_time, event_type, severity, critical, measurements, attributes, "
    "schema_version, enqueued_time"
)

_STATEMENTS = {
    "latest": f"SELECT {EVENT_SELECT} FROM {{ks}}.device_latest WHERE device_id = ?",
    "event": f"SELECT {EVENT_SELECT} FROM {{ks}}.events_by_id WHERE event_id = ?",
    # Many partitions in one request: the asyncio reader coalesces concurrent point reads (aio.py).
    "latest_in": f"SELECT {EVENT_SELECT} FROM {{ks}}.device_latest WHERE device_id IN ?",
    "event_in": f"SELECT {EVENT_SELECT} FROM {{ks}}.events_by_id WHERE event_id IN ?",
    "critical": f"SELECT {EVENT_SELECT} FROM {{ks}}.critical_events_by_device WHERE device_id = ? LIMIT ?",
    "critical_since": (
        f"SELECT {EVENT_SELECT} FROM {{ks}}.critical_events_by_device WHERE device_id = ? AND event_time >= ? LIMIT ?"
    ),
}

# What the driver raises when the store cannot answer: DriverException (OperationTimedOut, ReadTimeout,
# Unavailable ...), NoHostAvailable, and server error messages that are not DriverExceptions
# (OverloadedErrorMessage: a Cosmos 429 left over after the session's retries; ServerError ...).
CASSANDRA_ERRORS: tuple[type[BaseException], ...] = (DriverException, NoHostAvailable, ErrorMessage, ConnectionError,
                                                     OSError)


# Not a valid device id (docs/events.md), so never written: the health probe's read finds nothing, cheaply.
HEALTH_PROBE_DEVICE = "#sluice-health-probe"


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def stored_event(row: Any) -> StoredEvent:
    """A row selected with :data:`EVENT_SELECT` (driver timestamps are naive UTC)."""
    return StoredEvent(
        event_id=row.event_id,
        device_id=row.device_id,
        event_time=_utc(row.event_time),  # type: ignore[arg-type]
        event_type=row.event_type,
        severity=row.severity,
        critical=row.critical,
        measurements=dict(row.measurements or {}),
        attributes=dict(row.attributes or {}),
        schema_version=row.schema_version if row.schema_version is not None else 1,
        enqueued_time=_utc(row.enqueued_time),
    )


def describe(exc: BaseException) -> str:
    """A short, secret-free description of a driver error."""
    if isinstance(exc, NoHostAvailable):
        inner = "; ".join(f"{host}: {type(err).__name__}" for host, err in list(exc.errors.items())[:3])
        return f"no host available ({inner})" if inner else "no host available"
    return f"{type(exc).__name__}: {exc}"


class CassandraEventReader:
    """Implements ``shared.ports.event_reader.EventReader``."""

    def __init__(self, session: Session | Callable[[], Session], keyspace: str, *, timeout: float = 2.0) -> None:
        # A factory lets the first lookup find Cassandra down and answer 503, instead of failing at start-up.
        self._connect: Callable[[], Session] = session if callable(session) else (lambda: session)
        self._keyspace = keyspace
        self._timeout = timeout
        self._statements = Once(self._prepare)

    def _prepare(self) -> dict[str, PreparedStatement]:
        prepared = {}
        session = self._connect()
        for name, cql in _STATEMENTS.items():
            statement = session.prepare(cql.format(ks=self._keyspace))
            statement.is_idempotent = True
            prepared[name] = statement
        return prepared

    def _rows(self, name: str, params: tuple, what: str, *, timeout: float | None = None) -> list:
        try:
            statement = self._statements.get()[name]
            return list(self._connect().execute(statement, params, timeout=timeout or self._timeout))
        except CASSANDRA_ERRORS as exc:
            raise DependencyUnavailable("cassandra", f"reading {what} failed: {describe(exc)}") from exc

    def start(self, name: str, params: tuple, *, timeout: float | None = None) -> ResponseFuture:
        """Send one of the reads without waiting for it (``aio.py`` awaits it on an event loop); raises driver errors."""
        return self._connect().execute_async(self._statements.get()[name], params, timeout=timeout or self._timeout)

    def latest(self, device_id: str) -> StoredEvent | None:
        rows = self._rows("latest", (device_id,), f"the latest state of device {device_id!r}")
        return stored_event(rows[0]) if rows and rows[0].event_id is not None else None

    def event(self, event_id: uuid.UUID) -> StoredEvent | None:
        rows = self._rows("event", (event_id,), f"event {event_id}")
        return stored_event(rows[0]) if rows else None

    def critical(self, device_id: str, *, since: datetime | None, limit: int) -> list[StoredEvent]:
        what = f"the critical events of device {device_id!r}"
        if since is None:
            rows = self._rows("critical", (device_id, limit), what)
        else:
            rows = self._rows("critical_since", (device_id, _utc(since), limit), what)
        return [stored_event(row) for row in rows]

    def ping(self, timeout: float | None = None) -> None:
        # The lookups' own path (the prepared point read of device_latest, at their consistency) for a device that
        # cannot exist: it answers only if the keyspace and table are there and a data read succeeds. A system.local
        # query would answer while every data read times out or is throttled.
        self._rows("latest", (HEALTH_PROBE_DEVICE,), "the health probe's point read", timeout=timeout)
