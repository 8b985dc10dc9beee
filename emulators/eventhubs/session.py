"""An AMQP session: its windows, its links, and the attach/detach rules (AMQP 1.0 part 2, 2.5 to 2.7).

Transfer ids count frames and delivery ids count messages, each from 0. The
emulator's incoming window is large and re-advertised with every flow it sends,
so publishers are paced by link credit only. Outgoing deliveries respect the
client's incoming window (the SDK re-opens it with a session flow) and the
connection's write backpressure, frame by frame: an event larger than the
client's max frame size may stop part way and is finished when the window opens
again, by any flow (with or without a link's handle). The small $cbs and
$management replies are sent whole.

A link the emulator refuses (unknown entity, no token, owner level too low...)
is answered as Azure does: an attach echoing both termini, immediately followed
by a closing detach carrying the error. (AMQP also allows a null terminus in
that attach, but azure-eventhub's aio consumer then drops the error and keeps
re-attaching; with the termini echoed both the sync and aio clients raise it.)

A link endpoint is gone only once both detaches are exchanged (part 2, 2.6.5):
until the client's detach arrives, its handle stays reserved in ``detaching`` and
the flows, transfers and dispositions it sent before seeing ours are ignored. The
SDK sends a flow right after its attach, so escalating those to a session error
would drop the connection and hide the refusal behind an endless reconnect.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from emulators.eventhubs import errors, frames
from emulators.eventhubs.codec import Described
from emulators.eventhubs.errors import AmqpError
from emulators.eventhubs.frames import ROLE_RECEIVER, ROLE_SENDER
from emulators.eventhubs.links import (
    MAX_MESSAGE_SIZE,
    ConsumeLink,
    Link,
    PublishLink,
    ReplyLink,
    RequestLink,
    entity_path,
    terminus_address,
)

if TYPE_CHECKING:
    from emulators.eventhubs.connection import Connection

logger = logging.getLogger(__name__)

WINDOW = 2**31 - 1
HANDLE_MAX = 4095
_NODES = {"$cbs": "$cbs", "$management": "$management"}


class Session:
    """One session of a connection; ``channel`` is ours, ``remote_channel`` the client's."""

    def __init__(self, connection: Connection, channel: int, remote_channel: int, begin: list[Any]) -> None:
        self.connection = connection
        self.channel = channel
        self.remote_channel = remote_channel
        self.next_incoming_id = int(begin[1] or 0)
        self.remote_incoming_window = int(begin[2] or 0)
        self.next_outgoing_id = 0
        self.next_delivery_id = 0
        self.links: dict[int, Link] = {}  # by the client's handle
        self.detaching: set[int] = set()  # client handles we detached, awaiting the client's detach
        self.ended = False

    # ------------------------------------------------------------ lifecycle

    def begin_reply(self) -> None:
        self.connection.send(frames.begin_frame(self.channel, self.remote_channel, self.next_outgoing_id,
                                                WINDOW, WINDOW, HANDLE_MAX))

    def close_links(self) -> None:
        for link in list(self.links.values()):
            link.close()
        self.links.clear()

    def end(self, error: AmqpError | None = None) -> None:
        """End the session from our side (on a session error or when the client ended it)."""
        if self.ended:
            return
        self.ended = True
        self.close_links()
        err = frames.error_value(error.condition, error.description) if error else None
        self.connection.send(frames.end_frame(self.channel, err))

    # ------------------------------------------------------------ incoming frames

    def on_frame(self, code: int, fields: list[Any], payload: bytes) -> None:
        if code == frames.TRANSFER:
            self.next_incoming_id += 1
            link = self.links.get(int(fields[0]))
            if link is None and int(fields[0]) in self.detaching:
                return  # sent before the client saw our detach
            if link is None:
                raise AmqpError(errors.UNATTACHED_HANDLE, f"transfer on handle {fields[0]}, which is not attached")
            try:
                link.on_transfer(fields, payload)
            except AmqpError as exc:
                self.detach(link, exc.condition, exc.description)
        elif code == frames.FLOW:
            self.on_flow(fields)
        elif code == frames.ATTACH:
            self.on_attach(fields)
        elif code == frames.DISPOSITION:
            pass  # the emulator's own deliveries are sent settled
        elif code == frames.DETACH:
            self.on_detach(fields)
        elif code == frames.END:
            self.end()
            self.connection.forget_session(self)
        else:
            raise AmqpError(errors.NOT_ALLOWED, f"{frames.NAMES.get(code, code)} is not allowed on a session")

    def on_flow(self, fields: list[Any]) -> None:
        """Every flow carries the session's fields, with or without a link's handle (part 2, 2.7.4).

        So a flow for one link can be what re-opens the window that stalled another: after the link's own
        flow is handled, the other consumers are resumed when the window was closed and is open now (a
        consumer only stops with credit and events left when the window ran out, so an open window that
        stays open needs no resume).
        """
        stalled = self.remote_incoming_window <= 0
        next_incoming_id = int(fields[0]) if fields[0] is not None else 0
        self.remote_incoming_window = next_incoming_id + int(fields[1] or 0) - self.next_outgoing_id
        if fields[4] is None:
            self.resume()
            return
        link = self.links.get(int(fields[4]))
        if link is None and int(fields[4]) not in self.detaching:
            raise AmqpError(errors.UNATTACHED_HANDLE, f"flow on handle {fields[4]}, which is not attached")
        if link is not None:  # else sent before the client saw our detach: its session fields still count
            link.on_flow(fields)  # a consumer pumps itself here
        if stalled and self.remote_incoming_window > 0:
            self.resume(skip=link)

    def resume(self, skip: Link | None = None) -> None:
        """The window opened again (or the transport drained): let consumers (other than ``skip``) send, those
        with a delivery sent in part first (a busy link would otherwise take the window before it is finished)."""
        consumers = [link for link in self.links.values() if isinstance(link, ConsumeLink) and link is not skip]
        for link in sorted(consumers, key=ConsumeLink.idle_part):
            link.pump()

    def on_attach(self, fields: list[Any]) -> None:
        name, remote_handle, role = fields[0], int(fields[1]), fields[2]
        if remote_handle in self.links or remote_handle in self.detaching:
            raise AmqpError(errors.HANDLE_IN_USE, f"handle {remote_handle} is already attached")
        source, target = fields[5], fields[6]
        client_receives = role == ROLE_RECEIVER
        common = (self, name, remote_handle, remote_handle, source, target)
        try:
            path = entity_path(terminus_address(source if client_receives else target))
            node = _NODES.get(path[0].lower()) if len(path) == 1 else None
            if node is not None:
                link: Link = (ReplyLink(*common, node=node) if client_receives
                              else RequestLink(*common, node=node, settled_by_client=fields[3] == 1))
            else:
                self._check_grants(path)
                link = self._entity_link(common, path, client_receives, fields)
        except AmqpError as exc:
            logger.info("refusing link %r: %s", name, exc)
            self._refuse(fields, exc)
            return
        self.links[remote_handle] = link
        if isinstance(link, ConsumeLink):
            try:
                link.start()
            except AmqpError as exc:
                del self.links[remote_handle]
                link.close()
                logger.info("refusing consumer %r: %s", name, exc)
                self._refuse(fields, exc)
            return
        self.send_attach(link, snd_settle_mode=int(fields[3]) if fields[3] is not None else 2)
        if isinstance(link, (PublishLink, RequestLink)):
            link.grant()

    def _check_grants(self, path: list[str]) -> None:
        """Refuse a hub link no token accepted on this connection covers (see ``management.Grants``)."""
        grants = self.connection.grants
        if not grants:
            raise AmqpError(errors.UNAUTHORIZED, "no valid token: put a SAS token on $cbs first, "
                            "or authenticate with SASL PLAIN")
        if path and not grants.covers(path):
            raise AmqpError(errors.UNAUTHORIZED, f"Unauthorized access to event hub {path[0]!r} "
                            f"(address {'/'.join(path)!r}): no token put on $cbs on this connection covers it; "
                            f"tokens accepted for: {grants.describe()}")

    def _entity_link(self, common: tuple[Any, ...], path: list[str], client_receives: bool,
                     fields: list[Any]) -> Link:
        if not path:
            raise AmqpError(errors.INVALID_FIELD, "the link address names no event hub")
        hub = self.connection.broker.hub(path[0])
        if client_receives:
            if len(path) != 5 or path[1].lower() != "consumergroups" or path[3].lower() != "partitions":
                raise AmqpError(errors.NOT_FOUND, f"cannot receive from {'/'.join(path)!r}: use "
                                "<hub>/ConsumerGroups/<group>/Partitions/<id>")
            group = hub.consumer_group(path[2])
            return ConsumeLink(*common, hub=hub, group=group, partition=hub.partition(path[4]),
                               properties=fields[13], desired=fields[12])
        if len(path) == 1:
            return PublishLink(*common, hub=hub, partition=None, settled_by_client=fields[3] == 1)
        if len(path) == 3 and path[1].lower() == "partitions":
            return PublishLink(*common, hub=hub, partition=hub.partition(path[2]), settled_by_client=fields[3] == 1)
        raise AmqpError(errors.NOT_FOUND, f"cannot send to {'/'.join(path)!r}: use <hub> or <hub>/Partitions/<id>")

    def _refuse(self, fields: list[Any], error: AmqpError) -> None:
        client_receives = fields[2] == ROLE_RECEIVER
        handle = int(fields[1])
        self.connection.send(frames.attach_frame(
            self.channel, name=fields[0], handle=handle,
            role=ROLE_SENDER if client_receives else ROLE_RECEIVER,
            snd_settle_mode=int(fields[3]) if fields[3] is not None else 2, rcv_settle_mode=0,
            source=fields[5], target=fields[6],
            initial_delivery_count=0 if client_receives else None, max_message_size=MAX_MESSAGE_SIZE,
        ))
        self.detaching.add(handle)
        self.connection.send(frames.detach_frame(self.channel, handle, True,
                                                 frames.error_value(error.condition, error.description)))

    def on_detach(self, fields: list[Any]) -> None:
        self.detaching.discard(int(fields[0]))  # both detaches exchanged: the handle is free again
        link = self.links.pop(int(fields[0]), None)
        if link is None:
            return  # a link we refused or already detached: nothing left to release
        link.close()
        self.connection.send(frames.detach_frame(self.channel, link.handle, bool(fields[1])))

    # ------------------------------------------------------------ outgoing

    def detach(self, link: Link, condition: str, description: str) -> None:
        """Close ``link`` from our side with an error."""
        if self.links.get(link.remote_handle) is link:
            del self.links[link.remote_handle]
            self.detaching.add(link.remote_handle)
        if not link.detached:
            link.close()
        self.connection.send(frames.detach_frame(self.channel, link.handle, True,
                                                 frames.error_value(condition, description)))
        self.connection.flush_soon()

    def send_attach(self, link: Link, *, snd_settle_mode: int, offered: list[str] | None = None) -> None:
        sending = link.role == ROLE_SENDER
        self.connection.send(frames.attach_frame(
            self.channel, name=link.name, handle=link.handle, role=link.role,
            snd_settle_mode=snd_settle_mode, rcv_settle_mode=0, source=link.source, target=link.target,
            initial_delivery_count=0 if sending else None, max_message_size=MAX_MESSAGE_SIZE,
            offered_capabilities=offered,
        ))

    def send_link_flow(self, link: Link, *, delivery_count: int, link_credit: int, available: int | None = None,
                       drain: bool = False) -> None:
        self.connection.send(frames.flow_frame(
            self.channel, next_incoming_id=self.next_incoming_id, incoming_window=WINDOW,
            next_outgoing_id=self.next_outgoing_id, outgoing_window=WINDOW, handle=link.handle,
            delivery_count=delivery_count & 0xFFFFFFFF, link_credit=max(link_credit, 0), available=available,
            drain=drain,
        ))

    def send_disposition(self, delivery_id: int, state: Described) -> None:
        self.connection.send(frames.disposition_frame(self.channel, role=ROLE_RECEIVER, first=delivery_id,
                                                      last=delivery_id, settled=True, state=state))

    def can_send(self) -> bool:
        return self.remote_incoming_window > 0 and self.connection.writable and not self.ended

    def send_delivery(self, link: Link, payload: bytes) -> None:
        """Send one settled delivery whole, whatever the client's window: for the small $cbs/$management replies.

        Consumers, whose events may take many frames, use :meth:`next_delivery` and :meth:`send_frames`.
        """
        delivery_id = self.next_delivery()
        view = memoryview(payload)
        chunk = self._chunk()
        offset = 0
        while True:
            offset = self._send_frame(link, delivery_id, view, offset, chunk)
            if offset >= len(view):
                return

    def next_delivery(self) -> int:
        """The delivery id for a new delivery (delivery ids count messages across the session's links)."""
        delivery_id = self.next_delivery_id & 0xFFFFFFFF
        self.next_delivery_id += 1
        return delivery_id

    def send_frames(self, link: Link, delivery_id: int, payload: memoryview, offset: int) -> int:
        """Send ``payload`` from ``offset`` in frames while :meth:`can_send`; returns the offset reached.

        A sender must not send more transfer frames than the client's incoming window (part 2, 2.5.6), so a
        delivery larger than the client's max frame size may stop part way: the caller keeps the offset and
        sends the rest when the window opens again. ``payload`` is never empty (a message has a body).
        """
        chunk = self._chunk()
        while offset < len(payload) and self.can_send():
            offset = self._send_frame(link, delivery_id, payload, offset, chunk)
        return offset

    def _chunk(self) -> int:
        return self.connection.peer_max_frame_size - frames.transfer_overhead()

    def _send_frame(self, link: Link, delivery_id: int, payload: memoryview, offset: int, chunk: int) -> int:
        end = min(offset + chunk, len(payload))
        self.connection.send(frames.transfer_frame(self.channel, link.handle, delivery_id, delivery_id,
                                                   end < len(payload), payload[offset:end]))
        self.next_outgoing_id += 1
        self.remote_incoming_window -= 1
        return end

    def reply(self, node: str, payload: bytes) -> None:
        """Queue a $cbs/$management reply on the client's receiving link for ``node``."""
        for link in self.links.values():
            if isinstance(link, ReplyLink) and link.node == node:
                link.pending.append(payload)
                link.send_pending()
                return
        logger.warning("a %s request arrived without a reply link attached; the reply is dropped", node)
