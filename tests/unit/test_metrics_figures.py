"""The live table's figures from a Prometheus scrape, on text prometheus_client itself exposes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from sluice.metrics_figures import parse

PARTITION, GROUP = "messaging_destination_partition_id", "messaging_consumer_group_name"  # the exported labels


def test_stored_dead_lettered_and_lag_come_from_the_exported_series() -> None:
    registry = CollectorRegistry()
    events = Counter("sluice_ingest_events", "events", ["outcome", PARTITION], registry=registry)
    events.labels("stored", "0").inc(7)
    events.labels("stored", "1").inc(5)
    events.labels("dead_lettered", "1").inc(2)
    events.labels("duplicate", "0").inc(3)
    lag = Gauge("sluice_eventhub_lag", "lag", [PARTITION, GROUP], registry=registry)
    lag.labels("0", "sluice").set(4)
    lag.labels("1", "sluice").set(0)
    figures = parse(generate_latest(registry).decode())
    assert (figures.stored, figures.dead_lettered) == (12, 2)
    assert figures.lag_by_partition == {"0": 4, "1": 0}
    assert "sluice_ingest_events" in figures.families


def test_the_live_table_takes_its_figures_from_a_metrics_endpoint_and_keeps_the_probe_without_one() -> None:
    from prometheus_client import start_http_server

    from sluice.commands.up import _from_metrics
    from sluice.delivery import Figures

    registry = CollectorRegistry()
    Counter("sluice_ingest_events", "events", ["outcome", PARTITION], registry=registry).labels(
        "stored", "0").inc(40)
    Gauge("sluice_eventhub_lag", "lag", [PARTITION], registry=registry).labels("0").set(3)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        figures = Figures(stored=38, dead_lettered=1, critical_cached=5, lag=9, lag_by_partition={"0": 9})
        assert _from_metrics(figures, url)
        assert (figures.stored, figures.dead_lettered, figures.lag, figures.lag_by_partition) == (40, 0, 3, {"0": 3})
        assert figures.critical_cached == 5  # not a metric: still probed
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    figures = Figures(stored=38)
    assert not _from_metrics(figures, url) and figures.stored == 38
