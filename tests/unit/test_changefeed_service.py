"""ChangeFeedService ordering with in-memory fakes of our ports: write first, then save; CAS; budget; restart."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from shared.domain.rules import MeasurementRule
from shared.domain.stored import StoredEvent
from shared.exceptions import DependencyUnavailable
from shared.ports.cache import LatestFound
from shared.ports.feed import ContinuationRejected, FeedPage, FeedPosition, SavedPosition
from shared.services.changefeed import ChangeFeedService, apply_changes

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def stored(i: int, **kw) -> StoredEvent:
    return StoredEvent(event_id=uuid.UUID(int=i + 1), device_id=f"d{i % 2}", event_time=NOW - timedelta(minutes=i),
                       event_type="t", severity=kw.pop("severity", "info"), critical=kw.pop("critical", False), **kw)


class FakeFeed:
    """Pages of ``page_size`` over a fixed list; the position is the index reached (as a paging state)."""

    def __init__(self, events, page_size=3, reject=None):
        self.events, self.page_size, self.reject, self.reads = events, page_size, reject, []

    def initial_position(self, now):
        return FeedPosition(start_time=now - timedelta(hours=1))

    def rewind(self, position):
        return position

    def read_page(self, position, *, now, timeout):
        if self.reject is not None and position.paging_state == self.reject:
            raise ContinuationRejected("table recreated")
        start = int(position.paging_state or b"0")
        self.reads.append(start)
        page = self.events[start:start + self.page_size]
        after = replace(position, paging_state=str(start + len(page)).encode())
        return FeedPage(list(page), after, caught_up=not page)


class FakeSink:
    def __init__(self, fail_on_call=None):
        self.applied, self.calls, self.fail_on_call = [], 0, fail_on_call

    def apply(self, events):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise DependencyUnavailable("redis", "connection refused")
        self.applied.extend(events)
        return []

    def put_latest(self, events):
        raise AssertionError("apply reported no device without a latest state")


class FakePositions:
    def __init__(self, saved=None):
        self.saved, self.history = saved, []

    def load(self, name):
        return self.saved

    def save(self, name, position, expected_version):
        current = self.saved.version if self.saved else 0
        if current != expected_version:
            return None
        self.saved = SavedPosition(position, current + 1)
        self.history.append(position)
        return current + 1


def service(feed, sink, positions, **kw):
    return ChangeFeedService(feed, sink, positions, feed_name="f", clock=lambda: NOW, **kw)


def test_each_page_is_written_before_its_position_is_saved():
    events = [stored(i) for i in range(7)]
    order = []
    sink, positions = FakeSink(), FakePositions()
    sink_apply, positions_save = sink.apply, positions.save
    sink.apply = lambda evs: (order.append(("write", len(evs))), sink_apply(evs))[1]
    positions.save = lambda n, p, v: (order.append(("save", p.paging_state)), positions_save(n, p, v))[1]

    result = service(FakeFeed(events), sink, positions).run()

    assert order == [("write", 3), ("save", b"3"), ("write", 3), ("save", b"6"), ("write", 1), ("save", b"7")]
    assert result.events == 7 and result.stopped == "caught_up" and positions.saved.version == 3


def test_a_sink_failure_leaves_the_position_at_the_last_written_page():
    sink, positions = FakeSink(fail_on_call=2), FakePositions()
    with pytest.raises(DependencyUnavailable):
        service(FakeFeed([stored(i) for i in range(7)]), sink, positions).run()
    assert positions.saved.position.paging_state == b"3"  # page 2 was not acknowledged: not covered
    resumed = FakeSink()
    service(FakeFeed([stored(i) for i in range(7)]), resumed, positions).run()
    assert [e.event_id for e in resumed.applied] == [stored(i).event_id for i in range(3, 7)]


def test_losing_the_compare_and_set_stops_the_run():
    positions = FakePositions()
    other = SavedPosition(FeedPosition(start_time=NOW, paging_state=b"0"), 5)

    def racing_save(name, position, expected_version):
        positions.saved = other  # another instance saved meanwhile
        return

    positions.save = racing_save
    sink = FakeSink()
    result = service(FakeFeed([stored(i) for i in range(7)]), sink, positions).run()
    assert result.stopped == "lost_race" and result.pages == 1 and len(sink.applied) == 3


def test_the_time_budget_ends_a_run_between_pages():
    ticks = iter([0.0, 0.0, 5.0, 11.0, 99.0])
    sink, positions = FakeSink(), FakePositions()
    result = service(FakeFeed([stored(i) for i in range(9)]), sink, positions, time_budget=10,
                     monotonic=lambda: next(ticks)).run()
    assert result.stopped == "budget" and result.pages == 2 and positions.saved.position.paging_state == b"6"


def test_a_rejected_continuation_restarts_from_the_lookback_with_a_warning(caplog):
    saved = SavedPosition(FeedPosition(start_time=NOW - timedelta(days=3), paging_state=b"stale"), 4)
    positions, sink = FakePositions(saved), FakeSink()
    with caplog.at_level(logging.WARNING):
        result = service(FakeFeed([stored(i) for i in range(2)], reject=b"stale"), sink, positions).run()
    assert result.restarted and "restarting from the lookback" in caplog.text
    assert positions.saved.position.start_time == NOW - timedelta(hours=1)
    assert positions.saved.version == 5 and len(sink.applied) == 2


def test_rows_without_a_critical_flag_get_the_configured_rules():
    rules = [MeasurementRule(measurement="temperature", op=">", value=90)]
    events = [stored(0, critical=None, measurements={"temperature": 95.0}),
              stored(1, critical=None, measurements={"temperature": 20.0}),
              stored(2, critical=None, severity="critical"),
              stored(3, critical=True)]
    sink = FakeSink()
    result = service(FakeFeed(events, page_size=10), sink, FakePositions(), rules=rules).run()
    assert [e.critical for e in sink.applied] == [True, False, True, True] and result.critical == 3


def test_an_unchanged_position_is_not_saved_again():
    saved = SavedPosition(FeedPosition(start_time=NOW, paging_state=b"2"), 1)
    positions = FakePositions(saved)

    class Idle(FakeFeed):
        def read_page(self, position, *, now, timeout):
            return FeedPage([], position, caught_up=True)

    result = service(Idle([]), FakeSink(), positions).run()
    assert result.saves == 0 and positions.history == []


class ForgetfulSink(FakeSink):
    """A cache that has lost some devices' latest state: apply reports them, put_latest records what it got."""

    def __init__(self, lost: set[str]):
        super().__init__()
        self.lost, self.put = lost, []

    def apply(self, events):
        super().apply(events)
        return sorted({e.device_id for e in events} & self.lost)

    def put_latest(self, events):
        self.put.extend(events)


