"""shared.telemetry: set-up from the environment, the services' figures through the real SDK, spans and log limits."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from cassandra.protocol import OverloadedErrorMessage
from cassandra.query import SimpleStatement
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from pydantic import ValidationError

from shared import telemetry
from shared.adapters.cassandra.retry import CosmosRetryPolicy
from shared.adapters.otel_metrics import reason_kind
from shared.domain.events import EventMetadata, Limits, RawRecord, parse_records
from shared.exceptions import ConfigurationError, TransientError
from shared.ports.metrics import NO_METRICS
from shared.services.changefeed import ChangeFeedService
from shared.settings import EnrichmentSettings, TelemetrySettings, load_settings
from tests.unit.test_changefeed_service import FakeFeed, FakePositions, FakeSink, stored
from tests.unit.test_enrichment import T0, MemoryReader, MemoryStore, StaticReference, W
from tests.unit.test_refreshed_figures import eventually

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PRODUCER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def sdk() -> Iterator[SimpleNamespace]:
    reader, spans = InMemoryMetricReader(), InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))  # the SDK's default, whatever OTEL_TRACES_SAMPLER
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    meter_provider = MeterProvider(metric_readers=[reader])
    active = telemetry.Telemetry(meter_provider, tracer_provider,
                                 metrics=telemetry.OtelMetrics(meter_provider, clock=lambda: NOW))
    previous = telemetry.activate(active)
    yield SimpleNamespace(reader=reader, spans=spans, metrics=active.metrics, meter_provider=meter_provider)
    telemetry.activate(previous)


def collected(reader: InMemoryMetricReader) -> dict[str, dict[frozenset, Any]]:
    out: dict[str, dict[frozenset, Any]] = {}
    data = reader.get_metrics_data()
    for resource_metrics in data.resource_metrics if data else ():
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = point.count if hasattr(point, "bucket_counts") else point.value
                    out.setdefault(metric.name, {})[frozenset(point.attributes.items())] = value
    return out


# --- set-up ---


def test_nothing_configured_is_no_provider_and_no_cost() -> None:
    off = telemetry.build({}, settings=TelemetrySettings())
    assert off is telemetry.OFF and not off.enabled
    assert off.metrics is NO_METRICS
    previous = telemetry.activate(off)
    try:
        assert telemetry.pipeline_metrics() is NO_METRICS
        with telemetry.stage_span("ingest", links=lambda: pytest.fail("links are read only for a span")) as span:
            assert span is None
        telemetry.record_lookup("events/{event_id}", "hit", 200, 0.001)  # a no-op, not an error
    finally:
        telemetry.activate(previous)


@pytest.mark.parametrize("value", ["nine", "70000", "-1"])
def test_a_bad_metrics_port_is_named(value: str) -> None:
    environ = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "SLUICE_CASSANDRA_HOSTS": "127.0.0.1",
               "SLUICE_REDIS_URL": "redis://127.0.0.1:6379/0", "SLUICE_POSTGRES_HOST": "127.0.0.1",
               "SLUICE_METRICS_PORT": value}
    with pytest.raises(ConfigurationError, match="SLUICE_METRICS_PORT: "):
        load_settings(environ)


def test_an_otlp_protocol_sluice_does_not_ship_is_named() -> None:
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc'"):
        telemetry.build({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                         "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, settings=TelemetrySettings(), install=False)


def test_the_resource_names_sluice_and_the_pod_unless_the_standard_variables_do(monkeypatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    pod = {"HOSTNAME": "sluice-ingest-7d9f-x2x", "KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    attributes = telemetry.service_resource(pod).attributes
    assert attributes["service.name"] == "sluice"
    assert attributes["k8s.pod.name"] == attributes["service.instance.id"] == "sluice-ingest-7d9f-x2x"
    assert "k8s.pod.name" not in telemetry.service_resource({"HOSTNAME": "laptop"}).attributes
    monkeypatch.setenv("OTEL_SERVICE_NAME", "sluice-eu")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=given")
    attributes = telemetry.service_resource(pod).attributes
    assert (attributes["service.name"], attributes["k8s.pod.name"]) == ("sluice-eu", "given")


# --- the services' figures ---


def test_change_feed_pages_count_critical_events_and_set_delay_and_staleness(sdk) -> None:
    events = [stored(i, critical=i in (1, 4), enqueued_time=NOW - timedelta(seconds=30 - i)) for i in range(7)]
    ChangeFeedService(FakeFeed(events, page_size=3), FakeSink(), FakePositions(), feed_name="f", clock=lambda: NOW,
                      metrics=sdk.metrics).run()
    metrics = collected(sdk.reader)
    assert metrics["sluice.changefeed.events"] == {frozenset({("critical", True)}): 2,
                                                   frozenset({("critical", False)}): 5}
    assert metrics["sluice.changefeed.delay"] == {frozenset(): 3}  # one point per page, not per event
    assert metrics["sluice.changefeed.staleness"] == {frozenset(): 24.0}  # the newest applied was enqueued at -24 s


def test_enrichment_runs_count_windows_by_outcome_and_set_freshness(sdk) -> None:
    reader, store, reference = MemoryReader(), MemoryStore(), StaticReference()
    store.load_state(T0)
    settings = EnrichmentSettings(window_seconds=300, allowed_lateness_seconds=120, late_horizon_seconds=3600,
                                  initial_lookback_seconds=0)
    from shared.services.enrichment import EnrichmentService

    service = EnrichmentService(reader, reference, store, settings, metrics=sdk.metrics, clock=lambda: NOW)
    service.run(now=T0 + 3 * W + timedelta(minutes=1))  # two closed windows
    store.fail_on = T0 + 2 * W
    with pytest.raises(TransientError):
        service.run(now=T0 + 4 * W)
    metrics = collected(sdk.reader)
    assert metrics["sluice.enrich.windows"] == {frozenset({("outcome", "enriched")}): 2,
                                                frozenset({("outcome", "failed")}): 1}
    assert metrics["sluice.enrich.duration"] == {frozenset(): 2}
    assert metrics["sluice.enrich.freshness"] == {frozenset(): (NOW - (T0 + 2 * W)).total_seconds()}


def test_throttled_cassandra_requests_are_counted_by_operation_and_outcome(sdk) -> None:
    policy = CosmosRetryPolicy(max_retries=1, max_wait=0.001)
    statement = SimpleStatement("INSERT INTO ks.events_by_id (event_id) VALUES (?)")
    overloaded = OverloadedErrorMessage(0x1001, "Request rate is large. RetryAfterMs=1", None)
    assert policy.on_request_error(statement, None, overloaded, 0)[0] == policy.RETRY
    assert policy.on_request_error(statement, None, overloaded, 1)[0] == policy.RETHROW
    assert collected(sdk.reader)["sluice.cassandra.throttled"] == {
        frozenset({("operation", "INSERT"), ("outcome", "retried")}): 1,
        frozenset({("operation", "INSERT"), ("outcome", "gave_up")}): 1,
    }


def test_record_lookup_counts_requests_and_times_them(sdk) -> None:
    telemetry.record_lookup("devices/{device_id}/latest", "hit", 200, 0.002)
    telemetry.record_lookup("devices/{device_id}/latest", "miss", 200, 0.010)
    telemetry.record_lookup("devices/{device_id}/latest", "miss", 503, 2.0)
    metrics = collected(sdk.reader)
    route = ("http.route", "devices/{device_id}/latest")
    assert metrics["sluice.lookup.requests"] == {
        frozenset({route, ("cache", "hit"), ("http.response.status_code", 200)}): 1,
        frozenset({route, ("cache", "miss"), ("http.response.status_code", 200)}): 1,
        frozenset({route, ("cache", "miss"), ("http.response.status_code", 503)}): 1,
    }
    assert metrics["sluice.lookup.duration"] == {frozenset({route, ("cache", "hit")}): 1,
                                                 frozenset({route, ("cache", "miss")}): 2}


def test_a_failing_lag_reading_reports_no_point_rather_than_zero(sdk) -> None:
    """The lag is read on a thread of its own (never in the collection); its last figures are reported, and a
    failed reading reports no point rather than a false 0."""
    answer: list[dict[str, int] | Exception] = [{"0": 5, "1": 0}]

    def lag() -> dict[str, int]:
        value = answer[0]
        if isinstance(value, Exception):
            raise value
        return value

    figures = sdk.metrics.register_lag_gauge(lag, "sluice", period=0.05)
    expected = {
        frozenset({("messaging.destination.partition.id", "0"), ("messaging.consumer.group.name", "sluice")}): 5,
        frozenset({("messaging.destination.partition.id", "1"), ("messaging.consumer.group.name", "sluice")}): 0}
    assert eventually(lambda: collected(sdk.reader).get("sluice.eventhub.lag") == expected)
    answer[0] = RuntimeError("Event Hubs down")
    assert eventually(lambda: "sluice.eventhub.lag" not in collected(sdk.reader))
    figures.stop()


def test_the_lag_gauge_registered_again_after_a_reset_exports_the_new_reading(sdk) -> None:
    """``bootstrap.reset()`` stops the lag gauge's figures; the next worker start registers new ones on the same
    meter provider (``telemetry.configure`` runs once per process). The SDK hands back the instrument already made
    under ``sluice.eventhub.lag`` and drops a new callback: the gauge kept calling the stopped figures, reported no
    point three periods later, for good, and ``SluiceEventHubLagGrowing`` could never fire again."""
    partition_0 = frozenset({("messaging.destination.partition.id", "0"), ("messaging.consumer.group.name", "sluice")})
    first = sdk.metrics.register_lag_gauge(lambda: {"0": 1}, "sluice", period=0.05)
    assert eventually(lambda: collected(sdk.reader).get("sluice.eventhub.lag") == {partition_0: 1})
    first.stop()  # what bootstrap.reset() does
    second = sdk.metrics.register_lag_gauge(lambda: {"0": 42}, "sluice", period=0.05)  # what export_lag() does next
    try:
        assert eventually(lambda: collected(sdk.reader).get("sluice.eventhub.lag") == {partition_0: 42}), (
            f"after registering again the gauge reports {collected(sdk.reader).get('sluice.eventhub.lag')}")
    finally:
        second.stop()


class _Audit:
    """An ``AuditService`` stand-in (our own port): every audit finds ``missing`` in partition 0."""

    def __init__(self, missing: int) -> None:
        self.missing = missing

    def audit(self, *, window: int) -> Any:
        return SimpleNamespace(partitions=[SimpleNamespace(partition="0", missing=self.missing)])


def test_the_audit_gauge_registered_again_after_a_reset_exports_the_new_audit(sdk) -> None:
    """``bootstrap.reset()`` stops the cached ``AuditGauge``; the next ``ingest_service()`` registers a new one on the
    same provider. The SDK dropped the new callback (same name, unit, description): the stopped gauge's last audit
    expired after three intervals and the zero-loss gauge reported nothing from then on, a loss never alerted."""
    from shared.adapters.audit_metrics import register_audit_gauge

    partition_0 = frozenset({("messaging.destination.partition.id", "0")})
    first = register_audit_gauge(_Audit(0), window=100, max_age=0.05,  # type: ignore[arg-type]  # a stand-in
                                 meter_provider=sdk.meter_provider)
    assert eventually(lambda: collected(sdk.reader).get("sluice.audit.missing") == {partition_0: 0})
    first.stop()  # what bootstrap.reset() does
    second = register_audit_gauge(_Audit(7), window=100, max_age=0.05,  # type: ignore[arg-type]  # a stand-in
                                  meter_provider=sdk.meter_provider)
    try:
        assert eventually(lambda: collected(sdk.reader).get("sluice.audit.missing") == {partition_0: 7}), (
            f"after registering again the gauge reports {collected(sdk.reader).get('sluice.audit.missing')}")
    finally:
        second.stop()


def histogram_quantile(q: float, bounds: tuple[float, ...], counts: tuple[int, ...]) -> float:
    """Prometheus' ``histogram_quantile`` (promql/quantile.go ``bucketQuantile``) over one histogram's buckets:
    cumulative counts, the rank's bucket found, linear interpolation inside it, 0 as the first bucket's lower
    bound (when its upper bound is positive), the highest finite bound for the +Inf bucket."""
    cumulative, total = [], 0
    for count in counts:
        total += count
        cumulative.append(total)
    rank = q * total
    index = next(i for i, c in enumerate(cumulative) if c >= rank)
    if index == len(bounds):
        return bounds[-1]
    lower = 0.0 if index == 0 else bounds[index - 1]
    below = 0 if index == 0 else cumulative[index - 1]
    return lower + (bounds[index] - lower) * ((rank - below) / (cumulative[index] - below))


def histogram_point(reader: InMemoryMetricReader, name: str) -> Any:
    """The one data point of histogram ``name``."""
    data = reader.get_metrics_data()
    (point,) = [p for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
                if m.name == name for p in m.data.data_points]
    return point


def test_the_projection_lag_p99_can_tell_whether_the_two_second_target_is_met(sdk) -> None:
    """``sluice.changefeed.delay`` (Grafana's "Projection lag ... (p50, p99)") is held to "send to critical-in-Redis:
    p99 at most 2 s" (docs/benchmarks.md, measured 1.71 s). With boundaries jumping from 1 s to 2.5 s,
    ``histogram_quantile(0.99, ...)`` interpolated inside (1, 2.5] and showed every 1.71 s page as 2.49 s: a met
    target looked missed. With a boundary at the target the panel's p99 is at most 2 s."""
    for i in range(1000):
        sdk.metrics.changefeed_applied([stored(i, critical=True, enqueued_time=NOW - timedelta(seconds=1.71))], 1)
    point = histogram_point(sdk.reader, "sluice.changefeed.delay")
    assert point.count == 1000
    p99 = histogram_quantile(0.99, tuple(point.explicit_bounds), tuple(point.bucket_counts))
    assert p99 <= 2.0, (f"every page reached Redis 1.71 s after its enqueue (target p99 <= 2 s, met); the "
                        f"dashboard's histogram_quantile(0.99) says {p99:.2f} s (bounds {point.explicit_bounds})")


@pytest.mark.parametrize(("took", "target"), [(0.00028, 0.0003), (0.0075, 0.008)], ids=["hit-c1-0.3ms", "hit-c32-8ms"])
def test_the_lookup_latency_p99_can_tell_whether_each_documented_target_is_met(sdk, took: float,
                                                                               target: float) -> None:
    """``sluice.lookup.duration`` has boundaries of its own from 0.1 ms: the lookups are held to a cache-hit p99 of
    0.3 ms at concurrency 1 and 8 ms at 32 (docs/api.md), and ``histogram_quantile(0.99, ...)`` (the "Lookup
    latency (p99)" panel) interpolates inside the rank's bucket. With the pipeline's second buckets (first boundary
    5 ms) every hit showed as 4.95 ms; with neither target a boundary, lookups that all took 0.28 ms showed 0.50 ms
    and 7.5 ms showed 9.95 ms: both met, both shown as missed. Each target is a boundary."""
    for _ in range(1000):
        sdk.metrics.lookup("devices/{device_id}/latest", "hit", 200, took)
    point = histogram_point(sdk.reader, "sluice.lookup.duration")
    assert point.explicit_bounds[0] == 0.0001 and point.explicit_bounds[-1] == 1.0
    p99 = histogram_quantile(0.99, tuple(point.explicit_bounds), tuple(point.bucket_counts))
    assert p99 <= target, (f"every lookup took {took * 1000:.2f} ms (target p99 <= {target * 1000:g} ms, met); "
                           f"histogram_quantile(0.99) says {p99 * 1000:.2f} ms (bounds {point.explicit_bounds})")


def test_dead_letter_reasons_are_bounded_labels_for_what_parse_records_says() -> None:
    meta = EventMetadata("0", None, 1, None, None)
    bodies = {b"x" * 300: "too_large", b"\xef\xbb\xbf{}": "malformed", b"\xff": "malformed", b"{nope": "malformed",
              b"7": "malformed", b"[]": "malformed", b"[1]": "malformed", b'{"event_id": 1}': "contract"}
    for body, kind in bodies.items():
        (rejected,) = parse_records([RawRecord(body, meta)], limits=Limits(max_body_bytes=256), now=NOW).errs
        assert reason_kind(rejected.reason) == kind, rejected.reason
    assert reason_kind("event store unavailable: NoHostAvailable") == "store_unavailable"
    assert reason_kind("validation failed unexpectedly: RuntimeError: a bug") == "validation_failed"


# --- spans ---


def test_a_stage_span_links_the_messages_and_has_the_hosts_parent(sdk) -> None:
    host = "00-11111111111111111111111111111111-2222222222222222-01"
    properties = [{"traceparent": PRODUCER}, {"Diagnostic-Id": PRODUCER}, {"Diagnostic-Id": "garbage"}, {}, "x"]
    with telemetry.stage_span("ingest", parent=host, links=lambda: telemetry.message_links(properties)):
        pass
    (span,) = sdk.spans.get_finished_spans()
    assert span.name == "sluice.ingest"
    assert format(span.context.trace_id, "032x") == "1" * 32 and format(span.parent.span_id, "016x") == "2" * 16
    assert [format(link.context.span_id, "016x") for link in span.links] == ["b7ad6b7169203331"]  # one per context


def test_message_links_are_not_read_for_a_span_that_is_not_recorded(sdk) -> None:
    """``links`` used to be called before the sampler decided: under a host context flagged not sampled (``-00``,
    which the parent-based sampler follows) or with ``parentbased_traceidratio`` 0.05, ingest still decoded the
    batch's ``PropertiesArray`` (about a sixth of ingest's own CPU, devhost/eventhub_trigger.py) and extracted a
    context per message for a span that is dropped. The span is started first; the links are read only when it is
    recorded (docs/observability.md)."""
    read: list[int] = []

    def links() -> list[Any]:
        read.append(1)
        return telemetry.message_links([{"traceparent": PRODUCER}])

    not_sampled = "00-11111111111111111111111111111111-2222222222222222-00"
    with telemetry.stage_span("ingest", parent=not_sampled, links=links, consumer=True) as span:
        assert not span.is_recording()
    assert sdk.spans.get_finished_spans() == ()
    assert read == [], "the messages' trace contexts were read for a span that is not recorded"


def test_a_failing_stage_is_recorded_on_its_span_and_propagates(sdk) -> None:
    with pytest.raises(TransientError), telemetry.stage_span("changefeed"):
        raise TransientError("redis down")
    (span,) = sdk.spans.get_finished_spans()
    assert not span.status.is_ok and span.events[0].name == "exception"


# --- exporter logs ---


def test_exporter_failures_are_logged_once_a_minute_and_say_how_many_were_held_back() -> None:
    clock = [0.0]
    limit = telemetry.OncePerInterval(60.0, monotonic=lambda: clock[0])
    log = logging.getLogger("opentelemetry.exporter.otlp.proto.http.test")

    def record(message: str, level: int = logging.ERROR) -> logging.LogRecord:
        return log.makeRecord(log.name, level, __file__, 1, message, (), None)

    assert limit.filter(record("Failed to export span batch"))
    for second in range(1, 60, 5):
        clock[0] = second
        assert not limit.filter(record("Failed to export span batch"))
    assert limit.filter(record("debug detail", logging.DEBUG))  # below WARNING: never held back
    clock[0] = 60.0
    passed = record("Failed to export span batch")
    assert limit.filter(passed)
    assert passed.getMessage() == "Failed to export span batch (12 more such messages in the last 60 s were not logged)"


def test_traced_clients_default_to_redis_and_psycopg_and_unknown_names_are_refused() -> None:
    assert TelemetrySettings().trace_clients == ["redis", "psycopg"]
    assert TelemetrySettings(trace_clients="cassandra, redis").trace_clients == ["cassandra", "redis"]
    assert TelemetrySettings(trace_clients="none").trace_clients == []
    with pytest.raises(ValidationError, match="'cassandra', 'redis' or 'psycopg'"):
        TelemetrySettings(trace_clients="mongo")


def test_an_unreadable_appinsights_secret_is_a_warning_and_is_read_again_until_telemetry_is_set_up(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """shared.bootstrap.start_telemetry: a Key Vault read that fails never raises (telemetry must not cost an
    ingest batch); it is a WARNING naming the secret, retried on a timer, and telemetry is set up once it works."""
    import threading

    from shared import bootstrap
    from shared.exceptions import DependencyUnavailable

    reads: list[str | None] = []
    configured = threading.Event()

    def read(name: str | None) -> None:
        reads.append(name)
        if len(reads) < 3:
            raise DependencyUnavailable("key vault", "cannot connect")

    monkeypatch.setattr(bootstrap, "appinsights_from_vault", read)
    monkeypatch.setattr(telemetry, "configure", lambda settings=None: configured.set())
    cfg = TelemetrySettings(appinsights_connection_string_secret="ai-conn")
    try:
        assert bootstrap.start_telemetry(cfg, retry_seconds=0.05) is False
        assert configured.wait(5), f"telemetry was not set up after {len(reads)} reads"
    finally:
        bootstrap.reset()
    assert reads == ["ai-conn"] * 3
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "'ai-conn'" in r.getMessage()]
    assert len(warnings) == 2, warnings


def test_a_telemetry_retry_whose_read_outlives_a_reset_is_not_started_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Key Vault read on the retry thread can take the client's whole timeout (about 45 s). A ``reset`` meanwhile
    (a changed environment, the next test) forgets the settings it was started with: when that read fails, no
    retry is armed with them, to read a vault the process no longer names every minute for ever."""
    import threading

    from shared import bootstrap
    from shared.exceptions import DependencyUnavailable

    reading, release = threading.Event(), threading.Event()
    reads: list[str | None] = []

    def read(name: str | None) -> None:
        reads.append(name)
        reading.set()
        release.wait(5)
        raise DependencyUnavailable("key vault", "read timed out")

    monkeypatch.setattr(bootstrap, "appinsights_from_vault", read)
    cfg = TelemetrySettings(appinsights_connection_string_secret="ai-conn")
    try:
        bootstrap._retry_telemetry_in(0.0, cfg, every=0.05)
        assert reading.wait(5), "the retry thread never read the vault"
        bootstrap.reset()
        release.set()
        time.sleep(0.5)  # ten retry periods
        assert reads == ["ai-conn"], "a retry of the forgotten settings read the vault again"
        assert bootstrap._telemetry_retry is None
    finally:
        release.set()
        bootstrap.reset()
