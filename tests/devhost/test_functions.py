"""Indexing an app, the binding data given to Event Hubs functions, and the @retry loop."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import typing
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import azure.functions as func
import pytest
from azure.eventhub import EventData
from azure.functions import meta
from azure.functions.eventhub import EventHubTriggerConverter

from devhost.app_loader import FunctionSpec, RetryPolicy, index, load
from devhost.errors import DevHostError, UnsupportedBindingError
from devhost.eventhub_trigger import EventHubBinding, to_function_input
from devhost.invocation import Invoker, Outcome, timespan


def test_index_reads_triggers_retry_and_context() -> None:
    app = func.FunctionApp()

    @app.function_name("ingest")
    @app.event_hub_message_trigger(arg_name="events", event_hub_name="%HUB%", connection="Conn",
                                   cardinality="many", data_type="binary")
    @app.retry(strategy="exponential_backoff", max_retry_count="5", minimum_interval="00:00:01",
               maximum_interval="00:00:30")
    def ingest(events: typing.List[func.EventHubEvent], context: func.Context) -> None:  # noqa: UP006 - as the worker takes it
        pass

    @app.route(route="items/{id}")
    async def get_item(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("x")

    specs = {s.name: s for s in index(app)}
    assert specs["ingest"].trigger_type == "eventHubTrigger" and specs["ingest"].accepts_context
    assert specs["ingest"].retry == RetryPolicy("exponential_backoff", 5, minimum_interval=timedelta(seconds=1),
                                                maximum_interval=timedelta(seconds=30))
    assert specs["get_item"].is_async and not specs["get_item"].accepts_context
    assert specs["get_item"].trigger["route"] == "items/{id}"


def test_every_unsupported_binding_is_named_at_once() -> None:
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="msg", queue_name="q", connection="AzureWebJobsStorage")
    def from_queue(msg: func.QueueMessage) -> None:
        pass

    @app.timer_trigger(schedule="0 * * * * *", arg_name="timer")
    @app.event_hub_output(arg_name="out", event_hub_name="hub", connection="Conn")
    def forward(timer: func.TimerRequest, out: func.Out[str]) -> None:
        pass

    with pytest.raises(UnsupportedBindingError) as raised:
        index(app)
    message = str(raised.value)
    assert "function 'from_queue': trigger 'queueTrigger' is not supported" in message
    assert "function 'forward': out binding 'eventHub' ('out') is not supported" in message


def test_exponential_backoff_adds_a_doubling_increment_to_the_minimum() -> None:
    """sdk: ExponentialBackoffRetryAttribute uses RandomizedExponentialBackoffStrategy(min, max, delta=min): the first
    delay is min, then min + r * 2**(k-1) * min with r in [0.8, 1.2] (k = 1, 2, ...), about 1, 2, 3, 5, 9 x min,
    never more than max."""
    policy = RetryPolicy("exponential_backoff", 10, minimum_interval=timedelta(seconds=1),
                         maximum_interval=timedelta(hours=1))
    for _ in range(50):  # r is drawn anew for every delay
        assert policy.delay_before(1) == 1.0
        assert 1.8 <= policy.delay_before(2) <= 2.2
        assert 2.6 <= policy.delay_before(3) <= 3.4
        assert 4.2 <= policy.delay_before(4) <= 5.8
        assert 7.4 <= policy.delay_before(5) <= 10.6


def test_backoff_delays() -> None:
    policy = RetryPolicy("exponential_backoff", 5, minimum_interval=timedelta(seconds=1),
                         maximum_interval=timedelta(seconds=5))
    delays = [policy.delay_before(n) for n in range(1, 6)]
    assert delays[0] == 1 and 1.8 <= delays[1] <= 2.2 and 2.6 <= delays[2] <= 3.4 and delays[4] == 5
    assert policy.allows(5) and not policy.allows(6)
    assert RetryPolicy("fixed_delay", -1, delay=timedelta(seconds=2)).allows(1000)
    # Unlimited retries pass retry 1025, where 2 ** 1024 seconds no longer fits a float (it raised OverflowError).
    forever = RetryPolicy("exponential_backoff", -1, minimum_interval=timedelta(seconds=1),
                          maximum_interval=timedelta(minutes=15))
    assert [forever.delay_before(n) for n in (1025, 10**6)] == [900, 900]


@pytest.mark.parametrize("count", ["-2", "-10"])
def test_a_max_retry_count_below_minus_one_is_refused(count: str) -> None:
    """sdk: RetryAttribute(maxRetryCount) throws ArgumentOutOfRangeException when maxRetryCount < -1; -1 alone means
    retry forever."""
    app = func.FunctionApp()

    @app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer")
    @app.retry(strategy="fixed_delay", max_retry_count=count, delay_interval="00:00:01")
    def yearly(timer: func.TimerRequest) -> None:
        pass

    with pytest.raises(DevHostError, match="max_retry_count must be -1"):
        index(app)


def test_a_maximum_interval_shorter_than_the_minimum_is_refused() -> None:
    """sdk: ExponentialBackoffRetryAttribute refuses a maximumInterval below minimumInterval."""
    app = func.FunctionApp()

    @app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer")
    @app.retry(strategy="exponential_backoff", max_retry_count="3", minimum_interval="00:00:10",
               maximum_interval="00:00:05")
    def yearly(timer: func.TimerRequest) -> None:
        pass

    with pytest.raises(DevHostError, match="maximum_interval is shorter"):
        index(app)


@pytest.mark.parametrize("settings", [{"strategy": "fixed_delay", "delay_interval": "-00:00:01"},
                                      {"strategy": "exponential_backoff", "minimum_interval": "-00:00:01",
                                       "maximum_interval": "00:00:05"}], ids=["fixed_delay", "exponential_backoff"])
def test_a_negative_retry_interval_is_refused(settings: dict[str, str]) -> None:
    """A retry waits no negative time: a negative TimeSpan parses (host.json's maxWaitTime needs it named as out of
    range), so the retry settings refuse it themselves, as they did when it did not parse."""
    app = func.FunctionApp()

    @app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer")
    @app.retry(max_retry_count="3", **settings)
    def yearly(timer: func.TimerRequest) -> None:
        pass

    with pytest.raises(DevHostError, match="must not be negative"):
        index(app)


def test_load_names_a_missing_script(tmp_path: Path) -> None:
    with pytest.raises(DevHostError, match=r"function_app\.py does not exist"):
        load(tmp_path)


def _spec(function: Any, *, retry: RetryPolicy | None, trigger: dict[str, Any] | None = None) -> FunctionSpec:
    return FunctionSpec(name="f", trigger_type="eventHubTrigger", trigger=trigger or {"name": "events"},
                        user_function=function, is_async=asyncio.iscoroutinefunction(function),
                        accepts_context=True, retry=retry)


def test_retry_context_counts_attempts_and_gives_up(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    def always_fails(events: Any, context: func.Context) -> None:
        seen.append((context.retry_context.retry_count, context.retry_context.max_retry_count))
        raise RuntimeError("down")

    invoker = Invoker(tmp_path, threads=2)
    policy = RetryPolicy("fixed_delay", 2, delay=timedelta(0))
    outcome = asyncio.run(invoker.call_with_retry(_spec(always_fails, retry=policy), {"events": []},
                                                  reason="test", stopping=asyncio.Event()))
    assert outcome is Outcome.FAILED
    assert seen == [(0, 2), (1, 2), (2, 2)]
    invoker.shutdown()


def test_async_function_succeeds_on_a_retry(tmp_path: Path) -> None:
    seen: list[int] = []

    async def flaky(events: Any, context: func.Context) -> None:
        seen.append(context.retry_context.retry_count)
        if len(seen) < 2:
            raise RuntimeError("once")

    invoker = Invoker(tmp_path, threads=1)
    outcome = asyncio.run(invoker.call_with_retry(
        _spec(flaky, retry=RetryPolicy("fixed_delay", 3, delay=timedelta(0))), {"events": []},
        reason="test", stopping=asyncio.Event()))
    assert (outcome, seen) == (Outcome.SUCCEEDED, [0, 1])
    invoker.shutdown()


def test_shutdown_during_a_retry_delay_abandons_the_input(tmp_path: Path) -> None:
    def fails(events: Any, context: func.Context) -> None:
        raise RuntimeError("down")

    async def scenario() -> Outcome:
        stopping = asyncio.Event()
        invoker = Invoker(tmp_path, threads=1)
        policy = RetryPolicy("fixed_delay", 5, delay=timedelta(seconds=30))
        task = asyncio.create_task(invoker.call_with_retry(_spec(fails, retry=policy), {"events": []},
                                                           reason="test", stopping=stopping))
        await asyncio.sleep(0.2)
        stopping.set()
        outcome = await asyncio.wait_for(task, timeout=5)
        invoker.shutdown()
        return outcome

    assert asyncio.run(scenario()) is Outcome.ABANDONED


@pytest.mark.timeout(60)
@pytest.mark.parametrize("policy", [RetryPolicy("fixed_delay", -1, delay=timedelta(0)),
                                    RetryPolicy("exponential_backoff", -1)], ids=["fixed_delay", "exponential_backoff"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_shutdown_ends_a_retry_loop_whose_delay_is_zero(tmp_path: Path, policy: RetryPolicy, is_async: bool,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A zero delay (``delay_interval`` 00:00:00, or a zero ``minimum_interval``) still sees shutdown. On Python 3.11
    ``asyncio.wait_for(stopping.wait(), timeout=0)`` raises TimeoutError even when ``stopping`` is set, so a
    loop that trusted it retried a poison input forever after stop() and the dev host could not shut down."""
    attempts: list[int] = []

    def fails(events: Any, context: func.Context) -> None:
        attempts.append(context.retry_context.retry_count)
        raise RuntimeError("poison")

    async def fails_async(events: Any, context: func.Context) -> None:
        fails(events, context)  # no await: fails without ever giving the event loop back

    async def scenario() -> tuple[Outcome, int]:
        stopping = asyncio.Event()
        task = asyncio.create_task(invoker.call_with_retry(
            _spec(fails_async if is_async else fails, retry=policy), {"events": []}, reason="test",
            stopping=stopping))
        while len(attempts) < 3:
            await asyncio.sleep(0.01)
        stopping.set()
        at_stop = len(attempts)
        outcome = await asyncio.wait_for(task, timeout=5)
        return outcome, len(attempts) - at_stop

    invoker = Invoker(tmp_path, threads=1)
    caplog.set_level(logging.CRITICAL, logger="devhost.invocation")  # thousands of "Executed ... (Failed" lines
    try:
        outcome, after_stop = asyncio.run(scenario())
    finally:
        invoker.shutdown()
    assert outcome is Outcome.ABANDONED
    assert after_stop <= 1, f"{after_stop} attempts were made after shutdown"  # at most the one in progress