class StoreLatest:
    def __init__(self, rows):
        self.rows, self.asked = rows, []

    def latest_found(self, device_ids):
        self.asked.append(list(device_ids))
        return LatestFound([r for r in self.rows if r.device_id in device_ids])


def test_a_device_whose_latest_state_the_cache_lost_gets_the_newer_of_the_stores_and_the_pages():
    # A late, older event after the key expired must not become the latest state: the store's row (the device's
    # newest) goes in with the page's newest event of the device, and the cache keeps the newer of the two.
    stored_newest = ev("d1", seconds=50)
    page = [ev("d1", seconds=1), ev("d1", seconds=2), ev("d2", seconds=3)]
    sink, latest = ForgetfulSink({"d1"}), StoreLatest([stored_newest])
    apply_changes(sink, page, latest, list)
    assert latest.asked == [["d1"]]
    assert sink.put == [stored_newest, page[1]]
    sink = ForgetfulSink(set())
    apply_changes(sink, page, latest, list)
    assert sink.put == [] and latest.asked == [["d1"]], "nothing lost: the store is not asked"


class FloorLatest:
    """``LatestStates`` of a store whose position of each device names an event moved to another device."""

    def __init__(self, floors):
        self.floors = floors

    def latest_found(self, device_ids):
        return LatestFound([], {d: floor for d, floor in self.floors.items() if d in device_ids})


