"""Each statement kind through the real driver, with default Cluster() and protocol_version=4 pinned."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest
from cassandra import InvalidRequest
from cassandra.cluster import Cluster, Session
from cassandra.protocol import ConfigurationException, SyntaxException
from cassandra.query import UNSET_VALUE, BatchStatement, BatchType, SimpleStatement

from sluice.launcher import Running

pytestmark = pytest.mark.timeout(60)


def rows(session: Session, query: str, params: object = None) -> list[tuple]:
    return [tuple(r) for r in session.execute(query, params)]


def test_keyspace_ddl_if_exists_and_use(session: Session) -> None:
    name = f"k_{uuid.uuid4().hex[:10]}"
    session.execute(f"CREATE KEYSPACE {name} WITH replication = {{'class': 'NetworkTopologyStrategy', 'dc1': 3}}")
    with pytest.raises(Exception, match="already exists"):
        session.execute(f"CREATE KEYSPACE {name} WITH replication = {{'class': 'SimpleStrategy', "
                        "'replication_factor': 1}")
    session.execute(f"CREATE KEYSPACE IF NOT EXISTS {name} WITH replication = {{'class': 'SimpleStrategy', "
                    "'replication_factor': 1}")
    row = session.execute("SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", (name,)).one()
    assert row.replication == {"class": "org.apache.cassandra.locator.NetworkTopologyStrategy", "dc1": "3"}
    session.execute(f"USE {name}")
    session.execute("CREATE TABLE t (k int PRIMARY KEY)")
    assert session.keyspace == name
    session.execute(f"DROP KEYSPACE {name}")
    session.execute(f"DROP KEYSPACE IF EXISTS {name}")
    with pytest.raises(InvalidRequest, match="non existing keyspace"):
        session.execute(f"DROP KEYSPACE {name}")
    with pytest.raises(InvalidRequest, match=f"Keyspace '{name}' does not exist"):
        session.execute(f"USE {name}")


def test_table_ddl_with_cosmos_and_cassandra_options(session: Session, cassandra_keyspace: str) -> None:
    session.execute("CREATE TABLE t (k int PRIMARY KEY, v text) WITH cosmosdb_provisioned_throughput = 400 "
                    "AND default_time_to_live = 0 AND comment = 'x'")
    session.execute("CREATE TABLE IF NOT EXISTS t (k int PRIMARY KEY, other int)")
    with pytest.raises(Exception, match="already exists"):
        session.execute("CREATE TABLE t (k int PRIMARY KEY)")
    with pytest.raises(Exception, match="Unknown property 'no_such_option'"):
        session.execute("CREATE TABLE u (k int PRIMARY KEY) WITH no_such_option = 1")
    session.execute("INSERT INTO t (k, v) VALUES (1, 'a')")
    session.execute("TRUNCATE t")
    assert rows(session, "SELECT * FROM t") == []
    session.execute("ALTER TABLE t ADD extra bigint")
    # as Cassandra, which checks each name against the table being built: one name twice is refused, nothing added
    with pytest.raises(InvalidRequest, match="Column with name 'x' already exists"):
        session.execute("ALTER TABLE t ADD (x int, x text)")
    with pytest.raises(InvalidRequest, match="Undefined column name x"):
        session.execute("SELECT x FROM t")
    session.execute("INSERT INTO t (k, v, extra) VALUES (2, 'b', 7)")
    assert rows(session, "SELECT k, v, extra FROM t") == [(2, "b", 7)]
    session.execute(f"DROP TABLE {cassandra_keyspace}.t")
    session.execute("DROP TABLE IF EXISTS t")
    with pytest.raises(InvalidRequest, match="unconfigured table t"):
        session.execute("SELECT * FROM t")


def test_insert_is_an_upsert_and_update_creates_rows(session: Session) -> None:
    session.execute("CREATE TABLE t (k int PRIMARY KEY, a text, b int)")
    session.execute("INSERT INTO t (k, a, b) VALUES (1, 'x', 1)")
    session.execute("INSERT INTO t (k, a) VALUES (1, 'y')")  # b untouched
    session.execute("UPDATE t SET b = 5 WHERE k = 2")
    assert sorted(rows(session, "SELECT k, a, b FROM t")) == [(1, "y", 1), (2, None, 5)]
    # an INSERT keeps the row alive with every column null; an UPDATE-only row vanishes when its cells do
    session.execute("INSERT INTO t (k) VALUES (3)")
    session.execute("DELETE b FROM t WHERE k = 2")
    assert sorted(rows(session, "SELECT k FROM t")) == [(1,), (3,)]


def test_collection_updates(session: Session) -> None:
    session.execute("CREATE TABLE t (k int PRIMARY KEY, m map<text, int>, s set<int>, l list<text>)")
    session.execute("UPDATE t SET m['a'] = 1, s = s + {3, 1}, l = l + ['x'] WHERE k = 1")
    session.execute("UPDATE t SET m = m + {'b': 2}, s = s + {2}, l = ['w'] + l WHERE k = 1")
    session.execute("UPDATE t SET l = l + %s, m[%s] = %s WHERE k = 1", (["y"], "c", 3))
    row = session.execute("SELECT m, s, l FROM t WHERE k = 1").one()
    assert dict(row.m) == {"a": 1, "b": 2, "c": 3}
    assert list(row.s) == [1, 2, 3]
    assert row.l == ["w", "x", "y"]
    session.execute("UPDATE t SET s = s - {2}, m = m - {'a'}, l = l - ['x'] WHERE k = 1")
    session.execute("DELETE m['b'] FROM t WHERE k = 1")
    row = session.execute("SELECT m, s, l FROM t WHERE k = 1").one()
    assert dict(row.m) == {"c": 3} and list(row.s) == [1, 3] and row.l == ["w", "y"]
    session.execute("UPDATE t SET l[0] = 'first' WHERE k = 1")
    assert session.execute("SELECT l FROM t WHERE k = 1").one().l == ["first", "y"]


def test_deleting_a_null_collection_element_is_invalid_an_unset_list_index_leaves_it_alone(session: Session) -> None:
    """As Cassandra; a null or unset list index was an internal error (Server error), a null map key ignored."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, l list<text>, m map<text, int>, s set<int>)")
    session.execute("INSERT INTO t (k, l, m, s) VALUES (1, ['a', 'b'], {'x': 1}, {5})")
    for query, message in (
        ("DELETE l[null] FROM t WHERE k = 1", "Invalid null value for list index"),
        ("DELETE m[null] FROM t WHERE k = 1", "Invalid null map key"),
        ("DELETE s[null] FROM t WHERE k = 1", "Invalid null set element"),
    ):
        with pytest.raises(InvalidRequest, match=message):
            session.execute(query)
    session.execute(session.prepare("DELETE l[?] FROM t WHERE k = 1"), (UNSET_VALUE,))
    session.execute(session.prepare("DELETE s[?] FROM t WHERE k = 1"), (UNSET_VALUE,))
    row = session.execute("SELECT l, m, s FROM t WHERE k = 1").one()
    assert row.l == ["a", "b"] and dict(row.m) == {"x": 1} and set(row.s) == {5}
    session.execute(session.prepare("DELETE l[?] FROM t WHERE k = 1"), (0,))
    assert session.execute("SELECT l FROM t WHERE k = 1").one().l == ["b"]


