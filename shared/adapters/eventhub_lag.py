"""``EventHubBlobLagReader``: Event Hubs lag read exactly as KEDA's ``azure-eventhub`` scaler reads it.

KEDA (``pkg/scalers/azure_eventhub_scaler.go`` and ``azure/azure_eventhub_checkpoint.go``)
asks the hub for each partition's properties, then, with ``checkpointStrategy:
blobMetadata``, reads the blob
``<namespace>.<suffix>/<hub>/<consumer group in lower case>/checkpoint/<partition>``
in ``blobContainer`` and takes the position from its metadata key ``sequencenumber``
(or ``Sequencenumber``). Only the consumer group is lowered: the namespace and hub
keep the case the ScaledObject gives them, while the Event Hubs SDKs and the
Functions host write the whole name in lower case.

Per partition: an empty partition (last enqueued -1) counts 0; no blob or no
container counts every retained event (last - beginning + 1, the over-scaling trap);
otherwise last - checkpoint, wrapping round like a circular buffer, and 0 when the
result looks stale (above ``2**63 - 1 - stale_threshold``). A blob without a numeric
``sequencenumber`` makes the whole scaler fail, which is when KEDA applies the
ScaledObject's ``fallback``.

When KEDA would find no checkpoint, the reader looks through the account's
containers for checkpoints of the same hub and consumer group written under
another container or another case, and says where they are; with
``other_groups`` (the host's consumer group unknown) also for checkpoints of the
hub under another consumer group, such as the host's when the trigger names none
and KEDA reads ``$Default``. That look is best effort: listing the account's
containers is an operation on the account, which the container-scoped roles the
deployment grants do not allow (403), so a refused scan becomes a note and the
reading keeps KEDA's count.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.eventhub import EventHubConsumerClient
from azure.storage.blob import BlobServiceClient

from shared import eventhub_connection
from shared.adapters.identity import credential_for
from shared.exceptions import ConfigurationError, DependencyUnavailable
from shared.ports.dashboard import LagCounts
from shared.ports.lag import LagReading, PartitionLag, PartitionLagReader

logger = logging.getLogger(__name__)

MAX_INT64 = 2**63 - 1
DEFAULT_STALE_THRESHOLD = 10_000
SCANNED_BLOBS_PER_CONTAINER = 10_000
STRATEGY = "blobMetadata"
HOST_CHECKPOINT_CONTAINER = "azure-webjobs-eventhub"
# The dependencies as the status page names them (docs/api.md): its header lists each one once, by this name.
EVENTHUBS = "eventhubs"
STORAGE = "storage"
EVENTHUBS_NAME = "Event Hubs"  # in messages


@dataclass(frozen=True, slots=True)
class KedaCheckpointSource:
    """Where a ScaledObject's ``azure-eventhub`` trigger looks for checkpoints.

    ``namespace`` is the fully qualified name KEDA builds: ``eventHubNamespace`` plus
    the endpoint suffix (``servicebus.windows.net`` on Azure's public cloud).
    """

    namespace: str
    eventhub: str
    consumer_group: str
    container: str
    strategy: str = STRATEGY
    stale_threshold: int = DEFAULT_STALE_THRESHOLD

    def blob_name(self, partition_id: str) -> str:
        return f"{self.namespace}/{self.eventhub}/{self.consumer_group.lower()}/checkpoint/{partition_id}"


def unprocessed_events(last: int, checkpoint: int, stale_threshold: int = DEFAULT_STALE_THRESHOLD) -> int:
    """KEDA's count for a partition with a checkpoint (``calculateUnprocessedEvents``)."""
    # Below the checkpoint: the sequence wrapped round, or the partition properties are older than the checkpoint.
    count = last - checkpoint if last >= checkpoint else (MAX_INT64 - checkpoint) + last
    return 0 if count > MAX_INT64 - stale_threshold else count


def unprocessed_without_checkpoint(beginning: int, last: int) -> int:
    """KEDA's count for a partition whose checkpoint it cannot find: every retained event."""
    if (beginning == 0 and last == 0) or beginning != last:
        return last - beginning + 1
    return 0


class EventHubBlobLagReader:
    """Reads one hub's lag from Event Hubs and the checkpoint blobs, as KEDA's blobMetadata strategy does.

    ``other_groups``: when KEDA finds no checkpoint, look for the hub's checkpoints under any consumer group, not
    only under the source's (for a source whose group may not be the one the checkpoints are written under)."""

    def __init__(self, hub: EventHubConsumerClient, blobs: BlobServiceClient, source: KedaCheckpointSource, *,
                 other_groups: bool = False) -> None:
        self._hub = hub
        self._blobs = blobs
        self._source = source
        self._other_groups = other_groups

    def read(self) -> LagReading:
        source = self._source
        properties = self._partition_properties()
        warnings: list[str] = []
        if source.strategy != STRATEGY:
            warnings.append(
                f"checkpointStrategy is {source.strategy!r}: KEDA would then look for checkpoints in a layout the "
                f"Functions host does not write, find none and count every retained event; set "
                f"checkpointStrategy: {STRATEGY}")
        partitions: list[PartitionLag] = []
        missing: list[str] = []
        scaler_error = None
        for props in properties:
            pid, beginning, last = (
                props["id"],
                props["beginning_sequence_number"],
                props["last_enqueued_sequence_number"],
            )
            checkpoint = None if source.strategy != STRATEGY or last == -1 else self._checkpoint(pid)
            error = None
            if isinstance(checkpoint, str):
                scaler_error = scaler_error or checkpoint
                error, checkpoint = checkpoint, None
            if last == -1:
                count = 0
            elif checkpoint is None:
                count = unprocessed_without_checkpoint(beginning, last)
                missing.append(pid)
            else:
                count = unprocessed_events(last, checkpoint, source.stale_threshold)
            partitions.append(PartitionLag(pid, beginning, last, checkpoint, count, error, bool(props["is_empty"])))
        notes: list[str] = []
        if missing and source.strategy == STRATEGY:
            try:
                misplaced = self._misplaced(missing)
            except AzureError as exc:  # a diagnostic: the lag KEDA computes does not depend on it
                notes.append(f"no checkpoint found for partitions {', '.join(missing)}, and checkpoints written "
                             f"elsewhere could not be looked for (listing the storage account's containers needs a "
                             f"role on the account): {type(exc).__name__}: {exc}")
                misplaced = None
            if misplaced:
                warnings.extend(misplaced)
            elif misplaced is not None:
                notes.append(f"no checkpoint yet for partitions {', '.join(missing)}: KEDA counts every retained "
                             f"event of those partitions as unprocessed until the first checkpoint")
        return LagReading(tuple(partitions), tuple(warnings), tuple(notes), scaler_error)

    def _partition_properties(self) -> list[dict[str, Any]]:
        try:
            ids = self._hub.get_partition_ids()
            return [self._hub.get_partition_properties(pid) for pid in ids]
        except Exception as exc:  # the SDK raises its own EventHubError tree and plain connection errors
            raise DependencyUnavailable(EVENTHUBS, f"cannot read the partitions of "
                                        f"{self._source.eventhub!r}: {type(exc).__name__}: {exc}",
                                        name=EVENTHUBS_NAME) from exc

    def _checkpoint(self, partition_id: str) -> int | str | None:
        """The checkpoint's sequence number; ``None`` when KEDA finds no blob; a message when KEDA fails on it."""
        name = self._source.blob_name(partition_id)
        blob = self._blobs.get_blob_client(self._source.container, name)
        try:
            metadata = blob.get_blob_properties().metadata or {}
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise DependencyUnavailable(STORAGE, f"cannot read {self._source.container}/{name}: {exc}") from exc
        value = metadata.get("sequencenumber", metadata.get("Sequencenumber"))
        if value is None:
            return (f"{self._source.container}/{name} has no 'sequencenumber' metadata (keys: {sorted(metadata)}): "
                    f"KEDA's scaler fails on it and the ScaledObject's fallback applies")
        try:
            return int(value)
        except ValueError:
            return (f"{self._source.container}/{name}: sequencenumber {value!r} is not an integer: KEDA's scaler "
                    f"fails on it and the ScaledObject's fallback applies")

    def _misplaced(self, missing: list[str]) -> list[str]:
        """Where checkpoints of this hub and group (with ``other_groups``: of any group) sit when they are not where
        KEDA looks (empty: nowhere); raises ``AzureError`` when the account refuses the listing."""
        source = self._source
        group = source.consumer_group.lower()
        checkpoint = re.compile(rf"/{re.escape(source.eventhub.lower())}/([^/]+)/checkpoint/([^/]+)\Z")
        found: dict[tuple[str, str], list[str]] = {}
        for container in self._blobs.list_containers():
            for name in self._scan(container.name):
                match = checkpoint.search(name.lower())
                if (match is None or match[2] not in missing
                        or (match[1] != group and not self._other_groups)
                        or (container.name == source.container and name == source.blob_name(match[2]))):
                    continue
                found.setdefault((container.name, match[1]), []).append(name)
        where = source.container + "/" + source.blob_name("<partition>")
        out = []
        for (holder, written), names in sorted(found.items()):
            at = f"{holder}/{sorted(names)[0]} (and {len(names) - 1} more)"
            if written == group:
                out.append(f"checkpoints of hub {source.eventhub!r} and consumer group {source.consumer_group!r} sit "
                           f"at {at}, but KEDA reads {where}: it counts every retained event of partitions "
                           f"{', '.join(missing)} as unprocessed and scales out to the maximum (check blobContainer, "
                           f"eventHubNamespace and eventHubName, which KEDA does not lower-case)")
            else:
                out.append(f"checkpoints of hub {source.eventhub!r} sit under consumer group {written!r} at {at}, "
                           f"but KEDA reads consumer group {source.consumer_group!r} ({where}): it counts every "
                           f"retained event of partitions {', '.join(missing)} as unprocessed and scales out to the "
                           f"maximum for good (set the trigger's consumerGroup to the host's "
                           f"SLUICE_INGEST_CONSUMER_GROUP; KEDA reads $Default when it names none)")
        return out

    def _scan(self, container: str) -> Iterable[str]:
        client = self._blobs.get_container_client(container)
        for count, blob in enumerate(client.list_blobs()):
            if count >= SCANNED_BLOBS_PER_CONTAINER:
                logger.warning("stopped looking for checkpoints in %s after %d blobs", container, count)
                return
            yield blob.name


@dataclass(frozen=True, slots=True)
class HostEventHubConnection:
    """The Functions host's Event Hubs connection ``EventHubConnection``, read from the variables the host reads
    (``AzureWebJobsEventHubConnection`` first, as the host binds the name).

    A connection string (``EventHubConnection``, the local emulator), or an identity-based connection:
    ``EventHubConnection__fullyQualifiedNamespace``, with the optional ``__credential=managedidentity`` (the app's
    managed identity only, not ``DefaultAzureCredential``) and ``__clientId`` (which user-assigned identity).
    Sluice's own Event Hubs readers (the lag, the audit, ``sluice lag``, ``sluice doctor keda``) sign in as the
    host does.
    """

    connection_string: str | None = field(default=None, repr=False)  # holds the namespace's key
    fully_qualified_namespace: str | None = None
    managed_identity: bool = False
    client_id: str | None = None
    name: str = eventhub_connection.CONNECTION  # the variable that holds it, as the environment spells it

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> HostEventHubConnection:
        """The connection ``environ`` sets (``configured`` is false when it sets none); a ``ConfigurationError``
        when ``__credential`` or ``__clientId`` say something the host would not take. Found as the host binds the
        connection name (:func:`eventhub_connection.host_environ`: ``AzureWebJobsEventHubConnection`` first), so the
        lag, the audit and ``ingest_hub`` read the hub the trigger consumes."""
        name, environ = eventhub_connection.host_environ(environ)
        problems = eventhub_connection.identity_problems(environ, name)
        if problems:
            raise ConfigurationError("; ".join(problems))
        return cls(connection_string=environ.get("EventHubConnection") or None,
                   fully_qualified_namespace=environ.get("EventHubConnection__fullyQualifiedNamespace") or None,
                   managed_identity=bool(environ.get("EventHubConnection__credential")),
                   client_id=environ.get("EventHubConnection__clientId") or None, name=name)

    @property
    def configured(self) -> bool:
        return bool(self.connection_string or self.fully_qualified_namespace)

    def client(self, eventhub: str, consumer_group: str) -> EventHubConsumerClient:
        """A consumer client of ``eventhub`` in ``consumer_group`` over this connection (:func:`eventhub_client`)."""
        return eventhub_client(eventhub, consumer_group, connection_string=self.connection_string,
                               fully_qualified_namespace=self.fully_qualified_namespace,
                               managed_identity=self.managed_identity, client_id=self.client_id)

    def checkpoint_source(self, eventhub: str, consumer_group: str) -> KedaCheckpointSource:
        """Where the host checkpoints ``eventhub`` over this connection (:func:`host_checkpoint_source`)."""
        return host_checkpoint_source(eventhub, consumer_group, connection_string=self.connection_string,
                                      fully_qualified_namespace=self.fully_qualified_namespace, name=self.name)


def eventhub_client(eventhub: str, consumer_group: str, *, connection_string: str | None = None,
                    fully_qualified_namespace: str | None = None, managed_identity: bool = False,
                    client_id: str | None = None) -> EventHubConsumerClient:
    """A consumer client by connection string (local emulator) or by identity (as the Functions host connects:
    ``managed_identity`` and ``client_id`` as ``__credential`` and ``__clientId`` say, :func:`credential_for`)."""
    if connection_string:
        return EventHubConsumerClient.from_connection_string(
            connection_string, consumer_group=consumer_group, eventhub_name=eventhub)
    if not fully_qualified_namespace:
        raise ConfigurationError("set EventHubConnection (a connection string) or "
                                 "EventHubConnection__fullyQualifiedNamespace (identity) to read Event Hubs")
    credential = credential_for(f"https://{fully_qualified_namespace}", managed_identity=managed_identity,
                                client_id=client_id)
    return EventHubConsumerClient(fully_qualified_namespace, eventhub, consumer_group, credential=credential)


class CachedPartitionLag:
    """The status page's ``LagReader``: the KEDA reading of the ingest hub, at most once per ``max_age`` seconds.

    A reading opens one management connection per partition, so every pod's status
    page shares the cost of one reading every few seconds whatever the page traffic.
    The ``sluice.eventhub.lag`` gauge reads with :meth:`fresh_lag` every period
    instead, which always reads the hub: a cached answer would be handed to the gauge
    as a reading of now, the hub read every other period only, and the gauge's
    staleness limit measured from the wrong time. The page takes those readings too
    while they are under ``max_age`` old. A partition whose checkpoint KEDA cannot
    read is left out of the counts (KEDA counts nothing there; the reader's count
    of every retained event would be a false, growing lag) and named, with the
    reason, in :meth:`lag`'s ``unreadable``: both from the same reading.
    """

    def __init__(self, reader: PartitionLagReader, *, max_age: float = 5.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._reader = reader
        self._max_age = max_age
        self._monotonic = monotonic
        self._reading = threading.Lock()  # one reading at a time: callers behind it take its result
        self._lock = threading.Lock()  # the last result only, never held through a read
        self._last: tuple[float, LagReading | DependencyUnavailable] | None = None

    def lag(self) -> LagCounts:
        """The counts and the unreadable partitions of one reading; a failed reading is remembered as long as a good
        one would be."""
        return _counts(self._reading_within(self._max_age))

    def fresh_lag(self) -> dict[str, int]:
        """Unprocessed events per partition, read from the hub now (the gauge's reading of each period)."""
        return _counts(self._reading_within(0.0)).partitions

    def _reading_within(self, max_age: float) -> LagReading:
        """A reading that ended less than ``max_age`` seconds ago, or a new one."""
        with self._reading:
            with self._lock:
                last = self._last
            if last is None or self._monotonic() - last[0] >= max_age:
                try:
                    reading: LagReading | DependencyUnavailable = self._reader.read()
                except DependencyUnavailable as exc:
                    reading = exc
                last = (self._monotonic(), reading)
                with self._lock:
                    self._last = last
        result = last[1]
        if isinstance(result, DependencyUnavailable):
            raise result
        return result


def _counts(reading: LagReading) -> LagCounts:
    """``reading``'s counts, leaving out the partitions whose checkpoint KEDA cannot read, and those partitions."""
    return LagCounts(
        {p.partition_id: p.unprocessed for p in reading.partitions if p.checkpoint_error is None},
        {p.partition_id: p.checkpoint_error for p in reading.partitions if p.checkpoint_error is not None})


def host_checkpoint_source(eventhub: str, consumer_group: str, *, connection_string: str | None,
                           fully_qualified_namespace: str | None,
                           name: str = eventhub_connection.CONNECTION) -> KedaCheckpointSource:
    """Where the Functions host (and the dev host) checkpoint ``eventhub``: the namespace as the SDK writes it. A
    ``ConfigurationError`` naming ``name`` (the variable that holds ``connection_string``) when the SDK would refuse
    it."""
    if connection_string:
        # The SDK names checkpoints after the endpoint's host *and port* (``127.0.0.1:5672`` for the emulator);
        # Azure's endpoints have no port.
        try:
            fully_qualified_namespace = eventhub_connection.namespace(connection_string, name)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
    if not fully_qualified_namespace:
        raise ConfigurationError("set EventHubConnection (a connection string) or "
                                 "EventHubConnection__fullyQualifiedNamespace (identity) to read Event Hubs")
    return KedaCheckpointSource(namespace=fully_qualified_namespace.lower(), eventhub=eventhub.lower(),
                                consumer_group=consumer_group, container=HOST_CHECKPOINT_CONTAINER)


def partition_owners(blobs: BlobServiceClient, source: KedaCheckpointSource) -> dict[str, str]:
    """Partition -> the processor that owns it, from the ownership blobs next to the checkpoints.

    The SDK's ``BlobCheckpointStore`` (the dev host) and the Functions host claim a
    partition by writing ``<namespace>/<hub>/<group>/ownership/<partition>`` with
    metadata ``ownerid``; a partition nobody claimed is absent.
    """
    prefix = f"{source.namespace}/{source.eventhub}/{source.consumer_group.lower()}/ownership/"
    owners: dict[str, str] = {}
    try:
        container = blobs.get_container_client(source.container)
        for blob in container.list_blobs(name_starts_with=prefix, include=["metadata"]):
            metadata = blob.metadata or {}
            owner = metadata.get("ownerid", metadata.get("Ownerid"))
            if owner:
                owners[blob.name[len(prefix):]] = owner
    except ResourceNotFoundError:
        return {}
    except AzureError as exc:
        raise DependencyUnavailable(STORAGE, f"cannot list {source.container}/{prefix}: {exc}") from exc
    return owners


class EventHubSequenceAtTime:
    """Implements ``shared.ports.audit.SequenceAtTime``: receives one event from a time to learn its sequence number.

    The SDK's synchronous ``receive`` blocks until the client is closed, so it runs
    in a thread; the first event (or ``max_wait_time`` with none) ends it. Each
    call uses a new client from ``client_factory`` (a closed client is not reused).
    """

    def __init__(self, client_factory: Callable[[], EventHubConsumerClient], *, wait: float = 10.0) -> None:
        self._client_factory = client_factory
        self._wait = wait

    def first_at(self, partition: str, at: Any) -> int | None:
        found: list[int] = []
        done = threading.Event()
        client = self._client_factory()

        def on_event(_context: Any, event: Any) -> None:
            if event is not None and not found:
                found.append(event.sequence_number)
            done.set()

        def on_error(_context: Any, error: Exception) -> None:
            errors.append(error)
            done.set()

        errors: list[Exception] = []
        receiver = threading.Thread(target=client.receive, name=f"sluice-audit-p{partition}", daemon=True, kwargs={
            "on_event": on_event, "on_error": on_error, "partition_id": partition, "starting_position": at,
            "starting_position_inclusive": True, "max_wait_time": self._wait, "prefetch": 1})
        receiver.start()
        done.wait(self._wait * 3)
        client.close()
        receiver.join(self._wait)
        if errors or not done.is_set():
            cause = f"{type(errors[0]).__name__}: {errors[0]}" if errors else f"nothing within {self._wait * 3} s"
            raise DependencyUnavailable(EVENTHUBS, f"cannot find the sequence number of partition {partition} "
                                        f"at {at}: {cause}", name=EVENTHUBS_NAME)
        return found[0] if found else None
