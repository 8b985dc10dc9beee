"""Fault injection through the sluice_emulator.faults control table: Cosmos 429s, timeouts, unavailability."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from cassandra import (
    ConsistencyLevel,
    InvalidRequest,
    OperationTimedOut,
    ReadTimeout,
    Unavailable,
    WriteTimeout,
    WriteType,
)
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, Session
from cassandra.policies import FallthroughRetryPolicy
from cassandra.protocol import OverloadedErrorMessage
from cassandra.query import BatchStatement, BatchType, SimpleStatement

from emulators.cassandra.faults import clear_faults, inject_faults
from sluice.launcher import Running

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def s(private_cassandra: Running) -> Iterator[Session]:
    cluster = Cluster(contact_points=[private_cassandra.host], port=private_cassandra.port, protocol_version=4)
    session = cluster.connect()
    session.execute("CREATE KEYSPACE IF NOT EXISTS f WITH replication = {'class': 'SimpleStrategy', "
                    "'replication_factor': 1}")
    session.execute("CREATE TABLE IF NOT EXISTS f.t (k int PRIMARY KEY, v int)")
    session.execute("TRUNCATE sluice_emulator.faults")
    yield session
    session.execute("TRUNCATE sluice_emulator.faults")
    cluster.shutdown()


@pytest.fixture
def fallthrough(private_cassandra: Running, s: Session) -> Iterator[Session]:
    """A session on ``f`` whose retry policy rethrows every error as it came, so the test sees its fields."""
    profile = ExecutionProfile(retry_policy=FallthroughRetryPolicy())
    cluster = Cluster(contact_points=[private_cassandra.host], port=private_cassandra.port, protocol_version=4,
                      execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    yield cluster.connect("f")
    cluster.shutdown()


def _host_error(exc: NoHostAvailable) -> object:
    """The one host's error in ``exc``, once the driver has recorded it.

    With the driver's default retry policy an error moves the request to the next host on
    another thread, and only then does the I/O thread record it in the dict the
    ``NoHostAvailable`` holds (cassandra-driver 3.30, ``ResponseFuture._handle_retry_decision``):
    the caller can see the exception while that dict is still empty.
    """
    deadline = time.monotonic() + 2.0
    while not exc.errors and time.monotonic() < deadline:
        time.sleep(0.005)
    (error,) = exc.errors.values()
    return error


def _overloaded(info: pytest.ExceptionInfo[NoHostAvailable]) -> OverloadedErrorMessage:
    error = _host_error(info.value)
    assert isinstance(error, OverloadedErrorMessage)
    return error


def test_next_n_writes_are_overloaded_with_retry_after(s: Session) -> None:
    s.execute("INSERT INTO sluice_emulator.faults (name, error, count, retry_after_ms, applies_to) "
              "VALUES ('current', 'overloaded', 2, 250, 'writes')")
    for _ in range(2):
        with pytest.raises(NoHostAvailable) as info:  # Overloaded makes the driver try the next host: none left
            s.execute("INSERT INTO f.t (k, v) VALUES (1, 1)")
        message = str(_overloaded(info))
        assert "Request rate is large" in message and re.search(r"RetryAfterMs=250\b", message)
    assert s.execute("SELECT * FROM f.t WHERE k = 1").one() is None  # a refused write changed nothing
    s.execute("INSERT INTO f.t (k, v) VALUES (1, 1)")  # the third succeeds
    row = s.execute("SELECT error, count, remaining, retry_after_ms FROM sluice_emulator.faults").one()
    assert tuple(row) == ("overloaded", 2, 0, 250)


@pytest.mark.parametrize(("error", "statement", "expected"), [
    ("write_timeout", "INSERT INTO f.t (k, v) VALUES (2, 2)", WriteTimeout),
    ("read_timeout", "SELECT * FROM f.t WHERE k = 2", ReadTimeout),
    ("unavailable", "INSERT INTO f.t (k, v) VALUES (2, 2)", Unavailable),
])
def test_timeouts_and_unavailable(s: Session, error: str, statement: str, expected: type[Exception]) -> None:
    """With the default RetryPolicy timeouts surface as such; Unavailable is tried on the next host (none)."""
    s.execute("INSERT INTO sluice_emulator.faults (name, error, count) VALUES ('current', %s, 1)", (error,))
    with pytest.raises((expected, NoHostAvailable)) as info:
        s.execute(statement)
    if isinstance(info.value, NoHostAvailable):
        assert expected is Unavailable
        assert isinstance(_host_error(info.value), Unavailable)
    s.execute(statement)  # only the next one failed


def test_batches_count_as_writes_and_system_tables_are_exempt(s: Session) -> None:
    s.execute("INSERT INTO sluice_emulator.faults (name, error, count, applies_to) "
              "VALUES ('current', 'write_timeout', 5, 'writes')")
    assert s.execute("SELECT key FROM system.local").one().key == "local"
    assert s.execute("SELECT COUNT(*) FROM f.t").one()[0] >= 0  # reads pass
    with pytest.raises(WriteTimeout) as info:
        s.execute("BEGIN UNLOGGED BATCH INSERT INTO f.t (k, v) VALUES (3, 3); APPLY BATCH")
    assert info.value.write_type == WriteType.UNLOGGED_BATCH


def _unlogged_batch(*statements: str) -> BatchStatement:
    batch = BatchStatement(batch_type=BatchType.UNLOGGED)
    for statement in statements:
        batch.add(SimpleStatement(statement))
    return batch


@pytest.mark.parametrize(("statement", "write_type"), [
    (SimpleStatement("INSERT INTO t (k, v) VALUES (10, 1)"), WriteType.SIMPLE),
    (_unlogged_batch("INSERT INTO t (k, v) VALUES (10, 1)", "INSERT INTO t (k, v) VALUES (11, 1)"),
     WriteType.UNLOGGED_BATCH),
    (SimpleStatement("INSERT INTO t (k, v) VALUES (10, 1) IF NOT EXISTS"), WriteType.CAS),
    (SimpleStatement("UPDATE t SET v = 2 WHERE k = 10 IF v = 1"), WriteType.CAS),
    (_unlogged_batch("INSERT INTO t (k, v) VALUES (10, 1) IF NOT EXISTS"), WriteType.CAS),
], ids=["simple", "unlogged_batch", "insert_if_not_exists", "update_if", "conditional_batch"])
def test_a_write_timeout_names_the_write_type_retry_policies_branch_on(
        private_cassandra: Running, fallthrough: Session, statement: SimpleStatement | BatchStatement,
        write_type: int) -> None:
    """Spec 9, Write_timeout <writeType>: UNLOGGED_BATCH for an unlogged batch (BATCH means a logged one whose batch
    log was written) and CAS for a lightweight transaction. Retry policies decide on it: the driver's
    DowngradingConsistencyRetryPolicy retries an UNLOGGED_BATCH, and Sluice's own retries SIMPLE as idempotent,
    which a CAS is not."""
    inject_faults(private_cassandra.host, private_cassandra.port, error="write_timeout", count=1, applies_to="writes")
    with pytest.raises(WriteTimeout) as info:
        fallthrough.execute(statement)
    assert info.value.write_type == write_type


@pytest.mark.parametrize(("error", "statement"), [
    ("read_timeout", "SELECT * FROM t WHERE k = 12"),
    ("unavailable", "SELECT * FROM t WHERE k = 12"),
    ("write_timeout", "INSERT INTO t (k, v) VALUES (12, 1)"),
])
def test_an_injected_error_carries_the_consistency_of_the_request(private_cassandra: Running, fallthrough: Session,
                                                                  error: str, statement: str) -> None:
    """Spec 9: the <cl> of Read_timeout, Unavailable and Write_timeout is the level of the request. Retry policies
    answer (RETRY, consistency) with it, so a wrong level would send the retry out at another one."""
    inject_faults(private_cassandra.host, private_cassandra.port, error=error, count=1)
    with pytest.raises((ReadTimeout, Unavailable, WriteTimeout)) as info:
        fallthrough.execute(SimpleStatement(statement, consistency_level=ConsistencyLevel.LOCAL_QUORUM))
    assert info.value.consistency == ConsistencyLevel.LOCAL_QUORUM


def test_a_conditional_write_times_out_at_its_serial_consistency(private_cassandra: Running,
                                                                fallthrough: Session) -> None:
    """As Cassandra reports a timed-out Paxos round: write type CAS at the request's serial consistency."""
    inject_faults(private_cassandra.host, private_cassandra.port, error="write_timeout", count=1)
    statement = SimpleStatement("INSERT INTO t (k, v) VALUES (13, 1) IF NOT EXISTS",
                                serial_consistency_level=ConsistencyLevel.LOCAL_SERIAL)
    with pytest.raises(WriteTimeout) as info:
        fallthrough.execute(statement)
    assert (info.value.write_type, info.value.consistency) == (WriteType.CAS, ConsistencyLevel.LOCAL_SERIAL)