def test_deleting_a_map_element_by_an_unset_key_is_refused(session: Session) -> None:
    """``DELETE m[?]`` bound with an unset key is refused with "Invalid unset map key", as Cassandra 4 refuses it
    (Maps.DiscarderByKey; CollectionsTest.testMapWithUnsetValues), and nothing of the statement is written: the
    emulator took it as a successful delete of nothing, so a forgotten key binding went unnoticed. An unset list
    index stays a no-op (Lists.DiscarderByIndex), as in the test above."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, m map<text, int>, n int)")
    session.execute("INSERT INTO t (k, m, n) VALUES (1, {'a': 1}, 1)")
    delete = session.prepare("DELETE n, m[?] FROM t WHERE k = ?")
    with pytest.raises(InvalidRequest, match="Invalid unset map key"):
        session.execute(delete, (UNSET_VALUE, 1))
    row = session.execute("SELECT m, n FROM t WHERE k = 1").one()
    assert dict(row.m) == {"a": 1} and row.n == 1


def test_deleting_a_set_element_by_an_unset_value_removes_only_the_empty_element(session: Session) -> None:
    """Cassandra 4's Sets.ElementDiscarder does not check for an unset element: it writes a tombstone for the element
    whose bytes are the unset marker's, which are empty, so ``DELETE s[?]`` bound unset removes the set's empty
    element ('' of a set<text>) if it has one and leaves every other element; the emulator ignored it."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, s set<text>)")
    session.execute("INSERT INTO t (k, s) VALUES (1, {'', 'a'})")
    session.execute("INSERT INTO t (k, s) VALUES (2, {'a'})")
    delete = session.prepare("DELETE s[?] FROM t WHERE k = ?")
    session.execute(delete, (UNSET_VALUE, 1))
    session.execute(delete, (UNSET_VALUE, 2))
    assert rows(session, "SELECT k, s FROM t WHERE k IN (1, 2)") == [(1, {"a"}), (2, {"a"})]


def test_contains_on_a_map_whose_keys_are_collections(session: Session) -> None:
    """The map deserializes to (key, value) pairs, not a dict; CONTAINS (KEY) was an internal error on it."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, m map<frozen<list<int>>, text>)")
    insert = session.prepare("INSERT INTO t (k, m) VALUES (?, ?)")
    session.execute(insert, (1, {(1, 2): "a"}))
    session.execute(insert, (2, {(3,): "b"}))
    assert rows(session, "SELECT k FROM t WHERE m CONTAINS KEY [1, 2] ALLOW FILTERING") == [(1,)]
    assert rows(session, "SELECT k FROM t WHERE m CONTAINS 'b' ALLOW FILTERING") == [(2,)]
    assert rows(session, "SELECT k FROM t WHERE m CONTAINS KEY [2, 1] ALLOW FILTERING") == []


def test_a_prepared_element_deletion_names_and_types_its_marker_as_cassandra(session: Session) -> None:
    """DELETE c[?]: a list's idx(c) int, a set's value(c) element, a map's key(c). A set's could not be prepared."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, l list<text>, m map<text, int>, s set<int>, "
                    "f frozen<set<int>>, v int)")
    session.execute("INSERT INTO t (k, l, m, s, f) VALUES (1, ['a', 'b'], {'x': 1, 'y': 2}, {5, 6}, {7})")
    for column, name, cql_type in (("l", "idx(l)", "int"), ("s", "value(s)", "int"), ("m", "key(m)", "varchar")):
        prepared = session.prepare(f"DELETE {column}[?] FROM t WHERE k = ?")
        marker = prepared.column_metadata[0]
        assert (marker.name, marker.type.typename) == (name, cql_type)
    session.execute(session.prepare("DELETE s[?] FROM t WHERE k = ?"), (5, 1))
    session.execute(session.prepare("DELETE m[?] FROM t WHERE k = ?"), ("x", 1))
    row = session.execute("SELECT m, s FROM t WHERE k = 1").one()
    assert dict(row.m) == {"y": 2} and set(row.s) == {6}
    for query, message in (("DELETE f[7] FROM t WHERE k = 1", "frozen collection column f"),
                           ("DELETE v[1] FROM t WHERE k = 1", "non collection column v")):
        with pytest.raises(InvalidRequest, match=message):
            session.execute(query)


def test_a_column_written_twice_in_one_statement_is_refused_as_cassandra(session: Session) -> None:
    """Both were accepted, the last value winning silently; and of compatible operations on one column, such as
    two appends or two map entries, only the last one applied."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, v text, l list<int>, m map<text, int>)")
    with pytest.raises(InvalidRequest, match="Multiple definitions found for column v"):
        session.execute("INSERT INTO t (k, v, v) VALUES (1, 'a', 'b')")
    for assignments in ("v = 'a', v = 'b'", "l = [1], l = l + [2]"):
        with pytest.raises(SyntaxException, match="Multiple incompatible setting of column"):
            session.execute(f"UPDATE t SET {assignments} WHERE k = 1")
    # Compatible operations on one column all apply (only the last one did).
    session.execute("UPDATE t SET l = l + [1], l = l + [2] WHERE k = 1")
    assert session.execute("SELECT l FROM t WHERE k = 1").one().l == [1, 2]
    session.execute("UPDATE t SET l[0] = 10, l[1] = 20 WHERE k = 1")
    session.execute("UPDATE t SET l = [0] + l, l = [-1] + l WHERE k = 1")
    assert session.execute("SELECT l FROM t WHERE k = 1").one().l == [-1, 0, 10, 20]
    session.execute("UPDATE t SET m['a'] = 1, m['b'] = 2 WHERE k = 1")
    assert dict(session.execute("SELECT m FROM t WHERE k = 1").one().m) == {"a": 1, "b": 2}
    # Cassandra applies each operation to the row as it was before the statement; where applying them one after
    # the other would differ, the emulator refuses rather than answer otherwise.
    for assignments in ("l = [5] + l, l[0] = 6", "l = l + [7], l = l - [7]", "m['a'] = 3, m['a'] = 4",
                        "m = m + {'c': 1}, m = m + {'c': 2}"):
        with pytest.raises(InvalidRequest, match="cannot combine these operations"):
            session.execute(f"UPDATE t SET {assignments} WHERE k = 1")
    assert session.execute("SELECT l FROM t WHERE k = 1").one().l == [-1, 0, 10, 20]


def test_map_literals_whose_keys_are_collections(session: Session) -> None:
    """A list or map as a map literal's key was an internal error (the parser put it in a Python dict)."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, m map<frozen<list<int>>, text>, "
                    "n map<frozen<map<int, int>>, int>)")
    session.execute("INSERT INTO t (k, m, n) VALUES (1, {[1, 2]: 'a', [0]: 'b', [1, 2]: 'c'}, {{1: 2}: 3})")
    row = session.execute("SELECT m, n FROM t WHERE k = 1").one()
    assert list(row.m.items()) == [([0], "b"), ([1, 2], "c")]  # sorted by key; of a repeated key, the last
    assert [(dict(k), v) for k, v in row.n.items()] == [({1: 2}, 3)]


