"""Dependency health: each check run concurrently within one timeout, reported as ``/api/health`` shows it.

A check returns when its dependency answers and raises ``DependencyUnavailable``
otherwise. :class:`Health` awaits coroutine checks on the running event loop (the
lookups' ``/api/health``); :class:`BlockingHealth` runs blocking checks on a thread
per dependency (the status page, which is blocking code).

A dependency is ``up`` when it answered in time and ``down`` when it refused or
failed, or gave no answer in time. The first check of a process may also open the
client (a Cassandra session reads the whole schema first), which can take longer
than the timeout: while the dependency's client is not open yet (``opened``, given
per dependency) and no check of it has given an outcome, a check without an answer
says ``connecting``, not ``down``, and goes on (it is not cancelled, so a slow
first connect still completes). A client other traffic already opened, that then
gives no answer, is ``down``. Either way the report is not healthy: a pod is not
ready before its stores answer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from shared.exceptions import DependencyUnavailable

Report = tuple[bool, dict[str, Any]]


class Connecting(str):
    """The outcome of a check that ran out of time while its dependency's client is not open yet (module docstring)."""


def report(outcomes: Mapping[str, float | str]) -> Report:
    """``(healthy, body)`` from each dependency's latency in seconds, or the error that says it is down (or, as a
    :class:`Connecting`, why it is not up yet)."""
    dependencies: dict[str, Any] = {name: _state(outcome) for name, outcome in outcomes.items()}
    healthy = all(d["status"] == "up" for d in dependencies.values())
    return healthy, {"status": "ok" if healthy else "unavailable", "dependencies": dependencies}


def _state(outcome: float | str) -> dict[str, Any]:
    if isinstance(outcome, float):
        return {"status": "up", "latency_ms": round(outcome * 1000, 2)}
    return {"status": "connecting" if isinstance(outcome, Connecting) else "down", "error": str(outcome)}


Opened = Mapping[str, Callable[[], bool]]
"""Per dependency, whether its client is open already (connected; for Cassandra, its statements prepared)."""


def _no_answer(timeout: float, opened: Callable[[], bool] | None, settled: bool) -> str:
    """A check without an answer in time: ``connecting`` while the client is not open and no check of it has given
    an outcome (a dependency without ``opened`` never is), else down."""
    if opened is None or settled or opened():
        return f"no answer within {timeout:g}s"
    return Connecting(f"no answer within {timeout:g}s; the first connection is still being made")


class Health:
    """Coroutine checks run at once on the running loop; each gets ``timeout`` seconds."""

    def __init__(self, checks: Mapping[str, Callable[[], Awaitable[None]]], *, timeout: float,
                 opened: Opened | None = None) -> None:
        self._checks = dict(checks)
        self._timeout = timeout
        self._opened = dict(opened or {})  # a dependency without one is never "connecting"
        self._settled: set[str] = set()  # the checks that have given an outcome (an answer or an error) once
        self._first: dict[str, asyncio.Future[None]] = {}  # a first check still running after its timeout

    async def __call__(self) -> Report:
        names = list(self._checks)
        outcomes = await asyncio.gather(*(self._timed(name) for name in names))
        return report(dict(zip(names, outcomes, strict=True)))

    async def _timed(self, name: str) -> float | str:
        started = time.perf_counter()
        running = self._first.get(name)
        if running is not None and running.get_loop() is not asyncio.get_running_loop():
            running = None  # left on an event loop that is gone (tests run one loop each)
        try:
            if name in self._settled:
                await asyncio.wait_for(self._checks[name](), self._timeout)
            else:  # shielded: a first connect that outlasts the timeout carries on for the next check
                if running is None:
                    running = self._first[name] = asyncio.ensure_future(self._checks[name]())
                    running.add_done_callback(lambda done: self._first_done(name, done))
                await asyncio.wait_for(asyncio.shield(running), self._timeout)
        except TimeoutError:
            return _no_answer(self._timeout, self._opened.get(name), name in self._settled)
        except DependencyUnavailable as exc:
            return str(exc)
        return time.perf_counter() - started

    def _first_done(self, name: str, done: asyncio.Future[None]) -> None:
        self._first.pop(name, None)
        if not done.cancelled():
            done.exception()  # retrieved here: a first check nobody awaits any more must not log "never retrieved"
            self._settled.add(name)


class BlockingHealth:
    """:class:`Health` for blocking checks, each dependency on a worker thread of its own (built on first use).

    A blocking check cannot be cancelled: one that gives no answer in time goes on running. While it does, no new
    check of that dependency starts: the next report waits, within its own timeout, for the one still running (a
    late answer counts; no answer is no answer). So a hung dependency holds one thread, its own, and never delays
    the check of another: a shared pool would hand a hung dependency's next check the free thread and queue the
    healthy one's behind it, past the deadline, reporting both down."""

    def __init__(self, checks: Mapping[str, Callable[[], None]], *, timeout: float,
                 opened: Opened | None = None) -> None:
        self._checks = dict(checks)
        self._timeout = timeout
        self._opened = dict(opened or {})  # as in Health
        self._workers: dict[str, ThreadPoolExecutor] = {}
        self._running: dict[str, Future[float]] = {}  # each dependency's latest check, done or still running
        self._settled: set[str] = set()  # as in Health
        self._lock = threading.Lock()

    def __call__(self) -> Report:
        started = time.perf_counter()
        with self._lock:
            futures = {name: self._check(name) for name in self._checks}
        deadline = started + self._timeout
        outcomes: dict[str, float | str] = {}
        for name, future in futures.items():
            try:
                outcomes[name] = future.result(timeout=max(0.0, deadline - time.perf_counter()))
            except FutureTimeout:
                with self._lock:
                    settled = name in self._settled
                outcomes[name] = _no_answer(self._timeout, self._opened.get(name), settled)
            except DependencyUnavailable as exc:
                outcomes[name] = str(exc)
        return report(outcomes)

    def _check(self, name: str) -> Future[float]:
        """The dependency's check still running, else a new one on its worker (called holding the lock)."""
        running = self._running.get(name)
        if running is not None and not running.done():
            return running
        worker = self._workers.get(name)
        if worker is None:
            worker = self._workers[name] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"health-{name}")
        self._running[name] = future = worker.submit(self._timed, name, self._checks[name])
        return future

    def _timed(self, name: str, run: Callable[[], None]) -> float:
        started = time.perf_counter()
        try:
            run()
        finally:
            with self._lock:
                self._settled.add(name)
        return time.perf_counter() - started
