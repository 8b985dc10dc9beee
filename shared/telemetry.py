"""OpenTelemetry for Sluice: set-up from the environment, the pipeline's instruments and one span per stage.

:func:`configure` runs once per worker process (``shared.bootstrap.start_worker`` calls
it) and picks the exporters from the environment, as OpenTelemetry's own variables
name them wherever a standard exists:

* ``APPLICATIONINSIGHTS_CONNECTION_STRING``: the Azure Monitor distro
  (``azure-monitor-opentelemetry``) for metrics, traces and logs; with host.json
  ``"telemetryMode": "OpenTelemetry"`` the Functions host sends its own telemetry
  the same way. ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` (``Authorization=AAD``,
  optionally ``;ClientId=<user-assigned identity>``, as the Functions host reads it)
  signs the export in with Entra ID, which a resource with local auth disabled requires;
* ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its ``_TRACES_`` / ``_METRICS_`` forms): OTLP
  over HTTP/protobuf, per signal unless ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``
  is ``none``; every other ``OTEL_*`` variable (headers, timeout, sampler, resource
  attributes) is read by the SDK itself;
* ``SLUICE_METRICS_PORT`` (``TelemetrySettings``): a Prometheus scrape endpoint on
  that port (``SLUICE_METRICS_ADDRESS``, default ``0.0.0.0``), for AKS.

With none of them set (or only an OTLP endpoint, with both ``OTEL_TRACES_EXPORTER`` and
``OTEL_METRICS_EXPORTER`` ``none``) no SDK provider is installed: services get
:data:`shared.ports.metrics.NO_METRICS` and :func:`stage_span` yields without
creating a span, so telemetry off costs nothing. The resource carries
``service.name=sluice`` and, on Kubernetes, the pod's name (``HOSTNAME``) as
``k8s.pod.name`` and ``service.instance.id``, unless ``OTEL_SERVICE_NAME`` or
``OTEL_RESOURCE_ATTRIBUTES`` say otherwise.

Exporting never happens on an invocation's thread: spans go through the SDK's
batch processor and metrics through a periodic reader (or a scrape), so an
unreachable endpoint costs an invocation nothing. The exporters log each failure;
:class:`OncePerInterval` lets at most one warning per logger through each minute.

Redis and psycopg (and Cassandra, when ``SLUICE_TRACE_CLIENTS`` names it) are traced
by their ``opentelemetry-instrumentation-*`` packages, only when a tracer provider
is configured.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared import telemetry_environment
from shared.adapters.otel_metrics import ERROR_LOG_INTERVAL, SCOPE, OtelMetrics, telemetry_failed
from shared.exceptions import ConfigurationError
from shared.ports.metrics import NO_METRICS, Metrics
from shared.settings import TelemetrySettings

if TYPE_CHECKING:
    from datetime import datetime

    from azure.core.credentials import TokenCredential
    from opentelemetry.sdk.resources import Resource

    from shared.domain.events import Event, Rejected
    from shared.domain.stored import StoredEvent

logger = logging.getLogger(__name__)

SERVICE_NAME = "sluice"
EXPORTER_LOGGERS = ("opentelemetry.exporter", "opentelemetry.sdk", "azure.monitor.opentelemetry")
_PROPAGATOR = TraceContextTextMapPropagator()


class OncePerInterval(logging.Filter):
    """Lets at most one WARNING-or-worse record per logger through each ``interval`` seconds.

    Exporters log every failed export (every few seconds while an endpoint is
    down); one line a minute says the same. The next line that passes says how
    many were held back. Records below WARNING pass untouched.
    """

    def __init__(self, interval: float = ERROR_LOG_INTERVAL, monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval = interval
        self._monotonic = monotonic
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget what was let through (a test that needs the next failure logged)."""
        with self._lock:
            self._last.clear()
            self._held.clear()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = self._monotonic()
        with self._lock:
            last = self._last.get(record.name)
            if last is not None and now - last < self._interval:
                self._held[record.name] += 1
                return False
            self._last[record.name] = now
            held = self._held.pop(record.name, 0)
        if held:
            record.msg = (f"{record.getMessage()} ({held} more such messages in the last {self._interval:.0f} s "
                          f"were not logged)")
            record.args = None
        return True


EXPORTER_LOG_LIMIT = OncePerInterval()


