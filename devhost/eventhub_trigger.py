"""Event Hubs triggers: one ``EventHubConsumerClient`` per function, checkpointed like the Functions host.

Positions live in ``AzureWebJobsStorage``, container ``azure-webjobs-eventhub``, written
by the SDK's ``BlobCheckpointStore``: checkpoint blobs
``<namespace>/<hub>/<consumer group>/checkpoint/<partition>`` (lower case) with the
metadata ``sequencenumber`` and ``offset``, ownership blobs ``.../ownership/<partition>``
with ``ownerid``. That is the layout of the Event Hubs extension 5.x+ (which uses the
same processor design), and what KEDA's ``blobMetadata`` checkpoint strategy reads
(see docs/devhost.md for the exact mapping).

The async client runs each owned partition in its own task, so partitions are
processed concurrently and the events of one partition strictly in order: the next
batch of a partition is only handed over when the previous invocation (with its
retries) has finished and its checkpoint is written. The async processor needs an
async checkpoint store; :class:`ThreadedCheckpointStore` runs the sync
``BlobCheckpointStore`` on threads, so the blob layout is the SDK's own.

Order of work per batch, as the host does it: invoke (``@retry`` attempts included),
then checkpoint the last event of the batch, whether the invocation succeeded or not
(every ``batchCheckpointFrequency`` batches). A function must therefore dead-letter what
it cannot process. On shutdown, no new batch starts (with cardinality one, no further
event of a batch either), invocations in progress finish and are checkpointed up to
the last event invoked, and a batch waiting for a retry is left unchecked so it is
delivered again. A batch whose partition was lost while it ran is never checkpointed:
the position is the new owner's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import decimal
import functools
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import azure.functions as func
import requests.utils
from azure.core.exceptions import AzureError, ResourceExistsError
from azure.eventhub import EventData, LoadBalancingStrategy
from azure.eventhub._client_base import _parse_conn_str
from azure.eventhub._pyamqp.aio._receiver_async import ReceiverLink
from azure.eventhub.aio import CheckpointStore, EventHubConsumerClient, PartitionContext
from azure.eventhub.amqp import AmqpMessageBodyType
from azure.eventhub.extensions.checkpointstoreblob import BlobCheckpointStore
from azure.functions import meta
from azure.functions._eventhub import EventHubEvent
from azure.storage.blob import BlobServiceClient

from devhost.app_loader import FunctionSpec
from devhost.errors import DevHostError
from devhost.invocation import Invoker, Outcome, random_uuid
from devhost.settings import EventHubOptions, connection_section, resolve

if TYPE_CHECKING:
    from _collections_abc import dict_items, dict_values  # the view types dict's items() and values() return

logger = logging.getLogger(__name__)

CHECKPOINT_CONTAINER = "azure-webjobs-eventhub"
# The extension's processor defaults (EventProcessorOptions); settable for tests and crash drills.
LOAD_BALANCING_SETTING = "DEVHOST_EVENTHUBS_LOAD_BALANCING_SECONDS"
OWNERSHIP_EXPIRATION_SETTING = "DEVHOST_EVENTHUBS_OWNERSHIP_EXPIRATION_SECONDS"
DEFAULT_LOAD_BALANCING_SECONDS = 10.0
DEFAULT_OWNERSHIP_EXPIRATION_SECONDS = 30.0
# How long the SDK's receive loop waits on a quiet socket before it loops (its own default is 0.2 s, 1 s over
# WebSockets). Each timeout is a turn of the event loop per partition: an idle client of four partitions spent
# 11.9-12.5 CPU-ms a second at 0.2 s and 8.5-10.3 at 1 s. Events still arrive as soon as they are read.
SOCKET_TIMEOUT_SECONDS = 1.0


def forget_settled_delivery_tags() -> None:
    """Keep azure-eventhub's async receiver from holding the tag of every event it ever received.

    The SDK's ``ReceiverLink`` adds each delivery's tag to ``_received_delivery_tags`` and
    removes it only when it sends that delivery's disposition. Event Hubs deliveries arrive
    settled by the sender, so no disposition is ever sent, and the set grew by one entry per
    event for the life of the link: at 500 events/s a ``sluice up`` soak's dev host grew
    about 2 MiB a minute, all of it these tags (found by counting the growing containers).
    Once a settled delivery is complete its tag is dropped here; an unsettled one is left to
    the SDK. (Production is not affected: the Functions host receives with the .NET SDK.)
    Patched once per process, on the class; ``tests/devhost/test_delivery_tags.py`` shows
    the SDK alone still keeps every tag, so an SDK that fixes it, or changes, is noticed.
    """
    sdk: Callable[[ReceiverLink, Any], Awaitable[None]] = ReceiverLink._incoming_transfer
    if hasattr(sdk, "__wrapped__"):
        return

    @functools.wraps(sdk)
    async def incoming_transfer(self: ReceiverLink, frame: Any) -> None:
        await sdk(self, frame)
        first = self._first_frame
        if not frame[5] and first is not None and (first[4] or frame[4]):  # the last frame of a settled delivery
            self._received_delivery_tags.discard(first[2])

    ReceiverLink._incoming_transfer = incoming_transfer  # type: ignore[method-assign]  # the patch, on the class


def storage_options(connection_string: str) -> dict[str, Any]:
    """Blob client options with the environment's proxy and CA settings for the storage account, read once.

    With its default ``trust_env``, requests reads them again for every request: it walks the whole
    environment twice to find proxies, which with a Functions app's many settings (about 160 in bench e2e)
    was a third of a checkpoint's CPU (about 1.1 ms against 0.7). The dev host talks to one blob
    endpoint, so what applies to it is resolved here as requests would: the proxies for its URL
    (``HTTP(S)_PROXY``, ``NO_PROXY`` honoured) and a CA bundle (``REQUESTS_CA_BUNDLE``, then
    ``CURL_CA_BUNDLE``).
    """
    url = BlobServiceClient.from_connection_string(connection_string).url
    options: dict[str, Any] = {"use_env_settings": False}
    proxies = requests.utils.get_environ_proxies(url)
    if proxies:
        options["proxies"] = proxies
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        options["connection_verify"] = bundle
    return options


class ThreadedCheckpointStore(CheckpointStore):
    """The async processor's checkpoint store interface over the sync ``BlobCheckpointStore``."""

    def __init__(self, store: BlobCheckpointStore) -> None:
        self._store = store

    async def list_ownership(self, fully_qualified_namespace: str, eventhub_name: str, consumer_group: str,
                             **kwargs: Any) -> Iterable[dict[str, Any]]:
        return await asyncio.to_thread(self._store.list_ownership, fully_qualified_namespace, eventhub_name,
                                       consumer_group, **kwargs)

    async def claim_ownership(
        self, ownership_list: Iterable[dict[str, Any]], **kwargs: Any
    ) -> Iterable[dict[str, Any]]:
        return await asyncio.to_thread(self._store.claim_ownership, list(ownership_list), **kwargs)

    async def update_checkpoint(self, checkpoint: dict[str, Any], **kwargs: Any) -> None:
        await asyncio.to_thread(self._store.update_checkpoint, checkpoint, **kwargs)

    async def list_checkpoints(self, fully_qualified_namespace: str, eventhub_name: str, consumer_group: str,
                               **kwargs: Any) -> Iterable[dict[str, Any]]:
        return await asyncio.to_thread(self._store.list_checkpoints, fully_qualified_namespace, eventhub_name,
                                       consumer_group, **kwargs)