def _event(body: bytes, sequence_number: int, *, key: str | None = None) -> EventData:
    # How the SDK builds a received event from its AMQP message.
    return EventData._from_message(_received_message(body, sequence_number, key))


def _received_message(body: bytes, sequence_number: int, key: str | None) -> Any:
    from azure.eventhub._pyamqp.message import Message  # the SDK's own AMQP message type

    annotations: dict[bytes, Any] = {
        b"x-opt-sequence-number": sequence_number,
        b"x-opt-offset": str(1000 + sequence_number).encode(),
        b"x-opt-enqueued-time": int(datetime(2026, 11, 23, 10, 0, tzinfo=UTC).timestamp() * 1000),
    }
    if key is not None:
        annotations[b"x-opt-partition-key"] = key.encode()
    return Message(data=[body], message_annotations=annotations, application_properties={b"kind": b"t", b"n": 3})


PARTITION = {"FullyQualifiedNamespace": "ns.servicebus.windows.net", "EventHubName": "hub",
             "ConsumerGroup": "$Default", "PartitionId": "2"}


def _binding(many: bool, data_type: str) -> EventHubBinding:
    spec = _spec(lambda events: None, retry=None)
    return EventHubBinding(spec, "Endpoint=sb://x/;SharedAccessKeyName=a;SharedAccessKey=b", "hub", "$Default",
                           many, data_type)


