"""Enrichment logic without I/O: windows, the figures of a window, and the service's ordering with in-memory ports."""

from __future__ import annotations

import math
import random
import sys
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest

from shared.domain.enrichment import (
    DeviceRef,
    EnrichedWindow,
    ReferenceData,
    SiteRef,
    Window,
    WindowEnrichment,
    compute_window,
    plan_count,
    plan_windows,
    planned_windows,
    window_count,
    window_of,
    windows_between,
)
from shared.domain.rules import MeasurementRule
from shared.domain.stored import StoredEvent
from shared.exceptions import PermanentError, TransientError
from shared.ports.enrichment import Arrival, EnrichmentState, WindowInput
from shared.services.enrichment import EnrichmentService, check_range, default_max_windows
from shared.settings import EnrichmentSettings

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
W = timedelta(minutes=5)
REF = ReferenceData.of([DeviceRef("d1", "s1", "M"), DeviceRef("d2", "s1", "M"), DeviceRef("d3", "s-missing")],
                       [SiteRef("s1", "Site one", "eu")])


def ev(device: str, at: datetime, critical: bool | None = False, event_id: uuid.UUID | None = None,
       enqueued: datetime | None = None, **measurements: float) -> StoredEvent:
    return StoredEvent(event_id or uuid.uuid4(), device, at, "reading", "info", critical, measurements,
                       enqueued_time=enqueued or at)


# --- windows ---


def test_windows_are_aligned_to_the_epoch_and_half_open() -> None:
    assert window_of(T0 + timedelta(seconds=299, microseconds=999_999), 300) == Window(T0, T0 + W)
    assert window_of(T0 + W, 300) == Window(T0 + W, T0 + 2 * W)
    assert window_of(datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC), 300).start == datetime(1969, 12, 31, 23, 55,
                                                                                              tzinfo=UTC)
    assert [w.start for w in windows_between(T0 + timedelta(minutes=1), T0 + 2 * W, 300)] == [T0, T0 + W]
    assert list(windows_between(T0, T0, 300)) == []
    assert Window(T0, T0 + W).closed(T0 + W + timedelta(minutes=2), timedelta(minutes=2))
    assert not Window(T0, T0 + W).closed(T0 + W + timedelta(minutes=1, seconds=59), timedelta(minutes=2))


# --- figures ---


def test_planned_windows_keep_the_enriched_ones_and_fill_the_gaps_with_the_current_width() -> None:
    """Enriched windows (the ledger's, whatever width) are planned as they are; in between, windows of the current
    width aligned to the epoch, cut at the gap's ends; none overlaps another, none leaves a gap."""
    m = timedelta(minutes=1)
    enriched = [Window(T0, T0 + W), Window(T0 + 7 * m, T0 + 8 * m)]
    assert plan_windows(T0 + m, T0 + 11 * m, 120, enriched) == [
        Window(T0, T0 + W), Window(T0 + W, T0 + 6 * m), Window(T0 + 6 * m, T0 + 7 * m), Window(T0 + 7 * m, T0 + 8 * m),
        Window(T0 + 8 * m, T0 + 10 * m), Window(T0 + 10 * m, T0 + 12 * m)]
    assert plan_windows(T0 + W, T0 + 9 * m, 240, enriched[:1]) == [
        Window(T0 + W, T0 + 8 * m), Window(T0 + 8 * m, T0 + 12 * m)]  # from the watermark to the next boundary
    assert plan_windows(T0 + m, T0 + 3 * W, 300, []) == list(windows_between(T0 + m, T0 + 3 * W, 300))


def test_a_plan_is_counted_without_building_it_whatever_the_widths_enriched() -> None:
    """``plan_count`` is ``len(plan_windows(...))`` by arithmetic, gaps cut by enriched windows of other widths
    included, and ``planned_windows`` hands the windows over one at a time: a range of millions of windows costs
    neither memory nor time until it is walked."""
    rng = random.Random(7)
    for _ in range(500):
        width = rng.choice([7, 60, 240, 300, 3600])
        enriched, at = [], T0 + timedelta(seconds=rng.randrange(600))
        for _ in range(rng.randrange(5)):
            at += timedelta(seconds=rng.randrange(900))
            enriched.append(Window(at, at + timedelta(seconds=rng.choice([60, 240, 300]))))
            at = enriched[-1].end
        start = T0 + timedelta(seconds=rng.randrange(2000))
        end = start + timedelta(seconds=rng.randrange(1, 4000))
        assert plan_count(start, end, width, enriched) == len(plan_windows(start, end, width, enriched))
        assert window_count(start, end, width) == len(list(windows_between(start, end, width)))
    far = datetime(9999, 12, 31, tzinfo=UTC)
    assert window_count(T0, far, 300) == plan_count(T0, far, 300, []) == 838_690_152
    first = planned_windows(T0 + timedelta(minutes=1), far, 300, [])
    assert [next(first), next(first)] == [Window(T0, T0 + W), Window(T0 + W, T0 + 2 * W)]


