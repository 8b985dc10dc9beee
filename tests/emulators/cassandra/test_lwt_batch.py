"""Lightweight transactions ([applied] and the current row); BATCH: unlogged with prepared and plain children.

A logged batch is refused, as Cosmos DB refuses it.
"""

from __future__ import annotations

import pytest
from cassandra import InvalidRequest
from cassandra.cluster import NoHostAvailable, Session
from cassandra.protocol import ServerError, SyntaxException
from cassandra.query import UNSET_VALUE, BatchStatement, BatchType, SimpleStatement

pytestmark = pytest.mark.timeout(60)


def test_insert_if_not_exists(session: Session) -> None:
    session.execute("CREATE TABLE t (k int PRIMARY KEY, v text, w int)")
    first = session.execute("INSERT INTO t (k, v, w) VALUES (1, 'a', 1) IF NOT EXISTS")
    assert first.was_applied and list(first.one()._fields) == ["applied"]
    second = session.execute("INSERT INTO t (k, v, w) VALUES (1, 'b', 2) IF NOT EXISTS")
    assert not second.was_applied
    assert (second.one().k, second.one().v, second.one().w) == (1, "a", 1)  # the current row comes back
    ps = session.prepare("INSERT INTO t (k, v) VALUES (?, ?) IF NOT EXISTS")
    assert session.execute(ps, (2, "x")).was_applied
    assert not session.execute(ps, (2, "y")).was_applied
    assert session.execute("SELECT v FROM t WHERE k = 2").one().v == "x"


CELL_LEVEL = ("WITH cosmosdb_cell_level_timestamp=true AND cosmosdb_cell_level_timestamp_tombstones=true "
              "AND cosmosdb_cell_level_timetolive=true")


def test_update_and_delete_conditions(session: Session) -> None:
    session.execute(f"CREATE TABLE t (k int PRIMARY KEY, v text, n int, m map<text, int>) {CELL_LEVEL}")
    session.execute("INSERT INTO t (k, v, n, m) VALUES (1, 'a', 5, {'x': 1})")
    assert session.execute("UPDATE t SET v = 'b' WHERE k = 1 IF v = 'a'").was_applied
    failed = session.execute("UPDATE t SET v = 'c' WHERE k = 1 IF v = 'a'")
    assert not failed.was_applied and failed.one().v == "b"
    assert session.execute("UPDATE t SET n = 6 WHERE k = 1 IF n > 4 AND v != 'z'").was_applied
    assert not session.execute("UPDATE t SET n = 7 WHERE k = 1 IF n < 6").was_applied
    assert session.execute("UPDATE t SET n = 8 WHERE k = 1 IF m['x'] = 1").was_applied
    assert not session.execute("UPDATE t SET v = 'q' WHERE k = 2 IF EXISTS").was_applied
    assert session.execute("SELECT * FROM t WHERE k = 2").one() is None
    assert session.execute("UPDATE t SET v = 'e' WHERE k = 1 IF EXISTS").was_applied
    assert not session.execute("DELETE FROM t WHERE k = 1 IF v = 'nope'").was_applied
    assert session.execute("DELETE FROM t WHERE k = 1 IF EXISTS").was_applied
    assert not session.execute("DELETE FROM t WHERE k = 1 IF EXISTS").was_applied
    ps = session.prepare("UPDATE t SET v = ? WHERE k = ? IF v = ?")
    assert [c.name for c in ps.column_metadata] == ["v", "k", "v"]
    session.execute("INSERT INTO t (k, v) VALUES (3, 'old')")
    assert session.execute(ps, ("new", 3, "old")).was_applied
    assert not session.execute(ps, ("newer", 3, "old")).was_applied


