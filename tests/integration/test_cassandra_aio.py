"""The asyncio Cassandra reader against the emulator: the driver's futures awaited, concurrent point reads coalesced.

Coalescing must be invisible in the answers: each caller gets its own row (or
``None``), and a failure names each caller's own device.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared.adapters.cassandra.aio import CassandraAsyncEventReader
from shared.adapters.cassandra.reader import CassandraEventReader
from shared.exceptions import DependencyUnavailable
from tests.integration import test_changefeed as cf

session, keyspace, store = cf.session, cf.keyspace, cf.store
NOW = datetime.now(UTC).replace(microsecond=0)


class CountingReader(CassandraEventReader):
    """The real reader, counting the requests it sends per statement."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[str, int]] = []

    def start(self, name, params, *, timeout=None):
        self.sent.append((name, len(params[0]) if name.endswith("_in") else 1))
        return super().start(name, params, timeout=timeout)


@pytest.mark.timeout(60)
def test_concurrent_point_reads_share_one_request_and_each_gets_its_own_answer(session, keyspace, store) -> None:
    events = [cf.make_event(f"co-{i}", NOW - timedelta(minutes=i)) for i in range(40)]
    store.write(events)
    counting = CountingReader(session, keyspace, timeout=5)
    reader = CassandraAsyncEventReader(counting, batch_keys=32)

    async def scenario():
        assert (await reader.latest("co-0")).event_id == events[0].event_id  # alone: the point read
        devices = [f"co-{i}" for i in range(40)] + ["nobody", "co-3"]
        latest = await asyncio.gather(*(reader.latest(d) for d in devices))
        ids = [events[0].event_id, events[5].event_id, uuid.uuid4()]
        by_id = await asyncio.gather(*(reader.event(i) for i in ids))
        return latest, by_id

    latest, by_id = asyncio.run(scenario())
    assert [e.event_id for e in latest[:40]] == [e.event_id for e in events]
    assert latest[40] is None and latest[41].event_id == events[3].event_id
    assert [e.event_id if e else None for e in by_id] == [events[0].event_id, events[5].event_id, None]
    # A latest state is the device's position (device_latest), then its event (events_by_id), each read coalesced.
    # 41 distinct devices asked in one turn: the first goes at once (nothing in flight), the 40 others while it
    # is in flight, as 32 + 8 keys in two requests; of the 3 events, the first alone and the others together
    positions = [sent for sent in counting.sent if sent[0].startswith("latest")]
    assert positions == [("latest", 1), ("latest", 1), ("latest_in", 32), ("latest_in", 8)]
    reads = [sent for sent in counting.sent if sent[0].startswith("event")]
    assert counting.sent[:2] == [("latest", 1), ("event", 1)] and reads[-2:] == [("event", 1), ("event_in", 2)]
    # The gathered states' 40 events (co-3's twice at most) in a few requests: how they fall into requests
    # depends on when their positions come back
    states = reads[1:-2]
    assert 40 <= sum(n for _, n in states) <= 41 and len(states) <= 6, states


@pytest.mark.timeout(60)
def test_events_by_id_are_read_together_in_requests_of_at_most_batch_keys_ids(session, keyspace, store) -> None:
    """``events(ids)``: the current copies of many events (a critical miss checks the rows it read) in one round of
    ``IN`` requests of at most ``batch_keys`` ids, sent at once; an id asked twice is read once, one not stored is
    left out."""
    events = [cf.make_event(f"many-{i % 3}", NOW - timedelta(minutes=i)) for i in range(70)]
    store.write(events)
    counting = CountingReader(session, keyspace, timeout=5)
    reader = CassandraAsyncEventReader(counting, batch_keys=32)
    unknown = uuid.uuid4()

    async def scenario():
        await reader.event(events[0].event_id)  # connect and prepare first
        counting.sent.clear()
        found = await reader.events([*(e.event_id for e in events), events[1].event_id, unknown])
        one = await reader.events([events[2].event_id])
        return found, one, await reader.events([])

    found, one, none = asyncio.run(scenario())
    assert set(found) == {e.event_id for e in events}  # the unknown id left out
    assert [(found[e.event_id].device_id, found[e.event_id].event_time) for e in events] == [
        (e.device_id, e.timestamp) for e in events]
    assert list(one) == [events[2].event_id] and none == {}
    assert sorted(counting.sent) == sorted([("event_in", 32), ("event_in", 32), ("event_in", 7), ("event", 1)])


