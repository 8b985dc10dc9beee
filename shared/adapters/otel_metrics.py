"""``OtelMetrics``: the pipeline's metrics port (``shared.ports.metrics``) on OpenTelemetry instruments.

Instruments are the ones ``shared/telemetry_names.py`` lists, made once per meter
provider. Each method records a few points per batch, page or run (a sum per
outcome, one histogram point, never one call per event) and annotates the current
span; none raises: a failure is logged at most once a minute per kind. The gauges
(change feed staleness, enrichment freshness, Event Hubs lag) are observable: the
SDK calls them back on each collection, and no callback waits on I/O (the lag is
read on a thread of its own, ``RefreshedFigures``). Set up by ``shared.telemetry``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from opentelemetry import metrics, trace

from shared.adapters.refreshed_figures import RefreshedFigures
from shared.domain.events import Event, Rejected
from shared.domain.stored import StoredEvent
from shared.telemetry_names import BY_NAME, CONSUMER_GROUP, PARTITION

logger = logging.getLogger(__name__)

SCOPE = "sluice"
ERROR_LOG_INTERVAL = 60.0
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                   900.0)
"""The second histograms' boundaries. 1.5 and 2 s are there for the target "send to critical-in-Redis: p99 at most
2 s" (docs/benchmarks.md, ``sluice.changefeed.delay``): a quantile is interpolated inside its bucket, and with
nothing between 1 and 2.5 s a p99 of 1.7 s would show as 2.49 s, a met target as missed."""
LOOKUP_SECONDS_BUCKETS = (0.0001, 0.00025, 0.0003, 0.0005, 0.001, 0.0025, 0.005, 0.008, 0.01, 0.025, 0.05, 0.1, 0.25,
                          0.5, 1.0)
"""``sluice.lookup.duration``'s boundaries: a quantile is only as exact as its bucket is narrow, and the lookups'
targets (docs/api.md: cache-hit p99 0.3 ms at concurrency 1, 8 ms at 32) sit below ``SECONDS_BUCKETS``' first
boundary. Each target is a boundary, so "is the p99 within it" is exact."""
LAG_PERIOD = 5.0
"""Seconds between two readings of the Event Hubs lag for ``sluice.eventhub.lag``."""
MAX_TRACED_IDS = 50
"""Most critical event ids one span lists (``sluice.critical.event_ids``)."""
_TRACED_SPANS = 8
"""Spans whose critical ids are kept to add a later page's to (one per change feed run in progress)."""

_failed_at: dict[str, float] = {}


def reset_failure_log() -> None:
    """Forget which failures were logged this minute (a test that needs the next one logged)."""
    _failed_at.clear()


def telemetry_failed(what: str, exc: BaseException) -> None:
    """A recording that raised: logged at most once a minute per kind, never raised into the invocation."""
    now = time.monotonic()
    last = _failed_at.get(what)
    if last is None or now - last >= ERROR_LOG_INTERVAL:
        _failed_at[what] = now
        logger.warning("telemetry: %s failed", what, exc_info=exc)


def reason_kind(reason: str) -> str:
    """A dead letter's reason as a bounded label (the text itself names ids and values)."""
    if reason.startswith("event store unavailable"):
        return "store_unavailable"
    if reason.startswith("validation failed unexpectedly"):
        return "validation_failed"
    if reason.startswith("body is ") and " bytes; at most " in reason:
        return "too_large"
    if reason.startswith(("body starts with", "body is not valid", "body is a JSON", "body is an empty")):
        return "malformed"
    if " is a JSON " in reason:
        return "malformed"
    return "contract"