def limit_exporter_logs(log_filter: logging.Filter = EXPORTER_LOG_LIMIT) -> None:
    """Put ``log_filter`` on the logger of every module of the exporters and the SDK.

    Filters do not inherit, and many of those modules are imported (and make their
    ``logging.getLogger(__name__)``) only when they first export; so every module's
    logger is made now, from the packages' files, and gets the filter.
    """
    names = set(EXPORTER_LOGGERS)
    names.update(name for name in list(logging.root.manager.loggerDict) if name.startswith(EXPORTER_LOGGERS))
    for package in EXPORTER_LOGGERS:
        names.update(_module_names(package))
    for name in names:
        target = logging.getLogger(name)
        if log_filter not in target.filters:
            target.addFilter(log_filter)


def _module_names(package: str) -> list[str]:
    """Every module name under ``package``, from its files (nothing is imported but the parents)."""
    try:
        spec = importlib.util.find_spec(package)
    except ImportError:
        return []
    names = []
    for root in (spec.submodule_search_locations or []) if spec else []:
        for path in Path(root).rglob("*.py"):
            parts = [part for part in path.relative_to(root).with_suffix("").parts if part != "__init__"]
            names.append(".".join([package, *parts]))
    return names


# --- what is configured ------------------------------------------------------------------------------------------


@dataclass
class Telemetry:
    """The providers in use (``None``: off) and the exporters that feed on them."""

    meter_provider: Any = None
    tracer_provider: Any = None
    exporters: tuple[str, ...] = ()
    metrics_server: Any = None
    metrics: Metrics = field(default=NO_METRICS)

    def __post_init__(self) -> None:
        if self.meter_provider is not None and self.metrics is NO_METRICS:
            self.metrics = OtelMetrics(self.meter_provider)
        self.tracer = self.tracer_provider.get_tracer(SCOPE) if self.tracer_provider is not None else None

    @property
    def enabled(self) -> bool:
        return self.meter_provider is not None or self.tracer_provider is not None


OFF = Telemetry()
_active = OFF
_configured: Telemetry | None = None
_lock = threading.Lock()


def active() -> Telemetry:
    return _active


def activate(telemetry: Telemetry) -> Telemetry:
    """Make ``telemetry`` the one spans and metrics go to; returns the previous one (tests, benchmarks)."""
    global _active
    previous, _active = _active, telemetry
    return previous


def pipeline_metrics() -> Metrics:
    """What bootstrap hands the services: the active instruments, or the no-op port when telemetry is off."""
    return _active.metrics


class ActiveMetrics:
    """The ``Metrics`` port of whichever telemetry is active at each call, for the services bootstrap builds.

    A worker may build its services before telemetry is set up (``shared.bootstrap.start_telemetry`` waits for
    the Application Insights connection string from Key Vault); their figures reach the exporters from then on.
    """

    def ingest_batch(self, partition: str | None, *, stored: Sequence[Event], duplicates: int,
                     rejected: Sequence[Rejected], store_failed: int, seconds: float,
                     oldest_enqueued: datetime | None, validation_failed: int = 0, superseded: int = 0) -> None:
        _active.metrics.ingest_batch(partition, stored=stored, duplicates=duplicates, rejected=rejected,
                                     store_failed=store_failed, seconds=seconds, oldest_enqueued=oldest_enqueued,
                                     validation_failed=validation_failed, superseded=superseded)

    def changefeed_applied(self, events: Sequence[StoredEvent], critical: int) -> None:
        _active.metrics.changefeed_applied(events, critical)

    def enrich_run(self, *, enriched: int, recomputed: int, failed: int, seconds: float,
                   watermark: datetime | None) -> None:
        _active.metrics.enrich_run(enriched=enriched, recomputed=recomputed, failed=failed, seconds=seconds,
                                   watermark=watermark)


ACTIVE_METRICS: Metrics = ActiveMetrics()


def record_lookup(route: str, cache: str, status: int, seconds: float) -> None:
    """One HTTP lookup: ``sluice.lookup.requests`` and ``sluice.lookup.duration``.

    ``route`` is the route template (``devices/{device_id}/latest``), ``cache`` one
    of hit, miss, negative, bypass, or none (the service gave no answer). For the lookup entry points to call once
    per request.
    """
    if _active.enabled:
        _active.metrics.lookup(route, cache, status, seconds)  # type: ignore[attr-defined]