def test_table_options_of_the_wrong_type_are_refused(session: Session) -> None:
    """A boolean is not an integer to Cassandra: `default_time_to_live = true` was a TTL of one second."""
    for option, message in (("default_time_to_live = true", "boolean literal true \\(an integer is expected"),
                            ("gc_grace_seconds = 1.5", "float literal 1.5 \\(an integer is expected"),
                            ("crc_check_chance = 'x'", "string literal 'x' \\(a number is expected"),
                            ("bloom_filter_fp_chance = false", "boolean literal false \\(a number is expected")):
        with pytest.raises(ConfigurationException, match=message):
            session.execute(f"CREATE TABLE t (k int PRIMARY KEY) WITH {option}")
    session.execute("CREATE TABLE t (k int PRIMARY KEY) WITH default_time_to_live = 60 AND crc_check_chance = 1")
    assert rows(session, "SELECT default_time_to_live, crc_check_chance FROM system_schema.tables "
                         "WHERE keyspace_name = %s AND table_name = 't'", (session.keyspace,)) == [(60, 1.0)]


def test_table_options_are_checked_as_cassandras_table_params(session: Session) -> None:
    """TableParams.validate's bounds, with its messages: ``default_time_to_live`` above the maximum TTL made a table
    every write to which was refused ("ttl is too large")."""
    for option, message in (
        ("default_time_to_live = 630720001", "default_time_to_live must be less than or equal to 630720000 "
                                             "\\(got 630720001\\)"),
        ("default_time_to_live = -1", "default_time_to_live must be greater than or equal to 0 \\(got -1\\)"),
        ("gc_grace_seconds = -1", "gc_grace_seconds must be greater than or equal to 0"),
        ("memtable_flush_period_in_ms = -1", "memtable_flush_period_in_ms must be greater than or equal to 0"),
        ("min_index_interval = 0", "min_index_interval must be greater than or equal to 1"),
        ("max_index_interval = 100", "max_index_interval must be greater than or equal to min_index_interval "
                                     "\\(128\\) \\(got 100\\)"),
        ("crc_check_chance = 1.5", "crc_check_chance must be larger than or equal to 0 and smaller than or equal"),
        ("bloom_filter_fp_chance = 0", "bloom_filter_fp_chance must be larger than 6.71E-5"),
        ("speculative_retry = 'often'", "Invalid value often for option 'speculative_retry'"),
        ("speculative_retry = '101PERCENTILE'", "must be between 0.0 and 100.0"),
    ):
        with pytest.raises(ConfigurationException, match=message):
            session.execute(f"CREATE TABLE t (k int PRIMARY KEY) WITH {option}")
    session.execute("CREATE TABLE t (k int PRIMARY KEY) WITH default_time_to_live = 630720000 "
                    "AND speculative_retry = '10ms'")


@pytest.mark.parametrize("option", ["default_time_to_live = 99999999999", "gc_grace_seconds = 99999999999",
                                    "memtable_flush_period_in_ms = -99999999999", "min_index_interval = 2147483648"])
def test_an_integer_table_option_out_of_a_java_int_is_a_syntax_error(session: Session, option: str) -> None:
    """As Cassandra's PropertyDefinitions.toInt. It was kept, and then system_schema.tables could not encode it in its
    int column: every read of it failed, so every new connection of the driver (which reads it) did."""
    with pytest.raises(SyntaxException, match=r"Invalid integer value -?(99999999999|2147483648) for '"):
        session.execute(f"CREATE TABLE t (k int PRIMARY KEY, v int) WITH {option}")


def test_a_string_table_option_keeps_the_literals_text_and_new_connections_still_work(
        session: Session, cassandra_emulator: Running, cassandra_keyspace: str) -> None:
    """Cassandra keeps ``comment = 5`` as the text '5'; it was kept as the int 5, which system_schema.tables' text
    column could not encode: every new ``Cluster.connect()`` to the emulator then failed (NoHostAvailable)."""
    try:
        session.execute("CREATE TABLE t (k int PRIMARY KEY, v int) WITH comment = 5")
        session.execute("CREATE TABLE u (k int PRIMARY KEY, v int) WITH comment = true AND speculative_retry = 'NONE'")
        with pytest.raises(SyntaxException, match=r"Invalid value for property 'comment'\. It should be a string"):
            session.execute("CREATE TABLE w (k int PRIMARY KEY) WITH comment = {'a': 'b'}")
        assert rows(session, "SELECT table_name, comment, speculative_retry FROM system_schema.tables "
                             "WHERE keyspace_name = %s", (cassandra_keyspace,)) == [("t", "5", "99PERCENTILE"),
                                                                                     ("u", "true", "NONE")]
        fresh = Cluster(contact_points=[cassandra_emulator.host], port=cassandra_emulator.port, protocol_version=4)
        try:
            assert fresh.connect(cassandra_keyspace).execute("SELECT * FROM t").one() is None
        finally:
            fresh.shutdown()
    finally:
        session.execute("DROP TABLE IF EXISTS t")  # the shared emulator's schema tables must stay readable
        session.execute("DROP TABLE IF EXISTS u")


def test_deletes_partition_row_range_and_columns(session: Session) -> None:
    session.execute("CREATE TABLE t (p text, b int, c1 int, c2 text, v int, PRIMARY KEY ((p, b), c1, c2))")
    for c1 in range(5):
        for c2 in ("a", "b"):
            session.execute("INSERT INTO t (p, b, c1, c2, v) VALUES ('x', 1, %s, %s, %s)", (c1, c2, c1))
            session.execute("INSERT INTO t (p, b, c1, c2, v) VALUES ('y', 1, %s, %s, %s)", (c1, c2, c1))
    session.execute("DELETE FROM t WHERE p = 'x' AND b = 1 AND c1 = 0 AND c2 = 'a'")  # one row
    session.execute("DELETE FROM t WHERE p = 'x' AND b = 1 AND c1 = 1")  # a clustering prefix
    session.execute("DELETE FROM t WHERE p = 'x' AND b = 1 AND c1 >= 3")  # a clustering range
    session.execute("DELETE v FROM t WHERE p = 'x' AND b = 1 AND c1 = 2 AND c2 = 'b'")  # one cell
    assert rows(session, "SELECT c1, c2, v FROM t WHERE p = 'x' AND b = 1") == [
        (0, "b", 0), (2, "a", 2), (2, "b", None)]
    session.execute("DELETE FROM t WHERE p = 'y' AND b = 1")  # the partition
    assert rows(session, "SELECT * FROM t WHERE p = 'y' AND b = 1") == []
    # a range tombstone also shadows a later write with an older timestamp
    session.execute("INSERT INTO t (p, b, c1, c2, v) VALUES ('x', 1, 4, 'z', 9) USING TIMESTAMP 1")
    assert rows(session, "SELECT c1 FROM t WHERE p = 'x' AND b = 1 AND c1 = 4") == []
    with pytest.raises(InvalidRequest, match="prefix of the clustering columns"):
        session.execute("DELETE FROM t WHERE p = 'x' AND b = 1 AND c2 = 'a'")