def test_ratio_fails_about_that_fraction(s: Session) -> None:
    s.execute("INSERT INTO sluice_emulator.faults (name, error, ratio, applies_to) "
              "VALUES ('current', 'overloaded', 0.5, 'all')")
    ps = s.prepare("INSERT INTO f.t (k, v) VALUES (?, ?)")
    failures = 0
    for i in range(200):
        try:
            s.execute(ps, (i, i))
        except NoHostAvailable as exc:
            assert isinstance(_host_error(exc), OverloadedErrorMessage)
            failures += 1
    assert 60 <= failures <= 140
    s.execute("DELETE FROM sluice_emulator.faults WHERE name = 'current'")
    for i in range(20):
        s.execute(ps, (i, i))


def test_helpers_and_bad_settings(private_cassandra: Running, s: Session) -> None:
    inject_faults(private_cassandra.host, private_cassandra.port, error="read_timeout", count=1, applies_to="reads")
    s.execute("INSERT INTO f.t (k, v) VALUES (5, 5)")
    with pytest.raises(ReadTimeout):
        s.execute("SELECT * FROM f.t WHERE k = 5")
    inject_faults(private_cassandra.host, private_cassandra.port, error="overloaded", ratio=1.0)
    clear_faults(private_cassandra.host, private_cassandra.port)
    s.execute("SELECT * FROM f.t WHERE k = 5")
    with pytest.raises(InvalidRequest, match="unknown fault error 'boom'"):
        s.execute("INSERT INTO sluice_emulator.faults (name, error, count) VALUES ('current', 'boom', 1)")
    with pytest.raises(InvalidRequest, match="exactly one of count"):
        s.execute(
            "INSERT INTO sluice_emulator.faults (name, error, count, ratio) VALUES ('current', 'overloaded', 1, 0.5)"
        )
    with pytest.raises(RuntimeError, match="ratio must be between 0 and 1"):
        inject_faults(private_cassandra.host, private_cassandra.port, ratio=2.0)