class OtelMetrics:
    """Implements :class:`shared.ports.metrics.Metrics` with the instruments of ``shared.telemetry_names``.

    Instruments are made once, on ``meter_provider`` (the global one unless given).
    Each method records a few points per batch, page or run and annotates the
    current span; none raises.
    """

    def __init__(self, meter_provider: metrics.MeterProvider | None = None, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        meter = (meter_provider or metrics.get_meter_provider()).get_meter(SCOPE)
        self._clock = clock

        def counter(name: str) -> metrics.Counter:
            spec = BY_NAME[name]
            return meter.create_counter(spec.name, unit=spec.unit, description=spec.description)

        def histogram(name: str, buckets: Sequence[float] = SECONDS_BUCKETS) -> metrics.Histogram:
            spec = BY_NAME[name]
            return meter.create_histogram(spec.name, unit=spec.unit, description=spec.description,
                                          explicit_bucket_boundaries_advisory=buckets)

        def gauge(name: str, callback: Callable[[Any], list[metrics.Observation]]) -> None:
            spec = BY_NAME[name]
            meter.create_observable_gauge(spec.name, callbacks=[callback], unit=spec.unit,
                                          description=spec.description)

        self._ingest_events = counter("sluice.ingest.events")
        self._ingest_duration = histogram("sluice.ingest.batch.duration")
        self._ingest_delay = histogram("sluice.ingest.delay")
        self._letters = counter("sluice.deadletter.letters")
        self._feed_events = counter("sluice.changefeed.events")
        self._feed_delay = histogram("sluice.changefeed.delay")
        self._windows = counter("sluice.enrich.windows")
        self._enrich_duration = histogram("sluice.enrich.duration")
        self._throttled = counter("sluice.cassandra.throttled")
        self._lookups = counter("sluice.lookup.requests")
        self._lookup_duration = histogram("sluice.lookup.duration", LOOKUP_SECONDS_BUCKETS)
        self._newest_applied: datetime | None = None
        self._traced: dict[tuple[int, int], list[str]] = {}  # (trace id, span id) -> critical ids listed, oldest first
        self._traced_lock = threading.Lock()
        self._watermark: datetime | None = None
        self._lag: tuple[RefreshedFigures, str] | None = None  # (figures, consumer group) of register_lag_gauge
        gauge("sluice.changefeed.staleness", self._staleness)
        gauge("sluice.enrich.freshness", self._freshness)
        gauge("sluice.eventhub.lag", self._eventhub_lag)

    # ingest
    def ingest_batch(self, partition: str | None, *, stored: Sequence[Event], duplicates: int,
                     rejected: Sequence[Rejected], store_failed: int, seconds: float,
                     oldest_enqueued: datetime | None, validation_failed: int = 0, superseded: int = 0) -> None:
        try:
            where = {PARTITION: partition or "unknown"}
            add = self._ingest_events.add
            if stored:
                add(len(stored), {"outcome": "stored", **where})
            # each bad element of an array body is an event; a batch dead-lettered whole counts its valid events
            # (a crash in validation: its records)
            dead = sum(r.count for r in rejected) + store_failed + validation_failed
            if dead:
                add(dead, {"outcome": "dead_lettered", **where})
            if duplicates:
                add(duplicates, {"outcome": "duplicate", **where})
            if superseded:
                add(superseded, {"outcome": "superseded", **where})
            self._ingest_duration.record(seconds, where)
            if stored and oldest_enqueued is not None:
                self._ingest_delay.record(max(0.0, (self._clock() - oldest_enqueued).total_seconds()))
            if rejected:
                for kind, count in Counter(reason_kind(r.reason) for r in rejected).items():
                    self._letters.add(count, {"reason": kind})
            if store_failed:
                self._letters.add(1, {"reason": "store_unavailable"})
            if validation_failed:
                self._letters.add(1, {"reason": "validation_failed"})
            span = trace.get_current_span()
            if span.is_recording():
                span.set_attributes({"sluice.events.stored": len(stored), "sluice.events.duplicates": duplicates,
                                     "sluice.events.dead_lettered": dead, "sluice.events.superseded": superseded})
                critical = [str(e.body.event_id) for e in stored if e.body.severity == "critical"]
                if critical:
                    span.set_attribute("sluice.critical.event_ids", critical[:MAX_TRACED_IDS])
        except Exception as exc:
            telemetry_failed("recording an ingest batch", exc)

    # change feed
    def changefeed_applied(self, events: Sequence[StoredEvent], critical: int) -> None:
        try:
            if critical:
                self._feed_events.add(critical, {"critical": True})
            if len(events) > critical:
                self._feed_events.add(len(events) - critical, {"critical": False})
            enqueued = [e.enqueued_time for e in events if e.enqueued_time is not None]
            if enqueued:
                now = self._clock()
                self._feed_delay.record(max(0.0, (now - min(enqueued)).total_seconds()))
                newest = max(enqueued)
                if self._newest_applied is None or newest > self._newest_applied:
                    self._newest_applied = newest
            span = trace.get_current_span()
            if critical and span.is_recording():
                span.set_attribute("sluice.critical.event_ids",
                                   self._traced_ids(span, [str(e.event_id) for e in events if e.critical]))
        except Exception as exc:
            telemetry_failed("recording a change feed page", exc)

    def _traced_ids(self, span: trace.Span, ids: list[str]) -> list[str]:
        """The critical ids ``span`` lists with ``ids`` added, at most ``MAX_TRACED_IDS``.

        A change feed run is one span and calls ``changefeed_applied`` once per page: setting the attribute replaces
        it, so each page's ids would replace the pages' before. The lists of the last few spans are kept here (runs
        of several feeds may interleave), since the API cannot read a span's attributes back.
        """
        context = span.get_span_context()
        key = (context.trace_id, context.span_id)
        with self._traced_lock:
            listed = self._traced.pop(key, [])
            listed.extend(ids[:MAX_TRACED_IDS - len(listed)])
            self._traced[key] = listed
            while len(self._traced) > _TRACED_SPANS:
                del self._traced[next(iter(self._traced))]
            return list(listed)

    def _staleness(self, _options: Any) -> list[metrics.Observation]:
        newest = self._newest_applied
        if newest is None:
            return []
        return [metrics.Observation(max(0.0, (self._clock() - newest).total_seconds()))]

    # enrichment
    def enrich_run(self, *, enriched: int, recomputed: int, failed: int, seconds: float,
                   watermark: datetime | None) -> None:
        try:
            for outcome, count in (("enriched", enriched), ("recomputed", recomputed), ("failed", failed)):
                if count:
                    self._windows.add(count, {"outcome": outcome})
            self._enrich_duration.record(seconds)
            if watermark is not None:
                self._watermark = watermark
            span = trace.get_current_span()
            if span.is_recording():
                span.set_attributes({"sluice.windows.enriched": enriched, "sluice.windows.recomputed": recomputed,
                                     "sluice.windows.failed": failed})
        except Exception as exc:
            telemetry_failed("recording an enrichment run", exc)

    def _freshness(self, _options: Any) -> list[metrics.Observation]:
        watermark = self._watermark
        if watermark is None:
            return []
        return [metrics.Observation(max(0.0, (self._clock() - watermark).total_seconds()))]

    # adapters and entry points
    def cassandra_throttled(self, operation: str, outcome: str) -> None:
        try:
            self._throttled.add(1, {"operation": operation, "outcome": outcome})
        except Exception as exc:
            telemetry_failed("recording a throttled request", exc)

    def lookup(self, route: str, cache: str, status: int, seconds: float) -> None:
        try:
            self._lookups.add(1, {"http.route": route, "cache": cache, "http.response.status_code": status})
            self._lookup_duration.record(seconds, {"http.route": route, "cache": cache})
        except Exception as exc:
            telemetry_failed("recording a lookup", exc)

    def register_lag_gauge(self, lag: Callable[[], Mapping[str, int]], consumer_group: str, *,
                           period: float = LAG_PERIOD) -> RefreshedFigures:
        """``sluice.eventhub.lag`` per partition from ``lag`` (``CachedPartitionLag.fresh_lag``), read every ``period``.

        ``lag`` runs on a thread of its own (``RefreshedFigures``), never in the
        collection: an unreachable namespace (its SDK retries for about 12 s) must
        not hold the scrape of every other instrument. ``lag`` must read the hub each
        time it is called, never answer from a cache: its figures are dated when it
        returns. Each collection reports the last reading, if it ended less than three
        periods ago; a failed reading
        reports no point (no point is better than a false 0) and is logged at most
        once a minute. Returns the figures, whose ``stop`` ends the reading thread.

        The gauge itself is made once, with the other instruments: the SDK hands back
        the instrument already made under a name and drops a new callback, so a gauge
        registered again (``bootstrap.reset`` stopped the figures, the next worker start
        registers new ones) would keep calling the stopped figures. Its callback reads
        the figures registered last; the ones they replace are stopped.
        """
        figures = RefreshedFigures(lag, name="eventhub-lag", period=period,
                                   failed=lambda exc: telemetry_failed("reading the Event Hubs lag", exc))
        replaced, self._lag = self._lag, (figures, consumer_group)
        if replaced is not None:
            replaced[0].stop()
        figures.start()
        return figures

    def _eventhub_lag(self, _options: Any) -> list[metrics.Observation]:
        current = self._lag
        if current is None:  # not exported by this process (bootstrap.export_lag)
            return []
        figures, consumer_group = current
        return [metrics.Observation(count, {PARTITION: partition, CONSUMER_GROUP: consumer_group})
                for partition, count in figures.latest().items()]
