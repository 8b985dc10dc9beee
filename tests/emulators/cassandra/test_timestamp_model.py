"""Last-write-wins with explicit timestamps, cell and row tombstones, against a model of Cassandra's rules."""

from __future__ import annotations

import itertools

import pytest
from cassandra.cluster import Session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(120)

OP = st.tuples(st.sampled_from(["insert", "update", "delete_row", "delete_cell"]), st.integers(1, 6),
               st.sampled_from(["a", "b", "c"]), st.sampled_from(["v", "w"]))
_keys = itertools.count()


class Model:
    """One row: the liveness marker, the row tombstone and each cell as (value or None for a tombstone, ts)."""

    def __init__(self) -> None:
        self.marker: int | None = None
        self.deleted: int | None = None
        self.cells: dict[str, tuple[str | None, int]] = {}

    def write(self, column: str, value: str | None, ts: int) -> None:
        old = self.cells.get(column)
        if old is not None:
            if ts < old[1]:
                return
            if ts == old[1] and (old[0] is None or (value is not None and value <= old[0])):
                return  # on a tie a tombstone wins, then the greater value
        self.cells[column] = (value, ts)

    def visible(self) -> dict[str, str] | None:
        dead = self.deleted if self.deleted is not None else -1
        cells = {c: v for c, (v, ts) in self.cells.items() if v is not None and ts > dead}
        if (self.marker is not None and self.marker > dead) or cells:
            return cells
        return None


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OP, min_size=1, max_size=12))
def test_row_matches_the_model(session: Session, ops: list[tuple[str, int, str, str]]) -> None:
    session.execute("CREATE TABLE IF NOT EXISTS t (k int PRIMARY KEY, v text, w text)")
    k = next(_keys)
    model = Model()
    for kind, ts, value, column in ops:
        if kind == "insert":
            session.execute(f"INSERT INTO t (k, {column}) VALUES (%s, %s) USING TIMESTAMP {ts}", (k, value))
            model.marker = max(model.marker or 0, ts)
            model.write(column, value, ts)
        elif kind == "update":
            session.execute(f"UPDATE t USING TIMESTAMP {ts} SET {column} = %s WHERE k = %s", (value, k))
            model.write(column, value, ts)
        elif kind == "delete_row":
            session.execute(f"DELETE FROM t USING TIMESTAMP {ts} WHERE k = %s", (k,))
            model.deleted = max(model.deleted or 0, ts)
        else:
            session.execute(f"DELETE {column} FROM t USING TIMESTAMP {ts} WHERE k = %s", (k,))
            model.write(column, None, ts)
    row = session.execute("SELECT v, w FROM t WHERE k = %s", (k,)).one()
    expected = model.visible()
    if expected is None:
        assert row is None, ops
    else:
        assert row is not None, ops
        assert (row.v, row.w) == (expected.get("v"), expected.get("w")), ops
