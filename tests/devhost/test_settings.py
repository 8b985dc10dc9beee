"""What the dev host reads before it starts: local.settings.json, host.json, schedules, %Setting% references."""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from devhost.app_loader import FunctionSpec
from devhost.errors import DevHostError
from devhost.eventhub_trigger import EventHubBinding
from devhost.invocation import default_thread_count
from devhost.schedule import NEVER, Schedule, time_zone
from devhost.settings import (
    DEVELOPMENT_STORAGE,
    connection_section,
    function_disabled,
    host_id,
    load_host_json,
    load_local_settings,
    parse_timespan,
    resolve,
    storage_connection_string,
)


def test_local_settings_fill_the_environment_but_do_not_override_it(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"Values": {"A": "from-file", "B": "from-file", "C": None},
                                "Host": {"LocalHttpPort": 7072}}))
    environ = {"A": "from-env"}
    assert load_local_settings(path, environ) == 7072
    assert environ == {"A": "from-env", "B": "from-file", "C": ""}


def test_local_settings_connection_strings_reach_the_connection_lookups(tmp_path: Path) -> None:
    """``func start`` injects each entry of ``ConnectionStrings`` as ``ConnectionStrings:<name>``
    (StartHostAction.GetConfigurationSettings), unless the environment has it, and the connection lookups find them
    there: an Event Hubs connection or the storage kept in that section runs under Core Tools, so it must here."""
    hub = "Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true"
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, "Values": {"FUNCTIONS_WORKER_RUNTIME": "python"},
                                "ConnectionStrings": {"EventHubConnection": hub, "Kept": "from-file",
                                                      "AzureWebJobsStorage": "UseDevelopmentStorage=true"}}))
    environ = {"ConnectionStrings:Kept": "from-env"}
    load_local_settings(path, environ)
    section = connection_section("EventHubConnection", environ)
    assert section is not None and section.value == hub
    assert environ["ConnectionStrings:Kept"] == "from-env"
    assert storage_connection_string(environ) == DEVELOPMENT_STORAGE


def test_local_settings_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DevHostError, match="does not exist"):
        load_local_settings(tmp_path / "missing.json", {})
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(DevHostError, match=r"bad\.json is not valid JSON"):
        load_local_settings(bad, {})
    assert load_local_settings(None, {}) is None


@pytest.mark.parametrize(("document", "message"), [
    ([1], r"local\.settings\.json must hold a JSON object"),
    ("Values", r"local\.settings\.json must hold a JSON object"),
    ({"Values": ["A=1"]}, r"local\.settings\.json: Values must be an object"),
    ({"Values": []}, r"local\.settings\.json: Values must be an object"),
    ({"Values": {"A": {"nested": 1}}}, r"local\.settings\.json: Values\.A must be a string, not a JSON object"),
    ({"Values": {"A": [1]}}, r"local\.settings\.json: Values\.A must be a string, not a JSON array"),
    ({"ConnectionStrings": []}, r"local\.settings\.json: ConnectionStrings must be an object"),
    ({"Host": [7072]}, r"local\.settings\.json: Host must be an object"),
], ids=["array", "string", "Values-array", "Values-empty-array", "Values-object-entry", "Values-array-entry",
        "ConnectionStrings-array", "Host-array"])
def test_local_settings_that_are_not_objects_are_refused_naming_them(tmp_path: Path, document: object,
                                                                      message: str) -> None:
    """Core Tools reads local.settings.json into an object whose Values are strings: anything else is no settings.
    The dev host called ``.get``/``.items()`` on whatever the JSON held (an AttributeError traceback, exit 1)."""
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps(document))
    environ: dict[str, str] = {}
    with pytest.raises(DevHostError, match=message):
        load_local_settings(path, environ)
    assert environ == {}


def test_local_settings_numbers_booleans_and_null_become_strings(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"Values": {"N": 5, "F": 1.5, "B": True, "Z": None}, "ConnectionStrings": None,
                                "Host": None}))
    environ: dict[str, str] = {}
    assert load_local_settings(path, environ) is None
    assert environ == {"N": "5", "F": "1.5", "B": "True", "Z": ""}


def test_host_json_options(tmp_path: Path) -> None:
    path = tmp_path / "host.json"
    path.write_text(json.dumps({
        "version": "2.0",
        "functionTimeout": "00:10:00",
        "extensions": {"eventHubs": {"maxEventBatchSize": 256, "minEventBatchSize": 8, "maxWaitTime": "00:00:01.5",
                                     "prefetchCount": 1024, "batchCheckpointFrequency": 2, "typo": 1,
                                     "initialOffsetOptions": {"type": "fromEnqueuedTime",
                                                              "enqueuedTimeUtc": "2026-01-02T03:04:05Z"}},
                       "http": {"routePrefix": "/v1/"}},
        "singleton": {"listenerLockPeriod": "00:00:20", "listenerLockRecoveryPollingInterval": "00:00:02"},
    }))
    options = load_host_json(path)
    eh = options.eventhubs
    assert (eh.max_event_batch_size, eh.min_event_batch_size, eh.prefetch_count, eh.batch_checkpoint_frequency) \
        == (256, 8, 1024, 2)
    assert eh.max_wait_time == timedelta(seconds=1.5)
    assert eh.initial_offset == "fromEnqueuedTime"
    assert eh.initial_enqueued_time == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert options.route_prefix == "v1"
    assert options.function_timeout == timedelta(minutes=10)
    assert options.singleton.listener_lock_period == timedelta(seconds=20)
    assert options.singleton.listener_lock_recovery_polling_interval == timedelta(seconds=2)
    assert any("eventHubs.typo" in w for w in options.warnings)


