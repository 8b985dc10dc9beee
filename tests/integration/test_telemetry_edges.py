"""Telemetry edges: no function key in a log line, every 5xx counted, the OTEL_* exporter variables as specified
and refused at start-up, never at the cost of a batch."""

from __future__ import annotations

import json
import logging
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import azure.functions as func
import pytest

from shared import bootstrap, telemetry
from shared.adapters.cassandra.migrations import apply_migrations
from shared.exceptions import ConfigurationError
from shared.settings import TelemetrySettings, load_settings
from sluice.launcher import Running
from tests.fixtures.functions import HostContext, invoke, user_function
from tests.integration.test_changefeed import sample_env
from tests.unit.test_telemetry import collected, sdk  # noqa: F401 (sdk: a fixture)

pytestmark = pytest.mark.timeout(90)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def unreachable_stores(monkeypatch):
    """The app's settings with Cassandra and Redis on closed local ports (bootstrap reset around)."""
    import os

    env = sample_env(SLUICE_CASSANDRA_HOSTS="127.0.0.1", SLUICE_CASSANDRA_PORT=str(_closed_port()),
                     SLUICE_REDIS_URL=f"redis://127.0.0.1:{_closed_port()}/0",
                     SLUICE_LOOKUP_CASSANDRA_TIMEOUT_SECONDS="1",
                     SLUICE_CASSANDRA_CONNECT_TIMEOUT_SECONDS="1")
    for name in [n for n in os.environ if n.startswith("SLUICE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    yield env
    bootstrap.reset()


def test_a_failed_lookup_does_not_log_the_function_key(unreachable_stores, caplog) -> None:
    """Data endpoints use auth level FUNCTION (functions/lookups.py); on Azure the caller may pass the function key
    as the ``code`` query parameter, so the request URL holds a secret. docs/observability.md: "No secret is ever
    logged" (and the Azure Monitor log exporter ships every log record to Application Insights).

    Before, ``functions/lookups.py:83`` logs ``req.url`` whole (``logger.warning("lookup %s failed: %s", req.url,
    exc)``) when a dependency is down, query string and function key included. The same pattern is at
    ``functions/state.py:48`` and ``functions/dashboard.py:66``.
    """
    key = "fk-" + uuid.uuid4().hex
    request = func.HttpRequest("GET", f"https://sluice.azurewebsites.net/api/devices/d-1/latest?code={key}",
                               route_params={"device_id": "d-1"}, params={"code": key}, body=b"")
    with caplog.at_level(logging.DEBUG):
        response = invoke("device_latest", request)
    assert response.status_code == 503, response.get_body()  # the path under test: a dependency down
    leaked = [r.getMessage() for r in caplog.records if key in r.getMessage()]
    assert not leaked, f"the function key is in the log: {leaked}"


def test_a_lookup_that_fails_unexpectedly_is_still_counted_as_a_5xx(monkeypatch, sdk) -> None:  # noqa: F811
    """``sluice.lookup.requests`` is "once per request" with ``http.response.status_code``
    (docs/observability.md), and the alert SluiceLookup5xxRate ("more than 1% of lookups answered 5xx",
    k8s-keda/monitoring/prometheusrule.yaml, infra/alerts) is computed from it. A lookup that raises anything but
    BadParameter or DependencyUnavailable is answered 500 by the host, so it must be counted with status 500.

    Before, ``functions/lookups.py:_mapped`` records the metric only after a handled outcome: any other exception
    (here: a configuration error while the lookup service is built; equally any bug) propagates past
    ``telemetry.record_lookup`` and the request is not counted at all, so the 5xx alert never sees 500s.
    """
    monkeypatch.delenv("SLUICE_CASSANDRA_HOSTS", raising=False)
    monkeypatch.delenv("SLUICE_REDIS_URL", raising=False)
    bootstrap.reset()
    request = func.HttpRequest("GET", "http://localhost/api/devices/d-1/latest", route_params={"device_id": "d-1"},
                               params={}, body=b"")
    try:
        with pytest.raises(ConfigurationError):  # the host answers this invocation 500
            invoke("device_latest", request)
    finally:
        bootstrap.reset()
    requests = collected(sdk.reader).get("sluice.lookup.requests", {})
    statuses = {dict(attributes).get("http.response.status_code") for attributes in requests}
    assert 500 in statuses, f"the failed request was not counted: {requests}"


def test_a_signal_specific_otlp_protocol_sluice_does_not_ship_is_refused() -> None:
    """docs/observability.md: "OTEL_EXPORTER_OTLP_PROTOCOL may only be http/protobuf (gRPC is not shipped), anything
    else is refused at start-up with its name". The OpenTelemetry exporter specification also defines the
    per-signal forms OTEL_EXPORTER_OTLP_TRACES_PROTOCOL and OTEL_EXPORTER_OTLP_METRICS_PROTOCOL, which take
    precedence for their signal; an operator pointing metrics at a collector's gRPC port 4317 sets one of them.

    Before, ``shared/telemetry.py:296`` checks only the generic variable: with
    OTEL_EXPORTER_OTLP_METRICS_PROTOCOL=grpc ``build`` succeeds and installs the http/protobuf exporter, which then
    fails every export (logged once a minute) instead of stopping the start naming the variable.
    """
    try:
        built = telemetry.build({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
                                 "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc"},
                                settings=TelemetrySettings(), install=False)
    except ConfigurationError as exc:
        assert "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL" in str(exc)
        return
    built.meter_provider.shutdown(timeout_millis=1000)
    if built.tracer_provider is not None:
        built.tracer_provider.shutdown()
    pytest.fail(f"built exporters {built.exporters} with an http/protobuf exporter for a grpc metrics protocol")


def test_otel_traces_exporter_none_turns_the_trace_exporter_off() -> None:
    """The SDK environment variable specification: OTEL_TRACES_EXPORTER (default "otlp") names the trace
    exporter, "none" meaning no automatically configured exporter for traces (likewise OTEL_METRICS_EXPORTER).
    docs/observability.md says the OTEL_* variables are "the specification's" and read as it names them.

    Before, ``shared/telemetry.py:295-307`` makes an OTLP span exporter (and a tracer provider, instrumenting
    redis and psycopg) whenever any OTLP endpoint is set, ignoring OTEL_TRACES_EXPORTER=none: a deployment that
    wants OTLP metrics only still ships every span.
    """
    built = telemetry.build({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"},
                            settings=TelemetrySettings(), install=False)
    try:
        assert built.tracer_provider is None, "a tracer provider with an OTLP span exporter was made"
    finally:
        built.meter_provider.shutdown(timeout_millis=1000)
        if built.tracer_provider is not None:
            built.tracer_provider.shutdown()


def test_attributes_use_the_semantic_convention_names_where_one_exists() -> None:
    """docs/observability.md: "Names follow sluice.<stage>.<what>, attributes the semantic conventions where one
    exists". The OpenTelemetry messaging semantic conventions name the partition
    ``messaging.destination.partition.id`` and the consumer group ``messaging.consumer.group.name`` (Azure Event Hubs
    is a documented messaging system there, ``messaging.system=eventhubs``, which the ingest span already sets).

    Before, ``shared/telemetry_names.py:70`` uses the private ``eventhub.partition`` (on sluice.ingest.events,
    .batch.duration, sluice.eventhub.lag, sluice.audit.missing and the ingest span) and ``consumer_group`` on
    sluice.eventhub.lag, so generic messaging dashboards and queries do not find them.
    """
    from shared.telemetry_names import INSTRUMENTS

    private = {"eventhub.partition": "messaging.destination.partition.id",
               "consumer_group": "messaging.consumer.group.name"}
    wrong = sorted({f"{i.name}: {a} (semconv: {private[a]})"
                    for i in INSTRUMENTS for a in i.attributes if a in private})
    assert not wrong, wrong


def test_otel_metrics_exporter_none_leaves_traces_only_and_an_unknown_exporter_is_refused() -> None:
    built = telemetry.build({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_METRICS_EXPORTER": "none"},
                            settings=TelemetrySettings(trace_clients="none"), install=False)
    try:
        assert built.exporters == ("otlp (traces only)",) and built.tracer_provider is not None
    finally:
        built.meter_provider.shutdown(timeout_millis=1000)
        if built.tracer_provider is not None:
            built.tracer_provider.shutdown()
    with pytest.raises(ConfigurationError, match="OTEL_TRACES_EXPORTER: 'zipkin'"):
        telemetry.build({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "zipkin"},
                        settings=TelemetrySettings(), install=False)


def test_every_exporter_turned_off_by_the_standard_variables_is_telemetry_off() -> None:
    """An OTLP endpoint set (for the Functions host's own export, say) with both ``OTEL_TRACES_EXPORTER=none`` and
    ``OTEL_METRICS_EXPORTER=none`` leaves no exporter. ``build`` used to test "an endpoint is set", not "a signal is
    exported": it made an SDK meter provider with no reader, telemetry was on (the worker logged "exporting to
    nothing"), every batch was recorded into it, and ``bootstrap.export_lag`` started the lag gauge's Event Hubs /
    Blob reading thread for nothing. Now it is ``OFF``, exactly as with no variable."""
    built = telemetry.build({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none",
                             "OTEL_METRICS_EXPORTER": "none"}, settings=TelemetrySettings(), install=False)
    assert built is telemetry.OFF, (f"no exporter is configured (exporters={built.exporters}), yet telemetry is on "
                                    f"with {type(built.meter_provider).__name__}")


def test_a_signal_with_no_endpoint_of_its_own_or_in_common_is_not_exported() -> None:
    """Only OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set: metrics have nowhere to go, so no metric exporter (it would send
    to localhost:4318 and fail on every export)."""
    built = telemetry.build({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"},
                            settings=TelemetrySettings(trace_clients="none"), install=False)
    try:
        assert built.exporters == ("otlp (traces only)",)
    finally:
        built.meter_provider.shutdown(timeout_millis=1000)
        if built.tracer_provider is not None:
            built.tracer_provider.shutdown()


def test_application_insights_signs_in_with_entra_id_when_the_authentication_string_asks() -> None:
    """Application Insights with local auth disabled (infra/resources.bicep: DisableLocalAuth) refuses telemetry sent
    with the connection string's key alone: APPLICATIONINSIGHTS_AUTHENTICATION_STRING, as the Functions host reads
    it, gives the distro a credential; a malformed one is refused at start-up, naming the setting."""
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    assert telemetry.azure_monitor_credential({}) is None
    assert isinstance(telemetry.azure_monitor_credential(
        {"APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "Authorization=AAD"}), DefaultAzureCredential)
    user_assigned = "Authorization=AAD;ClientId=00000000-1111-2222-3333-444444444444"
    assert isinstance(telemetry.azure_monitor_credential({"APPLICATIONINSIGHTS_AUTHENTICATION_STRING": user_assigned}),
                      ManagedIdentityCredential)
    for bad in ("Authorization=Key", "ClientId=abc", "Authorization=AAD;Secret=x", "AAD"):
        with pytest.raises(ConfigurationError, match="APPLICATIONINSIGHTS_AUTHENTICATION_STRING"):
            telemetry.azure_monitor_credential({"APPLICATIONINSIGHTS_AUTHENTICATION_STRING": bad})


# --- a telemetry setting Sluice refuses: refused at start-up, and never the cause of a lost batch -------------------

REFUSED = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_TRACES_EXPORTER": "zipkin",
           "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "Authorization=Key"}


@pytest.mark.parametrize("variable", sorted(REFUSED))
def test_a_telemetry_setting_build_refuses_is_refused_at_start_up(variable: str) -> None:
    """The startup probe runs ``load_settings()``, which knew nothing of the OTEL_* / Application Insights
    variables: a pod with ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` (collectors' port 4317, many SDKs' default) passed
    it, consumed, and failed every batch in ``telemetry.build``. Now the start is refused, naming the variable."""
    environ = sample_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4317", **{variable: REFUSED[variable]})
    with pytest.raises(ConfigurationError, match=f"{variable}: "):
        load_settings(environ)
    assert load_settings(sample_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318",
                                    OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf", OTEL_TRACES_EXPORTER="none",
                                    APPLICATIONINSIGHTS_AUTHENTICATION_STRING="Authorization=AAD"))


@pytest.mark.parametrize("extra", [{}, {"APPLICATIONINSIGHTS_CONNECTION_STRING":
                                            f"InstrumentationKey={uuid.UUID(int=0)}"}])
@pytest.mark.parametrize(("variable", "value"), [("OTEL_METRICS_EXPORTER", "console"), ("OTEL_TRACES_EXPORTER", "non")])
def test_an_exporter_choice_other_than_otlp_or_none_is_refused_without_an_otlp_endpoint_too(
        variable: str, value: str, extra: dict[str, str]) -> None:
    """``OTEL_<SIGNAL>_EXPORTER`` was checked only for a signal with an OTLP endpoint, so with none (Application
    Insights alone) a misspelt ``none`` started, and that signal went on flowing to Application Insights, which
    reads the variable too. docs/observability.md says anything but ``otlp`` or ``none`` is refused at start-up."""
    with pytest.raises(ConfigurationError, match=f"{variable}: {value!r}"):
        load_settings(sample_env(**{variable: value}, **extra))
    assert load_settings(sample_env(**{variable: "none"}, **extra))


@pytest.fixture
def ingest_env(cassandra_keyspace: str, cassandra_emulator: Running, azurite_connection_string: str,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The app's settings on the emulator, Azurite and the local Redis, in a fresh worker process's state:
    telemetry not configured yet and none active (bootstrap reset around)."""
    for name, value in {"AzureWebJobsStorage": azurite_connection_string,
                        "SLUICE_STORAGE_DEADLETTER_CONTAINER": f"dl-{uuid.uuid4().hex[:12]}",
                        "SLUICE_CASSANDRA_HOSTS": cassandra_emulator.host,
                        "SLUICE_CASSANDRA_PORT": str(cassandra_emulator.port),
                        "SLUICE_CASSANDRA_KEYSPACE": cassandra_keyspace,
                        "SLUICE_REDIS_URL": "redis://127.0.0.1:6379/0", "SLUICE_POSTGRES_HOST": "127.0.0.1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("EventHubConnection", "APPLICATIONINSIGHTS_CONNECTION_STRING", "SLUICE_METRICS_PORT",
                 "SLUICE_APPINSIGHTS_CONNECTION_STRING_SECRET", "OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(telemetry, "_configured", None)
    previous = telemetry.activate(telemetry.OFF)
    bootstrap.reset()
    yield cassandra_keyspace
    bootstrap.reset()
    telemetry.activate(previous)


def test_a_telemetry_setting_the_set_up_refuses_does_not_lose_the_ingest_batch(
        ingest_env: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """``telemetry.build`` raises ``ConfigurationError`` for such a value, and ``bootstrap.start_telemetry`` let it
    out: ingest builds its service (which starts the worker, hence telemetry) before ``IngestService.handle``,
    outside any handling, so every attempt of every batch raised, the final one included, and the host
    checkpointed past batches neither stored nor dead-lettered. Should such a value reach a worker anyway (the
    settings were loaded before, as here), telemetry is off with a WARNING naming the variable, and ingest goes on.
    """
    apply_migrations(bootstrap.cassandra_session(), bootstrap.settings().cassandra)  # settings loaded: start-up done
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    body = {"event_id": str(uuid.uuid4()), "device_id": "dev-1", "event_type": "reading",
            "timestamp": datetime.now(UTC).replace(microsecond=0).isoformat(), "severity": "info",
            "measurements": {"temperature": 21.5}}
    events = [func.EventHubEvent(
        body=json.dumps(body).encode(),
        trigger_metadata={"PartitionContext": func.meta.Datum(json.dumps({"PartitionId": "0"}), "json")},
        enqueued_time=datetime.now(UTC), partition_key=None, sequence_number=1, offset=100)]
    try:
        with caplog.at_level(logging.WARNING, logger="shared.telemetry"):
            user_function("ingest")(events, HostContext("ingest"))  # retry 0 of 0: the final attempt
    except ConfigurationError as exc:
        pytest.fail(f"the final attempt of an ingest batch raised a telemetry ConfigurationError; the host "
                    f"checkpoints past the batch, which was neither stored nor dead-lettered: {exc}")
    rows = list(bootstrap.cassandra_session().execute(f"SELECT event_id FROM {ingest_env}.events_by_id"))
    assert [str(r.event_id) for r in rows] == [body["event_id"]]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("OTEL_EXPORTER_OTLP_PROTOCOL" in line and "without telemetry" in line for line in warned), warned
