"""The cassandra-driver's requests awaited on an asyncio event loop, and the lookups' reads done that way.

The driver completes a request on its own I/O thread and calls the callbacks
given to ``ResponseFuture.add_callbacks`` there. :func:`rows` hands that outcome
to the event loop with ``loop.call_soon_threadsafe``, so a coroutine awaits a
Cassandra read without a thread of its own (an answer that arrives after its loop
closed is dropped). The driver enforces the request's
timeout (its ``OperationTimedOut`` arrives through the error callback); a
cancelled waiter leaves the request to finish or time out in the driver.

:class:`CassandraAsyncEventReader` serves the lookups (``AsyncEventReader``)
with the statements of a :class:`CassandraEventReader`; its first reads connect
and prepare on a worker thread, since that blocks, sharing one attempt, and wait
for the preparation no longer than a read's timeout. Point reads by partition key
(a device's position in ``device_latest``, event by id; a latest state is the
one, then the other, as ``reader.py`` says): an idle reader sends one at once;
while reads are in flight, those asked for in one turn of the event loop go out together as one
``SELECT ... WHERE key IN ?`` (at most ``batch_keys`` keys; one key alone is the
plain point read). Under load many misses arrive in one turn and cost the driver
one request instead of many (the driver's own work per request is what limits a
busy worker). ``events(ids)`` asks for many events at once the same way (a
critical miss checks the ids of the rows it read: docs/api.md).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Hashable, Sequence
from datetime import UTC, datetime
from typing import Any

from cassandra.cluster import ResponseFuture

from shared.adapters.cassandra.query import CASSANDRA_ERRORS, finishing, unavailable
from shared.adapters.cassandra.reader import HEALTH_PROBE_DEVICE, CassandraEventReader, latest_event, stored_event
from shared.domain.stored import StoredEvent
from shared.exceptions import DependencyUnavailable


def _settle(waiter: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if waiter.done():  # the awaiting task was cancelled meanwhile
        return
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(value)


def _hand_over(loop: asyncio.AbstractEventLoop, waiter: list[asyncio.Future[Any]], value: Any,
               error: BaseException | None) -> None:
    """On the driver's thread: the outcome to the loop, or nowhere if the loop has closed meanwhile (its awaiting
    task is gone: a request that outlived ``asyncio.run``), so the driver does not log the loop's error as its own."""
    try:
        loop.call_soon_threadsafe(_settle, waiter[0], value, error)
    except RuntimeError:
        if not loop.is_closed():
            raise


async def rows(future: ResponseFuture) -> list[Any]:
    """Every row of a request sent with ``execute_async``, awaited on the running loop.

    The point reads and ``LIMIT``-ed reads this serves fit in one page of the
    driver's fetch size, but a server may end a page early and hand back a paging
    state (Cosmos DB does, by its per-page budget): the next pages are fetched until
    there is none, so a short page is never taken for the whole answer. Each is a
    request of its own, of the first one's statement with its timeout, so each has
    its own throttling retries (``query.pages`` says why). Cancelling the awaiting
    task leaves the request to the driver (it finishes or times out there).
    """
    loop = asyncio.get_running_loop()
    waiter: list[asyncio.Future[list[Any]]] = [loop.create_future()]  # this page's: read when the driver calls back
    settle = (lambda result: _hand_over(loop, waiter, result, None),
              lambda error: _hand_over(loop, waiter, None, error))
    future.add_callbacks(*settle)
    with finishing(future):
        page = await waiter[0]
    if not future.has_more_pages:
        return page
    collected = list(page)
    while future.has_more_pages:
        paging_state = future.result().paging_state  # the finished request's answer: no wait
        future = future.session.execute_async(future.query, timeout=future.timeout, paging_state=paging_state)
        waiter[0] = loop.create_future()
        future.add_callbacks(*settle)
        with finishing(future):
            collected.extend(await waiter[0])
    return collected


