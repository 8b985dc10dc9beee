"""Rebuild the Redis projection from the event log: ``sluice rebuild redis``.

A full rebuild scans every device of the log (``device_latest`` in token order)
and, for each, its latest event (none for a device whose newest event a
correction moved to another device) and its critical events at or after ``since``
(for the critical stream and its markers also the earlier ones the change feed's
stream could still hold: ``CacheBuilder.stream_since_ms``), into a *new* key
generation; the lookups keep reading the live generation
until the rebuild switches the pointer at the end, atomically. While the build
runs the change feed writes each change to both generations, so the result
equals a quiet rebuild: a change either reached the log before the rebuild read
that device (the rebuild writes it) or the change feed wrote it to the new
generation too (``shared.adapters.redis.generations``). Every write is one of the
cache's idempotent merges, so a page written twice is harmless.

After each page of devices is written, the position (the page's last token) is
saved; a killed rebuild resumes from it (``resume=True``, the default) in the
same generation, and so does one that failed, at once: it gives up its claim on
the build (``CacheBuilder.release``) on the way out. A build in progress with another ``since`` cannot be resumed:
the rebuild is refused (``ConfigurationError``) rather than silently throwing
that build away; ``resume=False`` (``--restart``) starts over on purpose. Reads
are rate-limited (rows per second, ``max_rps``, every row the log reads:
``DeviceLog.rows_read``) so a rebuild does not take the request units the
pipeline needs: a page of devices (two rows each) is paid for before it is read
and holds no more devices than the bucket's burst (one second's worth) pays for,
so no second reads more than twice the rate; a device's critical events, whose
number is known only once read, are read with a second's worth reserved
(``TokenBucket.reserve``) and charged the difference after the read, so reads on
several threads never run ahead of the rate. A full rebuild reads a page's
critical rows device by device, then the copies that tell which rows are
current (``PagedDeviceLog.current``) for the whole page at once, reserved by
their number (at most one a row; with ``max_rps`` in groups of devices of no
more rows than the bucket holds), rather than a round trip per device.

``--devices`` rebuilds only those devices, in the live generation: their keys
are deleted, with the cached documents (``e:<id>``) of their latest and critical
events (the ids read from the log first) and of the events their keys name, then
the log is read and written back with the merging scripts (meanwhile a lookup
misses and reads the log itself, so it never sees a wrong value; a change the
feed applies meanwhile is in the read or kept by the merge). The documents of a
device's other events, which only lookups cache, are not listed anywhere to
delete: they expire with the TTL (a full rebuild drops them with its generation).

The generation a rebuild replaces is deleted after the switch (``CacheBuilder.cleanup``);
if that fails the rebuild has still succeeded, and says so (``GenerationsLeft``):
the generation stays recorded, and the next rebuild deletes it before it builds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from shared.domain.rules import Criticality, MeasurementRule
from shared.domain.stored import StoredEvent
from shared.domain.times import from_ms
from shared.exceptions import ConfigurationError, DependencyUnavailable
from shared.ports.cache import SINCE_ALL
from shared.ports.rebuild import CacheBuilder, DeviceLog, DeviceRow, PagedDeviceLog

logger = logging.getLogger(__name__)

# The rows a device's position costs: its device_latest row and its latest event from events_by_id.
_ROWS_PER_DEVICE = 2

TOKEN_MIN = -(2**63)
TOKEN_SPAN = 2**64


class TokenBucket:
    """At most ``rate`` units per second on average, bursts up to ``burst`` (default: one second's worth).

    ``rate=None`` never waits. ``clock`` and ``sleep`` are injectable for tests (with ``sleep`` given, a
    reservation waiting for its units is not woken early by units given back; without it, it is).
    """

    def __init__(self, rate: float | None, *, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] | None = None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.capacity = burst if burst is not None else (rate or 0.0)
        self._tokens = self.capacity
        self._clock, self._sleep = clock, sleep
        self._last = clock()
        self._lock = threading.Lock()
        self._given_back = threading.Condition(self._lock)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * (self.rate or 0.0))
        self._last = now

    def acquire(self, units: float = 1.0) -> float:
        """Take ``units`` (more than the burst is allowed: it waits for the deficit). Returns the seconds waited.

        Negative ``units`` give back what a :meth:`reserve` took and the read did not use (up to the burst)."""
        if self.rate is None or units == 0:
            return 0.0
        with self._lock:
            self._refill()
            self._tokens = min(self.capacity, self._tokens - units)
            if units < 0:
                self._given_back.notify_all()
                return 0.0
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            (self._sleep or time.sleep)(wait)
        return wait

    def reserve(self, units: float) -> float:
        """Wait until the bucket holds ``units`` (at most its burst), then take them. Returns the seconds waited.

        For a read whose size is known only once it returns: it starts only with the most it may read paid for,
        so reads running at once never read more than the bucket holds; what it did not use is given back
        (``acquire(-unused)``), which lets the next one start."""
        if self.rate is None:
            return 0.0
        started = self._clock()
        while True:
            with self._lock:
                self._refill()
                short = min(units, self.capacity) - self._tokens
                if short <= 0:
                    self._tokens -= units
                    return self._clock() - started
                if self._sleep is None:
                    self._given_back.wait(short / self.rate)
                    continue
            self._sleep(short / self.rate)


@dataclass(slots=True)
class RebuildReport:
    """What a rebuild did: the figures the command prints and logs."""

    generation: int | None
    replaced: int | None
    devices: int = 0
    events: int = 0
    seconds: float = 0.0
    resumed_from: int | None = None
    not_found: list[str] | None = None  # a device rebuild's ids the log has no device of (None: a full rebuild)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def fields(self) -> dict[str, object]:
        figures: dict[str, object] = {
            "generation": self.generation, "replaced": self.replaced, "devices": self.devices, "events": self.events,
            "duration_seconds": round(self.seconds, 3), "events_per_second": round(self.events_per_second, 1),
            "resumed_from": self.resumed_from}
        if self.not_found is not None:
            figures["not_found"] = self.not_found
        return figures


Progress = Callable[[RebuildReport, float], None]


class GenerationsLeft(DependencyUnavailable):
    """The rebuild switched readers to its generation (``report``), but deleting a replaced one failed.

    The generation stays recorded for deletion: the next rebuild deletes it.
    """

    def __init__(self, report: RebuildReport, cause: DependencyUnavailable) -> None:
        super().__init__(cause.dependency, f"generation {report.generation} is live, but deleting the generation it "
                                           f"replaced failed (the next rebuild deletes it): {cause}")
        self.report = report


def token_fraction(token: int | None) -> float:
    """How far through the token ring a position is (0 to 1)."""
    return 0.0 if token is None else (token - TOKEN_MIN + 1) / TOKEN_SPAN


def _since(since_ms: int) -> str:
    return "no --since" if since_ms <= SINCE_ALL else f"--since {from_ms(since_ms).isoformat(timespec='milliseconds')}"


class RebuildService:
    def __init__(self, log: DeviceLog, cache: CacheBuilder, *, rules: Sequence[MeasurementRule] = (),
                 page_size: int = 200, concurrency: int = 8, max_rps: float | None = None) -> None:
        self._log = log
        self._criticality = Criticality(rules)
        self._cache = cache
        self._page = page_size
        self._concurrency = concurrency
        self._limiter = TokenBucket(max_rps)
        self._charged = log.rows_read
        self._charging = threading.Lock()

    def _page_limit(self) -> int:
        """Devices a page reads: ``page_size``, but with ``max_rps`` no more than the bucket's burst holds (a page
        reads up to two rows a device: its ``device_latest`` row and its latest event by id), so that the page,
        paid for before it is read, is never more rows at once than the rate allows in one second."""
        if self._limiter.rate is None:
            return self._page
        return max(1, min(self._page, int(self._limiter.capacity) // _ROWS_PER_DEVICE))

    def _charge(self, prepaid: int = 0) -> None:
        """Take from the bucket every row the log read since the last charge, less ``prepaid``: what was taken
        before the read, for the most rows it could read. The log counts the rows, since only it knows every read
        a call makes (each device's latest event by id, a page of devices read again); what it read beyond
        ``prepaid`` is charged after the read, and what it read less is given back."""
        with self._charging:
            read = self._log.rows_read
            rows, self._charged = read - self._charged, read
        self._limiter.acquire(rows - prepaid)

    def _device(self, device: str) -> DeviceRow | None:
        """One device's row, its two reads paid for before they are made."""
        self._limiter.acquire(_ROWS_PER_DEVICE)
        row = self._log.device(device)
        self._charge(prepaid=_ROWS_PER_DEVICE)
        return row

    def _decided(self, event: StoredEvent) -> StoredEvent:
        """``critical`` decided as the change feed decides it (rows written without the flag get the rules)."""
        return self._criticality.decided(event)

    def _critical_only(self, events: Sequence[StoredEvent]) -> list[StoredEvent]:
        """``events`` decided as the change feed decides them: a row written without the flag gets the rules, and
        one the rules do not find critical is left out, as the feed leaves it out of the critical list (``to_json``
        would write a missing flag as ``false``)."""
        return [event for event in map(self._decided, events) if event.critical]

    def _prepaid(self, read: Callable[[str, int], list[StoredEvent]], device: str,
                 since_ms: int) -> list[StoredEvent]:
        """``read(device, since_ms)`` of a device's critical events or rows, paid for as ``_critical_events`` says."""
        prepaid = int(self._limiter.capacity) if self._limiter.rate is not None else 0
        self._limiter.reserve(prepaid)
        events = read(device, since_ms)
        self._charge(prepaid=prepaid)
        return events

    def _critical_events(self, device: str, since_ms: int) -> list[StoredEvent]:
        """The device's critical events from ``since_ms``, each decided as the change feed decides it
        (:meth:`_critical_only`).

        With ``max_rps`` the read is paid for before it starts, a second's worth (the most a device may read in
        its second: one with more is the exception ``docs/operations.md`` names), and what it did not read is
        given back after: reads on several threads never read more at once than the bucket holds."""
        return self._critical_only(self._prepaid(self._log.critical, device, since_ms))

    def _batches(self, rows: Mapping[str, list[StoredEvent]]) -> Iterator[dict[str, list[StoredEvent]]]:
        """The page's devices with critical rows, in groups whose copies read, paid for by its row count before it
        starts, is with ``max_rps`` no more rows than the bucket holds (a device with more: a group of its own)."""
        limit = int(self._limiter.capacity) if self._limiter.rate is not None else None
        batch: dict[str, list[StoredEvent]] = {}
        size = 0
        for device, events in rows.items():
            if not events:
                continue
            if batch and limit is not None and size + len(events) > limit:
                yield batch
                batch, size = {}, 0
            batch[device] = events
            size += len(events)
        if batch:
            yield batch

    def _critical(
        self, devices: Sequence[str], since_ms: int, pool: ThreadPoolExecutor
    ) -> dict[str, list[StoredEvent]]:
        """The page's devices' critical events, as :meth:`_critical_events` reads them. A log that reads a page's
        copies at once (``PagedDeviceLog``) reads each device's rows on the pool, then the copies of the whole page
        (with ``max_rps``: of as many devices as the bucket pays for) in one round of requests, instead of one round
        per device after its rows."""
        log = self._log
        if not isinstance(log, PagedDeviceLog):
            return dict(zip(devices, pool.map(lambda device: self._critical_events(device, since_ms), devices),
                            strict=True))
        rows = dict(zip(devices, pool.map(lambda device: self._prepaid(log.critical_rows, device, since_ms),
                                          devices), strict=True))
        current: dict[str, list[StoredEvent]] = {device: [] for device in devices}
        for batch in self._batches(rows):
            prepaid = sum(len(events) for events in batch.values())  # at most one copy a row
            self._limiter.reserve(prepaid)
            current.update(log.current(batch))
            self._charge(prepaid=prepaid)
        return {device: self._critical_only(events) for device, events in current.items()}

    def rebuild(self, *, since_ms: int = SINCE_ALL, resume: bool = True,
                progress: Progress | None = None) -> RebuildReport:
        """Rebuild every device into a new generation and switch to it (see the module docstring)."""
        started = time.monotonic()
        if resume:
            current = self._cache.in_progress()
            if current is not None and current.since_ms != since_ms:
                # The build's critical lists start at its own since: it cannot go on with another one, and starting
                # over would throw away every page written so far. The operator decides (--restart).
                done = "no page written yet" if current.position is None else "pages written"
                raise ConfigurationError(
                    f"a rebuild of generation {current.generation} with {_since(current.since_ms)} is in progress "
                    f"({done}); this one, with {_since(since_ms)}, cannot resume it: run again with "
                    f"{_since(current.since_ms)} to resume it, or with --restart to discard it and start over")
        build = self._cache.begin(since_ms, resume=resume)
        report = RebuildReport(build.generation, None, resumed_from=build.position)
        try:
            position = build.position
            # --since bounds the critical lists only: the stream and its markers get every critical event the feed's
            # could still hold, or a replay after the rebuild would append the older ones on top of the stream.
            read_from = min(since_ms, self._cache.stream_since_ms()) if since_ms > SINCE_ALL else since_ms
            with ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="rebuild") as pool:
                limit = self._page_limit()
                while True:
                    self._limiter.acquire(limit * _ROWS_PER_DEVICE)  # before the read: no read bursts past the rate
                    rows = self._log.devices(position, limit)
                    self._charge(prepaid=limit * _ROWS_PER_DEVICE)
                    if not rows:
                        break
                    # A device without a latest state (a correction moved its newest event to another device) gets
                    # none, as the change feed leaves it none, but its critical list, stream candidates and markers.
                    latest = [self._decided(row.latest) for row in rows if row.latest is not None]
                    critical = self._critical([row.device_id for row in rows], read_from, pool)
                    self._cache.write(build.generation, latest, critical, since_ms)
                    position = rows[-1].token
                    self._cache.save_position(build.generation, position)
                    report.devices += len(rows)
                    report.events += len(latest) + sum(len(events) for events in critical.values())
                    report.seconds = time.monotonic() - started
                    if progress is not None:
                        progress(report, token_fraction(position))
            report.replaced = self._cache.finish(build.generation)
        except BaseException:  # the build stays to resume: the next run may, at once (a killed one: once it lapses)
            self._cache.release(build.generation)
            raise
        report.seconds = time.monotonic() - started
        logger.info("rebuild finished %s", json.dumps({"event": "rebuild_finished", **report.fields()}))
        try:
            self._cache.cleanup()
        except DependencyUnavailable as exc:
            raise GenerationsLeft(report, exc) from exc
        return report

    def _event_ids(self, device: str, since_ms: int) -> set[str]:
        """The ids of the device's events whose documents a rebuild writes or a full one drops: its latest event
        and its critical events from ``since_ms``, as the log holds them now."""
        row = self._device(device)
        ids = {str(event.event_id) for event in self._log.critical(device, since_ms)}
        self._charge()
        return ids | ({str(row.latest.event_id)} if row and row.latest else set())

    def rebuild_devices(self, devices: Sequence[str], *, since_ms: int = SINCE_ALL,
                        progress: Progress | None = None) -> RebuildReport:
        """Rebuild only ``devices``, in the live generation (see the module docstring).

        An id the log has no device of (no position in ``device_latest``: a typo, a device never seen; a device
        whose newest event a correction moved away still has one, and is rebuilt) is not counted among the
        devices rebuilt but listed in ``report.not_found``; its keys are cleared all the same, so the cache holds
        for it what the log does: nothing. An id named twice (pasted twice, a shell list with repeats) is rebuilt,
        counted and listed once, in the order first named."""
        devices = list(dict.fromkeys(devices))
        started = time.monotonic()
        not_found: list[str] = []
        report = RebuildReport(None, None, not_found=not_found)
        for index, device in enumerate(devices, 1):
            # Clear first, then read: a change the feed applies meanwhile was stored before it is applied, so it is
            # either in the read or merged over it. Reading first would let the delete take a change the feed
            # applied after the read, and rewrite the older state over it. The cached documents of the device's
            # events (e:<id>) are cleared too, or the refresh's merge would keep a wrong copy there; their ids come
            # from a read of their own before the clear, for that reason.
            self._cache.clear(device, self._event_ids(device, since_ms))
            row = self._device(device)
            events = self._critical_events(device, since_ms)
            latest = self._decided(row.latest) if row and row.latest else None
            self._cache.refresh(device, latest, events, since_ms)
            if row is None:  # no position: not a device without a latest state (its newest event moved away)
                not_found.append(device)
            else:
                report.devices += 1
            report.events += (1 if latest else 0) + len(events)
            report.seconds = time.monotonic() - started
            if progress is not None:
                progress(report, index / len(devices))
        logger.info("rebuild finished %s", json.dumps({"event": "rebuild_finished", **report.fields()}))
        return report
