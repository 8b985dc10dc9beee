"""Partitions in Murmur3 token order: token(pk) equals the driver's own Murmur3 hash; token-range scans."""

from __future__ import annotations

import itertools

import pytest
from cassandra.cluster import Session
from cassandra.metadata import Murmur3Token

pytestmark = pytest.mark.timeout(60)
MIN_TOKEN = -(2**63)
MAX_TOKEN = 2**63 - 1


def test_token_equals_the_drivers_murmur3(session: Session) -> None:
    session.execute("CREATE TABLE single (k text PRIMARY KEY)")
    session.execute("CREATE TABLE composite (a int, b text, c int, PRIMARY KEY ((a, b), c))")
    ins_single = session.prepare("INSERT INTO single (k) VALUES (?)")
    ins_comp = session.prepare("INSERT INTO composite (a, b, c) VALUES (?, ?, 0)")
    keys = ["", "a", "é", "x" * 15, "y" * 16, "z" * 33, "\x80\xff"]
    for i, k in enumerate(keys):
        session.execute(ins_comp, (i - 3, k))  # an empty component of a composite key is a key
        if not k:
            continue  # a one-column key may not be empty (test_statements)
        bound = ins_single.bind((k,))
        session.execute(bound)
        assert session.execute("SELECT token(k) FROM single WHERE k = %s", (k,)).one()[0] == \
            Murmur3Token.from_key(bound.routing_key).value
    for row in session.execute("SELECT a, b, token(a, b) AS t FROM composite"):
        routing = ins_comp.bind((row.a, row.b)).routing_key
        assert row.t == Murmur3Token.hash_fn(routing)
    # a full scan returns partitions in token order
    tokens = [r[0] for r in session.execute("SELECT token(k) FROM single")]
    assert tokens == sorted(tokens) and len(tokens) == len(keys) - 1


def test_full_scan_by_token_ranges_sees_every_row_once(session: Session) -> None:
    session.execute("CREATE TABLE t (k int PRIMARY KEY, v int)")
    ins = session.prepare("INSERT INTO t (k, v) VALUES (?, ?)")
    for k in range(300):
        session.execute(ins, (k, k))
    # split the ring into 8 ranges the way Spark/DSBulk do: (start, end]
    bounds = [MIN_TOKEN + i * (2**64 // 8) for i in range(8)] + [MAX_TOKEN]
    scan = session.prepare("SELECT k, token(k) FROM t WHERE token(k) > ? AND token(k) <= ?")
    seen: list[int] = []
    for lo, hi in itertools.pairwise(bounds):
        got = list(session.execute(scan, (lo, hi)))
        assert all(lo < r[1] <= hi for r in got)
        seen += [r.k for r in got]
    assert sorted(seen) == list(range(300))
    assert scan.routing_key_indexes is None  # a token range names no partition to route by


def test_token_restriction_on_wrong_columns_is_invalid(session: Session) -> None:
    from cassandra import InvalidRequest
    session.execute("CREATE TABLE t (a int, b int, c int, PRIMARY KEY ((a, b), c))")
    with pytest.raises(InvalidRequest, match="partition key"):
        session.execute("SELECT * FROM t WHERE token(a) > 0")
    with pytest.raises(InvalidRequest, match="partition key"):
        session.execute("SELECT token(b, a) FROM t")
