"""``StatusService``, ``HistoryService`` and ``StateService`` over small in-memory fakes of their ports."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import pytest

from shared.adapters.eventhub_lag import CachedPartitionLag
from shared.domain.stored import StoredEvent
from shared.exceptions import DependencyUnavailable
from shared.ports.dashboard import BucketFigures, BucketRead, LagCounts, Position
from shared.ports.lag import LagReading, PartitionLag
from shared.services.history import BadToken, HistoryService, TokenSigner
from shared.services.status import NoLagReader, StatusService, p99

NOW = datetime(2026, 11, 23, 9, 30, 30, tzinfo=UTC)


class Arrivals:
    """Events at given enqueued times; records every read."""

    bucket_seconds = 60

    def __init__(self, arrivals: list[datetime]) -> None:
        self.arrivals = arrivals
        self.reads: list[BucketRead] = []
        self.noted: datetime | None = None  # the oldest enqueued time of the notes ingest wrote since the last read
        self.notes_read: list[tuple[datetime, datetime]] = []

    def delayed_since(self, start: datetime, end: datetime) -> datetime | None:
        self.notes_read.append((start, end))
        noted, self.noted = self.noted, None
        return noted

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
    status = service(Arrivals([]), lag=Fixed(lag=lambda: LagCounts({"1": 2}, {"0": why})))
    assert status.status()["lag"] == {"status": "checkpoint_unreadable", "partitions": {"1": 2}, "total": 2,
                                      "unreadable": {"0": why}}


class AlternatingHub:
    """A ``PartitionLagReader`` whose readings take turns: partition 0's checkpoint unreadable, then read again."""

    WHY = "checkpoint/0 has no 'sequencenumber' metadata"

    def __init__(self, *, unreadable_first: bool) -> None:
        self.unreadable = unreadable_first

    def read(self) -> LagReading:
        partition_0 = (PartitionLag("0", 0, 4, None, 5, self.WHY) if self.unreadable
                       else PartitionLag("0", 0, 4, 1, 3))
        self.unreadable = not self.unreadable
        return LagReading((partition_0, PartitionLag("1", 0, 3, 1, 2)))