def test_a_range_ending_after_any_event_or_wider_than_the_bound_is_refused_naming_the_value() -> None:
    """The end of a backfill or replay may be at most now plus the events' largest future skew and one window (no
    later window holds an event); the range at most ``max_windows`` windows (default 366 days' worth), the count
    and the option named. A range of exactly the bound is accepted, and the count returned."""
    now = T0 + timedelta(seconds=30)
    skew = timedelta(minutes=5)
    assert default_max_windows(300) == 366 * 288 and default_max_windows(7) == 4_517_486
    assert check_range(T0 - 10 * W, now + skew + W, now=now, window_seconds=300, max_future_skew=skew,
                       max_windows=13) == 13  # [09:10, 10:10:30): 13 windows, the last ending 10:15
    with pytest.raises(PermanentError, match=r"--to 2026-11-20T10:10:31\+00:00 is after now \(2026-11-20T10:00:30"):
        check_range(T0, now + skew + W + timedelta(seconds=1), now=now, window_seconds=300, max_future_skew=skew,
                    max_windows=100, names=("--to", "--max-windows"))
    with pytest.raises(PermanentError, match="9999-12-31"):
        check_range(T0, datetime(9999, 12, 31, tzinfo=UTC), now=now, window_seconds=300, max_future_skew=skew,
                    max_windows=100)
    with pytest.raises(PermanentError, match="covers 14 windows of 300 s, more than --max-windows 13"):
        check_range(T0 - 13 * W, now, now=now, window_seconds=300, max_future_skew=skew, max_windows=13,
                    names=("--end", "--max-windows"))
    typo = datetime(26, 11, 20, tzinfo=UTC)  # 0026 for 2026
    with pytest.raises(PermanentError, match=r"covers 210,[0-9,]+ windows .* set max_windows to 210"):
        check_range(typo, now, now=now, window_seconds=300, max_future_skew=skew, max_windows=default_max_windows(300))


def test_figures_per_device_and_site() -> None:
    events = [ev("d1", T0 + timedelta(seconds=1), t=10.0, h=50.0), ev("d1", T0 + timedelta(seconds=3), True, t=30.0),
              ev("d2", T0 + timedelta(seconds=2), t=20.0), ev("d3", T0 + timedelta(seconds=4), t=5.0),
              ev("dx", T0 + timedelta(seconds=5), True, t=1.0),
              ev("d1", T0 + W, t=999.0), ev("d1", T0 - timedelta(milliseconds=1), t=999.0)]  # outside: ignored
    out = compute_window(Window(T0, T0 + W), events, REF)
    stats = {s.device.device_id: s for s in out.device_stats}
    assert stats["d1"].event_count == 2 and stats["d1"].critical_count == 1
    assert stats["d1"].measurements == {"h": {"count": 1, "min": 50.0, "max": 50.0, "avg": 50.0, "last": 50.0},
                                        "t": {"count": 2, "min": 10.0, "max": 30.0, "avg": 20.0, "last": 30.0}}
    assert (stats["d1"].first_event_time, stats["d1"].last_event_time) == (T0 + timedelta(seconds=1),
                                                                           T0 + timedelta(seconds=3))
    assert out.unknown_devices == ["dx"] and out.unknown_device_events == 1
    assert out.devices["d3"].known and out.devices["d3"].site_id == "s-missing" and out.devices["d3"].site_name is None
    sites = {s.site_id: s for s in out.site_stats}
    assert set(sites) == {"s1", "s-missing"}
    s1 = sites["s1"]
    assert (s1.site_name, s1.region, s1.device_count, s1.event_count, s1.critical_count) == ("Site one", "eu", 2, 3, 1)
    assert s1.measurements["t"] == {"count": 3, "min": 10.0, "max": 30.0, "avg": 20.0, "last": 30.0}
    assert out.events == 5


def test_last_breaks_time_ties_by_event_id_and_ignores_read_order() -> None:
    low, high = uuid.UUID(int=1), uuid.UUID(int=2)
    at = T0 + timedelta(seconds=10)
    events = [ev("d1", at, event_id=high, t=2.0), ev("d1", at, event_id=low, t=1.0),
              ev("d2", at, event_id=uuid.UUID(int=3), t=3.0)]
    for order in (events, events[::-1]):
        out = compute_window(Window(T0, T0 + W), order, REF)
        assert out.device_stats[0].measurements["t"]["last"] == 2.0
        assert {s.site_id: s.measurements["t"]["last"] for s in out.site_stats} == {"s1": 3.0}


