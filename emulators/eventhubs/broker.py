"""Hubs, partitions and consumers: where events are stored, numbered and read back.

Everything here runs on the server's single event-loop thread; nothing locks.

* Sequence numbers start at 0 per partition and never repeat. Offsets are byte
  positions in the partition's log (the sum of the sizes of the events before),
  as in Azure Event Hubs, rendered as decimal strings on the wire.
* Enqueued times never go backwards within a partition (a clock step back
  reuses the previous time), so they can be searched like offsets.
* Partition choice: an explicit partition id wins; otherwise a partition key
  picks the partition Azure's hash picks (Jenkins lookup3 of the UTF-8 key, see
  :mod:`emulators.eventhubs.partitioning`); otherwise partitions take turns
  (round-robin per hub).
* Owner level (epoch), per hub/consumer group/partition: a receiver with an
  owner level at least as high as every current one disconnects the others with
  ``amqp:link:stolen``; a lower one, or one without owner level while an owner
  exists, is refused with the same condition, as Azure does.
* At most :data:`MAX_RECEIVERS_PER_PARTITION` (5) receivers per hub/consumer
  group/partition, as Azure allows: another one is refused with
  ``amqp:resource-limit-exceeded``, naming the connected receivers. The owner
  level rules come first, so a receiver that takes the partition over is never
  refused for the limit (it disconnects the others). A receiver's slot is freed
  when its link closes, however it closes (detach from either side, session
  end, lost connection).
"""

from __future__ import annotations

import bisect
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol, TypedDict

from emulators.eventhubs import errors
from emulators.eventhubs.config import HubConfig, NamespaceConfig
from emulators.eventhubs.errors import AmqpError
from emulators.eventhubs.message import Incoming
from emulators.eventhubs.partitioning import partition_for_key
from emulators.eventhubs.storage import PartitionLog

logger = logging.getLogger(__name__)

MAX_RECEIVERS_PER_PARTITION = 5
"""Azure's limit of concurrent receivers on one partition in one consumer group."""


def now_ms() -> int:
    return int(time.time() * 1000)


class Event:
    """One stored event: its numbers and its ready-to-deliver encoding."""

    __slots__ = ("enqueued_ms", "header_len", "offset", "payload", "sequence")

    def __init__(self, sequence: int, offset: int, enqueued_ms: int, header_len: int, payload: bytes) -> None:
        self.sequence = sequence
        self.offset = offset
        self.enqueued_ms = enqueued_ms
        self.header_len = header_len
        self.payload = payload


class Position(NamedTuple):
    """Where a receiver starts: ``kind`` is offset, sequence, time or latest; ``value`` is a number."""

    kind: str
    value: int
    inclusive: bool


_SELECTOR = re.compile(
    r"^\s*amqp\.annotation\.(?P<field>x-opt-offset|x-opt-sequence-number|x-opt-enqueued-time)"
    r"\s*(?P<op>>=|>)\s*'(?P<value>[^']*)'\s*$"
)
_KINDS = {"x-opt-offset": "offset", "x-opt-sequence-number": "sequence", "x-opt-enqueued-time": "time"}


def parse_selector(expression: str | None) -> Position:
    """Parse the SDK's ``apache.org:selector-filter:string``; no filter means from the start."""
    if expression is None:
        return Position("offset", -1, False)
    match = _SELECTOR.match(expression)
    if not match:
        raise AmqpError(errors.NOT_IMPLEMENTED, f"unsupported selector filter {expression!r}: only "
                        "amqp.annotation.x-opt-offset/x-opt-sequence-number/x-opt-enqueued-time with > or >=")
    kind, raw, inclusive = _KINDS[match["field"]], match["value"], match["op"] == ">="
    if kind == "offset" and raw == "@latest":
        return Position("latest", 0, False)
    try:
        value = int(raw)
    except ValueError:
        raise AmqpError(errors.ARGUMENT_ERROR, f"selector value {raw!r} for {match['field']} is not a number") from None
    return Position(kind, value, inclusive)


class PartitionProperties(TypedDict):
    """A partition's $management reply fields, as Python values (the management module applies the AMQP types)."""

    begin_sequence_number: int
    last_enqueued_sequence_number: int
    last_enqueued_offset: str
    last_enqueued_time_utc: int
    is_partition_empty: bool


NOT_SET_MS = -62_135_596_800_000
"""The last enqueued time of a partition that never had an event, as Azure sends it: 0001-01-01T00:00:00Z (.NET's
``DateTime.MinValue``), which azure-eventhub turns into ``datetime.min`` (Azure/azure-sdk-for-python#38303)."""


