"""``python -m bench enrich``: 200,000 events enriched into PostgreSQL vs a raw COPY of the same enriched rows.

What is measured:

* **sluice**: ``EnrichmentService.backfill`` over the windows holding the events:
  per window, the join with reference data (1,000 devices loaded from the
  PostgreSQL ``devices``/``sites`` tables, timed too), the device and site
  figures folded in as the rows stream by, binary COPY of the enriched rows page
  by page (straight into ``enriched_events``: each window is enriched for the
  first time), the figures staged and upserted
  into ``device_window_stats`` and ``site_window_stats``, the ledger row and
  COMMIT, one transaction per window (``jsonb`` encoded with orjson, part of
  Sluice's path).
  The window reader is an in-memory list of the events (reading 200,000 rows
  back from the Python Cassandra emulator would measure the emulator, not the
  enrichment); the rows are exactly what ``CassandraWindowReader`` returns.
* **baseline**: the raw client doing the same write: one binary ``COPY`` of the
  same 200,000 fully enriched rows (built beforehand, not timed) into a table
  shaped like ``enriched_events`` (same columns, primary key and index), and
  COMMIT, with psycopg's default adapters (stdlib ``json`` for ``jsonb``).

Each side runs ``--rounds`` times into emptied tables; the best round of each is
reported (the machine is shared). After the last round, untimed, the run fails unless
ours wrote the baseline's rows (the same columns, set against set) and its
``device_window_stats`` and ``site_window_stats`` hold what those rows grouped per
device (per site) and window say: event and critical counts, first and last event times,
the devices of a site. Targets: sluice >= 100,000 rows/s and
ratio (sluice / baseline) >= 0.5.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg_pool import ConnectionPool

from shared.adapters.postgres.enrichment_store import PostgresEnrichmentStore
from shared.adapters.postgres.migrations import apply_migrations
from shared.adapters.postgres.pool import make_pool
from shared.adapters.reference import PostgresReferenceSource, read_devices, read_sites, upsert_reference
from shared.domain.enrichment import DeviceContext, ReferenceData
from shared.domain.stored import StoredEvent
from shared.ports.enrichment import Arrival
from shared.services.enrichment import EnrichmentService
from shared.settings import EnrichmentSettings, PostgresSettings
from sluice.commands.reference import SAMPLE_DEVICES, SAMPLE_SITES

ADMIN_DSN = os.environ.get("SLUICE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
START = datetime(2026, 11, 1, tzinfo=UTC)
COLUMNS = ("event_id", "window_start", "device_id", "event_time", "enqueued_time", "event_type", "severity",
           "critical", "measurements", "known_device", "site_id", "model", "firmware", "owner", "site_name",
           "region", "site_timezone")
TYPES = ["uuid", "timestamptz", "text", "timestamptz", "timestamptz", "text", "text", "bool", "jsonb", "bool",
         "text", "text", "text", "text", "text", "text", "text"]
# One row of ``enriched_events``, in the order of COLUMNS.
EnrichedRow = tuple[uuid.UUID, datetime, str, datetime, datetime | None, str, str, bool, dict[str, float], bool,
                    str | None, str | None, str | None, str | None, str | None, str | None, str | None]


class MemoryReader:
    """The window reader port over events held in memory."""

    def __init__(self, events: list[StoredEvent]) -> None:
        self._events = events

    def read(self, start: datetime, end: datetime) -> list[StoredEvent]:
        return [e for e in self._events if start <= e.event_time < end]

    def read_each(self, start: datetime, end: datetime) -> Iterator[list[StoredEvent]]:
        """Pages of 5,000 rows, as the Cassandra reader hands them over."""
        events = self.read(start, end)
        for i in range(0, len(events), 5000):
            yield events[i:i + 5000]

    def arrivals(self, start: datetime, end: datetime, *, event_time_before: datetime | None = None
                 ) -> Iterator[Arrival]:
        return iter(())

    def delayed_since(self, start: datetime, end: datetime) -> datetime | None:
        return None


def make_events(n: int, windows: int, devices: int, seed: int = 1) -> list[StoredEvent]:
    rng = random.Random(seed)
    span_ms = windows * 300_000
    out = []
    for _ in range(n):
        at = START + timedelta(milliseconds=rng.randrange(span_ms))
        measurements = {"temperature": round(rng.uniform(-10, 95), 2), "humidity": round(rng.uniform(5, 95), 2)}
        if rng.random() < 0.3:
            measurements["battery"] = round(rng.uniform(0, 100), 1)
        severity = "critical" if rng.random() < 0.01 else rng.choice(("info", "info", "warning"))
        out.append(StoredEvent(uuid.UUID(int=rng.getrandbits(128), version=4), f"dev-{rng.randrange(devices):05d}",
                               at, "reading", severity, severity == "critical", measurements,
                               enqueued_time=at + timedelta(milliseconds=rng.randrange(50, 2000))))
    return out


def enriched_rows(events: list[StoredEvent], reference: ReferenceData, window_seconds: int) -> list[EnrichedRow]:
    rows: list[EnrichedRow] = []
    contexts: dict[str, DeviceContext] = {}
    for e in events:
        c = contexts.get(e.device_id) or contexts.setdefault(e.device_id, DeviceContext.resolve(e.device_id, reference))
        window_start = datetime.fromtimestamp(e.event_time.timestamp() // window_seconds * window_seconds, UTC)
        rows.append((e.event_id, window_start, e.device_id, e.event_time, e.enqueued_time, e.event_type, e.severity,
                     bool(e.critical), dict(e.measurements), c.known, c.site_id, c.model, c.firmware, c.owner,
                     c.site_name, c.region, c.site_timezone))
    return rows


def baseline_copy(dsn: str, rows: list[EnrichedRow]) -> tuple[float, float]:
    with psycopg.connect(dsn) as conn:
        conn.execute("TRUNCATE baseline_enriched_events")
        conn.commit()
        started, cpu = time.perf_counter(), time.process_time()
        copy_enriched(conn, "baseline_enriched_events", rows)
        return time.perf_counter() - started, time.process_time() - cpu


def copy_enriched(conn: psycopg.Connection, table: str, rows: list[EnrichedRow]) -> None:
    """One binary COPY of enriched rows into ``table`` (shaped like ``enriched_events``), and COMMIT."""
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(TYPES)
        for row in rows:
            copy.write_row(row)
    conn.commit()


# Untimed, after the last round: each of ours' tables (its columns) and what the baseline's rows say it must hold.
_SAME_WORK = [
    ("enriched_events", f"SELECT {', '.join(COLUMNS)} FROM enriched_events",
     f"SELECT {', '.join(COLUMNS)} FROM baseline_enriched_events"),
    ("device_window_stats",
     """SELECT window_start, device_id, known_device, site_id, event_count, critical_count, first_event_time,
               last_event_time FROM device_window_stats""",
     """SELECT window_start, device_id, bool_and(known_device), min(site_id), count(*)::int,
               (count(*) FILTER (WHERE critical))::int, min(event_time), max(event_time)
        FROM baseline_enriched_events GROUP BY window_start, device_id"""),
    ("site_window_stats",
     "SELECT window_start, site_id, device_count, event_count, critical_count FROM site_window_stats",
     """SELECT window_start, site_id, count(DISTINCT device_id)::int, count(*)::int,
               (count(*) FILTER (WHERE critical))::int
        FROM baseline_enriched_events WHERE site_id IS NOT NULL GROUP BY window_start, site_id"""),
]


def check_same_work(conn: psycopg.Connection, events: int) -> None:
    """Raise unless ours wrote what the baseline's rows hold: the same enriched rows, one per event, and in
    ``device_window_stats`` and ``site_window_stats`` the counts, critical counts and times of those rows grouped
    per device (per site) and window. Set against set, in both directions (``EXCEPT ALL``)."""
    for table, ours, baseline in _SAME_WORK:
        for first, second, what in ((ours, baseline, "rows of ours the baseline's rows do not give"),
                                    (baseline, ours, "rows the baseline's rows give missing from ours")):
            row = conn.execute(f"SELECT count(*) FROM ({first} EXCEPT ALL {second}) AS d").fetchone()
            if row is None or row[0]:
                raise RuntimeError(f"{table}: {row[0] if row else '?'} {what}")
    row = conn.execute("SELECT count(*) FROM enriched_events").fetchone()
    if row is None or row[0] != events:
        raise RuntimeError(f"{row[0] if row else 'no'} enriched rows for {events} events")
    print("ours' enriched_events, device_window_stats and site_window_stats match the baseline's rows")


def sluice_enrich(dsn: str, pool: ConnectionPool, events: list[StoredEvent], windows: int) -> tuple[float, float]:
    with psycopg.connect(dsn) as conn:
        conn.execute("TRUNCATE enriched_events, device_window_stats, site_window_stats, enrichment_windows")
        conn.commit()
    settings = EnrichmentSettings(
        window_seconds=300)
    service = EnrichmentService(MemoryReader(events), PostgresReferenceSource(pool), PostgresEnrichmentStore(pool),
                                settings)
    started, cpu = time.perf_counter(), time.process_time()
    outcomes = service.backfill(START, START + timedelta(seconds=300 * windows))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert sum(o.events for o in outcomes) == len(events), "not every event was enriched"
    return elapsed, cpu


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench enrich", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--windows", type=int, default=4, help="5-minute windows the events spread over")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    logging.getLogger("shared").setLevel(logging.ERROR)  # the 10 unknown devices are deliberate: no warning per window

    name = f"sluice_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    info["dbname"] = name
    dsn = psycopg.conninfo.make_conninfo("", **info)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            apply_migrations(conn)
            upsert_reference(conn, read_devices(SAMPLE_DEVICES), read_sites(SAMPLE_SITES))
            conn.execute("CREATE TABLE baseline_enriched_events (LIKE enriched_events INCLUDING ALL)")
        events = make_events(args.events, args.windows, devices=1000)
        settings = PostgresSettings(
            host="unused", pool_min_size=1, pool_max_size=2)
        with make_pool(dsn, settings) as pool:
            rows = enriched_rows(events, PostgresReferenceSource(pool).load(), 300)
            print(f"{len(events):,} events over {args.windows} windows, 1,000 devices (990 known); "
                  f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
            best_ours = best_base = float("inf")
            for round_ in range(1, args.rounds + 1):
                if round_ % 2:  # alternate which side goes first: neither always meets PostgreSQL after the other
                    base, base_cpu = baseline_copy(dsn, rows)
                    ours, ours_cpu = sluice_enrich(dsn, pool, events, args.windows)
                else:
                    ours, ours_cpu = sluice_enrich(dsn, pool, events, args.windows)
                    base, base_cpu = baseline_copy(dsn, rows)
                best_base, best_ours = min(best_base, base), min(best_ours, ours)
                print(f"round {round_}: baseline COPY {len(rows) / base:,.0f} rows/s ({base:.2f} s, client CPU "
                      f"{base_cpu:.2f} s), sluice enrich {len(events) / ours:,.0f} rows/s ({ours:.2f} s, client CPU "
                      f"{ours_cpu:.2f} s)")
            with psycopg.connect(dsn) as conn:
                check_same_work(conn, len(events))
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    ours_rate, base_rate = len(events) / best_ours, len(rows) / best_base
    ratio = ours_rate / base_rate
    print(f"baseline (raw binary COPY of the enriched rows): {base_rate:,.0f} rows/s")
    print(f"sluice (join + figures + COPY + figure upserts + ledger, per-window transactions): "
          f"{ours_rate:,.0f} rows/s (target >= 100,000)")
    print(f"enrich: sluice {ours_rate:,.0f} rows/s, baseline {base_rate:,.0f} rows/s, ratio {ratio:.2f}")
    return 0
