"""Telemetry through the real OpenTelemetry SDK: the ingest function's counters, histograms and span, the lag gauge.

The ingest function is called as the host calls it (``function_app.app``), against
the Cassandra emulator and Azurite; telemetry is the SDK's ``InMemoryMetricReader``
and ``InMemorySpanExporter``, activated for the test (``shared.telemetry.activate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import azure.functions as func
import pytest
import yaml
from azure.core.exceptions import ResourceExistsError
from azure.eventhub import EventData, EventHubProducerClient
from azure.eventhub.extensions.checkpointstoreblob import BlobCheckpointStore
from azure.storage.blob import BlobServiceClient
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from shared import bootstrap, telemetry
from shared.adapters.cassandra.migrations import apply_migrations
from shared.adapters.otel_metrics import OtelMetrics
from shared.domain.events import EventMetadata, Limits, RawRecord, parse_records
from shared.exceptions import TransientError
from shared.services.ingest import IngestService
from shared.settings import TelemetrySettings
from shared.telemetry_names import exported_series
from sluice.launcher import Running
from tests.fixtures.functions import HostContext, user_function
from tests.unit.test_telemetry import collected

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC).replace(microsecond=0)
PRODUCER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def in_memory() -> Iterator[SimpleNamespace]:
    """An SDK meter and tracer provider with in-memory reader and exporter, active for the test."""
    reader, spans = InMemoryMetricReader(), InMemorySpanExporter()
    tracer_provider = telemetry.new_tracer_provider()  # the product's limits
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    previous = telemetry.activate(telemetry.Telemetry(MeterProvider(metric_readers=[reader]), tracer_provider))
    yield SimpleNamespace(reader=reader, spans=spans, tracer_provider=tracer_provider)
    telemetry.activate(previous)


def event(device: str = "dev-1", *, severity: str = "info", **fields: Any) -> dict:
    return {"event_id": str(uuid.uuid4()), "device_id": device, "event_type": "reading",
            "timestamp": NOW.isoformat(), "severity": severity, "measurements": {"temperature": 21.5}, **fields}


def batch(bodies: list[dict | bytes], *, partition: str = "0") -> list[func.EventHubEvent]:
    """One Event Hubs batch with the host's metadata, the first message carrying a producer's ``traceparent``."""
    properties = [{"traceparent": PRODUCER}] + [{} for _ in bodies[1:]]
    metadata = {
        "PartitionContext": func.meta.Datum(json.dumps({"PartitionId": partition, "ConsumerGroup": "sluice"}), "json"),
        "PropertiesArray": func.meta.Datum(json.dumps(properties), "json"),
    }
    return [func.EventHubEvent(body=body if isinstance(body, bytes) else json.dumps(body).encode(),
                               trigger_metadata=metadata, enqueued_time=NOW + timedelta(milliseconds=n),
                               partition_key=None, sequence_number=n + 1, offset=(n + 1) * 100)
            for n, body in enumerate(bodies)]


@pytest.fixture
def ingest(cassandra_emulator: Running, azurite_connection_string: str, monkeypatch: pytest.MonkeyPatch,
           in_memory: SimpleNamespace) -> Iterator[Any]:
    keyspace = f"ks_{uuid.uuid4().hex[:12]}"
    for name, value in {"AzureWebJobsStorage": azurite_connection_string,
                        "SLUICE_STORAGE_DEADLETTER_CONTAINER": f"dl-{uuid.uuid4().hex[:12]}",
                        "SLUICE_CASSANDRA_HOSTS": cassandra_emulator.host,
                        "SLUICE_CASSANDRA_PORT": str(cassandra_emulator.port), "SLUICE_CASSANDRA_KEYSPACE": keyspace,
                        "SLUICE_REDIS_URL": "redis://127.0.0.1:6379/0", "SLUICE_POSTGRES_HOST": "127.0.0.1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("EventHubConnection", raising=False)
    bootstrap.reset()
    apply_migrations(bootstrap.cassandra_session(), bootstrap.settings().cassandra)
    function = user_function("ingest")
    yield lambda events: function(events, HostContext("ingest"))
    bootstrap.reset()


def test_a_batch_of_valid_invalid_and_duplicate_events_is_counted_exactly(ingest, in_memory) -> None:
    valid = [event(f"dev-{i}") for i in range(5)] + [event("dev-9", severity="critical")]   # N = 6
    twice = valid[0]                                                                         # D = 2
    invalid = [b"{not json", b"[]", json.dumps({**event(), "device_id": ""}).encode()]         # K = 3
    traced = telemetry.instrument_clients(in_memory.tracer_provider)
    try:
        ingest(batch([*valid, twice, *invalid, twice]))
    finally:
        from opentelemetry.instrumentation.cassandra import CassandraInstrumentor
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        for instrumentor in (CassandraInstrumentor(), RedisInstrumentor(), PsycopgInstrumentor()):
            instrumentor.uninstrument()
    metrics = collected(in_memory.reader)
    partition = ("messaging.destination.partition.id", "0")
    assert metrics["sluice.ingest.events"] == {
        frozenset({("outcome", "stored"), partition}): 6,
        frozenset({("outcome", "dead_lettered"), partition}): 3,
        frozenset({("outcome", "duplicate"), partition}): 2,
    }
    assert metrics["sluice.deadletter.letters"] == {frozenset({("reason", "malformed")}): 2,
                                                    frozenset({("reason", "contract")}): 1}
    assert metrics["sluice.ingest.batch.duration"] == {frozenset({partition}): 1}
    assert metrics["sluice.ingest.delay"] == {frozenset(): 1}

    spans = in_memory.spans.get_finished_spans()
    (span,) = [s for s in spans if s.name == "sluice.ingest"]
    assert [format(link.context.trace_id, "032x") for link in span.links] == [PRODUCER.split("-")[1]]
    assert span.attributes["messaging.destination.partition.id"] == "0"
    assert (span.attributes["sluice.sequence.first"], span.attributes["sluice.sequence.last"]) == (1, 11)
    assert span.attributes["sluice.events.stored"] == 6
    assert list(span.attributes["sluice.critical.event_ids"]) == [valid[-1]["event_id"]]
    assert "cassandra" in traced, traced  # the driver's requests are children of the invocation's span
    children = [s for s in spans if s.parent is not None and s.parent.span_id == span.context.span_id]
    assert children and all(s.attributes.get("db.system") == "cassandra" for s in children), [s.name for s in spans]


def test_a_second_batch_adds_to_the_counters(ingest, in_memory) -> None:
    ingest(batch([event(), event()]))
    ingest(batch([event(), b"nope"], partition="1"))
    events = collected(in_memory.reader)["sluice.ingest.events"]
    assert events[frozenset({("outcome", "stored"), ("messaging.destination.partition.id", "0")})] == 2
    assert events[frozenset({("outcome", "stored"), ("messaging.destination.partition.id", "1")})] == 1
    assert events[frozenset({("outcome", "dead_lettered"), ("messaging.destination.partition.id", "1")})] == 1
    durations = collected(in_memory.reader)["sluice.ingest.batch.duration"]
    assert durations[frozenset({("messaging.destination.partition.id", "0")})] == 1


def test_a_crash_inside_validation_is_not_counted_as_store_unavailable(ingest, in_memory, monkeypatch) -> None:
    """A bug in validation (an exception that is no validation error) dead-letters the batch with the reason
    "validation failed unexpectedly: ..."; the store was never touched. ``sluice.deadletter.letters`` labels that
    letter ``validation_failed``, not ``store_unavailable``: an operator alerting on that would look at a healthy
    Cassandra. Its records count as dead-lettered."""
    import shared.services.ingest as ingest_module

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("a bug in validation")

    monkeypatch.setattr(ingest_module, "parse_records", broken)
    ingest(batch([event("dev-1"), event("dev-2")]))  # HostContext: no retry context, so the final attempt

    metrics = collected(in_memory.reader)
    assert metrics["sluice.deadletter.letters"] == {frozenset({("reason", "validation_failed")}): 1}
    assert metrics["sluice.ingest.events"] == {
        frozenset({("outcome", "dead_lettered"), ("messaging.destination.partition.id", "0")}): 2}


def test_a_replayed_event_superseded_by_a_later_copy_is_counted_superseded_not_stored(ingest, in_memory) -> None:
    """``deadletter replay`` (``bootstrap.replay_ingest_service``) skips an event whose stored copy is a later one:
    nothing is written, and ``sluice.ingest.events`` says so (``outcome=superseded``), as ``sluice.ingest.delay``
    gets no point for it. (``parsed.oks`` was recorded, not the events written: the skipped one counted stored.)"""
    service = bootstrap.replay_ingest_service()
    correction = event("dev-1")
    older = {**correction, "measurements": {"temperature": 1.0}}
    first = service.handle([RawRecord(json.dumps(correction).encode(), EventMetadata("0", "20", 20, NOW))],
                           final_attempt=False)
    assert first.stored == 1
    replayed = service.handle(
        [RawRecord(json.dumps(older).encode(), EventMetadata("0", "10", 10, NOW - timedelta(minutes=1)))],
        final_attempt=False)
    assert (replayed.stored, replayed.superseded) == (0, 1)  # nothing written the second time

    metrics = collected(in_memory.reader)
    partition = ("messaging.destination.partition.id", "0")
    assert metrics["sluice.ingest.events"] == {frozenset({("outcome", "stored"), partition}): 1,
                                               frozenset({("outcome", "superseded"), partition}): 1}
    assert metrics["sluice.ingest.delay"] == {frozenset(): 1}


def test_ingest_run_by_the_dev_host_records_its_span(ingest, in_memory) -> None:
    """The dev host's ``TraceContext`` (devhost/invocation.py) handed every invocation a ``traceparent`` flagged not
    sampled (``-00``); ``functions/ingest.py`` makes it the parent of ``sluice.ingest``, and the SDK's default sampler
    (``parentbased_always_on``, ``in_memory``'s too) follows a remote parent's decision: under ``python -m devhost``
    with an OTLP collector, no ``sluice.ingest`` span (nor its children, links or critical ids) ever arrived. The dev
    host now flags it sampled, as the host does when it records, and the span continues the host's trace."""
    from devhost.invocation import Context, RetryContext

    critical = event(severity="critical")
    context = Context("ingest", ".", RetryContext(0, 5))  # what the dev host passes (devhost/invocation.py)
    user_function("ingest")(batch([critical]), context)

    names = [s.name for s in in_memory.spans.get_finished_spans()]
    assert "sluice.ingest" in names, (
        f"ingest ran under the dev host's trace context {context.trace_context.trace_parent!r} and recorded no "
        f"sluice.ingest span (finished spans: {names}): its 'not sampled' flags override Sluice's sampler")
    (span,) = [s for s in in_memory.spans.get_finished_spans() if s.name == "sluice.ingest"]
    _version, trace_id, parent_id, _flags = context.trace_context.trace_parent.split("-")
    assert (format(span.context.trace_id, "032x"), format(span.parent.span_id, "016x")) == (trace_id, parent_id)
    assert list(span.attributes["sluice.critical.event_ids"]) == [critical["event_id"]]


def test_the_ingest_span_keeps_the_hosts_tracestate(ingest, in_memory) -> None:
    """The host passes its W3C trace context whole: ``traceparent`` and ``tracestate`` (vendors' entries, which W3C
    Trace Context asks every participant to pass on). ``functions/ingest.py`` used to hand ``stage_span`` the
    ``traceparent`` alone, so ``sluice.ingest`` (and every span and request under it) lost the host's entries."""
    host = "00-11111111111111111111111111111111-2222222222222222-01"
    context = HostContext("ingest", trace_context=SimpleNamespace(trace_parent=host, trace_state="congo=t61rcWkgMzE"))
    user_function("ingest")(batch([event()]), context)
    (span,) = [s for s in in_memory.spans.get_finished_spans() if s.name == "sluice.ingest"]
    assert format(span.parent.span_id, "016x") == "2" * 16
    assert dict(span.context.trace_state) == {"congo": "t61rcWkgMzE"}, span.context.trace_state


# --- the lag gauge, from the lookups' process, over the real Event Hubs emulator and the host's checkpoints ---

SENT = {"0": 9, "1": 4, "2": 0, "3": 3}


def lag_points(reader: InMemoryMetricReader, *, partitions: int, timeout: float = 30.0) -> dict[frozenset, Any]:
    """``sluice.eventhub.lag``'s points once every partition has one: the lag is read on a thread of its own, so the
    first collections may report none."""
    deadline = time.monotonic() + timeout
    while True:
        lag = collected(reader).get("sluice.eventhub.lag", {})
        if len(lag) >= partitions or time.monotonic() > deadline:
            return lag
        time.sleep(0.2)


def test_the_lag_gauge_is_last_enqueued_minus_checkpoint(isolated_eventhub: Any, azurite_connection_string: str,
                                                         monkeypatch: pytest.MonkeyPatch, in_memory) -> None:
    with EventHubProducerClient.from_connection_string(isolated_eventhub.connection_string,
                                                       eventhub_name=isolated_eventhub.name) as producer:
        for partition, count in SENT.items():
            if count:
                sending = producer.create_batch(partition_id=partition)
                for i in range(count):
                    sending.add(EventData(f"event {i}"))
                producer.send_batch(sending)
    monkeypatch.setenv("EventHubConnection", isolated_eventhub.connection_string)
    monkeypatch.setenv("AzureWebJobsStorage", azurite_connection_string)
    for name, value in {"SLUICE_INGEST_EVENTHUB_NAME": isolated_eventhub.name,
                        "SLUICE_INGEST_CONSUMER_GROUP": "sluice", "SLUICE_CASSANDRA_HOSTS": "127.0.0.1",
                        "SLUICE_REDIS_URL": "redis://127.0.0.1:6379/0", "SLUICE_POSTGRES_HOST": "127.0.0.1"}.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    from shared.adapters.eventhub_lag import host_checkpoint_source

    source = host_checkpoint_source(isolated_eventhub.name, "sluice",
                                    connection_string=isolated_eventhub.connection_string,
                                    fully_qualified_namespace=None)
    with BlobServiceClient.from_connection_string(azurite_connection_string) as service, \
            contextlib.suppress(ResourceExistsError):
        service.create_container(source.container)
    store = BlobCheckpointStore.from_connection_string(azurite_connection_string, source.container)
    for partition, sequence in (("0", 2), ("1", 3)):  # last enqueued 8 and 3: lag 6 and 0
        store.update_checkpoint({"fully_qualified_namespace": source.namespace, "eventhub_name": source.eventhub,
                                 "consumer_group": "sluice", "partition_id": partition, "sequence_number": sequence,
                                 "offset": str(sequence)})
    try:
        bootstrap.status_service()  # the lookups' process registers the gauge with the status route
        lag = lag_points(in_memory.reader, partitions=4)
    finally:
        bootstrap.reset()
    by_partition = {dict(attrs)["messaging.destination.partition.id"]: value for attrs, value in lag.items()}
    assert {dict(attrs)["messaging.consumer.group.name"] for attrs in lag} == {"sluice"}
    # 2 is empty; 3 has no checkpoint yet, so KEDA counts its 3 retained events
    assert by_partition == {"0": 6, "1": 0, "2": 0, "3": 3}


@pytest.fixture
def lookups_pod(isolated_eventhub: Any, azurite_connection_string: str,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The settings of a lookups pod reading the ingest hub's lag."""
    for name, value in {"EventHubConnection": isolated_eventhub.connection_string,
                        "AzureWebJobsStorage": azurite_connection_string,
                        "SLUICE_INGEST_EVENTHUB_NAME": isolated_eventhub.name,
                        "SLUICE_INGEST_CONSUMER_GROUP": "sluice", "SLUICE_CASSANDRA_HOSTS": "127.0.0.1",
                        "SLUICE_REDIS_URL": "redis://127.0.0.1:6379/0", "SLUICE_POSTGRES_HOST": "127.0.0.1"}.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    yield
    bootstrap.reset()


def test_the_lookups_process_exports_the_lag_while_ingest_is_scaled_to_zero(lookups_pod: None, in_memory) -> None:
    """KEDA scales ingest to zero replicas (``minReplicaCount: 0``), so an ingest worker cannot be what exports
    ``sluice.eventhub.lag``: at zero replicas, exactly when KEDA fails to wake ingest (operator down, a scaler
    error, a quota), nothing would report a lag and ``SluiceEventHubLagGrowing`` / ``eventhub-lag-growing.kql``
    would evaluate to no series. The lookups Deployment always runs (2+ replicas) and builds the status route
    with the ingest hub's ``CachedPartitionLag``: building its services exports the lag."""
    scaled = next(d for d in yaml.safe_load_all((ROOT / "k8s-keda" / "ingest.yaml").read_text())
                  if d and d.get("kind") == "ScaledObject")
    assert scaled["spec"]["minReplicaCount"] == 0, "ingest no longer scales to zero: revisit who exports the lag"
    bootstrap.status_service()  # the lookups pod's status route: it holds the ingest hub's lag reader
    lag = lag_points(in_memory.reader, partitions=4)
    assert sorted(dict(attrs)["messaging.destination.partition.id"] for attrs in lag) == ["0", "1", "2", "3"], (
        f"no sluice.eventhub.lag from the lookups' process (collected: {sorted(collected(in_memory.reader))})")


def test_the_readiness_probe_alone_starts_the_lookups_pods_lag_export(lookups_pod: None, in_memory) -> None:
    """A lookups pod no one looks anything up on still exports the lag: its readiness probe's request for the
    OpenAPI document starts the worker, as any request would."""
    from functions.lookups import openapi

    probe = func.HttpRequest("GET", "http://127.0.0.1/api/openapi.json", body=b"")
    assert asyncio.run(openapi(probe)).status_code == 200
    lag = lag_points(in_memory.reader, partitions=4)
    assert sorted(dict(attrs)["messaging.destination.partition.id"] for attrs in lag) == ["0", "1", "2", "3"]


@pytest.fixture
def ingest_pod(isolated_eventhub: Any, cassandra_emulator: Running, azurite_connection_string: str,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The settings of an ingest pod (it runs only the ingest function) with the zero-loss audit on."""
    for name, value in {"EventHubConnection": isolated_eventhub.connection_string,
                        "AzureWebJobsStorage": azurite_connection_string,
                        "AzureFunctionsJobHost__functions__0": "ingest",
                        "SLUICE_INGEST_EVENTHUB_NAME": isolated_eventhub.name, "SLUICE_INGEST_CONSUMER_GROUP": "sluice",
                        "SLUICE_CASSANDRA_HOSTS": cassandra_emulator.host,
                        "SLUICE_CASSANDRA_PORT": str(cassandra_emulator.port),
                        "SLUICE_CASSANDRA_KEYSPACE": f"ks_{uuid.uuid4().hex[:12]}",
                        "SLUICE_STORAGE_DEADLETTER_CONTAINER": f"dl-{uuid.uuid4().hex[:12]}",
                        "SLUICE_REDIS_URL": "redis://127.0.0.1:6379/0", "SLUICE_POSTGRES_HOST": "127.0.0.1",
                        "SLUICE_APPINSIGHTS_CONNECTION_STRING_SECRET": "ai-conn",
                        "SLUICE_KEYVAULT_URL": "https://sluice-test.vault.azure.net"}.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    apply_migrations(bootstrap.cassandra_session(), bootstrap.settings().cassandra)
    yield
    bootstrap.reset()


def test_the_audit_gauge_runs_only_with_telemetry_on_and_starts_once_it_is(ingest_pod: None,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The ingest worker's ``sluice.audit.missing`` gauge audits the hub, the checkpoints and the ledger every
    ``SLUICE_INGEST_AUDIT_INTERVAL_SECONDS`` on a thread of its own. With telemetry off nothing collects it: the
    ingest service used to register it anyway, and each worker start audited for nothing until the thread's idle
    stop (10 minutes, about an ingest pod's life). Now it is registered when telemetry is on, or once telemetry is
    set up later (the Application Insights connection string read from Key Vault on a retry)."""
    from shared.exceptions import DependencyUnavailable

    reader = InMemoryMetricReader()
    on = telemetry.Telemetry(MeterProvider(metric_readers=[reader]))
    vault_answers = threading.Event()
    reads: list[str | None] = []

    def read(name: str | None) -> None:  # Key Vault (not run here): unreachable first, then the secret is read
        reads.append(name)
        if len(reads) == 1:
            raise DependencyUnavailable("key vault", "cannot connect")
        vault_answers.wait(30)
        telemetry.activate(on)  # what configure does with the connection string

    monkeypatch.setattr(bootstrap, "appinsights_from_vault", read)
    monkeypatch.setattr(bootstrap, "TELEMETRY_RETRY_SECONDS", 0.05)
    previous = telemetry.activate(telemetry.OFF)
    auditing = [t for t in threading.enumerate() if t.name == "sluice-figures-audit-gauge"]
    try:
        bootstrap.ingest_service()
        started = [t for t in threading.enumerate() if t.name == "sluice-figures-audit-gauge" and t not in auditing]
        assert not started, "the audit runs with telemetry off, for no one to collect"
        vault_answers.set()
        deadline = time.monotonic() + 30
        while not collected(reader).get("sluice.audit.missing") and time.monotonic() < deadline:
            time.sleep(0.1)
        missing = collected(reader).get("sluice.audit.missing", {})
        assert {dict(attributes)["messaging.destination.partition.id"] for attributes in missing} == {
            "0", "1", "2", "3"}, "telemetry set up on the retry, yet the audit gauge is not exported"
    finally:
        vault_answers.set()
        bootstrap.reset()
        telemetry.activate(previous)
        on.meter_provider.shutdown()


# --- faults: an unreachable collector costs an invocation nothing, and is logged at most once a minute ---


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def silent_collector() -> Iterator[int]:
    """A port that accepts connections and never answers: a synchronous export would wait for its timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    yield server.getsockname()[1]
    server.close()


@pytest.mark.parametrize("collector", ["closed", "silent"])
def test_an_unreachable_otlp_endpoint_never_blocks_an_invocation(ingest, collector: str, silent_collector: int,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    port = closed_port() if collector == "closed" else silent_collector
    timeout = 5.0  # an invocation that waited for an export would take this long: far above what one takes
    for name, value in {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                        "OTEL_EXPORTER_OTLP_TIMEOUT": str(timeout), "OTEL_BSP_SCHEDULE_DELAY": "20",
                        "OTEL_METRIC_EXPORT_INTERVAL": "50"}.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.WARNING)
    ingest(batch([event()]))  # the cold start (connecting, preparing) first: only the exporters are measured
    telemetry.EXPORTER_LOG_LIMIT.reset()
    otlp = telemetry.build(settings=TelemetrySettings(), install=False)
    assert otlp.exporters == ("otlp",)
    previous = telemetry.activate(otlp)
    try:
        durations = []
        for _ in range(8):
            began = time.perf_counter()
            ingest(batch([event(), event(), b"bad"]))
            durations.append(time.perf_counter() - began)
        time.sleep(timeout + 1.0)  # let the background exports fail, several times over
    finally:
        telemetry.activate(previous)
        otlp.tracer_provider.shutdown()
        otlp.meter_provider.shutdown(timeout_millis=500)
    assert max(durations) < timeout / 2, durations  # (1.2 s seen on a loaded 2-core machine, 0.1 s quiet)
    failures = Counter(r.name for r in caplog.records if r.name.startswith("opentelemetry.exporter"))
    assert failures, "the exporters never reported their failures"
    assert max(failures.values()) == 1, failures  # one line per exporter per minute


def test_an_unreachable_event_hubs_namespace_never_holds_a_prometheus_scrape(azurite_connection_string: str) -> None:
    """The lag gauge's reading never runs inside the collection: against a namespace that refuses connections the
    Event Hubs SDK retries for about 12 s, longer than Prometheus' default ``scrape_timeout`` of 10 s (the
    PodMonitor sets none), and a callback that waited for it would fail the whole scrape, so every metric of the
    pod (``sluice_ingest_events_total``, the dead letters, the audit) would vanish exactly during the outage. The
    scrape answers at once with the other instruments, the lag simply missing."""
    from prometheus_client import CollectorRegistry, start_http_server

    from shared.adapters.eventhub_lag import (
        CachedPartitionLag,
        EventHubBlobLagReader,
        eventhub_client,
        host_checkpoint_source,
    )
    from shared.adapters.otel_metrics import OtelMetrics

    scrape_timeout = 10.0
    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    metrics = OtelMetrics(provider)
    metrics.ingest_batch("0", stored=(), duplicates=1, rejected=(), store_failed=0, seconds=0.01,
                         oldest_enqueued=None)
    connection = (f"Endpoint=sb://127.0.0.1:{closed_port()};SharedAccessKeyName=RootManageSharedAccessKey;"
                  "SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true")
    source = host_checkpoint_source("telemetry", "sluice", connection_string=connection,
                                    fully_qualified_namespace=None)
    hub = eventhub_client("telemetry", "sluice", connection_string=connection)
    blobs = BlobServiceClient.from_connection_string(azurite_connection_string)
    lag = CachedPartitionLag(EventHubBlobLagReader(hub, blobs, source))
    figures = metrics.register_lag_gauge(lag.fresh_lag, "sluice")
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    bodies, elapsed = [], []
    try:
        for _ in range(3):  # the first scrape starts the reading, the next ones come while it retries
            started = time.monotonic()
            with urllib.request.urlopen(url, timeout=scrape_timeout) as response:
                bodies.append(response.read().decode())
            elapsed.append(time.monotonic() - started)
            time.sleep(1.0)
    finally:
        server.shutdown()
        thread.join(20)
        figures.stop()
        hub.close()
        blobs.close()
        provider.shutdown()
    assert max(elapsed) < 2.0, elapsed  # (a callback waiting on the SDK: 12 s, the scrape lost)
    assert all("sluice_ingest_events_total" in body and "sluice_eventhub_lag{" not in body for body in bodies)


def test_the_prometheus_endpoint_serves_the_instruments_under_their_derived_names() -> None:
    served = telemetry.build({}, settings=TelemetrySettings(metrics_port=0, metrics_address="127.0.0.1"), install=False)
    server, _thread = served.metrics_server
    try:
        records = [RawRecord(json.dumps(event()).encode(), EventMetadata("3", None, n, NOW, None)) for n in range(2)]
        parsed = parse_records([*records, RawRecord(b"{", EventMetadata("3", None, 2, NOW, None))], limits=Limits())
        served.metrics.ingest_batch("3", stored=parsed.oks, duplicates=0, rejected=parsed.errs, store_failed=0,
                                    seconds=0.02, oldest_enqueued=NOW)
        served.metrics.lookup("events/{event_id}", "hit", 200, 0.001)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        served.meter_provider.shutdown()
    samples = {(sample.name, frozenset((k, v) for k, v in sample.labels.items() if not k.startswith("otel_scope")))
               : sample.value for family in text_string_to_metric_families(text) for sample in family.samples}
    stored = frozenset({("messaging_destination_partition_id", "3"), ("outcome", "stored")})
    assert samples[("sluice_ingest_events_total", stored)] == 2
    assert samples[("sluice_deadletter_letters_total", frozenset({("reason", "malformed")}))] == 1
    names = {name for name, _ in samples}
    for series in ("sluice_ingest_batch_duration_seconds_bucket", "sluice_ingest_delay_seconds_count",
                   "sluice_lookup_requests_total", "sluice_lookup_duration_seconds_sum"):
        assert series in exported_series() and series in names, series


AZURE_MONITOR_PROBE = r'''
import json, logging, sys, time
from datetime import UTC, datetime
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s|%(levelname)s|%(message)s")
from shared import telemetry
from shared.settings import TelemetrySettings
started = telemetry.configure(TelemetrySettings())
durations = []
for n in range(20):
    began = time.perf_counter()
    with telemetry.stage_span("ingest", attributes={"messaging.destination.partition.id": "0"}):
        telemetry.pipeline_metrics().ingest_batch("0", stored=(), duplicates=1, rejected=(), store_failed=0,
                                                  seconds=0.01, oldest_enqueued=datetime.now(UTC))
    durations.append(time.perf_counter() - began)
    time.sleep(0.05)
print(json.dumps({"exporters": list(started.exporters), "slowest": max(durations)}))
'''


def test_an_unreachable_azure_monitor_endpoint_never_blocks_an_invocation(tmp_path) -> None:
    """The distro installs global providers and instrumentations, so it runs in a process of its own."""
    port = closed_port()
    environment = {**os.environ, "APPLICATIONINSIGHTS_CONNECTION_STRING":
                   f"InstrumentationKey=00000000-0000-0000-0000-000000000000;"
                   f"IngestionEndpoint=http://127.0.0.1:{port}/;LiveEndpoint=http://127.0.0.1:{port}/",
                   "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_METRIC_EXPORT_INTERVAL": "200", "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", AZURE_MONITOR_PROBE], env=environment, capture_output=True,
                          text=True, timeout=90, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["exporters"] == ["azure-monitor"]
    assert result["slowest"] < 0.5, result
    logged = Counter(line.split("|")[0] for line in done.stderr.splitlines()
                     if re.match(r"(azure\.monitor|opentelemetry)[\w.]*\|(WARNING|ERROR)\|", line))
    assert logged, "the exporters never reported their failures"
    assert max(logged.values()) == 1, logged  # one line per logger per minute


PROMETHEUS_BESIDE_AZURE_MONITOR = r'''
import json, logging, sys, urllib.request
from datetime import UTC, datetime
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s|%(levelname)s|%(message)s")
from shared import telemetry
from shared.settings import TelemetrySettings
started = telemetry.configure(TelemetrySettings(metrics_port=0, metrics_address="127.0.0.1"))
telemetry.pipeline_metrics().ingest_batch("0", stored=(), duplicates=1, rejected=(), store_failed=0,
                                          seconds=0.01, oldest_enqueued=datetime.now(UTC))
telemetry.record_lookup("events/{event_id}", "hit", 200, 0.001)
port = started.metrics_server[0].server_port
text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
print(json.dumps({"exporters": list(started.exporters),
                  "sluice": sorted({line.split("{")[0] for line in text.splitlines() if line.startswith("sluice_")})}))
'''


def prometheus_beside_azure_monitor(connection_string: str, tmp_path: Path, **variables: str) -> tuple[dict, str]:
    """Telemetry configured with Application Insights and ``SLUICE_METRICS_PORT``, in a process of its own (the distro
    installs global providers): the exporters it reports, the ``sluice_*`` series its endpoint serves, its log."""
    environment = {**{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SLUICE_METRICS"))},
                   "APPLICATIONINSIGHTS_CONNECTION_STRING": connection_string, "TMPDIR": str(tmp_path), **variables}
    done = subprocess.run([sys.executable, "-c", PROMETHEUS_BESIDE_AZURE_MONITOR], env=environment,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def offline_connection_string() -> str:
    """A connection string whose ingestion and live-metrics endpoints are a closed port (as offline)."""
    port = closed_port()
    return (f"InstrumentationKey=00000000-0000-0000-0000-000000000000;"
            f"IngestionEndpoint=http://127.0.0.1:{port}/;LiveEndpoint=http://127.0.0.1:{port}/")


def test_a_connection_string_the_distro_refuses_leaves_the_other_exporters(tmp_path) -> None:
    """``configure_azure_monitor`` raises ``ValueError`` for a malformed connection string (an instrumentation key
    that is not a UUID, a typo in the app setting), and ``configure`` let it out of every ingest invocation, which
    failed every batch. Now the distro is left out with a WARNING naming the setting, and Prometheus serves on."""
    result, log = prometheus_beside_azure_monitor("InstrumentationKey=not-a-uuid", tmp_path)
    assert len(result["exporters"]) == 1 and result["exporters"][0].startswith("prometheus http://"), result
    assert "sluice_ingest_events_total" in result["sluice"], result
    assert "Application Insights cannot be set up from APPLICATIONINSIGHTS_CONNECTION_STRING" in log, log[-3000:]


def test_otel_metrics_exporter_none_beside_application_insights_keeps_the_prometheus_endpoint(tmp_path) -> None:
    """With ``OTEL_METRICS_EXPORTER=none`` the distro makes no meter provider, so the Prometheus reader handed to
    ``configure_azure_monitor(metric_readers=...)`` was never registered: ``/metrics`` answered, the log said
    "exporting to prometheus", and no ``sluice_*`` series was there. The AKS ConfigMap sets both; an operator who
    turned Application Insights metrics off (customMetrics are billed) silently lost the Grafana dashboard and
    every PrometheusRule alert, SluiceAuditMissing (the zero-loss SLO) included. Sluice's own meter provider now
    carries the readers, and Application Insights still gets the traces."""
    result, _log = prometheus_beside_azure_monitor(offline_connection_string(), tmp_path, OTEL_METRICS_EXPORTER="none")
    assert "azure-monitor" in result["exporters"], result
    assert any(e.startswith("prometheus http://") for e in result["exporters"]), result  # it says it serves them
    assert "sluice_ingest_events_total" in result["sluice"] and "sluice_lookup_requests_total" in result["sluice"], (
        f"the Prometheus endpoint ({result['exporters']}) serves no Sluice series {result['sluice']} once "
        f"OTEL_METRICS_EXPORTER=none turned Application Insights metrics off")
    result, _log = prometheus_beside_azure_monitor(offline_connection_string(), tmp_path)  # the distro's metrics on
    assert "sluice_ingest_events_total" in result["sluice"] and "azure-monitor" in result["exporters"], result


def test_the_timer_runs_spans_are_children_of_the_hosts_invocations(ingest, in_memory, redis_prefix: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The host passes a trace context to every invocation, timers' too, and docs/observability.md makes it the
    parent of each stage's span. ``sluice.changefeed`` and ``sluice.enrich`` took none (their functions had no
    ``context``), so each run was a trace of its own, away from the host's invocation."""
    from azure.functions.timer import TimerRequest

    monkeypatch.setenv("SLUICE_REDIS_KEY_PREFIX", redis_prefix)
    bootstrap.reset()
    host = "00-33333333333333333333333333333333-4444444444444444-01"
    context = HostContext("changefeed", trace_context=SimpleNamespace(trace_parent=host, trace_state="congo=t61"))
    user_function("changefeed")(TimerRequest(past_due=False), context)
    (span,) = [s for s in in_memory.spans.get_finished_spans() if s.name == "sluice.changefeed"]
    assert format(span.context.trace_id, "032x") == "3" * 32
    assert format(span.parent.span_id, "016x") == "4" * 16
    assert dict(span.context.trace_state) == {"congo": "t61"}


# --- counted once durable, whatever fails after; every producer linked ---

def _traceparent(n: int) -> str:
    return f"00-{n + 1:032x}-{n + 1:016x}-01"


def test_the_ingest_span_links_every_producer_of_a_full_batch(ingest, in_memory) -> None:
    """``sluice.ingest`` kept only the last 128 producer links (the SDK's default span link limit) of a batch of
    256 (host.json ``maxEventBatchSize``), dropping the older ones silently: a critical event early in a batch could
    not be followed from its producer (docs/observability.md "Following a critical event"). The tracer provider
    Sluice builds (``telemetry.new_tracer_provider``, which ``in_memory`` uses) keeps ``LINKS_PER_SPAN``."""
    bodies = [event("dev-first", severity="critical")] + [event(f"dev-{i}") for i in range(255)]
    properties = [{"traceparent": _traceparent(n)} for n in range(len(bodies))]
    metadata = {
        "PartitionContext": func.meta.Datum(json.dumps({"PartitionId": "0", "ConsumerGroup": "sluice"}), "json"),
        "PropertiesArray": func.meta.Datum(json.dumps(properties), "json"),
    }
    events = [func.EventHubEvent(body=json.dumps(body).encode(), trigger_metadata=metadata,
                                 enqueued_time=NOW + timedelta(milliseconds=n), partition_key=None,
                                 sequence_number=n + 1, offset=(n + 1) * 100) for n, body in enumerate(bodies)]
    ingest(events)
    (span,) = [s for s in in_memory.spans.get_finished_spans() if s.name == "sluice.ingest"]
    linked = {format(link.context.trace_id, "032x") for link in span.links}
    critical_producer = _traceparent(0).split("-")[1]
    assert list(span.attributes["sluice.critical.event_ids"]) == [bodies[0]["event_id"]]
    assert critical_producer in linked and len(linked) == len(bodies), (
        f"{len(linked)} of {len(bodies)} producer contexts linked ({span.dropped_links} dropped), the critical "
        f"event's producer {critical_producer} {'is' if critical_producer in linked else 'is not'} among them")


class _StoreOnly:
    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, object] = {}

    def write(self, events) -> None:
        for e in events:
            self.rows[e.event_id] = e


class _BrokenLetters:
    def put_rejected(self, rejected) -> None:
        raise TransientError("dead-letter container unreachable")

    def put_batch(self, bodies, reason, *, lettered=()) -> None:
        raise TransientError("dead-letter container unreachable")


def _raw_record(seq: int, body: dict | bytes) -> RawRecord:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return RawRecord(raw, EventMetadata(partition_id="0", sequence_number=seq, enqueued_time=NOW))


def test_events_stored_on_the_final_attempt_are_counted_when_the_dead_letter_write_fails() -> None:
    """On the final attempt, events written to the store were not counted in ``sluice.ingest.events{outcome=stored}``
    when the rejected letters then failed: ``handle`` raised before recording, the host checkpoints past the batch
    and never retries it, so durable events were missing from the metric for good. An outcome is recorded once it is
    durable (docs/observability.md)."""
    reader = InMemoryMetricReader()
    metrics = OtelMetrics(MeterProvider(metric_readers=[reader]))
    store = _StoreOnly()
    service = IngestService(store, _BrokenLetters(), Limits(), metrics=metrics)
    valid = [{"event_id": str(uuid.uuid4()), "device_id": f"dev-{i}", "event_type": "reading",
              "timestamp": NOW.isoformat(), "severity": "info", "measurements": {"t": 1.0}} for i in range(3)]
    records = [_raw_record(n + 1, body) for n, body in enumerate(valid)] + [_raw_record(4, b"{not json")]
    with pytest.raises(TransientError):
        service.handle(records, final_attempt=True)
    assert len(store.rows) == 3  # the three valid events are durable; the host checkpoints past the batch
    counted = collected(reader).get("sluice.ingest.events", {})
    stored = counted.get(frozenset({("outcome", "stored"), ("messaging.destination.partition.id", "0")}), 0)
    assert stored == 3, f"3 events stored for good, {stored} counted as stored ({counted})"


def test_late_windows_recomputed_before_a_failure_are_counted() -> None:
    """A run that recomputed late window A (committed) and then failed on late window B recorded
    ``sluice.enrich.windows{recomputed}`` 0: late outcomes reached the run's result only after every late window
    succeeded, unlike scheduled ones. A is settled, so no later run recomputes (or counts) it."""
    from shared.services.enrichment import EnrichmentService
    from shared.settings import EnrichmentSettings
    from tests.unit.test_enrichment import T0, MemoryReader, MemoryStore, StaticReference, W, ev

    reader, store, reference = MemoryReader(), MemoryStore(), StaticReference()
    store.load_state(T0)
    settings = EnrichmentSettings(window_seconds=300, allowed_lateness_seconds=120, late_horizon_seconds=3600,
                                  initial_lookback_seconds=0, max_windows_per_run=24)
    reader.events += [ev("d1", T0 + timedelta(seconds=5)), ev("d1", T0 + W + timedelta(seconds=5))]
    now = T0 + 2 * W + timedelta(minutes=2)
    EnrichmentService(reader, reference, store, settings).run(now=now)  # windows T0 and T0 + W enriched
    assert sorted(store.windows) == [T0, T0 + W]

    metric_reader = InMemoryMetricReader()
    metrics = OtelMetrics(MeterProvider(metric_readers=[metric_reader]))
    later = now + timedelta(minutes=1)
    reader.events += [ev("d2", T0 + timedelta(seconds=7), enqueued=later),       # late in window T0
                      ev("d2", T0 + W + timedelta(seconds=7), enqueued=later)]   # late in window T0 + W
    store.fail_on = T0 + W
    with pytest.raises(TransientError):
        EnrichmentService(reader, reference, store, settings, metrics=metrics).run(now=later + timedelta(seconds=1))
    assert store.ledger[T0] == ["scheduled", "late"]  # window T0 was recomputed and committed
    windows = collected(metric_reader).get("sluice.enrich.windows", {})
    assert windows == {frozenset({("outcome", "recomputed")}): 1, frozenset({("outcome", "failed")}): 1}, windows
