"""Port of the pipeline's telemetry: what each stage did, reported once per batch, page or run.

Services call these methods with figures they already hold (counts, a duration,
the events of a page); the adapter (``shared.adapters.otel_metrics.OtelMetrics``) turns them
into OpenTelemetry instruments and annotates the current span. Services never
import an SDK, and with telemetry off they get :data:`NO_METRICS`, whose methods
do nothing, so the figures cost nothing.

Every method is called once per batch, page or run, never per event; none may
raise (a telemetry failure must not fail an invocation).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from shared.domain.events import Event, Rejected
from shared.domain.stored import StoredEvent


class Metrics(Protocol):
    def ingest_batch(self, partition: str | None, *, stored: Sequence[Event], duplicates: int,
                     rejected: Sequence[Rejected], store_failed: int, seconds: float,
                     oldest_enqueued: datetime | None, validation_failed: int = 0, superseded: int = 0) -> None:
        """One ingest batch: events stored, dead-lettered (``rejected`` plus the events of a batch dead-lettered
        whole: ``store_failed`` when the store failed, ``validation_failed`` the records when validation crashed),
        dropped as duplicates, and ``superseded`` (a replay's, not written: the store holds a later copy of their
        id); its duration; the oldest event's Event Hubs enqueued time."""

    def changefeed_applied(self, events: Sequence[StoredEvent], critical: int) -> None:
        """One chunk of changes written to the cache (after the sink acknowledged it)."""

    def enrich_run(self, *, enriched: int, recomputed: int, failed: int, seconds: float,
                   watermark: datetime | None) -> None:
        """One enrichment run: windows enriched on schedule, recomputed (late events), failed; the watermark."""


class NoMetrics:
    """Telemetry off: every method does nothing."""

    def ingest_batch(self, partition: str | None, *, stored: Sequence[Event], duplicates: int,
                     rejected: Sequence[Rejected], store_failed: int, seconds: float,
                     oldest_enqueued: datetime | None, validation_failed: int = 0, superseded: int = 0) -> None:
        return None

    def changefeed_applied(self, events: Sequence[StoredEvent], critical: int) -> None:
        return None

    def enrich_run(self, *, enriched: int, recomputed: int, failed: int, seconds: float,
                   watermark: datetime | None) -> None:
        return None


NO_METRICS: Metrics = NoMetrics()
