"""Collection updates (append, prepend, remove, element set and delete) against a Python model."""

from __future__ import annotations

import itertools

import pytest
from cassandra import InvalidRequest
from cassandra.cluster import Session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(120)

SMALL = st.integers(-3, 3)
OP = st.one_of(
    st.tuples(st.just("l_append"), st.lists(SMALL, max_size=3)),
    st.tuples(st.just("l_prepend"), st.lists(SMALL, max_size=3)),
    st.tuples(st.just("l_remove"), st.lists(SMALL, max_size=2)),
    st.tuples(st.just("l_set_index"), st.tuples(st.integers(0, 3), SMALL)),
    st.tuples(st.just("l_delete_index"), st.integers(0, 3)),
    st.tuples(st.just("l_assign"), st.lists(SMALL, max_size=3)),
    st.tuples(st.just("s_add"), st.sets(SMALL, max_size=3)),
    st.tuples(st.just("s_remove"), st.sets(SMALL, max_size=3)),
    st.tuples(st.just("m_put"), st.dictionaries(st.sampled_from("abcd"), SMALL, max_size=2)),
    st.tuples(st.just("m_remove"), st.sets(st.sampled_from("abcd"), max_size=2)),
    st.tuples(st.just("m_element"), st.tuples(st.sampled_from("abcd"), SMALL)),
    st.tuples(st.just("m_delete_element"), st.sampled_from("abcd")),
)
_keys = itertools.count()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OP, min_size=1, max_size=10))
def test_collections_match_the_model(session: Session, ops: list[tuple[str, object]]) -> None:
    session.execute("CREATE TABLE IF NOT EXISTS t (k int PRIMARY KEY, l list<int>, s set<int>, m map<text, int>)")
    k = next(_keys)
    session.execute("INSERT INTO t (k) VALUES (%s)", (k,))
    lst: list[int] = []
    sset: set[int] = set()
    mp: dict[str, int] = {}
    for kind, arg in ops:
        if kind == "l_append":
            session.execute("UPDATE t SET l = l + %s WHERE k = %s", (arg, k))
            lst = lst + list(arg)  # type: ignore[arg-type]
        elif kind == "l_prepend":
            session.execute("UPDATE t SET l = %s + l WHERE k = %s", (arg, k))
            lst = list(arg) + lst  # type: ignore[arg-type]
        elif kind == "l_remove":
            session.execute("UPDATE t SET l = l - %s WHERE k = %s", (arg, k))
            lst = [x for x in lst if x not in arg]  # type: ignore[operator]
        elif kind == "l_set_index":
            index, value = arg  # type: ignore[misc]
            if index < len(lst):
                session.execute("UPDATE t SET l[%s] = %s WHERE k = %s", (index, value, k))
                lst[index] = value
            else:  # as Cassandra 4 (Lists.SetterByIndex): an empty list is null
                message = "index" if lst else "Attempted to set an element on a list which is null"
                with pytest.raises(InvalidRequest, match=message):
                    session.execute("UPDATE t SET l[%s] = %s WHERE k = %s", (index, value, k))
        elif kind == "l_delete_index":
            if arg < len(lst):  # type: ignore[operator]
                session.execute("DELETE l[%s] FROM t WHERE k = %s", (arg, k))
                del lst[arg]  # type: ignore[call-overload]
            else:  # as Cassandra 4 (Lists.DiscarderByIndex)
                message = "out of bound" if lst else "Attempted to delete an element from a list which is null"
                with pytest.raises(InvalidRequest, match=message):
                    session.execute("DELETE l[%s] FROM t WHERE k = %s", (arg, k))
        elif kind == "l_assign":
            session.execute("UPDATE t SET l = %s WHERE k = %s", (arg, k))
            lst = list(arg)  # type: ignore[arg-type]
        elif kind == "s_add":
            session.execute("UPDATE t SET s = s + %s WHERE k = %s", (arg, k))
            sset |= arg  # type: ignore[operator]
        elif kind == "s_remove":
            session.execute("UPDATE t SET s = s - %s WHERE k = %s", (arg, k))
            sset -= arg  # type: ignore[operator]
        elif kind == "m_put":
            session.execute("UPDATE t SET m = m + %s WHERE k = %s", (arg, k))
            mp.update(arg)  # type: ignore[arg-type]
        elif kind == "m_remove":
            session.execute("UPDATE t SET m = m - %s WHERE k = %s", (arg, k))
            mp = {key: v for key, v in mp.items() if key not in arg}  # type: ignore[operator]
        elif kind == "m_element":
            key, value = arg  # type: ignore[misc]
            session.execute("UPDATE t SET m[%s] = %s WHERE k = %s", (key, value, k))
            mp[key] = value
        else:
            session.execute("DELETE m[%s] FROM t WHERE k = %s", (arg, k))
            mp.pop(arg, None)  # type: ignore[call-overload]
    row = session.execute("SELECT l, s, m FROM t WHERE k = %s", (k,)).one()
    assert (row.l or []) == lst, ops
    assert set(row.s or ()) == sset and list(row.s or ()) == sorted(sset), ops
    assert dict(row.m or {}) == mp and list((row.m or {}).keys()) == sorted(mp), ops