class Partition:
    """The events of one partition, bounded by retention, with listeners woken on append."""

    def __init__(self, hub: str, partition_id: str, retention_ms: int, log: PartitionLog | None) -> None:
        self.hub = hub
        self.id = partition_id
        self.retention_ms = retention_ms
        self.log = log
        self.events: list[Event] = []
        self.head = 0
        self.next_sequence = 0
        self.next_offset = 0
        self.last_enqueued_ms = NOT_SET_MS  # until the first event: Azure's "never" (0001-01-01)
        self.last_offset = -1  # offset of the last event ever enqueued (kept when it expires)
        self.listeners: set[Callable[[], None]] = set()
        if log is not None:
            records, last = log.load(now_ms() - retention_ms)
            self.events = [Event(*record) for record in records]
            if last is not None:
                sequence, offset, enqueued_ms, _header_len, payload = last
                self.next_sequence = sequence + 1
                self.next_offset = offset + len(payload)
                self.last_offset = offset
                self.last_enqueued_ms = enqueued_ms
            logger.info("%s/%s: loaded %s events from %s (next sequence number %s)", hub, partition_id,
                        len(self.events), log.path, self.next_sequence)

    @property
    def first_sequence(self) -> int:
        """Sequence number of the oldest retained event (``next_sequence`` when empty)."""
        return self.events[self.head].sequence if self.head < len(self.events) else self.next_sequence

    def append(self, messages: Sequence[Incoming]) -> None:
        """Number, stamp, store and (with --data-dir) write ``messages``, then wake the listeners."""
        enqueued = max(now_ms(), self.last_enqueued_ms)
        self.last_enqueued_ms = enqueued
        for incoming in messages:
            payload, header_len = incoming.stamp(self.next_sequence, self.next_offset, enqueued)
            event = Event(self.next_sequence, self.next_offset, enqueued, header_len, payload)
            self.events.append(event)
            if self.log is not None:
                self.log.append(event.sequence, event.offset, enqueued, header_len, payload)
            self.last_offset = self.next_offset
            self.next_sequence += 1
            self.next_offset += len(payload)
        if self.log is not None:
            self.log.flush()
        for wake in list(self.listeners):
            wake()

    def start_sequence(self, position: Position) -> int:
        """The sequence number of the first event a receiver at ``position`` gets."""
        first = self.first_sequence
        kind, value, inclusive = position
        if kind == "latest":
            return self.next_sequence
        if kind == "sequence":
            start = value if inclusive else value + 1
            if start > self.next_sequence:
                raise AmqpError(errors.ARGUMENT_OUT_OF_RANGE,
                                f"sequence number {value} is beyond the last sequence number "
                                f"{self.next_sequence - 1} of partition {self.id}")
            return max(start, first)
        live = self.events[self.head:] if self.head else self.events
        if kind == "offset":
            # Azure refuses an offset past the last event's ("The supplied offset '13953' is invalid. The last
            # offset in the system is '13952'", Azure/azure-sdk-for-net#9213), not past where the next one goes:
            # resuming inclusively at a checkpoint's offset + 1 is a client bug it reports.
            beyond = value > max(self.last_offset, 0) if inclusive else (value > self.last_offset and value != -1)
            if beyond:
                raise AmqpError(errors.ARGUMENT_OUT_OF_RANGE,
                                f"The supplied offset '{value}' is invalid. The last offset in the system is "
                                f"'{self.last_offset}' (partition {self.id})")
            search = bisect.bisect_left if inclusive else bisect.bisect_right
            return first + search(live, value, key=lambda e: e.offset)
        search = bisect.bisect_left if inclusive else bisect.bisect_right
        return first + search(live, value, key=lambda e: e.enqueued_ms)

    def read(self, sequence: int, limit: int) -> list[Event]:
        """Up to ``limit`` events from ``sequence`` on (expired ones are skipped)."""
        first = self.first_sequence
        index = self.head + max(sequence - first, 0)
        return self.events[index : index + limit]

    def expire(self, now: int) -> int:
        """Drop events older than the retention; returns how many were dropped."""
        cutoff = now - self.retention_ms
        head = self.head
        events = self.events
        while head < len(events) and events[head].enqueued_ms < cutoff:
            head += 1
        dropped = head - self.head
        self.head = head
        if head > 1024 and head * 2 > len(events):
            del events[:head]
            self.head = 0
        return dropped

    def properties(self) -> PartitionProperties:
        """The $management partition reply fields (types applied by the management module).

        As in Azure, the last enqueued event's numbers stay after it passed retention;
        ``is_partition_empty`` says whether any event is still retained. An empty partition's beginning is its
        last sequence number (-1 when it never had an event), as Azure reports it; KEDA's count of a partition
        without a checkpoint (``last - beginning + 1`` unless they are equal) relies on it.
        """
        empty = self.head >= len(self.events)
        return {
            "begin_sequence_number": self.next_sequence - 1 if empty else self.first_sequence,
            "last_enqueued_sequence_number": self.next_sequence - 1,
            "last_enqueued_offset": str(self.last_offset),
            "last_enqueued_time_utc": self.last_enqueued_ms,
            "is_partition_empty": empty,
        }


