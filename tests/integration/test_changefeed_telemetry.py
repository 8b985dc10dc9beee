"""The change feed's figures and span against the Cassandra emulator and real Redis, through the real SDK.

``sluice.changefeed.events`` / ``.delay`` count each change once although the
portable feed re-reads its overlap window every run and either feed re-reads a
page whose position could not be saved, and the run's one
``sluice.changefeed`` span lists the critical events of all its pages.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from emulators.cassandra.faults import clear_faults, inject_faults
from shared import telemetry
from shared.adapters.cassandra.feed import CassandraFeedStateStore, PortableChangeFeed
from shared.exceptions import DependencyUnavailable
from shared.ports.feed import FeedPosition
from shared.services.changefeed import ChangeFeedService
from tests.integration import test_changefeed as changefeed_tests
from tests.integration.test_changefeed import RULES, CountingSink, make_cache, make_event
from tests.unit.test_telemetry import collected, sdk  # noqa: F401 (sdk: a fixture)

pytestmark = pytest.mark.timeout(180)

# fixtures shared with the change feed tests (used by name)
session, keyspace, store, rclient = (changefeed_tests.session, changefeed_tests.keyspace, changefeed_tests.store,
                                     changefeed_tests.rclient)


def portable_service(session, keyspace: str, client, prefix: str, metrics) -> ChangeFeedService:
    feed = PortableChangeFeed(session, keyspace, bucket_seconds=60, shards=2, lookback_seconds=900,
                              overlap_seconds=60, max_span_seconds=3600)
    return ChangeFeedService(feed, make_cache(client, prefix), CassandraFeedStateStore(session, keyspace),
                             feed_name="events", rules=RULES, time_budget=60, metrics=metrics)


def test_portable_change_feed_counts_each_change_once_and_its_delay_once(
        session, keyspace: str, store, rclient, redis_prefix: str, sdk) -> None:  # noqa: F811
    """Every portable run re-reads ``overlap_seconds`` (60 s) before its watermark and writes those rows to Redis
    again (on purpose). Counted again, each event was counted about 13 times at the 5 s schedule, and
    ``sluice.changefeed.delay`` got a point per run as old as the overlap (p99 30-60 s on a healthy feed).

    Here 3 events stored once, then three runs with nothing new after the first: 3 counted, 1 delay point. Then a
    row enqueued before the watermark but stored after the run that passed its time (ingest's latency): the next
    run's overlap finds it, and it is counted, once.
    """
    now = datetime.now(UTC).replace(microsecond=0)
    store.write([make_event(f"dev-{i}", now - timedelta(seconds=8), enqueued=now - timedelta(seconds=5))
                 for i in range(3)])
    service = portable_service(session, keyspace, rclient, redis_prefix, sdk.metrics)
    runs = [service.run() for _ in range(3)]
    assert runs[0].events == 3, runs  # the first run found the three changes (the setup works)
    assert all(run.events == 3 for run in runs[1:]), runs  # and the others re-read them (the overlap)

    def figures() -> tuple[int, int]:
        points = collected(sdk.reader)  # a histogram's value is its count
        return sum(points["sluice.changefeed.events"].values()), sum(points["sluice.changefeed.delay"].values())

    assert figures() == (3, 1), (
        f"3 changes, stored once, gave (sluice.changefeed.events, sluice.changefeed.delay points) = {figures()} "
        f"over 3 runs (runs applied {[r.events for r in runs]} events: the overlap re-read is counted as new)")

    store.write([make_event("dev-late", now - timedelta(seconds=4), enqueued=now - timedelta(seconds=3))])
    late = [service.run() for _ in range(2)]
    assert late[0].events == 4, late  # the overlap found the late row
    assert figures() == (4, 2), f"the row stored late was not counted once: {figures()}"


def test_the_changefeed_span_lists_every_critical_event_the_run_applied(
        session, keyspace: str, store, rclient, redis_prefix: str, sdk) -> None:  # noqa: F811
    """``changefeed_applied`` runs once per page; setting ``sluice.critical.event_ids`` on the run's one span
    replaced the ids of the pages before, so for any run of several pages (a backlog, a catch-up, the portable
    feed's page per arrival bucket) the join docs/observability.md teaches ("Following a critical event") found no
    change feed span for all but the last page's critical events. Here two critical events in two arrival buckets
    (two pages of one run)."""
    now = datetime.now(UTC).replace(microsecond=0)
    earlier = make_event("dev-1", now - timedelta(seconds=150), severity="critical",
                         enqueued=now - timedelta(seconds=150))
    later = make_event("dev-2", now - timedelta(seconds=10), severity="critical", enqueued=now - timedelta(seconds=10))
    store.write([earlier, later])

    service = portable_service(session, keyspace, rclient, redis_prefix, telemetry.ACTIVE_METRICS)
    with telemetry.stage_span("changefeed"):  # as functions/changefeed.py runs it
        result = service.run()
    assert result.critical == 2 and result.pages >= 2, result  # both, from two pages (the setup works)

    (span,) = [s for s in sdk.spans.get_finished_spans() if s.name == "sluice.changefeed"]
    listed = list(span.attributes.get("sluice.critical.event_ids", ()))
    wanted = [str(earlier.body.event_id), str(later.body.event_id)]
    assert listed == wanted, (f"the run applied critical events {wanted} but its span lists {listed}: each "
                              f"page's ids replaced the previous page's")


class RecordingMetrics:
    """An in-memory fake of ``shared.ports.metrics.Metrics``: what the change feed reported as applied."""

    def __init__(self) -> None:
        self.counted: list[str] = []

    def ingest_batch(self, *args, **kwargs) -> None:
        return None

    def changefeed_applied(self, events, critical: int) -> None:
        self.counted += [str(e.event_id) for e in events]

    def enrich_run(self, *args, **kwargs) -> None:
        return None


def test_portable_feed_counts_a_late_row_found_by_the_second_run_of_a_fresh_worker(
        session, keyspace, store, rclient, redis_prefix) -> None:
    """``sluice.changefeed.events`` counts every change once (docs/observability.md: "a row stored late counts
    when it is first applied"; only "the window's rows before its first run" are taken as counted, since a previous
    worker counted them).

    A worker starts on a saved watermark W1 (a previous worker's). Its first run finds nothing new (a quiet
    moment) and moves the watermark to its start, W2. Then ingest stores a row enqueued between W1 and W2 (stored a
    few seconds after its enqueue: ingest's ordinary latency), which the second run's overlap re-read finds and
    writes to Redis. No run of any worker counted it before, and it lies after the first run's window, so it must
    be counted now (and give its delay point).

    Was: the start of what this worker counts itself (``since``) was fixed on the first page *that had events*, to
    that run's re-read end (W2), not on the worker's first run (W1): the late row was taken as "counted by an
    earlier run" and never counted by anyone, the counter and the delay histogram losing exactly the late rows the
    overlap exists for.
    """
    positions = CassandraFeedStateStore(session, keyspace)
    now = datetime.now(UTC)
    assert positions.save("events", FeedPosition(watermark=now - timedelta(seconds=20)), 0) == 1  # a previous worker
    feed = PortableChangeFeed(session, keyspace, bucket_seconds=60, shards=2, lookback_seconds=900,
                              overlap_seconds=60, max_span_seconds=3600)
    metrics = RecordingMetrics()
    seen = CountingSink(make_cache(rclient, redis_prefix))
    worker = ChangeFeedService(feed, seen, positions, feed_name="events", rules=RULES, time_budget=60,
                               metrics=metrics)  # one worker: the bootstrap caches its service across timer ticks

    first = worker.run()
    assert first.events == 0  # nothing new: the watermark moves to this run's start
    time.sleep(0.05)
    enqueued = now - timedelta(seconds=5)  # after W1, before the first run's start: stored only now (latency)
    late = make_event("late-1", enqueued - timedelta(seconds=1), enqueued=enqueued)
    store.write([late])

    second = worker.run()
    assert str(late.event_id) in seen.applied, "the overlap re-read found the late row and wrote it to Redis"
    assert second.events >= 1
    assert metrics.counted.count(str(late.event_id)) == 1, (
        f"a change applied to Redis for the first time was counted {metrics.counted.count(str(late.event_id))} "
        "times by sluice.changefeed.events")


def test_portable_feed_counts_a_late_row_after_the_very_first_run_of_a_new_feed(
        session, keyspace, store, rclient, redis_prefix) -> None:
    """Same promise (``sluice.changefeed.events`` counts each change once, a row stored late when it is first
    applied), on a new feed: no saved position, so the first run reads from ``now - lookback`` and nothing in it
    was read before.

    The first run applies an event enqueued 2 s ago. A row enqueued 10 s ago, stored only after that run read its
    time range (ingest's latency, well within the 60 s overlap), is found by the second run's overlap re-read and
    written to Redis: it was never counted, so it must be counted now.

    Was: "what no run will re-read" was forgotten as ``newest - (until - start)``, and the first run's re-read
    range was empty: ``since`` jumped to the newest enqueued time of the first run's last page, and every row
    enqueued before it that turned up later in the overlap was taken as counted. A first run's re-read window is
    now the overlap wide, ending at its watermark.
    """
    positions = CassandraFeedStateStore(session, keyspace)
    feed = PortableChangeFeed(session, keyspace, bucket_seconds=60, shards=2, lookback_seconds=900,
                              overlap_seconds=60, max_span_seconds=3600)
    metrics = RecordingMetrics()
    seen = CountingSink(make_cache(rclient, redis_prefix))
    worker = ChangeFeedService(feed, seen, positions, feed_name="events", rules=RULES, time_budget=60,
                               metrics=metrics)
    now = datetime.now(UTC)
    recent = make_event("recent-1", now - timedelta(seconds=3), enqueued=now - timedelta(seconds=2))
    store.write([recent])

    first = worker.run()  # no saved position: starts at now - lookback
    assert str(recent.event_id) in seen.applied and first.events == 1
    time.sleep(0.05)
    late = make_event("late-2", now - timedelta(seconds=11), enqueued=now - timedelta(seconds=10))
    store.write([late])  # stored after the first run read its range

    worker.run()
    assert str(late.event_id) in seen.applied, "the overlap re-read found the late row and wrote it to Redis"
    assert metrics.counted.count(str(recent.event_id)) == 1  # the first run's event, counted once (as it should)
    assert metrics.counted.count(str(late.event_id)) == 1, (
        f"a change applied to Redis for the first time was counted {metrics.counted.count(str(late.event_id))} "
        "times by sluice.changefeed.events")


class SaveFailsAfterApply:
    """The real sink; once it has acknowledged a page, the emulator times out the next write: the page's save."""

    def __init__(self, inner, emulator) -> None:
        self.inner, self.emulator, self.armed = inner, emulator, False

    def apply(self, events):
        missing = self.inner.apply(events)
        if not self.armed:
            inject_faults(self.emulator.host, self.emulator.port, error="write_timeout", count=1, applies_to="writes")
            self.armed = True
        return missing

    def put_latest(self, events) -> None:
        self.inner.put_latest(events)


@pytest.mark.parametrize("mode", ["cosmos", "portable"])
def test_a_page_read_again_after_its_save_failed_is_not_counted_twice(
        mode, cassandra_emulator, session, keyspace, store, rclient, redis_prefix) -> None:
    """``sluice.changefeed.events`` counts each change once ("a failed write is counted when a later run writes
    it"). One worker (the bootstrap keeps it across timer ticks) writes a page to Redis and counts it, then saving
    the page's position times out (Cassandra ``WriteTimeout``): the run fails, and the next tick reads the same page
    again from the old position.

    Was: in Cosmos mode the re-read page was counted again, each event twice with a second delay point: only the
    portable feed's overlap window (``FeedPage.reread``) was checked for changes counted before, and the Cosmos
    feed has none. The service now remembers what it counted of a page whose save failed, until a save succeeds.
    """
    now = datetime.now(UTC).replace(microsecond=0)
    events = [make_event(f"dev-{i}", now - timedelta(seconds=30), enqueued=now - timedelta(seconds=20))
              for i in range(3)]
    store.write(events)
    metrics = RecordingMetrics()
    sink = SaveFailsAfterApply(make_cache(rclient, redis_prefix), cassandra_emulator)
    worker = ChangeFeedService(changefeed_tests.make_feed(mode, session, keyspace), sink,
                               CassandraFeedStateStore(session, keyspace), feed_name="events", rules=RULES,
                               time_budget=60, metrics=metrics)
    try:
        with pytest.raises(DependencyUnavailable) as raised:
            worker.run()
        assert raised.value.dependency == "cassandra"  # the save failed after Redis took the page (the setup)
    finally:
        clear_faults(cassandra_emulator.host, cassandra_emulator.port)
    again = worker.run()  # the next tick: the same page again
    assert again.events == 3, again
    ids = [str(e.body.event_id) for e in events]
    counts = {event_id: metrics.counted.count(event_id) for event_id in ids}
    assert counts == dict.fromkeys(ids, 1), f"changes counted by sluice.changefeed.events: {counts}"