def test_a_batch_has_the_bindings_metadata() -> None:
    events = [_event(b'{"n": 1}', 5, key="dev-1"), _event(b"\xff\x00", 6)]
    batch = to_function_input(events, PARTITION, _binding(True, "binary"))
    assert [e.get_body() for e in batch] == [b'{"n": 1}', b"\xff\x00"]
    assert [e.sequence_number for e in batch] == [5, 6]
    assert [e.offset for e in batch] == [1005, 1006]
    assert [e.partition_key for e in batch] == ["dev-1", None]
    assert batch[0].enqueued_time == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    metadata = batch[0].metadata
    assert metadata["PartitionContext"] == PARTITION
    assert metadata["SequenceNumberArray"] == [5, 6]
    assert metadata["PropertiesArray"] == [{"kind": "t", "n": 3}, {"kind": "t", "n": 3}]
    assert metadata["SystemPropertiesArray"][0]["x-opt-sequence-number"] == 5
    assert metadata["SystemPropertiesArray"][0]["PartitionKey"] == "dev-1"
    assert json.loads(json.dumps(metadata))  # plain JSON values only


def test_a_single_event_has_the_single_event_metadata() -> None:
    event = to_function_input([_event(b"hello", 9, key="k")], PARTITION, _binding(False, ""))
    assert isinstance(event, func.EventHubEvent)
    assert event.get_body() == b"hello"
    assert (event.sequence_number, event.offset, event.partition_key) == (9, "1009", "k")
    assert event.enqueued_time == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    assert event.metadata["Properties"] == {"kind": "t", "n": 3}
    assert event.metadata["PartitionContext"]["PartitionId"] == "2"


