"""The rebuild's token bucket and its page/position order, with small in-memory fakes of its ports."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared.domain.stored import StoredEvent
from shared.ports.cache import SINCE_ALL
from shared.ports.rebuild import Build, DeviceRow
from shared.services.rebuild import RebuildService, TokenBucket, token_fraction
from tests.fixtures.buckets import RecordingBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_token_bucket_holds_the_average_rate_after_a_burst():
    clock = Clock()
    bucket = TokenBucket(100, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        bucket.acquire(10)  # the first second's worth is the burst
    assert clock.now == 0
    for _ in range(50):
        bucket.acquire(10)
    assert clock.now == pytest.approx(5.0)  # 500 more units at 100/s


def test_token_bucket_refills_while_idle_but_not_beyond_its_burst():
    clock = Clock()
    bucket = TokenBucket(10, clock=clock, sleep=clock.sleep)
    bucket.acquire(10)
    clock.now += 100  # idle: refills to the burst (10), not 1000
    bucket.acquire(10)
    assert clock.slept == []
    assert bucket.acquire(20) == pytest.approx(2.0)


def test_a_reservation_waits_for_its_units_and_what_a_read_did_not_use_lets_the_next_start():
    """A read of unknown size reserves the most it may read before it starts (``reserve``) and gives back what it
    did not use (``acquire(-unused)``): a second reservation waits until the bucket holds its units again, sooner
    when the first read gave some back; the bucket never holds more than its burst."""
    clock = Clock()
    bucket = TokenBucket(10, clock=clock, sleep=clock.sleep)
    assert bucket.reserve(10) == 0.0
    assert bucket.reserve(10) == pytest.approx(1.0)  # the bucket was empty: a second's refill
    bucket.acquire(-8)  # the read used 2 of its 10
    assert bucket.reserve(10) == pytest.approx(0.2)
    bucket.acquire(-100)
    clock.slept.clear()
    assert bucket.reserve(10) == pytest.approx(0.0) and bucket.reserve(1) == pytest.approx(0.1)


def test_a_reservation_waiting_on_real_time_is_woken_by_units_given_back():
    bucket = TokenBucket(1)  # a second's refill per unit: far longer than the test waits
    bucket.reserve(1)
    threading.Timer(0.05, bucket.acquire, args=(-1,)).start()
    started = time.monotonic()
    bucket.reserve(1)
    assert time.monotonic() - started < 0.5


def test_token_bucket_without_a_rate_never_waits_and_rejects_nonsense():
    assert TokenBucket(None).acquire(10**9) == 0.0
    with pytest.raises(ValueError):
        TokenBucket(0)


def ev(device: str, critical: bool = False) -> StoredEvent:
    return StoredEvent(event_id=uuid.uuid4(), device_id=device, event_time=datetime(2026, 11, 23, tzinfo=UTC)
                       + timedelta(seconds=1), event_type="t", severity="info", critical=critical, measurements={})


class Log:
    def __init__(self, devices: int) -> None:
        self.rows = [DeviceRow(token, f"d{token}", ev(f"d{token}")) for token in range(devices)]
        self.rows_read = 0

    def devices(self, after, limit):
        page = [r for r in self.rows if after is None or r.token > after][:limit]
        self.rows_read += 2 * len(page)  # device_latest rows, then each one's latest event by id
        return page

    def device(self, device_id):
        found = next((r for r in self.rows if r.device_id == device_id), None)
        self.rows_read += 2 if found else 0
        return found

    def critical(self, device_id, since_ms):
        self.rows_read += 1
        return [ev(device_id, True)]

    def critical_rows(self, device_id, since_ms):
        return self.critical(device_id, since_ms)  # no copy superseded any of them

    def current(self, events_by_device):
        return {device: list(events) for device, events in events_by_device.items()}


class Builder:
    def __init__(self, position=None, fail_after: int | None = None) -> None:
        self.calls: list[tuple] = []
        self.position = position
        self.fail_after = fail_after

    def in_progress(self):
        return None

    def begin(self, since_ms, *, resume):
        return Build(7, self.position if resume else None, since_ms)

    def stream_since_ms(self):
        return 1_000

    def write(self, generation, latest, critical, since_ms):
        if self.fail_after is not None and len([c for c in self.calls if c[0] == "write"]) == self.fail_after:
            raise RuntimeError("killed")
        self.calls.append(("write", [e.device_id for e in latest]))

    def save_position(self, generation, position):
        self.calls.append(("save", position))

    def release(self, generation):
        self.calls.append(("release", generation))

    def finish(self, generation):
        self.calls.append(("finish", generation))
        return 6

    def cleanup(self):
        self.calls.append(("cleanup",))
        return [6]

    def clear(self, device_id, event_ids=()):
        self.calls.append(("clear", device_id, len(event_ids)))

    def refresh(self, device_id, latest, critical, since_ms):
        self.calls.append(("refresh", device_id))


def test_position_is_saved_after_the_page_it_covers_and_a_resume_starts_after_it():
    builder = Builder(fail_after=2)
    with pytest.raises(RuntimeError):
        RebuildService(Log(10), builder, page_size=3).rebuild()
    # The failure gives the build up (its position kept), so running it again resumes it at once.
    assert builder.calls == [("write", ["d0", "d1", "d2"]), ("save", 2), ("write", ["d3", "d4", "d5"]), ("save", 5),
                             ("release", 7)]

    resumed = Builder(position=5)
    report = RebuildService(Log(10), resumed, page_size=3).rebuild()
    assert resumed.calls == [("write", ["d6", "d7", "d8"]), ("save", 8), ("write", ["d9"]), ("save", 9),
                             ("finish", 7), ("cleanup",)]
    assert (report.generation, report.replaced, report.devices, report.events, report.resumed_from) == (7, 6, 4, 8, 5)
    assert report.fields()["events_per_second"] >= 0


def test_a_device_whose_newest_event_moved_away_gets_its_critical_events_but_no_latest_state():
    """A correction that moved a device's newest event to another device leaves it a position and no latest
    state: the rebuild writes none for it, as the change feed leaves none, but still its critical events; and
    ``--devices`` rebuilds it rather than call it no device of the log."""
    log = Log(3)
    log.rows[1] = DeviceRow(1, "d1", None)
    written: list[tuple[list[str], list[str]]] = []

    class Capture(Builder):
        def write(self, generation, latest, critical, since_ms):
            written.append(([e.device_id for e in latest], list(critical)))

    report = RebuildService(log, Capture()).rebuild()
    assert written == [(["d0", "d2"], ["d0", "d1", "d2"])]
    assert (report.devices, report.events) == (3, 5)

    refreshed: list[tuple[str, object, int]] = []

    class Refresh(Builder):
        def refresh(self, device_id, latest, critical, since_ms):
            refreshed.append((device_id, latest, len(critical)))

    report = RebuildService(log, Refresh()).rebuild_devices(["d1"])
    assert refreshed == [("d1", None, 1)]
    assert (report.devices, report.events, report.not_found) == (1, 1, [])


def test_token_fraction_spans_the_ring():
    assert token_fraction(None) == 0.0
    assert token_fraction(2**63 - 1) == pytest.approx(1.0)
    assert token_fraction(0) == pytest.approx(0.5)


def test_rows_without_the_critical_flag_are_decided_by_the_rules_as_the_change_feed_does():
    from dataclasses import replace

    from shared.domain.rules import MeasurementRule

    log = Log(2)
    log.rows = [DeviceRow(0, "hot", replace(ev("hot"), critical=None, measurements={"temperature": 95.0})),
                DeviceRow(1, "cool", replace(ev("cool"), critical=None, measurements={"temperature": 20.0}))]
    seen = []

    class Capture(Builder):
        def write(self, generation, latest, critical, since_ms):
            seen.extend((e.device_id, e.critical) for e in latest)

    RebuildService(log, Capture(), rules=[MeasurementRule(measurement="temperature", op=">", value=90)]).rebuild()
    assert seen == [("hot", True), ("cool", False)]


@pytest.mark.parametrize(("since_ms", "read_from"), [(5_000, 1_000), (500, 500), (SINCE_ALL, SINCE_ALL)])
def test_since_bounds_the_lists_not_the_critical_events_the_stream_could_still_hold(since_ms, read_from):
    """``--since`` bounds the per-device critical lists; the stream and its markers need every critical event the
    feed's stream could still hold (``CacheBuilder.stream_since_ms``), or a replay after the rebuild appends the
    older ones on top of it. The builder gets ``since_ms`` to split them."""
    reads, writes = [], []

    class Reading(Log):
        def critical(self, device_id, since_ms):
            reads.append(since_ms)
            return super().critical(device_id, since_ms)

    class Capture(Builder):
        def write(self, generation, latest, critical, since_ms):
            writes.append(since_ms)

    RebuildService(Reading(3), Capture()).rebuild(since_ms=since_ms)
    assert set(reads) == {read_from} and len(reads) == 3
    assert writes == [since_ms]


def test_a_build_in_progress_with_another_since_is_not_resumed_nor_dropped_unless_restarted():
    """Resuming continues the build in progress only with its own ``since``; with another one the rebuild is
    refused before anything is claimed or written, and ``resume=False`` (``--restart``) starts over on purpose."""
    from shared.exceptions import ConfigurationError
    from shared.ports.cache import SINCE_ALL

    class InProgress(Builder):
        def in_progress(self):
            return Build(7, 5, 1_000)

        def begin(self, since_ms, *, resume):
            self.calls.append(("begin", since_ms, resume))
            return super().begin(since_ms, resume=resume)

    builder = InProgress(position=5)
    with pytest.raises(ConfigurationError, match=r"with --since 1970-01-01T00:00:01\.000\+00:00 is in progress.*"
                                                 r"this one, with no --since, cannot resume it"):
        RebuildService(Log(10), builder, page_size=3).rebuild(since_ms=SINCE_ALL)
    assert builder.calls == []

    RebuildService(Log(10), builder, page_size=3).rebuild(since_ms=1_000)  # its own since: resumed
    assert builder.calls[0] == ("begin", 1_000, True)
    restarted = InProgress()
    RebuildService(Log(10), restarted, page_size=3).rebuild(since_ms=SINCE_ALL, resume=False)
    assert restarted.calls[0] == ("begin", SINCE_ALL, False)


def test_the_rate_limit_is_charged_every_row_the_log_read():
    """``--max-rps`` promises at most N rows read per second, but the bucket was charged ``page_size`` per page of
    devices plus the critical rows: each device's latest event read by id (and a page of devices the log read
    again) went uncharged, so the rebuild read about twice the rate it was given. It is charged what the log
    counts it read."""
    log = Log(10)
    service = RebuildService(log, Builder(), page_size=4, max_rps=100)
    service._limiter = bucket = RecordingBucket(100)
    service.rebuild()
    assert sum(bucket.charged) == log.rows_read == 10 * 2 + 10 * 1

    bucket.charged.clear()
    service.rebuild_devices(["d1", "nobody"])
    # each device read twice: the ids whose cached documents the clear deletes, then the state written back
    assert sum(bucket.charged) == 2 * (2 + 1) + 2 * (0 + 1)


def test_a_full_rebuild_reads_the_copies_of_a_page_at_once_each_read_paid_before_it_starts():
    """The critical rows' copies (which of them a correction superseded) were read device by device, right after
    its rows: two round trips a device on the rebuild's threads, on Cosmos DB a request more a device with any
    critical row. A full rebuild reads them once a page (``current``), with ``max_rps`` paid for before it starts,
    no more rows at once than the bucket holds, and charged the copies it read."""
    class Copies(Log):
        def __init__(self, devices: int) -> None:
            super().__init__(devices)
            self.batches: list[int] = []
            self.holds: int | None = None  # the bucket's burst, with max_rps

        def critical(self, device_id, since_ms):
            raise AssertionError("a full rebuild reads a page's copies at once")

        def critical_rows(self, device_id, since_ms):
            self.rows_read += 3
            return [ev(device_id, True) for _ in range(3)]

        def current(self, events_by_device):
            rows = sum(len(events) for events in events_by_device.values())
            assert self.holds is None or rows <= self.holds, "more rows at once than the bucket holds"
            self.batches.append(rows)
            self.rows_read += rows
            return super().current(events_by_device)

    log = Copies(10)
    report = RebuildService(log, Builder(), page_size=5).rebuild()
    assert log.batches == [15, 15] and (report.devices, report.events) == (10, 10 + 30)

    log = Copies(10)
    log.holds = 10
    service = RebuildService(log, Builder(), page_size=5, max_rps=10)
    service._limiter = bucket = RecordingBucket(10)
    service.rebuild()
    assert log.batches == [9, 6] * 2  # pages of 5 devices (2 rows each fit in 10), copies of 3 devices at once
    assert sum(bucket.charged) == log.rows_read == 10 * 2 + 10 * 3 * 2
    assert 9 in bucket.held and 6 in bucket.held  # each copies read reserved its rows before it started
