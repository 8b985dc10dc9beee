"""AMQP messages as Event Hubs stores them: split, annotate, re-assemble without decoding bodies.

An incoming message is split into its sections (part 3, section 3.2) with
:func:`codec.skip`. What is stored, and later delivered unchanged, is::

    [header] [delivery-annotations] message-annotations* [properties] [application-properties] body... [footer]

where ``message-annotations*`` is the client's map minus any service-owned keys,
plus ``x-opt-sequence-number`` (long), ``x-opt-offset`` (string) and
``x-opt-enqueued-time`` (timestamp). Every other section keeps its original bytes,
delivery annotations from the client included (Event Hubs hands them to consumers:
the SDK's live test ``test_send_amqp_annotated_message`` reads them back), so
properties and application properties reach consumers byte for byte, and a
delivery costs no encoding at all. A consumer that asked for the last-enqueued
figures gets them merged into that one delivery-annotations section
(:func:`with_delivery_annotations`).

A batch (message-format 0x80013700) is an envelope whose body is a series of
data sections, each holding one complete encoded message: :func:`unpack_batch`
returns those inner messages.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from emulators.eventhubs import codec
from emulators.eventhubs.codec import Symbol
from emulators.eventhubs.errors import DecodeError

BATCH_FORMAT = 0x80013700

HEADER, DELIVERY_ANNOTATIONS, MESSAGE_ANNOTATIONS, PROPERTIES, APPLICATION_PROPERTIES = 0x70, 0x71, 0x72, 0x73, 0x74
DATA, AMQP_SEQUENCE, AMQP_VALUE, FOOTER = 0x75, 0x76, 0x77, 0x78
_SECTION_NAMES = {
    "amqp:header:list": HEADER, "amqp:delivery-annotations:map": DELIVERY_ANNOTATIONS,
    "amqp:message-annotations:map": MESSAGE_ANNOTATIONS, "amqp:properties:list": PROPERTIES,
    "amqp:application-properties:map": APPLICATION_PROPERTIES, "amqp:data:binary": DATA,
    "amqp:amqp-sequence:list": AMQP_SEQUENCE, "amqp:amqp-value:*": AMQP_VALUE, "amqp:footer:map": FOOTER,
}

SEQUENCE_NUMBER = "x-opt-sequence-number"
OFFSET = "x-opt-offset"
ENQUEUED_TIME = "x-opt-enqueued-time"
PARTITION_KEY = "x-opt-partition-key"
SERVICE_KEYS = frozenset({SEQUENCE_NUMBER, OFFSET, ENQUEUED_TIME, "x-opt-publisher"})

_KEY_SEQ = codec.encode(Symbol(SEQUENCE_NUMBER))
_KEY_OFFSET = codec.encode(Symbol(OFFSET))
_KEY_TIME = codec.encode(Symbol(ENQUEUED_TIME))
_q = struct.Struct(">q")
_I = struct.Struct(">I")


@dataclass(slots=True)
class Section:
    """One message section: its code and the byte range of the whole section (descriptor included)."""

    code: int
    start: int
    end: int
    value_start: int


def sections(payload: bytes) -> list[Section]:
    """Split an encoded message into its sections; raises DecodeError on anything that is not a message."""
    result: list[Section] = []
    pos = 0
    end = len(payload)
    while pos < end:
        if payload[pos] != 0x00:
            raise DecodeError(f"message section at {pos} is not a described type")
        code: int | None
        if payload[pos + 1] == 0x53 and pos + 2 < end:  # smallulong descriptor: what every client sends
            code, value_start = payload[pos + 2], pos + 3
            descriptor: Any = code
        else:
            descriptor, value_start = codec.decode(payload, pos + 1)
            code = _SECTION_NAMES.get(descriptor) if isinstance(descriptor, str) else int(descriptor)
        if code is None or not HEADER <= code <= FOOTER:
            raise DecodeError(f"unknown message section descriptor {descriptor!r}")
        section_end = codec.skip(payload, value_start)
        result.append(Section(code, pos, section_end, value_start))
        pos = section_end
    if not result:
        raise DecodeError("empty message")
    return result


def section_value(payload: bytes, section: Section) -> Any:
    value, _ = codec.decode(payload, section.value_start)
    return value


@dataclass(slots=True)
class Incoming:
    """A message from a producer, split and ready to be stamped by :meth:`stamp`."""

    header: bytes
    delivery_annotations: bytes
    annotation_entries: bytes
    annotation_count: int
    rest: bytes
    partition_key: str | None

    @property
    def size(self) -> int:
        return len(self.header) + len(self.delivery_annotations) + len(self.annotation_entries) + len(self.rest)

    def stamp(self, sequence: int, offset: int, enqueued_ms: int) -> tuple[bytes, int]:
        """The stored (and delivered) encoding with the service annotations; also the header length (where the
        delivery annotations are, or go)."""
        text = str(offset).encode()
        entries = b"".join((self.annotation_entries, _KEY_SEQ, b"\x81", _q.pack(sequence), _KEY_OFFSET,
                            b"\xa1", bytes((len(text),)), text, _KEY_TIME, b"\x83", _q.pack(enqueued_ms)))
        annotations = b"\x00\x53\x72" + _map_head(entries, self.annotation_count + 6)
        return b"".join((self.header, self.delivery_annotations, annotations, entries, self.rest)), len(self.header)


def _map_head(entries: bytes, count: int) -> bytes:
    """The constructor, size and count of a map holding the encoded ``entries`` (``count`` keys and values)."""
    n = len(entries)
    return b"\xc1" + bytes((n + 1, count)) if n + 1 < 256 else b"\xd1" + _I.pack(n + 4) + _I.pack(count)


def _map_entries(payload: bytes, pos: int) -> tuple[bytes, int]:
    """The encoded entries of the map at ``pos`` and their count (keys and values), as they are."""
    code = payload[pos]
    if code == 0xC1:
        return payload[pos + 3 : pos + 2 + payload[pos + 1]], payload[pos + 2]
    if code == 0xD1:
        size, count = _I.unpack_from(payload, pos + 1)[0], _I.unpack_from(payload, pos + 5)[0]
        return payload[pos + 9 : pos + 5 + size], count
    if code == 0x40:
        return b"", 0
    raise DecodeError("delivery-annotations is not a map")


def parse_incoming(payload: bytes) -> Incoming:
    """Split a single (non-batch) message as sent by a producer."""
    parts = sections(payload)
    if parts[0].code > MESSAGE_ANNOTATIONS:  # nothing to drop or rewrite: keep the bytes as they are
        return Incoming(b"", b"", b"", 0, bytes(payload), None)
    header = delivery = b""
    entries = bytearray()
    count = 0
    partition_key: str | None = None
    rest = bytearray()
    for section in parts:
        if section.code == HEADER:
            header = payload[section.start : section.end]
        elif section.code == DELIVERY_ANNOTATIONS:
            delivery = payload[section.start : section.end]
        elif section.code == MESSAGE_ANNOTATIONS:
            count, partition_key = _filter_annotations(payload, section.value_start, entries)
        else:
            rest += payload[section.start : section.end]
    return Incoming(bytes(header), bytes(delivery), bytes(entries), count, bytes(rest), partition_key)


def _filter_annotations(payload: bytes, pos: int, out: bytearray) -> tuple[int, str | None]:
    """Copy the map entries at ``pos`` except service-owned keys; returns (elements copied, partition key)."""
    code = payload[pos]
    if code in (0xC1, 0xD1):
        wide = code == 0xD1
        count = struct.unpack_from(">I", payload, pos + 5)[0] if wide else payload[pos + 2]
        pos += 9 if wide else 3
    elif code == 0x40:
        return 0, None
    else:
        raise DecodeError("message-annotations is not a map")
    copied = 0
    partition_key: str | None = None
    for _ in range(count // 2):
        key, key_end = codec.decode(payload, pos)
        value_end = codec.skip(payload, key_end)
        if key == PARTITION_KEY:
            value, _ = codec.decode(payload, key_end)
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            # Event Hubs routes by a string key only; any other type is ignored and the event goes round-robin
            # (the SDK warns so: azure/eventhub/_common.py, EventDataBatch).
            partition_key = value if isinstance(value, str) else None
        if key not in SERVICE_KEYS:
            out += payload[pos:value_end]
            copied += 2
        pos = value_end
    return copied, partition_key


def unpack_batch(payload: bytes) -> tuple[list[bytes], str | None]:
    """The inner messages of a batch envelope, and the envelope's partition key."""
    outer = parse_incoming(payload)
    rest = outer.rest
    inner: list[bytes] = []
    pos, end = 0, len(rest)
    while pos < end:
        # the usual shape, one data section (binary) per event, is cut without decoding anything
        if rest[pos : pos + 3] == b"\x00\x53\x75" and pos + 4 < end:
            code = rest[pos + 3]
            if code == 0xA0:
                n, start = rest[pos + 4], pos + 5
            elif code == 0xB0 and pos + 8 <= end:
                n, start = _I.unpack_from(rest, pos + 4)[0], pos + 8
            else:
                raise DecodeError("batch data section does not hold binary")
            if start + n > end:
                raise DecodeError("truncated batch data section")
            inner.append(rest[start : start + n])
            pos = start + n
            continue
        section = sections(rest[pos:])[0]
        if section.code in (AMQP_SEQUENCE, AMQP_VALUE):
            raise DecodeError("a batch body must be data sections, each one encoded message")
        pos += section.end
    if not inner:
        raise DecodeError("empty batch")
    return inner, outer.partition_key