def test_every_value_pyamqp_decodes_reaches_the_metadata_as_the_hosts_json_has_it() -> None:
    """The worker gives ``json.loads`` of the JSON the host writes (Newtonsoft) from the .NET client's values, so every
    metadata value is plain JSON: a uuid its string, a decimal a number, a non-finite float Newtonsoft's string, a
    binary (bytes that are no UTF-8) base64, a map's keys strings; of the system properties, AMQP timestamps are
    ISO-8601 strings as EnqueuedTimeUtc is, user-id base64 and the ids strings whatever their AMQP type. A uuid
    passed through as ``uuid.UUID``, so ``json.dumps(event.metadata)`` raised; binaries came as hex, times as ints.
    Values are those of every type azure-eventhub's pyamqp decoder can produce (_pyamqp/_decode.py)."""
    from azure.eventhub._pyamqp.message import Message, Properties

    guid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    at = int(datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC).timestamp() * 1000)
    application = {b"trace": guid, b"sig": b"\x01\x02\xff", b"text": b"caf\xc3\xa9", b"price": Decimal("1.50"),
                   b"nan": float("nan"), b"inf": Decimal("-Infinity"), b"at": at, b"ok": True, b"none": None,
                   b"list": [guid, b"a"], b"map": {1: guid, b"k": {"accepted": []}}, 7: "int key"}
    annotations = {b"x-opt-sequence-number": 4, b"x-opt-offset": b"1004", b"x-opt-enqueued-time": at,
                   b"iothub-enqueuedtime": at, b"iothub-connection-device-id": b"dev", b"x-opt-custom": guid}
    properties = Properties(message_id=guid, user_id=b"user", correlation_id=42, absolute_expiry_time=at,
                            creation_time=at, group_sequence=3)
    event = EventData._from_message(Message(data=[b"{}"], properties=properties, message_annotations=annotations,
                                            application_properties=application))
    many = to_function_input([event], PARTITION, _binding(True, "binary"))[0]
    one = to_function_input([event], PARTITION, _binding(False, "binary"))
    assert isinstance(many, func.EventHubEvent) and isinstance(one, func.EventHubEvent)
    iso = "2024-05-06T07:08:09.123000+00:00"  # as the dev host writes EnqueuedTimeUtc
    assert many.metadata["PropertiesArray"] == [one.metadata["Properties"]] == [{
        "trace": str(guid), "sig": "AQL/", "text": "café", "price": 1.5, "nan": "NaN", "inf": "-Infinity",
        "at": at,  # an AMQP timestamp decodes to a plain int: its type is lost (docs/devhost.md)
        "ok": True, "none": None, "list": [str(guid), "a"], "map": {"1": str(guid), "k": {"accepted": []}},
        "7": "int key"}]
    system = many.metadata["SystemPropertiesArray"][0]
    assert system == one.metadata["SystemProperties"]
    assert {k: v for k, v in system.items() if k not in ("SequenceNumber", "Offset", "PartitionKey")} == {
        "message-id": str(guid), "user-id": "dXNlcg==", "correlation-id": "42", "absolute-expiry-time": iso,
        "creation-time": iso, "group-sequence": 3, "x-opt-sequence-number": 4, "x-opt-offset": "1004",
        "x-opt-enqueued-time": iso, "iothub-enqueuedtime": iso, "iothub-connection-device-id": "dev",
        "x-opt-custom": str(guid), "EnqueuedTimeUtc": iso}
    assert many.iothub_metadata == one.iothub_metadata == {"enqueuedtime": iso, "connection-device-id": "dev"}
    for metadata in (many.metadata, one.metadata):
        assert json.loads(json.dumps(metadata, allow_nan=False)) == metadata


