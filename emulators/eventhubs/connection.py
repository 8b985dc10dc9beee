"""One client connection: protocol headers, SASL, open/close, frames to sessions.

Phases: the SASL header (or the plain AMQP header: such a connection is
anonymous), SASL mechanisms ANONYMOUS and PLAIN, then the AMQP header, then
frames. PLAIN with user ``RootManageSharedAccessKey`` and password
``SAS_KEY_VALUE`` authorises the connection for every hub at once; otherwise
a ``$cbs`` put-token whose audience covers the hub must come before a hub link
is attached (``self.grants``, see :mod:`emulators.eventhubs.management`).

Outgoing frames are collected and written with one ``writelines`` per burst:
at the end of each ``data_received`` or in a callback scheduled when another
connection's publish wakes a consumer here. The SDK resets its socket right
after Close; a reset is treated like an orderly end.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from emulators.eventhubs import errors, frames, management
from emulators.eventhubs.broker import Broker
from emulators.eventhubs.codec import Array, Symbol, UByte
from emulators.eventhubs.errors import AmqpError, ConnectionFatal, DecodeError
from emulators.eventhubs.session import Session

logger = logging.getLogger(__name__)

MAX_FRAME_SIZE = 1024 * 1024
CHANNEL_MAX = 255
HIGH_WATER = 4 * 1024 * 1024
_HEADER = struct.Struct(">IBBH")


class Connection(asyncio.Protocol):
    """The emulator's side of one TCP connection."""

    def __init__(self, broker: Broker, container_id: str, on_close: Callable[[Connection], None]) -> None:
        self.broker = broker
        self.container_id = container_id
        self._on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.buffer = bytearray()
        self.phase = "header"
        self.sasl_done = False
        self.grants = management.Grants()
        self.hostname: str | None = None  # from the client's open frame, without port
        self.opened = False
        self.closed = False
        self.peer_max_frame_size = 512
        self.sessions: dict[int, Session] = {}  # by the client's channel
        # channels whose session ended: frames the client sent there before it saw the end are ignored
        self.ended_channels: set[int] = set()
        self.writable = True
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._heartbeat: asyncio.TimerHandle | None = None
        self._heartbeat_interval = 0.0
        self._sent_since_heartbeat = False
        self.loop = asyncio.get_running_loop()

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        logger.debug("connection from %s", self.peer)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            self._process()
        except ConnectionFatal as exc:
            self._fail(exc)
        except DecodeError as exc:
            self._fail(ConnectionFatal(errors.DECODE_ERROR, str(exc)))
        except AmqpError as exc:
            self._fail(ConnectionFatal(exc.condition, exc.description))
        except Exception:
            logger.exception("internal error on connection %s", self.peer)
            self._fail(ConnectionFatal(errors.INTERNAL_ERROR, "internal emulator error; see the emulator log"))
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        logger.debug("connection %s lost (%s)", self.peer, exc or "closed")
        self.closed = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for session in self.sessions.values():
            session.close_links()
        self.sessions.clear()
        self._on_close(self)

    def pause_writing(self) -> None:
        logger.debug("connection %s is not reading fast enough: output paused", self.peer)
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        for session in list(self.sessions.values()):
            session.resume()
        self.flush()

    # ------------------------------------------------------------ output

    def send(self, data: bytes) -> None:
        self._out.append(data)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(self._out)
            self._sent_since_heartbeat = True
        self._out = []

    def flush_soon(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop, then write what it produced."""
        def run() -> None:
            if not self.closed:
                callback()
                self.flush()
        self.loop.call_soon(run)

    def close(self, error: AmqpError | None = None) -> None:
        """Close from our side (shutdown or a connection error)."""
        if self.closed:
            return
        if self.opened:
            self.send(frames.close_frame(frames.error_value(error.condition, error.description) if error else None))
        self.flush()
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: AmqpError) -> None:
        logger.warning("closing connection %s: %s", self.peer, error)
        if not self.opened and self.transport is not None:
            self.flush()
            self.closed = True
            self.transport.close()
            return
        self.close(error)

    # ------------------------------------------------------------ input

    def _process(self) -> None:
        buf = self.buffer
        pos = 0
        while not self.closed:
            if self.phase == "header":
                if len(buf) - pos < 8:
                    break
                self._on_header(bytes(buf[pos : pos + 8]))
                pos += 8
                continue
            if len(buf) - pos < 8:
                break
            size, doff, frame_type, channel = _HEADER.unpack_from(buf, pos)
            if size < 8 or doff < 2:
                raise ConnectionFatal(errors.FRAMING_ERROR, f"bad frame header (size {size}, doff {doff})")
            if size > MAX_FRAME_SIZE:
                raise ConnectionFatal(errors.FRAMING_ERROR, f"frame of {size} bytes exceeds max-frame-size "
                                      f"{MAX_FRAME_SIZE}")
            if len(buf) - pos < size:
                break
            body = bytes(buf[pos + doff * 4 : pos + size])
            pos += size
            if not body:
                continue  # heartbeat
            if frame_type == frames.FRAME_SASL:
                self._on_sasl(*frames.parse_body(body)[:2])
            elif frame_type == frames.FRAME_AMQP and self.phase == "amqp":
                code, fields, payload = frames.parse_body(body)
                self._on_frame(channel, code, fields, payload)
            else:
                raise ConnectionFatal(errors.FRAMING_ERROR, f"unexpected frame type {frame_type} in {self.phase}")
        del buf[:pos]

    def _on_header(self, header: bytes) -> None:
        if header == frames.SASL_HEADER and not self.sasl_done:
            self.send(frames.SASL_HEADER)
            mechanisms = Array(0xA3, [Symbol("ANONYMOUS"), Symbol("PLAIN")])
            self.send(frames.frame(0, frames.SASL_MECHANISMS, [mechanisms], frame_type=frames.FRAME_SASL))
            self.phase = "sasl"
        elif header == frames.AMQP_HEADER:
            self.send(frames.AMQP_HEADER)
            self.phase = "amqp"
        else:
            # Answer with the header we support, then close (part 2, section 2.2).
            self.send(frames.AMQP_HEADER if self.sasl_done else frames.SASL_HEADER)
            self.flush()
            logger.info("connection %s sent unsupported protocol header %r (TLS is not supported)", self.peer, header)
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def _on_sasl(self, code: int, fields: list[Any]) -> None:
        if code != frames.SASL_INIT or self.phase != "sasl":
            raise ConnectionFatal(errors.NOT_ALLOWED, f"unexpected {frames.NAMES.get(code, code)} during SASL")
        mechanism, response = fields[0], fields[1]
        ok = True
        if mechanism == "PLAIN":
            parts = bytes(response or b"").split(b"\x00")
            ok = len(parts) == 3 and parts[1].decode(errors="replace") == management.KEY_NAME \
                and parts[2].decode(errors="replace") == management.KEY_VALUE
            if ok:
                self.grants.grant_all()
        elif mechanism != "ANONYMOUS":
            ok = False
        outcome = 0 if ok else 1
        self.send(frames.frame(0, frames.SASL_OUTCOME, [UByte(outcome), None], frame_type=frames.FRAME_SASL))
        if ok:
            self.sasl_done = True
            self.phase = "header"
        else:
            logger.info("SASL %s refused for %s", mechanism, self.peer)
            self.flush()
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def _on_frame(self, channel: int, code: int, fields: list[Any], payload: bytes) -> None:
        if code == frames.OPEN:
            self._on_open(fields)
            return
        if not self.opened:
            raise ConnectionFatal(errors.NOT_ALLOWED, f"{frames.NAMES.get(code, code)} before open")
        if code == frames.CLOSE:
            self.send(frames.close_frame())
            self.flush()
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            return
        if code == frames.BEGIN:
            self._on_begin(channel, fields)
            return
        session = self.sessions.get(channel)
        if session is None and channel in self.ended_channels:
            logger.debug("ignoring %s on channel %s, whose session has ended", frames.NAMES.get(code, code), channel)
            return
        if session is None:
            raise ConnectionFatal(errors.NOT_ALLOWED, f"{frames.NAMES.get(code, code)} on channel {channel}, "
                                  "which has no session")
        try:
            session.on_frame(code, fields, payload)
        except AmqpError as exc:
            if isinstance(exc, ConnectionFatal):
                raise
            logger.warning("ending session %s of %s: %s", channel, self.peer, exc)
            session.end(exc)
            self.forget_session(session)

    def _on_open(self, fields: list[Any]) -> None:
        if self.opened:
            raise ConnectionFatal(errors.NOT_ALLOWED, "second open on the connection")
        self.opened = True
        self.hostname = _host_of(fields[1])
        self.peer_max_frame_size = min(int(fields[2]) if fields[2] is not None else 2**32 - 1, MAX_FRAME_SIZE)
        if self.peer_max_frame_size < 512:
            raise ConnectionFatal(errors.INVALID_FIELD, "max-frame-size below 512")
        self.send(frames.open_frame(self.container_id, MAX_FRAME_SIZE, CHANNEL_MAX, None))
        if fields[4]:  # the client's idle timeout: keep it alive with empty frames at half of it
            self._heartbeat_interval = int(fields[4]) / 2000
            self._heartbeat = self.loop.call_later(self._heartbeat_interval, self._beat)

    def _beat(self) -> None:
        if self.closed:
            return
        if not self._sent_since_heartbeat:
            self.send(frames.EMPTY_FRAME)
            self.flush()
        self._sent_since_heartbeat = False
        self._heartbeat = self.loop.call_later(self._heartbeat_interval, self._beat)

    def _on_begin(self, channel: int, fields: list[Any]) -> None:
        if fields[0] is not None:
            raise ConnectionFatal(errors.NOT_IMPLEMENTED, "the emulator does not begin sessions itself")
        if channel in self.sessions:
            raise ConnectionFatal(errors.NOT_ALLOWED, f"channel {channel} already has a session")
        if channel > CHANNEL_MAX:
            raise ConnectionFatal(errors.NOT_ALLOWED, f"channel {channel} is above channel-max {CHANNEL_MAX}")
        used = {s.channel for s in self.sessions.values()}
        local = next(c for c in range(CHANNEL_MAX + 1) if c not in used)
        session = Session(self, local, channel, fields)
        self.ended_channels.discard(channel)
        self.sessions[channel] = session
        session.begin_reply()

    def forget_session(self, session: Session) -> None:
        if self.sessions.get(session.remote_channel) is session:
            del self.sessions[session.remote_channel]
            self.ended_channels.add(session.remote_channel)

    def shutdown(self) -> None:
        """Server stopping: close with connection:forced, as a service restart would."""
        self.close(AmqpError(errors.CONNECTION_FORCED, "the emulator is shutting down"))


def _host_of(hostname: Any) -> str | None:
    """The host of an open frame's ``hostname`` (which may carry a port), or None."""
    if isinstance(hostname, bytes):
        hostname = hostname.decode("utf-8", "replace")
    if not isinstance(hostname, str) or not hostname:
        return None
    try:
        return urlsplit(f"//{hostname}").hostname or None
    except ValueError:
        return None