def test_a_null_or_unset_element_in_a_condition_is_invalid(session: Session) -> None:
    """As Cassandra ("Invalid null value for list element access"); it was an internal error (Server error)."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, v int, l list<text>, m map<text, int>)")
    session.execute("INSERT INTO t (k, v, l, m) VALUES (1, 0, ['a'], {'x': 1})")
    with pytest.raises(InvalidRequest, match="Invalid null value for list element access"):
        session.execute("UPDATE t SET v = 1 WHERE k = 1 IF l[null] = 'a'")
    with pytest.raises(InvalidRequest, match="Invalid null value for map element access"):
        session.execute("UPDATE t SET v = 1 WHERE k = 1 IF m[null] = 1")
    ps = session.prepare("UPDATE t SET v = 1 WHERE k = 1 IF l[?] = 'a'")
    for index, what in ((None, "null"), (UNSET_VALUE, "unset")):
        with pytest.raises(InvalidRequest, match=f"Invalid {what} value for list element access"):
            session.execute(ps, (index,))
    assert session.execute(ps, (0,)).was_applied
    assert session.execute("SELECT v FROM t WHERE k = 1").one().v == 1


def test_a_condition_on_a_map_element_finds_the_key_by_its_comparator(session: Session) -> None:
    """As Cassandra, which looks the element up by the key type's comparator: m[1.0] is the entry 1.00 -> 1. Was:
    looked up by bytes, not found, so not applied."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, v int, m map<decimal, int>)")
    session.execute("INSERT INTO t (k, m) VALUES (6, {1.00: 1})")
    assert session.execute("UPDATE t SET v = 3 WHERE k = 6 IF m[1.0] = 1").one().applied is True
    assert session.execute("UPDATE t SET v = 4 WHERE k = 6 IF m[1.000] != 1").one().applied is False
    assert session.execute("SELECT v FROM t WHERE k = 6").one().v == 3


def test_a_conditional_row_delete_needs_the_cell_level_flags_as_on_cosmos_db(session: Session) -> None:
    session.execute("CREATE TABLE t (k int PRIMARY KEY, v text, n int)")
    session.execute("INSERT INTO t (k, v, n) VALUES (1, 'a', 1)")
    with pytest.raises(InvalidRequest, match="Conditional delete of an entire row is not supported"):
        session.execute("DELETE FROM t WHERE k = 1 IF v = 'a'")
    assert session.execute("SELECT v FROM t WHERE k = 1").one().v == "a"
    assert session.execute("DELETE n FROM t WHERE k = 1 IF v = 'a'").was_applied  # a column, not the row
    assert session.execute("DELETE FROM t WHERE k = 1 IF EXISTS").was_applied  # listed as supported
    assert session.execute("SELECT * FROM t WHERE k = 1").one() is None


def test_a_conditional_row_delete_in_a_batch_is_refused_as_alone(session: Session) -> None:
    """The batch ran its conditional children with their conditions stripped, so the refusal above passed there and
    the row was deleted."""
    session.execute("CREATE TABLE t (k int, c int, v text, PRIMARY KEY (k, c))")
    session.execute("INSERT INTO t (k, c, v) VALUES (1, 1, 'a')")
    with pytest.raises(InvalidRequest, match="Conditional delete of an entire row is not supported"):
        session.execute("DELETE FROM t WHERE k = 1 AND c = 1 IF v = 'a'")
    with pytest.raises(InvalidRequest, match="Conditional delete of an entire row is not supported"):
        session.execute("BEGIN UNLOGGED BATCH DELETE FROM t WHERE k = 1 AND c = 1 IF v = 'a'; "
                        "INSERT INTO t (k, c, v) VALUES (1, 2, 'b'); APPLY BATCH")
    assert [tuple(r) for r in session.execute("SELECT c, v FROM t WHERE k = 1")] == [(1, "a")]  # nothing applied


def test_if_conditions_on_primary_key_columns_are_refused_as_cassandra(session: Session) -> None:
    """As Cassandra (ModificationStatement.Parsed.prepareConditions), alone, prepared and in a batch; they ran as
    lightweight transactions."""
    session.execute("CREATE TABLE t (k int, c int, v int, PRIMARY KEY (k, c))")
    session.execute("INSERT INTO t (k, c, v) VALUES (1, 1, 1)")
    for query, column in (("UPDATE t SET v = 2 WHERE k = 1 AND c = 1 IF k = 1", "k"),
                          ("DELETE v FROM t WHERE k = 1 AND c = 1 IF c = 1", "c"),
                          ("UPDATE t SET v = 2 WHERE k = 1 AND c = 1 IF v = 1 AND c = 1", "c"),
                          ("BEGIN UNLOGGED BATCH UPDATE t SET v = 2 WHERE k = 1 AND c = 1 IF k = 1; APPLY BATCH", "k")):
        with pytest.raises(InvalidRequest, match=f"PRIMARY KEY column '{column}' cannot have IF conditions"):
            session.execute(query)
    with pytest.raises(InvalidRequest, match="PRIMARY KEY column 'c' cannot have IF conditions"):
        session.prepare("UPDATE t SET v = 2 WHERE k = 1 AND c = 1 IF c = ?")
    assert session.execute("SELECT v FROM t WHERE k = 1 AND c = 1").one().v == 1
    assert session.execute("UPDATE t SET v = 2 WHERE k = 1 AND c = 1 IF v = 1").was_applied


