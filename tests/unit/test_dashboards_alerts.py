"""Dashboards and alerts as code refer only to metrics Sluice exports, and every file parses.

The list of instruments is ``shared/telemetry_names.py``; the Prometheus names are
derived from it the way ``opentelemetry-exporter-prometheus`` derives them. PromQL
is parsed with ``promql-parser`` (Prometheus' own grammar, in Rust); the
monitoring kustomization is rendered by kubectl like the base.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from shared.settings import ChangeFeedSettings, EnrichmentSettings
from shared.telemetry_names import BY_NAME, INSTRUMENTS, exported_series
from tests.deploy.validation import builtin_problems, render

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "k8s-keda" / "monitoring"
KQL = ROOT / "infra" / "alerts"
SERIES = re.compile(r"\bsluice_[a-z0-9_]+\b")
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h"}


def promql(expr: str) -> set[str]:
    """The sluice_* series an expression reads; it must parse as PromQL."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    promql_parser.parse(expr)  # raises on a syntax error
    return set(SERIES.findall(expr))


def dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text(encoding="utf-8"))
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def rules() -> list[dict]:
    doc = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text(encoding="utf-8"))
    assert doc["kind"] == "PrometheusRule" and doc["apiVersion"] == "monitoring.coreos.com/v1"
    return [rule for group in doc["spec"]["groups"] for rule in group["rules"]]


def test_prometheus_names_are_the_exporters() -> None:
    assert BY_NAME["sluice.ingest.events"].series == ("sluice_ingest_events_total",)
    assert BY_NAME["sluice.ingest.batch.duration"].series[0] == "sluice_ingest_batch_duration_seconds_bucket"
    assert BY_NAME["sluice.eventhub.lag"].series == ("sluice_eventhub_lag",)
    assert BY_NAME["sluice.changefeed.staleness"].series == ("sluice_changefeed_staleness_seconds",)
    assert BY_NAME["sluice.lookup.requests"].labels == ("http_route", "cache", "http_response_status_code")


def test_every_dashboard_panel_reads_exported_metrics_and_every_instrument_has_a_panel() -> None:
    read: set[str] = set()
    for title, expr in dashboard_exprs():
        names = promql(expr)
        assert names, f"panel {title!r} reads no Sluice metric"
        unknown = names - exported_series()
        assert not unknown, f"panel {title!r} reads {sorted(unknown)}, which Sluice does not export"
        read |= names
    uncovered = [i.name for i in INSTRUMENTS if not read & set(i.series)]
    assert not uncovered, f"no panel shows {uncovered}"


def test_every_alert_rule_parses_and_reads_exported_metrics() -> None:
    named = {rule["alert"]: rule for rule in rules()}
    assert set(named) == {"SluiceEventHubLagGrowing", "SluiceAuditMissing", "SluiceDeadLetterRate",
                          "SluiceChangeFeedStale", "SluiceEnrichmentStale", "SluiceLookup5xxRate"}
    for name, rule in named.items():
        names = promql(rule["expr"])
        assert names and names <= exported_series(), f"{name}: {sorted(names - exported_series())}"
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        labels = set(re.findall(r"by \(([a-z_, ]+)\)", rule["expr"]))
        known = {label for i in INSTRUMENTS for label in i.labels}
        assert {part.strip() for group in labels for part in group.split(",")} <= known | {"le"}, name
    assert named["SluiceEventHubLagGrowing"]["for"] == "5m"


def seconds_between_runs(ncrontab: str) -> int:
    """The period of a six-field NCRONTAB of the form the settings use (``*/N`` seconds, or ``0 */N`` minutes)."""
    second, minute, *_ = ncrontab.split()
    if second.startswith("*/"):
        return int(second[2:])
    assert minute.startswith("*/"), ncrontab
    return 60 * int(minute[2:])


def test_staleness_alerts_are_three_times_the_schedules() -> None:
    named = {rule["alert"]: rule["expr"] for rule in rules()}
    configmap = next(d for d in yaml.safe_load_all((ROOT / "k8s-keda" / "configmap.yaml").read_text()) if d)["data"]
    feed = ChangeFeedSettings(schedule=configmap["SLUICE_CHANGEFEED_SCHEDULE"])
    enrich = EnrichmentSettings(schedule=configmap["SLUICE_ENRICH_SCHEDULE"])
    assert named["SluiceChangeFeedStale"].startswith(
        f"max(sluice_changefeed_staleness_seconds) > {3 * seconds_between_runs(feed.schedule)} and ")
    expected = enrich.window_seconds + enrich.allowed_lateness_seconds + 3 * seconds_between_runs(enrich.schedule)
    assert named["SluiceEnrichmentStale"].endswith(f"> {expected}")
    assert f"> {3 * seconds_between_runs(feed.schedule)}" in (KQL / "changefeed-stale.kql").read_text()
    assert f"> {expected}" in (KQL / "enrichment-stale.kql").read_text()


