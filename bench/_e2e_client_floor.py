"""The worker's part of ``bench e2e``, done by the raw clients alone: their CPU per event.

``python -m bench._e2e_client_floor --hub H --events N --batch B`` (the stack's settings ``Values``
as JSON in ``CLIENT_FLOOR_VALUES``, with the Cassandra port of the emulator itself, and the Event
Hubs connection string in ``CLIENT_FLOOR_EVENTHUB``, so both stay off the command line).

It receives the first N events of every partition of the hub and parses them as ingest does (not
timed), then does, once per event, the I/O the pipeline's worker does for it, with the clients'
own APIs and nothing of the pipeline around them. For each part it times this process's CPU
(every thread: the cassandra-driver's I/O thread included), around the client calls only;
whatever a part sends is built before the clock:

* **writes**: the rows ingest writes for the events (every table, in the unlogged batches
  ``CassandraEventStore`` plans, their values serialized beforehand), sent with the driver's
  ``execute_concurrent`` at the write concurrency, into a keyspace of its own;
* **feed**: the Cosmos DB change feed of ``events_by_id`` from the start, a page of the change
  feed's size at a time, rows decoded by the driver (what the change feed reads);
* **windows**: every ``events_by_time_bucket`` partition holding the events, each read once with
  enrichment's columns, page size and concurrency (``execute_concurrent_with_args``);
* **redis**: for each page of the feed, the commands the change feed sends for it (each device's
  newest event, the critical ones, and the lookup-cached copy of every other one) in one pipeline per
  page, and the second pipelines the replies call for, as the change feed does (here ``latest``
  creating the key of each device the first time it appears: ``bench.cache_sync``'s raw side), under
  a key prefix of its own;
* **postgres**: one binary ``COPY`` of the events' enriched rows into a temporary table shaped
  like ``enriched_events``.

So it is the clients' share of the worker's work, and what the worker does beyond it is the
pipeline's own Python: decoding and validating the bodies, serializing the rows' values (the
driver's own ``bind`` would cost several times the pipeline's serializer: ``bench ingest``),
the domain objects, the change feed's documents, the late-event scan, the audit ledger, the
change feed's positions, enrichment's figures and ledger, telemetry. The Event Hubs SDK's
part is measured by ``bench._e2e_sdk_floor``.

It prints one JSON line: the events, per part the CPU seconds and what it handled (requests,
rows, commands), and this process's CPU per second while idle, which every part carries.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from bench._e2e_cpu import process_cpu

if TYPE_CHECKING:
    import psycopg
    from azure.eventhub import EventData
    from azure.eventhub.aio import PartitionContext
    from cassandra.cluster import Session

    from shared.adapters.redis.client import Client
    from shared.domain.events import Event, RawRecord
    from shared.settings import CassandraSettings, Settings


class PartFigures(TypedDict):
    """One part's CPU seconds and how many ``unit`` it handled."""

    cpu: float
    count: int
    unit: str


class ClientFloor(TypedDict):
    """The JSON line :func:`main` prints (what ``bench e2e`` reads back)."""

    events: int
    parts: dict[str, PartFigures]
    idle_cpu_per_s: float
    seconds: float


class FloorProbe(Protocol):
    """What the floor uses of :class:`sluice.delivery.Probe`: the stack's settings and its clients."""

    settings: Settings

    @property
    def session(self) -> Session: ...

    @property
    def redis(self) -> Client: ...

    def pg(self) -> psycopg.Connection: ...

    def close(self) -> None: ...


class Timings:
    """Per part, CPU seconds and what it handled (requests, rows, commands); :meth:`part` times a block."""

    def __init__(self) -> None:
        self.figures: dict[str, PartFigures] = {}

    @contextmanager
    def part(self, name: str, unit: str) -> Iterator[PartFigures]:
        figures = self.figures.setdefault(name, {"cpu": 0.0, "count": 0, "unit": unit})
        gc.collect()  # what earlier parts left is not this part's
        began = process_cpu()
        try:
            yield figures
        finally:
            figures["cpu"] += process_cpu() - began