def test_batch_with_prepared_and_plain_children(session: Session) -> None:
    session.execute("CREATE TABLE t (p text, c int, v text, PRIMARY KEY (p, c))")
    ps = session.prepare("INSERT INTO t (p, c, v) VALUES (?, ?, ?)")
    batch = BatchStatement(batch_type=BatchType.UNLOGGED)
    batch.add(ps, ("a", 1, "prepared"))
    batch.add(SimpleStatement("INSERT INTO t (p, c, v) VALUES ('a', 2, 'plain')"))
    batch.add(SimpleStatement("INSERT INTO t (p, c, v) VALUES (%s, %s, %s)"), ("b", 1, "plain with values"))
    batch.add(SimpleStatement("UPDATE t SET v = 'updated' WHERE p = 'a' AND c = 1"))
    batch.add("DELETE FROM t WHERE p = 'z' AND c = 0")
    session.execute(batch)
    got = sorted(tuple(r) for r in session.execute("SELECT p, c, v FROM t"))
    assert got == [("a", 1, "updated"), ("a", 2, "plain"), ("b", 1, "plain with values")]


def test_a_batch_child_sent_without_its_values_is_refused_with_its_marker_count(session: Session) -> None:
    """The driver sends a child added without parameters as its text alone. Refused as Cassandra refuses it,
    with the child's marker count. Was: "There were 0 markers(?) in CQL but 0 bound variables" (the index of the
    first unbound marker printed as the count)."""
    session.execute("CREATE TABLE t (k int, c int, v int, PRIMARY KEY (k, c))")
    batch = BatchStatement(batch_type=BatchType.UNLOGGED)
    batch.add(SimpleStatement("INSERT INTO t (k, c, v) VALUES (1, 1, 1)"))
    batch.add(SimpleStatement("INSERT INTO t (k, c, v) VALUES (?, ?, ?)"))
    with pytest.raises(InvalidRequest, match=r"There were 3 markers\(\?\) in CQL but 0 bound variables"):
        session.execute(batch)
    assert rows_of(session, "SELECT * FROM t") == []


def test_a_logged_batch_is_refused_as_cosmos_db_refuses_it_and_nothing_of_it_is_applied(session: Session) -> None:
    session.execute("CREATE TABLE t (k int PRIMARY KEY, v text)")
    logged = BatchStatement()  # the driver's default type: LOGGED
    logged.add(session.prepare("INSERT INTO t (k, v) VALUES (?, ?)"), (1, "prepared"))
    logged.add(SimpleStatement("INSERT INTO t (k, v) VALUES (2, 'plain')"))
    for batch in (logged, "BEGIN BATCH INSERT INTO t (k, v) VALUES (3, 'text'); APPLY BATCH"):
        with pytest.raises((ServerError, NoHostAvailable)) as refused:
            session.execute(batch)
        assert "Logged batches are not supported by the service yet. Please use unlogged batches instead." in str(
            refused.value)
    assert list(session.execute("SELECT * FROM t")) == []


def test_cql_batch_text_and_timestamps(session: Session) -> None:
    session.execute("CREATE TABLE t (k int PRIMARY KEY, v text)")
    session.execute("BEGIN UNLOGGED BATCH USING TIMESTAMP 500 "
                    "INSERT INTO t (k, v) VALUES (1, 'one'); "
                    "INSERT INTO t (k, v) VALUES (2, 'two') "
                    "APPLY BATCH")
    session.execute("BEGIN UNLOGGED BATCH INSERT INTO t (k, v) VALUES (1, 'older') USING TIMESTAMP 400; "
                    "INSERT INTO t (k, v) VALUES (3, 'three'); APPLY BATCH")
    got = {r.k: (r.v, r[2]) for r in session.execute("SELECT k, v, writetime(v) FROM t")}
    assert got[1] == ("one", 500) and got[2] == ("two", 500) and got[3][0] == "three"