def test_select_restrictions_order_limit(session: Session) -> None:
    session.execute("CREATE TABLE t (p int, c int, d text, v int, PRIMARY KEY (p, c, d)) "
                    "WITH CLUSTERING ORDER BY (c DESC, d ASC)")
    for p in range(3):
        for c in range(4):
            session.execute("INSERT INTO t (p, c, d, v) VALUES (%s, %s, 'a', %s)", (p, c, p * 10 + c))
    assert [r[0] for r in rows(session, "SELECT c FROM t WHERE p = 1")] == [3, 2, 1, 0]
    assert [r[0] for r in rows(session, "SELECT c FROM t WHERE p = 1 ORDER BY c ASC")] == [0, 1, 2, 3]
    assert [r[0] for r in rows(session, "SELECT c FROM t WHERE p = 1 AND c > 0 AND c <= 2")] == [2, 1]
    assert [r[0] for r in rows(session, "SELECT c FROM t WHERE p = 1 AND c < 2")] == [1, 0]
    assert [r[0] for r in rows(session, "SELECT c FROM t WHERE p = 1 AND c >= 2")] == [3, 2]
    assert rows(session, "SELECT v FROM t WHERE p = 2 AND c = 1 AND d = 'a'") == [(21,)]
    assert sorted(rows(session, "SELECT p, c FROM t WHERE p IN (0, 2) AND c = 3")) == [(0, 3), (2, 3)]
    assert [r[0] for r in rows(session, "SELECT c FROM t WHERE p = 1 LIMIT 2")] == [3, 2]
    assert len(rows(session, "SELECT * FROM t PER PARTITION LIMIT 1")) == 3
    assert rows(session, "SELECT COUNT(*) FROM t WHERE p = 1") == [(4,)]
    assert session.execute("SELECT count(*) AS n FROM t").one().n == 12
    # As Cassandra: LIMIT and PER PARTITION LIMIT bound the one result row, not the rows counted
    assert rows(session, "SELECT COUNT(*) FROM t LIMIT 5") == [(12,)]
    assert rows(session, "SELECT COUNT(*) FROM t WHERE p = 1 LIMIT 2") == [(4,)]
    assert rows(session, "SELECT COUNT(*) FROM t PER PARTITION LIMIT 1") == [(12,)]
    assert session.execute("SELECT v AS value FROM t WHERE p = 0 AND c = 0").one().value == 0


def test_order_by_over_several_partitions_orders_them_together_and_only_unpaged(session: Session) -> None:
    """As Cassandra: the rows of every partition of the IN in one order, after PER PARTITION LIMIT and before
    LIMIT; refused when the query would be paged (the driver pages by default), since that order needs every row.
    Before, each partition came in order but one after the other: a silent wrong answer.
    """
    session.execute("CREATE TABLE t (p int, c int, v int, PRIMARY KEY (p, c)) WITH CLUSTERING ORDER BY (c DESC)")
    for p in range(3):
        for c in range(4):
            session.execute("INSERT INTO t (p, c, v) VALUES (%s, %s, %s)", (p, c * 2 + p % 2, p))

    def unpaged(query: str) -> list[tuple]:
        return [tuple(r) for r in session.execute(SimpleStatement(query, fetch_size=None))]

    # partition 0 holds c = 0 2 4 6, partition 1 c = 1 3 5 7
    assert unpaged("SELECT p, c FROM t WHERE p IN (0, 1) ORDER BY c ASC") == [
        (0, 0), (1, 1), (0, 2), (1, 3), (0, 4), (1, 5), (0, 6), (1, 7)]
    assert unpaged("SELECT c FROM t WHERE p IN (1, 0) ORDER BY c DESC LIMIT 3") == [(7,), (6,), (5,)]
    assert unpaged("SELECT c FROM t WHERE p IN (0, 1) ORDER BY c DESC PER PARTITION LIMIT 2") == [
        (7,), (6,), (5,), (4,)]
    assert unpaged("SELECT c FROM t WHERE p IN (0, 1) AND c > 2 AND c < 6 ORDER BY c ASC") == [(3,), (4,), (5,)]
    assert [r[0] for r in session.execute("SELECT c FROM t WHERE p = 1 ORDER BY c ASC")] == [1, 3, 5, 7]
    # Paged (the driver's default page is 5,000 rows): refused whatever the LIMIT, even one within a page, as
    # Cassandra (SelectStatement.getDataLimits leaves the row limit of a post-ordered query unset, so it is paged)
    for query in ["SELECT c FROM t WHERE p IN (0, 1) ORDER BY c ASC",
                  "SELECT c FROM t WHERE p IN (1, 1) ORDER BY c ASC",  # two values, if equal: an IN
                  "SELECT c FROM t WHERE p IN (0, 1) ORDER BY c ASC LIMIT 3",
                  SimpleStatement("SELECT c FROM t WHERE p IN (0, 1) ORDER BY c DESC LIMIT 2", fetch_size=100)]:
        with pytest.raises(InvalidRequest, match="Cannot page queries with both ORDER BY and a IN restriction"):
            session.execute(query)


def test_after_an_in_on_clustering_the_next_column_is_restricted_without_filtering(session: Session) -> None:
    session.execute("CREATE TABLE t (k int, a int, b int, c int, PRIMARY KEY (k, a, b, c))")
    for a in range(3):
        for b in range(3):
            session.execute("INSERT INTO t (k, a, b, c) VALUES (1, %s, %s, %s)", (a, b, a + b))
    assert rows(session, "SELECT a, b FROM t WHERE k = 1 AND a IN (2, 1) AND b > 0") == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert rows(session, "SELECT a, b FROM t WHERE k = 1 AND a IN (0, 2) AND b IN (2, 0)") == [
        (0, 0), (0, 2), (2, 0), (2, 2)]
    assert rows(session, "SELECT a, b FROM t WHERE k = 1 AND a IN (0, 2) AND b = 1 AND c = 3") == [(2, 1)]
    for gap in ["SELECT a FROM t WHERE k = 1 AND a IN (0, 2) AND c = 2",  # b is not restricted
                "SELECT a FROM t WHERE k = 1 AND a IN (0, 2) AND b > 0 AND c = 2"]:  # after a slice
        with pytest.raises(InvalidRequest, match="ALLOW FILTERING"):
            session.execute(gap)
    assert rows(session, "SELECT a, b FROM t WHERE k = 1 AND a IN (0, 2) AND c = 2 ALLOW FILTERING") == [
        (0, 2), (2, 0)]


def test_two_bounds_on_one_side_are_refused_not_one_of_them_dropped(session: Session) -> None:
    session.execute("CREATE TABLE t (p int, c int, PRIMARY KEY (p, c))")
    for c in range(5):
        session.execute("INSERT INTO t (p, c) VALUES (1, %s)", (c,))
    assert rows(session, "SELECT c FROM t WHERE p = 1 AND c > 1 AND c <= 3") == [(2,), (3,)]
    for query, side in [("SELECT c FROM t WHERE p = 1 AND c > 3 AND c > 1", "start"),
                        ("SELECT c FROM t WHERE p = 1 AND c < 1 AND c <= 3", "end"),
                        ("SELECT p FROM t WHERE token(p) > 0 AND token(p) >= -5", "start")]:
        with pytest.raises(InvalidRequest, match=f"More than one restriction was found for the {side} bound on"):
            session.execute(query)


