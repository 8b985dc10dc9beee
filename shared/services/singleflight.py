"""``SingleFlight``: at most one call per key in flight on an event loop; concurrent callers share its outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

from shared.exceptions import DependencyUnavailable

T = TypeVar("T")


class SingleFlight:
    """At most one call per key at a time on this loop; concurrent callers await its outcome."""

    def __init__(self, wait_seconds: float, *, dependency: str = "cassandra") -> None:
        self._wait = wait_seconds
        self._dependency = dependency
        self._flights: dict[Hashable, asyncio.Future[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def do(self, key: Hashable, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()``, or the outcome of the call for ``key`` already in flight (``what`` names it in errors).

        A waiter gives up after ``wait_seconds`` with ``DependencyUnavailable``; a
        cancelled leader fails its waiters with ``DependencyUnavailable`` too.
        """
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests): flights of the old one can never finish
            self._loop, self._flights = loop, {}
        flight = self._flights.get(key)
        if flight is not None:
            try:
                return await asyncio.wait_for(asyncio.shield(flight), self._wait)
            except TimeoutError:
                # The read in flight is stuck: piling more reads onto a slow store is what single flight is
                # there to prevent, so this request gives up (HTTP 503) instead of reading too.
                raise DependencyUnavailable(
                    self._dependency, f"no answer for {what} within {self._wait:g}s (read in progress)") from None
        flight = self._flights[key] = loop.create_future()
        try:
            value = await call()
        except BaseException as exc:
            shared = exc if isinstance(exc, Exception) else DependencyUnavailable(self._dependency,
                                                                                  f"reading {what} stopped")
            flight.set_exception(shared)
            flight.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        else:
            flight.set_result(value)
            return value
        finally:
            self._flights.pop(key, None)
