"""AMQP 1.0 frames and performatives (OASIS AMQP 1.0, part 2).

Every performative is encoded with **all** of its fields, trailing nulls
included, as a ``list8``/``list32``: azure-eventhub 5.x reads performatives by
position and crashes on the (legal) shortened lists other servers send. Decoded
performatives are padded with ``None`` up to their full field count, so the
connection code can index fields without length checks.

The transfer header of outgoing deliveries is the hot path of the emulator:
:func:`transfer_frame` packs it from a fixed template with :mod:`struct`.
"""

from __future__ import annotations

import struct
from typing import Any

from emulators.eventhubs import codec
from emulators.eventhubs.codec import Array, Described, Symbol, UByte, UInt, ULong, UShort
from emulators.eventhubs.errors import DecodeError

AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
SASL_HEADER = b"AMQP\x03\x01\x00\x00"
TLS_HEADER = b"AMQP\x02\x01\x00\x00"

FRAME_AMQP = 0x00
FRAME_SASL = 0x01

OPEN, BEGIN, ATTACH, FLOW, TRANSFER, DISPOSITION, DETACH, END, CLOSE = range(0x10, 0x19)
ERROR = 0x1D
RECEIVED, ACCEPTED, REJECTED, RELEASED, MODIFIED = range(0x23, 0x28)
SOURCE, TARGET = 0x28, 0x29
SASL_MECHANISMS, SASL_INIT, SASL_CHALLENGE, SASL_RESPONSE, SASL_OUTCOME = range(0x40, 0x45)

FIELD_COUNTS = {
    OPEN: 10, BEGIN: 8, ATTACH: 14, FLOW: 11, TRANSFER: 11, DISPOSITION: 6, DETACH: 3, END: 1, CLOSE: 1,
    SASL_MECHANISMS: 1, SASL_INIT: 3, SASL_CHALLENGE: 1, SASL_RESPONSE: 1, SASL_OUTCOME: 2,
}
NAMES = {
    OPEN: "open", BEGIN: "begin", ATTACH: "attach", FLOW: "flow", TRANSFER: "transfer",
    DISPOSITION: "disposition", DETACH: "detach", END: "end", CLOSE: "close",
    SASL_MECHANISMS: "sasl-mechanisms", SASL_INIT: "sasl-init", SASL_CHALLENGE: "sasl-challenge",
    SASL_RESPONSE: "sasl-response", SASL_OUTCOME: "sasl-outcome",
}

ROLE_SENDER = False
ROLE_RECEIVER = True
SND_UNSETTLED, SND_SETTLED, SND_MIXED = 0, 1, 2

_HEADER = struct.Struct(">IBBH")
EMPTY_FRAME = _HEADER.pack(8, 2, FRAME_AMQP, 0)


def frame(
    channel: int, performative: int, fields: list[Any], payload: bytes = b"", frame_type: int = FRAME_AMQP
) -> bytes:
    """One frame holding ``performative`` with all its ``fields`` (padded with nulls) and ``payload``."""
    count = FIELD_COUNTS[performative]
    if len(fields) > count:
        raise ValueError(f"{NAMES[performative]} has {count} fields, got {len(fields)}")
    body = bytearray(b"\x00\x53")
    body.append(performative)
    codec.encode_list_into(body, list(fields) + [None] * (count - len(fields)))
    size = 8 + len(body) + len(payload)
    return _HEADER.pack(size, 2, frame_type, channel) + bytes(body) + payload


def error_value(condition: str, description: str | None, info: dict[Any, Any] | None = None) -> Described:
    """An AMQP ``error`` (condition, description, info), all three fields always present."""
    return Described(ULong(ERROR), [Symbol(condition), description, info])


def parse_body(body: bytes) -> tuple[int, list[Any], bytes]:
    """Decode a frame body into (performative code, fields padded to full length, payload)."""
    if len(body) < 3 or body[0] != 0x00:
        raise DecodeError("frame body is not a described performative")
    descriptor, pos = codec.decode(body, 1)
    if isinstance(descriptor, int):
        code = int(descriptor)
    else:
        raise DecodeError(f"performative with non-numeric descriptor {descriptor!r}")
    fields, pos = codec.decode(body, pos)
    if not isinstance(fields, list) or code not in FIELD_COUNTS:
        raise DecodeError(f"unknown performative 0x{code:02x}")
    count = FIELD_COUNTS[code]
    if len(fields) > count:
        raise DecodeError(f"{NAMES[code]} with {len(fields)} fields (at most {count})")
    fields.extend([None] * (count - len(fields)))
    return code, fields, body[pos:]


