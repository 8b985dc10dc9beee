"""The change feed's figures and span against the Cassandra emulator and real Redis, through the real SDK.

``sluice.changefeed.events`` / ``.delay`` count each change once although the
portable feed re-reads its overlap window every run, and the run's one
``sluice.changefeed`` span lists the critical events of all its pages.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared import telemetry
from shared.adapters.cassandra.feed import CassandraFeedStateStore, PortableChangeFeed
from shared.services.changefeed import ChangeFeedService
from tests.integration import test_changefeed as changefeed_tests
from tests.integration.test_changefeed import RULES, make_cache, make_event
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
