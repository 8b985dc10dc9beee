"""``StatusService`` and ``HistoryService`` over small in-memory fakes of their ports."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import pytest

from shared.domain.stored import StoredEvent
from shared.exceptions import DependencyUnavailable
from shared.ports.dashboard import BucketFigures, BucketRead, Position
from shared.services.history import BadToken, HistoryService, TokenSigner
from shared.services.status import NoLagReader, StatusService, p99

NOW = datetime(2026, 11, 23, 9, 30, 30, tzinfo=UTC)


class Arrivals:
    """Events at given enqueued times; records every read."""

    bucket_seconds = 60

    def __init__(self, arrivals: list[datetime]) -> None:
        self.arrivals = arrivals
        self.reads: list[BucketRead] = []

    def buckets(self, reads):
        self.reads += reads
        out = []
        for read in reads:
            end = read.start + timedelta(seconds=60)
            since = read.since or read.start
            inside = [t for t in self.arrivals if max(read.start, since) <= t < end]
            out.append(BucketFigures(read.start, len(inside), [10.0] * len(inside) if read.sample else []))
        return out


class Fixed:
    def __init__(self, **values) -> None:
        self.__dict__.update(values)


def service(arrivals: Arrivals, *, feed=None, dead=(0, False), redis_down=False, lag=None) -> StatusService:
    def hit_rate():
        if redis_down:
            raise DependencyUnavailable("redis", "INFO stats failed: ConnectionError")
        return 0.5

    return StatusService(
        arrivals, Fixed(change_feed=lambda: feed), Fixed(enrichment=lambda: Position(NOW - timedelta(minutes=7), NOW)),
        Fixed(count_since=lambda since, cap: dead), Fixed(hit_rate=hit_rate), Fixed(recent=lambda limit: []),
        lag or NoLagReader(), lambda: (True, {"dependencies": {"redis": {"status": "up"}}}), cache_seconds=0,
        clock=lambda: NOW)


def test_counts_the_last_minute_and_five_minutes_from_bucket_reads() -> None:
    arrivals = Arrivals([NOW - timedelta(seconds=s) for s in (1, 20, 59, 61, 299, 301, 800, 2000)])
    body = service(arrivals, feed=Position(NOW - timedelta(seconds=8), NOW - timedelta(seconds=3))).status()
    throughput = body["throughput"]
    assert throughput["events_last_minute"] == 3 and throughput["events_last_5_minutes"] == 5
    assert sum(b["events"] for b in throughput["series"]) == 7  # 2000 s ago is outside the 15 minutes
    assert len(throughput["series"]) == 16 and throughput["delay_p99_ms"] == 10.0
    assert body["change_feed"]["staleness_seconds"] == 3.0 and body["change_feed"]["freshness_seconds"] == 8.0
    assert body["enrichment"]["freshness_seconds"] == 420.0
    assert body["lag"] == {"status": "not_configured", "partitions": None, "total": None}


def test_a_position_saved_after_the_page_was_taken_is_0_s_old_not_negative() -> None:
    """The change feed saves its position every few seconds, also between the moment the status takes as now and
    its read of the position: the page showed "staleness -0.1 s"."""
    feed = Position(NOW + timedelta(seconds=1), NOW + timedelta(milliseconds=100))
    body = service(Arrivals([]), feed=feed).status()
    assert body["change_feed"]["staleness_seconds"] == 0.0 and body["change_feed"]["freshness_seconds"] == 0.0


def test_the_lag_section_names_the_partitions_whose_checkpoint_keda_cannot_read() -> None:
    """A partition whose checkpoint KEDA's scaler cannot read is counted nowhere (no false lag) and the section says
    so, naming it: the autoscaler is on its fallback replicas, which the lag figures alone would not show."""
    why = "checkpoint/0 has no 'sequencenumber' metadata"
    status = service(Arrivals([]), lag=Fixed(lag=lambda: {"1": 2}, unreadable=lambda: {"0": why}))
    assert status.status()["lag"] == {"status": "checkpoint_unreadable", "partitions": {"1": 2}, "total": 2,
                                      "unreadable": {"0": why}}


def test_every_bucket_is_read_on_each_computation_so_late_writes_count() -> None:
    """Buckets are keyed by Event Hubs enqueued time: ingest working off a backlog writes into buckets that closed
    minutes ago. Each computation reads every bucket of the series again (a bounded read: 16 buckets and the two
    cut buckets, counts only for the cuts), so events written late into a closed bucket are counted."""
    old = NOW - timedelta(seconds=200)
    arrivals = Arrivals([old])
    status = service(arrivals)
    assert status.status()["throughput"]["events_last_5_minutes"] == 1
    assert len(arrivals.reads) == 16 + 2 and sum(not r.sample for r in arrivals.reads) == 2
    arrivals.reads.clear()
    arrivals.arrivals += [old, old]  # written late, into a bucket closed for over two minutes
    body = status.status()["throughput"]
    assert len(arrivals.reads) == 16 + 2 and sum(not r.sample for r in arrivals.reads) == 2
    assert body["events_last_5_minutes"] == 3 and sum(b["events"] for b in body["series"]) == 3


def test_a_down_store_makes_only_its_own_section_an_error() -> None:
    body = service(Arrivals([]), redis_down=True, dead=(10_000, True)).status()
    assert body["cache"] == {"error": "redis unavailable: INFO stats failed: ConnectionError", "dependency": "redis"}
    assert body["dead_letters"] == {"last_hour": 10_000, "capped": True}
    assert body["throughput"]["events_last_minute"] == 0 and body["throughput"]["delay_p99_ms"] is None


def test_p99_is_the_nearest_rank() -> None:
    assert p99([]) is None and p99([5.0]) == 5.0
    assert p99([float(i) for i in range(1, 101)]) == 99.0


class History:
    """One device's events in (device, day) partitions, in the table's clustering order."""

    def __init__(self, events: list[StoredEvent]) -> None:
        self.events = events
        self.partitions_read: list[date] = []

    def page(self, device_id, day, *, start, end, after, limit):
        self.partitions_read.append(day)
        rows = sorted((e for e in self.events if e.device_id == device_id and e.event_time.date() == day
                       and start <= e.event_time <= end), key=lambda e: (-e.event_time_ms, str(e.event_id)))
        if after is not None:
            rows = [e for e in rows if (-e.event_time_ms, str(e.event_id)) > (-after[0], str(after[1]))]
        return rows[:limit]


def _event(device: str, at: datetime) -> StoredEvent:
    return StoredEvent(uuid.uuid4(), device, at, "telemetry", "info")


def test_pages_follow_the_token_to_every_event_once_newest_first() -> None:
    same = NOW - timedelta(hours=1)
    events = [_event("d", same), _event("d", same), _event("d", NOW - timedelta(days=2)), _event("d", NOW)]
    history = HistoryService(History(events), TokenSigner(b"k" * 32))
    seen, token = [], None
    while True:
        page = history.page("d", start=NOW - timedelta(days=3), end=NOW, limit=1, token=token)
        seen += page.events
        token = page.next_token
        if token is None:
            break
    assert sorted(e["event_id"] for e in seen) == sorted(str(e.event_id) for e in events)
    assert [e["timestamp"] for e in seen] == sorted((e["timestamp"] for e in seen), reverse=True)


def test_a_long_range_is_read_at_most_31_partitions_per_page() -> None:
    store = History([_event("d", NOW - timedelta(days=100))])
    history = HistoryService(store, TokenSigner(b"k" * 32))
    page = history.page("d", start=NOW - timedelta(days=365), end=NOW, limit=10)
    assert page.events == [] and page.next_token is not None and len(store.partitions_read) == 31


def test_tokens_are_bound_to_the_device_and_the_key() -> None:
    signer = TokenSigner(b"k" * 32)
    history = HistoryService(History([_event("d", NOW), _event("d", NOW - timedelta(seconds=1))]), signer)
    token = history.page("d", start=NOW - timedelta(days=1), end=NOW, limit=1).next_token
    with pytest.raises(BadToken):
        history.page("e", start=NOW - timedelta(days=1), end=NOW, limit=1, token=token)
    with pytest.raises(BadToken):
        HistoryService(History([]), TokenSigner(b"other key 123456")).page(
            "d", start=NOW - timedelta(days=1), end=NOW, limit=1, token=token)
