"""Dependency health: each check run concurrently within one timeout, reported as ``/api/health`` shows it.

A check returns when its dependency answers and raises ``DependencyUnavailable``
otherwise. :func:`check` awaits coroutine checks on the running event loop (the
lookups' ``/api/health``); :class:`BlockingHealth` runs blocking checks on a few
threads (the status page, which is blocking code).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from shared.exceptions import DependencyUnavailable

Report = tuple[bool, dict[str, Any]]


def report(outcomes: Mapping[str, float | str]) -> Report:
    """``(healthy, body)`` from each dependency's latency in seconds, or the error that says it is down."""
    dependencies: dict[str, Any] = {
        name: {"status": "up", "latency_ms": round(outcome * 1000, 2)} if isinstance(outcome, float)
        else {"status": "down", "error": outcome}
        for name, outcome in outcomes.items()}
    healthy = all(d["status"] == "up" for d in dependencies.values())
    return healthy, {"status": "ok" if healthy else "unavailable", "dependencies": dependencies}


async def _timed(check: Awaitable[None], timeout: float) -> float | str:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check, timeout)
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except DependencyUnavailable as exc:
        return str(exc)
    return time.perf_counter() - started


async def check(checks: Mapping[str, Callable[[], Awaitable[None]]], timeout: float) -> Report:
    """Run every check at once on the running loop; each gets ``timeout`` seconds."""
    outcomes = await asyncio.gather(*(_timed(run(), timeout) for run in checks.values()))
    return report(dict(zip(checks, outcomes, strict=True)))


class BlockingHealth:
    """:func:`check` for blocking checks, on its own small thread pool (built on first use)."""

    def __init__(self, checks: Mapping[str, Callable[[], None]], *, timeout: float) -> None:
        self._checks = dict(checks)
        self._timeout = timeout
        self._pool: ThreadPoolExecutor | None = None

    def __call__(self) -> Report:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=len(self._checks), thread_name_prefix="health")
        started = time.perf_counter()
        futures = {name: self._pool.submit(self._timed, run) for name, run in self._checks.items()}
        deadline = started + self._timeout
        outcomes: dict[str, float | str] = {}
        for name, future in futures.items():
            try:
                outcomes[name] = future.result(timeout=max(0.0, deadline - time.perf_counter()))
            except FutureTimeout:
                outcomes[name] = f"no answer within {self._timeout:g}s"
            except DependencyUnavailable as exc:
                outcomes[name] = str(exc)
        return report(outcomes)

    @staticmethod
    def _timed(run: Callable[[], None]) -> float:
        started = time.perf_counter()
        run()
        return time.perf_counter() - started
