"""``PostgresEnrichmentStore``: one window in one transaction, set-based (COPY to staging, then upsert).

Per window, inside one transaction:

1. ``SET LOCAL statement_timeout`` and a transaction-scoped advisory lock on the
   pipeline (its ``name``), so two writers (the timer and a backfill, two pods)
   write their windows one after the other, never interleaved: a window's write
   reads and changes rows of other windows (an id re-sent with another timestamp
   moves between them, and marks the window it left), so a lock per window would
   let one writer's checks run on rows another is changing. Windows are written
   one at a time per runner anyway; the lock makes two runners take turns, window
   by window. Each statement then sees what the writer before committed;
2. a window enriched for the first time (no ledger row) has its rows streamed,
   page by page as the reader hands them over and a
   :class:`~shared.domain.enrichment.WindowEnrichment` accepts them, joined here,
   straight into ``enriched_events`` (``COPY ... (FORMAT BINARY)``, inside a
   savepoint: an event id already stored under another window rolls it back, and
   the window is read again to take step 3 like a re-run);
3. otherwise the rows are streamed into ``ON COMMIT DROP`` temporary tables (the
   window's events, narrow, and the reference columns of each device seen), then
   ``INSERT ... SELECT ... ON CONFLICT DO UPDATE ... WHERE (...) IS DISTINCT FROM
   (...)`` into ``enriched_events`` (events joined to their device's reference
   columns in SQL): a re-run with the same input updates no row, so
   ``enriched_at`` keeps the time of the last real change. Either way, when an
   event id was read twice, the rows written for the devices involved are read
   back to settle which row wins, and a held-back winner replaces the row of its
   id. The device and site figures always take the staged path (upserted into
   ``device_window_stats`` and ``site_window_stats``);
4. figures of the window that the recomputation no longer produces (a device
   moved to another site) are deleted; enriched events never are. A window
   enriched before (it has a ledger row) has its figures computed from what it
   read together with the rows ``enriched_events`` still holds for it that the
   read did not return (expired from Cassandra; the ones moved out are in their
   new window), with the current reference data, so they never shrink below
   what PostgreSQL holds for it less what moved out. A window enriched for the
   first time and read as empty is recorded with no figures;
5. the ledger row (``enrichment_windows``) and, for scheduled windows, the
   watermark; then COMMIT.

Nothing keeps session state between transactions (temporary tables, ``SET LOCAL``,
transaction advisory locks), so this works through PgBouncer in transaction mode.
Every timestamp read is converted to UTC (the pool's sessions are in UTC too).
A psycopg ``OperationalError`` (connection lost, server shut down, timeout)
becomes ``TransientError`` naming the window; the transaction is then rolled back
by the server and nothing of the window is written.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import Any, Literal

import orjson
import psycopg
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import ConnectionPool

from shared.domain.enrichment import DeviceContext, EnrichedWindow, Window
from shared.domain.stored import StoredEvent
from shared.domain.times import utc
from shared.exceptions import TransientError
from shared.ports.enrichment import Arrival, EnrichmentState, Reason, WindowInput

logger = logging.getLogger(__name__)

_LOCK_NAMESPACE = 0x5E_0000_0000  # xor-ed with the CRC-32 of the pipeline's name for the advisory lock key
_json_floats = partial(json.loads, parse_int=float)  # measurements are doubles, whatever jsonb prints

_STAGE_EVENTS = """
CREATE TEMP TABLE stage_events (
    event_id uuid, device_id text, event_time timestamptz, enqueued_time timestamptz,
    event_type text, severity text, critical boolean, measurements jsonb
) ON COMMIT DROP;
CREATE TEMP TABLE stage_devices (
    device_id text, known_device boolean, site_id text, model text, firmware text, owner text,
    site_name text, region text, site_timezone text
) ON COMMIT DROP
"""
_STAGE_FIGURES = """
CREATE TEMP TABLE stage_device_stats (
    device_id text, known_device boolean, site_id text, event_count integer, critical_count integer,
    first_event_time timestamptz, last_event_time timestamptz, measurements text
) ON COMMIT DROP;
CREATE TEMP TABLE stage_site_stats (
    site_id text, site_name text, region text, site_timezone text, device_count integer, event_count integer,
    critical_count integer, measurements text
) ON COMMIT DROP
"""
_EVENT_TYPES = ["uuid", "text", "timestamptz", "timestamptz", "text", "text", "bool", "jsonb"]
_DEVICE_TYPES = ["text", "bool", "text", "text", "text", "text", "text", "text", "text"]
_DEVICE_STATS_TYPES = ["text", "bool", "text", "int4", "int4", "timestamptz", "timestamptz", "text"]
_SITE_STATS_TYPES = ["text", "text", "text", "text", "int4", "int4", "int4", "text"]

_NEW_EVENT_TYPES = [
    "uuid",
    "timestamptz",
    "text",
    "timestamptz",
    "timestamptz",
    "text",
    "text",
    "bool",
    "jsonb",
    "bool",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
]
_EVENT_COLUMNS = ("window_start", "device_id", "event_time", "enqueued_time", "event_type", "severity", "critical",
                  "measurements", "known_device", "site_id", "model", "firmware", "owner", "site_name", "region",
                  "site_timezone")
_COPY_NEW_EVENTS = f"COPY enriched_events (event_id, {', '.join(_EVENT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_UPSERT_EVENTS = f"""
INSERT INTO enriched_events (event_id, {", ".join(_EVENT_COLUMNS)})
SELECT e.event_id, %(start)s, e.device_id, e.event_time, e.enqueued_time, e.event_type, e.severity, e.critical,
       e.measurements, d.known_device, d.site_id, d.model, d.firmware, d.owner, d.site_name, d.region, d.site_timezone
