"""The link kinds the emulator serves, each driven by its session.

* :class:`PublishLink`: the client sends events to ``<hub>`` or ``<hub>/Partitions/<id>``.
* :class:`ConsumeLink`: the client receives from ``<hub>/ConsumerGroups/<cg>/Partitions/<id>``.
* :class:`RequestLink` / :class:`ReplyLink`: the two halves of ``$cbs`` and ``$management``.

Addresses may be bare paths or full ``amqps://host/path`` URLs; names are
matched case-insensitively, like Azure.

Credit: publishers get :data:`PUBLISH_CREDIT` and are topped up once half is
used. Consumers are sent at most the credit they grant (AMQP 1.0 part 2,
section 2.6.7): ``credit = delivery-count(receiver) + link-credit - delivery-count(us)``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from emulators.eventhubs import errors, management, message
from emulators.eventhubs.broker import Hub, Partition, now_ms, parse_selector
from emulators.eventhubs.codec import Described, Long, Symbol, Timestamp
from emulators.eventhubs.errors import AmqpError, DecodeError
from emulators.eventhubs.frames import (
    ACCEPTED_STATE,
    ROLE_RECEIVER,
    ROLE_SENDER,
    SND_SETTLED,
    rejected_state,
)

if TYPE_CHECKING:
    from emulators.eventhubs.session import Session

logger = logging.getLogger(__name__)

MAX_MESSAGE_SIZE = 1024 * 1024
PUBLISH_CREDIT = 1000
SELECTOR_FILTER = "apache.org:selector-filter:string"
SELECTOR_CODE = 0x0000468C00000004
EPOCH = "com.microsoft:epoch"
RECEIVER_NAME = "com.microsoft:receiver-name"
RUNTIME_METRIC = "com.microsoft:enable-receiver-runtime-metric"
DELIVERIES_PER_PUMP = 512
FLUSH_BYTES = 1 << 20  # output is handed to the transport at least this often within a chunk


def entity_path(address: Any) -> list[str]:
    """The path segments of a link address, without scheme and host."""
    if not isinstance(address, str) or not address:
        raise AmqpError(errors.INVALID_FIELD, "the link has no address")
    if "://" in address:
        address = address.split("://", 1)[1]
        address = address.split("/", 1)[1] if "/" in address else ""
    return [part for part in address.split("/") if part]


def terminus_address(terminus: Any) -> Any:
    """The address field of a source or target (a described list)."""
    if isinstance(terminus, Described) and isinstance(terminus.value, list) and terminus.value:
        return terminus.value[0]
    return None


class Link:
    """State shared by every link: names, handles, and the attach reply."""

    role: bool = ROLE_SENDER

    def __init__(self, session: Session, name: str, remote_handle: int, handle: int, source: Any, target: Any) -> None:
        self.session = session
        self.name = name
        self.remote_handle = remote_handle
        self.handle = handle
        self.source = source
        self.target = target
        self.detached = False

    def attach_reply(self, *, snd_settle_mode: int, offered: list[str] | None = None) -> None:
        self.session.send_attach(self, snd_settle_mode=snd_settle_mode, offered=offered)

    def on_flow(self, fields: list[Any]) -> None:
        """A flow frame for this link (fields as decoded)."""

    def on_transfer(self, fields: list[Any], payload: bytes) -> None:
        raise AmqpError(errors.NOT_ALLOWED, f"link {self.name!r} does not accept transfers")

    def close(self) -> None:
        """Release what the link holds (called once, whichever side detached)."""
        self.detached = True


class _Receiving(Link):
    """A link on which the client sends: assembles multi-frame transfers and settles them."""

    role = ROLE_RECEIVER

    def __init__(self, *args: Any, settled_by_client: bool) -> None:
        super().__init__(*args)
        self.settled_by_client = settled_by_client
        self.credit = 0
        self.delivery_count = 0
        self._parts: list[bytes] = []
        self._size = 0
        self._first: list[Any] | None = None

    def grant(self) -> None:
        self.credit = PUBLISH_CREDIT
        self.session.send_link_flow(self, delivery_count=self.delivery_count, link_credit=self.credit)

    def on_flow(self, fields: list[Any]) -> None:
        if fields[5] is not None:
            self.delivery_count = int(fields[5])
        if fields[9]:  # echo
            self.session.send_link_flow(self, delivery_count=self.delivery_count, link_credit=self.credit)

    def on_transfer(self, fields: list[Any], payload: bytes) -> None:
        if self._first is None:
            if fields[1] is None:
                raise AmqpError(errors.INVALID_FIELD, "first transfer of a delivery without delivery-id")
            self._first = fields
        if fields[9]:  # aborted
            self._reset()
            return
        self._size += len(payload)
        if self._size <= MAX_MESSAGE_SIZE:
            self._parts.append(bytes(payload))
        if fields[5]:  # more
            return
        first = self._first
        data = b"".join(self._parts) if len(self._parts) != 1 else self._parts[0]
        size = self._size
        self._reset()
        self.delivery_count += 1
        self.credit -= 1
        if size > MAX_MESSAGE_SIZE:
            state = rejected_state(errors.MESSAGE_SIZE_EXCEEDED,
                                   f"the message is {size} bytes; the maximum message size is {MAX_MESSAGE_SIZE} bytes")
        else:
            state = self.deliver(data, int(first[3] or 0))
        settled = bool(first[4]) or self.settled_by_client
        if not settled:
            self.session.send_disposition(int(first[1]), state)
        if self.credit <= PUBLISH_CREDIT // 2:
            self.grant()

    def _reset(self) -> None:
        self._parts = []
        self._size = 0
        self._first = None

    def deliver(self, data: bytes, message_format: int) -> Described:
        """Process one complete message; returns the delivery state to settle it with."""
        raise NotImplementedError


class PublishLink(_Receiving):
    """Events from a producer, to a hub (routed) or to one partition."""

    def __init__(self, *args: Any, hub: Hub, partition: Partition | None, settled_by_client: bool) -> None:
        super().__init__(*args, settled_by_client=settled_by_client)
        self.hub = hub
        self.partition = partition

    def deliver(self, data: bytes, message_format: int) -> Described:
        try:
            if message_format == message.BATCH_FORMAT:
                inner, key = message.unpack_batch(data)
                incoming = [message.parse_incoming(m) for m in inner]
                if key is None:
                    key = incoming[0].partition_key
            elif message_format == 0:
                incoming = [message.parse_incoming(data)]
                key = incoming[0].partition_key
            else:
                return rejected_state(errors.NOT_IMPLEMENTED, f"unsupported message-format 0x{message_format:08x}")
        except DecodeError as exc:
            return rejected_state(errors.DECODE_ERROR, str(exc))
        partition = self.partition or self.hub.route(key)
        partition.append(incoming)
        return ACCEPTED_STATE


class RequestLink(_Receiving):
    """The client's sending half of ``$cbs`` or ``$management``."""

    def __init__(self, *args: Any, node: str, settled_by_client: bool) -> None:
        super().__init__(*args, settled_by_client=settled_by_client)
        self.node = node

    def deliver(self, data: bytes, message_format: int) -> Described:
        try:
            properties, application, body = message.read_request(data)
        except DecodeError as exc:
            return rejected_state(errors.DECODE_ERROR, str(exc))
        connection = self.session.connection
        if self.node == "$cbs":
            reply = management.put_token(application, body, connection.grants)
        else:
            reply = management.read(connection.broker, application, connection.grants, connection.hostname)
        self.session.reply(self.node, management.encode_reply(properties, reply))
        return ACCEPTED_STATE