@dataclass(frozen=True)
class EventHubBinding:
    """An ``eventHubTrigger`` with its ``%Setting%`` references resolved."""

    spec: FunctionSpec
    connection_string: str
    eventhub_name: str
    consumer_group: str
    many: bool
    data_type: str  # "binary", "string" or "" (the host's default: string)

    @classmethod
    def from_spec(cls, spec: FunctionSpec, environ: Mapping[str, str] = os.environ) -> EventHubBinding:
        trigger = spec.trigger
        what = f"function {spec.name!r}"
        setting = str(trigger.get("connection") or "AzureWebJobsEventHub")
        section = connection_section(setting, environ)
        if section is None:
            raise DevHostError(f"{what}: the connection setting {setting!r} is not set (nor AzureWebJobs{setting})")
        connection = section.value.strip()
        if not connection:
            if "fullyqualifiednamespace" in section.children:
                raise DevHostError(f"{what}: identity-based connection {section.setting}__fullyQualifiedNamespace is "
                                   f"not supported by the dev host; set {section.setting} to a connection string")
            raise DevHostError(f"{what}: the connection setting {section.setting!r} is empty")
        # The host's parser skips a key without a value (an empty EntityPath names no hub); azure-eventhub refuses it.
        connection = ";".join(part for part in connection.split(";") if part.partition("=")[2].strip())
        try:  # as EventHubConsumerClient.from_connection_string parses it, before anything connects
            _parse_conn_str(connection)
        except ValueError as exc:  # the SDK's messages name the keys, never a value: the key is not echoed
            raise DevHostError(f"{what}: the connection setting {section.setting!r} is not an Event Hubs connection "
                               f"string ({exc})") from None
        # EventHubClientFactory.NormalizeEventHubName: the connection string's EntityPath takes precedence.
        configured = resolve(str(trigger.get("eventHubName") or ""), environ, what=f"{what} eventHubName")
        hub = _entity_path(connection) or configured
        if not hub:
            raise DevHostError(f"{what}: no event hub name (set eventHubName or EntityPath in {setting})")
        group = resolve(str(trigger.get("consumerGroup") or "$Default"), environ, what=f"{what} consumerGroup")
        cardinality = str(trigger.get("cardinality") or "one").lower()
        if cardinality not in ("one", "many"):
            raise DevHostError(f"{what}: cardinality {trigger.get('cardinality')!r} must be one or many")
        data_type = str(trigger.get("dataType") or "").lower()
        if data_type not in ("", "binary", "string"):
            raise DevHostError(f"{what}: dataType {trigger.get('dataType')!r} must be binary or string")
        return cls(spec, connection, hub, group, cardinality == "many", data_type)