def cassandra_throttled(operation: str, outcome: str) -> None:
    """A throttled Cassandra request (429 / Overloaded) that was ``retried`` or ``gave_up``."""
    if _active.enabled:
        _active.metrics.cassandra_throttled(operation, outcome)  # type: ignore[attr-defined]


# --- spans ---------------------------------------------------------------------------------------------------------


def host_trace(context: object) -> tuple[str | None, str | None]:
    """The host's ``traceparent`` and ``tracestate`` from a function's ``context`` (``context.trace_context`` on Azure
    Functions), each ``None`` when it passed none: for :func:`stage_span`'s ``parent`` and ``parent_state``."""
    trace_context = getattr(context, "trace_context", None)
    return (getattr(trace_context, "trace_parent", None) or None, getattr(trace_context, "trace_state", None) or None)


def message_links(properties: object) -> list[Link]:
    """Links to the producers' spans: each message's ``traceparent`` (or ``Diagnostic-Id``, the same W3C value
    older Azure SDKs set), one link per distinct context."""
    links: dict[tuple[int, int], Link] = {}
    if not isinstance(properties, list):  # the host's PropertiesArray: one mapping per message
        return []
    for props in properties:
        if not isinstance(props, Mapping):
            continue
        value = props.get("traceparent") or props.get("Diagnostic-Id")
        if not isinstance(value, str):
            continue
        carrier = {"traceparent": value}
        state = props.get("tracestate")
        if isinstance(state, str):
            carrier["tracestate"] = state
        context = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
        if context.is_valid and (context.trace_id, context.span_id) not in links:
            links[(context.trace_id, context.span_id)] = Link(context)
    return list(links.values())


@contextmanager
def stage_span(stage: str, *, parent: str | None = None, parent_state: str | None = None,
               links: Callable[[], list[Link]] | None = None, attributes: Mapping[str, Any] | None = None,
               consumer: bool = False) -> Iterator[Any]:
    """One span for one invocation of ``stage`` (``sluice.<stage>``), current while the block runs.

    ``consumer`` marks a stage that consumes messages (span kind consumer).
    ``parent`` is the host's ``traceparent`` (``context.trace_context.trace_parent``
    on Azure Functions) and ``parent_state`` its ``tracestate`` (``trace_state``),
    which the span and those under it pass on. ``links`` is called only when the span is recorded, after
    the sampler decided (the SDK's samplers decide without links): a batch's
    messages are not read for a span that is dropped. With tracing off nothing is
    created and ``None`` is yielded. An exception is recorded on the span and
    propagates.
    """
    tracer = _active.tracer
    if tracer is None:
        yield None
        return
    try:
        carrier = {"traceparent": parent, **({"tracestate": parent_state} if parent_state else {})}
        context = _PROPAGATOR.extract(carrier) if parent else None
    except Exception as exc:
        telemetry_failed(f"reading the trace context of {stage}", exc)
        context = None
    with tracer.start_as_current_span(f"sluice.{stage}", context=context,
                                      kind=SpanKind.CONSUMER if consumer else SpanKind.INTERNAL,
                                      attributes=dict(attributes or {})) as span:
        if links is not None and span.is_recording():
            try:
                for link in links():
                    span.add_link(link.context, link.attributes)
            except Exception as exc:
                telemetry_failed(f"reading the message links of {stage}", exc)
        yield span


# --- set-up ----------------------------------------------------------------------------------------------------------


def service_resource(environ: Mapping[str, str] | None = None) -> Resource:
    """``service.name=sluice`` and the pod's name, under whatever ``OTEL_SERVICE_NAME`` and
    ``OTEL_RESOURCE_ATTRIBUTES`` set (those win)."""
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource

    env = os.environ if environ is None else environ
    ours: dict[str, str] = {"service.name": SERVICE_NAME}
    pod = env.get("HOSTNAME")
    if pod and env.get("KUBERNETES_SERVICE_HOST"):
        ours["k8s.pod.name"] = pod
        ours["service.instance.id"] = pod
    given = OTELResourceDetector().detect().attributes
    return Resource.create({k: v for k, v in ours.items() if k not in given})