def test_keys_the_host_reads_but_the_dev_host_cannot_apply_are_named_in_warnings(tmp_path: Path) -> None:
    """``eventProcessorOptions`` (the 3.x/4.x extension's batch size and prefetch) and the ``[Singleton]`` lock
    settings do nothing here, nor in Azure with this app: a silent pass would let a user believe a batch size
    took effect. Each gets a warning naming the key and saying what to use instead; so does
    ``targetUnprocessedEventThreshold``, which only scales instances in Azure."""
    path = tmp_path / "host.json"
    path.write_text(json.dumps({
        "version": "2.0",
        "extensions": {"eventHubs": {"EventProcessorOptions": {"maxBatchSize": 512},
                                     "targetUnprocessedEventThreshold": 1000}},
        "singleton": {"lockPeriod": "00:00:15", "listenerLockPeriod": "00:00:20", "typo": 1},
    }))
    warnings = load_host_json(path, {}).warnings
    assert any("eventHubs.eventProcessorOptions" in w and "maxEventBatchSize" in w for w in warnings), warnings
    assert any("singleton.lockPeriod" in w and "[Singleton]" in w for w in warnings), warnings
    assert any("singleton.typo" in w for w in warnings), warnings
    assert any("eventHubs.targetUnprocessedEventThreshold" in w and "scal" in w for w in warnings), warnings
    assert not any("listenerLockPeriod" in w for w in warnings), warnings


@pytest.mark.parametrize("document, message", [
    ({"version": "3.0", "functionTimeout": "00:05:00"}, "\"3.0\" is an invalid value for host.json 'version'"),
    ({"version": "1.0"}, "\"1.0\" is an invalid value for host.json 'version'"),
    ({"version": 2.0}, "2.0 is an invalid value for host.json 'version'"),
    ({"functionTimeout": "00:05:00"}, "missing the required 'version' property"),
])
def test_host_json_without_schema_version_2_is_refused_as_the_host_refuses_it(tmp_path: Path,
                                                                                document: dict[str, object],
                                                                                message: str) -> None:
    """The Functions host does not start when host.json's ``version`` is missing or is not "2.0"
    (HostJsonFileConfigurationSource: "The host.json file is missing the required 'version' property" / "'3.0' is an
    invalid value for host.json 'version' property"): taken silently here, an app would pass locally and not start
    in Azure. "3.0" is the classic mistake (azure-functions-host#5310). An app setting does not stand in for it."""
    path = tmp_path / "host.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(DevHostError, match=re.escape(message)):
        options = load_host_json(path, {"AzureFunctionsJobHost__version": "2.0"})
        pytest.fail(f"accepted, warnings: {options.warnings}")
    path.write_text(json.dumps({**document, "version": "2.0"}), encoding="utf-8")
    assert load_host_json(path, {}).function_timeout is not None


def test_an_empty_host_json_object_starts_with_the_defaults_as_in_the_host(tmp_path: Path) -> None:
    """host: HostJsonFileConfigurationSource.InitializeHostConfig replaces a host.json with no values (``{}``) by
    ``{"version": "2.0"}`` (and writes it) before checking the version, so the app starts. It was refused here as
    "missing the required 'version' property": an app that starts in Azure did not start locally."""
    (tmp_path / "host.json").write_text("{}", encoding="utf-8")
    options = load_host_json(tmp_path / "host.json", {})
    assert options.route_prefix == "api"
    assert options.function_timeout is not None


def test_a_host_json_version_key_in_another_case_is_refused_as_in_the_host(tmp_path: Path) -> None:
    """host: the version is ``hostConfigObject["version"]``, a case-sensitive JObject lookup: ``"Version": "2.0"``
    is "missing the required 'version' property" and the host does not start (every other key ignores case). It was
    found ignoring case here, and the app ran locally but not in Azure. The message names the key as written."""
    (tmp_path / "host.json").write_text('{"Version": "2.0"}', encoding="utf-8")
    with pytest.raises(DevHostError, match=re.escape("""missing the required 'version' property ("Version" is not""")):
        load_host_json(tmp_path / "host.json", {})


def test_a_null_route_prefix_is_refused_by_name(tmp_path: Path) -> None:
    """``"routePrefix": null`` became the prefix "None" (routes at /None/...); it is refused, naming the key, rather
    than guessed at."""
    path = tmp_path / "host.json"
    path.write_text(json.dumps({"version": "2.0", "extensions": {"http": {"routePrefix": None}}}), encoding="utf-8")
    with pytest.raises(DevHostError, match=r"host.json extensions.http.routePrefix is null"):
        load_host_json(path, {})
    path.write_text(json.dumps({"version": "2.0", "extensions": {"http": {"routePrefix": ""}}}), encoding="utf-8")
    assert load_host_json(path, {}).route_prefix == ""


def test_missing_host_json_gives_the_host_defaults(tmp_path: Path) -> None:
    options = load_host_json(tmp_path / "host.json")
    assert options.route_prefix == "api"
    assert options.eventhubs.max_event_batch_size == 100
    assert options.singleton.listener_lock_period == timedelta(seconds=60)