def test_every_kql_alert_queries_an_instrument_of_sluice_and_matches_a_prometheus_alert() -> None:
    files = sorted(KQL.glob("*.kql"))
    assert len(files) == len(rules())
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert text.count("customMetrics") == 1, path.name
        names = re.findall(r'name == "([^"]+)"', text)
        assert names and set(names) <= set(BY_NAME), f"{path.name}: {names}"
        assert text.count("(") == text.count(")") and text.count("[") == text.count("]"), path.name
        dimensions = re.findall(r'customDimensions\["([^"]+)"\]', text)
        attributes = {a for n in names for a in BY_NAME[n].attributes}
        assert set(dimensions) <= attributes, f"{path.name}: {dimensions} not attributes of {names}"


def test_the_lag_is_taken_as_the_max_over_the_pods_that_export_it_never_summed() -> None:
    """Every lookups pod (2+ replicas) exports the same ``sluice_eventhub_lag`` reading (ingest scales to zero, so it
    comes from the processes that stay up): each panel, rule and KQL alert reading it takes the max per partition,
    as a sum would multiply the lag by the replica count."""
    lag = BY_NAME["sluice.eventhub.lag"]
    exprs = [expr for _, expr in dashboard_exprs()] + [rule["expr"] for rule in rules()]
    reading = [expr for expr in exprs if lag.series[0] in expr]
    assert reading, "no panel or rule reads the lag"
    per_partition = re.compile(r"max by \(messaging_destination_partition_id\)")
    for expr in reading:
        assert not re.search(r"\bsum\b", expr), expr
        assert expr.count(lag.series[0]) == len(per_partition.findall(expr)), expr
    kql = [path.read_text(encoding="utf-8") for path in KQL.glob("*.kql")]
    (alert,) = [text for text in kql if f'"{lag.name}"' in text]
    assert "max(value)" in alert and "sum(" not in alert, alert


