"""The one place that wires concrete adapters to services.

Clients are built lazily, once per worker process, and reused across
invocations; nothing connects at import time. Tests build services directly from
adapters (or with :func:`reset` after changing the environment).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Callable
from datetime import timedelta
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pydantic import SecretStr

from shared import runtime
from shared.exceptions import ConfigurationError
from shared.settings import RedisSettings, Settings, TelemetrySettings, load_settings

if TYPE_CHECKING:  # the adapters are imported where they are built, on first use
    from azure.eventhub import EventHubConsumerClient
    from azure.storage.blob import BlobServiceClient
    from cassandra.cluster import Session
    from psycopg_pool import ConnectionPool

    from shared.adapters.audit_metrics import AuditGauge
    from shared.adapters.blob_deadletter import BlobDeadLetterSink
    from shared.adapters.cassandra.audit import CassandraAuditLedger
    from shared.adapters.cassandra.delays import CassandraDelayLog
    from shared.adapters.cassandra.reader import CassandraEventReader
    from shared.adapters.eventhub_lag import CachedPartitionLag, EventHubSequenceAtTime, KedaCheckpointSource
    from shared.adapters.keyvault import KeyVaultSecrets
    from shared.adapters.redis import RedisChangeSink, RedisConnection, RedisLookupCache
    from shared.adapters.redis.aio import AsyncRedisConnection
    from shared.adapters.refreshed_figures import RefreshedFigures
    from shared.adapters.secrets import RotatingSecret
    from shared.services.audit import AuditService
    from shared.services.changefeed import ChangeFeedService
    from shared.services.enrichment import EnrichmentService
    from shared.services.health import BlockingHealth
    from shared.services.history import HistoryService
    from shared.services.ingest import IngestService
    from shared.services.lookups import LookupService
    from shared.services.rebuild import RebuildService
    from shared.services.replay import ReplayService
    from shared.services.reports import ReportService
    from shared.services.state import StateService
    from shared.services.status import StatusService

T = TypeVar("T")

logger = logging.getLogger(__name__)
_lock = threading.RLock()


_building = threading.RLock()


def built(builder: Callable[[], T]) -> functools._lru_cache_wrapper[T]:
    """``functools.cache`` for a client or service, built once per process even when its first calls are concurrent.

    The worker runs functions on several threads at once. Two first calls building
    together would build twice, and would import the same SDK modules from two
    threads, which fails on an SDK's circular imports ("partially initialized
    module 'redis.cluster'"). So a build holds one lock (re-entrant: builders call
    builders); a built value is returned without it.
    """
    cached = cache(builder)

    @functools.wraps(builder)
    def once() -> T:
        if cached.cache_info().currsize:
            return cached()
        with _building:
            return cached()

    once.cache_clear = cached.cache_clear  # type: ignore[attr-defined]  # reset() and the tests clear it
    once.cache_info = cached.cache_info  # type: ignore[attr-defined]
    return cast("functools._lru_cache_wrapper[T]", once)


@built
def settings() -> Settings:
    loaded = load_settings()
    logger.info("settings loaded: %s", loaded.as_dict())
    return loaded


@built
def start_worker() -> None:
    """The worker process's start: its own settings (the garbage collector, ``shared.runtime``) applied once.

    Telemetry is set up here too (:func:`start_telemetry`), or on a timer thread when its Application Insights
    connection string is to be read from Key Vault. Called before
    the first service of the process is built (:func:`service`),
    so the tuning is in place before the first batch, and never as a side
    effect of merely reading the settings.
    """
    loaded = settings()
    runtime.configure(loaded.worker)
    if _reads_vault(loaded.telemetry):
        # On the timer thread at once, not here: a vault that accepts and never answers would hold the first
        # invocation (an ingest batch) for the client's whole timeout and retries, about 45 s.
        _retry_telemetry_in(0.0, loaded.telemetry, every=TELEMETRY_RETRY_SECONDS)
    else:
        start_telemetry(loaded.telemetry)
    if _hosts_status_route():
        export_lag()  # exported once telemetry is set up, when that is later (_retry_telemetry)


# How often a worker that could not read the Application Insights connection string tries again.
TELEMETRY_RETRY_SECONDS = 60.0
_telemetry_retry: threading.Timer | None = None


def start_telemetry(cfg: TelemetrySettings, *, retry_seconds: float | None = None) -> bool:
    """Set telemetry up (``shared.telemetry.configure``) once the Application Insights connection string is known.

    Telemetry must never cost data: this runs when the ingest service is built
    (or, to read Key Vault, on a timer thread :func:`start_worker` starts then),
    outside ``IngestService.handle``, so whatever it raised would fail the
    invocation on every attempt, the last one included, and the host would
    checkpoint past a batch neither stored nor dead-lettered. So when the
    connection string cannot be read from Key Vault (the vault unreachable, the
    secret missing or not readable), a WARNING names the secret (never a value),
    the worker runs without telemetry, and the read is tried again on a timer
    thread every ``retry_seconds`` (:data:`TELEMETRY_RETRY_SECONDS`) until it
    succeeds; then every exporter is set up. ``configure`` itself never raises (a
    telemetry setting it refuses is logged, and the worker runs without telemetry).
    Returns whether telemetry was set up.
    """
    name = cfg.appinsights_connection_string_secret
    try:
        appinsights_from_vault(name)
    except Exception as exc:
        wait = TELEMETRY_RETRY_SECONDS if retry_seconds is None else retry_seconds
        logger.warning("telemetry: the Application Insights connection string (Key Vault secret %r) cannot be read "
                       "(%s: %s); the worker runs without telemetry and reads it again in %.0f s",
                       name, type(exc).__name__, exc, wait)
        _retry_telemetry_in(wait, cfg)
        return False
    _telemetry().configure(cfg)
    return True


def _reads_vault(cfg: TelemetrySettings) -> bool:
    """Whether setting telemetry up waits for Key Vault: a secret is named and the host did not set the string."""
    import os

    return bool(cfg.appinsights_connection_string_secret) and not os.environ.get(
        "APPLICATIONINSIGHTS_CONNECTION_STRING")


def _retry_telemetry_in(seconds: float, cfg: TelemetrySettings, *, every: float | None = None) -> None:
    """Try :func:`start_telemetry` on a timer thread in ``seconds``, then every ``every`` (default ``seconds``)
    until it succeeds."""
    global _telemetry_retry
    timer = threading.Timer(seconds, _retry_telemetry, args=(cfg, seconds if every is None else every))
    timer.name = "sluice-telemetry-start"
    timer.daemon = True
    with _lock:
        if _stale_retry():
            return  # its read outlived a reset(): the settings it was started with are gone
        _telemetry_retry = timer
    timer.start()


def _stale_retry() -> bool:
    """Whether this thread is a telemetry retry that :func:`reset` has since forgotten (under ``_lock``)."""
    current = threading.current_thread()
    return current.name == "sluice-telemetry-start" and current is not _telemetry_retry


def _retry_telemetry(cfg: TelemetrySettings, seconds: float) -> None:
    """The timer's try: set telemetry up, and the gauges this process exports (:func:`export_lag`,
    :func:`export_audit`)."""
    with _lock:
        if _stale_retry():
            return
    try:
        if not start_telemetry(cfg, retry_seconds=seconds):
            return
        logger.info("telemetry: set up after the Application Insights connection string could be read")
        with _lock:
            lag, audit = _lag_export == "wanted", _audit_export == "wanted"
        if lag:
            export_lag()
        if audit:
            export_audit()
    except Exception:  # on a timer thread: nothing else would report it
        logger.warning("telemetry: setting it up failed; the worker runs without telemetry", exc_info=True)


def appinsights_from_vault(secret_name: str | None) -> None:
    """Put the Application Insights connection string where the Azure Monitor distro reads it, from Key Vault.

    On AKS the connection string is a Key Vault secret (infra/resources.bicep), named by
    ``SLUICE_APPINSIGHTS_CONNECTION_STRING_SECRET``; a value already in the environment
    (the Functions host's own setting) wins. A missing secret raises ``ConfigurationError`` naming it,
    an unreachable vault ``DependencyUnavailable`` (:func:`start_telemetry` turns both into a warning).
    """
    import os

    if secret_name and not os.environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING"):
        os.environ["APPLICATIONINSIGHTS_CONNECTION_STRING"] = keyvault().get(secret_name)


def _telemetry() -> Any:
    """``shared.telemetry``, imported on first use (the OpenTelemetry SDK loads only when an exporter is set)."""
    from shared import telemetry

    return telemetry


def secret(value: SecretStr | None, secret_name: str | None) -> str | None:
    """A password from its setting, or from Key Vault when the setting names a secret."""
    if value is not None:
        return value.get_secret_value()
    if secret_name:
        return keyvault().get(secret_name)
    return None


# The rotating secrets by secret name: one per secret per process (rotating_secret), forgotten by reset().
_rotating_secrets: dict[str, RotatingSecret] = {}
_rotating_secrets_lock = threading.Lock()  # held only to look one up: never while a vault is read


def rotating_secret(value: SecretStr | None, secret_name: str | None, *,
                    read_now: bool = True) -> RotatingSecret | None:
    """A store's password as a :class:`RotatingSecret`: re-read from Key Vault when the store refuses it.

    Read once here, before the client is built (``shared.adapters.secrets.store_password``), unless ``read_now``
    is false: then at the client's first connection. One per secret name per process, kept across failed client
    builds (a refused Cassandra session is built again at each ingest batch) and shared by the clients that use
    the same secret (the sync and async Redis clients): its rate limit holds for all of them, so a refused
    password costs one vault read per ``SLUICE_KEYVAULT_REFRESH_MIN_INTERVAL_SECONDS``, not two per build.
    """
    from shared.adapters.secrets import store_password

    min_interval = settings().keyvault.refresh_min_interval_seconds
    if value is not None or not secret_name:
        return store_password(value, secret_name, keyvault, min_interval=min_interval, read_now=read_now)
    with _rotating_secrets_lock:
        rotating = _rotating_secrets.get(secret_name)
        if rotating is None:
            rotating = store_password(None, secret_name, keyvault, min_interval=min_interval, read_now=False)
            assert rotating is not None  # a secret is named
            _rotating_secrets[secret_name] = rotating
    if read_now:
        rotating.value()  # the first read only: a value read before is returned without reading
    return rotating


@built
def keyvault() -> KeyVaultSecrets:
    from shared.adapters.keyvault import KeyVaultSecrets

    kv = settings().keyvault
    if kv.url is None:  # Settings refuse *_SECRET names without a vault URL: a caller that asks anyway is a bug
        raise ConfigurationError("SLUICE_KEYVAULT_URL is not set, and a Key Vault secret was asked for")
    return KeyVaultSecrets(kv.url, ca_file=str(kv.ca_file) if kv.ca_file else None)


@built
def cassandra_session() -> Session:
    from shared.adapters.cassandra.migrations import check_recorded_layout
    from shared.adapters.cassandra.session import connect

    with _lock:
        cfg = settings().cassandra
        session = connect(cfg, rotating_secret(cfg.password, cfg.password_secret))
        try:  # once per process: a worker with another bucket layout than the data's would hide the rows stored
            check_recorded_layout(session, cfg)
        except BaseException:
            session.cluster.shutdown()
            raise
        return session


# Whether a person waits on this process's storage requests (the operator CLI sets it: :func:`interactive`).
_interactive = False


def interactive(waiting: bool) -> bool:
    """Build :func:`blob_service` for a person waiting (short retries: ``interactive_options``) or, the default, for
    the worker, which keeps the SDK's retry policy and retries around it; returns the previous choice. A client
    already built keeps its own until :func:`reset`."""
    global _interactive
    with _lock:
        previous, _interactive = _interactive, waiting
    return previous


@built
def blob_service() -> BlobServiceClient:
    from shared.adapters.blob_service import blob_service_client, interactive_options, worker_options

    cfg = settings().storage
    return blob_service_client(cfg, **(interactive_options() if _interactive else worker_options(cfg)))


@built
def redis_client() -> RedisConnection:
    """The Redis connection (one Redis or a Redis Cluster, see ``SLUICE_REDIS_CLUSTER``), built on first use."""
    from shared.adapters.redis import RedisConnection

    cfg = settings().redis
    return RedisConnection(cfg.url, **redis_sign_in(cfg), cluster=cfg.cluster,
                           socket_timeout=cfg.socket_timeout_seconds)


@built
def redis_async_connection() -> AsyncRedisConnection:
    """The lookups' ``redis.asyncio`` connection to the same Redis (one client per event loop), built on first use."""
    from shared.adapters.redis.aio import AsyncRedisConnection

    cfg = settings().redis
    # Built inside the lookups' async handlers: the password secret is read at the first connection, on a thread
    # (AsyncSecretCredentials), never here on the worker's event loop, where a slow vault would stop every request.
    return AsyncRedisConnection(cfg.url, **redis_sign_in(cfg, read_now=False), cluster=cfg.cluster,
                                socket_timeout=cfg.socket_timeout_seconds)


def redis_sign_in(cfg: RedisSettings, *, read_now: bool = True) -> dict[str, Any]:
    """How the Redis clients sign in: ``entra`` (the app's identity) or ``password`` (a secret, read when needed;
    ``read_now``: read once here, see :func:`rotating_secret`)."""
    if cfg.auth == "entra":
        from shared.adapters.identity import credential_for

        return {"entra": credential_for(cfg.url)}
    return {"password": rotating_secret(cfg.password, cfg.password_secret, read_now=read_now)}


@built
def postgres_pool() -> ConnectionPool:
    from shared.adapters.postgres.pool import make_pool, refuse_lost_prepared_statements

    cfg = settings().postgres
    password = rotating_secret(cfg.password, cfg.password_secret)
    # Checked in the background, not here: a PostgreSQL that hangs would hold every caller building a service that
    # holds the pool (each status section, not only enrichment's); a borrow waits for the check within its timeout.
    return make_pool(cfg.conninfo(), cfg, password=password,
                     vet=lambda: refuse_lost_prepared_statements(cfg.conninfo(), cfg, password=password))


def reset() -> None:
    """Close and forget every cached client, service and the settings (tests, or a changed environment)."""
    global _telemetry_retry, _lag_export, _audit_export, _lag_figures
    with _lock:
        if _telemetry_retry is not None:  # a pending retry of the telemetry set-up belongs to the old settings
            _telemetry_retry.cancel()
            _telemetry_retry = None
        _lag_export = _audit_export = "no"
        # The gauges' reading threads read with the clients closed below: left running, each would fail every
        # period until its idle stop (10 min), a thread per reset piling up.
        if _lag_figures is not None:
            _lag_figures.stop()
            _lag_figures = None
    if register_audit_gauge.cache_info().currsize:
        gauge = register_audit_gauge()
        if gauge is not None:
            gauge.stop()
    closers: tuple[tuple[functools._lru_cache_wrapper[Any], Callable[[Any], object]], ...] = (
        (cassandra_session, lambda s: s.cluster.shutdown()), (postgres_pool, lambda p: p.close()),
        (redis_client, lambda r: r.close()), (redis_async_connection, lambda r: r.close()),
        (blob_service, lambda b: b.close()), (keyvault, lambda k: k.close()))
    for cached, close in closers:
        if cached.cache_info().currsize:
            try:
                close(cached())
            except Exception:  # closing is best effort; the client is forgotten either way
                logger.warning("closing %s failed", cached.__name__, exc_info=True)
    with _rotating_secrets_lock:
        _rotating_secrets.clear()
    for cached in (settings, start_worker, keyvault, cassandra_session, blob_service, redis_client,
                   redis_async_connection, postgres_pool, lag_reader, *_services):
        cached.cache_clear()


# --- services: one builder each, decorated with @service (cached per process, cleared by reset()) ---
_services: list[functools._lru_cache_wrapper[Any]] = []


def service(builder: Callable[[], T]) -> functools._lru_cache_wrapper[T]:
    """Register a cached service builder (so :func:`reset` clears it too); building one starts the worker first."""
    @functools.wraps(builder)
    def started() -> T:
        start_worker()
        return builder()

    cached = built(started)
    _services.append(cached)
    return cached


@service
def dead_letter_sink() -> BlobDeadLetterSink:
    from shared.adapters.blob_deadletter import BlobDeadLetterSink

    cfg = settings().storage
    return BlobDeadLetterSink(blob_service(), cfg.deadletter_container, hub=ingest_hub(),
                              deadline=cfg.deadletter_deadline_seconds,
                              longest_request=cfg.longest_request_seconds)


def _ingest_service(*, audit: bool, replay: bool = False) -> IngestService:
    from shared.adapters.cassandra.event_store import CassandraEventStore
    from shared.adapters.cassandra.reader import CassandraStoredCopies
    from shared.services.ingest import IngestService, LazyEventStore

    cfg = settings()
    store = LazyEventStore(lambda: CassandraEventStore(cassandra_session(), cfg.cassandra, cfg.rules.critical_rules))
    telemetry = _telemetry()
    copies = (CassandraStoredCopies(cassandra_session, cfg.cassandra.keyspace,
                                    timeout=cfg.cassandra.request_timeout_seconds) if replay else None)
    return IngestService(store, dead_letter_sink(), cfg.ingest.limits(),
                         audit_ledger() if audit and cfg.ingest.audit else None, metrics=telemetry.ACTIVE_METRICS,
                         delays=delay_log(), delayed_after=delayed_after(cfg), copies=copies)


def delayed_after(cfg: Settings) -> timedelta:
    """How late after its enqueue a stored batch is noted in the delay log, for each reader that rescans a window.

    Half of each window: an event stored later than the whole of it after its enqueue could escape the reader's
    rescan; the other half is room for the clocks of Event Hubs, ingest and the reader. Enrichment's late scan
    rescans the allowed lateness; the portable change feed rescans only its overlap (the Cosmos change feed
    reads by write, so a late row reaches it anyway).
    """
    windows = [cfg.enrichment.allowed_lateness_seconds]
    if cfg.changefeed.mode == "portable":
        windows.append(cfg.changefeed.overlap_seconds)
    return timedelta(seconds=min(windows) / 2)


@service
def ingest_service() -> IngestService:
    service = _ingest_service(audit=True)
    export_audit()  # the ingest worker exports the audit
    return service


@service
def replay_ingest_service() -> IngestService:
    """Ingest for ``deadletter replay``: the same service, recording no audit run.

    Every letter's records are accounted for in the audit already: a rejected item by the run of its batch
    (recorded before the host could checkpoint past it), a whole batch by its letter's name (``batches/`` and
    ``replayed/batches/``). A replay's run of a letter's records would only overlap them, and the ledger keys
    a run by its first sequence number: a letter holding the first record of its batch would overwrite the
    batch's run with its own one record, and the audit would report the rest of the batch missing.

    It reads the stored copy of each event it would write (``events_by_id``) and skips an event whose stored copy
    is a later one (``IngestResult.superseded``): a letter's copy is as old as the letter, and written now it
    would win over a correction of its id stored since.
    """
    return _ingest_service(audit=False, replay=True)


@service
def delay_log() -> CassandraDelayLog:
    from shared.adapters.cassandra.delays import CassandraDelayLog

    cfg = settings().cassandra
    return CassandraDelayLog(cassandra_session, cfg.keyspace, bucket_seconds=cfg.bucket_seconds,
                             timeout=cfg.request_timeout_seconds)


@service
def audit_ledger() -> CassandraAuditLedger:
    from shared.adapters.cassandra.audit import CassandraAuditLedger

    cfg = settings().cassandra
    return CassandraAuditLedger(cassandra_session, cfg.keyspace, concurrency=cfg.write_concurrency,
                                timeout=cfg.request_timeout_seconds, hub=ingest_hub())


def ingest_hub() -> str | None:
    """The identity of the hub ingest reads, ``<namespace>/<hub>`` (lowercase): the audit ledger's runs and the
    batch letters name it, since every hub numbers its records from 0. The namespace is the one the host's
    checkpoints name (``EventHubConnection``'s endpoint, or ``EventHubConnection__fullyQualifiedNamespace``), the
    hub ``SLUICE_INGEST_EVENTHUB_NAME``: read from settings, no round trip. ``None`` without an Event Hubs
    connection (nothing names the hub: records are keyed by partition only, as before)."""
    import os

    from shared.adapters.eventhub_lag import HostEventHubConnection

    connection = HostEventHubConnection.from_environ(os.environ)
    if not connection.configured:
        return None
    ingest = settings().ingest
    source = connection.checkpoint_source(ingest.eventhub_name, ingest.consumer_group)
    return f"{source.namespace}/{source.eventhub}"


@service
def audit_service() -> AuditService | None:
    """The zero-loss audit of the ingest hub, from the host's checkpoints; ``None`` without an Event Hubs connection."""
    from shared.adapters.blob_deadletter import BlobDeadLetteredBatches
    from shared.adapters.eventhub_lag import EventHubBlobLagReader
    from shared.services.audit import AuditService

    parts = _host_eventhub()
    if parts is None:
        return None
    source, hub, clock = parts
    letters = BlobDeadLetteredBatches(blob_service(), settings().storage.deadletter_container, hub=ingest_hub())
    return AuditService(audit_ledger(), EventHubBlobLagReader(hub, blob_service(), source), clock, letters=letters)


@service
def register_audit_gauge() -> AuditGauge | None:
    """The worker's ``sluice.audit.missing`` gauge (an OpenTelemetry observable gauge); ``None`` when not audited.

    Registered by :func:`export_audit` (cached like a service) on the active
    telemetry's meter provider, so the exporter that shared/telemetry.py sets up
    (Prometheus, OTLP, Azure Monitor) reads it on each collection.
    """
    from shared.adapters.audit_metrics import register_audit_gauge as register

    cfg = settings().ingest
    audit = audit_service() if cfg.audit else None
    if audit is None:
        return None
    return register(audit, window=cfg.audit_window, max_age=cfg.audit_interval_seconds,
                    meter_provider=_telemetry().active().meter_provider)


def export_audit() -> None:
    """Export ``sluice.audit.missing`` from this process, once telemetry is on: called when the ingest service is built.

    With telemetry off nothing collects the gauge, and its thread would audit the hub,
    the checkpoints and the ledger every interval for nothing; telemetry set up later
    (:func:`_retry_telemetry`) registers it then. A gauge that cannot be set up is
    logged, never raised (it must not stop ingest).
    """
    global _audit_export
    with _lock:
        if _audit_export == "exported":
            return
        enabled = _telemetry().active().enabled
        _audit_export = "exported" if enabled else "wanted"
    if not enabled:
        return
    try:
        register_audit_gauge()
    except Exception:
        logger.warning("the %s gauge is not exported", "sluice.audit.missing", exc_info=True)


def _host_eventhub() -> tuple[KedaCheckpointSource, EventHubConsumerClient, EventHubSequenceAtTime | None] | None:
    """(checkpoint source, consumer client, sequence-at-time reader or ``None``) of the host's ingest hub.

    ``None`` altogether without an Event Hubs connection.
    """
    import os

    from shared.adapters.eventhub_lag import EventHubSequenceAtTime, HostEventHubConnection

    connection = HostEventHubConnection.from_environ(os.environ)
    if not connection.configured:
        return None
    ingest = settings().ingest

    def reader() -> EventHubConsumerClient:  # a receiver that stays out of the host's consumer group
        return connection.client(ingest.eventhub_name, ingest.audit_consumer_group)

    source = connection.checkpoint_source(ingest.eventhub_name, ingest.consumer_group)
    hub = connection.client(ingest.eventhub_name, ingest.consumer_group)
    # The host's receivers own ingest's consumer group (epoch): a reader there would be refused. Without another
    # group the audit works from sequence numbers only (``sluice audit`` says so).
    separate = ingest.audit_consumer_group.lower() != ingest.consumer_group.lower()
    return source, hub, EventHubSequenceAtTime(reader) if separate else None


# Whether this process exports sluice.eventhub.lag: "no", "wanted" (telemetry not set up yet), "exported".
_lag_export = "no"
_audit_export = "no"  # the same for sluice.audit.missing
_lag_figures: RefreshedFigures | None = None  # the exported gauge's reading thread, stopped by reset()
STATUS_FUNCTION = "status"
FUNCTIONS_SETTING = "azurefunctionsjobhost__functions__"


def _hosts_status_route() -> bool:
    """Whether this process serves the status route: the host runs every function unless
    ``AzureFunctionsJobHost__functions__N`` lists some, as each Deployment of ``k8s-keda/`` does."""
    import os

    listed = {value.lower() for name, value in os.environ.items() if name.lower().startswith(FUNCTIONS_SETTING)}
    return not listed or STATUS_FUNCTION in listed


def export_lag() -> None:
    """Export ``sluice.eventhub.lag`` from this process, once: called when a process serving the status route starts.

    The lookups Deployment, which serves it, always runs (2+ replicas), while ingest
    scales to zero (``minReplicaCount: 0``): the lag must come from a process that is
    up exactly when KEDA fails to wake ingest. Only these processes export it, so the
    pods do not add up to a multiple of it (each lookups pod reports the same reading:
    the dashboards and alerts take the max per partition). The gauge reads the hub through the status
    route's ``CachedPartitionLag`` every period (``fresh_lag``, never its cached answer), and the route takes those
    readings while they are fresh enough for it. Telemetry set up later (:func:`_retry_telemetry`)
    registers it then. A gauge that cannot be set up is logged, never raised.
    """
    global _lag_export, _lag_figures
    telemetry = _telemetry()
    with _lock:
        if _lag_export == "exported":
            return
        enabled = telemetry.active().enabled
        _lag_export = "exported" if enabled else "wanted"
    if not enabled:
        return
    try:
        lag = lag_reader()
        if lag is not None:
            figures = telemetry.active().metrics.register_lag_gauge(lag.fresh_lag, settings().ingest.consumer_group)
            with _lock:
                _lag_figures = figures
    except Exception:  # no lag gauge is no reason to fail the worker's start
        logger.warning("the sluice.eventhub.lag gauge is not exported", exc_info=True)


@service
def redis_change_sink() -> RedisChangeSink:
    from shared.adapters.redis import RedisChangeSink

    cfg = settings().redis
    # the feed's note of a copy it applied must outlive a lookup's read of the store (its requests and a retry)
    marker = math.ceil(3 * settings().cassandra.request_timeout_seconds)
    return RedisChangeSink(redis_client(), key_prefix=cfg.key_prefix, ttl_seconds=cfg.ttl_seconds,
                           critical_per_device_max=cfg.critical_per_device_max,
                           critical_stream_max=cfg.critical_stream_max, stream_shards=cfg.critical_stream_shards,
                           wait_replicas=cfg.wait_replicas, wait_timeout_ms=cfg.wait_timeout_ms,
                           stale_marker_seconds=marker)


@service
def redis_lookup_cache() -> RedisLookupCache:
    from shared.adapters.redis import RedisLookupCache

    cfg = settings().redis
    return RedisLookupCache(redis_client(), key_prefix=cfg.key_prefix,
                            critical_per_device_max=cfg.critical_per_device_max,
                            stream_shards=cfg.critical_stream_shards)


def rebuild_service(*, max_rps: float | None = None, page_size: int = 200) -> RebuildService:
    """Not cached: each run has its own rate limit."""
    from shared.adapters.cassandra.device_log import CassandraDeviceLog
    from shared.adapters.redis_rebuild import RedisCacheBuilder
    from shared.services.rebuild import RebuildService

    cfg = settings()
    log = CassandraDeviceLog(cassandra_session, cfg.cassandra.keyspace)
    return RebuildService(
        log,
        RedisCacheBuilder(redis_change_sink()),
        rules=cfg.rules.critical_rules,
        page_size=page_size,
        max_rps=max_rps,
    )


def replay_service(*, postgres: bool = True) -> ReplayService:
    from shared.adapters.cassandra.window_reader import CassandraWindowReader
    from shared.services.replay import ReplayService

    cfg = settings()
    reader = CassandraWindowReader(cassandra_session(), cfg.cassandra, page_size=cfg.enrichment.read_page_size,
                                   concurrency=cfg.enrichment.read_concurrency)
    return ReplayService(reader, redis_change_sink(), cfg.rules.critical_rules,
                         enrichment_service() if postgres else None, apply_chunk=cfg.changefeed.page_size,
                         latest=_latest_states(), window_seconds=cfg.enrichment.window_seconds,
                         max_future_skew=timedelta(seconds=cfg.ingest.max_future_skew_seconds))


@service
def changefeed_service() -> ChangeFeedService:
    from shared.adapters.cassandra.feed import CassandraFeedStateStore, CosmosChangeFeed, PortableChangeFeed
    from shared.services.changefeed import ChangeFeedService

    cfg = settings()
    feed_cfg, ks = cfg.changefeed, cfg.cassandra.keyspace
    feed: CosmosChangeFeed | PortableChangeFeed
    if feed_cfg.mode == "cosmos":
        feed = CosmosChangeFeed(cassandra_session(), ks, page_size=feed_cfg.page_size,
                                lookback_seconds=feed_cfg.lookback_seconds)
    else:
        feed = PortableChangeFeed(cassandra_session(), ks, bucket_seconds=cfg.cassandra.bucket_seconds,
                                  shards=cfg.cassandra.shards, lookback_seconds=feed_cfg.lookback_seconds,
                                  overlap_seconds=feed_cfg.overlap_seconds, max_span_seconds=feed_cfg.max_span_seconds)
    positions = CassandraFeedStateStore(cassandra_session(), ks, timeout=feed_cfg.read_timeout_seconds)
    return ChangeFeedService(feed, redis_change_sink(), positions, feed_name=feed_cfg.feed_name,
                             rules=cfg.rules.critical_rules, time_budget=feed_cfg.time_budget_seconds,
                             read_timeout=feed_cfg.read_timeout_seconds, apply_chunk=feed_cfg.page_size,
                             metrics=_telemetry().ACTIVE_METRICS, latest=_latest_states())


def _latest_states() -> CassandraEventReader:
    """``device_latest`` for the change feed and replay, to put back a device's latest state Redis has lost."""
    from shared.adapters.cassandra.reader import CassandraEventReader

    cfg = settings()
    return CassandraEventReader(cassandra_session, cfg.cassandra.keyspace, timeout=cfg.changefeed.read_timeout_seconds)


@service
def lookup_service() -> LookupService:
    """The lookups' service, for the worker's event loop (``redis.asyncio``, the driver's futures awaited)."""
    from shared.adapters.cassandra.aio import CassandraAsyncEventReader
    from shared.adapters.cassandra.reader import CassandraEventReader
    from shared.adapters.redis.aio import AsyncRedisLookupCache
    from shared.services.lookups import LookupService

    cfg = settings()
    lookup, redis_cfg = cfg.lookup, cfg.redis
    reader = CassandraEventReader(cassandra_session, cfg.cassandra.keyspace, timeout=lookup.cassandra_timeout_seconds)
    cache = AsyncRedisLookupCache(redis_async_connection(), key_prefix=redis_cfg.key_prefix,
                                  critical_per_device_max=redis_cfg.critical_per_device_max,
                                  stream_shards=redis_cfg.critical_stream_shards)
    connection = cache.connection
    return LookupService(cache, CassandraAsyncEventReader(reader), cache_ttl=lookup.cache_ttl_seconds,
                         ttl_jitter=lookup.cache_ttl_jitter_seconds, negative_ttl=lookup.negative_ttl_seconds,
                         critical_default_limit=lookup.critical_default_limit,
                         critical_cap=cfg.redis.critical_per_device_max,
                         redis_retry_after=lookup.redis_retry_after_seconds, flight_wait=lookup.flight_wait_seconds,
                         health_timeout=lookup.health_timeout_seconds, rules=cfg.rules.critical_rules,
                         health_opened={"redis": lambda: connection.opened, "cassandra": lambda: reader.opened})


@service
def enrichment_service() -> EnrichmentService:
    from shared.adapters.cassandra.window_reader import CassandraWindowReader
    from shared.adapters.postgres.enrichment_store import PostgresEnrichmentStore
    from shared.adapters.reference import ParquetBlobReferenceSource, PostgresReferenceSource
    from shared.services.enrichment import EnrichmentService

    cfg = settings()
    enrich = cfg.enrichment
    reader = CassandraWindowReader(cassandra_session(), cfg.cassandra, page_size=enrich.read_page_size,
                                   concurrency=enrich.read_concurrency)
    reference: ParquetBlobReferenceSource | PostgresReferenceSource
    if enrich.reference_source == "parquet":
        reference = ParquetBlobReferenceSource(blob_service(), enrich.reference_container,
                                               enrich.reference_devices_blob, enrich.reference_sites_blob)
    else:
        reference = PostgresReferenceSource(postgres_pool())
    store = PostgresEnrichmentStore(postgres_pool(), statement_timeout_seconds=enrich.statement_timeout_seconds)
    return EnrichmentService(reader, reference, store, enrich, cfg.rules.critical_rules,
                             metrics=_telemetry().ACTIVE_METRICS,
                             max_future_skew=timedelta(seconds=cfg.ingest.max_future_skew_seconds))


@service
def status_service() -> StatusService:
    from shared.adapters.blob_deadletter import BlobDeadLetterCounter
    from shared.adapters.blob_service import blob_service_client
    from shared.adapters.cassandra.dashboard import CassandraArrivalStats, CassandraFeedPosition
    from shared.adapters.postgres.reports import PostgresReports
    from shared.adapters.redis_dashboard import RedisCacheStats, RedisCriticalStream
    from shared.services.status import CLOSED_GRACE, NoLagReader, StatusService

    cfg = settings()
    timeout = cfg.dashboard.read_timeout_seconds
    arrivals = CassandraArrivalStats(
        cassandra_session,
        cfg.cassandra.keyspace,
        bucket_seconds=cfg.cassandra.bucket_seconds,
        shards=cfg.cassandra.shards,
        timeout=timeout,
    )
    feed = CassandraFeedPosition(cassandra_session, cfg.cassandra.keyspace, cfg.changefeed.feed_name, timeout=timeout)
    return StatusService(
        arrivals,
        feed,
        PostgresReports(postgres_pool(), timeout=timeout),
        # A client of its own whose reads end within the section's time and are not retried: a hung storage account
        # must not keep the section's thread for the SDK's 60 s read timeout and three retries.
        BlobDeadLetterCounter(blob_service_client(cfg.storage, connection_timeout=timeout, read_timeout=timeout,
                                                  retry_total=0), cfg.storage.deadletter_container),
        RedisCacheStats(redis_client()),
        RedisCriticalStream(
            redis_client(), key_prefix=cfg.redis.key_prefix, stream_shards=cfg.redis.critical_stream_shards
        ),
        lag_reader() or NoLagReader(),
        _dependency_health(),
        cache_seconds=cfg.dashboard.status_cache_seconds,
        section_timeout=2 * timeout,
        # a bucket is kept only once every later write into it would be noted as delayed (and make it read again)
        closed_grace=max(CLOSED_GRACE, delayed_after(cfg)),
    )


def _dependency_health() -> BlockingHealth:
    """The status page's dependency check: the lookups' Redis and Cassandra, probed with blocking clients."""
    from shared.adapters.cassandra.reader import CassandraEventReader
    from shared.services.health import BlockingHealth

    cfg = settings()
    timeout = cfg.lookup.health_timeout_seconds
    reader = CassandraEventReader(cassandra_session, cfg.cassandra.keyspace,
                                  timeout=cfg.lookup.cassandra_timeout_seconds)
    cache = redis_lookup_cache()
    return BlockingHealth({"redis": cache.ping, "cassandra": lambda: reader.ping(timeout=timeout)}, timeout=timeout,
                          opened={"redis": lambda: cache.connection.opened, "cassandra": lambda: reader.opened})


@built
def lag_reader() -> CachedPartitionLag | None:
    """The ingest hub's lag as KEDA reads it, from the host's own Event Hubs connection; ``None`` without one.

    One per process: the ``sluice.eventhub.lag`` gauge reads the hub with it every period, and the status route
    takes the gauge's readings (or reads itself) within its ``max_age``."""
    from shared.adapters.eventhub_lag import CachedPartitionLag, EventHubBlobLagReader

    parts = _host_eventhub()
    if parts is None:
        return None
    source, hub, _ = parts
    return CachedPartitionLag(EventHubBlobLagReader(hub, blob_service(), source))


@service
def history_service() -> HistoryService:
    from shared.adapters.cassandra.dashboard import CassandraDeviceHistory
    from shared.services.history import HistoryService, TokenSigner, derived_key

    cfg = settings()
    configured = cfg.dashboard.token_key
    key = (configured.get_secret_value().encode() if configured is not None else
           derived_key(cfg.cassandra.keyspace, ",".join(cfg.cassandra.hosts), cfg.redis.url, cfg.redis.key_prefix))
    history = CassandraDeviceHistory(cassandra_session, cfg.cassandra.keyspace,
                                     timeout=cfg.dashboard.read_timeout_seconds)
    return HistoryService(history, TokenSigner(key), rules=cfg.rules.critical_rules)


@service
def state_service() -> StateService:
    from shared.adapters.cassandra.dashboard import CassandraDeviceHistory
    from shared.adapters.cassandra.reader import CassandraEventReader
    from shared.services.state import StateService

    cfg = settings()
    timeout = cfg.dashboard.read_timeout_seconds
    return StateService(CassandraDeviceHistory(cassandra_session, cfg.cassandra.keyspace, timeout=timeout),
                        CassandraEventReader(cassandra_session, cfg.cassandra.keyspace, timeout=timeout),
                        deadline_seconds=cfg.dashboard.state_deadline_seconds, rules=cfg.rules.critical_rules)


@service
def report_service() -> ReportService:
    from shared.adapters.postgres.reports import PostgresReports
    from shared.services.reports import ReportService

    return ReportService(PostgresReports(postgres_pool(), timeout=settings().dashboard.read_timeout_seconds))