@pytest.mark.parametrize("section, message", [
    ({"extensions": {"eventHubs": {"maxEventBatchSize": "many"}}}, "extensions.eventHubs.maxEventBatchSize 'many'"),
    ({"extensions": {"eventHubs": {"minEventBatchSize": 10, "maxEventBatchSize": 5}}}, "minEventBatchSize"),
    ({"extensions": {"eventHubs": {"initialOffsetOptions": {"type": "fromEnqueuedTime"}}}}, "needs enqueuedTimeUtc"),
    ({"extensions": {"eventHubs": {"initialOffsetOptions": {"type": "fromMiddle"}}}}, "fromMiddle"),
    ({"singleton": {"listenerLockPeriod": "00:05:00"}}, "listenerLockPeriod"),
])
def test_bad_host_json_values_are_refused(tmp_path: Path, section: dict[str, object], message: str) -> None:
    path = tmp_path / "host.json"
    path.write_text(json.dumps({"version": "2.0", **section}))
    with pytest.raises(DevHostError, match=message):
        load_host_json(path)


def test_app_settings_override_host_json_as_on_the_host(tmp_path: Path) -> None:
    """The host layers ``AzureFunctionsJobHost__<path>`` app settings over host.json (functions-host-json,
    "Override host.json values"): ``__`` separates levels, a number is an array index, the prefix and keys ignore
    case, and a setting replaces only the value it names (``functions__0`` keeps host.json's second entry)."""
    path = tmp_path / "host.json"
    path.write_text(json.dumps({"version": "2.0", "functions": ["ingest", "status"], "functionTimeout": "00:10:00",
                                "extensions": {"eventHubs": {"maxEventBatchSize": 256, "prefetchCount": 1024}}}))
    options = load_host_json(path, {
        "AzureFunctionsJobHost__extensions__http__routePrefix": "custom",
        "AZUREFUNCTIONSJOBHOST__Extensions__EventHubs__MaxEventBatchSize": "64",
        "AzureFunctionsJobHost__functions__0": "lookup",
        "AzureFunctionsJobHost__logging__logLevel__default": "Warning",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    })
    assert options.route_prefix == "custom"
    assert (options.eventhubs.max_event_batch_size, options.eventhubs.prefetch_count) == (64, 1024)
    assert options.functions == ("lookup", "status")
    assert options.function_timeout == timedelta(minutes=10)
    assert options.warnings == ()
    assert load_host_json(tmp_path / "missing.json", {"AzureFunctionsJobHost__functions__0": "ingest"}).functions \
        == ("ingest",)


def test_app_settings_override_host_json_spelled_with_colons(tmp_path: Path) -> None:
    """.NET configuration reads ``__`` in an environment variable's name as ``:``, so ``AzureFunctionsJobHost:a:b``
    (the configuration key itself, any case) is the same setting as ``AzureFunctionsJobHost__a__b``."""
    options = load_host_json(tmp_path / "missing.json", {
        "AzureFunctionsJobHost:functions:0": "ingest",
        "azurefunctionsjobhost:Extensions__http:routePrefix": "custom",
    })
    assert (options.functions, options.route_prefix) == (("ingest",), "custom")
    with pytest.raises(DevHostError, match="AzureFunctionsJobHost:functions::0: a setting's path has no empty level"):
        load_host_json(tmp_path / "missing.json", {"AzureFunctionsJobHost:functions::0": "ingest"})


@pytest.mark.parametrize("setting, value", [
    ("AzureFunctionsJobHost__extensions__eventHubs__maxEventBatchSize", "many"),
    ("AzureFunctionsJobHost__functionTimeout", "ten minutes"),
    ("AzureFunctionsJobHost__extensions__eventHubs__initialOffsetOptions__type", "fromMiddle"),
    ("AzureFunctionsJobHost__singleton__listenerLockPeriod", "00:05:00"),
    ("AzureFunctionsJobHost__retry__strategy", "fixedDelay"),
])
def test_a_bad_value_from_an_app_setting_is_refused_naming_the_setting(tmp_path: Path, setting: str,
                                                                      value: str) -> None:
    """An app setting is checked as the host.json value it replaces, and the message names the setting, not a
    host.json key the file does not have."""
    with pytest.raises(DevHostError, match=setting):
        load_host_json(tmp_path / "host.json", {setting: value})


@pytest.mark.parametrize(("section", "attribute", "expected"), [
    ({"extensions": {"eventHubs": {"initialOffsetOptions": {"Type": "FromEnd"}}}}, "initial_offset", "fromEnd"),
    ({"Extensions": {"EVENTHUBS": {"MaxEventBatchSize": 10}}}, "max_event_batch_size", 10),
    ({"FunctionTimeout": "00:01:00"}, "function_timeout", timedelta(minutes=1)),
    ({"extensions": {"Http": {"RoutePrefix": "v1"}}}, "route_prefix", "v1"),
])
def test_host_json_keys_and_enum_values_ignore_case(tmp_path: Path, section: dict[str, object], attribute: str,
                                                   expected: object) -> None:
    """The host reads host.json into .NET configuration, whose keys are case-insensitive, and binds enums ignoring
    case: ``"Type": "FromEnd"`` or ``"MaxEventBatchSize"`` take effect in Azure, so they must here too (a new
    consumer group would otherwise read the whole stream locally and only new events in production)."""
    path = tmp_path / "host.json"
    path.write_text(json.dumps({"version": "2.0", **section}))
    options = load_host_json(path, {})
    holder = options.eventhubs if attribute in ("initial_offset", "max_event_batch_size") else options
    assert getattr(holder, attribute) == expected
    assert options.warnings == ()


