"""``SingleFlight``: at most one call per key in flight on an event loop; concurrent callers share its outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from shared.exceptions import DependencyUnavailable

T = TypeVar("T")


class _Flight(Generic[T]):
    """The call for one key, run as a task of its own, and how many callers await it."""

    def __init__(self, task: asyncio.Task[T]) -> None:
        self.task = task
        self.waiting = 0


class SingleFlight:
    """At most one call per key at a time on this loop; concurrent callers await its outcome."""

    def __init__(self, wait_seconds: float, *, dependency: str = "cassandra") -> None:
        self._wait = wait_seconds
        self._dependency = dependency
        self._flights: dict[Hashable, _Flight[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def do(self, key: Hashable, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()``, or the outcome of the call for ``key`` already in flight (``what`` names it in errors).

        The call runs as a task of its own, so a caller that stops waiting (its
        client went away, its own deadline passed) stops only its own wait: the
        others still get the call's outcome, and a 503 keeps meaning that the store
        did not answer. The call is cancelled once nobody waits for it any more. The
        first caller waits as long as the call takes (its reads carry their own
        timeouts); a caller that joins gives up after ``wait_seconds`` with
        ``DependencyUnavailable``.
        """
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests): flights of the old one can never finish
            self._loop, self._flights = loop, {}
        flight: _Flight[T] | None = self._flights.get(key)
        joined = flight is not None
        if flight is None:
            flight = self._flights[key] = self._start(key, call)
        flight.waiting += 1
        try:
            if not joined:
                return await asyncio.shield(flight.task)
            try:
                return await asyncio.wait_for(asyncio.shield(flight.task), self._wait)
            except TimeoutError:
                # The read in flight is stuck: piling more reads onto a slow store is what single flight is
                # there to prevent, so this request gives up (HTTP 503) instead of reading too.
                raise DependencyUnavailable(
                    self._dependency, f"no answer for {what} within {self._wait:g}s (read in progress)") from None
        finally:
            flight.waiting -= 1
            if not flight.waiting and not flight.task.done():  # nobody waits for its outcome any more
                self._landed(key, flight)
                if not loop.is_closed():  # else this is a coroutine closed after its loop: nothing runs any more
                    flight.task.cancel()

    def _start(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> _Flight[T]:
        async def called() -> T:
            return await call()

        flight = _Flight(asyncio.get_running_loop().create_task(called()))
        flight.task.add_done_callback(lambda _: self._landed(key, flight))
        return flight

    def _landed(self, key: Hashable, flight: _Flight[Any]) -> None:
        """``flight`` is over (or abandoned): the next caller for ``key`` starts a call of its own."""
        if self._flights.get(key) is flight:
            del self._flights[key]
        if flight.task.done() and not flight.task.cancelled():
            flight.task.exception()  # retrieved: no "never retrieved" warning when nobody waited