def test_prepared_control_statement(s: Session) -> None:
    ps = s.prepare("INSERT INTO sluice_emulator.faults (name, error, count) VALUES ('current', ?, ?)")
    s.execute(ps, ("write_timeout", 1))
    with pytest.raises((WriteTimeout, OperationTimedOut)):
        s.execute("INSERT INTO f.t (k, v) VALUES (6, 6)")


def test_a_delayed_answer_arrives_late_and_its_write_has_landed(s: Session) -> None:
    s.execute("INSERT INTO sluice_emulator.faults (name, error, count, applies_to, delay_ms) "
              "VALUES ('current', 'delay', 1, 'writes', 400)")
    started = time.perf_counter()
    s.execute("INSERT INTO f.t (k, v) VALUES (7, 7)")
    assert time.perf_counter() - started >= 0.4
    started = time.perf_counter()
    s.execute("INSERT INTO f.t (k, v) VALUES (8, 8)")  # count 1: the next write is answered at once
    assert time.perf_counter() - started < 0.4
    row = s.execute("SELECT error, remaining, delay_ms FROM sluice_emulator.faults").one()
    assert tuple(row) == ("delay", 0, 400)


def test_a_client_that_times_out_on_a_delayed_write_finds_it_applied(s: Session) -> None:
    """The ambiguity of a real timeout: the client gave up, the server had written (a retry must be idempotent)."""
    s.execute("INSERT INTO sluice_emulator.faults (name, error, ratio, applies_to, delay_ms) "
              "VALUES ('current', 'delay', 1.0, 'writes', 2000)")
    with pytest.raises(OperationTimedOut):
        s.execute("INSERT INTO f.t (k, v) VALUES (9, 9)", timeout=0.3)
    # Other requests on the same connection are answered meanwhile (reads are not delayed).
    started = time.perf_counter()
    assert s.execute("SELECT v FROM f.t WHERE k = 9").one().v == 9
    assert time.perf_counter() - started < 1.0


def test_delay_needs_a_delay_and_only_delay_takes_one(private_cassandra: Running, s: Session) -> None:
    with pytest.raises(InvalidRequest, match="error 'delay' needs delay_ms from 1 to"):
        s.execute("INSERT INTO sluice_emulator.faults (name, error, count) VALUES ('current', 'delay', 1)")
    with pytest.raises(RuntimeError, match="delay_ms applies to error 'delay' only"):
        inject_faults(private_cassandra.host, private_cassandra.port, error="overloaded", delay_ms=100)
    inject_faults(private_cassandra.host, private_cassandra.port, error="delay", count=1, applies_to="reads",
                  delay_ms=300)
    started = time.perf_counter()
    s.execute("SELECT * FROM f.t WHERE k = 1")
    assert time.perf_counter() - started >= 0.3
