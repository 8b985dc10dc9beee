"""Enrichment windows, reference data and the figures of one window (pure: no I/O, no SDK imports).

A window is ``[start, start + window_seconds)`` in UTC, aligned to the Unix epoch
like the Cassandra time buckets. It is *closed* once
``now >= end + allowed_lateness``: events of a closed window are expected to be
in Cassandra, so it can be enriched. :func:`compute_window` turns every event of a
window plus the reference data into the rows the enrichment sink writes; the same
events and reference data always give the same figures, which is what makes a
re-run change nothing.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from shared.domain.rules import MeasurementRule, is_critical
from shared.domain.timebuckets import EPOCH
from shared.ports.stored import StoredEvent


@dataclass(frozen=True, slots=True, order=True)
class Window:
    """``[start, end)`` in UTC."""

    start: datetime
    end: datetime

    def __str__(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"

    def closed(self, now: datetime, allowed_lateness: timedelta) -> bool:
        return now >= self.end + allowed_lateness


def window_of(moment: datetime, window_seconds: int) -> Window:
    """The window holding ``moment`` (aware; naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = math.floor((moment - EPOCH).total_seconds() / window_seconds) * window_seconds
    start = EPOCH + timedelta(seconds=seconds)
    return Window(start, start + timedelta(seconds=window_seconds))


def windows_between(start: datetime, end: datetime, window_seconds: int) -> Iterator[Window]:
    """Every window overlapping ``[start, end)``, oldest first."""
    window = window_of(start, window_seconds)
    while window.start < end:
        yield window
        window = Window(window.end, window.end + timedelta(seconds=window_seconds))


# --- reference data ---


@dataclass(frozen=True, slots=True)
class DeviceRef:
    device_id: str
    site_id: str | None = None
    model: str | None = None
    firmware: str | None = None
    owner: str | None = None
    installed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SiteRef:
    site_id: str
    name: str
    region: str | None = None
    timezone: str | None = None
    latitude: float | None = None
    longitude: float | None = None


@dataclass(frozen=True, slots=True)
class ReferenceData:
    """Devices and sites by id, as loaded once per enrichment run."""

    devices: Mapping[str, DeviceRef] = field(default_factory=dict)
    sites: Mapping[str, SiteRef] = field(default_factory=dict)

    @classmethod
    def of(cls, devices: Iterable[DeviceRef], sites: Iterable[SiteRef]) -> ReferenceData:
        return cls({d.device_id: d for d in devices}, {s.site_id: s for s in sites})


@dataclass(frozen=True, slots=True)
class DeviceContext:
    """The reference columns of one device as enriched rows carry them (all ``None`` for an unknown device)."""

    device_id: str
    known: bool
    site_id: str | None = None
    model: str | None = None
    firmware: str | None = None
    owner: str | None = None
    site_name: str | None = None
    region: str | None = None
    site_timezone: str | None = None

    @classmethod
    def resolve(cls, device_id: str, reference: ReferenceData) -> DeviceContext:
        device = reference.devices.get(device_id)
        if device is None:
            return cls(device_id, False)
        site = reference.sites.get(device.site_id) if device.site_id else None
        return cls(
            device_id, True, device.site_id, device.model, device.firmware, device.owner,
            site.name if site else None, site.region if site else None, site.timezone if site else None,
        )


# --- the figures of a window ---


@dataclass(slots=True)
class MeasurementSummary:
    """count, min, max, mean and the value of the latest event (event time, then event id)."""

    count: int = 0
    min: float = math.inf
    max: float = -math.inf
    total: float = 0.0
    last: float = 0.0

    def add(self, value: float) -> None:
        """Values must arrive in event order (``last`` is the latest one added)."""
        self.count += 1
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.total += value
        self.last = value

    def as_dict(self) -> dict[str, float | int]:
        return {"count": self.count, "min": self.min, "max": self.max, "avg": self.total / self.count, "last": self.last}


@dataclass(slots=True)
class _Figures:
    event_count: int = 0
    critical_count: int = 0
    first: datetime | None = None
    last: datetime | None = None
    measurements: dict[str, MeasurementSummary] = field(default_factory=dict)
    devices: set[str] = field(default_factory=set)

    def add(self, event: StoredEvent, critical: bool) -> None:
        self.event_count += 1
        self.critical_count += critical
        if self.first is None:
            self.first = event.event_time
        self.last = event.event_time
        for name, value in event.measurements.items():
            summary = self.measurements.get(name)
            if summary is None:
                summary = self.measurements[name] = MeasurementSummary()
            summary.add(value)

    def measurements_dict(self) -> dict[str, dict[str, float | int]]:
        return {name: summary.as_dict() for name, summary in sorted(self.measurements.items())}


@dataclass(frozen=True, slots=True)
class DeviceWindowStats:
    device: DeviceContext
    event_count: int
    critical_count: int
    first_event_time: datetime
    last_event_time: datetime
    measurements: dict[str, dict[str, float | int]]


@dataclass(frozen=True, slots=True)
class SiteWindowStats:
    site_id: str
    site_name: str | None
    region: str | None
    device_count: int
    event_count: int
    critical_count: int
    measurements: dict[str, dict[str, float | int]]


@dataclass(frozen=True, slots=True)
class EnrichedWindow:
    """Everything the sink writes for one window.

    ``events`` are in event order (event time, then event id), one per event id;
    ``critical`` holds the critical flag of each of them (same order);
    ``devices`` the reference columns of every device seen.
    """

    window: Window
    events: Sequence[StoredEvent]
    critical: Sequence[bool]
    devices: Mapping[str, DeviceContext]
    device_stats: Sequence[DeviceWindowStats]
    site_stats: Sequence[SiteWindowStats]
    duplicate_ids: int = 0

    @property
    def unknown_devices(self) -> list[str]:
        return sorted(d for d, ctx in self.devices.items() if not ctx.known)

    @property
    def unknown_device_events(self) -> int:
        return sum(s.event_count for s in self.device_stats if not s.device.known)


def _event_key(event: StoredEvent) -> tuple[datetime, uuid.UUID]:
    return (event.event_time, event.event_id)


def compute_window(
    window: Window,
    events: Iterable[StoredEvent],
    reference: ReferenceData,
    rules: Sequence[MeasurementRule] = (),
) -> EnrichedWindow:
    """The enriched rows and figures of ``window`` from every event read for it.

    Events outside the window are ignored. An event id read twice (it sits in two
    rows because it was sent twice with different timestamps) counts once: the row
    with the latest event time wins, so the outcome does not depend on read order.
    ``critical`` comes from the flag ingest stored, or from ``rules`` when a row
    has none.
    """
    by_id: dict[uuid.UUID, StoredEvent] = {}
    duplicates = 0
    for event in events:
        if not (window.start <= event.event_time < window.end):
            continue
        earlier = by_id.get(event.event_id)
        if earlier is not None:
            duplicates += 1
            if _event_key(earlier) >= _event_key(event):
                continue
        by_id[event.event_id] = event
    ordered = sorted(by_id.values(), key=_event_key)

    devices: dict[str, DeviceContext] = {}
    per_device: dict[str, _Figures] = {}
    per_site: dict[str, _Figures] = {}
    flags: list[bool] = []
    for event in ordered:
        critical = event.critical if event.critical is not None else is_critical(
            event.severity, event.measurements, rules)
        flags.append(critical)
        context = devices.get(event.device_id)
        if context is None:
            context = devices[event.device_id] = DeviceContext.resolve(event.device_id, reference)
            per_device[event.device_id] = _Figures()
        per_device[event.device_id].add(event, critical)
        if context.site_id is not None:
            site = per_site.get(context.site_id)
            if site is None:
                site = per_site[context.site_id] = _Figures()
            site.add(event, critical)
            site.devices.add(event.device_id)

    device_stats = [
        DeviceWindowStats(devices[device_id], f.event_count, f.critical_count, f.first, f.last,  # type: ignore[arg-type]
                          f.measurements_dict())
        for device_id, f in sorted(per_device.items())
    ]
    site_stats = []
    for site_id, f in sorted(per_site.items()):
        site = reference.sites.get(site_id)
        site_stats.append(SiteWindowStats(
            site_id, site.name if site else None, site.region if site else None,
            len(f.devices), f.event_count, f.critical_count, f.measurements_dict(),
        ))
    return EnrichedWindow(window, ordered, flags, devices, device_stats, site_stats, duplicates)
