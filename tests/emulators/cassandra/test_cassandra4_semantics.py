"""The Cassandra emulator where it answered silently unlike Apache Cassandra 4: timestamps, ties, token ranges, LWT
results, and collection element operations it cannot model (now refused, clearly, instead of losing an element).

Each test drives the emulator with the real cassandra-driver; the docstring cites what Cassandra does and, after
"Was:", what the emulator did.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from cassandra import InvalidRequest
from cassandra.cluster import Cluster, Session

from sluice.launcher import Running

pytestmark = pytest.mark.timeout(60)

MIN_TOKEN = -(2**63)


@pytest.fixture
def session(cassandra_emulator: Running, cassandra_keyspace: str) -> Iterator[Session]:
    c = Cluster(contact_points=[cassandra_emulator.host], port=cassandra_emulator.port, protocol_version=4)
    s = c.connect(cassandra_keyspace)
    yield s
    c.shutdown()


def test_a_set_append_older_than_the_set_is_refused_not_lost(session: Session) -> None:
    """Cassandra keeps {'a', 'b'}. In Cassandra every element of a non-frozen set/map/list is its own cell with its own
    timestamp ("collections ... each element is stored internally as a separate cell", CQL docs, Collections;
    `Sets.Adder` writes one cell per element), so an append with an older timestamp adds its element and does not
    compete with the other elements. The emulator keeps a collection as one cell, so it refuses such an append with a
    message naming the column rather than answer wrong. Was: write.py `_assignment_cells` read the current set,
    wrote the whole merged set as ONE cell at ts=100, and `Row.write` (store.py) dropped it because the cell's ts is
    200: 'a' was silently lost (the same happens to two writers whose client clocks differ, appending concurrently)."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, s set<text>)")
    session.execute("UPDATE t USING TIMESTAMP 200 SET s = s + {'b'} WHERE k = 1")
    with pytest.raises(InvalidRequest, match="s \\(a non-frozen collection\\) as one cell"):
        session.execute("UPDATE t USING TIMESTAMP 100 SET s = s + {'a'} WHERE k = 1")
    assert set(session.execute("SELECT s FROM t WHERE k = 1").one().s) == {"b"}
    session.execute("UPDATE t USING TIMESTAMP 300 SET s = s + {'a'} WHERE k = 1")  # a later append is modelled
    assert set(session.execute("SELECT s FROM t WHERE k = 1").one().s) == {"a", "b"}


def test_a_map_put_older_than_the_map_is_refused_not_lost(session: Session) -> None:
    """Cassandra keeps {'x': 1, 'y': 2}; the emulator refuses the older put, naming the column. `m['y'] = 2` writes
    one cell (key y) in Cassandra (`Maps.SetterByKey`), independent
    of the timestamp of key x's cell. Was: the whole map is one cell stamped 200, so the older element write of
    'y' is dropped silently."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, m map<text, int>)")
    session.execute("UPDATE t USING TIMESTAMP 200 SET m['x'] = 1 WHERE k = 1")
    with pytest.raises(InvalidRequest, match="m \\(a non-frozen collection\\)"):
        session.execute("UPDATE t USING TIMESTAMP 100 SET m['y'] = 2 WHERE k = 1")
    assert dict(session.execute("SELECT m FROM t WHERE k = 1").one().m) == {"x": 1}


def test_a_batch_writing_a_set_and_removing_from_it_is_refused_whole(session: Session) -> None:
    """Cassandra answers {'b'}; the emulator refuses the batch, and writes none of it. All statements of a batch
    share one timestamp (CQL docs, BATCH: "all updates in a batch
    belonging to a given partition key are performed ... with the same timestamp"). Cassandra's INSERT of a set writes
    a collection tombstone at ts-1 and one cell per element at ts; `s = s - {'a'}` writes a cell tombstone for 'a' at
    ts, and on equal timestamps a tombstone wins (`Cells.reconcile`). Was: the removal is a whole-set cell {'b'}
    at the same ts, compared by bytes with {'a','b'}: smaller, so it loses and the read returns {'a', 'b'}."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, s set<text>)")
    session.execute("INSERT INTO t (k, s) VALUES (2, {'z'})")
    with pytest.raises(InvalidRequest, match="cannot combine, in one BATCH"):
        session.execute("BEGIN UNLOGGED BATCH "
                        "INSERT INTO t (k, s) VALUES (1, {'a', 'b'}); "
                        "UPDATE t SET s = s + {'y'} WHERE k = 2; "
                        "UPDATE t SET s = s - {'a'} WHERE k = 1; "
                        "APPLY BATCH")
    assert session.execute("SELECT s FROM t WHERE k = 1").one() is None, "nothing of a refused batch is written"
    assert set(session.execute("SELECT s FROM t WHERE k = 2").one().s) == {"z"}