def test_an_event_id_read_twice_counts_once_whatever_the_order() -> None:
    same = uuid.uuid4()
    rows = [ev("d1", T0 + timedelta(seconds=1), event_id=same, t=1.0),
            ev("d1", T0 + timedelta(seconds=9), event_id=same, t=9.0)]
    for order in (rows, rows[::-1]):
        out = compute_window(Window(T0, T0 + W), order, REF)
        assert out.duplicate_ids == 1 and out.events == 1
        assert out.device_stats[0].measurements["t"]["last"] == 9.0


def test_rules_decide_critical_when_the_row_has_no_flag() -> None:
    rules = [MeasurementRule(measurement="t", op=">", value=90)]
    out = compute_window(Window(T0, T0 + W), [ev("d1", T0, None, t=95.0), ev("d1", T0, None, t=5.0),
                                              ev("d1", T0, True, t=1.0)], REF, rules)
    assert out.device_stats[0].critical_count == 2


def test_averages_do_not_depend_on_read_order() -> None:
    rng = random.Random(4)
    events = [ev("d1", T0 + timedelta(milliseconds=i), t=rng.uniform(-1e6, 1e6)) for i in range(500)]
    first = compute_window(Window(T0, T0 + W), events, REF)
    rng.shuffle(events)
    assert compute_window(Window(T0, T0 + W), events, REF).device_stats == first.device_stats


def test_a_sites_average_adds_its_devices_exact_sums_exactly() -> None:
    """A device's ``avg`` is the exact sum of its values (``math.fsum``, correctly rounded) over their count; a site's
    is the exact sum of its devices' sums over its count. So values of opposite sign across the devices of a site (a
    producer's and a consumer's +1e16 / -1e16 Wh meters beside a small reading) cancel without losing the small
    ones: the site's average is the exact mean of its events whenever each device's sum is exact, and otherwise
    differs from it only by each device's own rounding, whatever the order the devices merge in.
    """
    three = ReferenceData.of([DeviceRef("d1", "s1", "M"), DeviceRef("d2", "s1", "M"), DeviceRef("d3", "s1", "M")],
                             [SiteRef("s1", "Site one", "eu")])
    exact = {"d1": [1e16], "d2": [1.0], "d3": [-1e16]}
    rounded = {"d1": [1e16, 1.0], "d2": [-1e16], "d3": [0.5]}  # d1's sum rounds (1e16 + 1 is not a double)
    for values in (exact, rounded, {"d1": [0.1] * 7, "d2": [0.2, -1e20], "d3": [1e20, 0.3]}):
        events = [ev(d, T0 + timedelta(seconds=i), t=v)
                  for i, (d, v) in enumerate((d, v) for d, vs in values.items() for v in vs)]
        site = compute_window(Window(T0, T0 + W), events, three).site_stats[0].measurements["t"]
        count = sum(len(vs) for vs in values.values())
        assert site["count"] == count
        assert site["avg"] == math.fsum(math.fsum(vs) for vs in values.values()) / count, values
    site = compute_window(Window(T0, T0 + W), [ev(d, T0, t=v[0]) for d, v in exact.items()], three).site_stats[0]
    assert site.measurements["t"]["avg"] == 1 / 3  # the exact mean of +1e16, 1.0 and -1e16


def oracle(window: Window, events: list[StoredEvent]) -> dict[str, tuple]:
    """The figures per device, computed the plain way: dedupe first (latest row of an id wins), then count."""
    latest: dict[uuid.UUID, StoredEvent] = {}
    for e in events:
        if window.start <= e.event_time < window.end:
            kept = latest.get(e.event_id)
            if kept is None or (e.event_time, e.event_id.int) > (kept.event_time, kept.event_id.int):
                latest[e.event_id] = e
    out: dict[str, tuple] = {}
    for device in {e.device_id for e in latest.values()}:
        mine = sorted((e for e in latest.values() if e.device_id == device),
                      key=lambda e: (e.event_time, e.event_id.int))
        names = sorted({n for e in mine for n in e.measurements})
        figures = {}
        for n in names:
            values = [e.measurements[n] for e in mine if n in e.measurements]
            figures[n] = {"count": len(values), "min": min(values), "max": max(values),
                          "avg": math.fsum(values) / len(values), "last": values[-1]}
        out[device] = (len(mine), sum(bool(e.critical) for e in mine), mine[0].event_time, mine[-1].event_time,
                       figures)
    return out