FROM stage_events e JOIN stage_devices d USING (device_id)
ON CONFLICT (event_id) DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c in _EVENT_COLUMNS)}, enriched_at = now()
WHERE ({", ".join(f"enriched_events.{c}" for c in _EVENT_COLUMNS)})
      IS DISTINCT FROM ({", ".join(f"EXCLUDED.{c}" for c in _EVENT_COLUMNS)})
"""

_DEVICE_COLUMNS = ("window_end", "known_device", "site_id", "event_count", "critical_count", "first_event_time",
                   "last_event_time", "measurements")
_UPSERT_DEVICE_STATS = f"""
INSERT INTO device_window_stats (window_start, device_id, {", ".join(_DEVICE_COLUMNS)})
SELECT %(start)s, s.device_id, %(end)s, s.known_device, s.site_id, s.event_count, s.critical_count,
       s.first_event_time, s.last_event_time, s.measurements::jsonb
FROM stage_device_stats s
ON CONFLICT (window_start, device_id) DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c in _DEVICE_COLUMNS)}, enriched_at = now()
WHERE ({", ".join(f"device_window_stats.{c}" for c in _DEVICE_COLUMNS)})
      IS DISTINCT FROM ({", ".join(f"EXCLUDED.{c}" for c in _DEVICE_COLUMNS)})
"""

_SITE_COLUMNS = ("window_end", "site_name", "region", "site_timezone", "device_count", "event_count", "critical_count",
                 "measurements")
_UPSERT_SITE_STATS = f"""
INSERT INTO site_window_stats (window_start, site_id, {", ".join(_SITE_COLUMNS)})
SELECT %(start)s, s.site_id, %(end)s, s.site_name, s.region, s.site_timezone, s.device_count, s.event_count,
       s.critical_count, s.measurements::jsonb
FROM stage_site_stats s
ON CONFLICT (window_start, site_id) DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c in _SITE_COLUMNS)}, enriched_at = now()
WHERE ({", ".join(f"site_window_stats.{c}" for c in _SITE_COLUMNS)})
      IS DISTINCT FROM ({", ".join(f"EXCLUDED.{c}" for c in _SITE_COLUMNS)})
