"""What the dev host reads before it indexes the app: ``local.settings.json`` and ``host.json``.

``local.settings.json`` is applied as ``func start`` applies it: every entry of
``Values`` becomes an environment variable *unless the environment already
defines it* (Core Tools prints "Skipping 'X' from local settings as it's already
defined in current environment variables"); ``Host.LocalHttpPort`` is the default
HTTP port.

``host.json`` is read for the parts the dev host honours: ``extensions.eventHubs``
(batch sizes, wait time, prefetch, checkpoint frequency, initial offset),
``extensions.http.routePrefix`` and ``customHeaders``, ``singleton`` (the timer listener lease) and
``functionTimeout`` (enforced as the host enforces it on a language worker: ``devhost.invocation.Watchdog``).
Keys the Event Hubs extension would not recognise are reported, so a typo does not silently fall back to a default.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devhost.errors import DevHostError

logger = logging.getLogger(__name__)

AZURITE_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DEVELOPMENT_STORAGE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    f"AccountKey={AZURITE_ACCOUNT_KEY};BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
)

# The option names of the Event Hubs extension (5.x / 6.x) in host.json.
_EVENTHUB_KEYS = {
    "maxEventBatchSize", "minEventBatchSize", "maxWaitTime", "batchCheckpointFrequency", "prefetchCount",
    "initialOffsetOptions", "targetUnprocessedEventThreshold", "clientRetryOptions", "transportType",
    "webProxy", "customEndpointAddress", "eventProcessorOptions",
}
# host.json's top level: what the dev host honours, and what changes nothing a function can see when run here
# (telemetry, logging and bundle selection: the dev host runs the Python bindings itself and logs to stdout).
_HONOURED = {"version", "functionTimeout", "extensions", "singleton"}
_LOCALLY_INERT = {"telemetryMode", "extensionBundle", "logging", "aggregator", "console", "healthMonitor",
                  "watchDirectories", "watchFiles", "managedDependency"}
# Settings that change which functions run or how they fail: silently running without them would pass locally what
# fails in Azure (a top-level ``retry`` retries every function; ``functions`` loads only those named).
_REFUSED = {
    "retry": "a host-wide retry policy; put @app.retry(...) on each function instead",
    "functions": "a list of the functions to load; the dev host loads every function of the app",
    "concurrency": "dynamic concurrency",
}
_HTTP_KEYS = {"routePrefix", "customHeaders"}
# The Functions host's limit when host.json sets none (ScriptJobHostOptionsSetup: Premium, Dedicated, containers).
DEFAULT_FUNCTION_TIMEOUT = timedelta(minutes=30)
_SETTING_REF = re.compile(r"%([^%]+)%")


@dataclass(frozen=True)
class EventHubOptions:
    """``extensions.eventHubs`` of host.json, with the extension's defaults."""

    max_event_batch_size: int = 100
    min_event_batch_size: int = 1
    max_wait_time: timedelta = timedelta(seconds=60)
    batch_checkpoint_frequency: int = 1
    prefetch_count: int = 300
    initial_offset: str = "fromStart"  # fromStart | fromEnd | fromEnqueuedTime
    initial_enqueued_time: datetime | None = None


@dataclass(frozen=True)
class SingletonOptions:
    """``singleton`` of host.json: the lease that makes one host the timer listener (host defaults)."""

    listener_lock_period: timedelta = timedelta(seconds=60)
    listener_lock_recovery_polling_interval: timedelta = timedelta(seconds=60)


@dataclass(frozen=True)
class HostOptions:
    """The parts of host.json the dev host honours."""

    route_prefix: str = "api"
    custom_headers: dict[str, str] = field(default_factory=dict)  # extensions.http.customHeaders
    function_timeout: timedelta | None = DEFAULT_FUNCTION_TIMEOUT  # None: -1, no limit
    eventhubs: EventHubOptions = field(default_factory=EventHubOptions)
    singleton: SingletonOptions = field(default_factory=SingletonOptions)
    warnings: tuple[str, ...] = ()


def parse_timespan(text: str) -> timedelta:
    """A .NET TimeSpan as host.json writes it: ``[d.]hh:mm:ss[.fff]``."""
    match = re.fullmatch(r"(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d+))?", text.strip())
    if not match:
        raise DevHostError(f"{text!r} is not a TimeSpan (expected hh:mm:ss)")
    days, hours, minutes, seconds, fraction = match.groups()
    return timedelta(
        days=int(days or 0), hours=int(hours), minutes=int(minutes), seconds=int(seconds),
        microseconds=int(((fraction or "0") + "000000")[:6]),
    )