def stream(window: Window, pages: list[list[StoredEvent]]) -> tuple[EnrichedWindow, dict[uuid.UUID, StoredEvent]]:
    """What a sink does: write each accepted row, give back the suspects' rows, apply the replacements."""
    enrichment = WindowEnrichment(window, REF)
    written: dict[uuid.UUID, StoredEvent] = {}
    for page in pages:
        for event, critical, context in enrichment.accept(page):
            assert event.event_id not in written, "an event id was handed over twice"
            assert critical == bool(event.critical) and context.device_id == event.device_id
            written[event.event_id] = event
    suspects = enrichment.suspects
    enriched, replacements = enrichment.finish(e for e in written.values() if e.device_id in suspects)
    for event, _, _ in replacements:
        written[event.event_id] = event
    return enriched, written


@pytest.mark.parametrize("seed", range(6))
def test_a_window_streamed_page_by_page_gives_the_figures_of_the_deduplicated_events(seed: int) -> None:
    rng = random.Random(seed)
    window = Window(T0, T0 + W)
    ids = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(300)]
    events = []
    for i in range(400):  # 100 rows reuse an id: same or another device, another time, maybe outside the window
        event_id = ids[i] if i < 300 else rng.choice(ids)
        at = T0 + timedelta(milliseconds=rng.randrange(-20_000, 320_000))
        measurements = {n: round(rng.uniform(-50, 50), 3) for n in rng.sample(["t", "h", "p"], rng.randint(1, 3))}
        events.append(ev(rng.choice(["d1", "d2", "d3", "dx"]), at, rng.random() < 0.2, event_id, **measurements))
    expected = oracle(window, events)
    rng.shuffle(events)
    cuts = sorted(rng.sample(range(1, len(events)), 12))
    pages = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    enriched, written = stream(window, pages)
    got = {s.device.device_id: (s.event_count, s.critical_count, s.first_event_time, s.last_event_time,
                                s.measurements) for s in enriched.device_stats}
    assert got == expected
    assert enriched.events == len(written) == sum(v[0] for v in expected.values())
    in_window = [e for e in events if T0 <= e.event_time < T0 + W]
    assert enriched.duplicate_ids == len(in_window) - len(written) > 0
    for event in written.values():  # every written row is the winner of its id
        assert all((e.event_time, e.event_id.int) <= (event.event_time, event.event_id.int)
                   for e in in_window if e.event_id == event.event_id)
    assert enriched == compute_window(window, events, REF)


def test_a_later_row_in_another_device_moves_the_event_and_can_empty_a_device() -> None:
    same = uuid.uuid4()
    window = Window(T0, T0 + W)
    enriched, written = stream(window, [[ev("d2", T0 + timedelta(seconds=1), event_id=same, t=1.0)],
                                        [ev("d1", T0 + timedelta(seconds=5), t=5.0)],
                                        [ev("d1", T0 + timedelta(seconds=9), event_id=same, t=9.0)]])
    assert written[same].device_id == "d1"
    assert [(s.device.device_id, s.event_count) for s in enriched.device_stats] == [("d1", 2)]
    assert set(enriched.devices) == {"d1"} and enriched.events == 2
    assert [(s.site_id, s.device_count, s.event_count) for s in enriched.site_stats] == [("s1", 1, 2)]


def test_finish_refuses_to_settle_without_the_rows_it_handed_over() -> None:
    same = uuid.uuid4()
    enrichment = WindowEnrichment(Window(T0, T0 + W), REF)
    enrichment.accept([ev("d1", T0, event_id=same, t=1.0), ev("d1", T0 + timedelta(seconds=1), event_id=same, t=2.0)])
    assert enrichment.suspects == {"d1"}
    with pytest.raises(ValueError, match=str(same)):
        enrichment.finish([])


# --- the service, with in-memory ports ---


class MemoryReader:
    def __init__(self) -> None:
        self.events: list[StoredEvent] = []
        self.reads: list[datetime] = []
        self.delayed: list[tuple[datetime, datetime]] = []  # (noted at, oldest enqueued), as ingest's DelayLog
        self.arrival_filters: list[datetime | None] = []  # event_time_before of each arrivals() call

    def delayed_since(self, start: datetime, end: datetime) -> datetime | None:
        return min((oldest for noted, oldest in self.delayed if start <= noted < end), default=None)

    def read(self, start: datetime, end: datetime) -> list[StoredEvent]:
        self.reads.append(start)
        return [e for e in self.events if start <= e.event_time < end]

    def read_each(self, start: datetime, end: datetime) -> Iterator[list[StoredEvent]]:
        events = self.read(start, end)
        for i in range(0, len(events), 3):  # pages of three, to cross page boundaries
            yield events[i:i + 3]

    def arrivals(self, start: datetime, end: datetime, *, event_time_before: datetime | None = None
                 ) -> Iterator[Arrival]:
        self.arrival_filters.append(event_time_before)
        for e in self.events:
            if start <= e.enqueued_time < end and (event_time_before is None or e.event_time < event_time_before):
                yield Arrival(e.event_id, e.event_time, e.enqueued_time)


