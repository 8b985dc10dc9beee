"""The Redis side of a replay, with in-memory ports: pages applied a chunk at a time as they arrive."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from shared.domain.rules import MeasurementRule
from shared.domain.stored import StoredEvent
from shared.exceptions import PermanentError
from shared.services.replay import ReplayService
from tests.unit.test_enrichment import T0, MemoryReader, ev


class RecordingSink:
    def __init__(self, reader: MemoryReader) -> None:
        self.applied: list[list[StoredEvent]] = []
        self.reader = reader
        self.pages_read_before: list[int] = []

    def apply(self, events: Sequence[StoredEvent]) -> list[str]:
        self.applied.append(list(events))
        self.pages_read_before.append(self.reader.pages)
        return []

    def put_latest(self, events: Sequence[StoredEvent]) -> None:
        raise AssertionError("apply reported no device without a latest state")


class PagingReader(MemoryReader):
    """Pages of three; counts the pages handed over, to see the sink called before the range is read."""

    def __init__(self) -> None:
        super().__init__()
        self.pages = 0

    def read_each(self, start: datetime, end: datetime) -> Iterator[list[StoredEvent]]:
        for page in super().read_each(start, end):
            self.pages += 1
            yield page


def test_pages_are_applied_in_chunks_as_they_arrive_with_criticality_decided() -> None:
    reader = PagingReader()
    reader.events = [ev(f"d{i % 3}", T0 + timedelta(seconds=10 * i), None if i % 2 else False, t=float(i))
                     for i in range(50)]  # 500 s: two 5-minute steps, 30 and 20 events
    sink = RecordingSink(reader)
    rules = [MeasurementRule(measurement="t", op=">=", value=40)]
    report = ReplayService(reader, sink, rules, None, apply_chunk=4).replay(T0, T0 + timedelta(seconds=500),
                                                                            postgres=False)
    assert [len(chunk) for chunk in sink.applied] == [4] * 7 + [2] + [4] * 5
    assert report.redis_events == 50
    applied = {e.event_id: e for chunk in sink.applied for e in chunk}
    assert set(applied) == {e.event_id for e in reader.events}
    for original in reader.events:
        t = original.measurements["t"]
        expected = original.critical if original.critical is not None else t >= 40
        assert applied[original.event_id].critical is expected
    assert sink.pages_read_before[:3] == [2, 3, 4]  # each chunk of four went out as soon as read


def test_a_range_no_replay_could_finish_is_refused_before_anything_is_read() -> None:
    """``replay`` walks its range step by step (Redis), then backfills it: an end after now plus the events' future
    skew and one window (``9999-12-31``), or a range of more enrichment windows than ``max_windows`` (default 366
    days' worth), is refused naming the value before the first read; a range of exactly ``max_windows`` runs."""
    reader = PagingReader()
    reader.events = [ev("d1", T0 + timedelta(seconds=10 * i)) for i in range(6)]
    replay = ReplayService(reader, RecordingSink(reader), [], None, window_seconds=300,
                           max_future_skew=timedelta(minutes=5), clock=lambda: T0 + timedelta(hours=1))
    with pytest.raises(PermanentError, match="end 9999-12-31T00:00:00"):
        replay.replay(T0, datetime(9999, 12, 31, tzinfo=UTC), postgres=False)
    with pytest.raises(PermanentError, match="covers 2 windows of 300 s, more than max_windows 1"):
        replay.replay(T0, T0 + timedelta(seconds=301), postgres=False, max_windows=1)
    with pytest.raises(PermanentError, match="covers 105,409 windows"):
        replay.replay(T0 - timedelta(days=366), T0 + timedelta(seconds=1), postgres=False)
    assert reader.pages == 0
    assert replay.replay(T0, T0 + timedelta(seconds=300), postgres=False, max_windows=1).redis_events == 6