# ---------------------------------------------------------------- performatives the server sends


def open_frame(container_id: str, max_frame_size: int, channel_max: int, idle_timeout_ms: int | None) -> bytes:
    return frame(0, OPEN, [
        container_id, None, UInt(max_frame_size), UShort(channel_max),
        UInt(idle_timeout_ms) if idle_timeout_ms else None, None, None, None, None, None,
    ])


def begin_frame(channel: int, remote_channel: int, next_outgoing_id: int, incoming_window: int,
                outgoing_window: int, handle_max: int) -> bytes:
    return frame(channel, BEGIN, [
        UShort(remote_channel), UInt(next_outgoing_id), UInt(incoming_window), UInt(outgoing_window),
        UInt(handle_max), None, None, None,
    ])


def attach_frame(channel: int, *, name: str, handle: int, role: bool, snd_settle_mode: int, rcv_settle_mode: int,
                 source: Any, target: Any, initial_delivery_count: int | None, max_message_size: int | None,
                 offered_capabilities: list[str] | None = None, properties: dict[Any, Any] | None = None) -> bytes:
    return frame(channel, ATTACH, [
        name, UInt(handle), role, UByte(snd_settle_mode), UByte(rcv_settle_mode), source, target,
        None, False,
        UInt(initial_delivery_count) if initial_delivery_count is not None else None,
        ULong(max_message_size) if max_message_size is not None else None,
        Array(0xA3, [Symbol(c) for c in offered_capabilities]) if offered_capabilities else None,
        None, properties,
    ])


def flow_frame(channel: int, *, next_incoming_id: int | None, incoming_window: int, next_outgoing_id: int,
               outgoing_window: int, handle: int | None = None, delivery_count: int | None = None,
               link_credit: int | None = None, available: int | None = None, drain: bool = False,
               echo: bool = False) -> bytes:
    def u(v: int | None) -> UInt | None:
        return UInt(v) if v is not None else None

    return frame(channel, FLOW, [
        u(next_incoming_id), UInt(incoming_window), UInt(next_outgoing_id), UInt(outgoing_window),
        u(handle), u(delivery_count), u(link_credit), u(available), drain, echo, None,
    ])


def disposition_frame(channel: int, *, role: bool, first: int, last: int, settled: bool, state: Any) -> bytes:
    return frame(channel, DISPOSITION, [role, UInt(first), UInt(last), settled, state, None])


def detach_frame(channel: int, handle: int, closed: bool, error: Described | None = None) -> bytes:
    return frame(channel, DETACH, [UInt(handle), closed, error])


def end_frame(channel: int, error: Described | None = None) -> bytes:
    return frame(channel, END, [error])


def close_frame(error: Described | None = None) -> bytes:
    return frame(0, CLOSE, [error])


ACCEPTED_STATE = Described(ULong(ACCEPTED), [])


def rejected_state(condition: str, description: str) -> Described:
    return Described(ULong(REJECTED), [error_value(condition, description)])


# Transfer: handle (uint), delivery-id (uint), delivery-tag (binary 4), message-format (uint 0),
# settled (true), more (bool), rcv-settle-mode .. batchable (null). Fixed widths, so one struct.
_TRANSFER = struct.Struct(">IBBH" "BBB" "BBB" "BI" "BI" "BBI" "B" "B" "B" "BBBBB")
_TRANSFER_BODY_LEN = _TRANSFER.size - 8


def transfer_frame(channel: int, handle: int, delivery_id: int, tag: int, more: bool, payload: bytes | memoryview,
                   settled: bool = True) -> bytes:
    """A transfer frame for an outgoing delivery (message-format 0) carrying ``payload``."""
    header = _TRANSFER.pack(
        _TRANSFER.size + len(payload), 2, FRAME_AMQP, channel,
        0x00, 0x53, TRANSFER,
        0xC0, _TRANSFER_BODY_LEN - 5, 11,
        0x70, handle,
        0x70, delivery_id,
        0xA0, 4, tag,
        0x43,
        0x41 if settled else 0x42,
        0x41 if more else 0x42,
        0x40, 0x40, 0x40, 0x40, 0x40,
    )
    return header + bytes(payload)


def transfer_overhead() -> int:
    """Bytes a transfer frame adds around its payload (for splitting at the peer's max frame size)."""
    return _TRANSFER.size
