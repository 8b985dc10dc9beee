"""What the dev host reads before it indexes the app: ``local.settings.json`` and ``host.json``.

``local.settings.json`` is applied as ``func start`` applies it: every entry of
``Values`` becomes an environment variable, and every entry of ``ConnectionStrings``
one named ``ConnectionStrings:<name>``, *unless the environment already
defines it* (Core Tools prints "Skipping 'X' from local settings as it's already
defined in current environment variables"); ``Host.LocalHttpPort`` is the default
HTTP port.

App settings are looked up as .NET configuration looks them up (:func:`app_setting`): names compared ignoring
case, ``__`` read as ``:``.

``host.json`` is read as the host reads it, keys case-insensitive and with the
``AzureFunctionsJobHost__<path>`` app settings (``AzureFunctionsJobHost:<path>`` too) over it, for the parts the dev
host honours:
``extensions.eventHubs`` (batch sizes, wait time, prefetch, checkpoint frequency, initial offset),
``extensions.http.routePrefix`` and ``customHeaders``, ``singleton`` (the timer listener lease), ``functions``
(the functions to load) and ``functionTimeout`` (enforced as the host enforces it on a language worker:
``devhost.invocation.Watchdog``). Keys the Event Hubs extension would not recognise are reported, so a typo does not
silently fall back to a default; its options that the dev host cannot apply are refused by name. A host.json whose
``version`` is not "2.0" is refused, as the host refuses to start with it.
``AzureWebJobs.<name>.Disabled`` disables a function (:func:`function_disabled`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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
    "initialOffsetOptions", "clientRetryOptions", "transportType", "webProxy", "customEndpointAddress",
}
# Keys the Functions host reads but that change nothing here: a warning says why, rather than a silent pass.
_EVENTHUB_UNREAD = {
    "eventProcessorOptions": "the 3.x/4.x extension's section; extension bundle 4.x loads the 5.x+ extension, which "
                             "does not read it either (use maxEventBatchSize and prefetchCount)",
    "targetUnprocessedEventThreshold": "the events per instance that target-based scaling aims for in Azure; the "
                                       "dev host runs one instance and does not scale",
}
_SINGLETON_KEYS = {"listenerLockPeriod", "listenerLockRecoveryPollingInterval"}
_SINGLETON_UNREAD = {"lockPeriod", "lockAcquisitionTimeout", "lockAcquisitionPollingInterval"}
# Options of the extension that change how the client reaches Event Hubs; the dev host connects with the SDK's own
# retry policy over AMQP (TCP), directly, so a policy or a route tested here would not be the one that runs in Azure.
_EVENTHUB_REFUSED = {
    "clientRetryOptions": "the client's retry policy; the dev host connects with the SDK's default retries",
    "customEndpointAddress": "a gateway in front of the namespace; the dev host connects to the connection "
                             "string's endpoint",
    "webProxy": "a proxy for AMQP over WebSockets; the dev host connects over AMQP (TCP), directly",
}
# host.json's top level: what the dev host honours, and what changes nothing a function can see when run here
# (telemetry, logging and bundle selection: the dev host runs the Python bindings itself and logs to stdout).
_HONOURED = {"version", "functionTimeout", "extensions", "singleton", "functions"}
_LOCALLY_INERT = {"telemetryMode", "extensionBundle", "logging", "aggregator", "console", "healthMonitor",
                  "watchDirectories", "watchFiles", "managedDependency"}
# Settings that change which functions run or how they fail: silently running without them would pass locally what
# fails in Azure (a top-level ``retry`` retries every function).
_REFUSED = {
    "retry": "a host-wide retry policy; put @app.retry(...) on each function instead",
    "concurrency": "dynamic concurrency",
}
_HTTP_KEYS = {"routePrefix", "customHeaders"}
# App settings that override host.json values (functions-host-json#override-hostjson-values).
JOB_HOST_PREFIX = "AzureFunctionsJobHost__"
# The Functions host's limit when host.json sets none (ScriptJobHostOptionsSetup: Premium, Dedicated, containers).
DEFAULT_FUNCTION_TIMEOUT = timedelta(minutes=30)
# The extension's EventHubOptions.MaxWaitTime setter refuses more: "Max Wait Time must be less than or equal to 10
# minutes."
MAX_WAIT_TIME_LIMIT = timedelta(minutes=10)
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
    functions: tuple[str, ...] | None = None  # the only functions to load; None: all
    eventhubs: EventHubOptions = field(default_factory=EventHubOptions)
    singleton: SingletonOptions = field(default_factory=SingletonOptions)
    warnings: tuple[str, ...] = ()


# TimeSpan.Parse's forms (System.Globalization.TimeSpanParse), by the separators between the numbers: first the
# invariant "c" format's (d.hh:mm:ss.fffffff), then the culture's "G" format's (d:hh:mm:ss.FFFFFFF), each with ":."
# between minutes and a fraction. Tried in .NET's order; the first whose fields are in range is the value.
_TIMESPAN_FORMS: dict[tuple[str, ...], tuple[tuple[str, ...], ...]] = {
    (): (("days",),),
    (":",): (("hours", "minutes"),),
    (":", ":"): (("hours", "minutes", "seconds"), ("days", "hours", "minutes")),
    (".", ":"): (("days", "hours", "minutes"),),
    (":", ":."): (("hours", "minutes", "fraction"),),
    (":", ":", "."): (("hours", "minutes", "seconds", "fraction"),),
    (".", ":", ":"): (("days", "hours", "minutes", "seconds"),),
    (".", ":", ":."): (("days", "hours", "minutes", "fraction"),),
    (":", ":", ":"): (("days", "hours", "minutes", "seconds"),),
    (":", ":", ":."): (("days", "hours", "minutes", "fraction"),),
    (".", ":", ":", "."): (("days", "hours", "minutes", "seconds", "fraction"),),
    (":", ":", ":", "."): (("days", "hours", "minutes", "seconds", "fraction"),),
}
_TIMESPAN_LIMITS = {"days": 10_675_199, "hours": 23, "minutes": 59, "seconds": 59}
_TIMESPAN_NUMBER_LIMIT = 0xFFFFFFF  # TimeSpanTokenizer: a longer number overflows
_TICKS_PER_SECOND = 10_000_000
_MAX_TICKS = 2**63 - 1  # TimeSpan.MaxValue


def parse_timespan(text: str) -> timedelta:
    """A .NET TimeSpan as the host reads one (``TimeSpan.Parse``, invariant culture): host.json's options, the @retry
    intervals and a timer schedule that is not cron all go through it. ``[-]d``, ``[-][d.]hh:mm[:ss[.fffffff]]``
    and ``[-]d:hh:mm[:ss[.fffffff]]``, space around; the fields of ``hh:mm:ss`` do not overflow into each other:
    three numbers whose hours are over 23 are read as ``d:hh:mm`` (``25:00:00`` is 25 days), and anything else out
    of range is refused (``24:00``, ``00:75:00``, ``00:00:90``, more than seven fraction digits), as .NET refuses
    it. Ticks are kept to the microsecond. A negative one parses, as in .NET, so that the option it is given to can
    say why it is refused."""
    tokens = re.findall(r"[0-9]+|[^0-9]+", text.strip())
    sign = tokens.pop(0) if tokens and tokens[0][0] not in "0123456789" else ""
    if sign in ("", "-") and len(tokens) % 2 == 1:  # numbers between separators, a number last
        numbers, separators = tokens[::2], tuple(tokens[1::2])
        for fields in _TIMESPAN_FORMS.get(separators, ()):
            ticks = _timespan_ticks(dict(zip(fields, numbers, strict=True)))
            if ticks is not None:
                seconds, rest = divmod(ticks, _TICKS_PER_SECOND)
                span = timedelta(seconds=seconds, microseconds=rest / 10)
                return -span if sign else span
    raise DevHostError(f"{text!r} is not a TimeSpan .NET reads ([-][d.]hh:mm[:ss[.fffffff]], hours 0-23, minutes "
                       "and seconds 0-59)")


def _timespan_ticks(fields: dict[str, str]) -> int | None:
    """The ticks of the numbers read as ``fields``; None when .NET finds one out of range (TryTimeToTicks)."""
    if any(int(digits) > _TIMESPAN_NUMBER_LIMIT for digits in fields.values()):
        return None
    values = {name: int(digits) for name, digits in fields.items() if name != "fraction"}
    if any(values.get(name, 0) > limit for name, limit in _TIMESPAN_LIMITS.items()):
        return None
    fraction = _fraction_ticks(fields.get("fraction", "0"))
    if fraction is None:
        return None
    seconds = ((values.get("days", 0) * 24 + values.get("hours", 0)) * 60 + values.get("minutes", 0)) * 60 \
        + values.get("seconds", 0)
    ticks = seconds * _TICKS_PER_SECOND + fraction
    return ticks if ticks <= _MAX_TICKS else None


def _fraction_ticks(digits: str) -> int | None:
    """A fraction of a second in ticks (TimeSpanToken.NormalizeAndValidateFraction): up to seven digits, or more
    after leading zeros, rounded half away from zero to seven; None for more than seven without a leading zero."""
    if len(digits) > 7 and not digits.startswith("0"):
        return None
    if len(digits) <= 7:
        return int(digits.ljust(7, "0"))
    return int(digits[:7]) + (1 if digits[7] >= "5" else 0)


def load_local_settings(path: Path | None, environ: MutableMapping[str, str] | None = None) -> int | None:
    """Apply ``Values`` and ``ConnectionStrings`` to ``environ`` (``os.environ``) as ``func start`` does (a connection
    string as ``ConnectionStrings:<name>``, StartHostAction); return ``Host.LocalHttpPort``.

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
    if not isinstance(document, dict):
        raise DevHostError(f"{path} must hold a JSON object (with Values, ConnectionStrings, Host)")
    if document.get("IsEncrypted"):
        raise DevHostError(f"{path} is encrypted; the dev host reads plain settings only")
    values = _object(document, "Values", f"{path}: Values must be an object of setting names and values")
    for name, value in values.items():
        if isinstance(value, dict | list):  # Core Tools reads Values as strings: an object or array is refused
            raise DevHostError(f"{path}: Values.{name} must be a string, not a JSON "
                               f"{'object' if isinstance(value, dict) else 'array'}")
    strings = _object(document, "ConnectionStrings",
                      f"{path}: ConnectionStrings must be an object of connection names and strings")
    host = _object(document, "Host", f"{path}: Host must be an object (LocalHttpPort, CORS, ...)")
    for name, value in [*values.items(), *((f"ConnectionStrings:{key}", value) for key, value in strings.items())]:
        if environ.get(name):
            logger.info(
                "Skipping %r from local settings as it's already defined in current environment variables", name
            )
            continue
        environ[name] = "" if value is None else str(value)
    port = host.get("LocalHttpPort")
    return tcp_port(port, f"{path}: Host.LocalHttpPort") if port else None


