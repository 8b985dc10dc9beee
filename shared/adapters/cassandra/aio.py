"""The cassandra-driver's requests awaited on an asyncio event loop, and the lookups' reads done that way.

The driver completes a request on its own I/O thread and calls the callbacks
given to ``ResponseFuture.add_callbacks`` there. :func:`rows` hands that outcome
to the event loop with ``loop.call_soon_threadsafe``, so a coroutine awaits a
Cassandra read without a thread of its own. The driver enforces the request's
timeout (its ``OperationTimedOut`` arrives through the error callback); a
cancelled waiter leaves the request to finish or time out in the driver.

:class:`CassandraAsyncEventReader` serves the lookups (``AsyncEventReader``)
with the statements of a :class:`CassandraEventReader`; its first read connects
and prepares on a worker thread, since that blocks.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from cassandra.cluster import ResponseFuture

from shared.adapters.cassandra.reader import (
    CASSANDRA_ERRORS,
    HEALTH_PROBE_DEVICE,
    CassandraEventReader,
    describe,
    stored_event,
)
from shared.exceptions import DependencyUnavailable
from shared.ports.stored import StoredEvent


def _settle(waiter: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if waiter.done():  # the awaiting task was cancelled meanwhile
        return
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(value)


def rows(future: ResponseFuture) -> asyncio.Future[list]:
    """The first page of rows of a request sent with ``execute_async``, as an asyncio future of the running loop.

    One page is the whole answer for the point reads and ``LIMIT``-ed reads this
    serves (their limits are below the driver's fetch size).
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[list] = loop.create_future()
    future.add_callbacks(lambda result: loop.call_soon_threadsafe(_settle, waiter, result, None),
                         lambda error: loop.call_soon_threadsafe(_settle, waiter, None, error))
    return waiter


class CassandraAsyncEventReader:
    """Implements ``shared.ports.event_reader.AsyncEventReader`` over a ``CassandraEventReader``'s statements."""

    def __init__(self, reader: CassandraEventReader) -> None:
        self._reader = reader
        self._started = False

    async def _rows(self, name: str, params: tuple, what: str, *, timeout: float | None = None) -> list:
        try:
            if self._started:
                future = self._reader.start(name, params, timeout=timeout)
            else:  # connecting and preparing block: not on the event loop
                future = await asyncio.to_thread(self._reader.start, name, params, timeout=timeout)
                self._started = True
            return list(await rows(future))
        except CASSANDRA_ERRORS as exc:
            raise DependencyUnavailable("cassandra", f"reading {what} failed: {describe(exc)}") from exc

    async def latest(self, device_id: str) -> StoredEvent | None:
        found = await self._rows("latest", (device_id,), f"the latest state of device {device_id!r}")
        return stored_event(found[0]) if found and found[0].event_id is not None else None

    async def event(self, event_id: uuid.UUID) -> StoredEvent | None:
        found = await self._rows("event", (event_id,), f"event {event_id}")
        return stored_event(found[0]) if found else None

    async def critical(self, device_id: str, *, since: datetime | None, limit: int) -> list[StoredEvent]:
        what = f"the critical events of device {device_id!r}"
        if since is None:
            found = await self._rows("critical", (device_id, limit), what)
        else:
            found = await self._rows("critical_since", (device_id, since.astimezone(UTC), limit), what)
        return [stored_event(row) for row in found]

    async def ping(self, timeout: float | None = None) -> None:
        # The lookups' own point read for a device that cannot exist (see CassandraEventReader.ping).
        await self._rows("latest", (HEALTH_PROBE_DEVICE,), "the health probe's point read", timeout=timeout)