def otlp_signals_of(env: Mapping[str, str]) -> tuple[str, ...]:
    """The signals to export over OTLP (``shared.telemetry_environment.otlp_signals``); raises ``ConfigurationError``
    naming each variable with a value Sluice cannot honour (an exporter other than otlp/none, a protocol other than
    http/protobuf)."""
    signals, problems = telemetry_environment.otlp_signals(env)
    if problems:
        raise ConfigurationError("invalid settings:\n  " + "\n  ".join(problems))
    return signals


def azure_monitor_credential(env: Mapping[str, str]) -> TokenCredential | None:
    """The Entra ID credential ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` asks for, or ``None`` (key-based).

    ``Authorization=AAD`` signs in with the default chain (on AKS the workload identity), ``Authorization=AAD;
    ClientId=<id>`` with that user-assigned managed identity, as the Functions host reads the setting. Raises
    ``ConfigurationError`` naming the setting for anything else.
    """
    client_id, problems = telemetry_environment.authentication(env)
    if problems:
        raise ConfigurationError("invalid settings:\n  " + "\n  ".join(problems))
    if client_id is None:
        return None
    from shared.adapters.identity import credential_for

    return credential_for("https://monitor.azure.com", managed_identity=bool(client_id), client_id=client_id or None)


# Producer links a stage span keeps: every event of an ingest batch may come from its own producer, and host.json's
# maxEventBatchSize (256) is above the SDK's default of 128, which kept only a batch's last 128 producers.
LINKS_PER_SPAN = 1024