def test_conditional_batch_applies_all_or_nothing(session: Session) -> None:
    session.execute("CREATE TABLE t (p int, c int, v text, PRIMARY KEY (p, c))")
    session.execute("INSERT INTO t (p, c, v) VALUES (1, 1, 'a')")
    failed = session.execute("BEGIN UNLOGGED BATCH UPDATE t SET v = 'b' WHERE p = 1 AND c = 1 IF v = 'zzz'; "
                             "INSERT INTO t (p, c, v) VALUES (1, 2, 'new'); APPLY BATCH")
    assert not failed.was_applied
    assert [r.c for r in session.execute("SELECT c FROM t WHERE p = 1")] == [1]
    ok = session.execute("BEGIN UNLOGGED BATCH UPDATE t SET v = 'b' WHERE p = 1 AND c = 1 IF v = 'a'; "
                         "INSERT INTO t (p, c, v) VALUES (1, 2, 'new'); APPLY BATCH")
    assert ok.was_applied
    assert [tuple(r) for r in session.execute("SELECT c, v FROM t WHERE p = 1")] == [(1, "b"), (2, "new")]
    with pytest.raises(InvalidRequest, match="partition"):
        session.execute("BEGIN UNLOGGED BATCH UPDATE t SET v = 'x' WHERE p = 1 AND c = 1 IF v = 'b'; "
                        "INSERT INTO t (p, c, v) VALUES (2, 2, 'other partition'); APPLY BATCH")
    with pytest.raises(SyntaxException, match="'select' expecting INSERT, UPDATE, DELETE"):
        session.execute("BEGIN BATCH SELECT * FROM t; APPLY BATCH")
    batch = BatchStatement(batch_type=BatchType.UNLOGGED)
    batch.add(session.prepare("SELECT * FROM t WHERE p = ?"), (1,))
    with pytest.raises(InvalidRequest, match="Only INSERT, UPDATE and DELETE"):
        session.execute(batch)


def test_refused_combinations(session: Session) -> None:
    session.execute("CREATE TABLE t (k int PRIMARY KEY, v int)")
    for query, message in (
        ("INSERT INTO t (k, v) VALUES (1, 1) IF NOT EXISTS USING TIMESTAMP 5", "custom timestamp"),
        ("UPDATE t USING TIMESTAMP 5 SET v = 2 WHERE k = 1 IF v = 1", "custom timestamp"),
        ("BEGIN UNLOGGED BATCH USING TIMESTAMP 5 UPDATE t SET v = 2 WHERE k = 1 IF v = 1; APPLY BATCH",
         "custom timestamp"),
        ("BEGIN UNLOGGED BATCH USING TTL 5 INSERT INTO t (k, v) VALUES (1, 1); APPLY BATCH", "Global TTL"),
        ("INSERT INTO t (k, v) VALUES (2, 2) USING TTL 10 AND TTL 20", "Multiple definitions of TTL"),
    ):
        with pytest.raises(InvalidRequest, match=message):
            session.execute(query)
    assert list(session.execute("SELECT * FROM t")) == []