"""

_DELETE_STALE = """
DELETE FROM device_window_stats t WHERE t.window_start = %(start)s
    AND NOT EXISTS (SELECT 1 FROM stage_device_stats s WHERE s.device_id = t.device_id);
DELETE FROM site_window_stats t WHERE t.window_start = %(start)s
    AND NOT EXISTS (SELECT 1 FROM stage_site_stats s WHERE s.site_id = t.site_id)
"""

_LEDGER = """
INSERT INTO enrichment_windows AS w (window_start, window_end, event_count, device_count, unknown_device_count,
                                     unknown_device_events, reason)
VALUES (%(start)s, %(end)s, %(events)s, %(devices)s, %(unknown)s, %(unknown_events)s, %(reason)s)
ON CONFLICT (window_start) DO UPDATE SET
    window_end = EXCLUDED.window_end, event_count = EXCLUDED.event_count, device_count = EXCLUDED.device_count,
    unknown_device_count = EXCLUDED.unknown_device_count, unknown_device_events = EXCLUDED.unknown_device_events,
    reason = EXCLUDED.reason, runs = w.runs + 1, last_enriched_at = now(), recompute = false
"""
# A window enriched for the first time and read as empty: recorded with counts of 0, as it has no figures either (a
# window with a ledger row is computed from the rows PostgreSQL holds for it, however little its read returns). The
# update is only a guard: under the advisory lock, the ledger row found missing stays missing.
_LEDGER_EMPTY_READ = """
INSERT INTO enrichment_windows AS w (window_start, window_end, event_count, device_count, unknown_device_count,
                                     unknown_device_events, reason)
VALUES (%(start)s, %(end)s, 0, 0, 0, 0, %(reason)s)
ON CONFLICT (window_start) DO UPDATE SET
    reason = EXCLUDED.reason, runs = w.runs + 1, last_enriched_at = now(), recompute = false
"""

# The arrivals lying in an enriched window (the ledger row starting last at or before the event time, if the event
# time is before its end: ledger windows never overlap, whatever width each was enriched with) that a recompute of
# that window would account for and its enriched row does not yet: the id has no row at all (a late event), a row in
# another window with an earlier event time (re-sent with a later timestamp: this window's row takes it over), or a
# row in this window with an earlier event time or the same one enqueued before this arrival (re-sent later within
# the window, or a correction re-sent with the same timestamp: the later copy is what Cassandra keeps). An arrival's
# enqueued time is its event time when Event Hubs gave none, as ingest stores it.
# An arrival whose id's enriched row has a later event time is never stale, whichever window holds that row: it
# loses to that row (in another window _DROP_LOSERS drops it from its window's read; in its own the read keeps an
# id's latest row, and _DROP_HELD_WINNERS keeps the held one over an older copy read), so its recompute could change
# nothing. Flagged on every scan covering it, it would keep the same windows first in the queue for good (a device
# re-sending readings with corrected, earlier timestamps), starving every later late window, and late_scan_until would
# never move.
# One index probe (the primary key: at most one enriched row per id) per arrival.
_STALE = """
SELECT c.i, w.window_start, w.window_end
FROM unnest(%s::uuid[], %s::timestamptz[], %s::timestamptz[]) WITH ORDINALITY AS c(event_id, event_time, enqueued_at, i)
CROSS JOIN LATERAL (SELECT window_start, window_end FROM enrichment_windows
                    WHERE window_start <= c.event_time ORDER BY window_start DESC LIMIT 1) w
WHERE c.event_time < w.window_end
  AND NOT EXISTS (SELECT 1 FROM enriched_events e
                  WHERE e.event_id = c.event_id
                    AND (e.event_time > c.event_time
                         OR e.window_start = w.window_start AND e.event_time = c.event_time
                            AND coalesce(e.enqueued_time, e.event_time) >= c.enqueued_at))
