"""The one list of Sluice's OpenTelemetry instruments, and the Prometheus names the exporter derives from them.

Instruments are created where they are recorded (``metrics.get_meter(...)``) from
these names; the dashboards, the Prometheus alert rules and the Application
Insights alert queries refer to them, and ``tests/unit/test_dashboards_alerts.py``
holds every panel and alert to this list. No SDK import here: services may use it.

Prometheus names follow ``opentelemetry-exporter-prometheus`` (its ``_mapping.map_unit``
and prometheus_client's metric families, as of 0.66b2): dots become
underscores; a unit is mapped to its Prometheus word (``s`` -> ``seconds``; an annotation
such as ``{event}`` is dropped) and appended unless the name already ends with it; a counter gets ``_total``; a
histogram is exposed as ``_bucket``, ``_sum`` and ``_count``. Attribute names
are sanitized the same way (``messaging.destination.partition.id`` -> ``messaging_destination_partition_id``).
Application Insights keeps the instrument's own name (``customMetrics.name``)
and its attributes as ``customDimensions``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "histogram", "gauge"]

# The exporter's map from UCUM units to Prometheus words (only the ones Sluice uses, and the unitless ones).
_UNIT_WORDS = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": "", "": ""}


@dataclass(frozen=True, slots=True)
class Instrument:
    """One instrument: its name, kind, unit and attribute names, as docs/observability.md tables them."""

    name: str
    kind: Kind
    unit: str = ""
    attributes: tuple[str, ...] = ()
    description: str = ""

    @property
    def prometheus(self) -> str:
        """The metric family name the Prometheus exporter exposes (without ``_total`` or ``_bucket``)."""
        name = sanitize(self.name)
        # A UCUM annotation ("{event}") is a comment, not a unit: the exporter drops it.
        word = "" if self.unit.startswith("{") else _UNIT_WORDS.get(self.unit, sanitize(self.unit))
        if word and not name.endswith("_" + word):
            name += "_" + word
        return name

    @property
    def series(self) -> tuple[str, ...]:
        """Every series name a scrape shows for this instrument."""
        base = self.prometheus
        if self.kind == "counter":
            return (base + "_total",)
        if self.kind == "histogram":
            return (base + "_bucket", base + "_sum", base + "_count")
        return (base,)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(sanitize(a) for a in self.attributes)


def sanitize(name: str) -> str:
    """A Prometheus metric or label name: every character outside ``[a-zA-Z0-9_:]`` becomes ``_``."""
    return re.sub(r"[^a-zA-Z0-9_:]", "_", name)


# OpenTelemetry messaging semantic conventions: the Event Hubs partition and consumer group.
PARTITION = "messaging.destination.partition.id"
CONSUMER_GROUP = "messaging.consumer.group.name"

INSTRUMENTS: tuple[Instrument, ...] = (
    Instrument("sluice.ingest.events", "counter", attributes=("outcome", PARTITION),
               description="events by outcome: stored, dead_lettered, duplicate, superseded"),
    Instrument("sluice.ingest.batch.duration", "histogram", "s", (PARTITION,), "one ingest batch, end to end"),
    Instrument("sluice.ingest.delay", "histogram", "s", (), "enqueued in Event Hubs -> stored"),
    Instrument("sluice.eventhub.lag", "gauge", "", (PARTITION, CONSUMER_GROUP),
               "last enqueued - checkpoint, counted as KEDA counts it"),
    Instrument("sluice.changefeed.events", "counter", attributes=("critical",), description="changes applied"),
    Instrument("sluice.changefeed.delay", "histogram", "s", (), "stored -> written to Redis (projection lag)"),
    Instrument("sluice.changefeed.staleness", "gauge", "s", (), "now - newest change applied"),
    Instrument("sluice.lookup.requests", "counter", attributes=("http.route", "cache", "http.response.status_code"),
               description="lookups by route, cache outcome and status"),
    Instrument("sluice.lookup.duration", "histogram", "s", ("http.route", "cache"), "query latency"),
    Instrument("sluice.enrich.windows", "counter", attributes=("outcome",),
               description="enrichment windows: enriched, recomputed, failed"),
    Instrument("sluice.enrich.duration", "histogram", "s", (), "one enrichment run"),
    Instrument("sluice.enrich.freshness", "gauge", "s", (), "now - end of the enrichment watermark"),
    Instrument("sluice.cassandra.throttled", "counter", attributes=("operation", "outcome"),
               description="429 / Overloaded answers: retried, gave_up"),
    Instrument("sluice.deadletter.letters", "counter", attributes=("reason",), description="dead letters written"),
    Instrument("sluice.audit.missing", "gauge", "", (PARTITION,),
               "sequence numbers checkpointed past but neither stored nor dead-lettered"),
)

BY_NAME = {i.name: i for i in INSTRUMENTS}


def exported_series() -> frozenset[str]:
    """Every Prometheus series name Sluice's instruments produce."""
    return frozenset(s for i in INSTRUMENTS for s in i.series)