def _shared(task: asyncio.Task[None] | None, blocking: Callable[[], None]) -> asyncio.Task[None]:
    """``task`` while it runs on this loop, else a new task running ``blocking`` on a worker thread."""
    loop = asyncio.get_running_loop()
    if task is not None and not task.done() and task.get_loop() is loop:
        return task
    started = loop.create_task(asyncio.to_thread(blocking))
    started.add_done_callback(_retrieved)
    return started


def _retrieved(task: asyncio.Task[None]) -> None:
    """A shared attempt's error counts as retrieved: no "never retrieved" log when every read gave up on it."""
    if not task.cancelled():
        task.exception()


class _Coalesced:
    """Point reads of one table by its partition key; the keys asked for in one loop turn share one request."""

    def __init__(self, owner: CassandraAsyncEventReader, single: str, many: str, key_of: Callable[[Any], Hashable],
                 what: Callable[[Any], str], batch_keys: int) -> None:
        self._owner, self._single, self._many = owner, single, many
        self._key_of, self._what, self._batch_keys = key_of, what, batch_keys
        self._pending: dict[Hashable, list[asyncio.Future[Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def _on(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:  # a new event loop (tests): nothing of the old one's state applies
            self._loop, self._pending, self._in_flight = loop, {}, 0

    def _wait_for(self, key: Hashable, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        """A future of ``key``'s row, read with the other keys asked for in this loop turn."""
        waiter = loop.create_future()
        waiters = self._pending.get(key)
        if waiters is not None:
            waiters.append(waiter)
        else:
            if not self._pending:  # the task's first step runs after this turn's other callbacks: it reads them all
                self._track(loop.create_task(self._read_pending()))
            self._pending[key] = [waiter]
        return waiter

    async def get_many(self, keys: Sequence[Hashable]) -> list[Any | None]:
        """The rows of ``keys`` (``None`` for each with no partition), in their order: read together, with the keys
        other reads ask for in this loop turn, in ``IN`` requests of at most ``batch_keys`` keys sent at once."""
        if len(keys) <= 1:
            return [await self.get(key) for key in keys]
        loop = asyncio.get_running_loop()
        self._on(loop)
        answers = await asyncio.gather(*(self._wait_for(key, loop) for key in keys), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        return answers

    async def get(self, key: Hashable) -> Any | None:
        """The row of ``key`` (``None``: no such partition); ``DependencyUnavailable`` naming ``key`` on failure."""
        loop = asyncio.get_running_loop()
        self._on(loop)
        if not self._in_flight and not self._pending:  # idle: the point read, at once
            self._in_flight += 1
            try:
                found = await self._owner.rows(self._single, (key,))
            except CASSANDRA_ERRORS as exc:
                raise unavailable(f"reading {self._what(key)}", exc) from exc
            finally:
                self._in_flight -= 1
            return found[0] if found else None
        return await self._wait_for(key, loop)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read_pending(self) -> None:
        pending, self._pending = self._pending, {}
        keys = list(pending)
        batches = [{key: pending[key] for key in keys[first:first + self._batch_keys]}
                   for first in range(0, len(keys), self._batch_keys)]
        for batch in batches[1:]:
            self._track(asyncio.create_task(self._read(batch)))
        await self._read(batches[0])

    async def _read(self, batch: dict[Hashable, list[asyncio.Future[Any]]]) -> None:
        keys = list(batch)
        self._in_flight += 1
        try:
            if len(keys) == 1:
                found = await self._owner.rows(self._single, (keys[0],))
            else:
                found = await self._owner.rows(self._many, (keys,))
        except CASSANDRA_ERRORS as exc:
            for key, waiters in batch.items():
                error = unavailable(f"reading {self._what(key)}", exc)
                for waiter in waiters:
                    _settle(waiter, None, error)
            return
        except BaseException as exc:  # a bug, or cancellation: never leave a waiter hanging
            for waiters in batch.values():
                for waiter in waiters:
                    _settle(waiter, None, exc if isinstance(exc, Exception) else DependencyUnavailable(
                        "cassandra", "the read was cancelled"))
            if not isinstance(exc, Exception):  # the waiters have an error; this task is never awaited
                raise
            return
        finally:
            self._in_flight -= 1
        by_key = {self._key_of(row): row for row in found}
        for key, waiters in batch.items():
            for waiter in waiters:
                _settle(waiter, by_key.get(key), None)


class CassandraAsyncEventReader:
    """Implements ``shared.ports.event_reader.AsyncEventReader`` over a ``CassandraEventReader``'s statements."""

    def __init__(self, reader: CassandraEventReader, *, batch_keys: int = 32) -> None:
        self._reader = reader
        self._connecting: asyncio.Task[None] | None = None
        self._preparing: asyncio.Task[None] | None = None
        self._latest = _Coalesced(self, "latest", "latest_in", lambda row: row.device_id,
                                  lambda device_id: f"the latest state of device {device_id!r}", batch_keys)
        self._events = _Coalesced(
            self, "event", "event_in", lambda row: row.event_id, lambda event_id: f"event {event_id}", batch_keys
        )

    @property
    def opened(self) -> bool:
        return self._reader.opened

    async def rows(self, name: str, params: tuple[Any, ...], *, timeout: float | None = None) -> list[Any]:
        """The rows of one of the reader's statements; raises the driver's errors (and ``TimeoutError`` when the
        statements were not prepared within ``timeout``: :meth:`_open`)."""
        if not self._reader.opened:
            await self._open(timeout or self._reader.timeout)
        return list(await rows(self._reader.start(name, params, timeout=timeout)))

    async def _open(self, timeout: float) -> None:
        """Connect, then prepare the statements, waiting at most ``timeout`` for the preparation.

        Both block, so each runs on a worker thread, one attempt at a time: the reads asking meanwhile share it
        instead of each queueing for the statements' lock and preparing again (the driver's PREPARE waits for the
        session's default timeout, not the read's). A read that stops waiting leaves the attempt running; a failed
        one is made again by the next read. Connecting is waited for as long as it takes (the driver's connect
        timeouts bound it): a worker's first connection reads the whole schema and may outlast a read's timeout.
        """
        self._connecting = _shared(self._connecting, self._reader.connect)
        await asyncio.shield(self._connecting)
        self._preparing = _shared(self._preparing, self._reader.prepare)
        try:
            await asyncio.wait_for(asyncio.shield(self._preparing), timeout)
        except TimeoutError:
            raise TimeoutError(f"preparing the statements took longer than {timeout:g}s") from None

    async def _rows(self, name: str, params: tuple[Any, ...], what: str, *, timeout: float | None = None) -> list[Any]:
        try:
            return await self.rows(name, params, timeout=timeout)
        except CASSANDRA_ERRORS as exc:
            raise unavailable(f"reading {what}", exc) from exc

    async def latest(self, device_id: str) -> StoredEvent | None:
        """The device's position in ``device_latest``, then that event from ``events_by_id`` (see reader.py)."""
        position = await self._latest.get(device_id)
        if position is None or position.event_id is None:
            return None
        return latest_event(device_id, position.event_id, await self._events.get(position.event_id))

    async def event(self, event_id: uuid.UUID) -> StoredEvent | None:
        row = await self._events.get(event_id)
        return stored_event(row) if row is not None else None

    async def events(self, event_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, StoredEvent]:
        """``events_by_id`` rows of ``event_ids``: ``IN`` requests of at most ``batch_keys`` ids, sent at once (and
        shared with the event reads of other lookups in the same loop turn)."""
        unique = list(dict.fromkeys(event_ids))
        rows = await self._events.get_many(unique)
        return {event_id: stored_event(row) for event_id, row in zip(unique, rows, strict=True) if row is not None}

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