@pytest.mark.timeout(60)
def test_a_failed_shared_request_names_each_callers_device(cassandra_emulator, session, keyspace, store) -> None:
    from emulators.cassandra.faults import clear_faults, inject_faults

    store.write([cf.make_event("f-1", NOW)])
    reader = CassandraAsyncEventReader(CassandraEventReader(session, keyspace, timeout=2))

    async def scenario():
        await reader.latest("f-1")  # prepared before the fault
        inject_faults(cassandra_emulator.host, cassandra_emulator.port, error="overloaded", ratio=1.0,
                      retry_after_ms=1, applies_to="reads")
        try:
            return await asyncio.gather(*(reader.latest(d) for d in ("f-1", "f-2", "f-3")), return_exceptions=True)
        finally:
            clear_faults(cassandra_emulator.host, cassandra_emulator.port)

    answers = asyncio.run(scenario())
    for device, answer in zip(("f-1", "f-2", "f-3"), answers, strict=True):
        assert isinstance(answer, DependencyUnavailable) and answer.dependency == "cassandra"
        assert repr(device) in str(answer) and "Overloaded" in str(answer)


@pytest.mark.timeout(60)
def test_reads_leave_the_garbage_collector_only_the_drivers_metadata_types(session, keyspace, store) -> None:
    """A lookup's read is freed by reference counting: no row class per result, no future kept by its timer.

    Cyclic garbage is what fills the worker's young generation until one collection frees it all at once,
    a pause every concurrent lookup waits out (see ``shared.adapters.cassandra.query.release``). What is left
    is the driver's: it parses every response's column metadata (it never asks the server to skip it) and
    builds a new class for each collection type there, ``map<text, double>`` and ``map<text, text>``.
    """
    import gc

    events = [cf.make_event(f"gc-{i}", NOW - timedelta(minutes=i)) for i in range(40)]
    store.write(events)
    counting = CountingReader(session, keyspace, timeout=5)
    reader = CassandraAsyncEventReader(counting, batch_keys=8)
    devices = [f"gc-{i}" for i in range(40)]

    async def scenario() -> collections.Counter[str]:
        await reader.latest("gc-0")  # connect and prepare first
        await asyncio.gather(*(reader.latest(d) for d in devices[:9]))  # and the IN read
        counting.sent.clear()
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for device in devices:  # alone: one point read each
                assert (await reader.latest(device)) is not None
            found = await asyncio.gather(*(reader.latest(d) for d in devices))  # shared IN reads
            assert all(found)
            gc.collect()
            return collections.Counter(type(o).__qualname__ for o in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()

    garbage = asyncio.run(scenario())
    requests = len(counting.sent)
    assert requests > 40  # the point reads, then the IN reads
    _assert_only_the_drivers_leftovers(garbage, requests)


def _assert_only_the_drivers_leftovers(garbage: collections.Counter[str], requests: int) -> None:
    """No row and no request of ours in the garbage: a request not released leaves itself and its timer there.

    The driver's own background work may overlap the window: a request or two (control connection,
    heartbeats), and the column types it builds whenever it parses metadata (every response's, and the
    schema of any keyspace another test of this process changes), which is why they are not counted.
    """
    assert garbage["Row"] == 0 and garbage["BoundStatement"] == 0, garbage
    assert garbage["ResponseFuture"] <= 2 and garbage["Timer"] <= 2 < requests, garbage


@pytest.mark.timeout(60)
def test_the_pipelines_reads_leave_the_garbage_collector_only_the_drivers_metadata_types(session, keyspace,
                                                                                         store) -> None:
    """The change feed's page, the readers' fan-out over partitions and their all-pages reads (a partition's
    further pages too): the rows of a page are freed with it, not kept by a request waiting for the collector."""
    import gc

    from shared.adapters.cassandra.feed import CosmosChangeFeed
    from shared.adapters.cassandra.query import Queries
    from shared.adapters.cassandra.reader import EVENT_SELECT
    from shared.ports.feed import FeedPosition

    devices = [f"pl-{i}" for i in range(6)]
    store.write([cf.make_event(d, NOW - timedelta(seconds=n)) for d in devices for n in range(5)])
    table = f"SELECT {EVENT_SELECT} FROM {{ks}}.device_latest"
    queries = Queries(session, keyspace, {"latest": table + " WHERE device_id = ?", "all": table}, timeout=5,
                      fetch_size=2)
    feed = CosmosChangeFeed(session, keyspace, page_size=7, lookback_seconds=3600)

    def read_all() -> int:
        page = feed.read_page(FeedPosition(start_time=NOW - timedelta(hours=1)), now=NOW, timeout=5)
        fanned = queries.fan_out("latest", [(d,) for d in devices], "the latest states", concurrency=4)
        every = queries.rows("all", (), "every latest state")  # three pages of two
        paged = queries.fan_out_each("all", [()], "every latest state", concurrency=1, by_page=True)  # the same
        return len(page.events) + sum(len(rows) for rows in fanned) + len(every) + sum(len(p) for p in paged)

    assert read_all() == 7 + 6 + 6 + 6  # warm: prepared, connected
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(5):
            read_all()
        gc.collect()
        garbage = collections.Counter(type(o).__qualname__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    _assert_only_the_drivers_leftovers(garbage, requests=5 * (1 + len(devices) + 3 + 3))  # a page, 6 reads, 3 pages
                                                                                        # twice


class CountingSession:
    """A real session, counting the requests sent through it."""

    def __init__(self, session) -> None:
        self._session = session
        self.sent = 0

    def prepare(self, cql):
        return self._session.prepare(cql)

    def execute_async(self, *args, **kwargs):
        self.sent += 1
        return self._session.execute_async(*args, **kwargs)


@pytest.mark.timeout(60)
def test_a_partitions_next_page_is_asked_for_before_this_one_is_handed_over(session, keyspace, store) -> None:
    """The store reads page n + 1 while the caller works on page n; the last page asks for nothing more."""
    from shared.adapters.cassandra.query import Queries
    from shared.adapters.cassandra.reader import EVENT_SELECT

    store.write([cf.make_event(f"pf-{i}", NOW) for i in range(5)])
    counting = CountingSession(session)
    queries = Queries(lambda: counting, keyspace, {"all": f"SELECT {EVENT_SELECT} FROM {{ks}}.device_latest"},
                      timeout=5, fetch_size=2)
    seen = [(len(page), counting.sent) for page in queries.fan_out_each("all", [()], "every latest state",
                                                                         concurrency=1, by_page=True)]
    assert seen == [(2, 2), (2, 3), (1, 3)]
    whole = queries.fan_out("all", [()], "every latest state", concurrency=1)
    assert sorted(r.device_id for r in whole[0]) == [f"pf-{i}" for i in range(5)] and counting.sent == 6


@pytest.mark.timeout(60)
def test_a_read_the_server_answers_in_short_pages_returns_every_row(session, keyspace, store) -> None:
    """A server may end a page before the fetch size and hand back a paging state (Cosmos DB does, by its per-page
    budget, even under ``LIMIT``). The lookups' critical read must fetch on until the last page: one page taken for
    the whole answer would serve, and cache as complete, a short list. A fetch size of 2 makes the emulator page
    the same way."""
    events = [cf.make_event("short-pages", NOW - timedelta(minutes=i), severity="critical") for i in range(5)]
    store.write(events)
    reader = CassandraAsyncEventReader(CassandraEventReader(session, keyspace, timeout=5))
    default = session.default_fetch_size
    session.default_fetch_size = 2
    try:
        found = asyncio.run(reader.critical("short-pages", since=None, limit=5))
        newest_three = asyncio.run(reader.critical("short-pages", since=None, limit=3))
    finally:
        session.default_fetch_size = default
    assert [e.event_id for e in found] == [e.event_id for e in events]
    assert [e.event_id for e in newest_three] == [e.event_id for e in events[:3]]


@pytest.mark.timeout(60)
def test_an_answer_after_the_loop_closed_is_dropped_quietly(cassandra_emulator, session, keyspace, store,
                                                             caplog) -> None:
    # rows() hands the driver's outcome to the loop with call_soon_threadsafe on the driver's I/O thread. A read
    # still in flight when its loop closes (a timed-out request at shutdown, each asyncio.run) used to raise
    # RuntimeError('Event loop is closed') there: the driver logged two ERROR tracebacks ("Unexpected exception
    # while handling result in ResponseFuture", "Callback handler errored"). The late answer has no one to go to.
    from emulators.cassandra.faults import clear_faults, inject_faults

    store.write([cf.make_event("closed-loop-1", NOW)])
    reader = CassandraAsyncEventReader(CassandraEventReader(session, keyspace, timeout=5))
    assert asyncio.run(reader.latest("closed-loop-1")) is not None  # connected and prepared

    async def abandoned() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.latest("closed-loop-1"), 0.1)

    inject_faults(cassandra_emulator.host, cassandra_emulator.port, error="delay", delay_ms=400, ratio=1.0,
                  applies_to="reads")
    try:
        with caplog.at_level(logging.WARNING, logger="cassandra"):
            asyncio.run(abandoned())  # the loop closes with the read still in flight
            time.sleep(1.0)  # the delayed answer arrives on the driver's thread
    finally:
        clear_faults(cassandra_emulator.host, cassandra_emulator.port)
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records
              if r.name.startswith("cassandra") and r.levelno >= logging.ERROR]
    assert errors == [], errors