def test_filtering_needs_allow_filtering(session: Session) -> None:
    session.execute("CREATE TABLE t (p int, c int, v int, PRIMARY KEY (p, c))")
    for i in range(6):
        session.execute("INSERT INTO t (p, c, v) VALUES (%s, %s, %s)", (i % 2, i, i % 3))
    for query in ("SELECT * FROM t WHERE v = 1", "SELECT * FROM t WHERE c = 1"):
        with pytest.raises(InvalidRequest, match="ALLOW FILTERING"):
            session.execute(query)
    assert sorted(rows(session, "SELECT c FROM t WHERE v = 1 ALLOW FILTERING")) == [(1,), (4,)]
    assert sorted(rows(session, "SELECT c FROM t WHERE c > 3 ALLOW FILTERING")) == [(4,), (5,)]
    with pytest.raises(InvalidRequest, match="Only EQ and IN relation are supported on the partition key"):
        session.execute("SELECT * FROM t WHERE p > 0")


def test_bind_markers_positional_named_in_and_unset(session: Session) -> None:
    session.execute("CREATE TABLE t (p text, c int, v text, w int, PRIMARY KEY (p, c))")
    ins = session.prepare("INSERT INTO t (p, c, v, w) VALUES (:p, :c, :v, :w)")
    assert [c.name for c in ins.column_metadata] == ["p", "c", "v", "w"]
    assert ins.routing_key_indexes == [0]
    session.execute(ins, {"p": "a", "c": 1, "v": "one", "w": 10})
    session.execute(ins, ("a", 2, "two", 20))
    session.execute(ins, ("a", 1, UNSET_VALUE, 11))  # unset leaves v alone
    session.execute(ins, ("a", 2, None, UNSET_VALUE))  # null deletes v
    assert rows(session, "SELECT c, v, w FROM t WHERE p = 'a'") == [(1, "one", 11), (2, None, 20)]
    sel = session.prepare("SELECT c FROM t WHERE p = ? AND c IN ? LIMIT ?")
    assert [m.name for m in sel.column_metadata] == ["p", "in(c)", "[limit]"]
    assert [r.c for r in session.execute(sel, ("a", [1, 2, 3], 1))] == [1]
    assert session.execute("SELECT v FROM t WHERE p = %(p)s AND c = %(c)s", {"p": "a", "c": 1}).one().v == "one"


def test_prepared_metadata_for_composite_keys(session: Session) -> None:
    session.execute("CREATE TABLE t (a int, b text, c timestamp, v blob, PRIMARY KEY ((a, b), c))")
    ps = session.prepare("INSERT INTO t (v, c, b, a) VALUES (?, ?, ?, ?)")
    assert ps.routing_key_indexes == [3, 2]
    assert [c.type.typename for c in ps.column_metadata] == ["blob", "timestamp", "varchar", "int"]
    sel = session.prepare("SELECT v, c FROM t WHERE b = ? AND a = ?")
    assert sel.routing_key_indexes == [1, 0]
    assert [c[2] for c in sel.result_metadata] == ["v", "c"]  # (keyspace, table, name, type)


def test_alter_table_add_gives_prepared_statements_the_new_result_metadata(session: Session) -> None:
    """ALTER TABLE ADD evicts the table's prepared statements, as Cassandra does: re-preparing `SELECT *` gives the
    new column list, and a statement the driver still holds answers UNPREPARED on its next EXECUTE, so the driver
    re-prepares it and decodes the row with the new metadata instead of the stale one."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, b int, d int)")
    session.execute("INSERT INTO t (k, b, d) VALUES (1, 2, 4)")
    query = "SELECT * FROM t WHERE k = ?"
    held = session.prepare(query)
    assert [m[2] for m in held.result_metadata] == ["k", "b", "d"]
    session.execute("ALTER TABLE t ADD c text")
    session.execute("UPDATE t SET c = 'x' WHERE k = 1")
    assert tuple(session.execute(held, (1,)).one()) == (1, 2, "x", 4)
    assert [m[2] for m in session.prepare(query).result_metadata] == ["k", "b", "c", "d"]


def test_a_prepared_statement_runs_in_the_keyspace_it_was_prepared_in(session: Session,
                                                                      cassandra_keyspace: str) -> None:
    """A statement id is MD5(keyspace + query), so it names one table on every connection: as in Cassandra, an
    unqualified table is resolved at PREPARE. Executed from a session of another keyspace (two Sessions of one
    Cluster, one per keyspace), alone or as a BATCH child, it reads and writes the table it was prepared against,
    instead of being evicted for every session and failing the driver's re-prepare."""
    other = f"ks_{uuid.uuid4().hex[:12]}"
    session.execute(f"CREATE KEYSPACE {other} WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}")
    for ks in (cassandra_keyspace, other):
        session.execute(f"CREATE TABLE {ks}.t (k int PRIMARY KEY, v text)")
        session.execute(f"INSERT INTO {ks}.t (k, v) VALUES (1, %s)", (ks,))
    select = session.prepare("SELECT v FROM t WHERE k = 1")
    insert = session.prepare("INSERT INTO t (k, v) VALUES (?, ?)")
    elsewhere = session.cluster.connect(other)
    try:
        assert [r.v for r in elsewhere.execute(select)] == [cassandra_keyspace]
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        batch.add(insert, (2, "batched"))
        elsewhere.execute(batch)
        assert rows(session, "SELECT k, v FROM t WHERE k = 2") == [(2, "batched")]
        assert rows(elsewhere, "SELECT k FROM t WHERE k = 2") == []
        assert [r.v for r in session.execute(select)] == [cassandra_keyspace]  # not evicted for the first session
    finally:
        elsewhere.shutdown()


REFUSED = [
    ("CREATE INDEX ON t (v)", InvalidRequest, "CREATE INDEX"),
    ("CREATE MATERIALIZED VIEW mv AS SELECT * FROM t WHERE k IS NOT NULL PRIMARY KEY (k)", InvalidRequest,
     "CREATE MATERIALIZED"),
    ("CREATE TYPE ut (a int)", InvalidRequest, "CREATE TYPE"),
    ("CREATE FUNCTION f (a int) RETURNS NULL ON NULL INPUT RETURNS int LANGUAGE java AS 'return a;'",
     InvalidRequest, "CREATE FUNCTION"),
    ("SELECT JSON * FROM t", InvalidRequest, "SELECT JSON"),
    ("INSERT INTO t JSON '{\"k\": 1}'", InvalidRequest, "INSERT JSON"),
    ("SELECT max(v) FROM t", InvalidRequest, "max()"),
    ("SELECT k FROM t GROUP BY k", InvalidRequest, "GROUP BY"),
    ("SELECT * FROM t WHERE v LIKE 'a%' ALLOW FILTERING", InvalidRequest, "LIKE"),
    ("ALTER TABLE t DROP v", InvalidRequest, "ALTER TABLE"),
    ("GRANT SELECT ON t TO bob", InvalidRequest, "GRANT"),
    ("BEGIN COUNTER BATCH UPDATE t SET v = 'a' WHERE k = 1 APPLY BATCH", InvalidRequest, "counter"),
    ("CREATE TABLE s (k int PRIMARY KEY, n counter)", InvalidRequest, "counter"),
    ("CREATE TABLE s (k int PRIMARY KEY, v int) WITH COMPACT STORAGE", InvalidRequest, "COMPACT STORAGE"),
    ("SELECT CAST(k AS text) FROM t", InvalidRequest, "CAST"),
    ("SELECT * FROM t WHERE v != 'a' ALLOW FILTERING", InvalidRequest, "!="),
    ("SELECT * FROM t WHERE (k, v) > (1, 'a')", InvalidRequest, "multi-column"),
    ("DESCRIBE TABLES", InvalidRequest, "DESCRIBE"),
    ("CREATE TABLE s (k int PRIMARY KEY, s int static)", InvalidRequest, "static"),
    ("CREATE AGGREGATE a (int) SFUNC f STYPE int", InvalidRequest, "CREATE AGGREGATE"),
    ("SELEKT * FROM t", SyntaxError, "SELEKT"),
    ("SELECT * FROM t WHERE", SyntaxError, "end of statement"),
]


