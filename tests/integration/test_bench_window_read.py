"""``bench window_read``: both sides read the same events from the emulator, or the ratio means nothing.

The benchmark itself compares the event ids each side read (untimed) and the counts of every
round; here a short run (a window of a few pages per partition) must print one line per round
and the ratio, and the baseline must hand over the same events as the reader, page by page.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from bench import window_read
from shared.adapters.cassandra.event_store import CassandraEventStore
from shared.adapters.cassandra.migrations import apply_migrations
from shared.adapters.cassandra.session import connect
from shared.adapters.cassandra.window_reader import CassandraWindowReader
from shared.settings import CassandraSettings


@pytest.mark.timeout(120)
def test_the_baseline_hands_over_the_readers_events(cassandra_emulator) -> None:
    settings = CassandraSettings(hosts=[cassandra_emulator.host], port=cassandra_emulator.port,
                                 keyspace=f"wr_{uuid.uuid4().hex[:8]}", consistency="ONE", shards=2)
    session = connect(settings)
    try:
        apply_migrations(session, settings)
        start = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
        end = start + timedelta(seconds=120)
        window_read.populate(CassandraEventStore(session, settings), start, 120, 900, 50)
        ours = [page for page in CassandraWindowReader(session, settings, page_size=100).read_each(start, end)]
        driver = list(window_read.driver_pages(session, settings, start, end, 100))
        assert max(len(p) for p in driver) == 100 and len(driver) > 4  # paged, not read whole
        assert sorted(e.event_id for p in driver for e in p) == sorted(e.event_id for p in ours for e in p)
        assert len({e.event_id for p in ours for e in p}) == 900
    finally:
        session.cluster.shutdown()


@pytest.mark.timeout(180)
def test_a_short_run_prints_each_round_and_the_ratio(capsys) -> None:
    assert window_read.main(["--events", "2000", "--page-size", "200", "--rounds", "2", "--work-ms", "1"]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"^round \d: ours [\d.]+ s .*, driver [\d.]+ s", out, re.M)) == 2, out
    assert re.search(r"^ratio \d+\.\d\d$", out, re.M), out
