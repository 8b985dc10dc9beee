"""Migrations give schema changes their own timeout, longer than the data requests' one.

A schema change on Cosmos DB provisions a container, and the driver returns it
only after its schema agreement check: on a busy server that outlasts the data
request timeout. A small TCP proxy in front of the emulator holds back the
answers to the first two schema changes, to show it through the real driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
import uuid
from collections.abc import Iterator

import pytest
from cassandra import OperationTimedOut

from shared.adapters.cassandra.migrations import apply_migrations
from shared.adapters.cassandra.session import connect
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