def _object(document: dict[str, Any], key: str, message: str) -> dict[str, Any]:
    """``document[key]``, a JSON object, or {} when it is absent or null; a DevHostError with ``message`` when it is
    anything else (an array, a string, a number), which the settings cannot be read from."""
    section = document.get(key)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise DevHostError(message)
    return section


def tcp_port(value: object, where: str) -> int:
    """A TCP port 0-65535 (0 picks a free one); a DevHostError naming ``where`` otherwise."""
    try:
        port = int(str(value).strip())
    except ValueError:
        raise DevHostError(f"{where} {value!r} is not a whole number") from None
    if not 0 <= port <= 65535:  # bind() would fail later with an OverflowError traceback
        raise DevHostError(f"{where} {value!r} is no TCP port (0-65535; 0 picks a free one)")
    return port


def load_host_json(path: Path, environ: Mapping[str, str] | None = None) -> HostOptions:
    """Read host.json with the ``AzureFunctionsJobHost__<path>`` app settings of ``environ`` (``os.environ``) over it.

    As the Functions host reads it into .NET configuration: keys are case-insensitive at every level (the schema
    ``version`` excepted, which the host reads from the file itself), a setting's
    ``__`` separates levels and a number is an array index (``AzureFunctionsJobHost__functions__0=ingest`` is
    ``{"functions": ["ingest"]}``), and a setting replaces only the value it names. A missing file gives the defaults
    (as an empty host.json would), the settings still apply. Every error names the key, or the setting that set it.
    """
    environ = os.environ if environ is None else environ
    document: object = {}
    if path.exists():
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DevHostError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise DevHostError(f"{path} must hold a JSON object")
        _check_schema_version(document, path)
    else:
        logger.warning("%s not found: using the Functions host defaults", path)
    tree, origins = _with_overrides(_tree(document), environ)
    document = _document(tree)
    if not isinstance(document, dict):
        raise DevHostError(f"{path} with the AzureFunctionsJobHost__ settings must be an object, not a list")

    def where(*keys: str) -> str:
        """The setting that set ``keys`` (or something under them), else the host.json key."""
        setting = origins.get(keys) or next((name for path, name in origins.items() if path[:len(keys)] == keys), None)
        return setting or "host.json " + ".".join(keys)

    warnings: list[str] = []
    refused = [f"{where(key)} ({_REFUSED[key]})" for key in sorted(set(document) & set(_REFUSED))]
    if refused:
        raise DevHostError("the dev host does not implement " + "; ".join(refused))
    for key in sorted(set(document) - _HONOURED - _LOCALLY_INERT):
        warnings.append(f"{where(key)} is not a setting the dev host knows; ignored")
    extensions = _section(document, "extensions", where=where)
    for key in sorted(set(extensions) - {"eventHubs", "http"}):
        warnings.append(f"{where('extensions', key)}: the app's functions use no such binding here; ignored")
    http = _section(extensions, "http", where=lambda key: where("extensions", key))
    for key in sorted(set(http) - _HTTP_KEYS):
        warnings.append(f"{where('extensions', 'http', key)} is not implemented by the dev host (no HTTP "
                        "throttling, no HSTS); ignored")
    custom_headers = http.get("customHeaders") or {}
    if not isinstance(custom_headers, dict):
        raise DevHostError(f"{where('extensions', 'http', 'customHeaders')} must be an object of header names and "
                           "values")
    eh = _section(extensions, "eventHubs", where=lambda key: where("extensions", key))
    warnings.extend(_eventhub_checks(eh, lambda *keys: where("extensions", "eventHubs", *keys)))
    singleton = _section(document, "singleton", where=where)
    for key in sorted(set(singleton) - _SINGLETON_KEYS):
        warnings.append(f"{where('singleton', key)}: " + (
            "the lock of [Singleton] functions, which the Python programming model has none of; ignored"
            if key in _SINGLETON_UNREAD else "is not a singleton setting; ignored"))
    return HostOptions(
        route_prefix=_route_prefix(http, where("extensions", "http", "routePrefix")),
        custom_headers={str(name): str(value) for name, value in custom_headers.items()},
        function_timeout=_function_timeout(document.get("functionTimeout"), where("functionTimeout")),
        functions=_functions(document.get("functions"), where("functions")),
        eventhubs=_eventhub_options(eh, lambda *keys: where("extensions", "eventHubs", *keys)),
        singleton=_singleton_options(singleton, lambda key: where("singleton", key)),
        warnings=tuple(warnings),
    )