def _entity_path(connection: str) -> str:
    """The ``EntityPath`` of a connection string as EventHubsConnectionStringProperties.Parse reads it: keys compared
    ignoring case, keys and values trimmed; "" when absent or empty."""
    for part in connection.split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "entitypath":
            return value.strip()
    return ""


def _json_value(value: Any) -> Any:
    """A value pyamqp decoded from an AMQP message as ``json.loads`` of the host's JSON of it gives it: the host's .NET
    client decodes the AMQP value to a .NET one and the host writes that with Newtonsoft. So a uuid becomes its string
    (Guid "D"), a decimal a float, a non-finite float Newtonsoft's "NaN"/"Infinity"/"-Infinity", a map's keys
    strings, and anything else unforeseen its ``str()``: the result is always plain JSON.

    pyamqp decodes AMQP strings, symbols and binaries all to ``bytes``: valid UTF-8 is taken for text (what strings
    are; a binary that happens to be valid UTF-8 is text here, base64 on the host), anything else can only have been
    a binary, which Newtonsoft writes as base64. An AMQP timestamp is decoded to a plain ``int`` of milliseconds and
    stays one (:func:`system_properties` converts the ones whose type is known); docs/devhost.md lists both gaps.
    """
    if isinstance(value, bytes):  # first: most values (keys too) are strings, decoded as bytes
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(value).decode("ascii")
    if value is None or isinstance(value, str | int):  # bool is an int
        return value
    if isinstance(value, dict):
        try:  # keys inline: this runs for every message's properties the function reads
            return {k.decode() if isinstance(k, bytes) else _json_key(k): _json_value(v) for k, v in value.items()}
        except UnicodeDecodeError:  # a binary key
            return {_json_key(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, bytearray | memoryview):
        return _json_value(bytes(value))
    if isinstance(value, decimal.Decimal) and not value.is_snan():  # float() refuses a signalling NaN
        return _json_value(float(value))
    return str(value)  # uuid.UUID (str() is the "D" format) and whatever else a decoder may give


def _json_key(key: Any) -> str:
    """A map key as Newtonsoft writes it: a string (a key that is no string, e.g. an int, as its JSON)."""
    value = _json_value(key)
    return value if isinstance(value, str) else json.dumps(value)


def _amqp_time(value: Any) -> Any:
    """An AMQP timestamp (pyamqp's int of milliseconds) as the ISO-8601 string of :func:`_iso`, converted as the SDK
    converts ``x-opt-enqueued-time`` for ``EventData.enqueued_time``; a value that is no such time as a JSON value."""
    if isinstance(value, int) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError, OSError, ValueError):
            return _iso(datetime.fromtimestamp(value / 1000, UTC))
    return _json_value(value)