def test_timestamp_tie_expiring_cell_wins_over_live_cell(session: Session) -> None:
    """Cassandra keeps v = 'a' with a TTL. Cassandra 4 `Cells.resolveRegular` (CASSANDRA-14592, also 3.0.17/3.11.3): on
    equal timestamps an expiring (or tombstone) cell wins over a plain live cell regardless of the value ("for
    consistency of reconciliation ... treat expiring cells ... the same [as tombstones]"); the value is compared only
    when both are plain or both expiring. Was: store.py `Row.write` compares the values only, keeps 'b' (no TTL),
    so the row never expires. (docs/emulators/cassandra.md states only "a deletion wins, then the greater value".)"""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, v text)")
    session.execute("INSERT INTO t (k, v) VALUES (1, 'b') USING TIMESTAMP 100")
    session.execute("INSERT INTO t (k, v) VALUES (1, 'a') USING TIMESTAMP 100 AND TTL 1000")
    row = session.execute("SELECT v, ttl(v) AS t FROM t WHERE k = 1").one()
    assert (row.v, row.t is not None) == ("a", True)


def test_batch_without_client_timestamp_uses_one_timestamp(cassandra_emulator: Running,
                                                           cassandra_keyspace: str) -> None:
    """Cassandra keeps v = 2. A batch has one timestamp for all its statements (Cassandra `BatchStatement.getMutations`
    takes `options.getTimestamp(state)` once; CQL docs: the batch's statements share a timestamp), so two writes of
    the same cell tie and the greater value, 2, wins. With `session.use_client_timestamp = False` the driver sends no
    timestamp; Was: the emulator's batch.py passed None on and write.py `write_timestamp` called `time.time_ns()`
    per child,
    so the later child wins: v = 1, and the children carry different writetimes."""
    c = Cluster(contact_points=[cassandra_emulator.host], port=cassandra_emulator.port, protocol_version=4)
    try:
        s = c.connect(cassandra_keyspace)
        s.use_client_timestamp = False
        s.execute("CREATE TABLE t (k int PRIMARY KEY, v int, w int)")
        s.execute("BEGIN UNLOGGED BATCH INSERT INTO t (k, v, w) VALUES (1, 2, 0); "
                  "INSERT INTO t (k, v) VALUES (1, 1); APPLY BATCH")
        row = s.execute("SELECT v, writetime(v) AS tv, writetime(w) AS tw FROM t WHERE k = 1").one()
        assert (row.v, row.tv) == (2, row.tw)
    finally:
        c.shutdown()


def test_token_range_ending_at_minimum_token_reaches_end_of_ring(session: Session) -> None:
    """Cassandra answers the rows with token(k) > 0 (Cassandra 4
    `StatementRestrictions.getPartitionKeyBoundsForTokenRestrictions`):
    a range whose start or end is the partitioner's minimum token (Murmur3: -2**63) is not treated as the empty
    "start > end" case; `(x, MIN]` is the range from x to the end of the ring (the minimum token as an end bound means
    unbounded), which is how token-range scanners express the last range of the ring. Was: select.py `iter_scan`
    / store.py `iter_partitions` stop at end token -2**63 and return nothing."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, v int)")
    ins = session.prepare("INSERT INTO t (k, v) VALUES (?, ?)")
    for i in range(30):
        session.execute(ins, (i, i))
    expected = session.execute("SELECT count(*) FROM t WHERE token(k) > 0").one()[0]
    assert expected > 0
    got = session.execute(f"SELECT count(*) FROM t WHERE token(k) > 0 AND token(k) <= {MIN_TOKEN}").one()[0]
    assert got == expected


def test_lwt_not_applied_on_missing_row_returns_only_applied(session: Session) -> None:
    """Cassandra's result of a failed conditional UPDATE on a row that does not exist has only the `[applied]`
    column (Cassandra 4 `ModificationStatement.buildCasResultSet` merges `[applied]` with the current row, and
    `merge` returns `[applied]` alone when the read found no row), so a client can tell "no row" from "v is null".
    Was: write.py `_check_conditions` returned `[applied]=False, v=null` for the missing row, the same answer as
    for an existing row whose v is null."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, v int, w int)")
    result = session.execute("UPDATE t SET w = 1 WHERE k = 1 IF v = 3")
    assert result.column_names == ["[applied]"]


