"""AMQP 1.0 type system: encoder, decoder and a value skipper (OASIS AMQP 1.0, part 1).

Decoding keeps the AMQP type of every primitive (``UInt(5)`` rather than ``5``,
``Symbol("x")`` rather than ``"x"``), so a value read from a peer can be echoed
back with exactly the encoding it arrived in (the attach source and target are
sent back this way). The wrappers subclass ``int`` and ``str``: comparisons
and dictionary look-ups with plain values keep working.

:func:`skip` finds the end of an encoded value without building it; message
sections are split and annotation maps are merged with it, so event bodies are
never decoded.

The encoder always uses the widest-needed, canonical forms: ``str8``/``str32``,
``list8``/``list32`` (never ``list0`` for performatives, see
:mod:`emulators.eventhubs.frames`), ``smallulong`` descriptors.
"""

from __future__ import annotations

import struct
import uuid
from typing import Any, NamedTuple

from emulators.eventhubs.errors import DecodeError


class UByte(int):
    """AMQP ubyte."""


class UShort(int):
    """AMQP ushort."""


class UInt(int):
    """AMQP uint."""


class ULong(int):
    """AMQP ulong."""


class Byte(int):
    """AMQP byte."""


class Short(int):
    """AMQP short."""


class Int(int):
    """AMQP int."""


class Long(int):
    """AMQP long (a plain ``int`` encodes as long too)."""


class Timestamp(int):
    """AMQP timestamp: milliseconds since the Unix epoch."""


class Symbol(str):
    """AMQP symbol (ASCII)."""


class Char(str):
    """AMQP char (one UTF-32 code point)."""


class Float(float):
    """AMQP float (32-bit); a plain ``float`` encodes as double."""


class Decimal(bytes):
    """An AMQP decimal32/64/128 kept as its raw bytes; ``width`` is 4, 8 or 16."""


class Described(NamedTuple):
    """A described value: ``descriptor`` (usually a ``ULong`` or a ``Symbol``) and ``value``."""

    descriptor: Any
    value: Any


class Array(NamedTuple):
    """An AMQP array; ``constructor`` is the element's format code (e.g. 0xA3 symbol, 0xA1 string)."""

    constructor: int
    items: list[Any]


_B = struct.Struct(">B")
_H = struct.Struct(">H")
_I = struct.Struct(">I")
_Q = struct.Struct(">Q")
_b = struct.Struct(">b")
_h = struct.Struct(">h")
_i = struct.Struct(">i")
_q = struct.Struct(">q")
_f = struct.Struct(">f")
_d = struct.Struct(">d")

# ---------------------------------------------------------------- encoding


def _enc_uint_like(code_small: int, code_zero: int | None, code_large: int, fmt: struct.Struct, v: int) -> bytes:
    if v == 0 and code_zero is not None:
        return bytes((code_zero,))
    if v < 256:
        return bytes((code_small, v))
    return bytes((code_large,)) + fmt.pack(v)


def encode(value: Any) -> bytes:
    """Encode one value; the Python type picks the AMQP type (see the module docstring)."""
    out = bytearray()
    encode_into(out, value)
    return bytes(out)