@pytest.mark.parametrize("timeout", ["00:00:00", "00:00:00.500"])
def test_a_function_timeout_under_one_second_is_refused(tmp_path: Path, timeout: str) -> None:
    """The host refuses to start with a functionTimeout under a second, on every plan (ScriptJobHostOptionsSetup,
    MinFunctionTimeout; its test Configure_AppliesMinTimeoutLimit_ForAllSkus). Accepting it would also make
    ``00:00:00`` no limit at all (``timedelta(0)`` is falsy, so no watchdog)."""
    path = tmp_path / "host.json"
    path.write_text(json.dumps({"version": "2.0", "functionTimeout": timeout}))
    with pytest.raises(DevHostError, match=r"host\.json functionTimeout .* shorter than 00:00:01"):
        load_host_json(path, {})
    path.write_text(json.dumps({"version": "2.0", "functionTimeout": "00:00:01"}))
    assert load_host_json(path, {}).function_timeout == timedelta(seconds=1)


@pytest.mark.parametrize("option", [
    {"clientRetryOptions": {"mode": "exponential", "maxRetries": 0, "delay": "00:00:00.1"}},
    {"transportType": "amqpWebSockets"},
    {"customEndpointAddress": "amqps://gateway.example.com"},
    {"webProxy": "http://proxy.example.com:8080"},
], ids=["clientRetryOptions", "transportType", "customEndpointAddress", "webProxy"])
def test_event_hubs_options_the_dev_host_cannot_apply_are_refused_by_name(tmp_path: Path,
                                                                         option: dict[str, object]) -> None:
    """The Event Hubs extension (5.x+) applies these in Azure (functions-bindings-event-hubs, host.json settings);
    the dev host connects with the SDK's own retry policy over AMQP (TCP), directly. Running without them would test
    another retry policy or network route than the one in production, so start-up fails naming the option. The
    default transport, ``amqpTcp``, is what the dev host does and passes."""
    path = tmp_path / "host.json"
    path.write_text(json.dumps({"version": "2.0", "extensions": {"eventHubs": option}}))
    (key,) = option
    with pytest.raises(DevHostError, match=rf"host\.json extensions\.eventHubs\.{key}"):
        load_host_json(path, {})
    path.write_text(json.dumps({"version": "2.0", "extensions": {"eventHubs": {"transportType": "AmqpTcp"}}}))
    assert load_host_json(path, {}).warnings == ()


@pytest.mark.parametrize(("key", "value", "message"), [
    ("prefetchCount", -1, "must not be negative"),
    ("prefetchCount", 0, r"0 \(no prefetch\) cannot be reproduced"),
    ("minEventBatchSize", 0, "must be at least 1"),
    ("maxWaitTime", "00:30:00", "must be between 00:00:00 and 00:10:00"),
    ("maxWaitTime", "-00:00:01", "must be between 00:00:00 and 00:10:00"),
])
def test_event_hubs_options_the_host_refuses_are_refused_at_start_up(tmp_path: Path, key: str, value: object,
                                                                    message: str) -> None:
    """The extension's option setters refuse these and the Functions host does not start (azure-webjobs-sdk-extensions
    EventHubs src/Config/EventHubOptions.cs: "Batch size must be larger than or equal to 1.", "Max Wait Time must be
    less than or equal to 10 minutes."; Azure.Messaging.EventHubs ``EventProcessorOptions.PrefetchCount`` throws for a
    negative count). Was: the dev host ran with them, and ``prefetchCount: -1`` made its trigger silently never fire
    (azure-eventhub opened each link with a negative credit). ``prefetchCount`` 0 is "no prefetch" to the host, which
    azure-eventhub cannot do: it took 0 for its default of 300, silently; it is refused, naming the key."""
    path = tmp_path / "host.json"
    path.write_text(json.dumps({"version": "2.0", "extensions": {"eventHubs": {key: value}}}))
    with pytest.raises(DevHostError, match=rf"host\.json extensions\.eventHubs\.{key} .*{message}"):
        load_host_json(path, {})
    setting = f"AzureFunctionsJobHost__extensions__eventHubs__{key}"
    with pytest.raises(DevHostError, match=setting):
        load_host_json(tmp_path / "missing.json", {setting: str(value)})


def test_event_hubs_options_at_the_hosts_limits_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "host.json"
    path.write_text(json.dumps({"version": "2.0", "extensions": {"eventHubs": {
        "prefetchCount": 1, "minEventBatchSize": 1, "maxEventBatchSize": 1, "maxWaitTime": "00:10:00"}}}))
    options = load_host_json(path, {}).eventhubs
    assert (options.prefetch_count, options.min_event_batch_size, options.max_wait_time) == \
        (1, 1, timedelta(minutes=10))
    path.write_text(json.dumps({"version": "2.0", "extensions": {"eventHubs": {"maxWaitTime": "00:00:00"}}}))
    assert load_host_json(path, {}).eventhubs.max_wait_time == timedelta(0)


def test_timespans() -> None:
    assert parse_timespan("1.02:03:04.5") == timedelta(days=1, hours=2, minutes=3, seconds=4.5)
    with pytest.raises(DevHostError, match="not a TimeSpan"):
        parse_timespan("5 minutes")
    assert parse_timespan("-00:00:01.5") == -timedelta(seconds=1.5)  # as .NET parses it; the option says why not


@pytest.mark.parametrize("text, span", [
    ("25:00:00", timedelta(days=25)),  # hours over 23: d:hh:mm
    ("25:10:30", timedelta(days=25, hours=10, minutes=30)),
    ("7", timedelta(days=7)),
    ("1:2", timedelta(hours=1, minutes=2)),
    (" 1:02:03:04 ", timedelta(days=1, hours=2, minutes=3, seconds=4)),
    ("1:02:03:04.5", timedelta(days=1, hours=2, minutes=3, seconds=4.5)),
    ("00:10:.25", timedelta(minutes=10, seconds=0.25)),
    ("00:00:00.01234565", timedelta(seconds=0.012346)),  # past seven digits after a zero: rounded
    ("-25:00:00", -timedelta(days=25)),
])
def test_timespans_read_as_dotnet_timespan_parse_reads_them(text: str, span: timedelta) -> None:
    """host.json, @retry and TimeSpan schedules are read by ``TimeSpan.Parse`` (invariant culture): its "c" form
    ``[-][d.]hh:mm[:ss[.f]]``, its "G" form ``d:hh:mm[:ss[.f]]``, a bare number of days, and ``:.`` before a fraction.
    Three numbers whose hours do not fit ``hh:mm:ss`` are read as ``d:hh:mm``."""
    assert parse_timespan(text) == span