def test_two_writes_of_a_collection_at_one_timestamp_merge_as_in_cassandra(session: Session) -> None:
    """Overwriting a non-frozen collection (``INSERT ... s = {...}``, ``SET s = {...}``) is, in Cassandra 4, a
    collection tombstone at ``timestamp - 1`` and one cell per element at ``timestamp`` (``Sets.Setter`` /
    ``Maps.Setter`` -> ``UpdateParameters.setComplexDeletionTimeForOverwrite``). Two writes at one timestamp (two
    statements of a batch, or a write redelivered with its timestamp) keep the elements of both: {1, 2}, and
    {'a': 1, 'b': 2} after ``m = m + {'a': 1}`` then ``m = {'b': 2}``; the same write again changes nothing."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, s set<int>, m map<text, int>)")
    session.execute("BEGIN UNLOGGED BATCH INSERT INTO t (k, s) VALUES (1, {1}); "
                    "INSERT INTO t (k, s) VALUES (1, {2}); APPLY BATCH")
    assert session.execute("SELECT s FROM t WHERE k = 1").one().s == {1, 2}
    session.execute("BEGIN UNLOGGED BATCH UPDATE t SET m = m + {'a': 1} WHERE k = 2; "
                    "UPDATE t SET m = {'b': 2} WHERE k = 2; APPLY BATCH")
    assert dict(session.execute("SELECT m FROM t WHERE k = 2").one().m) == {"a": 1, "b": 2}
    for _ in range(2):  # a write redelivered at its own timestamp
        session.execute("INSERT INTO t (k, m) VALUES (3, {'x': 1, 'y': 2}) USING TIMESTAMP 100")
    assert dict(session.execute("SELECT m FROM t WHERE k = 3").one().m) == {"x": 1, "y": 2}


def test_two_writes_at_one_timestamp_meet_by_the_element_comparator(session: Session) -> None:
    """Cassandra merges the two writes' cells path by path, and paths compare by the element type's comparator:
    decimal 1.0 and 1.00 are one element, whose two cells tie (same timestamp, expiry and value), so one stays (the
    stored one here). Was: merged by bytes, {1.00: 1, 1.0: 1, 2: 2} and {1.00, 1.0, 2}, a key twice."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, s set<decimal>, m map<decimal, int>)")
    session.execute("INSERT INTO t (k, s, m) VALUES (1, {1.00}, {1.00: 1}) USING TIMESTAMP 100")
    session.execute("INSERT INTO t (k, s, m) VALUES (1, {2, 1.0}, {2: 2, 1.0: 1}) USING TIMESTAMP 100")
    row = session.execute("SELECT s, m FROM t WHERE k = 1").one()
    assert [str(e) for e in row.s] == ["1.00", "2"]
    assert [(str(key), value) for key, value in row.m.items()] == [("1.00", 1), ("2", 2)]