def _check_schema_version(document: dict[str, object], path: Path) -> None:
    """The host refuses to start on a host.json whose schema ``version`` is not "2.0" (HostJsonFileConfigurationSource;
    the version is read from the file, so no app setting stands in for it): without this check an app with
    ``"version": "3.0"`` (mistaken for the runtime version) runs here and does not start in Azure.

    As the host reads it: an empty object is taken for ``{"version": "2.0"}`` (InitializeHostConfig writes that in
    its place and starts), and the key is ``version`` exactly (``hostConfigObject["version"]``, a case-sensitive
    lookup, unlike every other host.json key): ``"Version"`` is a missing version."""
    if not document:
        return
    version = document.get("version")
    if version is None:
        spelled = next((key for key in document if key.lower() == "version"), None)
        hint = f" ({json.dumps(spelled)} is not it: the host reads this key case-sensitively)" if spelled else ""
        raise DevHostError(f"{path} is missing the required 'version' property{hint}; the Functions host refuses to "
                           'start without it: add "version": "2.0"')
    if version != "2.0":
        raise DevHostError(f"{path}: {json.dumps(version)} is an invalid value for host.json 'version' property; the "
                           'Functions host refuses to start with it: "2.0" is the schema version of host.json (not '
                           "the runtime's version)")


