"""Read-only queries over the reporting views: functions for the CLI, ``PostgresReports`` for the HTTP API.

BI tools query the views directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from shared.exceptions import DependencyUnavailable
from shared.ports.dashboard import Position


@dataclass(frozen=True, slots=True)
class UnknownDevice:
    device_id: str
    event_count: int
    first_seen: datetime
    last_seen: datetime
    windows: int
    now_known: bool


def unknown_devices(conn: psycopg.Connection, *, limit: int | None = None) -> list[UnknownDevice]:
    """Devices whose events were enriched without a reference row (``report_unknown_devices``), busiest first."""
    rows = conn.execute(
        "SELECT device_id, event_count, first_seen, last_seen, windows, now_known FROM report_unknown_devices "
        "ORDER BY event_count DESC, device_id LIMIT %s", (limit,)).fetchall()
    return [UnknownDevice(*row) for row in rows]


def enrichment_status(conn: psycopg.Connection) -> dict[str, object]:
    """The watermark, the late-scan position and the ledger totals."""
    state = conn.execute("SELECT watermark, late_scan_until, updated_at FROM enrichment_state "
                         "WHERE name = 'default'").fetchone()
    totals = conn.execute("SELECT count(*), coalesce(sum(event_count), 0), max(last_enriched_at) "
                          "FROM enrichment_windows").fetchone()
    assert totals is not None  # an aggregate without GROUP BY always returns one row
    return {
        "watermark": state[0] if state else None,
        "late_scan_until": state[1] if state else None,
        "windows": totals[0],
        "events": totals[1],
        "last_enriched_at": totals[2],
    }


_SITE_COLUMNS = ("site_id", "site_name", "region", "timezone", "local_day", "event_count", "critical_count",
                 "critical_ratio", "peak_active_devices", "active_windows", "first_window_start", "last_window_end")
# How far before the newest day the page's reads of the newest site rows reach, in turn (then without a bound).
_SITE_SPANS = (3, 15, 63, 255, 1023)
_DEVICE_COLUMNS = ("device_id", "known_device", "site_id", "model", "firmware", "last_seen", "events_24h",
                   "critical_24h", "active_windows_24h", "events_total", "critical_total", "health")


def _plain(value: object) -> object:
    """JSON-ready: times as RFC 3339 UTC, days as ISO dates, decimals as floats."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


class PostgresReports:
    """Implements ``shared.ports.dashboard.Reports`` over the reporting views, each read with a ``LIMIT``."""

    def __init__(self, pool: ConnectionPool, *, timeout: float = 2.0) -> None:
        self._pool = pool
        self._timeout = timeout

    def _fetch(self, sql: str, params: tuple[Any, ...] | dict[str, Any]) -> list[tuple[Any, ...]]:
        """The rows of one read, in a transaction whose statements and lock waits end with the timeout: the pool's
        timeout bounds only the wait for a connection, and a table locked by a migration would otherwise hold the
        request, a status thread and a pooled connection for as long as the lock."""
        with self._pool.connection(timeout=self._timeout) as conn, conn.transaction():
            millis = str(max(1, int(self._timeout * 1000)))
            conn.execute("SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)",
                         (millis, millis))
            return conn.execute(sql, params).fetchall()

    def _rows(self, sql: str, params: tuple[Any, ...] | dict[str, Any], columns: tuple[str, ...],
              what: str) -> list[dict[str, Any]]:
        try:
            rows = self._fetch(sql, params)
        except (psycopg.Error, PoolTimeout) as exc:
            raise DependencyUnavailable("postgres", f"reading {what} failed: {type(exc).__name__}") from exc
        return [{name: _plain(value) for name, value in zip(columns, row, strict=True)} for row in rows]

    def site_daily(self, *, site_id: str | None, day_from: date | None, day_to: date | None,
                   limit: int) -> list[dict[str, Any]]:
        """``report_site_daily``'s newest ``limit`` rows from ``day_from`` to ``day_to`` (each optional).

        Read through ``report_site_daily_between``, which reads only the windows that can fall on the days asked
        for. Without ``day_from`` (the page asks for the newest rows) the days asked for start a few days before
        the newest and reach further back, four times as far each time, until they hold ``limit`` rows; the
        last read has no bound. Rows of a later day come first, so the newest ``limit`` of a read that holds
        that many are the newest of all.
        """
        sql = (
            f"SELECT {', '.join(_SITE_COLUMNS)} FROM report_site_daily_between(%(from)s, %(to)s) "
            "WHERE (%(site)s::text IS NULL OR site_id = %(site)s) ORDER BY local_day DESC, site_id LIMIT %(limit)s"
        )
        params: dict[str, Any] = {"site": site_id, "from": day_from, "to": day_to, "limit": limit}
        if day_from is None:
            # a site's local day runs up to 14 hours ahead of UTC: its newest day may be tomorrow's UTC date
            newest = day_to or datetime.now(UTC).date() + timedelta(days=1)
            for days in _SITE_SPANS:
                if newest.toordinal() - days < date.min.toordinal():
                    break
                rows = self._rows(sql, {**params, "from": newest - timedelta(days=days)}, _SITE_COLUMNS,
                                  "report_site_daily")
                if len(rows) >= limit:
                    return rows
        return self._rows(sql, params, _SITE_COLUMNS, "report_site_daily")

    def device_health(self, *, site_id: str | None, health: str | None, limit: int) -> list[dict[str, Any]]:
        sql = (
            f"SELECT {', '.join(_DEVICE_COLUMNS)} FROM report_device_health "
            "WHERE (%(site)s::text IS NULL OR site_id = %(site)s) "
            "AND (%(health)s::text IS NULL OR health = %(health)s) "
            "ORDER BY last_seen DESC NULLS LAST, device_id LIMIT %(limit)s"
        )
        return self._rows(sql, {"site": site_id, "health": health, "limit": limit},
                          _DEVICE_COLUMNS, "report_device_health")

    def enrichment(self) -> Position | None:
        try:
            rows = self._fetch("SELECT watermark, updated_at FROM enrichment_state WHERE name = 'default'", ())
        except psycopg.errors.UndefinedTable:
            return None  # not migrated yet: no enrichment has run
        except (psycopg.Error, PoolTimeout) as exc:
            raise DependencyUnavailable("postgres", f"reading the enrichment watermark failed: {type(exc).__name__}") \
                from exc
        return Position(rows[0][0], rows[0][1]) if rows else None