def test_a_collection_overwrite_older_than_a_whole_collection_changes_nothing(session: Session) -> None:
    """A collection written whole at 10 carries its tombstone at 9, which shadows every element written at 9 or
    before, even ones that arrive later: an overwrite at 5 changes nothing in Cassandra 4 (the latest state of a
    device, written with its event time, where events arrive out of order); one at 11 replaces it."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, s set<int>, m map<text, int>)")
    session.execute("INSERT INTO t (k, s, m) VALUES (1, {1}, {'a': 1}) USING TIMESTAMP 10")
    session.execute("INSERT INTO t (k, s, m) VALUES (1, {2}, {'b': 2}) USING TIMESTAMP 5")
    row = session.execute("SELECT s, m FROM t WHERE k = 1").one()
    assert row.s == {1} and dict(row.m) == {"a": 1}
    session.execute("UPDATE t USING TIMESTAMP 11 SET m = {'b': 2} WHERE k = 1")
    assert dict(session.execute("SELECT m FROM t WHERE k = 1").one().m) == {"b": 2}


def test_emptying_a_collection_deletes_only_the_elements_written_before_it(session: Session) -> None:
    """``SET s = null`` (or ``{}``, or an INSERT of either) is Cassandra 4's collection tombstone at ``timestamp - 1``
    alone (``Sets.Setter``: setComplexDeletionTimeForOverwrite, then no element), unlike ``DELETE s``, which deletes at
    ``timestamp``: elements added later at that timestamp stay, and so do elements written at that timestamp before
    it."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, s set<int>, v int)")
    session.execute("UPDATE t USING TIMESTAMP 10 SET s = s + {1} WHERE k = 1")
    session.execute("UPDATE t USING TIMESTAMP 10 SET s = null WHERE k = 1")
    assert session.execute("SELECT s FROM t WHERE k = 1").one().s == {1}
    session.execute("INSERT INTO t (k, s, v) VALUES (2, {}, 0) USING TIMESTAMP 20")
    session.execute("UPDATE t USING TIMESTAMP 20 SET s = s + {3} WHERE k = 2")
    assert session.execute("SELECT s FROM t WHERE k = 2").one().s == {3}
    session.execute("UPDATE t USING TIMESTAMP 11 SET s = {} WHERE k = 1")
    assert session.execute("SELECT s FROM t WHERE k = 1").one() is None  # an UPDATE's row: gone with its last cell


def test_an_element_operation_keeps_the_other_elements_expiry_or_is_refused(session: Session) -> None:
    """Each element of a non-frozen collection is a cell with its own TTL in Cassandra: `UPDATE ... USING TTL 1 SET
    s = s + {3}` writes one expiring cell and leaves 1 and 2 alone, `DELETE s[1]` a tombstone for 1 and leaves 2 to
    expire ("TTLs ... apply to the newly inserted/updated elements only"; Sets.Adder, Sets.ElementDiscarder). The
    emulator keeps one cell with one expiry, so a removal keeps the stored expiry and an addition whose expiry
    differs from the stored elements' is refused. Was: the whole collection was rewritten with the statement's
    expiry, so the old elements expired with the new one (data loss), or expiring ones became immortal."""
    session.execute("CREATE TABLE c (k int PRIMARY KEY, s set<int>, m map<text, int>, l list<int>)")
    session.execute("INSERT INTO c (k, s, m, l) VALUES (1, {1, 2}, {'a': 1}, [1])")
    for op in ("s = s + {3}", "m['b'] = 2", "m = m + {'c': 3}", "l = l + [2]", "l = [0] + l", "l[0] = 5"):
        with pytest.raises(InvalidRequest, match="\\(a non-frozen collection\\) as one cell with one expiry"):
            session.execute(f"UPDATE c USING TTL 1 SET {op} WHERE k = 1")
    session.execute("UPDATE c USING TTL 1 SET s = s - {1} WHERE k = 1")  # a removal: 2 keeps its (no) expiry
    session.execute("UPDATE c SET l = l + [2] WHERE k = 1")  # no TTL on both sides
    session.execute("INSERT INTO c (k, s, m) VALUES (2, {1, 2}, {'a': 1, 'b': 2}) USING TTL 1")
    with pytest.raises(InvalidRequest, match="s \\(a non-frozen collection\\) as one cell with one expiry"):
        session.execute("UPDATE c SET s = s + {5} WHERE k = 2")
    session.execute("DELETE s[1] FROM c WHERE k = 2")  # 2 still expires
    session.execute("UPDATE c SET m['a'] = null WHERE k = 2")  # and so does b
    session.execute("UPDATE c USING TTL 1 SET s = s + {7} WHERE k = 3")  # new elements: the statement's TTL
    time.sleep(2.2)
    assert [tuple(r) for r in session.execute("SELECT k, s, m, l FROM c")] == [(1, {2}, {"a": 1}, [1, 2])]


