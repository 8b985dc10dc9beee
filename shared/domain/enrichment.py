"""Enrichment windows, reference data and the figures of one window (pure: no I/O, no SDK imports).

A window is ``[start, start + window_seconds)`` in UTC, aligned to the Unix epoch
like the Cassandra time buckets. It is *closed* once
``now >= end + allowed_lateness``: events of a closed window are expected to be
in Cassandra, so it can be enriched.

A window is enriched in one pass over its events as they are read
(:class:`WindowEnrichment`): each event is handed back at once, with its critical
flag and its device's reference columns, for the sink to stream on, and only the
figures' inputs stay (each measurement's values, 8 bytes each, and the event ids
seen), so a window's memory does not grow with the size of its events
(``docs/enrichment.md#memory``). The same events and reference data always give
the same figures, whatever the read order, which is what makes a re-run change
nothing. :func:`compute_window` does the same pass over events held in memory.
"""

from __future__ import annotations

import math
import uuid
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import attrgetter

import orjson

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


def window_count(start: datetime, end: datetime, window_seconds: int) -> int:
    """How many windows of ``window_seconds`` overlap ``[start, end)`` (:func:`windows_between`), by arithmetic."""
    first = floor(start, window_seconds)
    return -((first - end) // timedelta(seconds=window_seconds)) if end > start else 0


def planned_windows(start: datetime, end: datetime, window_seconds: int, enriched: Iterable[Window]
                    ) -> Iterator[Window]:
    """The windows to write for ``[start, end)``, oldest first, none overlapping another, one at a time.

    ``enriched``: the windows already enriched (ledger rows, which never overlap) overlapping
    ``[window_of(start).start, end)``, whatever width they were enriched with. Each is planned as it is, so an
    enriched window is only ever computed again at its own width; in between, windows of ``window_seconds``
    aligned to the epoch, the first and last of each gap between enriched windows cut to it. Past the last
    enriched window they are not cut: the last one may end after ``end``. With one width all along this is
    :func:`windows_between`. Nothing is held but the enriched windows: a range of millions of windows costs
    no memory (:func:`plan_count` counts them without building them).
    """
    step = timedelta(seconds=window_seconds)
    for segment in _plan_segments(start, end, window_seconds, enriched):
        if isinstance(segment, Window):
            if segment.end > start:
                yield segment
            continue
        at, until, cut = segment
        while at < until:
            following = floor(at, window_seconds) + step
            window = Window(at, min(following, until) if cut else following)
            if window.end > start:
                yield window
            at = window.end


def plan_windows(start: datetime, end: datetime, window_seconds: int, enriched: Iterable[Window]) -> list[Window]:
    """:func:`planned_windows` as a list."""
    return list(planned_windows(start, end, window_seconds, enriched))


def plan_count(start: datetime, end: datetime, window_seconds: int, enriched: Iterable[Window]) -> int:
    """``len(plan_windows(...))``, by arithmetic: each gap between enriched windows counts the windows of
    ``window_seconds`` overlapping the part of it after ``start``."""
    total = 0
    for segment in _plan_segments(start, end, window_seconds, enriched):
        if isinstance(segment, Window):
            total += segment.end > start
        else:
            at, until, _ = segment
            total += window_count(max(at, start), until, window_seconds)
    return total


def _plan_segments(start: datetime, end: datetime, window_seconds: int, enriched: Iterable[Window]
                   ) -> Iterator[Window | tuple[datetime, datetime, bool]]:
    """The plan of ``[start, end)`` as its enriched windows and, before, between and after them, the gaps to fill
    with windows of ``window_seconds`` (``(from, until, cut to until)``)."""
    cursor = floor(start, window_seconds)
    for window in sorted(enriched):
        if window.end <= cursor:
            continue
        if window.start >= end:
            break
        yield cursor, window.start, True
        yield window
        cursor = window.end
    yield cursor, end, False


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

    A device's sum is exact, correctly rounded, whatever the order of its values (:func:`_exact_sum`). A site adds
    its devices' sums exactly (``parts``: the sums merged, ``math.fsum``-ed once), so values
    of opposite sign across devices cancel without losing the small ones; the site's sum
    then differs from the exact sum of its events' values only by each device's rounding
    (half an ulp of that device's sum at most). Summing every value of the site again
    would cost a pass over each value; this costs a few operations per device.

    Ingest accepts any finite value, and a few near the largest float sum past it: then
    ``parts`` is empty and ``mean`` (each part's mean weighted by its share of the count:
    never larger than the largest value) gives the average, so a window of such values is
    enriched, not stuck for good.
    """

    count: int
    min: float
    max: float
    parts: list[float]  # the sums merged: a device's [its sum]; a site's, its devices' sums
    last: float
    last_key: tuple[datetime, int]
    mean: float | None = None  # set only once the sum passes the largest float (``parts`` empty)

    @classmethod
    def of(cls, values: array[float], last: float, last_key: tuple[datetime, int]) -> MeasurementSummary:
        count = len(values)
        try:
            total = _exact_sum(values)
        except OverflowError:  # the sum passes the largest float
            low, high = min(values), max(values)
            return cls(count, low, high, [], last, last_key, _mean_past_the_largest(values, count, low, high))
        return cls(count, min(values), max(values), [total], last, last_key)

    def average(self) -> float:
        if self.mean is None:
            try:
                return _exact_sum(self.parts) / self.count
            except OverflowError:  # merged sums that pass the largest float
                self.mean, self.parts = _mean_past_the_largest(self.parts, self.count, self.min, self.max), []
        return self.mean

    def merge(self, other: MeasurementSummary) -> None:
        count = self.count + other.count
        low, high = min(self.min, other.min), max(self.max, other.max)
        if self.mean is None and other.mean is None:
            self.parts += other.parts  # summed once, exactly, by average(): a few operations per device
        else:
            mean = self.average() * (self.count / count) + other.average() * (other.count / count)
            # a rounding past the largest value cannot make it inf
            self.mean, self.parts = min(max(mean, low), high), []
        self.count, self.min, self.max = count, low, high
        if other.last_key > self.last_key:
            self.last, self.last_key = other.last, other.last_key

    def as_dict(self) -> dict[str, float | int]:
        return {
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "avg": self.average(),
            "last": self.last,
        }


_SUBNORMAL_SCALE = 2 ** 1074  # every finite float is a whole multiple of 2**-1074, the smallest subnormal


def _exact_sum(values: Sequence[float]) -> float:
    """The exact sum of finite ``values``, correctly rounded, whatever their order; raises ``OverflowError`` when
    it passes the largest float.

    ``math.fsum`` is exact, but raises on an intermediate sum past the largest float, for some orders of values
    whose sum is not (``[1e308, 8e307, -8e307, -1e308]``): then the values are added as whole multiples of
    2**-1074 (Python integers, exact) and the total divided back, correctly rounded. Only that rare case pays the
    integers' cost."""
    try:
        return math.fsum(values)
    except OverflowError:
        total = 0
        for value in values:
            numerator, denominator = value.as_integer_ratio()  # denominator: a power of two up to 2**1074
            total += numerator << (1075 - denominator.bit_length())
        return total / _SUBNORMAL_SCALE  # OverflowError when the sum itself passes the largest float


def _mean_past_the_largest(values: Iterable[float], count: int, low: float, high: float) -> float:
    """The mean of ``count`` values (or sums of them) whose sum passes the largest float.

    Each is halved first (exact for these magnitudes) and divided by the count, so the shares' sum stays under
    half the largest float: ``math.fsum(v / count)`` itself overflowed when the shares' roundings carried their sum
    past the largest float (three readings of it). The mean lies within ``[low, high]``; doubling back may round
    outside, or to infinity, hence the clamp."""
    return min(max(math.fsum(v * 0.5 / count for v in values) * 2.0, low), high)


def _as_json(summaries: Mapping[str, MeasurementSummary]) -> str:
    """The figures' ``measurements`` column: a JSON object, measurement name (sorted) -> its figures."""
    return orjson.dumps({name: summaries[name].as_dict() for name in sorted(summaries)}).decode()


@dataclass(frozen=True, slots=True)
class DeviceWindowStats:
    """``measurements_json``: the JSON the table stores, kept encoded (a third of the size of the dicts, and a
    window may hold figures for a hundred thousand devices); :attr:`measurements` decodes it."""

    device: DeviceContext
    event_count: int
    critical_count: int
    first_event_time: datetime
    last_event_time: datetime
    measurements_json: str

    @property
    def measurements(self) -> dict[str, dict[str, float | int]]:
        decoded: dict[str, dict[str, float | int]] = orjson.loads(self.measurements_json)
        return decoded


@dataclass(frozen=True, slots=True)
class SiteWindowStats:
    site_id: str
    site_name: str | None
    region: str | None
    site_timezone: str | None
    device_count: int
    event_count: int
    critical_count: int
    measurements_json: str

    @property
    def measurements(self) -> dict[str, dict[str, float | int]]:
        decoded: dict[str, dict[str, float | int]] = orjson.loads(self.measurements_json)
        return decoded


@dataclass(frozen=True, slots=True)
class EnrichedWindow:
    """The figures of one window, as the sink writes them beside its rows.

    ``events`` counts the window's events, one per event id; ``devices`` holds the
    reference columns of every device seen; ``duplicate_ids`` counts the rows read
    for an event id already seen (each left out); ``moved_ids`` the ids left out
    because a later row of them won in another window.
    """

    window: Window
    events: int
    devices: Mapping[str, DeviceContext]
    device_stats: Sequence[DeviceWindowStats]
    site_stats: Sequence[SiteWindowStats]
    duplicate_ids: int = 0
    moved_ids: int = 0

    @property
    def unknown_devices(self) -> list[str]:
        return sorted(d for d, ctx in self.devices.items() if not ctx.known)

    @property
    def unknown_device_events(self) -> int:
        return sum(s.event_count for s in self.device_stats if not s.device.known)


_event_key = attrgetter("event_time", "event_id.int")  # event order: time, then event id (C-level getter)

Accepted = tuple[StoredEvent, bool, DeviceContext]
"""An event of the window, its critical flag and its device's reference columns: a row as the sink writes it."""


class _DeviceFigures:
    """What the figures of one device need of its events: counts, times, and each measurement's values.

    While every event of the device carries the same measurements (the usual case), their values are
    kept as rows of one ``array('d')``, and the latest event is the latest carrying each of them. The
    first event that carries others spreads the rows into one array per measurement.
    """

    __slots__ = ("context", "count", "critical", "first", "last", "latest", "latest_key", "latest_row", "names",
                 "rows", "values")

    def __init__(self, context: DeviceContext) -> None:
        self.context = context
        self.count = 0
        self.critical = 0
        self.first: datetime | None = None
        self.last: datetime | None = None
        self.names: tuple[str, ...] | None = None  # what every event so far carried, in this order
        self.rows = array("d")  # their values, event after event
        self.latest_key: tuple[datetime, int] | None = None
        self.latest_row = 0
        self.values: dict[str, array[float]] | None = None  # once spread: each measurement's values
        self.latest: dict[str, tuple[tuple[datetime, int], float]] = {}  # and the value of the latest event carrying it

    def add(self, event: StoredEvent, critical: bool, layouts: dict[tuple[str, ...], tuple[str, ...]]) -> None:
        self.count += 1
        self.critical += critical
        moment = event.event_time
        if self.first is None or moment < self.first:
            self.first = moment
        if self.last is None or moment > self.last:
            self.last = moment
        key = _event_key(event)
        measurements = event.measurements
        values = self.values
        if values is None:
            names = tuple(measurements)
            if self.names is None:
                self.names = layouts.setdefault(names, names)  # one tuple per layout in the window, not per device
            if names == self.names:
                if self.latest_key is None or key > self.latest_key:
                    self.latest_key, self.latest_row = key, self.count - 1
                self.rows.extend(measurements.values())
                return
            values = self._spread()
        latest = self.latest
        for name, value in measurements.items():
            value = float(value)  # a value read back from jsonb may be an int (1e20 prints as 100000000000000000000)
            kept = values.get(name)
            if kept is None:
                values[name] = array("d", (value,))
                latest[name] = (key, value)
            else:
                kept.append(value)
                if key > latest[name][0]:
                    latest[name] = (key, value)

    def _spread(self) -> dict[str, array[float]]:
        names, rows, key = self.names or (), self.rows, self.latest_key
        width, last = len(names), self.latest_row * len(names)
        self.values = {name: rows[j::width] for j, name in enumerate(names)}
        if key is not None:
            self.latest = {name: (key, rows[last + j]) for j, name in enumerate(names)}
        self.rows = array("d")
        return self.values

    def summaries(self) -> dict[str, MeasurementSummary]:
        out = {}
        for name, values in (self.values if self.values is not None else self._spread()).items():
            last_key, last = self.latest[name]
            out[name] = MeasurementSummary.of(values, last, last_key)
        return out


class WindowEnrichment:
    """One pass over the events of ``window``: :meth:`accept` them as they are read, then :meth:`finish`.

    Events outside the window are dropped. The first row of each event id is
    accepted: handed back with its critical flag (the flag ingest stored, or
    ``rules`` when the row has none) for the sink to write, and counted into its
    device's figures. A later row of the same id (it was sent twice with
    different timestamps) is held back, not written; the row with the latest
    event time must win, whatever the read order, so :meth:`finish` settles
    those ids from every row of the devices involved.

    Kept per event: its id (to see a second row) and each measurement's value,
    not the event.
    """

    def __init__(self, window: Window, reference: ReferenceData, rules: Sequence[MeasurementRule] = ()) -> None:
        self.window = window
        self._reference = reference
        self._criticality = Criticality(rules)
        self._seen: dict[int, str] = {}  # event id (its integer) -> device of its first row
        self._devices: dict[str, _DeviceFigures] = {}
        self._held: list[StoredEvent] = []
        self._suspects: set[str] = set()
        self._lost: set[uuid.UUID] = set()
        self._layouts: dict[tuple[str, ...], tuple[str, ...]] = {}

    @property
    def suspects(self) -> frozenset[str]:
        """Devices holding a row of an event id read twice: :meth:`finish` needs their accepted rows."""
        return frozenset(self._suspects)

    def accept(self, events: Iterable[StoredEvent]) -> list[Accepted]:
        """The events to write among ``events``: in the window, first row of their id; with their critical flag."""
        start, end = self.window.start, self.window.end
        seen, devices = self._seen, self._devices
        accepted: list[Accepted] = []
        for event in events:
            if not (start <= event.event_time < end):
                continue
            key = event.event_id.int
            first_device = seen.get(key)
            if first_device is not None:
                self._held.append(event)
                self._suspects.update((first_device, event.device_id))
                continue
            seen[key] = event.device_id
            figures = devices.get(event.device_id)
            if figures is None:
                figures = devices[event.device_id] = _DeviceFigures(
                    DeviceContext.resolve(event.device_id, self._reference))
            critical = self._critical(event)
            figures.add(event, critical, self._layouts)
            accepted.append((event, critical, figures.context))
        return accepted

    def lose(self, rows: Iterable[tuple[uuid.UUID, str]]) -> None:
        """Count none of these accepted rows (event id, device): their ids have a later row in another window,
        which wins (an id re-sent with another timestamp). Their devices become :attr:`suspects`, so
        :meth:`finish` computes their figures again without them."""
        for event_id, device_id in rows:
            self._lost.add(event_id)
            self._suspects.add(device_id)

    def finish(self, suspect_rows: Iterable[StoredEvent] = ()) -> tuple[EnrichedWindow, list[Accepted]]:
        """The window's figures, and the rows that must replace an accepted row of the same id (call it once).

        ``suspect_rows``: every accepted row of the :attr:`suspects` devices (others
        are ignored). Their devices' figures are computed again from those rows and
        the held ones, one row per event id, the latest by (event time, event id),
        leaving out the ids given to :meth:`lose`. The winners that were held back
        are returned, to overwrite the row written for their id.
        """
        held, self._held = self._held, []
        lost = self._lost
        if lost:
            held = [e for e in held if e.event_id not in lost]
        replacements: list[Accepted] = []
        if held or lost:
            replacements = self._settle(
                [e for e in suspect_rows if e.device_id in self._suspects and e.event_id not in lost], held)
        per_site: dict[str, tuple[list[str], list[int], dict[str, MeasurementSummary]]] = {}
        device_stats: list[DeviceWindowStats] = []
        contexts = {device_id: figures.context for device_id, figures in sorted(self._devices.items())}
        for device_id in contexts:
            figures = self._devices.pop(device_id)  # each device's values go as its figures come: one or the other
            summaries = figures.summaries()
            assert figures.first is not None and figures.last is not None  # a device is added with its first event
            device_stats.append(DeviceWindowStats(figures.context, figures.count, figures.critical, figures.first,
                                                  figures.last, _as_json(summaries)))
            site_id = figures.context.site_id
            if site_id is not None:
                members, counts, merged = per_site.setdefault(site_id, ([], [0, 0], {}))
                members.append(device_id)
                counts[0] += figures.count
                counts[1] += figures.critical
                for name, summary in summaries.items():
                    into = merged.get(name)
                    if into is None:
                        merged[name] = summary
                    else:
                        into.merge(summary)
        site_stats = []
        for site_id in sorted(per_site):
            members, (event_count, critical_count), merged = per_site[site_id]
            site = self._reference.sites.get(site_id)
            site_stats.append(SiteWindowStats(site_id, site.name if site else None, site.region if site else None,
                                              site.timezone if site else None, len(members), event_count,
                                              critical_count, _as_json(merged)))
        return (EnrichedWindow(self.window, sum(s.event_count for s in device_stats), contexts, device_stats,
                               site_stats, len(held), len(lost)), replacements)

    def _settle(self, accepted: list[StoredEvent], held: list[StoredEvent]) -> list[Accepted]:
        """Recompute the suspect devices from one row per id (the latest); the held rows that won."""
        winners: dict[int, StoredEvent] = {}
        for event in accepted + held:
            earlier = winners.setdefault(event.event_id.int, event)
            if earlier is not event and _event_key(event) > _event_key(earlier):
                winners[event.event_id.int] = event
        missing = {e.event_id for e in held} - {e.event_id for e in accepted}
        if missing:
            raise ValueError(f"window {self.window}: the rows accepted for event ids {sorted(map(str, missing))[:3]} "
                             "were not given back to settle their duplicates")
        for device_id in self._suspects:
            self._devices.pop(device_id, None)
        for event in sorted(winners.values(), key=_event_key):
            figures = self._devices.get(event.device_id)
            if figures is None:
                figures = self._devices[event.device_id] = _DeviceFigures(
                    DeviceContext.resolve(event.device_id, self._reference))
            figures.add(event, self._critical(event), self._layouts)
        held_ids = {id(e) for e in held}
        return [(e, self._critical(e), self._devices[e.device_id].context)
                for e in winners.values() if id(e) in held_ids]

    def _critical(self, event: StoredEvent) -> bool:
        return event.critical if event.critical is not None else self._criticality(event.severity, event.measurements)


def compute_window(
    window: Window,
    events: Iterable[StoredEvent],
    reference: ReferenceData,
    rules: Sequence[MeasurementRule] = (),
) -> EnrichedWindow:
    """The figures of ``window`` from every event read for it, held in memory (:class:`WindowEnrichment` in one go).

    Events outside the window are ignored; an event id read twice counts once, its
    row with the latest event time winning, so the outcome does not depend on read
    order. A device's sum is ``math.fsum`` of its values and a site's the exact sum of its devices' sums
    (:class:`MeasurementSummary`), so averages do not depend on read order either.
    """
    enrichment = WindowEnrichment(window, reference, rules)
    accepted = enrichment.accept(events)
    return enrichment.finish(row[0] for row in accepted)[0]