class Receiver(Protocol):
    """What the broker needs from a consumer link: its identifier, and a way to take its partition away."""

    @property
    def identifier(self) -> str | None:
        """The client's name for the receiver (``com.microsoft:receiver-name``), if it sent one."""
        ...

    def disconnect(self, condition: str, description: str) -> None: ...


@dataclass
class _Owner:
    receiver: Receiver
    owner_level: int | None


class Hub:
    """One event hub: partitions, routing and per consumer group receiver bookkeeping."""

    def __init__(self, config: HubConfig, data_dir: Path | None) -> None:
        self.config = config
        self.name = config.name
        self.created_ms = now_ms()
        retention_ms = int(config.retention_hours * 3600 * 1000)
        self.partitions = [
            Partition(config.name, pid, retention_ms,
                      PartitionLog(data_dir / config.name / f"{pid}.log") if data_dir else None)
            for pid in config.partition_ids
        ]
        self._next_round_robin = 0
        self._receivers: dict[tuple[str, str], list[_Owner]] = {}

    def partition(self, partition_id: str) -> Partition:
        for p in self.partitions:
            if p.id == partition_id:
                return p
        raise AmqpError(errors.NOT_FOUND, f"partition {partition_id!r} does not exist in event hub {self.name!r} "
                        f"(partitions 0 to {len(self.partitions) - 1})")

    def route(self, partition_key: str | None) -> Partition:
        if partition_key is not None:
            return self.partitions[partition_for_key(partition_key, len(self.partitions))]
        partition = self.partitions[self._next_round_robin % len(self.partitions)]
        self._next_round_robin += 1
        return partition

    def consumer_group(self, name: str) -> str:
        for group in self.config.consumer_groups:
            if group.lower() == name.lower():
                return group
        raise AmqpError(errors.NOT_FOUND, f"consumer group {name!r} does not exist in event hub {self.name!r}")

    def register(self, group: str, partition_id: str, receiver: Receiver, owner_level: int | None) -> None:
        """Admit a receiver, applying the owner-level rules, then the receiver limit, of the module docstring."""
        owners = self._receivers.setdefault((group, partition_id), [])
        levels = [o.owner_level for o in owners if o.owner_level is not None]
        highest = max(levels) if levels else None
        if highest is not None and (owner_level is None or owner_level < highest):
            if owner_level is None:
                text = (f"At least one receiver for partition {partition_id} of {self.name}/{group} is created with "
                        f"epoch of '{highest}', and so non-epoch receiver is not allowed.")
            else:
                text = (f"Receiver with a higher epoch of '{highest}' already exists for partition {partition_id} "
                        f"of {self.name}/{group}; a receiver with epoch '{owner_level}' cannot be created.")
            raise AmqpError(errors.LINK_STOLEN, text)
        if owner_level is not None:
            for other in list(owners):
                owners.remove(other)
                other.receiver.disconnect(
                    errors.LINK_STOLEN,
                    f"New receiver with higher epoch of '{owner_level}' is created hence current receiver with epoch "
                    f"'{other.owner_level}' is getting disconnected (partition {partition_id} of {self.name}/{group}).",
                )
        elif len(owners) >= MAX_RECEIVERS_PER_PARTITION:
            connected = ", ".join(o.receiver.identifier or "nil" for o in owners)
            raise AmqpError(errors.RESOURCE_LIMIT_EXCEEDED,
                            f"Exceeded the maximum number of allowed receivers per partition in a consumer group "
                            f"which is {MAX_RECEIVERS_PER_PARTITION}. List of connected receivers - {connected}. "
                            f"(partition {partition_id} of {self.name}/{group})")
        owners.append(_Owner(receiver, owner_level))

    def unregister(self, group: str, partition_id: str, receiver: Receiver) -> None:
        owners = self._receivers.get((group, partition_id), [])
        owners[:] = [o for o in owners if o.receiver is not receiver]


class Broker:
    """The namespace: its hubs, and the retention sweep."""

    def __init__(self, namespace: NamespaceConfig, data_dir: Path | None = None) -> None:
        self.namespace = namespace
        self.data_dir = data_dir
        self.hubs = {name.lower(): Hub(hub, data_dir) for name, hub in namespace.hubs.items()}

    def hub(self, name: str) -> Hub:
        hub = self.hubs.get(name.lower())
        if hub is None:
            raise AmqpError(errors.NOT_FOUND, f"event hub {name!r} does not exist in namespace "
                            f"{self.namespace.name!r} (hubs: {', '.join(h.name for h in self.hubs.values())})")
        return hub

    def expire(self) -> None:
        now = now_ms()
        for hub in self.hubs.values():
            for partition in hub.partitions:
                dropped = partition.expire(now)
                if dropped:
                    logger.info("%s/%s: %s events passed retention", hub.name, partition.id, dropped)

    def close(self) -> None:
        for hub in self.hubs.values():
            for partition in hub.partitions:
                if partition.log is not None:
                    partition.log.close()