@pytest.mark.parametrize("text", ["24:00", "00:75:00", "00:00:90", "23:59:60", "1.24:00:00", "25:00:00.5",
                                  "00:00:00.12345678", "0.5", "+01:00", "01:00:", "10675200", "1:00 am"])
def test_timespans_dotnet_refuses_are_refused_naming_them(text: str) -> None:
    """``TimeSpan.Parse`` refuses a field out of range (hours 0-23 but for the d:hh:mm reading of three numbers,
    minutes and seconds 0-59, days up to TimeSpan.MaxValue's), more than seven fraction digits without a leading
    zero, and any separator its forms do not have: the host does not start with such an option."""
    with pytest.raises(DevHostError, match=re.escape(f"'{text}' is not a TimeSpan")):
        parse_timespan(text)


def test_a_timespan_schedule_with_more_than_23_hours_is_read_as_dotnet_reads_it() -> None:
    """The timer extension reads a schedule that is not cron with ``TimeSpan.TryParse`` (TimerSchedule.Create), which
    reads ``hh:mm:ss`` with hours over 23 as ``d:hh:mm``: in Azure ``schedule="25:00:00"`` fires every 25 days, and a
    bare number is days."""
    assert Schedule.parse("25:00:00").interval == timedelta(days=25)
    assert Schedule.parse("2").interval == timedelta(days=2)


@pytest.mark.parametrize("text", ["00:75:00", "00:00:90"])
def test_a_timespan_schedule_with_minutes_or_seconds_over_59_is_refused_as_the_host_refuses_it(text: str) -> None:
    """``TimeSpan.TryParse`` fails when minutes or seconds are outside 0-59, so the host refuses the function ("The
    schedule expression ... was not recognized as a valid cron expression or timespan string"): the app does not
    start in Azure, and must not run here."""
    with pytest.raises(DevHostError, match="neither an NCRONTAB expression nor a TimeSpan"):
        Schedule.parse(text)


def test_setting_references_resolve_or_name_the_missing_setting() -> None:
    environ = {"HUB": "telemetry", "EMPTY": ""}
    assert resolve("%HUB%-x", environ) == "telemetry-x"
    with pytest.raises(DevHostError, match="%EMPTY%"):
        resolve("%EMPTY%", environ, what="function 'f' eventHubName")


def test_setting_references_resolve_ignoring_case_as_host_configuration_does() -> None:
    """The host resolves ``%Setting%`` in schedule, eventHubName and consumerGroup through .NET configuration
    (DefaultNameResolver -> IConfiguration), whose keys ignore case: an app Azure runs must not be refused here."""
    environ = {"SLUICE_ENRICH_SCHEDULE": "0 */1 * * * *"}
    assert resolve("%sluice_enrich_schedule%", environ, what="function 'enrichment' schedule") == "0 */1 * * * *"


def test_the_disabled_setting_is_found_whatever_the_case_of_the_function_name() -> None:
    """FunctionIndexer.IsDisabled reads ``AzureWebJobs.<name>.Disabled`` through IConfiguration, ignoring case:
    ``AzureWebJobs_Ingest_Disabled=true`` disables ``ingest`` (its listener must not consume and checkpoint)."""
    assert function_disabled("ingest", {"AzureWebJobs_Ingest_Disabled": "true"})
    assert function_disabled("ingest", {"AzureWebJobs.INGEST.Disabled": "1"})
    assert not function_disabled("ingest", {"AzureWebJobs.ingest.Disabled": "false"})


