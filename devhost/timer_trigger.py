"""Timer triggers: NCRONTAB schedules, a singleton lease, past-due detection and run-on-startup.

As in the Functions host, a timer runs only in the host that holds its listener lock: a
blob lease on ``azure-webjobs-hosts/locks/<host id>/Host.Functions.<name>.Listener``
(``singleton.listenerLockPeriod`` long, renewed at a third of it). Other dev hosts of the
same app (same host id) poll for the lease every
``singleton.listenerLockRecoveryPollingInterval`` and take over when it is released (on
shutdown, given up after :data:`RELEASE_TIMEOUT` when storage does not answer) or expires (after a crash).

A host fires only while it knows it holds the lease: from the moment it sent the acquire or the last renewal that
succeeded, for less than the lease period (the lease runs from when storage took that request, no earlier). A renewal
that fails (storage unreachable included, however long the SDK's retries take) is retried until that period is up;
then the host stops firing and polls for the lease again, as another host may have taken it. Storage errors while
polling are warnings, and the listener keeps polling: an outage never ends a timer for good.

The schedule monitor (``useMonitor``, true unless the binding says false) is turned off,
as the host turns it off, for a schedule more frequent than a minute: a TimeSpan under a
minute, or a cron expression whose fields from minutes on are all "every" and which names
more than one second (``*/30 * * * * *`` included). While it is on, the last and next occurrences
are kept in ``azure-webjobs-hosts/timers/<host id>/Host.Functions.<name>/status``
(``{"Last", "Next", "LastUpdated"}``) and the function sees them in
``timer.schedule_status``; while it is off, ``schedule_status`` is ``{}``. When the
listener starts, the status is checked as the host checks it: a status whose ``Next``
is not what the current schedule gives after ``Last`` (``LastUpdated`` when there is no
``Last``) comes from another schedule and is rewritten, without ``Last``, not past due; otherwise a
``Next`` in the past runs the function at once with ``past_due`` true. ``run_on_startup`` runs it
at once too (``past_due`` false). Else the first occurrence waited for is the status' ``Next`` (as
rewritten): a TimeSpan schedule counts from the recorded ``Last`` or ``LastUpdated``, not from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.functions.timer import TimerRequest
from azure.storage.blob.aio import BlobLeaseClient, BlobServiceClient, ContainerClient

from devhost.app_loader import FunctionSpec
from devhost.errors import DevHostError
from devhost.invocation import Invoker, Outcome
from devhost.schedule import Schedule
from devhost.settings import SingletonOptions, resolve

logger = logging.getLogger(__name__)

HOSTS_CONTAINER = "azure-webjobs-hosts"
# Seconds the lease release waits for storage; past it the lease is left to expire.
RELEASE_TIMEOUT = 5.0


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _parse(text: object) -> datetime | None:
    """A status blob's moment, or None when it has none; ValueError when it is not an ISO 8601 string."""
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise ValueError(f"not a moment: {text!r}")
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.year == 1:  # .NET's default(DateTime), which the host writes for "never"
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _flag(value: Any) -> bool:
    return str(value).lower() == "true" if not isinstance(value, bool) else value


def _too_frequent_for_the_monitor(schedule: Schedule) -> bool:
    """TimerSchedule.ShouldDisableScheduleMonitor (azure-webjobs-sdk-extensions): a TimeSpan under a minute, or every
    field from minutes on a wildcard and more than one occurrence in the minute after ``DateTime.Now``. That window
    starts at the wall clock, not at a whole minute (nor, but by chance, at a whole second), so it holds each second
    the schedule names once: ``*/30 * * * * *`` (:00 and :30) has two occurrences and no monitor. A five-field
    expression fires at second 0 only: never more than once a minute."""
    if schedule.interval is not None:
        return schedule.interval < timedelta(minutes=1)
    fields = schedule.fields
    if any(len(values) != len(full) for values, full in zip(fields[1:], _FULL_FIELDS, strict=True)):
        return False
    return len(fields[0]) > 1


_FULL_FIELDS = (range(60), range(24), range(1, 32), range(1, 13), range(7))  # minute .. day-of-week


def uses_monitor(trigger: dict[str, Any], schedule: Schedule) -> bool:
    """The schedule monitor as the host decides it (TimerSchedule.Create): ``useMonitor`` (true when absent), turned
    off for schedules more frequent than a minute whatever the binding says."""
    return _flag(trigger.get("useMonitor", True)) and not _too_frequent_for_the_monitor(schedule)