def _amqp_binary(value: Any) -> Any:
    """An AMQP binary as Newtonsoft writes a byte[]: base64."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    return _json_value(value)


def _amqp_id(value: Any) -> Any:
    """message-id and correlation-id: the .NET client gives ``AmqpMessageId.ToString()``, a string whatever the
    AMQP type (ulong, uuid, binary or string)."""
    converted = _json_value(value)
    return converted if converted is None or isinstance(converted, str) else str(converted)


# System properties whose AMQP type is fixed, with how the host's JSON has them (AmqpSystemProperties in
# Azure.Messaging.EventHubs: the properties section's times are DateTimeOffset, user-id bytes, the ids strings).
_SYSTEM_VALUES: dict[str, Callable[[Any], Any]] = {
    "x-opt-enqueued-time": _amqp_time,
    "iothub-enqueuedtime": _amqp_time,
    "absolute-expiry-time": _amqp_time,
    "creation-time": _amqp_time,
    "user-id": _amqp_binary,
    "message-id": _amqp_id,
    "correlation-id": _amqp_id,
}


def _system_value(name: str, value: Any) -> Any:
    """An AMQP system property (properties section or annotation) as the host's JSON has it."""
    return _SYSTEM_VALUES.get(name, _json_value)(value)


def _iso(moment: datetime | None) -> str | None:
    """UTC as ``...+00:00``: the first formats azure-functions' decoder tries (``...Z`` costs it six strptimes)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def _offset(event: EventData) -> int | str | None:
    offset = event.offset
    if offset is None:  # an event the service has not numbered (not one that was received)
        return None
    try:
        return int(offset)
    except ValueError:
        return offset


def system_properties(event: EventData) -> dict[str, Any]:
    """The host's SystemProperties of one event: the AMQP annotations plus the friendly names."""
    properties = {name: _system_value(name, v) for name, v in
                  ((_json_key(k), v) for k, v in (event.system_properties or {}).items())}
    properties["SequenceNumber"] = event.sequence_number
    properties["Offset"] = _offset(event)
    properties["PartitionKey"] = _json_value(event.partition_key)
    properties["EnqueuedTimeUtc"] = _iso(event.enqueued_time)
    return properties


class LazyJson(meta.Datum):
    """A JSON-typed trigger metadata value, computed on first use and shared by the events of a batch.

    ``python_value`` is what ``json.loads`` of the host's JSON would give (plain JSON values);
    building it only when the function reads ``event.metadata`` keeps the per-event cost low.
    """

    def __init__(self, compute: Callable[[], Any]) -> None:
        super().__init__(None, "json")
        self._compute = compute
        self._value: Any = None
        self._done = False

    @property
    def python_value(self) -> Any:
        if not self._done:
            self._value = self._compute()
            self._done = True
        return self._value


class LazyMetadata(dict[str, Any]):
    """``event.metadata``: a dict of the trigger metadata whose values are computed when first read.

    ``func.EventHubEvent.metadata`` converts every value at once; the ingest function reads
    ``PartitionContext`` only, and forcing the per-event arrays as well cost about a sixth
    of its own CPU (17 us per event). One instance is shared by the events of a batch, as
    the host's one metadata object is. It is a ``dict`` (the worker gives one): reading,
    iterating, ``dict(...)``, ``==`` and ``json.dumps`` see the computed values (the raw
    ``meta.Datum`` objects are what the dict holds underneath).
    """

    def __init__(self, data: Mapping[str, meta.Datum]) -> None:
        super().__init__(data)
        self._values: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            value = self._values[key] = dict.__getitem__(self, key).python_value
            return value

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default  # noqa: SIM401 - self.get would recurse

    def __iter__(self) -> Iterator[str]:  # defined here, so dict(...) and {**m} go through __getitem__
        return dict.__iter__(self)

    def _computed(self) -> dict[str, Any]:
        return {key: self[key] for key in dict.keys(self)}

    def items(self) -> dict_items[str, Any]:
        return self._computed().items()

    def values(self) -> dict_values[str, Any]:
        return self._computed().values()

    def copy(self) -> dict[str, Any]:
        return self._computed()

    def __eq__(self, other: object) -> bool:
        return self._computed() == other

    __hash__ = None  # a dict

    def __repr__(self) -> str:
        return repr(self._computed())