def test_a_device_whose_position_names_a_moved_event_gets_no_page_event_at_or_before_that_position():
    # The store has no latest state for a device whose newest event a correction moved to another device id, and
    # an event of it at or before that position loses to it there too: a late one is not put (Redis would serve it
    # where the store serves none), the moved event's own copy under it is not, one newer than the position is.
    moved = ev("d1", seconds=10)
    floor = (moved.event_time, moved.event_id)
    for page, put in (([ev("d1", seconds=1)], []), ([moved], [])):
        sink = ForgetfulSink({"d1"})
        apply_changes(sink, page, FloorLatest({"d1": floor}), list)
        assert sink.put == put
    newer = ev("d1", seconds=11)
    sink = ForgetfulSink({"d1"})
    apply_changes(sink, [ev("d1", seconds=1), newer], FloorLatest({"d1": floor}), list)
    assert sink.put == [newer]


def ev(device: str, *, seconds: int) -> StoredEvent:
    return StoredEvent(event_id=uuid.uuid4(), device_id=device, event_time=NOW + timedelta(seconds=seconds),
                       event_type="t", severity="info", critical=False)


class OverlapFeed:
    """A portable-like feed: each run re-reads ``overlap`` before the saved watermark and says so (``reread``)."""

    def __init__(self, overlap=timedelta(seconds=60)):
        self.rows, self.overlap, self.now = [], overlap, NOW

    def initial_position(self, now):
        return FeedPosition(watermark=now - timedelta(hours=1))

    def rewind(self, position):
        return replace(position, cursor=position.watermark - self.overlap)

    def read_page(self, position, *, now, timeout):
        start = position.cursor or position.watermark
        events = [e for e in self.rows if start <= e.enqueued_time < self.now]
        return FeedPage(events, FeedPosition(watermark=self.now), caught_up=True,
                        reread=(start, max(start, position.watermark)))


class RecordingMetrics:
    def __init__(self):
        self.counted, self.critical = [], 0

    def changefeed_applied(self, events, critical):
        self.counted.extend(e.device_id for e in events)
        self.critical += critical


def enqueued(name: str, at: datetime) -> StoredEvent:
    return StoredEvent(event_id=uuid.uuid4(), device_id=name, event_time=at, event_type="t", severity="info",
                       critical=False, enqueued_time=at)


def test_the_overlap_re_read_is_counted_once_and_a_row_stored_late_within_it_is_counted():
    feed, metrics = OverlapFeed(), RecordingMetrics()
    positions = FakePositions(SavedPosition(FeedPosition(watermark=NOW), 3))
    feed.rows = [enqueued("before-start", NOW - timedelta(seconds=10))]  # in the window a previous worker read
    feed.now = NOW + timedelta(seconds=5)
    feed.rows.append(enqueued("new", NOW + timedelta(seconds=2)))
    sink = FakeSink()
    run = service(feed, sink, positions, metrics=metrics).run
    assert run().events == 2 and metrics.counted == ["new"]  # the window's older row: counted by that worker

    feed.rows.append(enqueued("late", NOW + timedelta(seconds=3)))  # stored after the run passed its time
    feed.now = NOW + timedelta(seconds=10)
    assert run().events == 3 and metrics.counted == ["new", "late"]  # re-read: only the late row is new

    feed.rows.append(enqueued("unacknowledged", NOW + timedelta(seconds=11)))
    feed.now = NOW + timedelta(seconds=15)
    sink.fail_on_call = sink.calls + 1  # Redis fails this run's write: nothing counted, nothing saved
    with pytest.raises(DependencyUnavailable):
        run()
    assert metrics.counted == ["new", "late"]
    assert run().events == 4 and metrics.counted == ["new", "late", "unacknowledged"]  # counted once written