def test_if_not_exists_after_using_is_a_syntax_error_as_in_cassandra(session: Session) -> None:
    """Cassandra's grammar is ``INSERT ... VALUES (...) [IF NOT EXISTS] [USING ...]`` (Cql.g normalInsertStatement):
    the other order, which ran as a lightweight transaction here, fails there."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, v int, w int)")
    for query in ("INSERT INTO t (k, v) VALUES (1, 1) USING TTL 100 IF NOT EXISTS",
                  "BEGIN UNLOGGED BATCH INSERT INTO t (k, v) VALUES (1, 1) USING TTL 50 IF NOT EXISTS; "
                  "UPDATE t SET w = 1 WHERE k = 1; APPLY BATCH"):
        with pytest.raises(SyntaxException):
            session.execute(query)
    assert session.execute("SELECT * FROM t WHERE k = 1").one() is None
    assert session.execute("INSERT INTO t (k, v) VALUES (1, 1) IF NOT EXISTS USING TTL 100").was_applied


def test_a_conditional_insert_in_a_batch_checks_its_key_columns_as_an_insert_does(session: Session) -> None:
    """A null, unset or missing clustering column is Invalid, as outside a batch; it was an internal error."""
    session.execute("CREATE TABLE t (p int, c int, d int, v int, PRIMARY KEY (p, c, d))")
    for child, message in (
        ("INSERT INTO t (p, c, d, v) VALUES (1, null, 1, 1) IF NOT EXISTS", "Invalid null value .* part c"),
        ("INSERT INTO t (p, c, d, v) VALUES (1, 1, null, 1) IF NOT EXISTS", "Invalid null value .* part d"),
        ("INSERT INTO t (p, c, v) VALUES (1, 1, 1) IF NOT EXISTS", "Some clustering key parts are missing: d"),
    ):
        with pytest.raises(InvalidRequest, match=message):
            session.execute(f"BEGIN UNLOGGED BATCH {child}; APPLY BATCH")
    batch = BatchStatement(batch_type=BatchType.UNLOGGED)
    batch.add(session.prepare("INSERT INTO t (p, c, d, v) VALUES (?, ?, ?, ?) IF NOT EXISTS"), (1, 1, UNSET_VALUE, 1))
    with pytest.raises(InvalidRequest, match="Invalid unset value for column d"):
        session.execute(batch)
    assert list(session.execute("SELECT * FROM t")) == []
    assert session.execute("BEGIN UNLOGGED BATCH INSERT INTO t (p, c, d, v) VALUES (1, 1, 1, 1) IF NOT EXISTS; "
                           "APPLY BATCH").was_applied


def test_a_not_applied_update_lists_each_condition_column_once(session: Session) -> None:
    """A conditional UPDATE that is not applied answers ``[applied]`` and the columns its conditions name, each once
    in the order of the IF: Cassandra 4's ``ModificationStatement.buildCasFailureResultSet`` collects them in a
    ``LinkedHashSet`` ("We can have multiple conditions on the same columns ... so use a set to avoid duplicate")."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, v int, w int)")
    session.execute("INSERT INTO t (k, v, w) VALUES (1, 1, 2)")
    rs = session.execute("UPDATE t SET v = 3 WHERE k = 1 IF v > 0 AND v < 0")
    assert rs.column_names == ["[applied]", "v"]
    assert [tuple(r) for r in rs] == [(False, 1)]
    rs = session.execute("UPDATE t SET v = 3 WHERE k = 1 IF w = 0 AND v = 1 AND w < 5")
    assert rs.column_names == ["[applied]", "w", "v"]
    assert [tuple(r) for r in rs] == [(False, 2, 1)]


def test_a_not_applied_conditional_batch_returns_the_key_columns_and_every_row_it_checked(session: Session) -> None:
    """A conditional BATCH that is not applied answers, for each row its conditions read that exists (in clustering
    order), ``[applied]``, the primary key columns and the condition columns; every column when a statement is
    IF EXISTS or IF NOT EXISTS; ``[applied]`` alone when none of those rows exists. Cassandra 4:
    ``BatchStatement.executeWithConditions`` reads every row a condition names in one CAS read, and
    ``ModificationStatement.buildCasFailureResultSet`` with ``isBatch`` adds ``metadata.primaryKeyColumns()``
    ("to disambiguate if the conditions span multiple rows")."""
    session.execute("CREATE TABLE t (p int, c int, v int, w int, PRIMARY KEY (p, c))")
    session.execute("INSERT INTO t (p, c, v, w) VALUES (1, 1, 1, 10)")
    session.execute("INSERT INTO t (p, c, v, w) VALUES (1, 2, 1, 20)")
    rs = session.execute("BEGIN UNLOGGED BATCH "
                         "UPDATE t SET v = 2 WHERE p = 1 AND c = 2 IF v = 5; "
                         "UPDATE t SET v = 2 WHERE p = 1 AND c = 1 IF v = 7 AND v > 0; "
                         "UPDATE t SET v = 2 WHERE p = 1 AND c = 3 IF v = 1; APPLY BATCH")
    assert rs.column_names == ["[applied]", "p", "c", "v"]
    assert [tuple(r) for r in rs] == [(False, 1, 1, 1), (False, 1, 2, 1)]
    rs = session.execute("BEGIN UNLOGGED BATCH "
                         "UPDATE t SET v = 2 WHERE p = 1 AND c = 1 IF v = 1; "
                         "INSERT INTO t (p, c, v) VALUES (1, 2, 3) IF NOT EXISTS; APPLY BATCH")
    assert rs.column_names == ["[applied]", "p", "c", "v", "w"]
    assert [tuple(r) for r in rs] == [(False, 1, 1, 1, 10), (False, 1, 2, 1, 20)]
    rs = session.execute("BEGIN UNLOGGED BATCH UPDATE t SET v = 2 WHERE p = 1 AND c = 5 IF v = 1; APPLY BATCH")
    assert rs.column_names == ["[applied]"] and [tuple(r) for r in rs] == [(False,)]
    assert rows_of(session, "SELECT c, v FROM t WHERE p = 1") == [(1, 1), (2, 1)]


