"""Migrations give schema changes their own timeout, longer than the data requests' one, and two runners can
apply them at once.

A schema change on Cosmos DB provisions a container, and the driver returns it
only after its schema agreement check: on a busy server that outlasts the data
request timeout. A small TCP proxy in front of the emulator holds back the
answers to the first two schema changes, to show it through the real driver.

Two migrate runs at once (two deployments' Jobs, a CLI run beside the Job) are
made deterministic by a session wrapper that runs the second one to the end at
the moment the first one has made a check and not yet acted on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cassandra import OperationTimedOut

from shared.adapters.cassandra.migrations import apply_migrations
from shared.adapters.cassandra.session import connect
from shared.exceptions import ConfigurationError
from shared.settings import CassandraSettings
from sluice.launcher import Running

pytestmark = pytest.mark.timeout(120)

RESULT, SCHEMA_CHANGE = 0x08, 0x0005
HOLD_SECONDS = 3.5
HELD = 2  # the plain DDL request, then the migration's first statement


class SlowSchemaChanges:
    """Forwards CQL frames both ways; the first ``HELD`` schema-change answers reach the client late."""

    def __init__(self, upstream: Running) -> None:
        self.upstream = upstream
        self.held = 0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def serve() -> None:
            server = await asyncio.start_server(self._client, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            async with server:
                await server.serve_forever()

        async def end_connections() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.task = self.loop.create_task(serve())
        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(self.task)
        # The connections' tasks end here, on their loop: left pending, they were collected later, in another
        # test, with the loop closed ("Event loop is closed").
        self.loop.run_until_complete(end_connections())
        self.loop.close()

    async def _client(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        server_in, server_out = await asyncio.open_connection(self.upstream.host, self.upstream.port)
        await asyncio.gather(self._pipe(client_in, server_out, hold=False),
                             self._pipe(server_in, client_out, hold=True), return_exceptions=True)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, hold: bool) -> None:
        try:
            while True:
                header = await source.readexactly(9)
                body = await source.readexactly(struct.unpack(">i", header[5:9])[0])
                if (hold and self.held < HELD and header[4] == RESULT
                        and body[:4] == struct.pack(">i", SCHEMA_CHANGE)):
                    self.held += 1
                    await asyncio.sleep(HOLD_SECONDS)
                sink.write(header + body)
                await sink.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # one side closed: close the other
        finally:
            sink.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(10)


@pytest.fixture
def slow(cassandra_emulator: Running) -> Iterator[SlowSchemaChanges]:
    proxy = SlowSchemaChanges(cassandra_emulator)
    yield proxy
    proxy.stop()


def test_migrations_outlast_a_schema_change_slower_than_the_request_timeout(slow: SlowSchemaChanges) -> None:
    settings = CassandraSettings(hosts=["127.0.0.1"], port=slow.port, keyspace=f"ks_{uuid.uuid4().hex[:12]}",
                                 request_timeout_seconds=1.5)
    session = connect(settings, keyspace="system")
    try:
        # The proxy does hold schema changes past the data timeout: a plain DDL request times out.
        with pytest.raises(OperationTimedOut):
            session.execute(f"CREATE KEYSPACE IF NOT EXISTS {settings.keyspace}_plain WITH replication = "
                            "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        applied = apply_migrations(session, settings)
        assert applied and slow.held == HELD
        tables = {row.table_name for row in session.execute(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (settings.keyspace,))}
        assert {"events_by_id", "device_latest", "schema_migrations"} <= tables
        assert apply_migrations(session, settings) == []
    finally:
        session.cluster.shutdown()


def test_a_column_migration_applies_where_the_table_has_the_column_already(cassandra_emulator: Running) -> None:
    """A migration that adds a column (``feed_state.noted_until``) adds it only where the table lacks it: on Cosmos
    DB, Bicep creates the tables from ``infra/cassandra-tables.json`` with every column before ``sluice migrate``
    records the versions, and a run that stopped after the ``ALTER`` but before recording its version runs again."""
    settings = CassandraSettings(hosts=["127.0.0.1"], port=cassandra_emulator.port,
                                 keyspace=f"ks_{uuid.uuid4().hex[:12]}")
    session = connect(settings, keyspace="system")
    try:
        assert 4 in apply_migrations(session, settings)
        session.execute(f"DELETE FROM {settings.keyspace}.schema_migrations WHERE version = 4")
        assert apply_migrations(session, settings) == [4]  # the column is there already: nothing to add, no error
        columns = {row.column_name for row in session.execute(
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = %s AND table_name = 'feed_state'",
            (settings.keyspace,))}
        assert "noted_until" in columns
    finally:
        session.cluster.shutdown()


class SecondRunnerAfter:
    """The first runner's real driver session; right after the first statement containing ``marker`` (run before
    it when ``before``), the second runner's ``migrate`` runs to the end. One interleaving of two runners started
    at once, made deterministic; every statement is executed by the real driver against the emulator."""

    def __init__(self, session: Any, marker: str, second_runner: Callable[[], Any], *, before: bool = False) -> None:
        self._session = session
        self._marker = marker
        self._second_runner = second_runner
        self._before = before
        self.fired = False

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        if self.fired or self._marker not in str(query):
            return self._session.execute(query, *args, **kwargs)
        self.fired = True
        if self._before:
            self._second_runner()
            return self._session.execute(query, *args, **kwargs)
        rows = list(self._session.execute(query, *args, **kwargs))  # the first runner has its answer
        self._second_runner()
        return rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def test_two_runners_applying_a_column_migration_at_once_both_succeed(cassandra_emulator: Running) -> None:
    """A column migration (version 4, ``feed_state.noted_until``) checks ``system_schema.columns`` and then adds
    the column; when a second runner added it in between, the first runner's ``ALTER TABLE ... ADD`` is refused
    (the column exists) and the first runner finds the column there with its type, so both runs succeed and
    ``migrate`` stays safe to run on every deployment, however many run."""
    settings = CassandraSettings(hosts=["127.0.0.1"], port=cassandra_emulator.port,
                                 keyspace=f"ks_{uuid.uuid4().hex[:12]}")
    first_session = connect(settings, keyspace="system")
    second_session = connect(settings, keyspace="system")
    try:
        # Versions 1-3 are in place (an earlier release); this release brings version 4, the column.
        assert 4 in apply_migrations(first_session, settings)
        first_session.execute(f"DELETE FROM {settings.keyspace}.schema_migrations WHERE version = 4")
        first_session.execute(f"DROP TABLE {settings.keyspace}.feed_state")
        first_session.execute(f"""CREATE TABLE {settings.keyspace}.feed_state (
            name text PRIMARY KEY, start_time timestamp, paging_state blob, watermark timestamp,
            version bigint, updated_at timestamp)""")

        second: list[list[int]] = []
        racing = SecondRunnerAfter(first_session, "system_schema.columns",
                                   lambda: second.append(apply_migrations(second_session, settings)))
        first = apply_migrations(racing, settings)  # type: ignore[arg-type]

        assert racing.fired and second == [[4]]
        assert first == [4]  # its version row is written once its step is done: the column is there
        assert apply_migrations(first_session, settings) == []
    finally:
        first_session.cluster.shutdown()
        second_session.cluster.shutdown()


def test_two_first_runs_with_different_layouts_record_one_and_refuse_the_other(cassandra_emulator: Running) -> None:
    """The first migration records the time-bucket layout; two first runs started at once with different layouts
    must not both pass (the second write would replace the first, and rows already written by the first layout's
    settings would be hidden from the window scans). The layout is written only if none is recorded, so the run
    whose write comes second reads the other's layout back and is refused."""
    keyspace = f"ks_{uuid.uuid4().hex[:12]}"
    first_settings = CassandraSettings(hosts=["127.0.0.1"], port=cassandra_emulator.port, keyspace=keyspace,
                                       shards=4)
    second_settings = CassandraSettings(hosts=["127.0.0.1"], port=cassandra_emulator.port, keyspace=keyspace,
                                        shards=8)
    first_session = connect(first_settings, keyspace="system")
    second_session = connect(second_settings, keyspace="system")
    try:
        second: list[list[int]] = []
        racing = SecondRunnerAfter(first_session, f"INSERT INTO {keyspace}.sluice_meta", before=True,
                                   second_runner=lambda: second.append(apply_migrations(second_session,
                                                                                        second_settings)))
        with pytest.raises(ConfigurationError, match='"shards": 8'):
            apply_migrations(racing, first_settings)  # type: ignore[arg-type]

        assert racing.fired and second and 1 in second[0]
        with pytest.raises(ConfigurationError):
            apply_migrations(first_session, first_settings)
        assert apply_migrations(second_session, second_settings) == []
    finally:
        first_session.cluster.shutdown()
        second_session.cluster.shutdown()