def test_event_hub_binding_resolves_settings_and_names_what_is_missing() -> None:
    connection = "Endpoint=sb://x/;SharedAccessKeyName=listen;SharedAccessKey=a2V5"
    spec = _spec(lambda events: None, retry=None, trigger={
        "name": "events", "type": "eventHubTrigger", "connection": "Conn", "eventHubName": "%HUB%",
        "consumerGroup": "%GROUP%", "cardinality": "MANY", "dataType": "BINARY"})
    binding = EventHubBinding.from_spec(spec, {"Conn": connection, "HUB": "telemetry", "GROUP": "sluice"})
    assert (binding.eventhub_name, binding.consumer_group, binding.many, binding.data_type) == \
        ("telemetry", "sluice", True, "binary")
    with pytest.raises(DevHostError, match="connection setting 'Conn' is not set"):
        EventHubBinding.from_spec(spec, {"HUB": "telemetry", "GROUP": "sluice"})
    with pytest.raises(DevHostError, match="%GROUP%"):
        EventHubBinding.from_spec(spec, {"Conn": connection, "HUB": "telemetry"})
    from_path = _spec(lambda events: None, retry=None, trigger={"name": "e", "connection": "Conn"})
    assert EventHubBinding.from_spec(from_path, {"Conn": connection + ";EntityPath=hub2"}).eventhub_name == "hub2"


def _as_host_sends(metadata: dict[str, Any]) -> dict[str, meta.Datum]:
    """The metadata as typed RPC data, the form azure-functions' converter decodes."""
    typed = {"SequenceNumber": "int", "Offset": "string", "PartitionKey": "string", "EnqueuedTimeUtc": "string"}
    return {k: meta.Datum(v, typed[k]) if k in typed else meta.Datum(json.dumps(v), "json")
            for k, v in metadata.items()}