class MemoryStore:
    def __init__(self) -> None:
        self.state: EnrichmentState | None = None
        self.rows: dict[uuid.UUID, datetime] = {}
        self.ledger: dict[datetime, list[str]] = {}
        self.windows: dict[datetime, Window] = {}
        self.fail_on: datetime | None = None

    def load_state(self, initial: datetime) -> EnrichmentState:
        if self.state is None:
            self.state = EnrichmentState(initial, initial)
        return self.state

    def write_window(self, source: WindowInput, reason, *, advance_watermark: bool) -> EnrichedWindow:
        window = source.window
        if window.start == self.fail_on:
            raise TransientError(f"PostgreSQL failed during window {window}")
        enrichment = source.enrichment()
        written = {e.event_id: e for page in source.read() for e, _, _ in enrichment.accept(page)}
        enriched, _replacements = enrichment.finish(written.values())
        for event_id in written:
            self.rows[event_id] = window.start
        self.ledger.setdefault(window.start, []).append(reason)
        self.windows[window.start] = window
        if advance_watermark and self.state.watermark >= window.start and self.state.watermark < window.end:
            self.state = EnrichmentState(window.end, self.state.late_scan_until)
        return enriched

    def stale_windows(self, arrivals: Sequence[Arrival]) -> list[tuple[Arrival, Window]]:
        return [(a, w) for a in arrivals for w in self.windows.values()
                if w.start <= a.event_time < w.end and self.rows.get(a.event_id) != w.start]

    def enriched_windows(self, start: datetime, end: datetime) -> list[Window]:
        return sorted(w for w in self.windows.values() if w.start < end and w.end > start)

    def windows_to_recompute(self) -> list[Window]:
        return []

    def save_late_scan(self, until: datetime) -> None:
        self.state = EnrichmentState(self.state.watermark, max(until, self.state.late_scan_until))


class StaticReference:
    def __init__(self) -> None:
        self.loads = 0

    def load(self) -> ReferenceData:
        self.loads += 1
        return REF


@pytest.fixture
def parts() -> tuple[MemoryReader, MemoryStore, StaticReference]:
    store = MemoryStore()
    store.load_state(T0)
    return MemoryReader(), store, StaticReference()


def service(parts, **overrides) -> EnrichmentService:
    reader, store, reference = parts
    values = {"window_seconds": 300, "allowed_lateness_seconds": 120, "late_horizon_seconds": 3600,
              "initial_lookback_seconds": 0, "max_windows_per_run": 24, **overrides}
    return EnrichmentService(reader, reference, store, EnrichmentSettings(**values))


def test_closed_windows_are_enriched_in_order_and_the_watermark_follows(parts) -> None:
    _reader, store, reference = parts
    result = service(parts).run(now=T0 + 3 * W + timedelta(minutes=1))  # the third window is not closed yet
    assert [w.window.start for w in result.windows] == [T0, T0 + W]
    assert store.state.watermark == T0 + 2 * W == result.watermark
    assert reference.loads == 1  # once per run


def test_a_run_with_no_window_to_enrich_does_not_read_the_reference_data(parts) -> None:
    """Most timer runs find nothing closed; reading every device for them would be wasted."""
    _reader, store, reference = parts
    service(parts).run(now=T0 + 2 * W + timedelta(minutes=3))
    assert reference.loads == 1 and store.state.watermark == T0 + 2 * W
    result = service(parts).run(now=T0 + 2 * W + timedelta(minutes=4))  # the next window is still open
    assert result.windows == [] and reference.loads == 1
    service(parts).run(now=T0 + 3 * W + timedelta(minutes=3))
    assert reference.loads == 2


def test_the_window_budget_leaves_the_rest_for_the_next_run(parts) -> None:
    _reader, store, _ = parts
    now = T0 + 5 * W + timedelta(minutes=2)
    first = service(parts, max_windows_per_run=2).run(now=now)
    assert len(first.windows) == 2 and first.more_pending and store.state.watermark == T0 + 2 * W
    second = service(parts, max_windows_per_run=10).run(now=now)
    assert [w.window.start for w in second.windows] == [T0 + 2 * W, T0 + 3 * W, T0 + 4 * W]
    assert not second.more_pending


def test_a_failed_window_stops_the_run_and_keeps_the_watermark_before_it(parts) -> None:
    _reader, store, _ = parts
    store.fail_on = T0 + W
    with pytest.raises(TransientError):
        service(parts).run(now=T0 + 4 * W)
    assert store.state.watermark == T0 + W and list(store.ledger) == [T0]
    assert store.state.late_scan_until == T0  # not moved: the next run scans again
    store.fail_on = None
    result = service(parts).run(now=T0 + 4 * W)
    assert [w.window.start for w in result.windows] == [T0 + W, T0 + 2 * W]


