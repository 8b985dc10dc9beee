"""TTL expiry and ttl(); writetime() and last-write-wins by write timestamp (USING TIMESTAMP)."""

from __future__ import annotations

import time

import pytest
from cassandra import InvalidRequest
from cassandra.cluster import Session
from cassandra.query import UNSET_VALUE, SimpleStatement

pytestmark = pytest.mark.timeout(60)


def test_ttl_expires_cells_and_rows_and_ttl_reports_what_is_left(session: Session) -> None:
    # Bounds are taken from the clock, not assumed: a loaded CI machine can take
    # more than a second over the statements between a write and its read.
    session.execute("CREATE TABLE t (k int PRIMARY KEY, a text, b text)")
    written = time.monotonic()
    session.execute("INSERT INTO t (k, a, b) VALUES (1, 'x', 'y') USING TTL 4")
    session.execute("INSERT INTO t (k, a) VALUES (2, 'keep')")
    session.execute("UPDATE t USING TTL 4 SET b = 'short' WHERE k = 2")
    session.execute("INSERT INTO t (k, a) VALUES (3, 'long') USING TTL 1000")
    r = session.execute("SELECT ttl(a), ttl(b) FROM t WHERE k = 1").one()
    lowest = 4 - (time.monotonic() - written) - 1
    assert r is not None and lowest <= r[0] <= 4 and lowest <= r[1] <= 4
    assert session.execute("SELECT ttl(a) FROM t WHERE k = 2").one()[0] is None
    assert 998 - (time.monotonic() - written) <= session.execute("SELECT ttl(a) FROM t WHERE k = 3").one()[0] <= 1000
    time.sleep(max(0.0, written + 4.2 - time.monotonic()))
    assert session.execute("SELECT * FROM t WHERE k = 1").one() is None  # the whole row expired
    assert tuple(session.execute("SELECT a, b FROM t WHERE k = 2").one()) == ("keep", None)
    left = session.execute("SELECT ttl(a) FROM t WHERE k = 3").one()[0]
    assert 999 - (time.monotonic() - written) <= left <= 996
    assert sorted(r.k for r in session.execute("SELECT k FROM t")) == [2, 3]


def test_default_time_to_live_and_bound_ttl(session: Session) -> None:
    session.execute("CREATE TABLE t (k int PRIMARY KEY, v int) WITH default_time_to_live = 500")
    session.execute("INSERT INTO t (k, v) VALUES (1, 1)")
    ps = session.prepare("INSERT INTO t (k, v) VALUES (?, ?) USING TTL ?")
    assert [c.name for c in ps.column_metadata] == ["k", "v", "[ttl]"]
    session.execute(ps, (2, 2, 50))
    session.execute(ps, (3, 3, 0))  # TTL 0: never expires, even with a table default
    got = {r.k: r[1] for r in session.execute("SELECT k, ttl(v) FROM t")}
    assert 498 <= got[1] <= 500 and 48 <= got[2] <= 50 and got[3] is None
    with pytest.raises(InvalidRequest, match="TTL"):
        session.execute("INSERT INTO t (k, v) VALUES (4, 4) USING TTL -1")


def test_bound_null_and_unset_ttl_timestamp_and_limit_as_cassandra(session: Session) -> None:
    """Attributes.getTimeToLive: an unset TTL is the table's default, a null one 0 (it was the default too);
    a null timestamp or limit is refused (it was the current time, no limit); unset means exactly that."""
    session.execute("CREATE TABLE t (k int, c int, v int, PRIMARY KEY (k, c)) WITH default_time_to_live = 500")
    with_ttl = session.prepare("INSERT INTO t (k, c, v) VALUES (1, ?, 0) USING TTL ?")
    session.execute(with_ttl, (1, None))
    session.execute(with_ttl, (2, UNSET_VALUE))
    got = dict(session.execute("SELECT c, ttl(v) FROM t WHERE k = 1").all())
    assert got[1] is None and 498 <= got[2] <= 500
    with_ts = session.prepare("INSERT INTO t (k, c, v) VALUES (1, ?, 0) USING TIMESTAMP ?")
    with pytest.raises(InvalidRequest, match="Invalid null value of timestamp"):
        session.execute(with_ts, (3, None))
    session.execute(with_ts, (3, UNSET_VALUE))
    assert session.execute("SELECT writetime(v) FROM t WHERE k = 1 AND c = 3").one()[0] > 1_000_000_000_000_000
    for query in ("SELECT c FROM t WHERE k = 1 LIMIT ?", "SELECT c FROM t WHERE k = 1 PER PARTITION LIMIT ?"):
        limited = session.prepare(query)
        with pytest.raises(InvalidRequest, match="Invalid null value of limit"):
            session.execute(limited, (None,))
        assert [r.c for r in session.execute(limited, (UNSET_VALUE,))] == [1, 2, 3]


def test_last_write_wins_by_timestamp(session: Session) -> None:
    session.execute("CREATE TABLE t (k int PRIMARY KEY, v text)")
    session.execute("INSERT INTO t (k, v) VALUES (1, 'new') USING TIMESTAMP 2000")
    session.execute("INSERT INTO t (k, v) VALUES (1, 'old') USING TIMESTAMP 1000")  # older: loses
    session.execute("UPDATE t USING TIMESTAMP 1500 SET v = 'older' WHERE k = 1")
    r = session.execute("SELECT v, writetime(v) FROM t WHERE k = 1").one()
    assert (r.v, r[1]) == ("new", 2000)
    session.execute("DELETE FROM t USING TIMESTAMP 1999 WHERE k = 1")  # older than the write: no effect
    assert session.execute("SELECT v FROM t WHERE k = 1").one().v == "new"
    session.execute("DELETE FROM t USING TIMESTAMP 2001 WHERE k = 1")
    session.execute("INSERT INTO t (k, v) VALUES (1, 'resurrect') USING TIMESTAMP 2001")  # tombstone wins a tie
    assert session.execute("SELECT v FROM t WHERE k = 1").one() is None
    session.execute("INSERT INTO t (k, v) VALUES (1, 'later') USING TIMESTAMP 2002")
    assert session.execute("SELECT v FROM t WHERE k = 1").one().v == "later"


def test_prepared_using_timestamp_and_client_timestamps(session: Session) -> None:
    """Sluice writes device_latest with USING TIMESTAMP ? so a late, older event cannot overwrite a newer one."""
    session.execute("CREATE TABLE t (k text PRIMARY KEY, v int)")
    ps = session.prepare("INSERT INTO t (k, v) VALUES (?, ?) USING TIMESTAMP ?")
    assert [c.name for c in ps.column_metadata] == ["k", "v", "[timestamp]"]
    for v, ts in ((3, 3_000), (1, 1_000), (2, 2_000)):
        session.execute(ps, ("d", v, ts))
    assert tuple(session.execute("SELECT v, writetime(v) FROM t WHERE k = 'd'").one()) == (3, 3_000)
    # without USING TIMESTAMP the driver's client-side timestamp (microseconds) is the write time
    before = int(time.time() * 1_000_000)
    session.execute(SimpleStatement("INSERT INTO t (k, v) VALUES ('e', 1)"))
    wt = session.execute("SELECT writetime(v) FROM t WHERE k = 'e'").one()[0]
    assert before - 5_000_000 <= wt <= int(time.time() * 1_000_000) + 5_000_000
    with pytest.raises(InvalidRequest, match="PRIMARY KEY"):
        session.execute("SELECT writetime(k) FROM t")
