"""The live table's figures from a Prometheus scrape, on text prometheus_client itself exposes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from sluice.metrics_figures import parse


def test_stored_dead_lettered_and_lag_come_from_the_exported_series() -> None:
    registry = CollectorRegistry()
    events = Counter("sluice_ingest_events", "events", ["outcome", "eventhub_partition"], registry=registry)
    events.labels("stored", "0").inc(7)
    events.labels("stored", "1").inc(5)
    events.labels("dead_lettered", "1").inc(2)
    events.labels("duplicate", "0").inc(3)
    lag = Gauge("sluice_eventhub_lag", "lag", ["eventhub_partition", "consumer_group"], registry=registry)
    lag.labels("0", "sluice").set(4)
    lag.labels("1", "sluice").set(0)
    figures = parse(generate_latest(registry).decode())
    assert (figures.stored, figures.dead_lettered) == (12, 2)
    assert figures.lag_by_partition == {"0": 4, "1": 0}
    assert "sluice_ingest_events" in figures.families