@pytest.mark.parametrize("value", ["0", "-3", "eight", "8.0"])
def test_an_invalid_thread_count_setting_falls_back_to_the_workers_default(value: str,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    """The Python worker's tp_max_workers_validator warns and reverts to the default pool size for a value that is
    not an integer of at least 1 (it neither stops nor runs one thread)."""
    default = min(32, (os.cpu_count() or 1) + 4)
    with caplog.at_level(logging.WARNING, logger="devhost.invocation"):
        assert default_thread_count({"PYTHON_THREADPOOL_THREAD_COUNT": value}) == default
    assert "PYTHON_THREADPOOL_THREAD_COUNT" in caplog.text
    assert default_thread_count({"PYTHON_THREADPOOL_THREAD_COUNT": "3"}) == 3
    assert default_thread_count({}) == default


def test_storage_connection_string() -> None:
    assert storage_connection_string({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}) == DEVELOPMENT_STORAGE
    with pytest.raises(DevHostError, match="AzureWebJobsStorage is not set"):
        storage_connection_string({})
    # Identity-based storage is the Functions host's on Azure; the dev host says so instead of "not set".
    with pytest.raises(DevHostError, match="AzureWebJobsStorage__accountName is set but AzureWebJobsStorage is not"):
        storage_connection_string({"AzureWebJobsStorage__accountName": "fleet1"})


HUB_CONNECTION = ("Endpoint=sb://example.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=a2V5;"
                  "EntityPath={hub}")


def _eventhub_spec(trigger: dict[str, Any]) -> FunctionSpec:
    return FunctionSpec(name="ingest", trigger_type="eventHubTrigger",
                        trigger={"type": "eventHubTrigger", "name": "events", "direction": "IN", **trigger},
                        user_function=lambda events: None, is_async=False, accepts_context=False, retry=None)


def test_the_connection_strings_entity_path_wins_over_event_hub_name() -> None:
    """ext: EventHubClientFactory.NormalizeEventHubName: "If an Event Hub was specified as the entity path for the
    connection string, it should take precedence over the configuration-specified value." With a hub-scoped
    connection string (EntityPath=orders) and eventHubName="telemetry" the function consumes ``orders`` in Azure, so
    it must here (azure-eventhub itself would prefer ``eventhub_name``). An empty EntityPath names no hub."""
    spec = _eventhub_spec({"connection": "HubConnection", "eventHubName": "telemetry"})
    binding = EventHubBinding.from_spec(spec, {"HubConnection": HUB_CONNECTION.format(hub="orders")})
    assert binding.eventhub_name == "orders"
    spaced = "Endpoint=sb://example.servicebus.windows.net/; entitypath = orders ;SharedAccessKeyName=listen;" \
             "SharedAccessKey=a2V5"
    assert EventHubBinding.from_spec(spec, {"HubConnection": spaced}).eventhub_name == "orders"
    empty = HUB_CONNECTION.format(hub="")
    assert EventHubBinding.from_spec(spec, {"HubConnection": empty}).eventhub_name == "telemetry"


@pytest.mark.parametrize("environ, setting", [
    ({"AzureWebJobsMyHub": "orders"}, "AzureWebJobsMyHub"),
    ({"AzureWebJobsMyHub": "orders", "MyHub": "telemetry"}, "AzureWebJobsMyHub"),  # the prefixed name wins
    ({"ConnectionStrings__AzureWebJobsMyHub": "orders", "AzureWebJobsMyHub": "telemetry"},
     "ConnectionStrings__AzureWebJobsMyHub"),
    ({"ConnectionStrings:MyHub": "orders", "MyHub": "telemetry"}, "ConnectionStrings:MyHub"),
    ({"MyHub": "orders"}, "MyHub"),
    ({"myhub": "orders"}, "myhub"),  # .NET configuration ignores case
])
def test_a_connection_name_is_looked_up_as_the_webjobs_extensions_do(environ: dict[str, str], setting: str) -> None:
    """ext: a connection name is resolved with GetWebJobsConnectionStringSection: "first try prefixing"
    (``AzureWebJobs`` + name), then the name itself, each under ``ConnectionStrings:`` first and then at the root;
    the first section that exists wins. So ``AzureWebJobsMyHub`` is the connection in Azure, over ``MyHub``."""
    with_hubs = {name: HUB_CONNECTION.format(hub=hub) for name, hub in environ.items()}
    binding = EventHubBinding.from_spec(_eventhub_spec({"connection": "MyHub"}), with_hubs)
    assert binding.eventhub_name == "orders"
    assert binding.connection_string == with_hubs[setting]


def test_an_identity_based_connection_is_found_in_the_same_order() -> None:
    """The section found first decides: a prefixed identity-based connection (its ``__fullyQualifiedNamespace``
    child) hides a connection string under the bare name, as in the host, and the dev host refuses it by name."""
    spec = _eventhub_spec({"connection": "MyHub"})
    environ = {"AzureWebJobsMyHub__fullyQualifiedNamespace": "ns.servicebus.windows.net",
               "MyHub": HUB_CONNECTION.format(hub="orders")}
    with pytest.raises(DevHostError, match="identity-based connection AzureWebJobsMyHub__fullyQualifiedNamespace "
                                           "is not supported by the dev host; set AzureWebJobsMyHub to"):
        EventHubBinding.from_spec(spec, environ)
    with pytest.raises(DevHostError, match="connection setting 'MyHub' is not set"):
        EventHubBinding.from_spec(spec, {"AzureWebJobsOther": HUB_CONNECTION.format(hub="orders")})
    with pytest.raises(DevHostError, match="connection setting 'AzureWebJobsMyHub' is empty"):
        EventHubBinding.from_spec(spec, {"AzureWebJobsMyHub": " ", "MyHub": HUB_CONNECTION.format(hub="orders")})


@pytest.mark.parametrize("connection", [
    "garbage-not-a-connection-string",
    "Endpoint=sb://example.servicebus.windows.net/;SharedAccessKeyName=listen;EntityPath=orders",
    "Endpoint=example.servicebus.windows.net;SharedAccessKeyName=listen;SharedAccessKey=c2VjcmV0",
    "Endpoint=sb://example.servicebus.windows.net/;SharedAccessKey=c2VjcmV0",
])
def test_a_malformed_connection_string_is_refused_naming_the_function_and_setting(connection: str) -> None:
    """A connection string azure-eventhub cannot parse was taken; the SDK's bare ValueError came only once storage
    had been contacted and HTTP served, as a traceback (exit status 1). It is refused here, before anything connects,
    naming the function and setting and never echoing the key."""
    with pytest.raises(DevHostError) as refused:
        EventHubBinding.from_spec(_eventhub_spec({"connection": "MyHub"}), {"MyHub": connection})
    message = str(refused.value)
    assert "function 'ingest': the connection setting 'MyHub' is not an Event Hubs connection string" in message
    assert "c2VjcmV0" not in message


def test_host_id_is_stable_per_app_and_can_be_set(tmp_path: Path) -> None:
    assert host_id(tmp_path, {}) == host_id(tmp_path, {})
    assert host_id(tmp_path, {}) != host_id(tmp_path / "other", {})
    assert host_id(tmp_path, {"AzureFunctionsWebHost__hostid": "My-Host"}) == "my-host"


@pytest.mark.parametrize("setting", ["AzureFunctionsWebHost__hostId", "AzureFunctionsWebHost:hostid",
                                     "azurefunctionswebhost__HOSTID"])
def test_the_host_id_setting_is_found_as_the_host_finds_it(tmp_path: Path, setting: str) -> None:
    """The host reads the host id through .NET configuration (any case, ``__`` as ``:``). Only the exact spelling
    ``AzureFunctionsWebHost__hostid`` was read, so dev hosts meant to share timer leases each took their own id."""
    assert host_id(tmp_path, {setting: "Shared-Host"}) == "shared-host"
    assert host_id(tmp_path, {setting: ""}) == host_id(tmp_path, {})


def test_ncrontab_six_fields_start_with_seconds() -> None:
    moment = datetime(2026, 11, 23, 10, 0, 7, tzinfo=UTC)
    assert Schedule.parse("*/5 * * * * *").next_after(moment) == moment.replace(second=10)
    assert Schedule.parse("0 */1 * * * *").next_after(moment) == datetime(2026, 11, 23, 10, 1, tzinfo=UTC)
    assert Schedule.parse("30 15 9 * * MON-FRI").next_after(moment) == datetime(2026, 11, 24, 9, 15, 30, tzinfo=UTC)
    assert Schedule.parse("0 0 0 * * *").period(moment) == timedelta(days=1)


def test_ncrontab_day_of_month_and_day_of_week_must_both_match() -> None:
    # The 13th that is a Friday (NCRONTAB), not every 13th and every Friday (Vixie cron).
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    assert Schedule.parse("0 0 0 13 * FRI").next_after(moment) == datetime(2026, 2, 13, tzinfo=UTC)


def test_one_schedule_answers_any_moment_in_any_order_as_a_fresh_parse_does() -> None:
    # The expanded expression is kept between calls; nothing of an earlier answer may leak into the next,
    # here in Berlin across the spring and autumn clock changes of 2026 and backwards in time.
    berlin = ZoneInfo("Europe/Berlin")
    kept = Schedule.parse("0 30 2 * * *", berlin)
    start = datetime(2026, 3, 27, tzinfo=UTC)
    moments = [start + timedelta(hours=h, minutes=17) for h in range(0, 24 * 220, 7)]
    for moment in [*moments, *reversed(moments)]:
        assert kept.next_after(moment) == Schedule.parse("0 30 2 * * *", berlin).next_after(moment), moment
    assert kept.next_after(datetime(2026, 3, 27, tzinfo=UTC)) == datetime(2026, 3, 27, 1, 30, tzinfo=UTC)  # CET
    assert kept.next_after(datetime(2026, 4, 1, tzinfo=UTC)) == datetime(2026, 4, 1, 0, 30, tzinfo=UTC)  # CEST


# The host's own vectors (azure-webjobs-sdk-extensions TimerListenerTests.CronTimerSchedulesExitingDST, Pacific time,
# DST ending at 2 AM on 2018-11-04): "Run every day at 1:30 (only expect one invocation during ambiguous times)".
@pytest.mark.parametrize(("now", "interval"), [
    (datetime(2018, 11, 4, 1, 30, tzinfo=timezone(timedelta(hours=-7))), timedelta(hours=25)),
    (datetime(2018, 11, 4, 1, 29, tzinfo=timezone(timedelta(hours=-8))), timedelta(days=1, minutes=1)),
    (datetime(2018, 11, 4, 1, 31, tzinfo=timezone(timedelta(hours=-7))), timedelta(days=1, minutes=59)),
])
def test_point_in_time_schedule_runs_once_when_dst_falls_back(now: datetime, interval: timedelta) -> None:
    """The host's CronSchedule (TryAdjustAmbiguousTime) runs a point-in-time schedule once on the night the clocks
    fall back, at the daylight offset, and next the day after: a daily job must not run twice that night."""
    schedule = Schedule.parse("0 30 1 * * *", ZoneInfo("America/Los_Angeles"))
    assert schedule.next_after(now) - now == interval


def test_interval_schedule_keeps_firing_through_the_repeated_hour() -> None:
    """CronSchedule's comment: "every 30 minute" runs at 01:00-7, 01:30-7, 01:00-8, 01:30-8, 02:00-8."""
    los_angeles = ZoneInfo("America/Los_Angeles")
    schedule = Schedule.parse("0 */30 * * * *", los_angeles)
    moment = datetime(2018, 11, 4, 0, 30, tzinfo=timezone(timedelta(hours=-7)))
    seen = []
    for _ in range(5):
        moment = schedule.next_after(moment)
        seen.append(moment.astimezone(los_angeles).strftime("%H:%M%z"))
    assert seen == ["01:00-0700", "01:30-0700", "01:00-0800", "01:30-0800", "02:00-0800"]


def test_point_in_time_schedule_in_the_spring_forward_gap_runs_as_the_host_runs_it() -> None:
    """02:30 does not exist in Los Angeles on the night DST starts; the host reads NCrontab's 02:30 at the standard
    offset (``new DateTimeOffset(...).ToLocalTime()``), i.e. 03:30 PDT, not 03:00."""
    schedule = Schedule.parse("0 30 2 * * *", ZoneInfo("America/Los_Angeles"))
    assert schedule.next_after(datetime(2026, 3, 7, 12, 0, tzinfo=UTC)) == datetime(2026, 3, 8, 10, 30, tzinfo=UTC)


def test_timespan_schedule_and_time_zone() -> None:
    moment = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    assert Schedule.parse("00:05:00").next_after(moment) == moment + timedelta(minutes=5)
    berlin = Schedule.parse("0 0 9 * * *", ZoneInfo("Europe/Berlin"))
    assert berlin.next_after(moment) == datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
    assert time_zone({"WEBSITE_TIME_ZONE": "Europe/Berlin"}) == ZoneInfo("Europe/Berlin")
    assert time_zone({}) is UTC
    with pytest.raises(DevHostError, match=r"W\. Europe Standard Time"):
        time_zone({"WEBSITE_TIME_ZONE": "W. Europe Standard Time"})


@pytest.mark.parametrize("expression", ["0 0 0 L * *", "0 0 0 * * 7", "0 0 9 * * 5#2", "0 0 0 ? * *",
                                        "0 0 0 15W * *", "H 0 0 * * *"])
def test_cron_syntax_ncrontab_does_not_know_is_refused(expression: str) -> None:
    """ext: CronSchedule.TryCreate uses NCrontab, whose fields are numbers, names, '*', ranges, steps and lists only
    (no 'L', 'W', '#', '?', 'H'), with day-of-week 0-6 (CrontabFieldImpl.DayOfWeek = (0, 6, Sunday..Saturday)). The
    host refuses the rest ('was not recognized as a valid cron expression or timespan string')."""
    with pytest.raises(DevHostError, match="not a valid NCRONTAB expression"):
        Schedule.parse(expression)


def test_ncrontab_names_are_any_prefix_of_the_english_name() -> None:
    moment = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # a Monday
    assert Schedule.parse("0 0 9 * * Tu").next_after(moment) == datetime(2026, 11, 24, 9, tzinfo=UTC)
    assert Schedule.parse("0 0 0 1 January *").next_after(moment) == datetime(2027, 1, 1, tzinfo=UTC)
    assert Schedule.parse("5/20 * * * * *").next_after(moment) == moment.replace(second=5)


@pytest.mark.parametrize("expression, days_of_week", [
    ("0 0 12 * * 5-1", frozenset({1, 2, 3, 4, 5})),
    ("0 0 12 * * Sat-Sun", frozenset(range(7))),
])
def test_a_reversed_range_is_read_as_ncrontab_reads_it(expression: str, days_of_week: frozenset[int]) -> None:
    """NCrontab's CrontabField.Accumulate swaps a range whose start is above its end ("if the start is bigger than
    the end value then swap them over"): the host runs ``5-1`` as 1-5 and ``Sat-Sun`` as 0-6, so the dev host must
    not refuse them; it says what it reads."""
    schedule = Schedule.parse(expression)
    assert schedule.fields[5] == days_of_week
    assert any("reversed" in warning for warning in schedule.warnings)


@pytest.mark.parametrize("expression, seconds", [("*/0 * * * * *", frozenset(range(60))),
                                                 ("5/0 * * * * *", frozenset(range(5, 60)))])
def test_a_step_of_0_is_read_as_a_step_of_1_as_ncrontab_reads_it(expression: str, seconds: frozenset[int]) -> None:
    """CrontabField.Accumulate: ``if (interval < 1) interval = 1``; the host does not refuse ``*/0``."""
    schedule = Schedule.parse(expression)
    assert schedule.fields[0] == seconds
    assert any("step" in warning for warning in schedule.warnings)


@pytest.mark.parametrize("expression", ["0 0 0 31 4 *", "0 0 0 30 2 *", "0 0 0 30,31 2 *"])
def test_a_schedule_whose_days_never_come_never_fires_as_in_the_host(expression: str) -> None:
    """April 31 and February 30 never come. NCrontab parses these (each field is in range) and GetNextOccurrence gives
    its end time, DateTime.MaxValue: the host starts and the timer never fires. The dev host gave the expression to
    croniter, whose CroniterBadDateError then failed the timer listener at every polling interval, forever."""
    schedule = Schedule.parse(expression)
    assert schedule.never_occurs
    assert schedule.next_after(datetime(2026, 1, 1, tzinfo=UTC)) == NEVER
    assert any("never fires" in warning for warning in schedule.warnings)


def test_a_schedule_whose_days_come_rarely_still_occurs() -> None:
    """February 29 on a given weekday comes once in decades, but comes: it is not "never"."""
    schedule = Schedule.parse("0 0 0 29 2 Mon")
    assert not schedule.never_occurs and schedule.warnings == ()
    assert schedule.next_after(datetime(2026, 1, 1, tzinfo=UTC)) == datetime(2044, 2, 29, tzinfo=UTC)


@pytest.mark.parametrize("expression, message", [
    ("* * * *", "has 4 fields"),
    ("61 * * * * *", "not a valid NCRONTAB"),
    ("", "empty timer schedule"),
])
def test_bad_schedules_are_refused(expression: str, message: str) -> None:
    with pytest.raises(DevHostError, match=message):
        Schedule.parse(expression)


@pytest.mark.parametrize("port", [70000, -1, "seventy"])
def test_local_http_port_out_of_range_is_refused_naming_it(tmp_path: Path, port: object) -> None:
    """``Host.LocalHttpPort`` 70000 reached ``bind()``, which failed with a bare OverflowError traceback, and a
    word failed in ``int()`` with a ValueError: both are a DevHostError naming the file and the key."""
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"Values": {}, "Host": {"LocalHttpPort": port}}))
    with pytest.raises(DevHostError, match=r"local\.settings\.json: Host\.LocalHttpPort"):
        load_local_settings(path, {})