def load_local_settings(path: Path | None, environ: MutableMapping[str, str] | None = None) -> int | None:
    """Apply ``Values`` to ``environ`` (``os.environ``) as ``func start`` does; return ``Host.LocalHttpPort``.

    A missing file is not an error when ``path`` is None (the default
    ``local.settings.json`` is optional, as it is for Core Tools).
    """
    environ = os.environ if environ is None else environ
    if path is None:
        return None
    if not path.exists():
        raise DevHostError(f"{path} does not exist (copy local.settings.sample.json to start)")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DevHostError(f"{path} is not valid JSON: {exc}") from exc
    if document.get("IsEncrypted"):
        raise DevHostError(f"{path} is encrypted; the dev host reads plain settings only")
    for name, value in (document.get("Values") or {}).items():
        if environ.get(name):
            logger.info(
                "Skipping %r from local settings as it's already defined in current environment variables", name
            )
            continue
        environ[name] = "" if value is None else str(value)
    port = (document.get("Host") or {}).get("LocalHttpPort")
    return int(port) if port else None


def load_host_json(path: Path) -> HostOptions:
    """Read host.json; a missing file gives the defaults (as an empty host.json would)."""
    if not path.exists():
        logger.warning("%s not found: using the Functions host defaults", path)
        return HostOptions()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DevHostError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise DevHostError(f"{path} must hold a JSON object")
    warnings: list[str] = []
    refused = [f"{key} ({_REFUSED[key]})" for key in sorted(set(document) & set(_REFUSED))]
    if refused:
        raise DevHostError(f"{path}: the dev host does not implement host.json " + "; ".join(refused))
    for key in sorted(set(document) - _HONOURED - _LOCALLY_INERT):
        warnings.append(f"host.json {key} is not a setting the dev host knows; ignored")
    extensions = document.get("extensions") or {}
    for key in sorted(set(extensions) - {"eventHubs", "http"}):
        warnings.append(f"host.json extensions.{key}: the app's functions use no such binding here; ignored")
    http = extensions.get("http") or {}
    for key in sorted(set(http) - _HTTP_KEYS):
        warnings.append(f"host.json extensions.http.{key} is not implemented by the dev host (no HTTP throttling, "
                        "no HSTS); ignored")
    route_prefix = str(http.get("routePrefix", "api")).strip("/")
    custom_headers = http.get("customHeaders") or {}
    if not isinstance(custom_headers, dict):
        raise DevHostError(f"{path}: extensions.http.customHeaders must be an object of header names and values")
    timeout = document.get("functionTimeout")
    eh = extensions.get("eventHubs") or {}
    for key in sorted(set(eh) - _EVENTHUB_KEYS):
        warnings.append(f"host.json extensions.eventHubs.{key} is not an option of the Event Hubs extension; ignored")
    offset = eh.get("initialOffsetOptions") or {}
    offset_type = str(offset.get("type", "fromStart"))
    if offset_type not in ("fromStart", "fromEnd", "fromEnqueuedTime"):
        raise DevHostError(
            f"host.json initialOffsetOptions.type {offset_type!r} must be fromStart, fromEnd or fromEnqueuedTime"
        )
    enqueued = None
    if offset_type == "fromEnqueuedTime":
        if "enqueuedTimeUtc" not in offset:
            raise DevHostError(f"{path}: initialOffsetOptions.type fromEnqueuedTime needs enqueuedTimeUtc")
        try:
            enqueued = datetime.fromisoformat(str(offset["enqueuedTimeUtc"]).replace("Z", "+00:00"))
        except ValueError as exc:
            raise DevHostError(f"{path}: initialOffsetOptions.enqueuedTimeUtc is not a date-time: {exc}") from exc
        if enqueued.tzinfo is None:
            enqueued = enqueued.replace(tzinfo=UTC)
    try:
        options = EventHubOptions(
            max_event_batch_size=int(eh.get("maxEventBatchSize", 100)),
            min_event_batch_size=int(eh.get("minEventBatchSize", 1)),
            max_wait_time=parse_timespan(eh["maxWaitTime"]) if "maxWaitTime" in eh else timedelta(seconds=60),
            batch_checkpoint_frequency=int(eh.get("batchCheckpointFrequency", 1)),
            prefetch_count=int(eh.get("prefetchCount", 300)),
            initial_offset=offset_type,
            initial_enqueued_time=enqueued,
        )
    except (TypeError, ValueError) as exc:
        raise DevHostError(f"{path}: extensions.eventHubs has a bad value: {exc}") from exc
    singleton = _singleton_options(document.get("singleton") or {})
    if options.max_event_batch_size < 1:
        raise DevHostError("host.json maxEventBatchSize must be at least 1")
    if options.min_event_batch_size > options.max_event_batch_size:
        raise DevHostError("host.json minEventBatchSize is larger than maxEventBatchSize")
    if options.batch_checkpoint_frequency < 1:
        raise DevHostError("host.json batchCheckpointFrequency must be at least 1")
    return HostOptions(
        route_prefix=route_prefix,
        custom_headers={str(name): str(value) for name, value in custom_headers.items()},
        function_timeout=(None if str(timeout) == "-1" else parse_timespan(timeout) if timeout
                          else DEFAULT_FUNCTION_TIMEOUT),
        eventhubs=options,
        singleton=singleton,
        warnings=tuple(warnings),
    )


