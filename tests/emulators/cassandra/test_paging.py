"""Paging with fetch_size and paging_state, plain and prepared, resumed from another connection."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cassandra.cluster import Cluster, Session
from cassandra.query import SimpleStatement

from sluice.launcher import Running

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def other(cassandra_emulator: Running, cassandra_keyspace: str) -> Iterator[Session]:
    """A second, independent driver connection (protocol v4 pinned) to the same keyspace."""
    c = Cluster(contact_points=[cassandra_emulator.host], port=cassandra_emulator.port, protocol_version=4)
    s = c.connect(cassandra_keyspace)
    yield s
    c.shutdown()


@pytest.fixture
def filled(session: Session) -> Session:
    """50 rows: 5 partitions of 10 clustering rows."""
    session.execute("CREATE TABLE t (p int, c int, v text, PRIMARY KEY (p, c))")
    ins = session.prepare("INSERT INTO t (p, c, v) VALUES (?, ?, ?)")
    for p in range(5):
        for c in range(10):
            session.execute(ins, (p, c, f"{p}-{c}"))
    return session


def _pages(first: Session, resume: Session, statement: object, params: object = None) -> list[list[tuple]]:
    """Fetch page by page, alternating the connection that asks for the next page."""
    pages: list[list[tuple]] = []
    state = None
    sessions = [first, resume]
    while True:
        result = sessions[len(pages) % 2].execute(statement, params, paging_state=state)
        pages.append([tuple(r) for r in result.current_rows])
        state = result.paging_state
        if state is None:
            return pages


def test_plain_statement_pages_resume_on_another_connection(filled: Session, other: Session) -> None:
    everything = [tuple(r) for r in filled.execute(SimpleStatement("SELECT p, c FROM t", fetch_size=5000))]
    assert len(everything) == 50
    pages = _pages(filled, other, SimpleStatement("SELECT p, c FROM t", fetch_size=7))
    assert [len(p) for p in pages] == [7] * 7 + [1]
    assert [row for page in pages for row in page] == everything


def test_prepared_statement_pages_resume_on_another_connection(filled: Session, other: Session) -> None:
    query = "SELECT c, v FROM t WHERE p = ?"
    first, second = filled.prepare(query), other.prepare(query)
    first.fetch_size = second.fetch_size = 3
    r1 = filled.execute(first, (2,))
    r2 = other.execute(second, (2,), paging_state=r1.paging_state)
    r3 = filled.execute(first, (2,), paging_state=r2.paging_state)
    assert [r.c for r in [*r1.current_rows, *r2.current_rows, *r3.current_rows]] == list(range(9))
    # auto-paging (iterating the ResultSet) returns every row once
    assert [r.c for r in filled.execute(first, (2,))] == list(range(10))


def test_paging_honours_limit_order_in_and_token_ranges(filled: Session, other: Session) -> None:
    pages = _pages(filled, other, SimpleStatement("SELECT c FROM t WHERE p = 1 ORDER BY c DESC LIMIT 8", fetch_size=3))
    assert [r[0] for page in pages for r in page] == [9, 8, 7, 6, 5, 4, 3, 2]
    # an IN's partitions in key order (token order is 1, 0, 3), resumed across connections
    pages = _pages(filled, other, SimpleStatement("SELECT p, c FROM t WHERE p IN (3, 0, 1) AND c < 4", fetch_size=3))
    got = [r for page in pages for r in page]
    assert got == [(p, c) for p in (0, 1, 3) for c in range(4)]
    lo = filled.execute("SELECT token(p) FROM t WHERE p = 4").one()[0]
    query = SimpleStatement("SELECT p FROM t WHERE token(p) >= %s", fetch_size=4)
    pages = _pages(filled, other, query, (lo,))
    tokens = {r[0] for r in filled.execute("SELECT token(p) FROM t")}
    assert len([r for page in pages for r in page]) == 10 * sum(1 for t in tokens if t >= lo)


def test_rows_deleted_between_pages_are_skipped(filled: Session, other: Session) -> None:
    first = filled.execute(SimpleStatement("SELECT c FROM t WHERE p = 0", fetch_size=4))
    other.execute("DELETE FROM t WHERE p = 0 AND c IN (4, 5)")
    rest = other.execute(SimpleStatement("SELECT c FROM t WHERE p = 0", fetch_size=100),
                         paging_state=first.paging_state)
    assert [r.c for r in rest.current_rows] == [6, 7, 8, 9]


def test_paging_state_of_another_table_is_refused(filled: Session) -> None:
    from cassandra import InvalidRequest
    filled.execute("CREATE TABLE u (p int, c int, PRIMARY KEY (p, c))")
    state = filled.execute(SimpleStatement("SELECT * FROM t", fetch_size=2)).paging_state
    with pytest.raises(InvalidRequest, match="paging state"):
        filled.execute(SimpleStatement("SELECT * FROM u", fetch_size=2), paging_state=state)
    with pytest.raises(InvalidRequest, match="paging state"):
        filled.execute(SimpleStatement("SELECT * FROM t", fetch_size=2), paging_state=b"garbage")


def test_order_by_with_an_in_of_one_literal_value_is_paged_like_an_equality(filled: Session, other: Session) -> None:
    """An IN of one literal value is an = in Cassandra 4 (SingleColumnRelation.newINRestriction: "An IN
    restrictions with only one element is the same than an EQ restriction"), so ``p IN (1) ORDER BY c DESC`` needs
    no ordering after the read and is paged like ``p = 1``. An IN of several values, or ``IN ?`` whatever it is
    bound to (an InRestrictionWithMarker), still orders the rows after the read and is refused when paged."""
    from cassandra import InvalidRequest
    pages = _pages(filled, other, SimpleStatement("SELECT c FROM t WHERE p IN (1) ORDER BY c DESC", fetch_size=4))
    assert [len(p) for p in pages] == [4, 4, 2]
    assert [r[0] for page in pages for r in page] == list(range(9, -1, -1))
    for statement, params in [(SimpleStatement("SELECT c FROM t WHERE p IN (1, 2) ORDER BY c DESC", fetch_size=4),
                               None),
                              (filled.prepare("SELECT c FROM t WHERE p IN ? ORDER BY c DESC"), ([1],))]:
        with pytest.raises(InvalidRequest, match="Cannot page queries with both ORDER BY and a IN restriction"):
            filled.execute(statement, params)
