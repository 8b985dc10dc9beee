"""Clustering order, slices, range deletions and paging against a plain Python model of one partition."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from cassandra import InvalidRequest
from cassandra.cluster import Session
from cassandra.query import SimpleStatement, ValueSequence
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(120)

C1 = st.integers(-5, 5)
C2 = st.text(alphabet="aBé\U0001f600z", max_size=3)  # mixed 1- to 4-byte UTF-8, upper and lower case
ROWS = st.dictionaries(st.tuples(C1, C2), st.integers(0, 99), max_size=25)
OPS = st.sampled_from(["<", "<=", ">", ">="])
_partitions = itertools.count()


def model_order(keys: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The table's order: c1 DESC, then c2 ASC by UTF-8 bytes (text compares as bytes in Cassandra)."""
    return sorted(keys, key=lambda k: (-k[0], k[1].encode()))


def holds(value: int, op: str, bound: int) -> bool:
    return {"<": value < bound, "<=": value <= bound, ">": value > bound, ">=": value >= bound}[op]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS, delete_op=OPS, delete_bound=C1, prefix=C1, query_op=OPS, query_bound=C1,
       fetch=st.integers(1, 7), reverse=st.booleans())
def test_partition_behaves_like_the_model(session: Session, rows: dict[tuple[int, str], int], delete_op: str,
                                          delete_bound: int, prefix: int, query_op: str, query_bound: int,
                                          fetch: int, reverse: bool) -> None:
    session.execute("CREATE TABLE IF NOT EXISTS t (p int, c1 int, c2 text, v int, PRIMARY KEY (p, c1, c2)) "
                    "WITH CLUSTERING ORDER BY (c1 DESC, c2 ASC)")
    p = next(_partitions)
    ins = session.prepare("INSERT INTO t (p, c1, c2, v) VALUES (?, ?, ?, ?)")
    for (c1, c2), v in rows.items():
        session.execute(ins, (p, c1, c2, v))
    model = dict(rows)
    session.execute(f"DELETE FROM t WHERE p = %s AND c1 {delete_op} %s", (p, delete_bound))
    model = {k: v for k, v in model.items() if not holds(k[0], delete_op, delete_bound)}
    session.execute("DELETE FROM t WHERE p = %s AND c1 = %s", (p, prefix))
    model = {k: v for k, v in model.items() if k[0] != prefix}

    everything = [(r.c1, r.c2, r.v) for r in session.execute("SELECT c1, c2, v FROM t WHERE p = %s", (p,))]
    assert everything == [(*k, model[k]) for k in model_order(list(model))]

    order = " ORDER BY c1 ASC, c2 DESC" if reverse else ""
    query = SimpleStatement(f"SELECT c1, c2 FROM t WHERE p = %s AND c1 {query_op} %s{order}", fetch_size=fetch)
    got: list[tuple[int, str]] = []
    state = None
    while True:
        result = session.execute(query, (p, query_bound), paging_state=state)
        assert len(result.current_rows) <= fetch
        got += [(r.c1, r.c2) for r in result.current_rows]
        state = result.paging_state
        if state is None:
            break
    expected = [k for k in model_order(list(model)) if holds(k[0], query_op, query_bound)]
    assert got == (expected[::-1] if reverse else expected)
    count = session.execute("SELECT COUNT(*) FROM t WHERE p = %s", (p,)).one()[0]
    assert count == len(model)


TIMES = st.integers(0, 5).map(lambda n: 1_700_000_000_000 + n * 1000)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.sets(st.tuples(st.sampled_from(["d1", "d2", "d3", "d4"]), st.integers(0, 1), TIMES,
                              st.integers(0, 3)), max_size=30),
       fetch=st.integers(1, 9), limit=st.one_of(st.none(), st.integers(1, 12)),
       per_partition=st.one_of(st.none(), st.integers(1, 3)))
def test_table_scan_behaves_like_the_model(session: Session, rows: set[tuple[str, int, int, int]], fetch: int,
                                           limit: int | None, per_partition: int | None) -> None:
    """Sluice's layout: composite partition key, timestamp DESC then int ASC; full scans page across partitions."""
    from cassandra.metadata import Murmur3Token
    table = f"s{next(_partitions)}"
    session.execute(f"CREATE TABLE {table} (device text, day int, at timestamp, seq int, "
                    "PRIMARY KEY ((device, day), at, seq)) WITH CLUSTERING ORDER BY (at DESC, seq ASC)")
    ins = session.prepare(f"INSERT INTO {table} (device, day, at, seq) VALUES (?, ?, ?, ?)")
    routing = {}
    for device, day, at, seq in rows:
        bound = ins.bind((device, day, _ts(at), seq))
        routing[(device, day)] = Murmur3Token.from_key(bound.routing_key).value
        session.execute(bound)
    ordered = sorted(rows, key=lambda r: (routing[(r[0], r[1])], r[0], r[1], -r[2], r[3]))
    expected: list[tuple[str, int, int, int]] = []
    seen: dict[tuple[str, int], int] = {}
    for r in ordered:
        if per_partition is not None and seen.get((r[0], r[1]), 0) >= per_partition:
            continue
        seen[(r[0], r[1])] = seen.get((r[0], r[1]), 0) + 1
        expected.append(r)
    expected = expected[:limit] if limit is not None else expected
    clauses = (f" PER PARTITION LIMIT {per_partition}" if per_partition else "") + (f" LIMIT {limit}" if limit else "")
    query = SimpleStatement(f"SELECT device, day, at, seq FROM {table}{clauses}", fetch_size=fetch)
    got: list[tuple[str, int, int, int]] = []
    state = None
    while True:
        result = session.execute(query, paging_state=state)
        got += [(r.device, r.day, round(r.at.replace(tzinfo=dt.UTC).timestamp() * 1000), r.seq)  # naive UTC
                for r in result.current_rows]
        state = result.paging_state
        if state is None:
            break
    assert got == expected