def _singleton_options(section: dict[str, object]) -> SingletonOptions:
    defaults = SingletonOptions()
    period = (parse_timespan(str(section["listenerLockPeriod"])) if "listenerLockPeriod" in section
              else defaults.listener_lock_period)
    # Blob leases last 15 to 60 seconds; the host rejects other values the same way.
    if not timedelta(seconds=15) <= period <= timedelta(seconds=60):
        raise DevHostError(f"host.json singleton.listenerLockPeriod {period} must be between 00:00:15 and 00:01:00")
    polling = (parse_timespan(str(section["listenerLockRecoveryPollingInterval"]))
               if "listenerLockRecoveryPollingInterval" in section
               else defaults.listener_lock_recovery_polling_interval)
    if polling <= timedelta(0):
        raise DevHostError("host.json singleton.listenerLockRecoveryPollingInterval must be positive")
    return SingletonOptions(listener_lock_period=period, listener_lock_recovery_polling_interval=polling)


def resolve(value: str, environ: Mapping[str, str] | None = None, *, what: str = "value") -> str:
    """Replace every ``%Setting%`` by the setting's value, as the host resolves binding expressions."""
    environ = os.environ if environ is None else environ

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if not environ.get(name):
            raise DevHostError(f"{what} refers to the app setting %{name}%, which is not set")
        return environ[name]

    return _SETTING_REF.sub(lookup, value)


def storage_connection_string(environ: Mapping[str, str] | None = None) -> str:
    """``AzureWebJobsStorage`` as a connection string; ``UseDevelopmentStorage=true`` means Azurite's default port."""
    environ = os.environ if environ is None else environ
    value = environ.get("AzureWebJobsStorage", "").strip()
    identity = [name for name in ("AzureWebJobsStorage__accountName", "AzureWebJobsStorage__blobServiceUri")
                if environ.get(name, "").strip()]
    if not value and identity:
        raise DevHostError(
            f"{identity[0]} is set but AzureWebJobsStorage is not: the dev host keeps Event Hubs checkpoints and "
            "timer leases with a storage connection string (Azurite: UseDevelopmentStorage=true); identity-based "
            "storage is for the Functions host on Azure"
        )
    if not value:
        raise DevHostError(
            "AzureWebJobsStorage is not set: Event Hubs checkpoints and timer leases need blob storage "
            "(start Azurite and set it, or use UseDevelopmentStorage=true)"
        )
    if value.replace(" ", "").lower().rstrip(";") == "usedevelopmentstorage=true":
        return DEVELOPMENT_STORAGE
    return value


def host_id(script_root: Path, environ: Mapping[str, str] | None = None) -> str:
    """The host id that scopes timer leases and status blobs.

    ``AzureFunctionsWebHost__hostid`` wins; otherwise, like Core Tools, a stable id
    from the machine name and the app's directory, so two dev hosts started from the
    same checkout share timer leases and only one fires.
    """
    environ = os.environ if environ is None else environ
    explicit = environ.get("AzureFunctionsWebHost__hostid")
    if explicit:
        return explicit.lower()[:32]
    digest = hashlib.sha256(f"{socket.gethostname()}|{script_root.resolve()}".encode()).hexdigest()
    return f"devhost-{digest[:24]}"