"""

# The ledger windows overlapping [start, end): from the last one starting at or before start (windows never overlap,
# so none starting earlier can reach past it), on the primary key.
_OVERLAPPING = """
SELECT window_start, window_end FROM enrichment_windows
WHERE window_start >= coalesce((SELECT max(window_start) FROM enrichment_windows WHERE window_start <= %(start)s),
                               %(start)s)
  AND window_start < %(end)s AND window_end > %(start)s
ORDER BY window_start
"""

_TO_RECOMPUTE = "SELECT window_start, window_end FROM enrichment_windows WHERE recompute ORDER BY window_start"

# The columns of an enriched or staged row that make up the event it was enriched from.
_ROW_COLUMNS = "event_id, device_id, event_time, enqueued_time, event_type, severity, critical, measurements"
# A window enriched before (it has a ledger row, marked or not): its rows still in PostgreSQL that the read did not
# stage (expired from Cassandra: rows expire by write time, so any part of a window may be gone) are staged beside the
# read's, as the read would have staged them (critical is the flag they were enriched with, so the rules are not
# applied again). An id the read staged is matched by id alone: a copy re-sent with another device (same timestamp)
# replaces the held row of another device rather than counting beside it.
# A moved row is not among them (its id's row is in its new window now), and an id the read staged keeps the read's
# row (or none, when it lost to a later row in another window, _DROP_LOSERS: then no row of it is in this window
# either), unless _DROP_HELD_WINNERS dropped the read's row for the held one, which this then stages.
# On the index enriched_events_window_start (migration 014): the window's rows only.
_STAGE_HELD_EVENTS = f"""
INSERT INTO stage_events ({_ROW_COLUMNS}) SELECT {_ROW_COLUMNS} FROM enriched_events e
WHERE e.window_start = %s AND NOT EXISTS (SELECT 1 FROM stage_events s WHERE s.event_id = e.event_id)
"""

# Staged rows whose id has a row with a later event time in another window: that row wins, these are not written
# (the window's figures are computed again without them). Windows never overlap, so a later row of an id in
# another window is later than every row of it in this one.
_DROP_LOSERS = """
DELETE FROM stage_events s USING enriched_events e
WHERE e.event_id = s.event_id AND e.window_start <> %s AND e.event_time > s.event_time
RETURNING s.event_id, s.device_id
"""

# A recompute's staged rows whose id's row this window holds has a later event time: the read returned only an
# older copy (the later one expired first, written first: a correction with an earlier timestamp arrived after it),
# which loses to the held row as it loses to a later row in another window (_DROP_LOSERS), and as the late scan
# judges its arrival (_STALE: never stale). Dropped here, the held row is staged by _STAGE_HELD_EVENTS and the figures
# follow it. At the same event time the read's row stays, as a read's own duplicates settle by event time alone: it
# is the copy Cassandra holds now (an older copy redelivered after a correction overwrites it there, docs "Late
# events"). A window enriched for the first time holds no row of its own: its COPY path has nothing to compare with.
_DROP_HELD_WINNERS = """
DELETE FROM stage_events s USING enriched_events e
WHERE e.event_id = s.event_id AND e.window_start = %s AND e.event_time > s.event_time
"""

# The windows whose rows the upsert is about to take over (the staged row is the later one): marked to be recomputed
_MOVED_FROM = """
SELECT DISTINCT e.window_start FROM stage_events s JOIN enriched_events e USING (event_id)
WHERE e.window_start <> %(start)s
"""
_MARK_RECOMPUTE = "UPDATE enrichment_windows SET recompute = true WHERE window_start = ANY(%s)"

# clock_timestamp(), not now(): now() is the transaction's start, before the advisory lock wait and the window's whole
# read, and /api/status reports the age of updated_at as enrichment.staleness_seconds (a watermark that just moved
# would show as stale by that much). The ledger's last_enriched_at and the rows' enriched_at keep now(): one instant
# for all a window's transaction writes, and no staleness is computed from them.
_ADVANCE = """
UPDATE enrichment_state SET watermark = %(end)s, updated_at = clock_timestamp()
WHERE name = %(name)s AND watermark >= %(start)s AND watermark < %(end)s
"""


class PostgresEnrichmentStore:
    """Implements ``shared.ports.enrichment.EnrichmentStore`` (see the module docstring)."""

    def __init__(
        self, pool: ConnectionPool, *, statement_timeout_seconds: float = 120.0, name: str = "default"
    ) -> None:
        self._pool = pool
        self._timeout_ms = int(statement_timeout_seconds * 1000)
        self._name = name
        self._lock_key = _LOCK_NAMESPACE ^ zlib.crc32(name.encode())

    @contextmanager
    def _transaction(self, what: str) -> Iterator[psycopg.Connection]:
        try:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute("SELECT set_config('statement_timeout', %s, true)", (str(self._timeout_ms),))
                yield conn
        except psycopg.errors.QueryCanceled as exc:  # statement_timeout (an OperationalError too: test it first)
            raise TransientError(f"PostgreSQL timed out during {what}: {exc}".strip()) from exc
        except psycopg.OperationalError as exc:
            raise TransientError(f"PostgreSQL failed during {what}: {type(exc).__name__}: {exc}".strip()) from exc

    def load_state(self, initial: datetime) -> EnrichmentState:
        with self._transaction("loading the enrichment state") as conn:
            conn.execute(
                "INSERT INTO enrichment_state (name, watermark, late_scan_until) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (self._name, initial, initial),
            )
            row = conn.execute(
                "SELECT watermark, late_scan_until FROM enrichment_state WHERE name = %s", (self._name,)
            ).fetchone()
            assert row is not None  # inserted just above when missing
            watermark, late = row
        # In UTC, as every other read here: psycopg hands a timestamptz over in the session's TimeZone, and the
        # service subtracts from these in wall-clock time, which a zone with DST would shift by its change.
        return EnrichmentState(utc(watermark), utc(late or watermark))

    def save_late_scan(self, until: datetime) -> None:
        """Move ``late_scan_until`` only: ``updated_at`` is when the watermark last moved (``/api/status`` reports
        its age as ``enrichment.staleness_seconds``), and this runs on every run, whether the watermark moved or not."""
        with self._transaction("saving the late-event scan position") as conn:
            conn.execute(
                "UPDATE enrichment_state SET late_scan_until = greatest(coalesce(late_scan_until, %s), %s) "
                "WHERE name = %s",
                (until, until, self._name),
            )

    def stale_windows(self, arrivals: Sequence[Arrival]) -> list[tuple[Arrival, Window]]:
        stale: list[tuple[Arrival, Window]] = []
        with self._transaction("looking for late events") as conn:
            for i in range(0, len(arrivals), 10_000):
                chunk = arrivals[i:i + 10_000]
                rows = conn.execute(_STALE, ([a.event_id for a in chunk], [a.event_time for a in chunk],
                                             [a.enqueued_at for a in chunk]))
                stale.extend((chunk[n - 1], Window(utc(start), utc(end))) for n, start, end in rows)
        return stale

    def enriched_windows(self, start: datetime, end: datetime) -> list[Window]:
        with self._transaction("reading the enriched windows") as conn:
            return [Window(utc(s), utc(e)) for s, e in conn.execute(_OVERLAPPING, {"start": start, "end": end})]

    def windows_to_recompute(self) -> list[Window]:
        with self._transaction("looking for windows to compute again") as conn:
            return [Window(utc(start), utc(end)) for start, end in conn.execute(_TO_RECOMPUTE)]

    def write_window(self, source: WindowInput, reason: Reason, *, advance_watermark: bool) -> EnrichedWindow:
        window = source.window
        params: dict[str, object] = {"start": window.start, "end": window.end, "name": self._name, "reason": reason}
        with self._transaction(f"the enrichment of window {window}") as conn:
            # One writer of the pipeline at a time, whatever the window: a window's write reads and writes other
            # windows' rows too (an id re-sent into another window), which a lock on its own window would not cover.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
            ledger = [Window(utc(s), utc(e)) for s, e in conn.execute(_OVERLAPPING, params)]
            if ledger not in ([], [window]):
                # Planned before another writer enriched these (with another SLUICE_ENRICH_WINDOW_SECONDS, during a
                # roll-out): writing it would count their events twice. The next run plans from the ledger again.
                raise TransientError(f"window {window} overlaps the enriched windows "
                                     f"{', '.join(map(str, ledger))}: not written, it is planned again")
            first_time = not ledger
            # The rows stream into COPY as Cassandra hands them over, so a COPY lasts as long as the window's read,
            # which the reader's own request timeouts bound: statement_timeout would time Cassandra and fail a slow
            # read as PostgreSQL's, run after run. It is off while the rows stream; lock_timeout bounds what
            # PostgreSQL itself may wait for meanwhile (a row another transaction is inserting).
            conn.execute("SELECT set_config('statement_timeout', '0', true), set_config('lock_timeout', %s, true)",
                         (str(self._timeout_ms),))
            copied = self._copy_new_window(conn, source) if first_time else None
            enriched = copied if copied is not None else self._upsert_window(conn, source)
            conn.execute("SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', '0', true)",
                         (str(self._timeout_ms),))
            # Enriched before (a ledger row): figures of the read alone would drop the window's events whose rows
            # expired from Cassandra (rows expire by write time, so any part of it may be gone, and a marked window's
            # read may hold only the moved id's older row, which loses), and keeping the old figures would count an
            # event that moved out here and in its new window. So the window is computed from what it read and the
            # rows PostgreSQL still holds for it beside them (which no longer include the moved ones), all with the
            # current reference data: one snapshot, never fewer events than PostgreSQL holds for it.
            recompute_held = not first_time
            if recompute_held:
                enriched = self._stage_held_rows(conn, source, enriched)
            if copied is None:
                moved_from = [row[0] for row in conn.execute(_MOVED_FROM, params)]
                conn.execute(_UPSERT_EVENTS, params)
                if moved_from:
                    conn.execute(_MARK_RECOMPUTE, (moved_from,))
                    logger.info("window %s took over events of windows %s (ids re-sent with a later event time); "
                                "they are computed again", window, ", ".join(str(w) for w in moved_from))
            if enriched.events or enriched.moved_ids or recompute_held:  # (every event moved out: no figures left)
                self._stage_figures(conn, enriched)
                conn.execute(_UPSERT_DEVICE_STATS, params)
                conn.execute(_UPSERT_SITE_STATS, params)
                for statement in _DELETE_STALE.split(";"):
                    conn.execute(statement, params)
                params.update(events=enriched.events, devices=len(enriched.devices),
                              unknown=len(enriched.unknown_devices), unknown_events=enriched.unknown_device_events)
                conn.execute(_LEDGER, params)
            else:  # enriched for the first time and read as empty: no figures, a ledger row with counts of 0
                conn.execute(_LEDGER_EMPTY_READ, params)
            if advance_watermark:
                conn.execute(_ADVANCE, params)
        logger.debug("window %s written (%s): %d events", window, reason, enriched.events)
        return enriched

    @staticmethod
    def _copy_new_window(conn: psycopg.Connection, source: WindowInput) -> EnrichedWindow | None:
        """A window enriched for the first time: COPY its rows, joined here, straight into ``enriched_events``.

        No row of the window can exist yet, so the upsert's staging table, join and
        conflict checks are skipped (half the work). An event id that is already
        stored, under another window (an id reused with another timestamp), rolls
        the COPY back to its savepoint and returns None: the caller reads the
        window again and upserts.
        """
        try:
            with conn.transaction(), _copy_cursor(conn) as cur:
                return _stream_window(conn, cur, source, "enriched_events")
        except psycopg.errors.UniqueViolation:
            logger.info("window %s: an event id is already enriched under another window; reading it again to upsert",
                        source.window)
            return None

    @staticmethod
    def _upsert_window(conn: psycopg.Connection, source: WindowInput) -> EnrichedWindow:
        """Stage the window's events as they are read, and the reference columns of its devices, for the upsert."""
        conn.execute(_STAGE_EVENTS.encode(), prepare=False)  # no parameters, never prepared: one round trip
        with _copy_cursor(conn) as cur:
            enriched = _stream_window(conn, cur, source, "stage_events")
            _copy_devices(cur, enriched)
        return enriched

    @staticmethod
    def _stage_held_rows(conn: psycopg.Connection, source: WindowInput, read: EnrichedWindow) -> EnrichedWindow:
        """Stage beside the read's rows those ``enriched_events`` holds for the window and the read did not
        return, as :meth:`_upsert_window` stages what it reads, and enrich the staged rows in a fresh pass
        (``read``: the read's own pass, whose duplicate and moved counts are kept). A read's row that loses to
        the window's held row of its id (``_DROP_HELD_WINNERS``: the read returned only a copy with an earlier event
        time) is dropped first, so the held row is staged instead: the latest event time wins whatever was read.

        They are read from the staging table page by page, of the reader's default size (every recompute takes
        this pass, so a page must stay a small, fixed part of the peak), so only a page is held. Each id has one row
        there (the read's were settled, the others come from the key of ``enriched_events``), so the pass holds no
        row back and settles nothing. The devices are staged again, for the rows added.
        """
        conn.execute(_DROP_HELD_WINNERS, (source.window.start,))
        conn.execute(_STAGE_HELD_EVENTS, (source.window.start,))
        conn.execute("DELETE FROM stage_devices")
        enrichment = source.enrichment()
        with conn.cursor("stage_held_events") as held:
            set_json_loads(_json_floats, held)
            held.execute(f"SELECT {_ROW_COLUMNS} FROM stage_events")
            while page := held.fetchmany(1000):
                enrichment.accept(map(_stored_event, page))
        enriched, _ = enrichment.finish()
        with _copy_cursor(conn) as cur:
            _copy_devices(cur, enriched)
        return replace(enriched, duplicate_ids=read.duplicate_ids, moved_ids=read.moved_ids)

    @staticmethod
    def _stage_figures(conn: psycopg.Connection, enriched: EnrichedWindow) -> None:
        conn.execute(_STAGE_FIGURES.encode(), prepare=False)
        with _copy_cursor(conn) as cur:
            with cur.copy("COPY stage_device_stats FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_DEVICE_STATS_TYPES)
                for s in enriched.device_stats:
                    copy.write_row((s.device.device_id, s.device.known, s.device.site_id, s.event_count,
                                    s.critical_count, s.first_event_time, s.last_event_time, s.measurements_json))
            with cur.copy("COPY stage_site_stats FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_SITE_STATS_TYPES)
                for site in enriched.site_stats:
                    copy.write_row((site.site_id, site.site_name, site.region, site.site_timezone, site.device_count,
                                    site.event_count, site.critical_count, site.measurements_json))


def _stream_window(conn: psycopg.Connection, cur: psycopg.Cursor,
                   source: WindowInput, table: Literal["enriched_events", "stage_events"]) -> EnrichedWindow:
    """COPY the rows a fresh enrichment pass accepts into ``table`` as the pages arrive, then settle the ids read
    twice: the held-back winners replace the rows written for their ids. ``enriched_events`` takes the rows
    joined with their device's reference columns, ``stage_events`` the narrow ones."""
    start = source.window.start
    row: Callable[[StoredEvent, bool, DeviceContext], tuple[Any, ...]]
    if table == "enriched_events":
        statement, types, window_start = _COPY_NEW_EVENTS, _NEW_EVENT_TYPES, start

        def row(e: StoredEvent, critical: bool, d: DeviceContext) -> tuple[Any, ...]:
            return (e.event_id, start, e.device_id, e.event_time, e.enqueued_time, e.event_type, e.severity,
                    critical, e.measurements, d.known, d.site_id, d.model, d.firmware, d.owner, d.site_name,
                    d.region, d.site_timezone)
    else:
        statement, types, window_start = "COPY stage_events FROM STDIN (FORMAT BINARY)", _EVENT_TYPES, None

        def row(e: StoredEvent, critical: bool, d: DeviceContext) -> tuple[Any, ...]:
            return (e.event_id, e.device_id, e.event_time, e.enqueued_time, e.event_type, e.severity, critical,
                    e.measurements)

    enrichment = source.enrichment()
    with cur.copy(statement) as copy:
        copy.set_types(types)
        write = copy.write_row
        for page in source.read():
            for accepted in enrichment.accept(page):
                write(row(*accepted))
    if table == "stage_events":  # (a COPY into enriched_events fails on an id another window holds: it is staged)
        enrichment.lose(conn.execute(_DROP_LOSERS, (start,)).fetchall())
    enriched, replacements = enrichment.finish(_rows_of(conn, table, enrichment.suspects, window_start))
    if replacements:
        conn.execute(f"DELETE FROM {table} WHERE event_id = ANY(%s)", ([e.event_id for e, _, _ in replacements],))
        with cur.copy(statement) as copy:
            copy.set_types(types)
            for accepted in replacements:
                copy.write_row(row(*accepted))
    return enriched


def _rows_of(conn: psycopg.Connection, table: Literal["enriched_events", "stage_events"], devices: frozenset[str],
             window_start: datetime | None = None) -> list[StoredEvent]:
    """The rows of ``devices`` in ``table`` (of the window starting at ``window_start``, when given)."""
    if not devices:
        return []
    where = "device_id = ANY(%s)"
    params: list[object] = [sorted(devices)]
    if window_start is not None:
        where += " AND window_start = %s"
        params.append(window_start)
    with conn.cursor() as cursor:
        # jsonb prints an integral double without exponent (1e20 as 100000000000000000000): read every number back
        # as the float ingest stored, not as an int that orjson refuses past 64 bits when it writes the figures.
        set_json_loads(_json_floats, cursor)
        cursor.execute(f"SELECT {_ROW_COLUMNS} FROM {table} WHERE {where}", params)
        return [_stored_event(row) for row in cursor]


def _stored_event(row: tuple[Any, ...]) -> StoredEvent:
    """A row of ``_ROW_COLUMNS`` (of ``enriched_events`` or ``stage_events``) as the event it was enriched from."""
    event_id, device_id, event_time, enqueued, event_type, severity, critical, measurements = row
    return StoredEvent(event_id, device_id, utc(event_time), event_type, severity, critical, measurements,
                       enqueued_time=utc(enqueued))


def _copy_devices(cur: psycopg.Cursor, enriched: EnrichedWindow) -> None:
    """Stage the reference columns of every device of the window, for the upsert's join."""
    with cur.copy("COPY stage_devices FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_DEVICE_TYPES)
        for d in enriched.devices.values():
            copy.write_row((d.device_id, d.known, d.site_id, d.model, d.firmware, d.owner, d.site_name, d.region,
                            d.site_timezone))


@contextmanager
def _copy_cursor(conn: psycopg.Connection) -> Iterator[psycopg.Cursor]:
    """A cursor whose ``jsonb`` values are encoded by orjson (cheaper than json.dumps per row, same values)."""
    with conn.cursor() as cur:
        set_json_dumps(orjson.dumps, cur)
        yield cur