@pytest.mark.parametrize("unreadable_first", [True, False])
def test_the_lag_section_takes_its_counts_and_unreadable_partitions_from_one_reading(
        unreadable_first: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``sluice.eventhub.lag`` gauge's thread reads the hub every period through the page's reader
    (``fresh_lag``). The section took the counts, then asked for the unreadable partitions: a gauge reading ending
    in between made it say ``ok`` with partition 0 left out of the counts, or ``checkpoint_unreadable`` naming
    partition 0 while counting it in ``partitions`` and ``total`` (docs/api.md: such a partition is in neither)."""
    lag = CachedPartitionLag(AlternatingHub(unreadable_first=unreadable_first), max_age=5.0, monotonic=lambda: 0.0)
    page_read = lag.lag

    def then_the_gauge_reads() -> LagCounts:
        answer = page_read()
        lag.fresh_lag()  # the gauge's reading of this period ends right after the page's read
        return answer

    monkeypatch.setattr(lag, "lag", then_the_gauge_reads)
    section = service(Arrivals([]), lag=lag).status()["lag"]
    if unreadable_first:
        assert section == {"status": "checkpoint_unreadable", "partitions": {"1": 2}, "total": 2,
                           "unreadable": {"0": AlternatingHub.WHY}}
    else:
        assert section == {"status": "ok", "partitions": {"0": 3, "1": 2}, "total": 5}


def test_closed_buckets_are_read_once_and_each_read_is_bounded() -> None:
    arrivals = Arrivals([NOW - timedelta(seconds=5)])
    status = service(arrivals)
    status.status()
    first = list(arrivals.reads)
    assert len(first) == 16 + 2  # 16 buckets of the series, and the two cut buckets (counts only)
    arrivals.reads.clear()
    status.status()
    # only the buckets not yet closed for the grace period are read again, plus the two cuts
    assert len(arrivals.reads) == 2 + 2 and sum(not r.sample for r in arrivals.reads) == 2


def test_a_kept_bucket_is_read_again_once_ingest_notes_a_batch_stored_late_into_it() -> None:
    """Ingest working off a backlog writes into buckets (keyed by enqueued time) that closed minutes ago; each such
    write comes long after its enqueue, so ingest notes its batch in the delay log. Every bucket from the one
    holding the batch's oldest event on is read again: the count is the store's, on every pod."""
    arrivals = Arrivals([NOW - timedelta(minutes=10)])
    status = service(arrivals)
    assert status.status()["throughput"]["events_last_5_minutes"] == 0
    assert arrivals.notes_read == []  # nothing kept yet: no note to look for
    late = NOW - timedelta(minutes=4, seconds=30)
    arrivals.arrivals += [late, late]  # stored just now, into a bucket closed for minutes
    arrivals.reads.clear()
    assert status.status()["throughput"]["events_last_5_minutes"] == 0  # kept: not seen without a note
    assert arrivals.notes_read == [(NOW - timedelta(seconds=60), NOW)]  # since the last computation, with overlap
    arrivals.noted = late
    arrivals.reads.clear()
    body = status.status()["throughput"]
    assert body["events_last_5_minutes"] == 2
    again = sorted(r.start for r in arrivals.reads if r.sample)
    assert again[0] == late.replace(second=0) and len(again) == 5  # 09:26 to 09:30: the noted bucket on
    assert sum(point["events"] for point in body["series"]) == 3  # the bucket of 10 minutes ago was kept


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


def test_history_and_state_decide_a_row_without_the_critical_flag_with_the_rules() -> None:
    """A row written before the flag existed (``critical`` null) is answered critical by ``severity == "critical"``
    or a rule of SLUICE_CRITICAL_RULES (docs/api.md), as the change feed and the lookups decide it, not ``false``."""
    from dataclasses import replace

    from shared.domain.rules import MeasurementRule
    from shared.ports.event_reader import Newest
    from shared.services.state import StateService

    rules = [MeasurementRule(measurement="temperature", op=">", value=90)]
    hot = replace(_event("d", NOW), measurements={"temperature": 99.0})
    events = [hot, replace(_event("d", NOW - timedelta(seconds=1)), severity="critical"),
              replace(_event("d", NOW - timedelta(seconds=2)), measurements={"temperature": 10.0}),
              replace(_event("d", NOW - timedelta(seconds=3)), critical=False, severity="critical")]
    page = HistoryService(History(events), TokenSigner(b"k" * 32), rules=rules).page(
        "d", start=NOW - timedelta(days=1), end=NOW, limit=10)
    assert [e["critical"] for e in page.events] == [True, True, False, False]  # a flag set stays as it is
    unruled = HistoryService(History(events), TokenSigner(b"k" * 32)).page(
        "d", start=NOW - timedelta(days=1), end=NOW, limit=10)
    assert [e["critical"] for e in unruled.events] == [False, True, False, False]

    class Reader:
        def newest(self, device_id):
            return Newest(hot.event_time, hot.event_id, hot)

    state = StateService(History(events), Reader(), rules=rules)
    assert state.at("d", NOW)["critical"] is True  # the newest event: the shortcut
    assert state.at("d", NOW - timedelta(seconds=1))["critical"] is True  # the walk
    assert state.at("d", NOW - timedelta(seconds=2))["critical"] is False


def test_tokens_are_bound_to_the_device_and_the_key() -> None:
    signer = TokenSigner(b"k" * 32)
    history = HistoryService(History([_event("d", NOW), _event("d", NOW - timedelta(seconds=1))]), signer)
    token = history.page("d", start=NOW - timedelta(days=1), end=NOW, limit=1).next_token
    with pytest.raises(BadToken):
        history.page("e", start=NOW - timedelta(days=1), end=NOW, limit=1, token=token)
    with pytest.raises(BadToken):
        HistoryService(History([]), TokenSigner(b"other key 123456")).page(
            "d", start=NOW - timedelta(days=1), end=NOW, limit=1, token=token)


@pytest.mark.parametrize("payload", [
    b"not json", b"\xff", b"{}", b"[]", b"[1]", b"[1,null,2]", b"[true,null]", b"[1.5,null]", b'["1",null]',
    b"[0,null]", b"[99999999999,null]", b"[739000,{}]", b'[739000,{"0":1,"1":"x"}]', b"[739000,[1]]",
    b"[739000,[1,2,3]]", b'[739000,[true,"00000000-0000-0000-0000-000000000001"]]',
    b'[739000,[1.5,"00000000-0000-0000-0000-000000000001"]]', b"[739000,[1,123]]", b"[739000,[1,null]]",
    b'[739000,[1,"not a uuid"]]', b'[739000,[1000000000000000000,"00000000-0000-0000-0000-000000000001"]]',
    b'[739000,[0,"00000000-0000-0000-0000-000000000001"]]',  # 1970-01-01 is not the token's day
])
def test_a_signed_token_of_any_other_shape_is_bad_token_and_nothing_else(payload: bytes) -> None:
    """docs/api.md: a malformed page token is a 400 naming ``page``. A signature proves only who signed the
    payload (a deployment's derived key is computable from its settings), so the decoder checks each part's type
    and range and raises BadToken, never AttributeError, KeyError or another exception (a 500)."""
    from shared.services.history import _b64

    signer = TokenSigner(b"k" * 32)
    with pytest.raises(BadToken, match="malformed"):
        signer.decode("d", f"{_b64(payload)}.{_b64(signer._sign('d', payload))}")