def test_unsupported_cql_is_refused_by_name(session: Session) -> None:
    """One session for every case: the refusal, not the connection, is under test."""
    from cassandra.protocol import SyntaxException
    session.execute("CREATE TABLE IF NOT EXISTS t (k int PRIMARY KEY, v text)")
    for query, error, named in REFUSED:
        expected = SyntaxException if error is SyntaxError else error
        with pytest.raises(expected) as info:
            session.execute(SimpleStatement(query))
        assert named.lower() in str(info.value).lower(), (query, str(info.value))
    assert [tuple(r) for r in session.execute("SELECT * FROM t")] == []  # nothing was half-applied


def test_select_distinct_is_refused_as_cosmos_db_does_not_support_it(session: Session) -> None:
    session.execute("CREATE TABLE t (a int, b int, c int, v int, PRIMARY KEY ((a, b), c))")
    session.execute("INSERT INTO t (a, b, c, v) VALUES (0, 0, 0, 0)")
    for query in ("SELECT DISTINCT a, b FROM t", "SELECT DISTINCT token(a, b) FROM t", "SELECT DISTINCT * FROM t"):
        with pytest.raises(InvalidRequest, match="SELECT DISTINCT is not supported: Azure Cosmos DB"):
            session.execute(query)
    assert rows(session, "SELECT a, b FROM t") == [(0, 0)]


def test_in_on_the_partition_key_returns_partitions_in_key_order(session: Session) -> None:
    """``k IN (...)`` returns its partitions in the partition key type's order, each value once, so ``LIMIT n``
    keeps the n smallest keys. Cassandra 4 builds the keys with ``MultiCBuilder.build()`` into a ``BTreeSet``
    ordered by the partition key's comparator (``PartitionKeySingleRestrictionSet.values``) and reads one
    ``SinglePartitionReadCommand`` per key in that order (``SinglePartitionReadCommand.Group``, paged by
    ``MultiPartitionPager``). Token order (5, 10, 1, 2, 4, 7, 3 for these keys) is for scans without an IN."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, v int)")
    keys = [5, 3, 1, 2, 4, 10, 7]
    for k in keys:
        session.execute("INSERT INTO t (k, v) VALUES (%s, %s)", (k, k))
    got = [r[0] for r in rows(session, "SELECT k FROM t WHERE k IN (5, 3, 1, 2, 4, 10, 7, 3)")]
    assert got == sorted(keys)
    assert [r[0] for r in rows(session, "SELECT k FROM t WHERE k IN (5, 3, 1, 2, 4, 10, 7) LIMIT 2")] == [1, 2]
    paged = session.execute(SimpleStatement("SELECT k FROM t WHERE k IN (10, 7, 5, 4, 3, 2, 1)", fetch_size=2))
    assert [r[0] for r in paged] == sorted(keys)  # the paging state resumes in the same order


def test_in_on_a_composite_partition_key_returns_partitions_in_key_order(session: Session) -> None:
    """With a composite partition key, the cartesian product of the IN values comes back ordered component by
    component, each by its type (int, then text here): Cassandra 4's ``MultiCBuilder`` collects it in a set ordered
    by the partition key's ClusteringComparator."""
    session.execute("CREATE TABLE t (a int, b text, v int, PRIMARY KEY ((a, b)))")
    for a in (3, 1, 2):
        for b in ("y", "x"):
            session.execute("INSERT INTO t (a, b, v) VALUES (%s, %s, 0)", (a, b))
    got = rows(session, "SELECT a, b FROM t WHERE a IN (3, 1, 2) AND b IN ('y', 'x')")
    assert got == [(1, "x"), (1, "y"), (2, "x"), (2, "y"), (3, "x"), (3, "y")]