class DevHostEventHubEvent(EventHubEvent):
    """``func.EventHubEvent`` whose ``metadata`` is a :class:`LazyMetadata` shared by its batch."""

    def __init__(self, *, lazy_metadata: LazyMetadata, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lazy_metadata = lazy_metadata

    @property
    def metadata(self) -> Mapping[str, Any]:
        return self._lazy_metadata


def _iothub(event: EventData) -> dict[str, Any]:
    # azure-functions takes these from the SystemProperties(Array) JSON, so they are converted as those are
    # (every event's, not computed lazily: the bytes prefix test keeps it cheap for events without them)
    return {key.decode()[len("iothub-"):]: _system_value(key.decode(), value)
            for key, value in (event.system_properties or {}).items()
            if isinstance(key, bytes) and key.startswith(b"iothub-")}


def _data_body(event: EventData) -> bytes:
    """The sections of the event's AMQP data body, joined. ``EventData.body`` gives an iterator of them, though
    the SDK annotates it as one primitive value; the AMQP message's ``body`` is the same value, typed ``Any``."""
    sections: Iterable[bytes] = event.raw_amqp_message.body
    return b"".join(sections)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def trigger_metadata(events: list[EventData], partition: Mapping[str, str], binding: EventHubBinding,
                     ) -> dict[str, meta.Datum]:
    """The binding data the host sends with a batch (cardinality many) or one event (cardinality one)."""
    sys_metadata = LazyJson(lambda: {"MethodName": binding.spec.name, "UtcNow": _iso(datetime.now(UTC)),
                                     "RandGuid": str(random_uuid())})
    context = LazyJson(lambda: dict(partition))
    if binding.many:
        return {
            "PartitionContext": context,
            "SystemPropertiesArray": LazyJson(lambda: [system_properties(e) for e in events]),
            "SequenceNumberArray": LazyJson(lambda: [e.sequence_number for e in events]),
            "OffsetArray": LazyJson(lambda: [_offset(e) for e in events]),
            "PartitionKeyArray": LazyJson(lambda: [_json_value(e.partition_key) for e in events]),
            "EnqueuedTimeUtcArray": LazyJson(lambda: [_iso(e.enqueued_time) for e in events]),
            "PropertiesArray": LazyJson(lambda: [_json_value(e.properties or {}) for e in events]),
            "sys": sys_metadata,
        }
    (event,) = events
    return {
        "PartitionContext": context,
        "SystemProperties": LazyJson(lambda: system_properties(event)),
        "SequenceNumber": meta.Datum(event.sequence_number, "int"),
        "Offset": meta.Datum(str(event.offset), "string"),
        "PartitionKey": meta.Datum(_json_value(event.partition_key), "string"),
        "EnqueuedTimeUtc": meta.Datum(_iso(event.enqueued_time), "string"),
        "Properties": LazyJson(lambda: _json_value(event.properties or {})),
        "sys": sys_metadata,
    }


class EventBodyNotSupported(Exception):
    """An event whose AMQP body is not data. The Functions host cannot bind it: .NET's ``EventData.EventBody``
    raises ``NotSupportedException`` for a value or sequence body, and the invocation fails."""


def _check_bindable(event: EventData) -> None:
    if event.body_type is not AmqpMessageBodyType.DATA:
        raise EventBodyNotSupported(
            f"event {event.sequence_number} has an AMQP {event.body_type.value} body: the Functions host binds only "
            "data bodies (its EventData.EventBody raises NotSupportedException), so the invocation fails; "
            "producers must send bytes or text (EventData(body)), not AmqpAnnotatedMessage(value_body=...)")


def to_function_input(
    events: list[EventData], partition: Mapping[str, str], binding: EventHubBinding,
) -> func.EventHubEvent | list[func.EventHubEvent]:
    """What the worker passes: ``func.EventHubEvent`` objects with the values azure-functions'
    ``EventHubTriggerConverter`` decodes from the host's binding data (``offset`` an ``int`` in a batch,
    a ``str`` for a single event; bodies decoded as UTF-8 first unless ``dataType`` is binary), and
    ``event.metadata`` with the host's keys. tests/devhost/test_functions.py checks them against
    the converter itself."""
    metadata = trigger_metadata(events, partition, binding)
    lazy = LazyMetadata(metadata)
    binary = binding.data_type == "binary"

    def convert(event: EventData) -> func.EventHubEvent:
        _check_bindable(event)
        key = _json_value(event.partition_key)
        return DevHostEventHubEvent(
            lazy_metadata=lazy,
            # string: decoded as .NET's BinaryData.ToString() does, an invalid UTF-8 sequence becoming U+FFFD
            body=_data_body(event) if binary else _data_body(event).decode("utf-8", "replace").encode("utf-8"),
            trigger_metadata=metadata,
            enqueued_time=_utc(event.enqueued_time),
            partition_key=None if key is None else str(key),
            sequence_number=event.sequence_number,
            offset=_offset(event) if binding.many else str(event.offset),
            iothub_metadata=_iothub(event),
        )

    if binding.many:
        return [convert(event) for event in events]
    (event,) = events
    return convert(event)


@dataclass(eq=False)
class _PartitionState:
    """One claim of a partition: created when it is claimed, ``lost`` once it is closed.

    A batch in flight holds the state of the claim it was read under. The SDK reuses one PartitionContext for every
    claim of a partition and does not check ownership when it checkpoints, so ``lost`` is what keeps a batch that
    outlives its claim from writing its old position over the new owner's checkpoint.
    """

    pending: list[EventData] = field(default_factory=list)
    pending_since: float = 0.0
    batches: int = 0
    uncheckpointed: EventData | None = None
    context: PartitionContext | None = None
    lost: bool = False


def _seconds_setting(environ: Mapping[str, str], name: str, default: float) -> float:
    value = environ.get(name)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError as exc:
        raise DevHostError(f"{name}={value!r} is not a number of seconds") from exc
    if seconds <= 0:
        raise DevHostError(f"{name} must be positive")
    return seconds


class EventHubListener:
    """Receives for one function and invokes it per batch (or per event with cardinality one)."""

    def __init__(self, binding: EventHubBinding, options: EventHubOptions, invoker: Invoker,
                 storage_connection_string: str, environ: Mapping[str, str] = os.environ) -> None:
        self.binding = binding
        self._options = options
        self._invoker = invoker
        self._storage = storage_connection_string
        self._load_balancing = _seconds_setting(environ, LOAD_BALANCING_SETTING, DEFAULT_LOAD_BALANCING_SECONDS)
        self._expiration = _seconds_setting(environ, OWNERSHIP_EXPIRATION_SETTING, DEFAULT_OWNERSHIP_EXPIRATION_SECONDS)
        if self._expiration <= self._load_balancing:
            # Ownership is renewed every load-balancing cycle; expiring sooner hands partitions to two hosts.
            raise DevHostError(f"{OWNERSHIP_EXPIRATION_SETTING} ({self._expiration:g}s) must be longer than "
                               f"{LOAD_BALANCING_SETTING} ({self._load_balancing:g}s)")
        self._client: EventHubConsumerClient | None = None
        self._receiving: asyncio.Task[None] | None = None
        self._partitions: dict[str, _PartitionState] = {}
        self._inflight: set[asyncio.Task[None]] = set()
        self._draining = False
        self._stopping = asyncio.Event()

    @property
    def name(self) -> str:
        return self.binding.spec.name

    def _starting_position(self) -> tuple[Any, bool]:
        """Where a partition without a checkpoint starts. Never inclusive: the SDK applies the flag to a checkpoint
        too, and a partition with one resumes after its checkpointed event (an enqueued time, as the .NET SDK's
        filter, means the events enqueued after it)."""
        options = self._options
        if options.initial_offset == "fromEnd":
            return "@latest", False
        if options.initial_offset == "fromEnqueuedTime":
            return options.initial_enqueued_time, False
        return "-1", False

    async def start(self) -> None:
        forget_settled_delivery_tags()
        options = storage_options(self._storage)

        def ensure_container() -> None:
            # Few, short retries: an unreachable storage account should fail start-up in seconds, not minutes.
            with BlobServiceClient.from_connection_string(self._storage, retry_total=2, initial_backoff=0.2,
                                                          increment_base=1.2, random_jitter_range=0.2,
                                                          **options) as service, \
                    contextlib.suppress(ResourceExistsError):
                service.create_container(CHECKPOINT_CONTAINER)

        try:
            await asyncio.to_thread(ensure_container)
        except AzureError as exc:
            raise DevHostError(f"function {self.name!r}: cannot create the checkpoint container "
                               f"{CHECKPOINT_CONTAINER!r} in AzureWebJobsStorage: {exc}") from exc
        store = BlobCheckpointStore.from_connection_string(self._storage, CHECKPOINT_CONTAINER, **options)
        self._client = EventHubConsumerClient.from_connection_string(
            self.binding.connection_string,
            consumer_group=self.binding.consumer_group,
            eventhub_name=self.binding.eventhub_name,
            checkpoint_store=ThreadedCheckpointStore(store),
            load_balancing_interval=self._load_balancing,
            partition_ownership_expiration_interval=self._expiration,
            load_balancing_strategy=LoadBalancingStrategy.GREEDY,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
        )
        position, inclusive = self._starting_position()
        # minEventBatchSize and maxWaitTime apply to functions that take a batch; one event at a time is not held
        waits = self.binding.many and self._options.min_event_batch_size > 1
        self._receiving = asyncio.create_task(self._client.receive_batch(
            on_event_batch=self._on_event_batch,
            max_batch_size=self._options.max_event_batch_size,
            max_wait_time=self._options.max_wait_time.total_seconds() if waits else None,
            prefetch=self._options.prefetch_count,
            starting_position=position,
            starting_position_inclusive=inclusive,
            on_error=self._on_error,
            on_partition_initialize=self._on_partition_initialize,
            on_partition_close=self._on_partition_close,
        ), name=f"eventhub-{self.name}")
        logger.info("Functions.%s: receiving from %s (consumer group %s, cardinality %s)", self.name,
                    self.binding.eventhub_name, self.binding.consumer_group, "many" if self.binding.many else "one")

    async def _on_partition_initialize(self, context: PartitionContext) -> None:
        # A (re)claimed partition restarts from its checkpoint: forget what an earlier claim buffered.
        self._partitions[context.partition_id] = _PartitionState(context=context)
        logger.info("Functions.%s: partition %s claimed", self.name, context.partition_id)

    async def _on_partition_close(self, context: PartitionContext, reason: Any) -> None:
        # Lost, given up or shut down (stop() has written its checkpoints by then): the claim is over. What it held
        # back is the next owner's to read again, and nothing of it may be checkpointed later, neither by a batch
        # still running nor by stop(): either would write an old position over the new owner's. As the host: its
        # partition processor checkpoints only while ownership is not lost.
        state = self._partitions.pop(context.partition_id, None)
        if state is not None:
            state.lost = True
            state.pending.clear()
        logger.info("Functions.%s: partition %s closed (%s)", self.name, context.partition_id, reason)

    async def _on_error(self, context: PartitionContext | None, error: Exception) -> None:
        partition = context.partition_id if context is not None else "-"
        logger.warning("Functions.%s: Event Hubs error on partition %s: %r", self.name, partition, error)

    async def _on_event_batch(self, context: PartitionContext, events: list[EventData]) -> None:
        if self._draining:
            return
        state = self._partitions.setdefault(context.partition_id, _PartitionState())
        state.context = context
        if events:
            if not state.pending:
                state.pending_since = time.monotonic()
            state.pending.extend(events)
        options = self._options

        def ready() -> bool:
            if not self.binding.many:
                return bool(state.pending)
            waited = time.monotonic() - state.pending_since
            return bool(state.pending) and (len(state.pending) >= options.min_event_batch_size
                                            or waited >= options.max_wait_time.total_seconds())

        while ready() and not self._draining:
            batch = state.pending[:options.max_event_batch_size]
            del state.pending[:len(batch)]
            task = asyncio.create_task(self._process(context, state, batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            # The processor may cancel this callback (ownership lost, close); the batch still finishes.
            await asyncio.shield(task)
            # What is left waits from now, not from when the batch's first event came: the host's cache starts a new
            # maxWaitTime cycle for it once the invocation is done (PartitionProcessor.MonitorCachedEvents).
            state.pending_since = time.monotonic()

    def _partition_metadata(self, context: PartitionContext) -> dict[str, str]:
        return {
            "FullyQualifiedNamespace": context.fully_qualified_namespace,
            "EventHubName": context.eventhub_name,
            "ConsumerGroup": context.consumer_group,
            "PartitionId": context.partition_id,
        }

    async def _process(self, context: PartitionContext, state: _PartitionState, batch: list[EventData]) -> None:
        partition = self._partition_metadata(context)
        reason = (f"EventHub triggered: {len(batch)} event(s) from partition {context.partition_id}, "
                  f"sequence numbers {batch[0].sequence_number}-{batch[-1].sequence_number}")
        done: EventData | None = None  # the last event whose invocation ended (succeeded or retries spent)
        if self.binding.many:
            if await self._invoke(batch, partition, reason) is not Outcome.ABANDONED:
                done = batch[-1]
        else:
            for event in batch:
                # One invocation per event: shutdown or a lost claim starts no further one, as the host's dispatch
                # loop stops once cancelled. What was not invoked is left after the checkpoint, read again.
                if self._draining or state.lost:
                    break
                if await self._invoke([event], partition, reason) is Outcome.ABANDONED:
                    break
                done = event
        if done is None:
            return
        state.batches += 1
        state.uncheckpointed = done
        if state.batches % self._options.batch_checkpoint_frequency == 0:
            await self._checkpoint(context, state)

    async def _invoke(self, events: list[EventData], partition: Mapping[str, str], reason: str) -> Outcome:
        spec = self.binding.spec
        try:
            arguments = {spec.trigger_param: self._function_input(events, partition)}
        except EventBodyNotSupported as exc:
            # As the host: binding fails each attempt, the retry policy runs its course, the batch is checkpointed
            # past. Sluice's audit then reports those sequence numbers as neither stored nor dead-lettered.
            message = str(exc)

            def cannot_bind() -> None:
                raise EventBodyNotSupported(message)

            failing = replace(spec, user_function=cannot_bind, is_async=False, accepts_context=False)
            return await self._invoker.call_with_retry(failing, {}, reason=reason, stopping=self._stopping)
        return await self._invoker.call_with_retry(spec, arguments, reason=reason, stopping=self._stopping)

    def _function_input(self, events: list[EventData], partition: Mapping[str, str]) -> Any:
        """:func:`to_function_input`, its CPU accounted as ``<function>:input`` (in Azure the Python worker
        does this conversion, from the host's gRPC message; the receiving before it is the host's)."""
        started = time.thread_time()
        try:
            return to_function_input(events, partition, self.binding)
        finally:
            self._invoker.cpu.add(f"{self.name}:input", time.thread_time() - started)

    async def _checkpoint(self, context: PartitionContext, state: _PartitionState) -> None:
        event = state.uncheckpointed
        if event is None:
            return
        if state.lost:
            logger.info("Functions.%s: partition %s was lost while sequence number %s was processed; not "
                        "checkpointed (the new owner reads it again)", self.name, context.partition_id,
                        event.sequence_number)
            return
        try:
            await context.update_checkpoint(event)
        except Exception as exc:  # the host logs and carries on; the next checkpoint covers this one
            logger.warning("Functions.%s: checkpoint of partition %s at sequence number %s failed: %r",
                           self.name, context.partition_id, event.sequence_number, exc)
            return
        state.uncheckpointed = None
        logger.debug("Functions.%s: checkpointed partition %s at sequence number %s",
                     self.name, context.partition_id, event.sequence_number)

    async def stop(self) -> None:
        """Finish and checkpoint what is in progress, then release the partitions."""
        self._draining = True
        self._stopping.set()
        if self._inflight:
            logger.info("Functions.%s: waiting for %d batch(es) in progress", self.name, len(self._inflight))
            await asyncio.gather(*self._inflight, return_exceptions=True)
        for state in list(self._partitions.values()):  # a partition lost meanwhile leaves the dict
            if state.context is not None and state.uncheckpointed is not None:
                await self._checkpoint(state.context, state)
        if self._client is not None:
            await self._client.close()
        if self._receiving is not None:
            await asyncio.gather(self._receiving, return_exceptions=True)
        logger.info("Functions.%s: stopped", self.name)