async def receive(connection: str, hub: str, events: int, timeout: float) -> list[RawRecord]:
    """The first ``events`` events of the hub, from the start of every partition, as ingest's records."""
    from azure.eventhub.aio import EventHubConsumerClient

    from shared.domain.events import EventMetadata, RawRecord

    records: list[RawRecord] = []
    done = asyncio.Event()

    async def on_batch(context: PartitionContext, batch: list[EventData]) -> None:
        for event in batch:
            records.append(RawRecord(event.body_as_str(encoding="utf-8").encode("utf-8"),
                                     EventMetadata(partition_id=context.partition_id, offset=str(event.offset),
                                                   sequence_number=event.sequence_number,
                                                   enqueued_time=event.enqueued_time)))
        if len(records) >= events:
            done.set()

    client = EventHubConsumerClient.from_connection_string(connection, consumer_group="$Default", eventhub_name=hub)
    async with client:
        task = asyncio.create_task(client.receive_batch(on_event_batch=on_batch, max_batch_size=1000,
                                                        starting_position="-1"))
        try:
            await asyncio.wait_for(done.wait(), timeout=timeout)
        except TimeoutError:
            raise SystemExit(f"received {len(records)} of {events} events in {timeout:.0f}s") from None
        finally:
            task.cancel()
    return records[:events]


def floor_settings(probe: FloorProbe) -> CassandraSettings:
    """The stack's Cassandra settings with a keyspace of the floor's own."""
    cassandra = probe.settings.cassandra
    return cassandra.model_copy(update={"keyspace": f"{cassandra.keyspace}_floor"})


def create_keyspace(probe: FloorProbe) -> None:
    """The floor's keyspace, made before anything is timed, and the driver's schema refresh after it done.

    The driver refreshes its schema metadata on every schema change event, on its own threads and
    a while after the change: CPU of this process that would otherwise land in whatever is timed then.
    """
    from shared.adapters.cassandra.migrations import apply_migrations

    apply_migrations(probe.session, floor_settings(probe))
    time.sleep(3.0)  # past the driver's debounce of schema events (2 s)
    probe.session.cluster.refresh_schema_metadata()


def idle(seconds: float) -> float:
    """This process's CPU seconds per second while it waits: the background that every part carries."""
    began = process_cpu()
    time.sleep(seconds)
    return (process_cpu() - began) / seconds


def writes(probe: FloorProbe, events: list[Event], batch: int, timings: Timings) -> None:
    """Ingest's rows, planned (batched and serialized) by the event store, sent by ``execute_concurrent``."""
    from cassandra.concurrent import execute_concurrent

    from shared.adapters.cassandra.event_store import CassandraEventStore
    settings = probe.settings
    floor = floor_settings(probe)
    store = CassandraEventStore(probe.session, floor, settings.rules.critical_rules)
    planned = [store.plan(events[i:i + batch])[0] for i in range(0, len(events), batch)]
    with timings.part("writes", "requests") as figures:
        for work in planned:
            for ok, result in execute_concurrent(probe.session, work, concurrency=floor.write_concurrency,
                                                 raise_on_first_error=False):
                if not ok:
                    raise SystemExit(f"a write failed: {result!r}")
            figures["count"] += len(work)


def feed(probe: FloorProbe, timings: Timings) -> list[list[Any]]:
    """The change feed of ``events_by_id`` from the start, page by page, until a page is empty."""
    from cassandra.query import SimpleStatement

    from shared.adapters.cassandra.reader import EVENT_SELECT

    settings = probe.settings
    cql = (f"SELECT {EVENT_SELECT} FROM {settings.cassandra.keyspace}.events_by_id "
           "WHERE COSMOS_CHANGEFEED_START_TIME() = '2000-01-01 00:00:00'")
    pages: list[list[Any]] = []
    paging_state = None
    with timings.part("feed", "rows") as figures:
        while True:
            statement = SimpleStatement(cql, fetch_size=settings.changefeed.page_size)
            result = probe.session.execute(statement, paging_state=paging_state, timeout=60)
            rows = result.current_rows
            if not rows:
                break
            pages.append(rows)
            figures["count"] += len(rows)
            paging_state = result.paging_state
    return pages


def windows(probe: FloorProbe, times: list[datetime], timings: Timings) -> None:
    """Every time-bucket partition holding the events, read once with enrichment's columns and paging."""
    from cassandra.concurrent import execute_concurrent_with_args

    from shared.adapters.cassandra.layout import bucket_start

    settings = probe.settings
    cassandra, enrichment = settings.cassandra, settings.enrichment
    statement = probe.session.prepare(
        "SELECT event_id, device_id, event_time, enqueued_time, event_type, severity, critical, measurements "
        f"FROM {cassandra.keyspace}.events_by_time_bucket WHERE bucket = ? AND shard = ?")
    statement.fetch_size = enrichment.read_page_size
    buckets = sorted({bucket_start(at, cassandra.bucket_seconds) for at in times})
    partitions = [(bucket, shard) for bucket in buckets for shard in range(cassandra.shards)]
    with timings.part("windows", "rows") as figures:
        for ok, result in execute_concurrent_with_args(probe.session, statement, partitions,
                                                       concurrency=enrichment.read_concurrency,
                                                       raise_on_first_error=False):
            if not ok:
                raise SystemExit(f"a window read failed: {result!r}")
            figures["count"] += sum(1 for _ in result)