def test_late_events_recompute_only_enriched_windows_within_the_horizon(parts) -> None:
    reader, store, _ = parts
    reader.events += [ev("d1", T0 + timedelta(seconds=5)), ev("d1", T0 + W + timedelta(seconds=5))]
    now = T0 + 2 * W + timedelta(minutes=2)
    service(parts).run(now=now)
    assert store.state.late_scan_until == now

    later = now + timedelta(minutes=1)
    reader.events += [
        ev("d2", T0 + timedelta(seconds=7), enqueued=later),                        # late: window 1 recomputed
        ev("d2", T0 + 2 * W + timedelta(seconds=1), enqueued=later),                # window not enriched yet
    ]
    result = service(parts).run(now=later + timedelta(seconds=1))
    assert [(w.window.start, w.reason) for w in result.windows] == [(T0, "late")]
    assert store.ledger[T0] == ["scheduled", "late"] and T0 + 2 * W not in store.ledger
    # Only events of enriched windows are asked for: before the watermark the run started with.
    assert reader.arrival_filters[-1] == T0 + 2 * W

    too_late = T0 + W + timedelta(hours=2)
    reader.events.append(ev("d2", T0 + timedelta(seconds=8), enqueued=too_late))
    result = service(parts).run(now=too_late + timedelta(seconds=1))
    assert result.too_late_events == 1 and result.late_windows == 0


def test_an_event_stored_long_after_its_enqueue_is_found_through_ingests_note(parts) -> None:
    """Ingest behind by more than the allowed lateness: its note makes the late scan reach back to the event."""
    reader, store, _ = parts
    reader.events.append(ev("d1", T0 + timedelta(seconds=5)))
    first = T0 + W + timedelta(minutes=3)
    service(parts).run(now=first)
    assert store.ledger[T0] == ["scheduled"] and store.state.late_scan_until == first

    # Enqueued in window 1, stored only after that run (ingest was down for minutes): before the scan's overlap.
    delayed = ev("d2", T0 + timedelta(seconds=9), enqueued=T0 + timedelta(seconds=10))
    reader.events.append(delayed)
    second = first + timedelta(minutes=1)
    assert service(parts).run(now=second).windows == []  # the overlap alone does not reach it

    reader.delayed.append((second + timedelta(seconds=30), delayed.enqueued_time))
    result = service(parts).run(now=second + timedelta(minutes=1))
    assert [(w.window.start, w.reason) for w in result.windows] == [(T0, "late")]
    assert result.delayed_scan_from == delayed.enqueued_time
    assert store.rows[delayed.event_id] == T0


def test_a_note_older_than_the_horizon_scans_back_to_the_horizon_only(parts) -> None:
    reader, _store, _ = parts
    now = T0 + 2 * W + timedelta(minutes=3)
    service(parts).run(now=now)
    later = now + timedelta(minutes=1)
    reader.delayed.append((later - timedelta(seconds=1), later - timedelta(days=3)))
    result = service(parts, late_horizon_seconds=3600).run(now=later)
    assert result.delayed_scan_from == later - timedelta(hours=1)


def test_a_note_never_moves_the_scan_after_where_it_would_start(parts) -> None:
    """Enrichment down for longer than the horizon, and a note written meanwhile: the scan still starts where
    the last one ended (minus the overlap), not at the horizon, or the arrivals in between are never scanned."""
    reader, store, _ = parts
    reader.events.append(ev("d1", T0 + timedelta(seconds=5)))
    first = T0 + W + timedelta(minutes=3)
    service(parts, late_horizon_seconds=3600).run(now=first)
    late = ev("d2", T0 + timedelta(seconds=7), enqueued=T0 + W + timedelta(minutes=4))  # 4 minutes late
    reader.events.append(late)
    reader.delayed.append((first + timedelta(seconds=30), first - timedelta(minutes=5)))
    result = service(parts, late_horizon_seconds=3600).run(now=first + timedelta(hours=2))
    assert (T0, "late") in [(w.window.start, w.reason) for w in result.windows]
    assert store.rows[late.event_id] == T0
    assert result.delayed_scan_from is None, "the note was not older than where the scan starts"


