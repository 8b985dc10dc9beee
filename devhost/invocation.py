"""Call a user function as the Python worker does, and run the host's ``@retry`` loop around it.

Sync functions run on a thread pool (``PYTHON_THREADPOOL_THREAD_COUNT`` threads, the
worker's default otherwise), async ones on the dev host's event loop. Every call gets
a fresh :class:`Context` whose ``retry_context`` says which attempt this is; each call
is logged the way the Functions host logs it ("Executing 'Functions.x' ..." /
"Executed 'Functions.x' (Succeeded|Failed ...)").

Retry semantics (timer and Event Hubs triggers): a failed attempt is retried after the
policy's delay while ``retry_count < max_retry_count`` (``-1``: forever); when the
attempts are spent the outcome is :attr:`Outcome.FAILED` and the caller carries on
as the host does (the Event Hubs listener still checkpoints). A retry delay is cut
short by shutdown: the outcome is then :attr:`Outcome.ABANDONED` and the caller must
*not* checkpoint, so the batch is delivered again on the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import os
import random
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.functions import _abc as functions_abc

from devhost.app_loader import FunctionSpec

logger = logging.getLogger(__name__)


class Outcome(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # every attempt failed; the host moves on
    ABANDONED = "abandoned"  # shutdown interrupted the retries; do not checkpoint


class RpcException(functions_abc.RpcException):
    """A failed attempt, as a retry sees it: the worker reports ``<type>: <message>`` and the stack, the host hands
    them back on the next attempt (``InvocationRequest.RetryContext.Exception``)."""

    def __init__(self, exc: BaseException) -> None:
        self._message = f"{type(exc).__name__}: {exc}"
        self._stack_trace = "".join(traceback.format_exception(exc))
        self._source = type(exc).__module__

    @property
    def source(self) -> str:
        return self._source

    @property
    def stack_trace(self) -> str:
        return self._stack_trace

    @property
    def message(self) -> str:
        return self._message


class RetryContext(functions_abc.RetryContext):
    def __init__(self, retry_count: int, max_retry_count: int, exception: RpcException | None = None) -> None:
        self._retry_count = retry_count
        self._max_retry_count = max_retry_count
        self._exception = exception

    @property
    def retry_count(self) -> int:
        return self._retry_count

    @property
    def max_retry_count(self) -> int:
        return self._max_retry_count

    @property
    def exception(self) -> RpcException | None:  # type: ignore[override]  # None on a first attempt
        return self._exception


def random_uuid() -> uuid.UUID:
    """A version-4 UUID from the ``random`` module: ids, not secrets, and ``os.urandom`` is slow under load."""
    return uuid.UUID(int=random.getrandbits(128), version=4)


class TraceContext(functions_abc.TraceContext):
    """The invocation's W3C trace context, flagged sampled (``-01``), as the Functions host's is when it records.

    The functions make it the parent of their stage span, and the SDK's default
    sampler (parent-based) follows a remote parent's flag: flagged ``-00``, no
    stage span would ever be recorded under the dev host.
    """

    def __init__(self, trace_id: uuid.UUID) -> None:
        self._parent = f"00-{trace_id.hex}-{random.getrandbits(64):016x}-01"

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def trace_parent(self) -> str:
        return self._parent

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class Context(func.Context):
    """What the worker passes as ``context``."""

    _thread_local = threading.local()

    def __init__(self, function_name: str, function_directory: str, retry_context: RetryContext) -> None:
        invocation_id = random_uuid()
        self._invocation_id = str(invocation_id)
        self._function_name = function_name
        self._function_directory = function_directory
        self._retry_context = retry_context
        self._trace_context = TraceContext(invocation_id)

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._thread_local

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self) -> TraceContext:
        return self._trace_context

    @property
    def retry_context(self) -> RetryContext:
        return self._retry_context


def default_thread_count(environ: Any = os.environ) -> int:
    """``PYTHON_THREADPOOL_THREAD_COUNT``, or the worker's default for Python 3.9+ (``min(32, cpus + 4)``, the
    ``ThreadPoolExecutor`` default). A value that is not a whole number of at least 1 is refused as the Python worker
    refuses it (its ``tp_max_workers_validator``): a warning naming the setting, and the default."""
    default = min(32, (os.cpu_count() or 1) + 4)
    value = (environ.get("PYTHON_THREADPOOL_THREAD_COUNT") or "").strip()
    if not value:
        return default
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        logger.warning("PYTHON_THREADPOOL_THREAD_COUNT %r must be a whole number of at least 1; using the Python "
                       "worker's default of %d threads", value, default)
        return default
    return count


class CpuAccount:
    """CPU seconds spent inside each function's invocations, and how many there were.

    A sync function is measured with ``time.thread_time`` of the pool thread that ran it: only
    that invocation's own work, not other threads' (the event loop's receiving, a client
    library's I/O thread). Async functions share the event loop's thread, so they are not
    measured. Recorded once per invocation (a whole Event Hubs batch), so it costs nothing per event.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = {}
        self._calls: dict[str, int] = {}

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self._seconds[name] = self._seconds.get(name, 0.0) + seconds
            self._calls[name] = self._calls.get(name, 0) + 1

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Function name -> ``{"cpu_seconds": ..., "calls": ...}`` so far."""
        with self._lock:
            return {name: {"cpu_seconds": seconds, "calls": self._calls[name]}
                    for name, seconds in self._seconds.items()}


# The dev host's exit status when an invocation outlived host.json's functionTimeout. `sluice up` restarts the
# dev host on it, as the Functions host restarts its language worker (sluice.localstack has the same number).
FUNCTION_TIMEOUT_EXIT = 3


def timespan(limit: timedelta) -> str:
    """A duration as the host writes a TimeSpan: ``hh:mm:ss``, or ``d.hh:mm:ss`` from one day on."""
    seconds = int(limit.total_seconds())
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    return f"{days}.{hour:02}:{minute:02}:{second:02}" if days else f"{hour:02}:{minute:02}:{second:02}"


def restart_worker(name: str, invocation_id: str, limit: timedelta) -> None:
    """What the Functions host does when an invocation of a language worker outlives ``functionTimeout``: fail it
    and restart the worker, ending every invocation in flight. The dev host is host and worker in one process, so
    it exits; nothing in flight is checkpointed, and the next start delivers those events again."""
    sys.stdout.write(
        f"devhost: Timeout value of {timespan(limit)} was exceeded by function: Functions.{name} (Id={invocation_id}); "
        f"a thread cannot be stopped, so the dev host exits ({FUNCTION_TIMEOUT_EXIT}) as the Functions host restarts "
        "its worker: what was in flight is not checkpointed and is delivered again\n")
    sys.stdout.flush()
    os._exit(FUNCTION_TIMEOUT_EXIT)


class Watchdog:
    """Enforces ``functionTimeout`` from a thread of its own, so it also catches an async function that blocks the
    event loop. Each invocation is registered while it runs (a dict entry: nothing per event); the thread looks
    every second (sooner for a limit under four seconds) and calls ``expire`` for the first one past the limit."""

    def __init__(self, limit: timedelta, *,
                 expire: Callable[[str, str, timedelta], None] = restart_worker) -> None:
        self.limit = limit
        self._expire = expire
        self._running: dict[str, tuple[str, float]] = {}  # invocation id -> (function name, monotonic start)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="function-timeout", daemon=True)
        self._thread.start()

    def begin(self, invocation_id: str, name: str) -> None:
        self._running[invocation_id] = (name, time.monotonic())

    def end(self, invocation_id: str) -> None:
        self._running.pop(invocation_id, None)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _watch(self) -> None:
        limit = self.limit.total_seconds()
        while not self._stopped.wait(min(1.0, limit / 4)):
            now = time.monotonic()
            for invocation_id, (name, started) in list(self._running.items()):
                if now - started > limit:
                    self._expire(name, invocation_id, self.limit)
                    self.end(invocation_id)  # an expire that returns (tests) reports each invocation once


async def _stopped_within(stopping: asyncio.Event, delay: float) -> bool:
    """Wait up to ``delay`` seconds for ``stopping``; whether it is set.

    The event is read after the wait rather than trusted to the wait's result: on Python 3.11,
    ``asyncio.wait_for(event.wait(), timeout=0)`` raises TimeoutError even when the event is already set, so a
    zero retry delay (``fixed_delay`` of ``00:00:00``, ``exponential_backoff`` with a zero minimum) would never see
    shutdown and a poison batch retried forever would hold ``stop()`` for good. A zero delay still yields once:
    an async function that fails without awaiting would otherwise keep the event loop, and ``stop()`` with it.
    """
    if delay > 0 and not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=delay)
    else:
        await asyncio.sleep(0)
    return stopping.is_set()


class Invoker:
    """Runs user functions; one per dev host. With ``function_timeout``, a :class:`Watchdog` enforces it."""

    def __init__(self, script_root: Path, *, threads: int, function_timeout: timedelta | None = None,
                 expire: Callable[[str, str, timedelta], None] = restart_worker) -> None:
        self._script_root = script_root
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="function")
        self.cpu = CpuAccount()
        self._watchdog = Watchdog(function_timeout, expire=expire) if function_timeout else None

    def _timed(self, name: str, function: Any, kwargs: dict[str, Any]) -> Any:
        started = time.thread_time()
        try:
            return function(**kwargs)
        finally:
            self.cpu.add(name, time.thread_time() - started)

    async def call(
        self, spec: FunctionSpec, arguments: dict[str, Any], *, reason: str,
        retry_count: int = 0, max_retry_count: int = 0, convert: Callable[[Any], Any] | None = None,
        previous: RpcException | None = None,
    ) -> Any:
        """One invocation; returns what the function returned (passed through ``convert``, as the worker encodes the
        ``$return`` within the invocation: a value it cannot encode fails the invocation), raises what it raised.
        ``previous`` is what the attempt before this one raised: ``context.retry_context.exception`` on a retry."""
        context = Context(spec.name, str(self._script_root), RetryContext(retry_count, max_retry_count, previous))
        kwargs = dict(arguments)
        if spec.accepts_context:
            kwargs["context"] = context
        logger.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", spec.name, reason, context.invocation_id)
        started = time.perf_counter()
        watchdog = self._watchdog
        if watchdog is not None:
            watchdog.begin(context.invocation_id, spec.name)
        try:
            if spec.is_async:
                result = await spec.user_function(**kwargs)
            else:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(
                    self._executor, functools.partial(self._timed, spec.name, spec.user_function, kwargs))
            if convert is not None:
                result = convert(result)
        except Exception as exc:
            logger.error(
                "Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms): %s: %s",
                spec.name, context.invocation_id, (time.perf_counter() - started) * 1000, type(exc).__name__, exc,
            )
            raise
        finally:
            if watchdog is not None:
                watchdog.end(context.invocation_id)
        logger.info(
            "Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)",
            spec.name, context.invocation_id, (time.perf_counter() - started) * 1000,
        )
        return result

    async def call_with_retry(
        self, spec: FunctionSpec, arguments: dict[str, Any], *, reason: str, stopping: asyncio.Event,
    ) -> Outcome:
        """Invoke, retrying per the function's ``@retry`` policy; never raises what the function raised."""
        policy = spec.retry
        max_retry_count = policy.max_retry_count if policy else 0
        attempt = 0
        previous: RpcException | None = None
        while True:
            try:
                await self.call(spec, arguments, reason=reason, retry_count=attempt, max_retry_count=max_retry_count,
                                previous=previous)
            except Exception as exc:
                previous = RpcException(exc)  # text only: the exception itself would hold every frame until the retry
                logger.debug("Functions.%s attempt %d failed", spec.name, attempt, exc_info=True)
                if policy is None or not policy.allows(attempt + 1):
                    if policy is not None:
                        logger.warning("Functions.%s: all %d retries failed; moving on", spec.name, attempt)
                    return Outcome.FAILED
                attempt += 1
                delay = policy.delay_before(attempt)
                logger.info("Functions.%s: retry %d of %s in %.3fs", spec.name, attempt,
                            "unlimited" if max_retry_count < 0 else max_retry_count, delay)
                if not await _stopped_within(stopping, delay):
                    continue
                logger.warning(
                    "Functions.%s: shutting down during a retry delay; the input is not completed", spec.name
                )
                return Outcome.ABANDONED
            else:
                return Outcome.SUCCEEDED

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
        if self._watchdog is not None:  # after the pool: an invocation that outlives the limit while we stop still ends
            self._watchdog.stop()