def new_tracer_provider(resource: Any = None) -> Any:
    """The SDK tracer provider Sluice exports through, with room for a whole batch's producer links."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider

    return TracerProvider(resource=resource or Resource.create(), span_limits=SpanLimits(max_links=LINKS_PER_SPAN))


def build(environ: Mapping[str, str] | None = None, *, settings: TelemetrySettings | None = None,
          install: bool = True) -> Telemetry:
    """The providers and exporters the environment and ``settings`` ask for; the global providers when ``install``.

    Raises ``ConfigurationError`` for an OTLP protocol other than ``http/protobuf``, an ``OTEL_*_EXPORTER`` other
    than ``otlp`` or ``none``, or a malformed ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING``, before anything is
    made (``load_settings`` refuses the same values at start-up). An Application Insights set-up that fails (a
    malformed connection string) is logged and the other exporters run without it.
    """
    env = os.environ if environ is None else environ
    settings = settings or TelemetrySettings()
    if telemetry_environment.disabled(env):
        return OFF
    connection = env.get("APPLICATIONINSIGHTS_CONNECTION_STRING")
    otlp_signals = otlp_signals_of(env)
    port = settings.metrics_port
    if not (connection or otlp_signals or port is not None):  # an endpoint with both signals "none" exports nothing
        return OFF
    signed_in = azure_monitor_credential(env) if connection else None
    if connection and not install:
        raise ValueError("the Azure Monitor distro always installs the global providers")
    limit_exporter_logs()  # before any exporter exists: some warn as they are made
    resource = service_resource(env)
    readers: list[Any] = []
    processors: list[Any] = []
    exporters: list[str] = []
    if "metrics" in otlp_signals:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    if "traces" in otlp_signals:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        processors.append(BatchSpanProcessor(OTLPSpanExporter()))
    if otlp_signals:
        exporters.append("otlp" if len(otlp_signals) == 2 else f"otlp ({otlp_signals[0]} only)")
    server = None
    if port is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        address = settings.metrics_address
        readers.append(PrometheusMetricReader())
        try:
            server = start_http_server(port, addr=address)
            exporters.append(f"prometheus http://{address}:{server[0].server_port}/metrics")
        except OSError as exc:  # telemetry never stops the pipeline; the operator sees this line
            logger.warning("telemetry: cannot serve Prometheus metrics on %s:%d (SLUICE_METRICS_PORT): %s; "
                           "is another process (a worker, the dev host) serving them?", address, port, exc)
    if connection:  # the distro makes its own tracer provider, whose limits come from the environment only
        os.environ.setdefault("OTEL_SPAN_LINK_COUNT_LIMIT", str(LINKS_PER_SPAN))
    distro = _azure_monitor(connection, resource, readers, processors, signed_in) if connection else False
    from opentelemetry.sdk.metrics import MeterProvider

    meter_provider: Any
    tracer_provider: Any = None
    if distro:
        exporters.append("azure-monitor")
        tracer_provider = trace.get_tracer_provider()
        if _distro_builds_metrics() or not readers:
            meter_provider = metrics.get_meter_provider()
        else:
            # OTEL_METRICS_EXPORTER=none: the distro makes no meter provider, so the readers handed to it would
            # never be registered (a Prometheus endpoint up, but without a series). Ours carries them.
            meter_provider = MeterProvider(resource=resource, metric_readers=readers)
            metrics.set_meter_provider(meter_provider)
    else:
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        if processors:
            tracer_provider = new_tracer_provider(resource)
            for processor in processors:
                tracer_provider.add_span_processor(processor)
        if install:
            metrics.set_meter_provider(meter_provider)
            if tracer_provider is not None:
                trace.set_tracer_provider(tracer_provider)
    if tracer_provider is not None and install:
        instrument_clients(tracer_provider, settings.trace_clients)
    return Telemetry(meter_provider, tracer_provider, tuple(exporters), server)


def _distro_builds_metrics() -> bool:
    """Whether ``configure_azure_monitor`` makes a meter provider: not when ``OTEL_METRICS_EXPORTER`` is ``none``
    (read from the process environment, as the distro reads it)."""
    return (os.environ.get("OTEL_METRICS_EXPORTER") or "").strip().lower() != "none"


def _azure_monitor(connection: str, resource: Resource, readers: list[Any], processors: list[Any],
                   credential: TokenCredential | None) -> bool:
    """The Azure Monitor distro set up with ``readers`` and ``processors`` besides its own exporters; ``False``, with
    a warning, when it refuses (a malformed connection string): the other exporters then run without it."""
    from azure.monitor.opentelemetry import configure_azure_monitor

    try:
        # A copy: the distro appends its own reader to the list it is given.
        configure_azure_monitor(connection_string=connection, resource=resource,
                                metric_readers=list(readers) if _distro_builds_metrics() else [],
                                span_processors=list(processors), **({"credential": credential} if credential else {}))
    except Exception as exc:
        logger.warning("telemetry: Application Insights cannot be set up from APPLICATIONINSIGHTS_CONNECTION_STRING "
                       "(%s: %s); running without it", type(exc).__name__, exc)
        return False
    return True


# What SLUICE_TRACE_CLIENTS may name. Cassandra is not traced by default: its instrumentation makes one span per
# request, about three per ingested event, far more than the 5% of ingest's own work telemetry may cost.
CLIENTS = {"cassandra": ("opentelemetry.instrumentation.cassandra", "CassandraInstrumentor"),
           "redis": ("opentelemetry.instrumentation.redis", "RedisInstrumentor"),
           "psycopg": ("opentelemetry.instrumentation.psycopg", "PsycopgInstrumentor")}
def instrument_clients(tracer_provider: Any, clients: Sequence[str] = tuple(CLIENTS)) -> list[str]:
    """Trace the calls of ``clients`` with their instrumentation packages; returns what was instrumented."""
    done = []
    for name in clients:
        module, cls = CLIENTS[name]
        try:
            instrumentor = getattr(importlib.import_module(module), cls)()
            if not instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.instrument(tracer_provider=tracer_provider)
            done.append(name)
        except Exception:  # a missing or incompatible instrumentation costs its spans, not the worker
            logger.warning("telemetry: %s calls are not traced", name, exc_info=True)
    return done


def configure(settings: TelemetrySettings | None = None) -> Telemetry:
    """Set telemetry up from the environment, once per process (later calls return the first result). Never raises:
    a setting :func:`build` refuses is logged as a WARNING naming the variable, and the process runs without
    telemetry.

    A telemetry that a test or benchmark activated first (:func:`activate`) stays active.
    """
    global _configured
    with _lock:
        if _configured is None:
            try:
                _configured = build(settings=settings)
            except Exception as exc:
                # Telemetry never costs data: this runs as a worker's first invocation builds its services, outside
                # any handling, so raising would fail every attempt of every batch (and the host would checkpoint
                # past them). load_settings refuses the same values at start-up; this is the last line.
                logger.warning("telemetry: cannot be set up (%s); the worker runs without telemetry", exc)
                _configured = OFF
            if not _active.enabled:
                activate(_configured)
            if _configured.enabled:
                logger.info("telemetry: exporting to %s", ", ".join(_configured.exporters) or "nothing",
                            extra={"telemetry.exporters": list(_configured.exporters)})
        return _configured
