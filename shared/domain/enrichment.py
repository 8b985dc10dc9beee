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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import attrgetter

from shared.domain.rules import Criticality, MeasurementRule
from shared.domain.stored import StoredEvent
from shared.domain.times import floor


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
    start = floor(moment, window_seconds)
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
    """count, min, max, sum and the value of the latest event carrying the measurement.

    ``last_key`` is that event's (event time, event id as an integer): events are
    ordered by event time, ties broken by event id, so every run picks the same
    ``last``. Summaries of one measurement merge (devices -> site).
    """

    count: int
    min: float
    max: float
    total: float
    last: float
    last_key: tuple[datetime, int]

    @classmethod
    def of(cls, values: list[float], last_key: tuple[datetime, int]) -> MeasurementSummary:
        """From the values in event order."""
        return cls(len(values), min(values), max(values), math.fsum(values), values[-1], last_key)

    def merge(self, other: MeasurementSummary) -> None:
        self.count += other.count
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.total += other.total
        if other.last_key > self.last_key:
            self.last, self.last_key = other.last, other.last_key

    def as_dict(self) -> dict[str, float | int]:
        return {
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "avg": self.total / self.count,
            "last": self.last,
        }


def _summaries(events: list[StoredEvent]) -> dict[str, MeasurementSummary]:
    """Per measurement summaries of one device's events (in event order)."""
    values: dict[str, list[float]] = {}
    for event in events:
        for name, value in event.measurements.items():
            bucket = values.get(name)
            if bucket is None:
                values[name] = [value]
            else:
                bucket.append(value)
    last: dict[str, tuple[datetime, int]] = {}
    for index in range(len(events) - 1, -1, -1):  # the latest event carrying each measurement
        for name in events[index].measurements:
            if name not in last:
                last[name] = _event_key(events[index])
        if len(last) == len(values):
            break
    return {name: MeasurementSummary.of(vals, last[name]) for name, vals in values.items()}


def _as_dicts(summaries: Mapping[str, MeasurementSummary]) -> dict[str, dict[str, float | int]]:
    return {name: summaries[name].as_dict() for name in sorted(summaries)}


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

    ``events`` are grouped by device (devices sorted), each group in event order
    (event time, then event id), one per event id;
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


_event_key = attrgetter("event_time", "event_id.int")  # event order: time, then event id (C-level getter)


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
    has none. Sums use ``math.fsum``, so averages do not depend on read order either.
    """
    start, end = window.start, window.end
    criticality = Criticality(rules)
    by_id: dict[int, StoredEvent] = {}  # keyed by the UUID's integer: hashing it needs no Python-level call
    duplicates = 0
    for event in events:
        if not (start <= event.event_time < end):
            continue
        earlier = by_id.setdefault(event.event_id.int, event)
        if earlier is not event:
            duplicates += 1
            if _event_key(event) > _event_key(earlier):
                by_id[event.event_id.int] = event

    per_device: dict[str, list[StoredEvent]] = {}
    for event in by_id.values():
        group = per_device.get(event.device_id)
        if group is None:
            per_device[event.device_id] = [event]
        else:
            group.append(event)

    ordered: list[StoredEvent] = []
    flags: list[bool] = []
    devices: dict[str, DeviceContext] = {}
    device_stats: list[DeviceWindowStats] = []
    per_site: dict[str, tuple[list[str], list[int], dict[str, MeasurementSummary]]] = {}
    for device_id in sorted(per_device):
        group = per_device[device_id]
        group.sort(key=_event_key)
        critical = [e.critical if e.critical is not None else criticality(e.severity, e.measurements) for e in group]
        context = devices[device_id] = DeviceContext.resolve(device_id, reference)
        summaries = _summaries(group)
        device_stats.append(DeviceWindowStats(context, len(group), sum(critical), group[0].event_time,
                                              group[-1].event_time, _as_dicts(summaries)))
        ordered.extend(group)
        flags.extend(critical)
        if context.site_id is not None:
            members, counts, merged = per_site.setdefault(context.site_id, ([], [0, 0], {}))
            members.append(device_id)
            counts[0] += len(group)
            counts[1] += sum(critical)
            for name, summary in summaries.items():
                into = merged.get(name)
                if into is None:
                    merged[name] = MeasurementSummary(summary.count, summary.min, summary.max, summary.total,
                                                      summary.last, summary.last_key)
                else:
                    into.merge(summary)

    site_stats = []
    for site_id in sorted(per_site):
        members, (event_count, critical_count), merged = per_site[site_id]
        site = reference.sites.get(site_id)
        site_stats.append(SiteWindowStats(site_id, site.name if site else None, site.region if site else None,
                                          len(members), event_count, critical_count, _as_dicts(merged)))
    return EnrichedWindow(window, ordered, flags, devices, device_stats, site_stats, duplicates)