class _Clock:
    """A client timestamp generator the test sets (the driver's ``Cluster(timestamp_generator=...)``): what two
    clients whose clocks differ send."""

    def __init__(self) -> None:
        self.micros = int(time.time() * 1e6)

    def __call__(self) -> int:
        return self.micros


def test_an_applied_lightweight_transaction_is_not_lost_to_an_earlier_client_clock(
        cassandra_emulator: Running, cassandra_keyspace: str) -> None:
    """Cassandra writes a conditional statement (or batch) at its Paxos ballot's timestamp, not the client's
    (StorageProxy.cas: `updates.updateAllTimestamp(ballot)`), and a ballot is always later than the partition's last
    one (ClientState.getTimestampForPaxos), so an LWT answering `[applied] = True` after another always takes effect
    (Sluice's feed_state checkpoint relies on it). Was: the client's timestamp, so a client whose clock is behind the
    previous writer's got `[applied] = True` and its write was shadowed by the older LWT."""
    clock = _Clock()
    c = Cluster(contact_points=[cassandra_emulator.host], port=cassandra_emulator.port, protocol_version=4,
                timestamp_generator=clock)
    try:
        s = c.connect(cassandra_keyspace)
        s.execute("CREATE TABLE st (name text PRIMARY KEY, version bigint)")
        clock.micros = int(time.time() * 1e6) + 60_000_000  # instance A, its clock a minute ahead
        assert s.execute("INSERT INTO st (name, version) VALUES ('feed', 1) IF NOT EXISTS").was_applied
        clock.micros = int(time.time() * 1e6)  # instance B, on time
        assert s.execute("UPDATE st SET version = 2 WHERE name = 'feed' IF version = 1").was_applied
        assert s.execute("SELECT version FROM st WHERE name = 'feed'").one().version == 2
        clock.micros = int(time.time() * 1e6) - 60_000_000  # instance C, a minute behind
        assert s.execute("BEGIN UNLOGGED BATCH UPDATE st SET version = 3 WHERE name = 'feed' IF version = 2 "
                         "APPLY BATCH").was_applied
        assert s.execute("SELECT version FROM st WHERE name = 'feed'").one().version == 3
        assert s.execute("DELETE version FROM st WHERE name = 'feed' IF version = 3").was_applied
        assert s.execute("SELECT version FROM st WHERE name = 'feed'").one().version is None
    finally:
        c.shutdown()


def test_an_update_naming_one_row_twice_applies_once_and_a_refused_row_writes_none(session: Session) -> None:
    """Cassandra applies `UPDATE c SET l = l + [9] WHERE k IN (1, 1)` once (the keys of an IN are a set,
    ModificationStatement.buildPartitionKeyNames), and refuses a statement before writing any of its rows. Was: the
    second copy was refused after the first had appended 9 (InvalidRequest for a write that landed), and a row
    refused among several left the rows before it written."""
    session.execute("CREATE TABLE c (k int PRIMARY KEY, l list<int>)")
    session.execute("INSERT INTO c (k, l) VALUES (1, [1])")
    session.execute("UPDATE c SET l = l + [9] WHERE k IN (1, 1)")
    assert session.execute("SELECT l FROM c WHERE k = 1").one().l == [1, 9]
    session.execute("INSERT INTO c (k, l) VALUES (2, [2]) USING TIMESTAMP 9000000000000000")
    with pytest.raises(InvalidRequest, match="l \\(a non-frozen collection\\) as one cell"):
        session.execute("UPDATE c SET l = l + [3] WHERE k IN (1, 2)")  # 2's list is later than this statement
    assert [tuple(r) for r in session.execute("SELECT k, l FROM c")] == [(1, [1, 9]), (2, [2])]


