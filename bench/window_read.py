"""``python -m bench window_read``: reading an enrichment window, ours against the driver's own paging, in one run.

Starts a private Cassandra emulator and stores ``--events`` events (8 measurements
each) in one closed window, then reads the window's partitions (every bucket and shard
overlapping it) page by page two ways, handing each page to the same caller, which
spends ``--work-ms`` of CPU on it (what enriching and copying 1,000 events costs the
enrichment, about 25 us an event):

* **ours**: ``CassandraWindowReader.read_each``: up to 16 partitions' first pages in
  flight, a partition's next page asked for before the current one is handed over,
  each row turned into a ``StoredEvent``;
* **driver**: the raw cassandra-driver doing the same reads, as its documentation
  shows paging: ``execute_concurrent_with_args`` over the partitions (16 at once), then
  each partition's ``ResultSet`` iterated page by page (``fetch_next_page``, which
  asks for the next page when the caller is done with the current one), each row
  turned into the same ``StoredEvent`` (``window_event``).

The sides alternate round by round. It prints each round, then ``ratio <driver
seconds / ours>`` (above 1: ours is faster). Both read the same rows: an untimed first
pass (the warm-up) compares the event ids each side read, and every round their counts;
the run fails if they differ.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent_with_args

from shared.adapters.cassandra.event_store import CassandraEventStore
from shared.adapters.cassandra.layout import buckets_between
from shared.adapters.cassandra.migrations import apply_migrations
from shared.adapters.cassandra.session import connect
from shared.adapters.cassandra.window_reader import BY_TIME, CassandraWindowReader, window_event
from shared.domain.events import DeviceEvent, Event, EventMetadata
from shared.domain.stored import StoredEvent
from shared.settings import CassandraSettings
from sluice.launcher import python_module, start

CONCURRENCY = 16


def populate(store: CassandraEventStore, start_at: datetime, seconds: int, events: int, devices: int) -> None:
    now = start_at + timedelta(seconds=2 * seconds)
    step = seconds * 1000 / events  # spread over the window, in ms
    batch: list[Event] = []
    for i in range(events):
        batch.append(Event(DeviceEvent.model_validate(
            {"event_id": str(uuid.uuid4()), "device_id": f"device-{i % devices:05d}", "event_type": "telemetry",
             "timestamp": (start_at + timedelta(milliseconds=i * step)).isoformat(),
             "measurements": {f"m{k}": float(i + k) for k in range(8)}}, context={"now": now}),
            EventMetadata(enqueued_time=now)))
        if len(batch) == 500:
            store.write(batch)
            batch = []
    if batch:
        store.write(batch)


def driver_pages(session: Session, settings: CassandraSettings, start_at: datetime, end: datetime,
                 page_size: int) -> Iterator[list[StoredEvent]]:
    statement = session.prepare(BY_TIME.format(ks=settings.keyspace))
    statement.fetch_size = page_size
    partitions = [(bucket, shard, start_at, end) for bucket in buckets_between(start_at, end, settings.bucket_seconds)
                  for shard in range(settings.shards)]
    for ok, result in execute_concurrent_with_args(session, statement, partitions, concurrency=CONCURRENCY,
                                                   results_generator=True):
        assert ok, result
        while True:
            yield [window_event(r) for r in result.current_rows]
            if not result.has_more_pages:
                break
            result.fetch_next_page()


def consume(pages: Iterator[list[StoredEvent]], work_ms: float) -> int:
    count = 0
    for page in pages:
        count += len(page)
        until = time.thread_time() + work_ms / 1000 * len(page) / 1000
        while time.thread_time() < until:
            pass
    return count


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench window_read", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--work-ms", type=float, default=25.0, help="the caller's CPU per 1,000 events, in ms")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)

    emulator = start("cassandra-emulator", python_module("emulators.cassandra", "--host", "127.0.0.1", "--port", "0"),
                     timeout=60)
    settings = CassandraSettings(
        hosts=[emulator.host], port=emulator.port, keyspace=f"bench_{uuid.uuid4().hex[:8]}", consistency="ONE")
    session = connect(settings)
    try:
        apply_migrations(session, settings)
        window = 300
        start_at = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
        end = start_at + timedelta(seconds=window)
        populate(CassandraEventStore(session, settings), start_at, window, args.events, args.devices)
        reader = CassandraWindowReader(session, settings, page_size=args.page_size, concurrency=CONCURRENCY)
        sides: dict[str, Callable[[], Iterator[list[StoredEvent]]]] = {
            "ours": lambda: reader.read_each(start_at, end),
            "driver": lambda: driver_pages(session, settings, start_at, end, args.page_size),
        }
        # Prepare and warm both before measuring, in one untimed pass that also checks they read the same events.
        read = {name: [e.event_id for page in pages() for e in page] for name, pages in sides.items()}
        if sorted(read["ours"]) != sorted(read["driver"]) or len(set(read["ours"])) != args.events:
            raise RuntimeError(f"the sides read different events: ours {len(read['ours'])} "
                               f"({len(set(read['ours']))} distinct), driver {len(read['driver'])} "
                               f"({len(set(read['driver']))} distinct), {len(set(read['ours']) ^ set(read['driver']))} "
                               f"read by one side only, {args.events} stored")
        del read
        partitions = len(list(buckets_between(start_at, end, settings.bucket_seconds))) * settings.shards
        print(f"window_read: {args.events:,} events in one {window}-s window, {partitions} partitions "
              f"({settings.shards} shards), pages of {args.page_size:,}, caller work {args.work_ms:g} ms per 1,000 "
              f"events; Cassandra emulator {emulator.address}")
        seconds: dict[str, list[float]] = {"ours": [], "driver": []}
        for round_ in range(args.rounds):
            order = ["ours", "driver"] if round_ % 2 == 0 else ["driver", "ours"]
            counts = {}
            for name in order:
                started = time.perf_counter()
                counts[name] = consume(sides[name](), args.work_ms)
                seconds[name].append(time.perf_counter() - started)
            assert counts["ours"] == counts["driver"] == args.events, counts
            print(f"round {round_ + 1}: " + ", ".join(
                f"{name} {seconds[name][-1]:.2f} s ({args.events / seconds[name][-1]:,.0f} events/s)"
                for name in ("ours", "driver")))
        ours, driver = statistics.median(seconds["ours"]), statistics.median(seconds["driver"])
        print(f"median: ours {ours:.2f} s, driver {driver:.2f} s")
        print(f"ratio {driver / ours:.2f}")
    finally:
        session.cluster.shutdown()
        emulator.stop()
    return 0