def with_delivery_annotations(payload: bytes, at: int, values: dict[str, Any]) -> bytes:
    """``payload`` with ``values`` added to its delivery annotations, which are at ``at`` (after the header) or go
    there: appended to the client's section if it sent one (a message has at most one such section), whose own
    entries keep their bytes."""
    kept, count, end = b"", 0, at
    if payload[at : at + 3] == b"\x00\x53\x71" or (at + 1 < len(payload) and payload[at + 1] != 0x53):
        first = sections(payload[at:])[0]
        if first.code == DELIVERY_ANNOTATIONS:
            kept, count = _map_entries(payload, at + first.value_start)
            end = at + first.end
    entries = kept + b"".join(codec.encode(Symbol(k)) + codec.encode(v) for k, v in values.items())
    return b"".join((payload[:at], b"\x00\x53\x71", _map_head(entries, count + 2 * len(values)), entries,
                     payload[end:]))


def build(*, properties: list[Any] | None = None, application_properties: dict[str, Any] | None = None,
          value: Any = None) -> bytes:
    """Encode a small message (management and CBS replies): properties, application properties, amqp-value."""
    out = bytearray()
    if properties is not None:
        out += b"\x00\x53\x73"
        codec.encode_list_into(out, properties)
    if application_properties is not None:
        out += b"\x00\x53\x74"
        codec.encode_into(out, application_properties)
    out += b"\x00\x53\x77"
    codec.encode_into(out, value)
    return bytes(out)


def read_request(payload: bytes) -> tuple[list[Any], dict[Any, Any], Any]:
    """Decode a management or CBS request: (properties fields, application properties, amqp-value body)."""
    properties: list[Any] = []
    application: dict[Any, Any] = {}
    body: Any = None
    for section in sections(payload):
        if section.code == PROPERTIES:
            properties = list(section_value(payload, section) or [])
        elif section.code == APPLICATION_PROPERTIES:
            application = dict(section_value(payload, section) or {})
        elif section.code == AMQP_VALUE:
            body = section_value(payload, section)
    properties.extend([None] * (13 - len(properties)))
    return properties, application, body
