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