class ReplyLink(Link):
    """The client's receiving half of ``$cbs`` or ``$management``: replies wait here for credit."""

    def __init__(self, *args: Any, node: str) -> None:
        super().__init__(*args)
        self.node = node
        self.credit = 0
        self.delivery_count = 0
        self.pending: list[bytes] = []

    def on_flow(self, fields: list[Any]) -> None:
        if fields[6] is not None:
            self.credit = int(fields[5] or 0) + int(fields[6]) - self.delivery_count
        self.send_pending()

    def send_pending(self) -> None:
        while self.pending and self.credit > 0 and not self.detached:
            self.session.send_delivery(self, self.pending.pop(0))
            self.credit -= 1
            self.delivery_count += 1


class ConsumeLink(Link):
    """Events of one partition for one consumer, from a start position, as credit allows."""

    def __init__(self, *args: Any, hub: Hub, group: str, partition: Partition, properties: dict[Any, Any] | None,
                 desired: Any) -> None:
        super().__init__(*args)
        self.hub = hub
        self.group = group
        self.partition = partition
        self.credit = 0
        self.delivery_count = 0
        self.cursor = 0
        self.runtime_metric = _wants(desired, RUNTIME_METRIC)
        epoch = (properties or {}).get(EPOCH)
        self.owner_level = int(epoch) if epoch is not None else None
        name = (properties or {}).get(RECEIVER_NAME)  # named in the receiver-limit error; the Python SDK sends none
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        self.identifier: str | None = str(name) if name else None
        self._scheduled = False
        # a delivery sent in part when the client's window closed: (payload, delivery id, bytes sent)
        self._partial: tuple[memoryview, int, int] | None = None

    def start(self) -> None:
        """Validate the source filter, take ownership, reply to the attach, start delivering."""
        selector = None
        source_fields = self.source.value if isinstance(self.source, Described) else []
        filters = source_fields[7] if len(source_fields) > 7 else None
        for key, value in (filters or {}).items():
            descriptor = value.descriptor if isinstance(value, Described) else None
            if key == SELECTOR_FILTER or descriptor in (SELECTOR_FILTER, SELECTOR_CODE):
                selector = value.value if isinstance(value, Described) else value
            else:
                raise AmqpError(errors.NOT_IMPLEMENTED, f"unsupported source filter {key!r}")
        if isinstance(selector, bytes):
            selector = selector.decode("utf-8", "replace")
        position = parse_selector(selector)
        self.cursor = self.partition.start_sequence(position)
        self.hub.register(self.group, self.partition.id, self, self.owner_level)
        self.attach_reply(snd_settle_mode=SND_SETTLED, offered=[RUNTIME_METRIC] if self.runtime_metric else None)
        self.partition.listeners.add(self.wake)
        logger.debug("consumer %s on %s/%s/%s from sequence %s (owner level %s)", self.name, self.hub.name,
                     self.group, self.partition.id, self.cursor, self.owner_level)

    def on_flow(self, fields: list[Any]) -> None:
        """New credit, or none but the session's fields (a re-opened window): either may let the link send."""
        if fields[6] is not None:
            self.credit = int(fields[5] or 0) + int(fields[6]) - self.delivery_count
        self.pump()
        if fields[6] is None:
            return
        if fields[8]:  # drain: use up the credit, then tell the receiver
            self.delivery_count += max(self.credit, 0)
            self.credit = 0
            self.session.send_link_flow(self, delivery_count=self.delivery_count, link_credit=0, drain=True)
        elif fields[9]:  # echo
            self.session.send_link_flow(self, delivery_count=self.delivery_count, link_credit=self.credit,
                                        available=self.partition.next_sequence - self.cursor)

    def idle_part(self) -> bool:
        """False while a delivery of this link is sent in part (sorts first: :meth:`Session.resume`)."""
        return self._partial is None

    def wake(self) -> None:
        if not self._scheduled and self.credit > 0:
            self._scheduled = True
            self.session.connection.call_soon(self._scheduled_pump)

    def _scheduled_pump(self) -> None:
        self._scheduled = False
        self.pump()

    def pump(self) -> None:
        """Send what is available, within link credit, session window and transport backpressure.

        A delivery counts against credit (and moves the cursor) when its first frame goes, as AMQP counts
        deliveries. Its further frames go only while the client's window allows; the rest waits in
        ``_partial`` and is finished, before any other delivery of this link, when the window opens again.

        Output is flushed after every chunk and every ``FLUSH_BYTES`` within one, so a consumer that stops
        reading pauses the transport (``pause_writing``) after a few megabytes instead of the whole granted
        credit (up to 512 events of 1 MB) piling up here.
        """
        session = self.session
        connection = session.connection
        if self._partial is not None and not self.detached:
            rest, delivery_id, offset = self._partial
            offset = session.send_frames(self, delivery_id, rest, offset)
            self._partial = (rest, delivery_id, offset) if offset < len(rest) else None
            connection.flush()
        while (not self.detached and self._partial is None and self.credit > 0
               and self.cursor < self.partition.next_sequence and session.can_send()):
            limit = min(self.credit, DELIVERIES_PER_PUMP, session.remote_incoming_window)
            batch = self.partition.read(self.cursor, limit)
            if not batch:
                self.cursor = self.partition.next_sequence
                break
            unflushed = 0
            for event in batch:
                if not session.can_send():  # the window is used up, or a paused transport waits
                    break
                payload = event.payload
                if self.runtime_metric:
                    payload = self._with_metrics(event.payload, event.header_len)
                view = memoryview(payload)
                delivery_id = session.next_delivery()
                self.cursor = event.sequence + 1  # events that passed retention while we were behind are skipped
                self.credit -= 1
                self.delivery_count += 1
                offset = session.send_frames(self, delivery_id, view, 0)
                unflushed += offset
                if offset < len(view):
                    self._partial = (view, delivery_id, offset)
                    break
                if unflushed >= FLUSH_BYTES:
                    connection.flush()
                    unflushed = 0
            connection.flush()

    def _with_metrics(self, payload: bytes, header_len: int) -> bytes:
        p = self.partition
        return message.with_delivery_annotations(payload, header_len, {
            "last_enqueued_sequence_number": Long(p.next_sequence - 1),
            "last_enqueued_offset": str(p.last_offset),
            "last_enqueued_time_utc": Timestamp(p.last_enqueued_ms),
            "runtime_info_retrieval_time_utc": Timestamp(now_ms()),
        })

    def disconnect(self, condition: str, description: str) -> None:
        """Taken over by a higher owner level: detach with the error, as Azure does."""
        logger.info("consumer %s on %s/%s/%s disconnected: %s", self.name, self.hub.name, self.group,
                    self.partition.id, description)
        self.session.detach(self, condition, description)

    def close(self) -> None:
        self._partial = None
        self.hub.unregister(self.group, self.partition.id, self)
        self.partition.listeners.discard(self.wake)
        super().close()


def _wants(desired: Any, capability: str) -> bool:
    if desired is None:
        return False
    items = desired.items if hasattr(desired, "items") and not isinstance(desired, dict) else desired
    if isinstance(items, str):
        items = [items]
    return any(Symbol(c) == capability for c in items or [])