class TimerListener:
    """Fires one timer function while this dev host holds its lease."""

    def __init__(self, spec: FunctionSpec, schedule: Schedule, invoker: Invoker, service: BlobServiceClient,
                 host_id: str, singleton: SingletonOptions) -> None:
        self.spec = spec
        self.schedule = schedule
        self._invoker = invoker
        self._container: ContainerClient = service.get_container_client(HOSTS_CONTAINER)
        self._lock_blob = f"locks/{host_id}/Host.Functions.{spec.name}.Listener"
        self._status_blob = f"timers/{host_id}/Host.Functions.{spec.name}/status"
        self._lease_seconds = int(singleton.listener_lock_period.total_seconds())
        self._polling = singleton.listener_lock_recovery_polling_interval.total_seconds()
        self._lease_id = str(uuid.uuid4())
        self._lease: BlobLeaseClient | None = None
        # loop.time() until which the lease is known to be held; 0 when none is
        self._held_until = 0.0
        self._lost = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        trigger = spec.trigger
        self.run_on_startup = _flag(trigger.get("runOnStartup", False))
        self.use_monitor = uses_monitor(trigger, schedule)
        self._last: datetime | None = None
        # the occurrence to wait for: with the monitor, the checked status' Next at the start; then the one after the
        # last run, set when that run ends
        self._next_due: datetime | None = None

    @classmethod
    def create(cls, spec: FunctionSpec, invoker: Invoker, service: BlobServiceClient, host_id: str,
               singleton: SingletonOptions, environ: Any, zone: Any) -> TimerListener:
        expression = resolve(str(spec.trigger.get("schedule") or ""), environ, what=f"function {spec.name!r} schedule")
        try:
            schedule = Schedule.parse(expression, zone)
        except DevHostError as exc:
            raise DevHostError(f"function {spec.name!r}: {exc}") from exc
        for warning in schedule.warnings:
            logger.warning("Functions.%s: timer schedule %r: %s", spec.name, schedule.expression, warning)
        return cls(spec, schedule, invoker, service, host_id, singleton)

    @property
    def name(self) -> str:
        return self.spec.name

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"timer-{self.name}")
        logger.info("Functions.%s: timer %r (monitor %s, run on startup %s)", self.name, self.schedule.expression,
                    self.use_monitor, self.run_on_startup)

    async def stop(self) -> None:
        """Let a running invocation finish, then release the lease."""
        self._stopping.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        logger.info("Functions.%s: stopped", self.name)

    async def _sleep(self, seconds: float, *, until_lost: bool = False) -> None:
        """Sleep, waking early on shutdown, and with ``until_lost`` when the lease is lost. Only the wait for the next
        occurrence wakes on the loss: ``_lost`` stays set until the lease is taken again, so a polling sleep that woke
        on it would poll storage in a tight loop while another host holds the lease."""
        events = [self._stopping] + ([self._lost] if until_lost else [])
        waits = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(waits, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _run(self) -> None:
        """Poll for the lease and fire while holding it, until shutdown. Nothing but shutdown ends this loop: an
        error it did not expect is logged and the listener starts over after the polling interval (``stop`` gathers
        the task with ``return_exceptions``, so an error that ended it would never be seen)."""
        while not self._stopping.is_set():
            try:
                await self._hold_and_fire()
            except Exception:
                logger.exception("Functions.%s: timer listener failed; polling for its lease again", self.name)
                await self._sleep(self._polling)

    async def _hold_and_fire(self) -> None:
        waiting_logged = False
        while not self._stopping.is_set():
            if not await self._acquire_unless_stopping():
                if not waiting_logged:
                    logger.info("Functions.%s: another host holds the timer lease; polling every %.0fs",
                                self.name, self._polling)
                    waiting_logged = True
                await self._sleep(self._polling)
                continue
            waiting_logged = False
            logger.info("Functions.%s: acquired the timer lease", self.name)
            self._lost.clear()
            renewing = asyncio.create_task(self._renew())
            try:
                await self._fire_while_leader()
            except Exception:
                logger.exception("Functions.%s: timer listener failed; restarting it", self.name)
                await self._sleep(self._polling)
            finally:
                renewing.cancel()
                await asyncio.gather(renewing, return_exceptions=True)
                await self._release()

    async def _acquire_unless_stopping(self) -> bool:
        """:meth:`_acquire`, given up at shutdown: against unreachable storage one attempt lasts as long as the SDK's
        retries (over a minute), which shutdown should not wait out."""
        acquiring = asyncio.ensure_future(self._acquire())
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait([acquiring, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not acquiring.done():
            acquiring.cancel()
            await asyncio.gather(acquiring, return_exceptions=True)
            return False
        return acquiring.result()

    async def _acquire(self) -> bool:
        """True when this host now holds the lease; False when another host does or storage failed (a warning)."""
        blob = self._container.get_blob_client(self._lock_blob)
        try:
            with contextlib.suppress(ResourceExistsError):
                await self._container.create_container()
            # It may exist already, perhaps leased by another host.
            with contextlib.suppress(ResourceExistsError, HttpResponseError):
                await blob.upload_blob(b"", overwrite=False)
            lease = BlobLeaseClient(blob, lease_id=self._lease_id)
            sent = asyncio.get_running_loop().time()
            await lease.acquire(lease_duration=self._lease_seconds)
        except HttpResponseError as exc:
            if exc.status_code not in (409, 412):
                logger.warning("Functions.%s: cannot take the timer lease on the lock blob: %s", self.name, exc)
            return False
        except AzureError as exc:  # storage unreachable (ServiceRequestError), after the SDK's retries
            logger.warning("Functions.%s: cannot reach storage for the timer lease (%s); polling again in %.0fs",
                           self.name, exc, self._polling)
            return False
        self._lease = lease
        self._held_until = sent + self._lease_seconds
        return True

    async def _renew(self) -> None:
        """Renew at a third of the lease period. A failed renewal is retried every second while the lease is still
        known to be held; when it no longer is (or storage says it is gone), the lease is lost and firing stops."""
        loop = asyncio.get_running_loop()
        delay = self._lease_seconds / 3
        while True:
            await asyncio.sleep(delay)
            if self._lease is None:
                return
            sent = loop.time()
            remaining = self._held_until - sent
            try:
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(self._lease.renew(), timeout=remaining)
            except (TimeoutError, AzureError) as exc:
                gone = isinstance(exc, HttpResponseError) and exc.status_code in (404, 409, 412)
                if gone or loop.time() + 1 >= self._held_until:
                    reason = str(exc) or f"no renewal succeeded within the lease period ({self._lease_seconds}s)"
                    logger.warning("Functions.%s: lost the timer lease (%s); stopping the timer here", self.name,
                                   reason)
                    self._lease = None
                    self._held_until = 0.0
                    self._lost.set()
                    return
                logger.warning("Functions.%s: could not renew the timer lease (%s); retrying", self.name, exc)
                delay = 1.0
                continue
            self._held_until = sent + self._lease_seconds
            delay = self._lease_seconds / 3

    async def _release(self) -> None:
        """Release the lease so that another host takes over at once, within :data:`RELEASE_TIMEOUT`: against
        unreachable storage the SDK's retries last over a minute, past the host's shutdown timeout, and the lease
        expires on its own anyway (so it is not released at all once it is no longer known to be held)."""
        lease, held_until = self._lease, self._held_until
        self._lease, self._held_until = None, 0.0
        if lease is None:
            return
        remaining = held_until - asyncio.get_running_loop().time()
        if remaining <= 0:
            logger.warning("Functions.%s: not releasing the timer lease, no longer known to be held; it expires on "
                           "its own", self.name)
            return
        try:
            await asyncio.wait_for(lease.release(), timeout=min(RELEASE_TIMEOUT, remaining))
        except (TimeoutError, AzureError) as exc:
            reason = str(exc) or f"no answer from storage within {min(RELEASE_TIMEOUT, remaining):.0f}s"
            logger.warning("Functions.%s: could not release the timer lease (%s); it expires on its own within "
                           "%.0fs", self.name, reason, remaining)

    def _leading(self) -> bool:
        """Whether to fire: not shutting down, and the lease known to be held (the renewal task may still be waiting
        on storage when the lease period ends)."""
        return (not self._stopping.is_set() and not self._lost.is_set()
                and asyncio.get_running_loop().time() < self._held_until)

    async def _read_status(self) -> dict[str, Any] | None:
        try:
            downloader = await self._container.get_blob_client(self._status_blob).download_blob()
            status = json.loads(await downloader.readall())
            if not isinstance(status, dict):
                raise ValueError("not a JSON object")
            for key in ("Last", "Next"):
                _parse(status.get(key))
            return status
        except ResourceNotFoundError:
            return None
        except ValueError as exc:  # as no status: the schedule goes on rather than the timer failing at every tick
            logger.warning("Functions.%s: unreadable timer status blob (%s); ignoring it", self.name, exc)
            return None

    async def _write_status(self, last: datetime | None, next_: datetime, *, updated: datetime | None = None) -> None:
        if not self.use_monitor:
            return
        status = {"Last": _iso(last) if last else None, "Next": _iso(next_),
                  "LastUpdated": _iso(updated or datetime.now(UTC))}
        await self._container.get_blob_client(self._status_blob).upload_blob(json.dumps(status), overwrite=True)

    async def _check_status(self, now: datetime, status: dict[str, Any] | None) -> datetime:
        """ScheduleMonitor.CheckPastDueAsync (azure-webjobs-sdk-extensions): write a first status, or a new one when
        the schedule changed since the status was written. Returns the status' Next after that: the start is past due
        when it has gone by, and otherwise the timer first waits for it (TimerListener.StartAsync starts the timer for
        ``ScheduleStatus.Next``, so a TimeSpan schedule counts from the recorded Last or LastUpdated, not from the
        start).

        The new status has no ``Last`` and, as ``LastUpdated``, the moment its ``Next`` was computed from: the next
        start then finds the same ``Next`` from ``LastUpdated``, so an occurrence missed before it is past due. With
        the old ``Last`` kept, that start would take the status for another schedule change and lose the
        occurrence."""
        if status is None:
            first_next = self._next(now)
            await self._write_status(None, first_next, updated=now)
            return first_next
        since = _parse(status.get("Last")) or _parse(status.get("LastUpdated")) or now
        expected_next = self._next(since)
        if _parse(status.get("Next")) != expected_next:  # another schedule wrote it
            if now > expected_next:  # not past due for a schedule it never ran on: from now
                since, expected_next = now, self._next(now)
            await self._write_status(None, expected_next, updated=since)
        return expected_next

    async def _fire_while_leader(self) -> None:
        """Fire while this host holds the lease. As the extension's TimerListener does, the occurrence after a run is
        computed from the moment that run started (``InvokeJobFunction``: ``Next = GetNextOccurrence(invocation
        time)``) and the timer then started for it from now (``GetNextTimerInterval``): an occurrence that came due
        while the run went on fires as soon as it ends (one, not every one missed). With the monitor, the first
        occurrence waited for is the checked status' ``Next``."""
        now = datetime.now(UTC)
        self._next_due = None
        status = await self._read_status() if self.use_monitor else None
        self._last = _parse((status or {}).get("Last")) or self._last
        past_due = False
        if self.use_monitor:
            self._next_due = await self._check_status(now, status)
            past_due = now > self._next_due
            if status is None:  # TimerListener.StartAsync, first start: the status the function sees
                status = {"Last": None, "Next": _iso(self._next_due), "LastUpdated": None}
        if not self._leading():  # the status read may outlast the lease, or shutdown come during it
            return
        if past_due or self.run_on_startup:
            why = "past due" if past_due else "run on startup"
            fired = await self._fire(now, past_due=past_due, reason=f"Timer fired at startup ({why})",
                                     status=status or {})
            if not fired:
                return
        while self._leading():
            occurrence = self._next_due or (self._next(self._last or datetime.now(UTC)) if self.schedule.interval
                                            else self._next(datetime.now(UTC)))
            await self._sleep((occurrence - datetime.now(UTC)).total_seconds(), until_lost=True)
            if not self._leading():
                return
            if datetime.now(UTC) < occurrence:
                continue
            status = {"Last": _iso(self._last) if self._last else None, "Next": _iso(occurrence),
                      "LastUpdated": _iso(datetime.now(UTC))}
            if not await self._fire(occurrence, past_due=False, reason=f"Timer fired at {_iso(occurrence)}",
                                    status=status):
                return

    def _next(self, after: datetime) -> datetime:
        return self.schedule.next_after(after)

    async def _fire(self, occurrence: datetime, *, past_due: bool, reason: str, status: dict[str, Any]) -> bool:
        """Invoke once (with retries); False when shutdown abandoned it (the status is then left as it was)."""
        # TimerListener.InvokeJobFunction gives the status only when the monitor is on (TimerRequest: {} otherwise).
        request = TimerRequest(past_due=past_due, schedule_status=status if self.use_monitor else {},
                               schedule={"AdjustForDST": True})
        started = datetime.now(UTC)
        outcome = await self._invoker.call_with_retry(
            self.spec, {self.spec.trigger_param: request}, reason=reason, stopping=self._stopping)
        if outcome is Outcome.ABANDONED:
            return False
        # InvokeJobFunction: Last is the invocation time (the occurrence when the timer fired early), Next the
        # occurrence after it, however long the run took.
        self._last = max(started, occurrence)
        self._next_due = self._next(self._last)
        try:
            await self._write_status(self._last, self._next_due, updated=self._last)
        except AzureError as exc:
            logger.warning("Functions.%s: could not save the timer status: %s", self.name, exc)
        return True
