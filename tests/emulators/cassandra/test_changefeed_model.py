"""The change feed against a model: drained with continuations between random writes and deletes."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from cassandra.cluster import Session
from cassandra.query import SimpleStatement
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(120)

OP = st.one_of(
    st.tuples(st.just("upsert"), st.integers(0, 5), st.integers(0, 9)),
    st.tuples(st.just("delete"), st.integers(0, 5), st.just(0)),
    st.tuples(st.just("drain"), st.just(0), st.integers(1, 4)),
)
_tables = itertools.count()


def drain(session: Session, query: str, state: bytes | None, fetch: int) -> tuple[list[tuple[int, int]], bytes]:
    """Read pages until an empty one; every page, empty or not, carries the continuation."""
    got: list[tuple[int, int]] = []
    while True:
        result = session.execute(SimpleStatement(query, fetch_size=fetch), paging_state=state)
        assert result.paging_state is not None
        state = result.paging_state
        if not result.current_rows:
            return got, state
        assert len(result.current_rows) <= fetch
        got += [(r.k, r.v) for r in result.current_rows]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OP, min_size=1, max_size=15))
def test_feed_matches_the_model(session: Session, ops: list[tuple[str, int, int]]) -> None:
    table = f"f{next(_tables)}"
    session.execute(f"CREATE TABLE {table} (k int PRIMARY KEY, v int)")
    start = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).isoformat()
    query = f"SELECT k, v FROM {table} WHERE COSMOS_CHANGEFEED_START_TIME() = '{start}'"
    live: dict[int, int] = {}
    changed: list[int] = []  # keys in order of their latest change since the last drain
    state = None
    for kind, key, arg in [*ops, ("drain", 0, 3)]:
        if kind == "upsert":
            session.execute(f"INSERT INTO {table} (k, v) VALUES (%s, %s)", (key, arg))
            live[key] = arg
            changed = [k for k in changed if k != key] + [key]
        elif kind == "delete":
            session.execute(f"DELETE FROM {table} WHERE k = %s", (key,))
            live.pop(key, None)
        else:
            got, state = drain(session, query, state, arg)
            assert got == [(k, live[k]) for k in changed if k in live], ops
            changed = []
