"""Requests to Cassandra freed as soon as they are done: ``query.execute_all`` and the event store's writes.

A request the garbage collector has to find (a reference cycle through its timer or its
callbacks) keeps its statement and every row's values alive until a collection, and a
collection freeing many of them at once pauses the whole worker (the lookups included).
"""

from __future__ import annotations

import collections
import gc
from datetime import UTC, datetime, timedelta

import pytest
from cassandra.query import SimpleStatement

from shared.adapters.cassandra.query import execute_all
from tests.integration import test_changefeed as cf

session, keyspace, store = cf.session, cf.keyspace, cf.store
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.mark.timeout(60)
def test_execute_all_answers_each_statement_in_order_with_its_own_error(session, keyspace) -> None:
    insert = session.prepare(f"INSERT INTO {keyspace}.sluice_meta (key, value) VALUES (?, ?)")
    read = session.prepare(f"SELECT value FROM {keyspace}.sluice_meta WHERE key = ?")
    work = [(insert, (f"k{i}", f"v{i}")) for i in range(7)]
    work.insert(3, (SimpleStatement(f"SELECT nothing FROM {keyspace}.no_such_table"), ()))

    results = execute_all(session, work, concurrency=2)

    assert [ok for ok, _ in results] == [True, True, True, False, True, True, True, True]
    assert "no_such_table" in str(results[3][1])
    assert [row.value for ok, rows in execute_all(session, [(read, (f"k{i}",)) for i in range(7)], concurrency=3)
            for row in rows] == [f"v{i}" for i in range(7)]
    assert execute_all(session, [], concurrency=4) == []


@pytest.mark.timeout(60)
def test_the_event_stores_writes_leave_no_request_for_the_garbage_collector(store) -> None:
    events = [cf.make_event(f"w-{i % 7}", NOW - timedelta(seconds=i), severity="critical" if i % 5 == 0 else "info")
              for i in range(200)]
    store.write(events[:10])  # prepared, connected
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        store.write(events[10:])  # 190 events: about 30 batches
        gc.collect()
        garbage = collections.Counter(type(o).__qualname__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    # a request the collector has to find leaves its timer and its batch there; the driver's own background
    # requests (control connection, heartbeats) may overlap: one or two
    assert garbage["BatchStatement"] == 0 and garbage["Timer"] <= 2, garbage
