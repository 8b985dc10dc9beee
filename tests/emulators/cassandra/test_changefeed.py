"""Cosmos change feed: COSMOS_CHANGEFEED_START_TIME() with the paging state as the continuation."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from cassandra import InvalidRequest
from cassandra.cluster import Cluster, Session
from cassandra.query import SimpleStatement

from tests.fixtures.cassandra import start_cassandra_emulator

pytestmark = pytest.mark.timeout(60)


def iso(when: dt.datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def feed_page(session: Session, query: str, state: bytes | None, fetch_size: int = 100,
              params: object = None) -> tuple[list[tuple], bytes]:
    result = session.execute(SimpleStatement(query, fetch_size=fetch_size), params, paging_state=state)
    assert result.paging_state is not None, "a change feed page always carries a continuation"
    return [tuple(r) for r in result.current_rows], result.paging_state


def test_feed_returns_latest_versions_in_modification_order_without_deletes(session: Session) -> None:
    session.execute("CREATE TABLE t (p int, c int, v text, PRIMARY KEY (p, c))")
    session.execute("INSERT INTO t (p, c, v) VALUES (0, 0, 'before start')")
    time.sleep(0.02)
    start = dt.datetime.now(dt.UTC)
    time.sleep(0.02)
    for p in range(1, 5):
        session.execute("INSERT INTO t (p, c, v) VALUES (%s, 0, 'v1')", (p,))
    session.execute("UPDATE t SET v = 'v2' WHERE p = 1 AND c = 0")  # moves p=1 to the end, latest version only
    session.execute("DELETE FROM t WHERE p = 3 AND c = 0")  # deletes are not in the feed
    query = f"SELECT p, v FROM t WHERE COSMOS_CHANGEFEED_START_TIME() = '{iso(start)}'"
    page1, state = feed_page(session, query, None, fetch_size=2)
    page2, state = feed_page(session, query, state, fetch_size=2)
    assert page1 + page2 == [(2, "v1"), (4, "v1"), (1, "v2")]
    empty, state2 = feed_page(session, query, state)
    assert empty == []  # nothing changed: an empty page, still with a continuation
    session.execute("INSERT INTO t (p, c, v) VALUES (2, 0, 'v3')")
    session.execute("INSERT INTO t (p, c, v) VALUES (9, 0, 'new')")
    later, _ = feed_page(session, query, state2)
    assert later == [(2, "v3"), (9, "new")]  # only what changed since the continuation
    # the same start time without a continuation starts over
    again, _ = feed_page(session, query, None)
    assert again == [(4, "v1"), (1, "v2"), (2, "v3"), (9, "new")]


def test_feed_restricted_to_a_partition_and_prepared(session: Session) -> None:
    session.execute("CREATE TABLE t (p text, c int, v int, PRIMARY KEY (p, c))")
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    for i in range(6):
        session.execute("INSERT INTO t (p, c, v) VALUES (%s, %s, %s)", ("ab"[i % 2], i, i))
    rows, _ = feed_page(session, f"SELECT c FROM t WHERE COSMOS_CHANGEFEED_START_TIME() = '{iso(start)}' AND p = 'b'",
                        None)
    assert rows == [(1,), (3,), (5,)]
    ps = session.prepare("SELECT c, v FROM t WHERE COSMOS_CHANGEFEED_START_TIME() = ?")
    ps.fetch_size = 4
    first = session.execute(ps, (iso(start),))
    second = session.execute(ps, (iso(start),), paging_state=first.paging_state)
    assert [r.c for r in [*first.current_rows, *second.current_rows]] == list(range(6))
    assert second.paging_state is not None


def test_feed_errors_name_the_problem(session: Session) -> None:
    session.execute("CREATE TABLE t (p int, c int, PRIMARY KEY (p, c))")
    session.execute("CREATE TABLE u (p int PRIMARY KEY)")
    with pytest.raises(InvalidRequest, match="ISO-8601"):
        session.execute("SELECT * FROM t WHERE COSMOS_CHANGEFEED_START_TIME() = 'yesterday'")
    with pytest.raises(InvalidRequest, match="partition key"):
        session.execute("SELECT * FROM t WHERE COSMOS_CHANGEFEED_START_TIME() = '2024-01-01T00:00:00Z' AND c = 1")
    # refused by name rather than ignored (the feed answers pages of the request's page size)
    session.execute("INSERT INTO t (p, c) VALUES (1, 1)")
    session.execute("INSERT INTO t (p, c) VALUES (2, 1)")
    start = "COSMOS_CHANGEFEED_START_TIME() = '2024-01-01T00:00:00Z'"
    for query, named in ((f"SELECT * FROM t WHERE {start} LIMIT 1", "LIMIT is not supported on the change feed"),
                         (f"SELECT * FROM t WHERE {start} PER PARTITION LIMIT 1", "PER PARTITION LIMIT is not"),
                         (f"SELECT * FROM t WHERE {start} AND COSMOS_CHANGEFEED_START_TIME() = '2030-01-01T00:00:00Z'",
                          "More than one COSMOS_CHANGEFEED_START_TIME")):
        with pytest.raises(InvalidRequest, match=named):
            session.execute(SimpleStatement(query, fetch_size=100))
    state = session.execute(SimpleStatement(
        "SELECT * FROM t WHERE COSMOS_CHANGEFEED_START_TIME() = '2024-01-01T00:00:00Z'", fetch_size=5)).paging_state
    with pytest.raises(InvalidRequest, match="does not belong to this table"):
        session.execute(SimpleStatement("SELECT * FROM u WHERE COSMOS_CHANGEFEED_START_TIME() = "
                                        "'2024-01-01T00:00:00Z'", fetch_size=5), paging_state=state)


def test_feed_continuation_survives_a_restart(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    emulator = start_cassandra_emulator("--data-dir", data_dir)
    query = "SELECT k, v FROM ks.t WHERE COSMOS_CHANGEFEED_START_TIME() = '2020-01-01T00:00:00Z'"
    try:
        cluster = Cluster(contact_points=[emulator.host], port=emulator.port, protocol_version=4)
        s = cluster.connect()
        s.execute("CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
        s.execute("CREATE TABLE ks.t (k int PRIMARY KEY, v text)")
        for k in range(3):
            s.execute("INSERT INTO ks.t (k, v) VALUES (%s, 'a')", (k,))
        rows, state = feed_page(s, query, None)
        assert [r[0] for r in rows] == [0, 1, 2]
        cluster.shutdown()
    finally:
        emulator.kill()  # a crash: the journal, not a clean snapshot, must carry the feed
    emulator = start_cassandra_emulator("--data-dir", data_dir)
    try:
        cluster = Cluster(contact_points=[emulator.host], port=emulator.port)
        s = cluster.connect()
        rows, state = feed_page(s, query, state)
        assert rows == []
        s.execute("UPDATE ks.t SET v = 'b' WHERE k = 1")
        rows, state = feed_page(s, query, state)
        assert rows == [(1, "b")]
        cluster.shutdown()
    finally:
        assert emulator.stop() == 0  # a clean stop writes a snapshot
    emulator = start_cassandra_emulator("--data-dir", data_dir)
    try:
        cluster = Cluster(contact_points=[emulator.host], port=emulator.port)
        s = cluster.connect()
        s.execute("INSERT INTO ks.t (k, v) VALUES (7, 'c')")
        rows, _ = feed_page(s, query, state)
        assert rows == [(7, "c")]
        everything, _ = feed_page(s, query, None)
        assert everything == [(0, "a"), (2, "a"), (1, "b"), (7, "c")]
        cluster.shutdown()
    finally:
        emulator.stop()