# Cassandra writes a whole collection as a tombstone at ts - 1 plus a cell per element at ts, and an element
# operation as a cell at its own ts. An overwrite arriving after a newer element operation, with an older timestamp,
# removes the elements older than it and keeps the newer ones: {'a': 1} @1000, m['b'] = 2 @3000, {'c': 3} @2000 is
# {'b': 2, 'c': 3} there. The emulator keeps a collection as one cell, without its elements' timestamps, so it
# refuses that overwrite rather than answer with the stored collection.
@pytest.mark.parametrize(("column", "first", "element_op", "overwrite"), [
    ("m map<text, int>", "{'a': 1}", "m['b'] = 2", "m = {'c': 3}"),
    ("m map<text, int>", "{'a': 1}", "m = m + {'b': 2}", "m = {'a': 9}"),
    ("m map<text, int>", "{'a': 1}", "m = m - {'a'}", "m = {'x': 5}"),
    ("s set<int>", "{1}", "s = s + {2}", "s = {3}"),
    ("l list<int>", "[1]", "l = l + [2]", "l = [3]"),
])
def test_an_overwrite_not_after_an_element_operation_is_refused(session: Session, column: str, first: str,
                                                                element_op: str, overwrite: str) -> None:
    name = column.split()[0]
    session.execute(f"CREATE TABLE t (k int PRIMARY KEY, {column})")
    session.execute(f"INSERT INTO t (k, {name}) VALUES (1, {first}) USING TIMESTAMP 1000")
    session.execute(f"UPDATE t USING TIMESTAMP 3000 SET {element_op} WHERE k = 1")
    before = session.execute(f"SELECT {name} FROM t WHERE k = 1").one()
    for ts in (2000, 3000):
        with pytest.raises(InvalidRequest, match=f"{name} .*last written at 3000 by an element operation"):
            session.execute(f"UPDATE t USING TIMESTAMP {ts} SET {overwrite} WHERE k = 1")
        with pytest.raises(InvalidRequest, match="by an element operation"):
            session.execute(f"INSERT INTO t (k, {overwrite.replace(' =', ',', 1).split(',')[0]}) "
                            f"VALUES (1, {overwrite.split('= ', 1)[1]}) USING TIMESTAMP {ts}")
    assert session.execute(f"SELECT {name} FROM t WHERE k = 1").one() == before
    # a later overwrite replaces it, as in Cassandra; after it, an older one is shadowed whole again
    session.execute(f"UPDATE t USING TIMESTAMP 4000 SET {overwrite} WHERE k = 1")
    after = session.execute(f"SELECT {name} FROM t WHERE k = 1").one()
    session.execute(f"UPDATE t USING TIMESTAMP 3500 SET {name} = {first} WHERE k = 1")
    assert session.execute(f"SELECT {name} FROM t WHERE k = 1").one() == after


def test_an_older_overwrite_of_a_collection_written_whole_changes_nothing(session: Session) -> None:
    """{'a': 1} @3000 written whole has its tombstone at 2999, which shadows every element of an overwrite @2000."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, m map<text, int>)")
    session.execute("INSERT INTO t (k, m) VALUES (1, {'a': 1}) USING TIMESTAMP 3000")
    session.execute("INSERT INTO t (k, m) VALUES (1, {'c': 3}) USING TIMESTAMP 2000")
    assert session.execute("SELECT m FROM t WHERE k = 1").one().m == {"a": 1}


def test_an_element_operation_not_after_one_that_emptied_the_collection_is_refused(session: Session) -> None:
    """s = s - {1} @3000 removes only the element 1 in Cassandra, so s = s + {2} @2000 still adds 2: {2}. The
    emulator's emptied collection is one tombstone @3000, which would shadow 2; it refuses the addition instead."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, s set<int>)")
    session.execute("INSERT INTO t (k, s) VALUES (1, {1}) USING TIMESTAMP 1000")
    session.execute("UPDATE t USING TIMESTAMP 3000 SET s = s - {1} WHERE k = 1")
    with pytest.raises(InvalidRequest, match=r"s .*one cell written at 3000"):
        session.execute("UPDATE t USING TIMESTAMP 2000 SET s = s + {2} WHERE k = 1")
    assert session.execute("SELECT s FROM t WHERE k = 1").one().s is None