def redis_pages(probe: FloorProbe, pages: list[list[Any]], timings: Timings) -> None:
    """Per feed page, the change feed's pipelines for it (``bench.cache_sync``'s raw side): its commands in one,
    then those the replies call for (``latest`` for each device whose key was missing, under the fresh prefix every
    device the first time it appears)."""
    from bench.cache_sync import cleanup, raw_commands, send_page
    from shared.adapters.cassandra.reader import stored_event
    from shared.adapters.redis import RedisChangeSink
    from shared.domain.rules import Criticality

    settings = probe.settings
    cfg = settings.redis
    client = probe.redis
    prefix = f"{cfg.key_prefix}floor-{uuid.uuid4().hex[:8]}:"
    sink = RedisChangeSink(client, key_prefix=prefix, stream_shards=cfg.critical_stream_shards)
    sink.load_scripts()
    critical = Criticality(settings.rules.critical_rules)
    built = []
    for rows in pages:
        events = []
        for row in rows:
            event = stored_event(row)
            if event.critical is None:
                event = dataclasses.replace(event, critical=critical(event.severity, event.measurements))
            events.append(event)
        built.append(raw_commands(sink, events, cfg.ttl_seconds, cfg.critical_per_device_max,
                                  cfg.critical_stream_max))
    try:
        with timings.part("redis", "commands") as figures:
            for page in built:
                figures["count"] += send_page(client, sink, page)
    finally:
        cleanup(client, prefix)


def postgres(probe: FloorProbe, pages: list[list[Any]], timings: Timings) -> None:
    """One binary COPY of the events' enriched rows into a temporary table shaped like ``enriched_events``."""
    from bench.enrich import copy_enriched, enriched_rows
    from shared.adapters.cassandra.reader import stored_event
    from shared.domain.enrichment import DeviceRef, ReferenceData, SiteRef

    with probe.pg() as conn:
        reference = ReferenceData.of(
            [DeviceRef(*row) for row in conn.execute(
                "SELECT device_id, site_id, model, firmware, owner, installed_at FROM devices")],
            [SiteRef(*row) for row in conn.execute(
                "SELECT site_id, name, region, timezone, latitude, longitude FROM sites")])
        rows = enriched_rows([stored_event(row) for page in pages for row in page], reference,
                             probe.settings.enrichment.window_seconds)
        conn.execute("CREATE TEMPORARY TABLE floor_enriched (LIKE enriched_events INCLUDING ALL)")
        conn.autocommit = False
        with timings.part("postgres", "rows") as figures:
            copy_enriched(conn, "floor_enriched", rows)
            figures["count"] += len(rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._e2e_client_floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hub", required=True, help="event hub name")
    parser.add_argument("--events", type=int, required=True, help="the events of the run, in all")
    parser.add_argument("--batch", type=int, required=True, help="events per ingest invocation in the run")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)

    from shared import runtime
    from shared.domain.events import Limits, parse_records
    from sluice.delivery import Probe

    probe = Probe(json.loads(os.environ["CLIENT_FLOOR_VALUES"]))
    runtime.configure(probe.settings.worker)  # the collector as the function worker sets it
    began = time.monotonic()
    records = asyncio.run(receive(os.environ["CLIENT_FLOOR_EVENTHUB"], args.hub, args.events, args.timeout))
    events = parse_records(records, limits=Limits(), now=datetime.now(UTC)).oks  # as ingest parses them
    timings = Timings()
    try:
        create_keyspace(probe)
        background = idle(2.0)
        pages = feed(probe, timings)
        windows(probe, [e.body.timestamp for e in events], timings)
        writes(probe, events, args.batch, timings)
        redis_pages(probe, pages, timings)
        postgres(probe, pages, timings)
    finally:
        probe.close()
    line: ClientFloor = {"events": len(records), "parts": timings.figures, "idle_cpu_per_s": background,
                         "seconds": time.monotonic() - began}
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
