"""A minimal blocking AMQP 1.0 client for what the SDK cannot be made to do.

The azure-eventhub SDK checks partition ids, message sizes and credit itself,
and never uses SASL PLAIN, so those server paths are reached with this client:
raw frames, encoded with the emulator's codec (whose output the SDK tests
already check against the SDK's own decoder).
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from emulators.eventhubs import frames
from emulators.eventhubs.codec import Described, Symbol, UInt, ULong

_HEADER = struct.Struct(">IBBH")


def source(address: str, selector: str | None = None) -> Described:
    filters = None
    if selector is not None:
        filters = {Symbol("apache.org:selector-filter:string"):
                   Described(Symbol("apache.org:selector-filter:string"), selector)}
    return Described(ULong(frames.SOURCE), [address, None, None, None, None, None, None, filters, None, None, None])


def target(address: str) -> Described:
    return Described(ULong(frames.TARGET), [address, None, None, None, None, None, None])


class RawClient:
    """One connection; :meth:`expect` reads frames until one of the wanted performatives arrives."""

    def __init__(self, host: str, port: int, *, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self.buffer = b""
        self.pending: list[tuple[int, int, list[Any], bytes]] = []
        self.next_incoming_id = 0  # transfer frames read so far (the session's next-incoming-id)
        self.incoming_window = 100000

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed with {len(self.buffer)} of {n} bytes read")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_frame(self) -> tuple[int, int, list[Any], bytes]:
        """(channel, performative, fields, payload); empty (heartbeat) frames are skipped."""
        if self.pending:
            return self.pending.pop(0)
        while True:
            size, doff, _type, channel = _HEADER.unpack(self.read_exact(8))
            body = self.read_exact(size - 8)[doff * 4 - 8:]
            if body:
                code, fields, payload = frames.parse_body(body)
                if code == frames.TRANSFER:
                    self.next_incoming_id += 1
                return channel, code, fields, payload

    def expect(self, *codes: int) -> tuple[int, list[Any], bytes]:
        """Read until a frame with one of ``codes`` arrives; returns (code, fields, payload)."""
        while True:
            _channel, code, fields, payload = self.read_frame()
            if code in codes:
                return code, fields, payload

    def sasl(self, mechanism: str, response: bytes | None = None) -> int:
        """Run the SASL layer; returns the outcome code (0 = ok)."""
        self.send_raw(frames.SASL_HEADER)
        assert self.read_exact(8) == frames.SASL_HEADER
        self.expect(frames.SASL_MECHANISMS)
        self.send_raw(frames.frame(0, frames.SASL_INIT, [Symbol(mechanism), response, None],
                                   frame_type=frames.FRAME_SASL))
        _, fields, _ = self.expect(frames.SASL_OUTCOME)
        return int(fields[0])

    def open(self, *, mechanism: str = "ANONYMOUS", response: bytes | None = None, max_frame_size: int = 65536,
             incoming_window: int = 100000) -> None:
        """SASL, AMQP header, open and one session on channel 0."""
        assert self.sasl(mechanism, response) == 0
        self.send_raw(frames.AMQP_HEADER)
        assert self.read_exact(8) == frames.AMQP_HEADER
        self.send_raw(frames.frame(0, frames.OPEN, ["raw-client", "localhost", UInt(max_frame_size), 10]))
        self.expect(frames.OPEN)
        self.incoming_window = incoming_window
        self.send_raw(frames.frame(0, frames.BEGIN, [None, UInt(0), UInt(incoming_window), UInt(100000), UInt(100)]))
        self.expect(frames.BEGIN)

    def attach_receiver(self, handle: int, address: str, selector: str | None = None,
                        properties: dict[Any, Any] | None = None) -> tuple[list[Any], list[Any] | None]:
        """Attach a receiving link; returns the server's attach fields and its detach fields (if refused)."""
        self.send_raw(frames.frame(0, frames.ATTACH, [
            f"recv-{handle}", UInt(handle), frames.ROLE_RECEIVER, None, None, source(address, selector),
            target("client"), None, None, None, None, None, None, properties]))
        return self._attach_reply()

    def attach_sender(self, handle: int, address: str) -> tuple[list[Any], list[Any] | None]:
        self.send_raw(frames.frame(0, frames.ATTACH, [
            f"send-{handle}", UInt(handle), frames.ROLE_SENDER, None, None, source("client"), target(address),
            None, None, UInt(0)]))
        return self._attach_reply()

    def _attach_reply(self) -> tuple[list[Any], list[Any] | None]:
        """The emulator refuses a link with its attach and, in the same write, a closing detach."""
        _, attach, _ = self.expect(frames.ATTACH)
        self.sock.settimeout(0.3)
        try:
            frame = self.read_frame()
        except TimeoutError:
            return attach, None
        finally:
            self.sock.settimeout(self.timeout)
        if frame[1] == frames.DETACH:
            return attach, frame[2]
        self.pending.append(frame)
        return attach, None

    def flow(self, handle: int, *, delivery_count: int, credit: int, drain: bool = False,
             incoming_window: int | None = None) -> None:
        """A link flow, which also carries the session's fields: the window is ``incoming_window`` transfers
        from those read so far (unchanged if not given)."""
        if incoming_window is not None:
            self.incoming_window = incoming_window
        self.send_raw(frames.frame(0, frames.FLOW, [
            UInt(self.next_incoming_id), UInt(self.incoming_window), UInt(0), UInt(100000), UInt(handle),
            UInt(delivery_count), UInt(credit), None, drain, False]))

    def transfer(self, handle: int, delivery_id: int, payload: bytes, *, message_format: int = 0,
                 more: bool = False) -> None:
        self.send_raw(frames.frame(0, frames.TRANSFER, [
            UInt(handle), UInt(delivery_id), delivery_id.to_bytes(4, "big"), UInt(message_format), False, more],
            payload))


def condition(detach_fields: list[Any] | None) -> str | None:
    """The error condition of a detach (or end/close) frame's fields."""
    if not detach_fields:
        return None
    error = detach_fields[-1] if len(detach_fields) == 3 else detach_fields[0]
    return str(error.value[0]) if isinstance(error, Described) else None