def _ts(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.sets(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=30),
       parts=st.sets(st.integers(0, 7), min_size=1, max_size=4), cks=st.sets(st.integers(0, 7), min_size=1, max_size=4),
       fetch=st.integers(1, 5), reverse=st.booleans(), token_cut=st.integers(-(2**63), 2**63 - 1))
def test_in_queries_and_token_ranges_behave_like_the_model(session: Session, rows: set[tuple[int, int]],
                                                          parts: set[int], cks: set[int], fetch: int,
                                                          reverse: bool, token_cut: int) -> None:
    from cassandra.metadata import Murmur3Token
    table = f"i{next(_partitions)}"
    session.execute(f"CREATE TABLE {table} (p int, c int, PRIMARY KEY (p, c))")
    ins = session.prepare(f"INSERT INTO {table} (p, c) VALUES (?, ?)")
    tokens = {}
    for p, c in rows:
        bound = ins.bind((p, c))
        tokens[p] = Murmur3Token.from_key(bound.routing_key).value
        session.execute(bound)

    def paged(query: str, params: tuple) -> list[tuple[int, int]]:
        got: list[tuple[int, int]] = []
        state = None
        while True:
            result = session.execute(SimpleStatement(query, fetch_size=fetch), params, paging_state=state)
            got += [(r.p, r.c) for r in result.current_rows]
            state = result.paging_state
            if state is None:
                return got

    query = f"SELECT p, c FROM {table} WHERE p IN %s AND c IN %s"
    params = (ValueSequence(parts), ValueSequence(cks))  # a plain tuple is rendered as a list literal
    wanted = [r for r in rows if r[0] in parts and r[1] in cks]
    if reverse and len(parts) == 1:  # an IN of one value is an = (SingleColumnRelation.newINRestriction): paged
        assert paged(query + " ORDER BY c DESC", params) == sorted(wanted, key=lambda r: -r[1])
    elif reverse:  # ORDER BY with IN on the partition key: the partitions' rows together, and never paged
        with pytest.raises(InvalidRequest, match="Cannot page queries with both ORDER BY and a IN"):
            paged(query + " ORDER BY c DESC", params)
        got = [(r.p, r.c) for r in session.execute(SimpleStatement(query + " ORDER BY c DESC", fetch_size=None),
                                                   params)]
        # sorted after the read, stably: equal c in the order the partitions were read, the key order (below)
        assert got == sorted(wanted, key=lambda r: (-r[1], r[0]))
    else:
        # The partitions of an IN in the key type's order, not token order, and paging resumes in that order
        # (Cassandra 4: MultiCBuilder.build() into a BTreeSet by the partition key's comparator; MultiPartitionPager)
        assert paged(query, params) == sorted(wanted)
    got = paged(f"SELECT p, c FROM {table} WHERE token(p) > %s", (token_cut,))
    expected = sorted((r for r in rows if tokens[r[0]] > token_cut), key=lambda r: (tokens[r[0]], r[0], r[1]))
    assert got == expected


def test_clustering_values_equal_by_their_type_are_one_row(session: Session) -> None:
    """Clustering values the column type's comparator holds equal are one row: Cassandra 4 keeps a partition's rows
    in a BTree ordered by the ClusteringComparator, and DecimalType compares with ``BigDecimal.compareTo``, for which
    1.0 and 1.00 are equal. The row comes back with the value written last. Partition keys are another matter:
    Cassandra tells them apart by their bytes (``DecoratedKey``: the Murmur3 token of the bytes, then the bytes), so
    1.0 and 1.00 are two partitions there."""
    from decimal import Decimal
    session.execute("CREATE TABLE d (p int, c decimal, v int, PRIMARY KEY (p, c))")
    session.execute("INSERT INTO d (p, c, v) VALUES (0, 1.0, 1)")
    session.execute("INSERT INTO d (p, c, v) VALUES (0, 1.00, 2)")
    session.execute("INSERT INTO d (p, c, v) VALUES (0, 2, 3)")
    assert [tuple(r) for r in session.execute("SELECT c, v FROM d WHERE p = 0")] == [(Decimal("1.00"), 2),
                                                                                  (Decimal(2), 3)]
    assert [r.v for r in session.execute("SELECT v FROM d WHERE p = 0 AND c = 1")] == [2]
    assert [r.v for r in session.execute("SELECT v FROM d WHERE p = 0 AND c >= 1.000 AND c < 2")] == [2]
    session.execute("DELETE FROM d WHERE p = 0 AND c = 1.000")
    assert [r.v for r in session.execute("SELECT v FROM d WHERE p = 0")] == [3]
    session.execute("CREATE TABLE dp (p decimal PRIMARY KEY, v int)")
    session.execute("INSERT INTO dp (p, v) VALUES (1.0, 1)")
    session.execute("INSERT INTO dp (p, v) VALUES (1.00, 2)")
    assert sorted(r.v for r in session.execute("SELECT v FROM dp")) == [1, 2]
    assert list(session.execute("SELECT v FROM dp WHERE p = 1")) == []