@pytest.mark.parametrize("many, data_type", [(True, "binary"), (True, ""), (False, "binary"), (False, "string")])
def test_events_equal_what_azure_functions_converter_decodes(many: bool, data_type: str) -> None:
    received = [_event(b'{"n": 1}', 5, key="dev-1"), _event("é".encode(), 6)]
    batch = received if many else received[:1]
    ours = to_function_input(batch, PARTITION, _binding(many, data_type))
    ours_list = ours if isinstance(ours, list) else [ours]
    metadata = _as_host_sends(ours_list[0].metadata)
    bodies = [b"".join(e.body) if data_type == "binary" else e.body_as_str() for e in batch]
    if many:
        data = meta.Datum(SimpleNamespace(bytes=bodies) if data_type == "binary" else SimpleNamespace(string=bodies),
                          "collection_bytes" if data_type == "binary" else "collection_string")
    else:
        data = meta.Datum(bodies[0], "bytes" if data_type == "binary" else "string")
    theirs = EventHubTriggerConverter.decode(data, trigger_metadata=metadata)
    theirs_list = theirs if isinstance(theirs, list) else [theirs]
    assert len(ours_list) == len(theirs_list) == len(batch)
    for mine, real in zip(ours_list, theirs_list, strict=True):
        assert mine.get_body() == real.get_body()
        assert (mine.sequence_number, mine.offset, mine.partition_key) == \
            (real.sequence_number, real.offset, real.partition_key)
        assert type(mine.offset) is type(real.offset)
        assert mine.enqueued_time == real.enqueued_time and mine.enqueued_time.tzinfo is not None
        assert mine.iothub_metadata == real.iothub_metadata
        assert mine.metadata == real.metadata


def _shipped_schedules() -> list[dict[str, str]]:
    """The schedule settings of local.settings.sample.json and of the AKS config map."""
    import yaml

    root = Path(__file__).resolve().parents[2]
    sample = json.loads((root / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]
    configmap = yaml.safe_load((root / "k8s-keda" / "configmap.yaml").read_text(encoding="utf-8"))["data"]
    return [sample, configmap]


@pytest.mark.parametrize("settings", _shipped_schedules(), ids=["local.settings.sample", "k8s-configmap"])
def test_the_app_monitors_the_enrichment_schedule_but_not_the_change_feed_ticks(settings: dict[str, str]) -> None:
    """A status blob write per change feed tick buys nothing (the next tick resumes from the saved position);
    a missed enrichment run of a minute or more is caught up at start-up."""
    from devhost.schedule import Schedule
    from devhost.timer_trigger import uses_monitor
    from tests.fixtures.functions import registered  # the shared index: get_functions() may run once per app

    decided = {}
    for name, setting in (("changefeed", "SLUICE_CHANGEFEED_SCHEDULE"), ("enrichment", "SLUICE_ENRICH_SCHEDULE")):
        bindings = json.loads(registered(name).get_function_json())["bindings"]
        trigger = next(b for b in bindings if b["type"] == "timerTrigger")  # as the dev host's index takes it
        decided[name] = uses_monitor(trigger, Schedule.parse(settings[setting], UTC))
    assert decided == {"changefeed": False, "enrichment": True}


def test_the_watchdog_expires_an_invocation_past_function_timeout_and_only_that_one(tmp_path: Path) -> None:
    """Sync (a pool thread) and async (blocking the event loop) alike; one that ends in time is not reported."""
    expired: list[tuple[str, timedelta]] = []
    invoker = Invoker(tmp_path, threads=2, function_timeout=timedelta(seconds=0.4),
                      expire=lambda name, invocation_id, limit: expired.append((name, limit)))

    def quick(events: Any, context: func.Context) -> None:
        time.sleep(0.05)

    def slow(events: Any, context: func.Context) -> None:
        time.sleep(1.0)

    async def blocks_the_loop(events: Any, context: func.Context) -> None:
        time.sleep(1.0)  # the watchdog's own thread still sees it

    async def scenario() -> None:
        for function in (quick, slow, blocks_the_loop):
            spec = dataclasses.replace(_spec(function, retry=None), name=function.__name__)
            await invoker.call(spec, {"events": []}, reason="test")

    asyncio.run(scenario())
    invoker.shutdown()
    assert expired == [("slow", timedelta(seconds=0.4)), ("blocks_the_loop", timedelta(seconds=0.4))]


def test_timespan_is_written_as_the_host_writes_it() -> None:
    assert timespan(timedelta(minutes=10)) == "00:10:00"
    assert timespan(timedelta(days=1, hours=2, seconds=3)) == "1.02:00:03"
