"""The live table's figures from the dev host's own metrics (``http://127.0.0.1:9464/metrics``), not from the stores.

``sluice up`` starts the dev host with ``SLUICE_METRICS_PORT``; its OpenTelemetry
Prometheus exporter then says how many events ingest stored and dead-lettered and
the lag per partition (``sluice.ingest.events``, ``sluice.eventhub.lag``). Figures
the metrics do not give (critical events cached, windows enriched) keep coming
from probing the stores. Parsing is ``prometheus_client``'s own.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from shared.telemetry_names import BY_NAME


@dataclass
class MetricFigures:
    stored: int = 0
    dead_lettered: int = 0
    lag_by_partition: dict[str, int] = field(default_factory=dict)
    families: set[str] = field(default_factory=set)


def parse(text: str) -> MetricFigures:
    """Sum the ingest counters by outcome and take the lag per partition from one scrape."""
    figures = MetricFigures()
    events = BY_NAME["sluice.ingest.events"].series[0]
    lag = BY_NAME["sluice.eventhub.lag"].series[0]
    for family in text_string_to_metric_families(text):
        figures.families.add(family.name)
        for sample in family.samples:
            if sample.name == events:
                outcome = sample.labels.get("outcome")
                if outcome == "stored":
                    figures.stored += int(sample.value)
                elif outcome == "dead_lettered":
                    figures.dead_lettered += int(sample.value)
            elif sample.name == lag:
                partition = sample.labels.get("messaging_destination_partition_id", "?")
                figures.lag_by_partition[partition] = max(figures.lag_by_partition.get(partition, 0), int(sample.value))
    return figures


def scrape(url: str, *, timeout: float = 2.0) -> MetricFigures:
    """One scrape of ``url``; raises ``OSError`` when the endpoint does not answer."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return parse(response.read().decode("utf-8"))