def test_a_failed_coalesced_read_reaches_its_callers_and_ends_its_task_quietly(caplog) -> None:
    # A coalesced read runs in a task nobody awaits. A failure other than the driver's (here DependencyUnavailable
    # from connecting: the Cassandra password's vault down) was handed to the waiters, then re-raised in that task,
    # so asyncio logged "Task exception was never retrieved" with a traceback per batch on top of the 503s.
    def vault_down():
        raise DependencyUnavailable("keyvault", "reading secret cassandra-password failed")

    reader = CassandraAsyncEventReader(CassandraEventReader(vault_down, "ks_vault_down", timeout=1))

    async def scenario() -> list[object]:
        # the first goes at once, the other two are coalesced into one IN read run by a task
        return await asyncio.gather(*(reader.latest(d) for d in ("va-1", "va-2", "va-3")), return_exceptions=True)

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        answers = asyncio.run(scenario())
        gc.collect()  # a task's unretrieved exception is logged when the task is collected
    assert all(isinstance(answer, DependencyUnavailable) for answer in answers), answers
    errors = [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert errors == [], errors


@pytest.mark.timeout(120)
def test_first_reads_on_a_hung_cassandra_end_within_the_read_timeout() -> None:
    """docs/api.md (503 row): a lookup whose Cassandra does not answer gets its 503 after about the lookup timeout.

    The session is connected (as when another function of the worker connected it), then Cassandra stops answering
    (SIGSTOP) before the reads are prepared. The driver's PREPARE waits for the session's default timeout (10 s),
    not the read's (1 s here), and the first reads used to queue for the statements' lock, each preparing again:
    three concurrent first reads answered after about 10 s and 20 s. They share one preparation now, waiting for
    it no longer than their timeout."""
    import os
    import signal

    from shared.adapters.cassandra.migrations import apply_migrations
    from shared.adapters.cassandra.session import connect
    from tests.fixtures.cassandra import start_cassandra_emulator

    private = start_cassandra_emulator()
    try:
        ks = f"ks_{uuid.uuid4().hex[:12]}"
        settings = cf.cassandra_settings(private, ks)
        hung_session = connect(settings)
        apply_migrations(hung_session, settings)
        reader = CassandraAsyncEventReader(CassandraEventReader(hung_session, ks, timeout=1.0))

        async def timed(device: str) -> tuple[float, object]:
            started = time.monotonic()
            try:
                outcome: object = await asyncio.wait_for(reader.latest(device), 60)
            except BaseException as exc:
                outcome = exc
            return time.monotonic() - started, outcome

        async def three_first_reads() -> list[tuple[float, object]]:
            return await asyncio.gather(*(timed(f"hung-{i}") for i in range(3)))

        os.kill(private.process.pid, signal.SIGSTOP)
        try:
            answers = asyncio.run(three_first_reads())
        finally:
            os.kill(private.process.pid, signal.SIGCONT)
        hung_session.cluster.shutdown()
    finally:
        private.stop()
    assert all(isinstance(outcome, DependencyUnavailable) for _, outcome in answers), answers
    took = sorted(round(seconds, 1) for seconds, _ in answers)
    assert took[-1] < 3.0, f"first reads on a hung Cassandra took {took} s (read timeout 1 s)"