# Cassandra keys a map's entries and a set's elements (its cell paths) by the element type's comparator, not by
# their bytes: decimal 1.0 and 1.00 are one key. Was: element operations compared bytes, so m[1.0] = 9 added a
# second key next to 1.00, and m - {1.0}, DELETE m[1.0] and s - {1.0} left 1.00 in place.
def _decimal_table(session: Session) -> None:
    session.execute("CREATE TABLE t (k int PRIMARY KEY, s set<decimal>, m map<decimal, int>)")


def _map_items(session: Session, k: int) -> list[tuple[str, int]]:
    row = session.execute("SELECT m FROM t WHERE k = %s", (k,)).one()
    return [] if row.m is None else [(str(key), value) for key, value in row.m.items()]


def test_map_element_set_with_equal_decimal_key_replaces_the_entry(session: Session) -> None:
    """One cell path: the newer cell wins whole, its key bytes (1.0) with it, and the map stays in key order."""
    _decimal_table(session)
    session.execute("INSERT INTO t (k, m) VALUES (1, {2: 2, 1.00: 1})")
    session.execute("UPDATE t SET m[1.0] = 9 WHERE k = 1")
    assert _map_items(session, 1) == [("1.0", 9), ("2", 2)]


def test_map_append_with_equal_decimal_key_replaces_the_entry(session: Session) -> None:
    _decimal_table(session)
    session.execute("INSERT INTO t (k, m) VALUES (2, {1.00: 1})")
    session.execute("UPDATE t SET m = m + {1.0: 7, 0.5: 5} WHERE k = 2")
    assert _map_items(session, 2) == [("0.5", 5), ("1.0", 7)]


def test_map_key_removal_with_equal_decimal_key_removes_it(session: Session) -> None:
    _decimal_table(session)
    session.execute("INSERT INTO t (k, m) VALUES (3, {1.00: 1, 2: 2})")
    session.execute("UPDATE t SET m = m - {1.0} WHERE k = 3")
    assert _map_items(session, 3) == [("2", 2)]


def test_delete_map_element_with_equal_decimal_key_removes_it(session: Session) -> None:
    _decimal_table(session)
    session.execute("INSERT INTO t (k, m) VALUES (4, {1.00: 1, 2: 2})")
    session.execute("DELETE m[1.0] FROM t WHERE k = 4")
    assert _map_items(session, 4) == [("2", 2)]


def test_set_add_and_removal_with_equal_decimal_element(session: Session) -> None:
    """s + {1.0} keeps one element, the newer one's bytes; s - {1.0} removes 1.00."""
    _decimal_table(session)
    session.execute("INSERT INTO t (k, s) VALUES (5, {1.00, 2})")
    session.execute("UPDATE t SET s = s + {1.0, 0.5} WHERE k = 5")
    assert [str(e) for e in session.execute("SELECT s FROM t WHERE k = 5").one().s] == ["0.5", "1.0", "2"]
    session.execute("UPDATE t SET s = s - {1.000} WHERE k = 5")
    assert [str(e) for e in session.execute("SELECT s FROM t WHERE k = 5").one().s] == ["0.5", "2"]


def test_append_prepend_or_remove_on_a_frozen_collection_is_refused_as_frozen(session: Session) -> None:
    """Cassandra: "Invalid operation (fl = fl + [2]) for frozen collection column fl". Was: the frozen list was
    called a "non-collection column" and counters were named, as if Cassandra would run it; a scalar keeps that
    hint, since its only ``+`` in Cassandra is a counter's."""
    session.execute("CREATE TABLE fz (k int PRIMARY KEY, fl frozen<list<int>>, fs frozen<set<int>>, v int)")
    for update, op in (("fl = fl + [2]", r"fl = fl \+ \.\.\."), ("fl = [2] + fl", r"fl = \.\.\. \+ fl"),
                       ("fs = fs - {2}", r"fs = fs - \.\.\.")):
        with pytest.raises(InvalidRequest, match=rf"Invalid operation \({op}\) for frozen collection column") as info:
            session.execute(f"UPDATE fz SET {update} WHERE k = 1")
        assert "non-collection" not in str(info.value) and "counter" not in str(info.value)
    with pytest.raises(InvalidRequest, match=r"non-collection column v .*counters are not supported"):
        session.execute("UPDATE fz SET v = v + 1 WHERE k = 1")