def test_values_whose_sum_passes_the_largest_float_are_averaged(parts) -> None:
    """Ingest accepts any finite value. Two of 1e308 sum past the largest float: math.fsum raised OverflowError
    at every run, so the window was never enriched and the watermark stayed before it for good."""
    huge = [ev("d1", T0 + timedelta(seconds=1), t=1e308), ev("d1", T0 + timedelta(seconds=2), t=1e308),
            ev("d2", T0 + timedelta(seconds=3), t=-1e308), ev("d3", T0 + timedelta(seconds=4), t=1e308)]
    out = compute_window(Window(T0, T0 + W), huge, REF)
    devices = {d.device.device_id: d.measurements["t"] for d in out.device_stats}
    assert devices["d1"]["avg"] == 1e308 and devices["d1"]["count"] == 2
    sites = {s.site_id: s.measurements["t"] for s in out.site_stats}
    assert sites["s1"]["avg"] == pytest.approx(1e308 / 3) and sites["s1"]["count"] == 3  # d1 and d2
    assert sites["s1"]["min"] == -1e308 and sites["s1"]["max"] == 1e308
    assert sites["s-missing"]["avg"] == 1e308
    # and ordinary values keep the exact sum's average
    plain = compute_window(Window(T0, T0 + W), [ev("d1", T0, t=0.1), ev("d1", T0 + timedelta(seconds=1), t=0.2),
                                                ev("d2", T0 + timedelta(seconds=2), t=0.4)], REF)
    assert {s.site_id: s.measurements["t"]["avg"] for s in plain.site_stats}["s1"] == math.fsum([0.1, 0.2, 0.4]) / 3

    reader, store, _ = parts
    reader.events += [*huge, ev("d1", T0 + W + timedelta(seconds=1), t=20.0)]
    service(parts).run(now=T0 + 2 * W + timedelta(minutes=2))
    assert store.state.watermark == T0 + 2 * W


@pytest.mark.parametrize("devices", [("d1", "d1", "d1"), ("d1", "d2", "d3"), ("d1", "d2", "d2")])
def test_three_readings_of_the_largest_float_are_averaged_to_it(devices: tuple[str, ...]) -> None:
    """Each value over the count (round(MAX / 3)) still sums past the largest float three times over, so the
    fallback ``math.fsum(v / count)`` raised ``OverflowError`` as well, for a device reading it three times and for
    a site whose devices read it three times in all: that window failed at every run, for good. The average of
    equal values is that value."""
    largest = sys.float_info.max
    one_site = ReferenceData.of([DeviceRef(d, "s1") for d in ("d1", "d2", "d3")], [SiteRef("s1", "Site one")])
    out = compute_window(Window(T0, T0 + W), [ev(d, T0 + timedelta(seconds=n), t=largest)
                                              for n, d in enumerate(devices)], one_site)
    (site,) = out.site_stats
    assert (site.measurements["t"]["avg"], site.measurements["t"]["count"]) == (largest, 3)
    assert {d.measurements["t"]["avg"] for d in out.device_stats} == {largest}


def test_the_average_of_values_summing_past_the_largest_float_lies_within_them() -> None:
    """The fallback mean was not clamped for a device: three readings of half the largest float averaged one ulp
    above their maximum, so its window's figures said avg > max."""
    half = sys.float_info.max / 2
    for values in ([half] * 3, [half, half, half * 0.999_999], [-half, half * 1.5, half * 1.5, half]):
        out = compute_window(Window(T0, T0 + W), [ev("d1", T0 + timedelta(seconds=n), t=v)
                                                  for n, v in enumerate(values)], REF)
        for figures in [d.measurements["t"] for d in out.device_stats] + [s.measurements["t"] for s in out.site_stats]:
            assert figures["min"] <= figures["avg"] <= figures["max"], (values, figures)



@pytest.mark.parametrize("order", [(0, 1, 2, 3, 4), (1, 4, 2, 3, 0)])
def test_an_average_does_not_depend_on_the_order_when_only_an_intermediate_sum_passes_the_largest_float(
        order: tuple[int, ...]) -> None:
    """``math.fsum`` raises ``OverflowError`` on an intermediate sum past the largest float for some orders of values
    whose sum is finite: a device's or site's average then took the fallback mean (one ulp off) for some read orders
    and the correctly rounded one for others, so a re-run could rewrite a window's figures. Every order gives the
    exact sum's mean, correctly rounded, for a device and for a site adding its devices' sums."""
    largest = sys.float_info.max
    values = [1e16, 1e308, 8e307, -8e307, -largest]  # exact sum -7.98e307
    exact = float(sum(map(Fraction, values)) / len(values))
    devices = [f"d{n}" for n in range(len(values))]
    one_site = ReferenceData.of([DeviceRef(d, "s1") for d in devices], [SiteRef("s1", "Site one")])
    window = Window(T0, T0 + W)
    one_device = compute_window(window, [ev("d0", T0 + timedelta(seconds=n), t=values[i])
                                         for n, i in enumerate(order)], one_site)
    assert one_device.device_stats[0].measurements["t"]["avg"] == exact
    one_each = compute_window(window, [ev(devices[i], T0 + timedelta(seconds=n), t=values[i])
                                       for n, i in enumerate(order)], one_site)
    assert one_each.site_stats[0].measurements["t"]["avg"] == exact