def _route_prefix(http: dict[str, object], where: str) -> str:
    """``extensions.http.routePrefix``, "api" when absent. A JSON null is refused rather than guessed at: it would
    otherwise become the prefix "None", and the host's reading of it (no prefix, or the default) is not one to rely
    on."""
    prefix = http.get("routePrefix", "api")
    if prefix is None:
        raise DevHostError(f'{where} is null: write "" for no prefix, or a prefix such as "api" (the default when '
                           "the key is absent)")
    return str(prefix).strip("/")


def function_disabled(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the app setting ``AzureWebJobs.<name>.Disabled`` (or ``AzureWebJobs_<name>_Disabled``, for platforms
    whose variable names cannot hold a dot) is ``true`` or ``1``: the host then starts no listener for the function
    and serves no route for it."""
    environ = os.environ if environ is None else environ
    value = next((found[1] for setting in (f"AzureWebJobs.{name}.Disabled", f"AzureWebJobs_{name}_Disabled")
                  if (found := app_setting(setting, environ)) and found[1]), "")
    return value.strip().lower() in ("true", "1")


# Every key the dev host reads or knows, in host.json's spelling: keys written in another case are read as these.
_CANONICAL = {key.lower(): key for key in (
    _EVENTHUB_KEYS | set(_EVENTHUB_UNREAD) | _HONOURED | _LOCALLY_INERT | set(_REFUSED) | _HTTP_KEYS
    | _SINGLETON_KEYS | _SINGLETON_UNREAD | {"eventHubs", "http", "type", "enqueuedTimeUtc"}
)}
_Tree = dict[str, object]


def _tree(value: object) -> object:
    """host.json as configuration sees it: known keys in their canonical case, arrays as objects keyed ``0``, ``1``."""
    if isinstance(value, list):
        value = {str(index): item for index, item in enumerate(value)}
    if not isinstance(value, dict):
        return value
    tree: _Tree = {}
    for key, item in value.items():
        _put(tree, str(key), _tree(item))
    return tree


def _put(tree: _Tree, key: str, value: object) -> str:
    """Set ``key`` ignoring case (the last of two spellings wins, as in .NET configuration); the key as stored."""
    stored = next((existing for existing in tree if existing.lower() == key.lower()), _CANONICAL.get(key.lower(), key))
    tree[stored] = value
    return stored


def _with_overrides(tree: object, environ: Mapping[str, str]) -> tuple[_Tree, dict[tuple[str, ...], str]]:
    """``tree`` with every ``AzureFunctionsJobHost__a__b`` setting of ``environ`` at ``a.b`` (names as .NET
    configuration reads them: ignoring case, ``__`` read as ``:``); and which setting set which path."""
    root = tree if isinstance(tree, dict) else {}
    origins: dict[tuple[str, ...], str] = {}
    prefix = JOB_HOST_PREFIX.replace("__", ":").lower()
    for name in sorted(environ):
        configured = name.replace("__", ":")  # as .NET configuration reads it: AzureFunctionsJobHost:a:b too
        if not configured.lower().startswith(prefix):
            continue
        keys = configured[len(prefix):].split(":")
        if not all(keys):
            raise DevHostError(f"{name}: a setting's path has no empty level (AzureFunctionsJobHost__a__b)")
        node = root
        stored: list[str] = []
        for key in keys[:-1]:
            child = next((value for existing, value in node.items() if existing.lower() == key.lower()), None)
            if not isinstance(child, dict):
                child = {}
            stored.append(_put(node, key, child))
            node = child
        stored.append(_put(node, keys[-1], environ[name]))
        origins[tuple(stored)] = name
    return root, origins


def _document(tree: object) -> object:
    """Back from :func:`_tree`: an object keyed ``0``, ``1``, ... is an array again."""
    if not isinstance(tree, dict):
        return tree
    if tree and all(key.isdigit() for key in tree):
        return [_document(tree[key]) for key in sorted(tree, key=int)]
    return {key: _document(value) for key, value in tree.items()}


def _section(document: dict[str, object], key: str, *, where: Callable[[str], str]) -> dict[str, object]:
    value = document.get(key) or {}
    if not isinstance(value, dict):
        raise DevHostError(f"{where(key)} must be an object")
    return value


def _timespan(value: object, where: str) -> timedelta:
    try:
        return parse_timespan(str(value))
    except DevHostError as exc:
        raise DevHostError(f"{where}: {exc}") from exc


def _whole_number(section: dict[str, object], key: str, default: int, where: Callable[..., str]) -> int:
    value = section.get(key, default)
    try:
        return int(str(value).strip())
    except ValueError:
        raise DevHostError(f"{where(key)} {value!r} is not a whole number") from None


def _function_timeout(value: object, where: str) -> timedelta | None:
    """``functionTimeout``: ``-1`` is no limit; the host refuses to start with less than a second
    (ScriptJobHostOptionsSetup, MinFunctionTimeout, on every plan)."""
    if value is None or str(value).strip() == "":
        return DEFAULT_FUNCTION_TIMEOUT
    if str(value).strip() == "-1":
        return None
    timeout = _timespan(value, where)
    if timeout < timedelta(seconds=1):
        raise DevHostError(f"{where} {value!r} is shorter than 00:00:01: the Functions host refuses it and does not "
                           "start (use -1 for no limit)")
    return timeout


def _functions(value: object, where: str) -> tuple[str, ...] | None:
    """``functions``: the only functions the host loads (None: all). An empty list names none, and .NET configuration
    drops it: all are loaded."""
    if value is None or value == {}:
        return None
    if not isinstance(value, list) or not all(isinstance(name, str) and name.strip() for name in value):
        raise DevHostError(f"{where} must be a list of function names (AzureFunctionsJobHost__functions__0, __1, ...)")
    return tuple(name.strip() for name in value) or None


def _eventhub_checks(eh: dict[str, object], where: Callable[..., str]) -> list[str]:
    refused = [f"{where(key)} ({_EVENTHUB_REFUSED[key]})" for key in sorted(set(eh) & set(_EVENTHUB_REFUSED))]
    transport = str(eh.get("transportType", "amqpTcp"))
    if transport.lower() != "amqptcp":
        refused.append(f"{where('transportType')} {transport!r} (the dev host connects over AMQP (TCP), amqpTcp)")
    if refused:
        raise DevHostError("the dev host does not implement " + "; ".join(refused))
    unknown = "not an option of the Event Hubs extension"
    return [f"{where(key)} is {_EVENTHUB_UNREAD.get(key, unknown)}; ignored"
            for key in sorted(set(eh) - _EVENTHUB_KEYS)]


def _eventhub_options(eh: dict[str, object], where: Callable[..., str]) -> EventHubOptions:
    offset = eh.get("initialOffsetOptions") or {}
    if not isinstance(offset, dict):
        raise DevHostError(f"{where('initialOffsetOptions')} must be an object")
    types = {name.lower(): name for name in ("fromStart", "fromEnd", "fromEnqueuedTime")}
    offset_type = types.get(str(offset.get("type", "fromStart")).lower())
    if offset_type is None:
        raise DevHostError(f"{where('initialOffsetOptions', 'type')} {offset.get('type')!r} must be fromStart, "
                           "fromEnd or fromEnqueuedTime")
    enqueued = None
    if offset_type == "fromEnqueuedTime":
        if "enqueuedTimeUtc" not in offset:
            raise DevHostError(f"{where('initialOffsetOptions', 'type')} fromEnqueuedTime needs enqueuedTimeUtc")
        try:
            enqueued = datetime.fromisoformat(str(offset["enqueuedTimeUtc"]).replace("Z", "+00:00"))
        except ValueError as exc:
            raise DevHostError(f"{where('initialOffsetOptions', 'enqueuedTimeUtc')} is not a date-time: {exc}") \
                from exc
        if enqueued.tzinfo is None:
            enqueued = enqueued.replace(tzinfo=UTC)
    options = EventHubOptions(
        max_event_batch_size=_whole_number(eh, "maxEventBatchSize", 100, where),
        min_event_batch_size=_whole_number(eh, "minEventBatchSize", 1, where),
        max_wait_time=(_timespan(eh["maxWaitTime"], where("maxWaitTime")) if "maxWaitTime" in eh
                       else timedelta(seconds=60)),
        batch_checkpoint_frequency=_whole_number(eh, "batchCheckpointFrequency", 1, where),
        prefetch_count=_whole_number(eh, "prefetchCount", 300, where),
        initial_offset=offset_type,
        initial_enqueued_time=enqueued,
    )
    # The limits the extension's option setters enforce: the Functions host does not start with a value outside them.
    if options.max_event_batch_size < 1:
        raise DevHostError(f"{where('maxEventBatchSize')} must be at least 1")
    if options.min_event_batch_size < 1:
        raise DevHostError(f"{where('minEventBatchSize')} {options.min_event_batch_size} must be at least 1")
    if options.min_event_batch_size > options.max_event_batch_size:
        raise DevHostError(f"{where('minEventBatchSize')} is larger than maxEventBatchSize")
    if not timedelta(0) <= options.max_wait_time <= MAX_WAIT_TIME_LIMIT:
        raise DevHostError(f"{where('maxWaitTime')} {eh['maxWaitTime']!r} must be between 00:00:00 and 00:10:00")
    if options.batch_checkpoint_frequency < 1:
        raise DevHostError(f"{where('batchCheckpointFrequency')} must be at least 1")
    if options.prefetch_count < 0:
        raise DevHostError(f"{where('prefetchCount')} {options.prefetch_count} must not be negative")
    if options.prefetch_count == 0:
        # The host reads 0 as "no prefetch"; azure-eventhub has no such mode (its receive link's credit is the
        # prefetch) and quietly takes 0 for its default of 300, which would be a different receiver, unannounced.
        raise DevHostError(f"{where('prefetchCount')} 0 (no prefetch) cannot be reproduced by the dev host: "
                           "azure-eventhub always prefetches, and would take 0 for its default of 300; set a positive "
                           "count (locally, AzureFunctionsJobHost__extensions__eventHubs__prefetchCount in "
                           "local.settings.json overrides host.json)")
    return options


def _singleton_options(section: dict[str, object], where: Callable[[str], str]) -> SingletonOptions:
    defaults = SingletonOptions()
    period = (_timespan(section["listenerLockPeriod"], where("listenerLockPeriod")) if "listenerLockPeriod" in section
              else defaults.listener_lock_period)
    # Blob leases last 15 to 60 seconds; the host rejects other values the same way.
    if not timedelta(seconds=15) <= period <= timedelta(seconds=60):
        raise DevHostError(f"{where('listenerLockPeriod')} {period} must be between 00:00:15 and 00:01:00")
    polling = (_timespan(section["listenerLockRecoveryPollingInterval"], where("listenerLockRecoveryPollingInterval"))
               if "listenerLockRecoveryPollingInterval" in section
               else defaults.listener_lock_recovery_polling_interval)
    if polling <= timedelta(0):
        raise DevHostError(f"{where('listenerLockRecoveryPollingInterval')} must be positive")
    return SingletonOptions(listener_lock_period=period, listener_lock_recovery_polling_interval=polling)


def _configuration_keys(environ: Mapping[str, str]) -> dict[str, str]:
    """Every setting's name as .NET configuration reads it (``__`` is ``:``, lower case) -> the name in ``environ``."""
    keys: dict[str, str] = {}
    for key in environ:
        keys.setdefault(key.replace("__", ":").lower(), key)
    return keys


def app_setting(name: str, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """The app setting ``name`` as the host's configuration finds it (``IConfiguration[name]``): names compared
    ignoring case, ``__`` read as ``:``; the setting spelled exactly as asked wins. (The name as spelled in the
    environment, its value), or None when it is not set."""
    environ = os.environ if environ is None else environ
    if name in environ:
        return name, environ[name]
    spelled = _configuration_keys(environ).get(name.replace("__", ":").lower())
    return None if spelled is None else (spelled, environ[spelled])


def resolve(value: str, environ: Mapping[str, str] | None = None, *, what: str = "value") -> str:
    """Replace every ``%Setting%`` by the setting's value, as the host resolves binding expressions (through its
    configuration: the name's case does not matter)."""
    environ = os.environ if environ is None else environ

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        found = app_setting(name, environ)
        if found is None or not found[1]:
            raise DevHostError(f"{what} refers to the app setting %{name}%, which is not set")
        return found[1]

    return _SETTING_REF.sub(lookup, value)


@dataclass(frozen=True)
class ConnectionSection:
    """The configuration section a connection name resolved to: the app setting that holds it (as spelled in the
    environment), its value ("" when the section has children only) and its children's names, lower case."""

    setting: str
    value: str
    children: frozenset[str]


def connection_section(name: str, environ: Mapping[str, str] | None = None) -> ConnectionSection | None:
    """The section the WebJobs extensions bind a connection name to (``GetWebJobsConnectionStringSection``): the first
    that exists of ``ConnectionStrings:AzureWebJobs<name>``, ``AzureWebJobs<name>``, ``ConnectionStrings:<name>`` and
    ``<name>``, in the environment as .NET configuration reads it (``__`` is ``:``, names compared ignoring case). A
    section exists when it has a value, even an empty one, or a child (``<name>__fullyQualifiedNamespace``), so
    ``AzureWebJobs<name>`` wins over ``<name>`` and an identity-based prefixed one over a plain connection string.
    None when none exists."""
    environ = os.environ if environ is None else environ
    keys = _configuration_keys(environ)
    for candidate in (f"ConnectionStrings:AzureWebJobs{name}", f"AzureWebJobs{name}", f"ConnectionStrings:{name}",
                      name):
        folded = candidate.lower()
        children = frozenset(key[len(folded) + 1:] for key in keys if key.startswith(folded + ":"))
        if folded in keys:
            return ConnectionSection(keys[folded], environ[keys[folded]], children)
        if children:  # spelled as the environment spells one of them, without the child's name
            child = min(children)
            spelled = keys[f"{folded}:{child}"][:-len(child)]
            return ConnectionSection(spelled.removesuffix("__").removesuffix(":"), "", children)
    return None


def storage_connection_string(environ: Mapping[str, str] | None = None) -> str:
    """``AzureWebJobsStorage`` as a connection string; ``UseDevelopmentStorage=true`` means Azurite's default port.

    Found as the host finds it (``GetWebJobsConnectionString``): ``ConnectionStrings:AzureWebJobsStorage`` first (a
    connection string of local.settings.json), then the app setting, names compared ignoring case."""
    environ = os.environ if environ is None else environ
    value = next((found[1] for name in ("ConnectionStrings:AzureWebJobsStorage", "AzureWebJobsStorage")
                  if (found := app_setting(name, environ)) and found[1].strip()), "").strip()
    identity = [name for name in ("AzureWebJobsStorage__accountName", "AzureWebJobsStorage__blobServiceUri")
                if (found := app_setting(name, environ)) and found[1].strip()]
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

    The app setting ``AzureFunctionsWebHost:hostid`` wins (found as :func:`app_setting` finds it: any case, ``__`` or
    ``:``); otherwise, like Core Tools, a stable id
    from the machine name and the app's directory, so two dev hosts started from the
    same checkout share timer leases and only one fires.
    """
    environ = os.environ if environ is None else environ
    explicit = app_setting("AzureFunctionsWebHost:hostid", environ)
    if explicit and explicit[1]:
        return explicit[1].lower()[:32]
    digest = hashlib.sha256(f"{socket.gethostname()}|{script_root.resolve()}".encode()).hexdigest()
    return f"devhost-{digest[:24]}"