def encode_into(out: bytearray, value: Any) -> None:
    """Append the encoding of ``value`` to ``out``."""
    if value is None:
        out.append(0x40)
    elif value is True:
        out.append(0x41)
    elif value is False:
        out.append(0x42)
    elif isinstance(value, int):
        _encode_int(out, value)
    elif isinstance(value, str):
        _encode_str(out, value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        if isinstance(value, Decimal):
            out.append({4: 0x74, 8: 0x84, 16: 0x94}[len(value)])
            out += value
            return
        n = len(value)
        if n < 256:
            out += bytes((0xA0, n))
        else:
            out.append(0xB0)
            out += _I.pack(n)
        out += value
    elif isinstance(value, Described):
        out.append(0x00)
        encode_into(out, value.descriptor)
        encode_into(out, value.value)
    elif isinstance(value, Array):
        _encode_array(out, value)
    elif isinstance(value, (list, tuple)):
        encode_list_into(out, value)
    elif isinstance(value, dict):
        _encode_map(out, value)
    elif isinstance(value, float):
        if isinstance(value, Float):
            out.append(0x72)
            out += _f.pack(value)
        else:
            out.append(0x82)
            out += _d.pack(value)
    elif isinstance(value, uuid.UUID):
        out.append(0x98)
        out += value.bytes
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as AMQP")


def _encode_int(out: bytearray, v: int) -> None:
    t = type(v)
    if t is UInt:
        out += _enc_uint_like(0x52, 0x43, 0x70, _I, v)
    elif t is ULong:
        out += _enc_uint_like(0x53, 0x44, 0x80, _Q, v)
    elif t is UByte:
        out += bytes((0x50, v))
    elif t is UShort:
        out.append(0x60)
        out += _H.pack(v)
    elif t is Timestamp:
        out.append(0x83)
        out += _q.pack(v)
    elif t is Int:
        if -128 <= v <= 127:
            out.append(0x54)
            out += _b.pack(v)
        else:
            out.append(0x71)
            out += _i.pack(v)
    elif t is Byte:
        out.append(0x51)
        out += _b.pack(v)
    elif t is Short:
        out.append(0x61)
        out += _h.pack(v)
    elif -128 <= v <= 127:
        out.append(0x55)
        out += _b.pack(v)
    else:
        out.append(0x81)
        out += _q.pack(v)


def _encode_str(out: bytearray, v: str) -> None:
    if isinstance(v, Char):
        out.append(0x73)
        out += _I.pack(ord(v))
        return
    data = v.encode("ascii" if isinstance(v, Symbol) else "utf-8")
    n = len(data)
    small, large = (0xA3, 0xB3) if isinstance(v, Symbol) else (0xA1, 0xB1)
    if n < 256:
        out += bytes((small, n))
    else:
        out.append(large)
        out += _I.pack(n)
    out += data


def encode_list_into(out: bytearray, items: list[Any] | tuple[Any, ...]) -> None:
    """A list, always as list8 or list32 (the SDK's frame decoder does not accept list0 there)."""
    body = bytearray()
    for item in items:
        encode_into(body, item)
    n = len(items)
    if len(body) + 1 < 256 and n < 256:
        out += bytes((0xC0, len(body) + 1, n))
    else:
        out.append(0xD0)
        out += _I.pack(len(body) + 4)
        out += _I.pack(n)
    out += body


def _encode_map(out: bytearray, mapping: dict[Any, Any]) -> None:
    body = bytearray()
    for key, val in mapping.items():
        encode_into(body, key)
        encode_into(body, val)
    encode_map_raw(out, body, len(mapping) * 2)


def encode_map_raw(out: bytearray, body: bytes | bytearray, count: int) -> None:
    """A map from already encoded ``body`` holding ``count`` elements (keys plus values)."""
    if len(body) + 1 < 256 and count < 256:
        out += bytes((0xC1, len(body) + 1, count))
    else:
        out.append(0xD1)
        out += _I.pack(len(body) + 4)
        out += _I.pack(count)
    out += body


def _encode_array(out: bytearray, array: Array) -> None:
    """An array; elements of mixed small/large width all take the large form (one constructor for all)."""
    encoded = [encode(item) for item in array.items]
    codes = {e[0] for e in encoded} or {array.constructor}
    if len(codes) > 1:
        encoded = [_widen(e) for e in encoded]
        codes = {e[0] for e in encoded}
    if len(codes) > 1:
        raise TypeError(f"array elements of different types: {sorted(codes)}")
    constructor = codes.pop()
    body = b"".join(e[1:] for e in encoded)
    n = len(encoded)
    if len(body) + 2 < 256 and n < 256:
        out += bytes((0xE0, len(body) + 2, n, constructor))
    else:
        out.append(0xF0)
        out += _I.pack(len(body) + 5)
        out += _I.pack(n)
        out.append(constructor)
    out += body


def _widen(encoded: bytes) -> bytes:
    """The large (32-bit size) form of a small variable-width encoding; other values unchanged."""
    code = encoded[0]
    if code in (0xA0, 0xA1, 0xA3):
        return bytes((code + 0x10,)) + _I.pack(encoded[1]) + encoded[2:]
    return encoded


# ---------------------------------------------------------------- decoding

_FIXED_WIDTH = {
    0x40: 0, 0x41: 0, 0x42: 0, 0x43: 0, 0x44: 0, 0x45: 0,
    0x50: 1, 0x51: 1, 0x52: 1, 0x53: 1, 0x54: 1, 0x55: 1, 0x56: 1,
    0x60: 2, 0x61: 2,
    0x70: 4, 0x71: 4, 0x72: 4, 0x73: 4, 0x74: 4,
    0x80: 8, 0x81: 8, 0x82: 8, 0x83: 8, 0x84: 8,
    0x94: 16, 0x98: 16,
}


def skip(buf: bytes | memoryview, pos: int) -> int:
    """The position just after the value encoded at ``pos`` (nothing is built)."""
    try:
        code = buf[pos]
        if code == 0x00:
            return skip(buf, skip(buf, pos + 1))
        width = _FIXED_WIDTH.get(code)
        if width is not None:
            end = pos + 1 + width
        elif code & 0xF0 in (0xA0, 0xC0, 0xE0):
            end = pos + 2 + buf[pos + 1]
        elif code & 0xF0 in (0xB0, 0xD0, 0xF0):
            end = pos + 5 + _I.unpack_from(buf, pos + 1)[0]
        else:
            raise DecodeError(f"unknown AMQP format code 0x{code:02x} at {pos}")
    except (IndexError, struct.error) as exc:
        raise DecodeError(f"truncated AMQP value at {pos}") from exc
    if end > len(buf):
        raise DecodeError(f"truncated AMQP value at {pos}: needs {end - pos} bytes, has {len(buf) - pos}")
    return end


def decode(buf: bytes | memoryview, pos: int = 0) -> tuple[Any, int]:
    """Decode the value at ``pos``; returns it and the position after it."""
    try:
        return _decode(buf, pos)
    except (IndexError, struct.error, UnicodeDecodeError, KeyError) as exc:
        raise DecodeError(f"malformed AMQP value at {pos}: {exc}") from exc


def _decode(buf: Any, pos: int) -> tuple[Any, int]:
    return _decode_body(buf[pos], buf, pos + 1)


def _decode_body(code: int, buf: Any, pos: int) -> tuple[Any, int]:
    """Decode the value whose constructor ``code`` was already read; ``pos`` is just after it."""
    if code == 0x00:
        descriptor, pos = _decode(buf, pos)
        value, pos = _decode(buf, pos)
        return Described(descriptor, value), pos
    if code == 0x40:
        return None, pos
    if code == 0x41:
        return True, pos
    if code == 0x42:
        return False, pos
    if code == 0x56:
        return buf[pos] != 0, pos + 1
    if code == 0x43:
        return UInt(0), pos
    if code == 0x44:
        return ULong(0), pos
    if code == 0x45:
        return [], pos
    if code == 0x50:
        return UByte(buf[pos]), pos + 1
    if code == 0x51:
        return Byte(_b.unpack_from(buf, pos)[0]), pos + 1
    if code == 0x52:
        return UInt(buf[pos]), pos + 1
    if code == 0x53:
        return ULong(buf[pos]), pos + 1
    if code == 0x54:
        return Int(_b.unpack_from(buf, pos)[0]), pos + 1
    if code == 0x55:
        return Long(_b.unpack_from(buf, pos)[0]), pos + 1
    if code == 0x60:
        return UShort(_H.unpack_from(buf, pos)[0]), pos + 2
    if code == 0x61:
        return Short(_h.unpack_from(buf, pos)[0]), pos + 2
    if code == 0x70:
        return UInt(_I.unpack_from(buf, pos)[0]), pos + 4
    if code == 0x71:
        return Int(_i.unpack_from(buf, pos)[0]), pos + 4
    if code == 0x72:
        return Float(_f.unpack_from(buf, pos)[0]), pos + 4
    if code == 0x73:
        return Char(chr(_I.unpack_from(buf, pos)[0])), pos + 4
    if code == 0x80:
        return ULong(_Q.unpack_from(buf, pos)[0]), pos + 8
    if code == 0x81:
        return Long(_q.unpack_from(buf, pos)[0]), pos + 8
    if code == 0x82:
        return _d.unpack_from(buf, pos)[0], pos + 8
    if code == 0x83:
        return Timestamp(_q.unpack_from(buf, pos)[0]), pos + 8
    if code in (0x74, 0x84, 0x94):
        width = {0x74: 4, 0x84: 8, 0x94: 16}[code]
        return Decimal(bytes(buf[pos : pos + width])), pos + width
    if code == 0x98:
        return uuid.UUID(bytes=bytes(buf[pos : pos + 16])), pos + 16
    if code in (0xA0, 0xA1, 0xA3):
        n = buf[pos]
        return _variable(code, buf[pos + 1 : pos + 1 + n], n), pos + 1 + n
    if code in (0xB0, 0xB1, 0xB3):
        n = _I.unpack_from(buf, pos)[0]
        return _variable(code & 0xEF, buf[pos + 4 : pos + 4 + n], n), pos + 4 + n
    if code in (0xC0, 0xC1):
        size, count = buf[pos], buf[pos + 1]
        return _compound(code == 0xC1, buf, pos + 2, count, pos + 1 + size)
    if code in (0xD0, 0xD1):
        size, count = _I.unpack_from(buf, pos)[0], _I.unpack_from(buf, pos + 4)[0]
        return _compound(code == 0xD1, buf, pos + 8, count, pos + 4 + size)
    if code == 0xE0:
        size, count = buf[pos], buf[pos + 1]
        return _array(buf, pos + 2, count, pos + 1 + size)
    if code == 0xF0:
        size, count = _I.unpack_from(buf, pos)[0], _I.unpack_from(buf, pos + 4)[0]
        return _array(buf, pos + 8, count, pos + 4 + size)
    raise DecodeError(f"unknown AMQP format code 0x{code:02x} at {pos - 1}")


def _variable(code: int, raw: Any, n: int) -> Any:
    if len(raw) != n:
        raise DecodeError("truncated variable-width value")
    if code == 0xA0:
        return bytes(raw)
    if code == 0xA1:
        return bytes(raw).decode("utf-8")
    return Symbol(bytes(raw).decode("ascii"))


def _compound(is_map: bool, buf: Any, pos: int, count: int, end: int) -> tuple[Any, int]:
    if end > len(buf):
        raise DecodeError("truncated compound value")
    items = []
    for _ in range(count):
        item, pos = _decode(buf, pos)
        items.append(item)
    if pos != end:
        raise DecodeError(f"compound size mismatch: elements end at {pos}, size says {end}")
    if not is_map:
        return items, end
    if count % 2:
        raise DecodeError("map with an odd number of elements")
    return dict(zip(items[0::2], items[1::2], strict=True)), end


def _array(buf: Any, pos: int, count: int, end: int) -> tuple[Array, int]:
    if count == 0:
        return Array(0x40, []), end
    constructor = buf[pos]
    pos += 1
    descriptor = None
    if constructor == 0x00:
        descriptor, pos = _decode(buf, pos)
        constructor = buf[pos]
        pos += 1
    items = []
    for _ in range(count):
        item, pos = _decode_body(constructor, buf, pos)
        items.append(Described(descriptor, item) if descriptor is not None else item)
    if pos != end:
        raise DecodeError(f"array size mismatch: elements end at {pos}, size says {end}")
    return Array(constructor, items), end