def test_late_windows_over_the_budget_keep_the_scan_position(parts) -> None:
    reader, store, _ = parts
    reader.events += [ev("d1", T0 + k * W) for k in range(4)]
    now = T0 + 4 * W + timedelta(minutes=2)
    service(parts).run(now=now)
    later = now + timedelta(minutes=1)
    reader.events += [ev("d2", T0 + k * W + timedelta(seconds=1), enqueued=later) for k in range(4)]
    result = service(parts, max_windows_per_run=3).run(now=later + timedelta(seconds=1))
    assert result.late_windows == 3 and result.more_pending and store.state.late_scan_until == now
    result = service(parts, max_windows_per_run=3).run(now=later + timedelta(seconds=2))
    assert [w.window.start for w in result.windows] == [T0 + 3 * W] and not result.more_pending
    assert store.state.late_scan_until == later + timedelta(seconds=2)


def test_backfill_rewrites_the_range_without_moving_the_watermark(parts) -> None:
    reader, store, _ = parts
    reader.events += [ev("d1", T0 + timedelta(minutes=k)) for k in range(12)]
    seen = []
    outcomes = service(parts).backfill(T0 + timedelta(minutes=1), T0 + 2 * W + timedelta(seconds=1),
                                       on_window=seen.append)
    assert [o.window.start for o in outcomes] == [T0, T0 + W, T0 + 2 * W] and seen == outcomes
    assert [o.events for o in outcomes] == [5, 5, 2]
    assert store.state.watermark == T0
    with pytest.raises(ValueError, match="not after start"):
        service(parts).backfill(T0, T0)


def test_backfill_refuses_a_range_no_run_could_finish_before_reading_anything(parts) -> None:
    """``EnrichmentService.backfill`` refuses an end after its clock plus the future skew and one window, and a
    range of more than ``max_windows`` windows (default 366 days' worth), before the reference data or a window is
    read; a range of exactly ``max_windows`` windows is enriched."""
    reader, store, reference = parts
    reader.events += [ev("d1", T0 + timedelta(minutes=k)) for k in range(12)]
    clocked = EnrichmentService(reader, reference, store, EnrichmentSettings(window_seconds=300),
                                clock=lambda: T0 + 3 * W, max_future_skew=timedelta(minutes=5))
    with pytest.raises(PermanentError, match="9999-12-31"):
        clocked.backfill(T0, datetime(9999, 12, 31, tzinfo=UTC))
    with pytest.raises(PermanentError, match="covers 3 windows of 300 s, more than max_windows 2"):
        clocked.backfill(T0, T0 + 2 * W + timedelta(seconds=1), max_windows=2)
    with pytest.raises(PermanentError, match="covers 105,409 windows"):
        clocked.backfill(T0 - timedelta(days=366), T0 + timedelta(seconds=1))
    assert reference.loads == 0 and store.ledger == {}
    assert [o.window.start for o in clocked.backfill(T0, T0 + 2 * W, max_windows=2)] == [T0, T0 + W]
    assert clocked.plan_count(T0 + timedelta(minutes=1), T0 + 5 * W) == 5


def test_a_run_refuses_a_now_it_cannot_look_back_from(parts) -> None:
    """A run looks back from ``now`` (the initial lookback, the late horizon and the allowed lateness): a ``now``
    too close to 0001-01-01 for that, or an initial lookback reaching before it, is refused naming the time
    (``PermanentError``: the CLI's exit 2), not an ``OverflowError``; nothing is read or written."""
    _reader, store, reference = parts
    year_one = datetime(1, 1, 1, 0, 30, tzinfo=UTC)
    with pytest.raises(PermanentError, match=r"now 0001-01-01T00:30:00\+00:00 is too early"):
        service(parts, initial_lookback_seconds=3600).run(now=year_one)
    with pytest.raises(PermanentError, match="SLUICE_ENRICH_INITIAL_LOOKBACK_SECONDS"):
        service(parts, initial_lookback_seconds=10**12).run(now=T0)
    assert reference.loads == 0 and store.ledger == {}


def test_cli_times_need_an_offset_except_bare_dates() -> None:
    import argparse

    from sluice.commands.backfill import parse_time

    assert parse_time("2026-11-20T10:00:00Z") == T0
    assert parse_time("2026-11-20T11:00:00+01:00") == T0
    assert parse_time("2026-11-20") == datetime(2026, 11, 20, tzinfo=UTC)
    for bad in ("2026-11-20T10:00:00", "yesterday"):
        with pytest.raises(argparse.ArgumentTypeError, match=bad):
            parse_time(bad)