def test_contains_key_on_a_list_or_set_is_refused(session: Session) -> None:
    """``CONTAINS KEY`` applies to maps only (CQL reference, SELECT, WHERE clause); on a list or a set the statement
    is Invalid with Cassandra 4's message, "Cannot use CONTAINS KEY on non-map column l"
    (``SingleColumnRelation.newContainsRestriction``). ``CONTAINS`` on them still filters."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, l list<int>, s set<int>)")
    session.execute("INSERT INTO t (k, l, s) VALUES (1, [9], {9})")
    for column in ("l", "s"):
        with pytest.raises(InvalidRequest, match=f"Cannot use CONTAINS KEY on non-map column {column}"):
            session.execute(f"SELECT k FROM t WHERE {column} CONTAINS KEY 9 ALLOW FILTERING")
        assert rows(session, f"SELECT k FROM t WHERE {column} CONTAINS 9 ALLOW FILTERING") == [(1,)]


def test_an_empty_or_oversized_partition_key_is_refused_as_cassandra_refuses_it(session: Session) -> None:
    """Cassandra refuses every partition key a write or a SELECT names that is empty or longer than 65535 bytes
    serialized (QueryProcessor.validateKey); an empty component of a composite key is a key. Was: a row stored under
    the empty key, a 70,000-byte key stored, and a Server error for an oversized composite component."""
    session.execute("CREATE TABLE e (k text, c text, v int, PRIMARY KEY (k, c))")
    session.execute("CREATE TABLE e2 (a text, b int, v int, PRIMARY KEY ((a, b)))")
    big = "z" * 70000
    for query, params, message in [
        ("INSERT INTO e (k, c, v) VALUES ('', 'x', 1)", None, "Key may not be empty"),
        ("UPDATE e SET v = 1 WHERE k IN ('a', '') AND c = 'x'", None, "Key may not be empty"),
        ("SELECT * FROM e WHERE k = ''", None, "Key may not be empty"),
        ("BEGIN UNLOGGED BATCH INSERT INTO e (k, c, v) VALUES ('', 'x', 1) APPLY BATCH", None, "Key may not be empty"),
        ("INSERT INTO e (k, c, v) VALUES (%s, 'x', 1)", (big,), "Key length of 70000 is longer than maximum of 65535"),
        ("SELECT * FROM e WHERE k = %s", (big,), "Key length of 70000 is longer than maximum of 65535"),
        ("INSERT INTO e2 (a, b, v) VALUES (%s, 1, 1)", (big,), "Key length of 70010 is longer than maximum of 65535"),
        ("DELETE FROM e2 WHERE a = %s AND b = 1", (big,), "Key length of 70010 is longer than maximum of 65535"),
    ]:
        with pytest.raises(InvalidRequest, match=message):
            session.execute(query, params)
    session.execute("INSERT INTO e2 (a, b, v) VALUES ('', 1, 1)")
    assert rows(session, "SELECT a, b, v FROM e2 WHERE a = '' AND b = 1") == [("", 1, 1)]
    assert rows(session, "SELECT k FROM e") == []  # the refused UPDATE wrote no row, not even 'a'


@pytest.mark.parametrize(("column", "function", "message"), [
    ("ts", "now()", r"system\.now \(type timeuuid\) to ts \(type timestamp\)"),
    ("t", "now()", r"system\.now \(type timeuuid\) to t \(type text\)"),
    ("i", "currentTimestamp()", r"system\.currenttimestamp \(type timestamp\) to i \(type int\)"),
    ("u", "uuid()", r"system\.uuid \(type uuid\) to u \(type timeuuid\)"),
])
def test_a_function_result_of_another_type_than_its_column_is_refused(session: Session, column: str, function: str,
                                                                       message: str) -> None:
    """Cassandra 4 checks a function's result type against what receives it (FunctionCall.Raw.prepare, with
    AbstractFunction.testAssignment): the same type, or one whose values the receiver's type reads
    (AbstractType.isValueCompatibleWith). Otherwise an Invalid "Type error: cannot assign result of function ...",
    at PREPARE for a prepared statement. Was: the function's bytes stored as they were, a 16-byte timeuuid in a
    timestamp cell, which the driver then failed to decode."""
    session.execute("CREATE TABLE f (k int PRIMARY KEY, ts timestamp, t text, i int, u timeuuid)")
    with pytest.raises(InvalidRequest, match="Type error: cannot assign result of function " + message):
        session.execute(f"INSERT INTO f (k, {column}) VALUES (1, {function})")
    with pytest.raises(InvalidRequest, match="Type error: cannot assign result of function " + message):
        session.execute(f"UPDATE f SET {column} = {function} WHERE k = 2")
    with pytest.raises(InvalidRequest, match="Type error: cannot assign result of function " + message):
        session.prepare(f"INSERT INTO f (k, {column}) VALUES (?, {function})")
    assert rows(session, "SELECT k FROM f") == []


def test_a_function_result_is_accepted_by_the_types_that_read_it(session: Session) -> None:
    """The receivers Cassandra 4 accepts a result of another type in: uuid reads a timeuuid (UUIDType), bigint and
    varint a timestamp (LongType, IntegerType), blob anything (BytesType); and each function into its own type."""
    session.execute("CREATE TABLE g (k int PRIMARY KEY, u uuid, b bigint, vi varint, bl blob, ts timestamp, "
                    "ts2 timestamp, d date, tu timeuuid, u4 uuid)")
    before = int(time.time() * 1000)
    session.execute("INSERT INTO g (k, u, b, vi, bl, ts, ts2, d, tu, u4) VALUES (1, now(), currentTimestamp(), "
                    "currentTimestamp(), now(), toTimestamp(now()), currentTimestamp(), currentDate(), "
                    "currentTimeUUID(), uuid())")
    after = int(time.time() * 1000)
    r = session.execute("SELECT * FROM g WHERE k = 1").one()
    assert r.u.version == 1 and r.tu.version == 1 and r.u4.version == 4 and len(r.bl) == 16
    assert before <= r.b <= after and before <= r.vi <= after
    for ts in (r.ts, r.ts2):
        assert before <= ts.replace(tzinfo=dt.UTC).timestamp() * 1000 <= after
    assert abs((r.d.date() - dt.datetime.now(dt.UTC).date()).days) <= 1


@pytest.mark.parametrize("where", [
    "k = now()",  # was: no row, the timeuuid compared with the int key
    "k = 1 AND c > currentTimestamp()",  # was: a Server error ("unpack requires a buffer of 4 bytes")
    "k IN (1, now())",
    "token(k) > now()",
])
def test_a_function_of_another_type_in_a_where_clause_is_refused(session: Session, where: str) -> None:
    """A function in a relation is checked against the column (or the token) as its receiver, as in an INSERT
    (FunctionCall.Raw.prepare): ``k = now()`` on an int key is Cassandra 4's Invalid "Type error"."""
    session.execute("CREATE TABLE fw (k int, c int, v int, PRIMARY KEY (k, c))")
    session.execute("INSERT INTO fw (k, c, v) VALUES (1, 1, 1)")
    with pytest.raises(InvalidRequest, match="Type error: cannot assign result of function"):
        session.execute(f"SELECT * FROM fw WHERE {where}")


def test_a_function_of_the_column_type_in_a_where_clause_runs(session: Session) -> None:
    session.execute("CREATE TABLE ft (k int, t timestamp, PRIMARY KEY (k, t))")
    session.execute("INSERT INTO ft (k, t) VALUES (1, '2020-01-01')")
    assert rows(session, "SELECT k FROM ft WHERE k = 1 AND t < currentTimestamp()") == [(1,)]
    assert rows(session, "SELECT k FROM ft WHERE k = 1 AND t > toTimestamp(now())") == []


def test_an_ipv4_mapped_inet_literal_is_the_ipv4_address(session: Session) -> None:
    """Cassandra 4 makes an inet literal with InetAddressType.fromString, i.e. InetAddress.getByName, which turns an
    IPv4-mapped IPv6 address into an Inet4Address: '::ffff:1.2.3.4' is stored as the 4 bytes of 1.2.3.4, reads back
    as '1.2.3.4' and is found by it. A bound value is kept as the client sent it (16 bytes), as in Cassandra."""
    session.execute("CREATE TABLE ip (a inet PRIMARY KEY, v int)")
    session.execute("INSERT INTO ip (a, v) VALUES ('::ffff:1.2.3.4', 1)")
    assert rows(session, "SELECT a, v FROM ip WHERE a = '1.2.3.4'") == [("1.2.3.4", 1)]
    session.execute(session.prepare("INSERT INTO ip (a, v) VALUES (?, ?)"), ("::ffff:5.6.7.8", 2))
    assert rows(session, "SELECT a, v FROM ip WHERE a = '5.6.7.8'") == []
    assert rows(session, "SELECT a, v FROM ip WHERE a = %s", ("::ffff:5.6.7.8",)) == []  # a literal: 5.6.7.8
    bound = session.execute(session.prepare("SELECT a, v FROM ip WHERE a = ?"), ("::ffff:5.6.7.8",))
    assert [tuple(r) for r in bound] == [("::ffff:5.6.7.8", 2)]