@pytest.mark.skipif(not __import__("shutil").which("kubectl"), reason="kubectl renders the kustomization")
def test_the_monitoring_kustomization_renders_and_scrapes_the_named_metrics_port() -> None:
    docs = render(MONITORING)
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"PodMonitor", "PrometheusRule", "ConfigMap"}
    assert not builtin_problems([kinds["ConfigMap"]])
    assert kinds["ConfigMap"]["metadata"]["labels"]["grafana_dashboard"] == "1"
    json.loads(kinds["ConfigMap"]["data"]["grafana-dashboard.json"])
    endpoint = kinds["PodMonitor"]["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    base = {d["metadata"]["name"]: d for d in render(ROOT / "k8s-keda") if d["kind"] == "Deployment"}
    configmap = next(d for d in render(ROOT / "k8s-keda") if d["kind"] == "ConfigMap")
    configmap_port = configmap["data"]["SLUICE_METRICS_PORT"]
    for name, deployment in base.items():
        pod = deployment["spec"]["template"]
        assert kinds["PodMonitor"]["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(), name
        ports = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        assert str(ports["metrics"]) == configmap_port == pod["metadata"]["annotations"]["prometheus.io/port"], name


def test_bicep_creates_one_log_alert_per_kql_file_on_application_insights() -> None:
    bicep = (ROOT / "infra" / "resources.bicep").read_text(encoding="utf-8")
    loaded = re.findall(r"loadTextContent\('alerts/([^']+\.kql)'\)", bicep)
    assert sorted(loaded) == sorted(p.name for p in KQL.glob("*.kql"))
    assert re.search(r"^resource alerts 'Microsoft\.Insights/scheduledQueryRules@[^']+' = \[for alert in sluiceAlerts",
                     bicep, re.MULTILINE)
    assert "scopes: [insights.id]" in bicep


def test_a_unit_annotation_adds_nothing_to_the_name() -> None:
    from shared.telemetry_names import Instrument

    assert Instrument("sluice.ingest.events", "counter", "{event}").series == ("sluice_ingest_events_total",)
    assert Instrument("sluice.x.size", "histogram", "By").prometheus == "sluice_x_size_bytes"


def _seconds(duration: str) -> int:
    return int(duration[:-1]) * {"s": 1, "m": 60, "h": 3600}[duration[-1]]


def test_the_audit_alert_fires_for_a_loss_found_just_before_ingest_scales_to_zero() -> None:
    """Only ingest pods export ``sluice_audit_missing``, and KEDA scales ingest to zero ``cooldownPeriod`` after the
    last event: a loss found at a burst's end leaves a series that ends then. The rule must still fire: it reads
    the gauge over a window longer than the cooldown plus its own ``for``."""
    rule = next(r for r in rules() if r["alert"] == "SluiceAuditMissing")
    ingest = next(d for d in yaml.safe_load_all((ROOT / "k8s-keda" / "ingest.yaml").read_text())
                  if d and d.get("kind") == "ScaledObject")
    window = re.search(r"max_over_time\(sluice_audit_missing\[(\d+[smh])\]\)", rule["expr"])
    assert window, rule["expr"]
    assert _seconds(window.group(1)) >= ingest["spec"]["cooldownPeriod"] + _seconds(rule["for"]), rule


def test_the_change_feed_alert_is_not_set_off_by_quiet_devices() -> None:
    """Staleness (now minus the newest enqueued time applied) grows whenever nothing arrives: both alerts also
    require ingest to be storing events, so a night of quiet devices is not a stale feed."""
    rule = next(r for r in rules() if r["alert"] == "SluiceChangeFeedStale")
    assert 'sluice_ingest_events_total{outcome="stored"}' in rule["expr"] and " and " in rule["expr"], rule
    kql = (KQL / "changefeed-stale.kql").read_text(encoding="utf-8")
    assert 'name == "sluice.ingest.events"' in kql and "stored > 0" in kql, kql


def _value_of(expr: promql_parser.Expr) -> promql_parser.Expr:
    """The sub-expression whose sample values an alert's ``$value`` shows: PromQL's ``and``/``unless`` and filtering
    comparisons (no ``bool``) keep the left-hand side's values."""
    while isinstance(expr, promql_parser.BinaryExpr) and str(expr.op) in ("and", "unless", ">", "<", ">=", "<="):
        expr = expr.lhs
    return expr


def test_the_change_feed_stale_alert_summary_shows_the_staleness_not_the_ingest_rate() -> None:
    """``SluiceChangeFeedStale``'s summary says "applied nothing newer for {{ $value }} s". ``a and on() b`` keeps
    a's samples: with the ingest rate on the left, the page read "applied nothing newer for 1588 s" (events per
    second) while the feed was 20 s behind. The staleness is the left-hand side, so ``$value`` is what the summary
    names. (The KQL alert fires on a row and shows no value.)"""
    rule = next(r for r in rules() if r["alert"] == "SluiceChangeFeedStale")
    assert "{{ $value }} s" in rule["annotations"]["summary"]
    shown = str(_value_of(promql_parser.parse(rule["expr"])))
    assert "sluice_changefeed_staleness_seconds" in shown and "sluice_ingest_events_total" not in shown, (
        f"the alert's $value (shown as seconds of staleness) comes from {shown!r}")


def _selector_total(expr: promql_parser.Expr, samples: list[Any]) -> float:
    """``sum(rate(<selector>[w]))`` over counters that all started at 0 in the window: proportional to the sum of the
    matching samples (the same factor for every selector of one expression)."""
    assert isinstance(expr, promql_parser.AggregateExpr) and str(expr.op) == "sum", expr
    (matrix,) = expr.expr.args
    selector = matrix.vector_selector
    total = 0.0
    for sample in samples:
        if sample.name != selector.name:
            continue
        ok = True
        for matcher in selector.matchers.matchers:
            value = sample.labels.get(matcher.name, "")
            ok &= {"MatchOp.Equal": value == matcher.value, "MatchOp.NotEqual": value != matcher.value,
                   "MatchOp.Re": re.fullmatch(matcher.value, value) is not None,
                   "MatchOp.NotRe": re.fullmatch(matcher.value, value) is None}[str(matcher.op)]
        total += sample.value if ok else 0.0
    return total


def test_the_cache_hit_rate_panel_counts_negative_entries_as_hits_as_x_cache_does() -> None:
    """A negative entry (Redis said "does not exist", ``cache="negative"``) is answered from Redis without touching
    Cassandra, and ``Lookup.cache`` sends ``X-Cache: hit`` for it. A panel counting only ``cache="hit"`` showed 60%
    when every lookup was answered from Redis, 40% of them for unknown ids. A request the service never answered
    (``cache="none"``: a bad parameter, a dependency down) has no cache outcome and is left out. The figures come
    from the real SDK through the Prometheus exporter."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import REGISTRY, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from shared.adapters.otel_metrics import OtelMetrics

    provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    try:
        metrics = OtelMetrics(provider)
        for _ in range(60):
            metrics.lookup("devices/{device_id}/latest", "hit", 200, 0.0003)
        for _ in range(40):
            metrics.lookup("devices/{device_id}/latest", "negative", 404, 0.0003)
        for _ in range(5):
            metrics.lookup("devices/{device_id}/latest", "none", 400, 0.0001)
        samples = [s for family in text_string_to_metric_families(generate_latest(REGISTRY).decode())
                   for s in family.samples if s.name.startswith("sluice_lookup_requests")]
    finally:
        provider.shutdown()  # unregisters the reader's collector from prometheus_client's registry
    (expr,) = [expr for title, expr in dashboard_exprs() if title == "Lookup cache hit rate"]
    parsed = promql_parser.parse(expr.replace("$__rate_interval", "5m"))
    assert isinstance(parsed, promql_parser.BinaryExpr) and str(parsed.op) == "/", expr
    rate = _selector_total(parsed.lhs, samples) / _selector_total(parsed.rhs, samples)
    assert rate == 1.0, (f"every answered lookup came from Redis (60 hits, 40 negative entries); the panel shows "
                         f"{rate:.0%}")