def test_a_list_append_or_prepend_then_a_whole_list_at_one_timestamp_keep_both(session: Session) -> None:
    """Cassandra 4 keys a list's elements by time-UUIDs: ``Lists.Appender`` and ``Lists.Setter`` take fresh ones from
    the clock, ``Lists.Prepender`` ones before 2010; a whole write adds a collection tombstone at ``timestamp - 1``
    (``setComplexDeletionTimeForOverwrite``), which spares elements written at ``timestamp``. So an append of [1]
    then ``SET l = [2]`` at one timestamp reads [1, 2], a prepend of [5] then ``INSERT l = [1]`` [5, 1]. Was:
    write.py ``_overwrite`` skipped its same-timestamp refusal for the appended list, ``_merged_at_one_timestamp``
    gave up on every list and the new list was stored alone: [2] and [1]."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, l list<int>)")
    session.execute("UPDATE t USING TIMESTAMP 1000 SET l = l + [1] WHERE k = 1")
    session.execute("UPDATE t USING TIMESTAMP 1000 SET l = [2] WHERE k = 1")
    assert session.execute("SELECT l FROM t WHERE k = 1").one().l == [1, 2]
    session.execute("UPDATE t USING TIMESTAMP 1000 SET l = [5] + l WHERE k = 2")
    session.execute("INSERT INTO t (k, l) VALUES (2, [1]) USING TIMESTAMP 1000")
    assert session.execute("SELECT l FROM t WHERE k = 2").one().l == [5, 1]
    session.execute("UPDATE t USING TIMESTAMP 1000 SET l = l + [3] WHERE k = 3")
    with pytest.raises(InvalidRequest, match="l \\(a non-frozen collection\\) as one cell with one expiry"):
        session.execute("UPDATE t USING TIMESTAMP 1000 AND TTL 100 SET l = [4] WHERE k = 3")
    assert session.execute("SELECT l FROM t WHERE k = 3").one().l == [3]


def test_a_batch_appending_to_a_list_then_writing_it_whole_keeps_both(session: Session) -> None:
    """The statements of a batch share one timestamp, so ``l = l + [1]`` then ``INSERT l = [2]`` is Cassandra's
    element at ``ts`` (appended first, the earlier time-UUID), a tombstone at ``ts - 1`` and an element at ``ts``:
    [1, 2]. Was: the batch stored [2]."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, l list<int>)")
    session.execute("BEGIN UNLOGGED BATCH UPDATE t SET l = l + [1] WHERE k = 1; "
                    "INSERT INTO t (k, l) VALUES (1, [2]); APPLY BATCH")
    assert session.execute("SELECT l FROM t WHERE k = 1").one().l == [1, 2]


def test_a_batch_element_operation_on_a_stored_collection_then_a_whole_write_is_refused(session: Session) -> None:
    """Stored {'z': 0} at an earlier timestamp; a batch ``m = m + {'a': 1}`` then ``m = {'b': 2}``: Cassandra's
    tombstone at ``ts - 1`` removes 'z' and keeps 'a' and 'b'. The emulator's batch holds the map as one cell, with 'z'
    and 'a' together, so it refuses the batch, naming the column. Was: {'a': 1, 'b': 2, 'z': 0} (and a list kept its
    stored elements alike)."""
    session.execute("CREATE TABLE t (k int PRIMARY KEY, m map<text, int>, l list<int>)")
    session.execute("INSERT INTO t (k, m, l) VALUES (1, {'z': 0}, [0]) USING TIMESTAMP 10")
    for write in ("UPDATE t SET m = m + {'a': 1} WHERE k = 1; UPDATE t SET m = {'b': 2} WHERE k = 1",
                  "UPDATE t SET l = l + [1] WHERE k = 1; INSERT INTO t (k, l) VALUES (1, [2])"):
        with pytest.raises(InvalidRequest, match=r"cannot combine, in one BATCH, an element operation on [ml] "):
            session.execute(f"BEGIN UNLOGGED BATCH {write}; APPLY BATCH")
    row = session.execute("SELECT m, l FROM t WHERE k = 1").one()
    assert (dict(row.m), row.l) == ({"z": 0}, [0])