def test_order_by_may_leave_out_clustering_columns_restricted_by_equality(session: Session) -> None:
    """Cassandra 4 lets ORDER BY skip the clustering columns restricted by = (SelectStatement.Raw.isReversed checks
    isColumnRestrictedByEq for each column before an ordered one); an IN of one literal value is an = there. A column
    restricted otherwise, or not at all, may not be skipped; the ordered columns must all follow the table's order or
    all its reverse; only clustering columns may be ordered."""
    session.execute("CREATE TABLE ob (k int, a int, b int, c int, PRIMARY KEY (k, a, b, c))")
    for a in range(2):
        for b in range(3):
            for c in range(2):
                session.execute("INSERT INTO ob (k, a, b, c) VALUES (1, %s, %s, %s)", (a, b, c))
    descending = [(b, c) for b in (2, 1, 0) for c in (1, 0)]
    assert rows(session, "SELECT b, c FROM ob WHERE k = 1 AND a = 1 ORDER BY b DESC") == descending
    assert rows(session, "SELECT b, c FROM ob WHERE k = 1 AND a IN (1) ORDER BY b DESC, c DESC") == descending
    assert rows(session, "SELECT c FROM ob WHERE k = 1 AND a = 0 AND b = 2 ORDER BY c DESC") == [(1,), (0,)]
    assert rows(session, "SELECT c FROM ob WHERE k = 1 AND a = 0 AND b = 2 ORDER BY a DESC, c DESC") == [(1,), (0,)]
    unpaged = SimpleStatement("SELECT b, c FROM ob WHERE k IN (1, 2) AND a = 0 ORDER BY b DESC", fetch_size=None)
    assert [tuple(r) for r in session.execute(unpaged)] == descending
    out_of_order = "Order by currently only supports the ordering of columns following their declared order"
    for query, message in [
        ("SELECT b FROM ob WHERE k = 1 ORDER BY b DESC", out_of_order),
        ("SELECT b FROM ob WHERE k = 1 AND a > 0 ORDER BY b DESC", out_of_order),
        ("SELECT b FROM ob WHERE k = 1 AND a IN (0, 1) ORDER BY b DESC", out_of_order),
        ("SELECT b FROM ob WHERE k = 1 AND a = 1 ORDER BY c DESC", out_of_order),
        ("SELECT b FROM ob WHERE k = 1 AND a = 1 AND b = 1 ORDER BY c DESC, b DESC", out_of_order),
        ("SELECT b FROM ob WHERE k = 1 AND a = 1 ORDER BY b DESC, c ASC", "Unsupported order by relation"),
        ("SELECT b FROM ob WHERE k = 1 ORDER BY k DESC", "only supported on the clustered columns .* got k"),
    ]:
        with pytest.raises(InvalidRequest, match=message):
            session.execute(query)
    with pytest.raises(InvalidRequest, match=out_of_order):  # IN ? is an IN, whatever it is bound to
        session.execute(session.prepare("SELECT b FROM ob WHERE k = 1 AND a IN ? ORDER BY b DESC"), ([1],))


def test_an_element_of_a_null_list_is_neither_deleted_nor_set(session: Session) -> None:
    """Cassandra 4 refuses ``DELETE l[0]`` and ``UPDATE ... SET l[0] = v`` when the list is null or absent
    (Lists.DiscarderByIndex, Lists.SetterByIndex; asserted by its CollectionsTest.testList), as it refuses an index
    past the end of a list that has elements. Was: the DELETE answered success and wrote nothing, the UPDATE said
    "List index 0 out of bound". A null map or set still takes ``DELETE m[k]``, as in Cassandra."""
    session.execute("CREATE TABLE dl (k int PRIMARY KEY, l list<int>, m map<int, int>, s set<int>, v int)")
    session.execute("INSERT INTO dl (k, v) VALUES (1, 1)")
    for key in (1, 2):  # a row without the list, and no row at all
        with pytest.raises(InvalidRequest, match="Attempted to delete an element from a list which is null"):
            session.execute("DELETE l[0] FROM dl WHERE k = %s", (key,))
        with pytest.raises(InvalidRequest, match="Attempted to set an element on a list which is null"):
            session.execute("UPDATE dl SET l[0] = 5 WHERE k = %s", (key,))
    session.execute("DELETE m[0], s[0] FROM dl WHERE k = 1")
    session.execute("UPDATE dl SET l = [7] WHERE k = 1")
    with pytest.raises(InvalidRequest, match="List index 1 out of bound, list has size 1"):
        session.execute("DELETE l[1] FROM dl WHERE k = 1")
    session.execute("DELETE l[0] FROM dl WHERE k = 1")
    assert rows(session, "SELECT k, l, v FROM dl") == [(1, None, 1)]


def test_the_element_operations_of_one_statement_read_the_collection_as_it_was(session: Session) -> None:
    """Cassandra applies every element deletion or index setting of one statement to the row as it was before it
    (each is a cell tombstone or cell of its own; Lists.SetterByIndex and Lists.DiscarderByIndex take their indexes
    from the prefetched row): ``DELETE m['a'], m['b']`` removes both keys, ``DELETE l[0], l[1]`` the first two
    elements, ``SET l[0] = null, l[1] = 'x'`` removes the first and replaces the second. Was: all but one of the
    deletions of a map or set lost, and the later list indexes shifted by the earlier deletion."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, l list<text>, m map<text, int>, s set<int>)")
    session.execute("INSERT INTO t (k, l, m, s) VALUES (1, ['a', 'b', 'c'], {'a': 1, 'b': 2, 'c': 3}, {1, 2, 3})")
    session.execute("DELETE m['a'], m['b'], s[1], s[2], l[0], l[1], l[0] FROM t WHERE k = 1")
    row = session.execute("SELECT l, m, s FROM t WHERE k = 1").one()
    assert row.l == ["c"] and dict(row.m) == {"c": 3} and set(row.s) == {3}
    session.execute("INSERT INTO t (k, l) VALUES (2, ['a', 'b', 'c'])")
    session.execute("UPDATE t SET l[0] = null, l[1] = 'x' WHERE k = 2")
    assert rows(session, "SELECT l FROM t WHERE k = 2") == [(["x", "c"],)]
    for query in ["DELETE l[0], l[2] FROM t WHERE k = 2", "UPDATE t SET l[0] = 'y', l[2] = 'z' WHERE k = 2"]:
        with pytest.raises(InvalidRequest, match="List index 2 out of bound, list has size 2"):
            session.execute(query)
    assert rows(session, "SELECT l FROM t WHERE k = 2") == [(["x", "c"],)]
    session.execute("DELETE l, l[1] FROM t WHERE k = 2")
    assert rows(session, "SELECT l FROM t WHERE k = 2") == [(None,)]


def _in_order_table(session: Session) -> None:
    session.execute("CREATE TABLE p (k int, c int, d int, PRIMARY KEY (k, c, d))")
    insert = session.prepare("INSERT INTO p (k, c, d) VALUES (?, ?, ?)")
    for k in (0, 2):
        for c in range(3):
            for d in range(2):
                session.execute(insert, (k, c, d))


@pytest.mark.parametrize(("query", "expected"), [
    ("SELECT k, c, d FROM p WHERE k IN (0, 2) ORDER BY c DESC LIMIT 3", [(0, 2, 1), (0, 2, 0), (2, 2, 1)]),
    ("SELECT k, c, d FROM p WHERE k IN (2, 0) ORDER BY c ASC LIMIT 4", [(0, 0, 0), (0, 0, 1), (2, 0, 0), (2, 0, 1)]),
])
def test_order_by_with_in_sorts_on_the_ordered_columns_only(session: Session, query: str,
                                                            expected: list[tuple[int, int, int]]) -> None:
    """Cassandra sorts the rows of an IN with a comparator on the ORDER BY columns only (a stable sort): rows equal
    in them keep their read order, partition after partition. Sorted on the whole clustering key, the partitions'
    rows interleaved, and with LIMIT another set of rows came back."""
    _in_order_table(session)
    assert [tuple(r) for r in session.execute(SimpleStatement(query, fetch_size=None))] == expected
