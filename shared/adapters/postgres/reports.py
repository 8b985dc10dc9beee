"""Read-only queries over the reporting views (for the CLI; BI tools query the views directly)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg


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
    return {
        "watermark": state[0] if state else None,
        "late_scan_until": state[1] if state else None,
        "windows": totals[0],
        "events": totals[1],
        "last_enriched_at": totals[2],
    }