def test_a_conditional_batch_mixing_kinds_of_condition_on_one_row_is_refused(session: Session) -> None:
    """A row of a conditional batch takes one kind of condition: IF NOT EXISTS, IF EXISTS or IF conditions. Cassandra
    4 refuses a child bringing another kind to a row already conditioned (CQL3CasRequest.addExistsCondition and
    addConditions), with messages that name the kinds as it does, and writes nothing; the emulator answered such a
    batch (not applied, or applied, writing rows a real cluster never would). Several conditions of one kind on a
    row still apply; conditions of different kinds on different rows of the partition too."""
    session.execute("CREATE TABLE t (k int, c int, v int, PRIMARY KEY (k, c))")
    session.execute("INSERT INTO t (k, c, v) VALUES (3, 1, 1)")
    for children, message in (
        (["INSERT INTO t (k, c, v) VALUES (1, 1, 1) IF NOT EXISTS",
          "UPDATE t SET v = 2 WHERE k = 1 AND c = 1 IF EXISTS"],
         "Cannot mix IF EXISTS and IF NOT EXISTS conditions for the same row"),
        (["INSERT INTO t (k, c, v) VALUES (2, 1, 1) IF NOT EXISTS",
          "UPDATE t SET v = 5 WHERE k = 2 AND c = 1 IF v = null"],
         "Cannot mix IF conditions and IF NOT EXISTS for the same row"),
        (["UPDATE t SET v = 7 WHERE k = 3 AND c = 1 IF v = 1",
          "DELETE FROM t WHERE k = 3 AND c = 1 IF EXISTS"],
         "Cannot mix IF conditions and IF EXISTS for the same row"),
        # Cassandra's addConditions names IF NOT EXISTS whichever exists-condition came first
        (["DELETE v FROM t WHERE k = 3 AND c = 1 IF EXISTS",
          "UPDATE t SET v = 7 WHERE k = 3 AND c = 1 IF v = 1"],
         "Cannot mix IF conditions and IF NOT EXISTS for the same row"),
    ):
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for child in children:
            batch.add(child)
        with pytest.raises(InvalidRequest, match=message):
            session.execute(batch)
    assert rows_of(session, "SELECT k, c, v FROM t") == [(3, 1, 1)], "nothing of a refused batch is written"
    assert session.execute("BEGIN UNLOGGED BATCH "
                           "INSERT INTO t (k, c, v) VALUES (3, 2, 2) IF NOT EXISTS; "
                           "INSERT INTO t (k, c) VALUES (3, 2) IF NOT EXISTS; "
                           "UPDATE t SET v = 8 WHERE k = 3 AND c = 1 IF v = 1; "
                           "UPDATE t SET v = 9 WHERE k = 3 AND c = 1 IF v > 0; APPLY BATCH").was_applied
    assert rows_of(session, "SELECT c, v FROM t WHERE k = 3") == [(1, 9), (2, 2)]


def test_a_batch_timestamp_and_a_statement_timestamp_together_are_refused(session: Session) -> None:
    """A batch carries ``USING TIMESTAMP`` or its statements do, not both: Cassandra 4's
    ``BatchStatement.validate()`` refuses it with "Timestamp must be set either on BATCH or individual statements"
    (CQL reference, BATCH: the batch's timestamp applies to all its statements). Nothing of it is written."""
    session.execute("CREATE TABLE t (p int, c int, v int, PRIMARY KEY (p, c))")
    with pytest.raises(InvalidRequest, match="Timestamp must be set either on BATCH or individual statements"):
        session.execute("BEGIN UNLOGGED BATCH USING TIMESTAMP 100 "
                        "INSERT INTO t (p, c, v) VALUES (0, 2, 2); "
                        "INSERT INTO t (p, c, v) VALUES (0, 1, 1) USING TIMESTAMP 50; APPLY BATCH")
    assert rows_of(session, "SELECT * FROM t") == []


def rows_of(session: Session, query: str) -> list[tuple]:
    return [tuple(r) for r in session.execute(query)]
