"""Rows of the PostgreSQL reporting views for the HTTP API (``/api/reports/sites``, ``/api/reports/devices``)."""

from __future__ import annotations

from datetime import date
from typing import Any

from shared.ports.dashboard import Reports

HEALTH_STATES = ("ok", "critical", "silent")


class ReportService:
    def __init__(self, reports: Reports) -> None:
        self._reports = reports

    def sites(self, *, site_id: str | None = None, day_from: date | None = None, day_to: date | None = None,
              limit: int = 100) -> dict[str, Any]:
        """Daily rows per site, newest day first."""
        return {"rows": self._reports.site_daily(site_id=site_id, day_from=day_from, day_to=day_to, limit=limit)}

    def devices(self, *, site_id: str | None = None, health: str | None = None, limit: int = 100) -> dict[str, Any]:
        """Device health rows, most recently seen first."""
        return {"rows": self._reports.device_health(site_id=site_id, health=health, limit=limit)}
